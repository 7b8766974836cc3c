"""The package version (also written into every file's provenance)."""

__version__ = "0.1.0"
