"""How op attributes are stored: strict JSON text that every value decodes back to (spec section 10).

JSON alone cannot hold a non-finite float, and a marker object must not be mistaken for data, so
:func:`encode_attrs` writes ``inf`` as ``{"$float": "inf"}`` and wraps an object with a key
beginning with ``$`` as ``{"$dict": {...}}``; :func:`decode_attrs` undoes both.  Only JSON data is
accepted, so no trace ever needs code to be read.

Example::

    >>> encode_attrs({"dim": 1, "eps": float("inf")})
    '{"dim":1,"eps":{"$float":"inf"}}'
    >>> decode_attrs('{"dim":1,"eps":{"$float":"inf"}}')
    {'dim': 1, 'eps': inf}
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

__all__ = ["decode_attrs", "decode_json", "encode_attrs", "encode_json"]


#: The markers of the attribute encoding (spec section 10): ``{"$float": "inf"}`` is a non-finite
#: float, ``{"$dict": {...}}`` an object of the data that has a key beginning with ``$``.
_FLOAT, _DICT = "$float", "$dict"
_NON_FINITE = ("inf", "-inf", "nan")


def _escaped(obj: Mapping[str, Any]) -> bool:
    """Whether an object of the data is written wrapped in ``{"$dict": ...}``."""
    return any(k.startswith("$") for k in obj)


def _encode_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return {_FLOAT: repr(value)}
    if isinstance(value, Mapping):
        obj = {str(k): _encode_value(v) for k, v in value.items()}
        return {_DICT: obj} if _escaped(obj) else obj
    if isinstance(value, (list, tuple)):
        return [_encode_value(v) for v in value]
    return value


def _decode_value(value: Any) -> Any:
    """Inverse of :func:`_encode_value` on parsed JSON; top-down, since ``$dict`` protects the
    keys of the object it wraps (a bottom-up ``object_hook`` would read them as markers first)."""
    if isinstance(value, list):
        return [_decode_value(v) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        if value.get(_FLOAT) in _NON_FINITE:
            return float(value[_FLOAT])
        inner = value.get(_DICT)
        if isinstance(inner, dict) and _escaped(inner):
            value = inner
    return {k: _decode_value(v) for k, v in value.items()}


def encode_json(value: Any) -> str:
    """Encode one JSON value the way op attributes are encoded (see :func:`encode_attrs`)."""
    return json.dumps(_encode_value(value), allow_nan=False, sort_keys=True, separators=(",", ":"))


def decode_json(text: str) -> Any:
    """Inverse of :func:`encode_json`; raises ``ValueError`` on text that is not strict JSON."""
    try:
        value = json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
        # Without a "$" (literal or escaped) there is no marker to decode: skip the walk.
        return _decode_value(value) if "$" in text or "\\u0024" in text else value
    except RecursionError:  # "[[[[..." from a hostile file
        raise ValueError("the JSON text is nested too deeply") from None


def encode_attrs(attrs: Mapping[str, Any]) -> str:
    """Encode op attributes as strict JSON text (spec section 10).

    Non-finite floats become ``{"$float": "inf"}`` (``"-inf"``, ``"nan"``), and an object with a
    key beginning with ``$`` is wrapped as ``{"$dict": {...}}``, so every value decodes back to
    itself: ``{"$float": "inf"}`` as data is written ``{"$dict":{"$float":"inf"}}``.  Values must
    be JSON data (numbers, strings, booleans, None, lists, dicts); anything else is refused so no
    trace ever needs code to be read.
    """
    try:
        return encode_json(dict(attrs))
    except (TypeError, ValueError) as e:
        raise ValueError(f"Op attributes must be plain JSON data: {e}") from e


def decode_attrs(text: str) -> dict[str, Any]:
    """Inverse of :func:`encode_attrs`; raises ``ValueError`` on anything but a JSON object.

    An object is read as a marker only in the form the encoder writes (one key; ``$float`` with
    ``"inf"``, ``"-inf"`` or ``"nan"``; ``$dict`` around an object with a ``$`` key); any other
    object is data, as it was before ``$dict`` existed.
    """
    value = decode_json(text)
    if not isinstance(value, dict):
        raise ValueError("op attributes are not a JSON object")
    return value
