"""A diff as JSON data: what ``replayer diff --json`` prints.

Dataclasses become objects, enums their labels, and non-finite numbers the strings ``"inf"``,
``"-inf"``, ``"nan"`` (:func:`tracefmt.jsonout.plain`), so the data passes
``json.dumps(..., allow_nan=False)`` and any strict JSON parser.

Example::

    print(tracefmt.jsonout.dumps(to_json(diff_sides("runs/a", "runs/b"))))
"""

from __future__ import annotations

import dataclasses
import enum
from collections import Counter
from typing import Any

from replayer.diff.results import RunDiff, StepDiff
from tracefmt.jsonout import plain

__all__ = ["to_json"]


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        label = getattr(value, "label", None)
        return label if isinstance(label, str) else value.name.lower()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return plain(value)


def _step_json(d: StepDiff, limit: int) -> dict[str, Any]:
    data = {
        f.name: _plain(getattr(d, f.name))
        for f in dataclasses.fields(d)
        if f.name not in ("divergences", "structural", "phase_spans")
    }
    data["verdict"] = d.verdict
    data["structural"] = _plain(d.structural[:limit])
    data["structural_total"] = len(d.structural)
    data["structural_by_kind"] = dict(Counter(c.kind for c in d.structural))
    data["divergent_ops"] = len(d.divergences)
    data["top_divergences"] = _plain(d.top_divergences(limit))
    data["phase_spans"] = _plain(d.phase_spans)
    return data


def to_json(result: StepDiff | RunDiff, *, limit: int = 100) -> dict[str, Any]:
    """Plain JSON data of a result; long lists cut to ``limit`` items (totals kept)."""
    if isinstance(result, StepDiff):
        return {"kind": "step", **_step_json(result, limit)}
    data: dict[str, Any] = {"kind": "run", "verdict": result.verdict}
    for f in dataclasses.fields(result):
        value = getattr(result, f.name)
        if f.name in ("diff", "different_diff"):
            data[f.name] = None if value is None else _step_json(value, limit)
        else:
            data[f.name] = _plain(value)
    return data
