"""braze-export: export Braze's analytics time series to files.

``exporter.run(config, as_of=..., out=...)`` runs an export from Python (Airflow, Dagster,
scripts) and returns an :class:`~exporter.api.RunReport`: see :mod:`exporter.api`.
"""

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from exporter.api import IncompleteRun, RunReport, run

__all__ = [
    "IncompleteRun",
    "RunReport",
    "__version__",
    "package_version",
    "run",
]

_API = frozenset({"IncompleteRun", "RunReport", "run"})


def package_version() -> str:
    """The installed distribution's version (pyproject.toml's, the one source of it), or
    ``0+unknown`` when the package runs from a tree that was never installed."""
    try:
        return version("braze-export")
    except PackageNotFoundError:
        return "0+unknown"


def __getattr__(name: str) -> Any:
    # The API on first use: `import exporter` stays cheap, and the modules it would import
    # (which read __version__ from here) do not import a half-initialised package.
    if name in _API:
        from exporter import api

        return getattr(api, name)
    raise AttributeError(f"module 'exporter' has no attribute {name!r}")


__version__ = package_version()
