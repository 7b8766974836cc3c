"""The JSON that ``--json`` prints, for ``tracefmt`` and ``replayer`` alike: strict RFC 8259.

Python's :func:`json.dumps` writes ``NaN``, ``Infinity`` and ``-Infinity`` by default, which are not
JSON: jq, JavaScript's ``JSON.parse`` and Go's ``encoding/json`` refuse them.  Statistics of real
tensors are often non-finite (the minimum of an attention mask is ``-inf``), so every ``--json``
output goes through :func:`dumps`, which writes a non-finite number as one of the strings
``"inf"``, ``"-inf"`` and ``"nan"`` (the spellings the trace's attribute JSON uses, there inside a
``{"$float": ...}`` marker; CLI output is for reading, so plain strings).  numpy scalars become
plain numbers; any other object that is not JSON data is written as its ``str()``.

Example::

    >>> dumps({"min": float("-inf"), "mean": 0.5})
    '{"min": "-inf", "mean": 0.5}'
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["dumps", "plain"]


def plain(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``"inf"``, ``"-inf"`` or ``"nan"`` and
    numpy scalars made Python numbers, through dicts, lists and tuples (keys become strings)."""
    if isinstance(value, np.generic) and not isinstance(value, (np.str_, np.bytes_)):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def dumps(data: Any, *, indent: int | None = None) -> str:
    """Strict JSON text of ``data`` (see the module docstring for the encoding of non-finite
    numbers).  ``allow_nan=False``: a float that escaped :func:`plain` fails here, loudly, rather
    than printing something a strict parser refuses."""
    return json.dumps(plain(data), indent=indent, default=str, allow_nan=False)
