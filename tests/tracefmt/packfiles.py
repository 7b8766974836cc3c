"""Minimal bad files for TF-PACK-001 (a packed rank file's ``packed_from`` provenance)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py

from tests import badfiles as bad


def good_packed_from(values_filter: str) -> dict[str, Any]:
    """A ``packed_from`` object as ``tracefmt pack`` writes it, for a file of ``values_filter``."""
    return {
        "tool": "tracefmt pack",
        "tracefmt": "0.1.0",
        "time": "2026-12-02T10:00:00+00:00",
        "filter": values_filter,
        "sources": [
            {
                "path": "/runs/exp1/rank-00000.tft.h5",
                "bytes": 123456,
                "sha256": "ab" * 32,
                "format_version": "1.5",
                "values_filter": "none",
            }
        ],
    }


def with_packed_from(path: Path, change: dict[str, Any] | None = None, **source: Any) -> Path:
    """``path`` with a ``packed_from`` provenance entry naming the file's own filter, then
    ``change`` applied to it and ``source`` to its first source."""
    with h5py.File(path, "r", swmr=True) as f:
        provenance = json.loads(f.attrs["provenance"].decode())
        values_filter = f.attrs["values_filter"].decode()
    packed = good_packed_from(values_filter)
    packed.update(change or {})
    if source:
        packed["sources"][0].update(source)
    provenance["packed_from"] = packed
    return bad.set_attr(path, "provenance", json.dumps(provenance, sort_keys=True))
