"""The optional dependencies of :mod:`tracefmt.analysis`, imported when first needed.

pyarrow and duckdb are the ``analysis`` extra (``pip install 'tracefmt[analysis]'``), not
dependencies of the format: importing :mod:`tracefmt.analysis` works without them, and a function
that needs one raises a :class:`~tracefmt.errors.TraceError` saying what to install.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from tracefmt.errors import TraceError

__all__ = ["INSTALL_HINT", "require"]

INSTALL_HINT = "pip install 'tracefmt[analysis]'"


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` (``"pyarrow.parquet"``, ``"duckdb"``), or raise a :class:`TraceError`
    saying that ``purpose`` needs the analysis extra."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        package = module.split(".")[0]
        raise TraceError(
            f"{purpose} needs {package}, which is not installed ({e}); install the analysis "
            f"extra: {INSTALL_HINT}"
        ) from e
