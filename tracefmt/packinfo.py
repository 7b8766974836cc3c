"""What a packed rank file says about where it came from: the ``packed_from`` provenance key.

``tracefmt pack`` (:mod:`tracefmt.pack`) writes each archived rank file with the source file's
provenance plus one ``packed_from`` object: the tool and the tracefmt version that packed it, when,
with which values filter, and the source files it was built from, each with its path, size and
SHA-256 (so a copy of the original run can be recognised years later).  :func:`parse_packed_from`
reads it field by field, for ``tracefmt info`` and the validator (TF-PACK-001, spec/format.md
section 4.2.2).

Example::

    >>> info = parse_packed_from({"packed_from": {"tool": "tracefmt pack", "tracefmt": "0.1.0",
    ...     "time": "2026-12-02T10:00:00+00:00", "filter": "zstd",
    ...     "sources": [{"path": "/runs/a/rank-00000.tft.h5", "bytes": 10, "sha256": "0" * 64}]}})
    >>> (info.filter, info.sources[0].bytes)
    ('zstd', 10)
"""

from __future__ import annotations

import re
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tracefmt import _layout as L
from tracefmt._primitives import Problem
from tracefmt.filters import FILTERS
from tracefmt.rankinfo import is_int

__all__ = ["PACKED_FROM_KEY", "PackedFrom", "PackedSource", "parse_packed_from"]

#: The provenance key of a packed rank file.
PACKED_FROM_KEY = "packed_from"
_SHA256 = re.compile(r"[0-9a-f]{64}")
#: At most this many source files are listed (a rank file and its run's manifest, in practice).
MAX_SOURCES = 1024


@dataclass(frozen=True)
class PackedSource:
    """One file a packed rank file was built from: its path when packed, bytes and SHA-256."""

    path: str
    bytes: int
    sha256: str
    #: the source rank file's ``format_version`` and ``values_filter`` (None for the manifest)
    format_version: str | None = None
    values_filter: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "bytes": self.bytes, "sha256": self.sha256}
        if self.format_version is not None:
            out["format_version"] = self.format_version
        if self.values_filter is not None:
            out["values_filter"] = self.values_filter
        return out


@dataclass(frozen=True)
class PackedFrom:
    """The ``packed_from`` provenance object (spec/format.md 4.2.2)."""

    tool: str
    tracefmt: str
    time: str
    filter: str
    sources: tuple[PackedSource, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "tool": self.tool,
            "tracefmt": self.tracefmt,
            "time": self.time,
            "filter": self.filter,
            "sources": [s.to_json() for s in self.sources],
        }


def _text(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= L.MAX_STRING_BYTES


def _problem(field: str, value: Any, what: str) -> Problem:
    shown = reprlib.repr(value)  # computed once, and bounded however large the value is
    return Problem(
        f"The provenance field {PACKED_FROM_KEY}.{field} is {shown}, not {what}.",
        attr=L.ATTR_PROVENANCE,
    )


def _source(i: int, value: Any) -> PackedSource | Problem:
    where = f"sources[{i}]"
    if not isinstance(value, dict):
        return _problem(where, value, "a JSON object")
    if not _text(value.get("path")):
        return _problem(f"{where}.path", value.get("path"), "a non-empty string")
    size: Any = value.get("bytes")
    if not (is_int(size) and size >= 0):
        return _problem(f"{where}.bytes", size, "a non-negative integer")
    digest = value.get("sha256")
    if not (isinstance(digest, str) and _SHA256.fullmatch(digest)):
        return _problem(f"{where}.sha256", digest, "64 lowercase hexadecimal digits")
    optional: dict[str, Any] = {}
    for key in ("format_version", "values_filter"):
        v = value.get(key)
        if v is not None and not _text(v):
            return _problem(f"{where}.{key}", v, "a non-empty string or absent")
        optional[key] = v
    return PackedSource(value["path"], int(size), digest, **optional)


def parse_packed_from(provenance: Mapping[str, Any]) -> PackedFrom | Problem | None:
    """The ``packed_from`` object of a rank file's provenance JSON: None when absent, a
    :class:`Problem` when it is not an object with the strings ``tool``, ``tracefmt`` and
    ``time``, ``filter`` naming a known values filter, and ``sources``, a non-empty list of objects
    with ``path`` (string), ``bytes`` (non-negative integer) and ``sha256`` (64 lowercase hex
    digits).  Other keys are ignored."""
    if PACKED_FROM_KEY not in provenance:
        return None
    value = provenance[PACKED_FROM_KEY]
    if not isinstance(value, dict):
        return Problem(
            f"The provenance field {PACKED_FROM_KEY!r} is not a JSON object.", attr=L.ATTR_PROVENANCE
        )
    for key in ("tool", "tracefmt", "time"):
        if not _text(value.get(key)):
            return _problem(key, value.get(key), "a non-empty string")
    name = value.get("filter")
    if not (isinstance(name, str) and name in FILTERS):
        return _problem("filter", name, f"one of the values filters {', '.join(FILTERS)}")
    sources = value.get("sources")
    if not (isinstance(sources, list) and 0 < len(sources) <= MAX_SOURCES):
        return _problem("sources", sources, f"a list of 1 to {MAX_SOURCES} source files")
    parsed = []
    for i, item in enumerate(sources):
        source = _source(i, item)
        if isinstance(source, Problem):
            return source
        parsed.append(source)
    return PackedFrom(value["tool"], value["tracefmt"], value["time"], name, tuple(parsed))
