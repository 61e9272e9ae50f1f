"""braze-export: export Braze's "Export App Sessions by Time" series to files."""

__version__ = "0.1.0"
