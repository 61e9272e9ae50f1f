"""braze-export: export Braze's analytics time series to files."""

from importlib.metadata import PackageNotFoundError, version

__all__ = ["__version__", "package_version"]


def package_version() -> str:
    """The installed distribution's version (pyproject.toml's, the one source of it), or
    ``0+unknown`` when the package runs from a tree that was never installed."""
    try:
        return version("braze-export")
    except PackageNotFoundError:
        return "0+unknown"


__version__ = package_version()
