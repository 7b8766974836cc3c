"""Golden traces: small deterministic traces under ``tests/data/<format version>/`` that every later
tracefmt must read (spec/versioning.md, "Golden traces").

    make golden          (TRACEFMT_REGEN_GOLDEN=1 python -m tests.golden)

Each format version's goldens are written once, by the code of the commit that introduced the
version, and then kept as they are; ``make golden`` writes the current version's goldens only when
``tests/data/<version>/`` does not exist yet, and refuses otherwise.  ``tests/data/1.0/`` was written
by :mod:`tests.golden10`; 1.1 on by :mod:`tests.goldgen`, run in a ``git worktree`` of each
version's commit.  Each version's ``manifest.json`` is computed by its generator from the records
it wrote (not by reading the files back), in the form the ``describe_*`` functions here give for
what the current reader returns, so a reader bug cannot hide in it.  The tests:
``tests/tracefmt/test_golden.py`` (1.0) and ``tests/tracefmt/test_golden_versions.py`` (every
version: read, validate, replay).
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
import sys
from pathlib import Path
from typing import Any

import numpy as np

from tracefmt import Step
from tracefmt import _layout as L
from tracefmt.light import LightStep
from tracefmt.model import TensorMeta, TensorStats
from tracefmt.moduletable import ModuleTable
from tracefmt.records import encode_attrs

ROOT = Path(__file__).resolve().parent / "data"
DATA = ROOT / "1.0"  # the 1.0 goldens (tests/golden10.py)
MANIFEST = DATA / "manifest.json"
SWITCH = "TRACEFMT_REGEN_GOLDEN"
RUN_ID = "golden-run-0001"
_VERSION_DIR = re.compile(r"[0-9]+\.[0-9]+")


def versions() -> list[str]:
    """The format versions that have goldens under ``tests/data``, oldest first."""
    names = [p.name for p in ROOT.iterdir() if p.is_dir() and _VERSION_DIR.fullmatch(p.name)]
    return sorted(names, key=lambda v: tuple(map(int, v.split("."))))


def minor(version: str) -> int:
    return int(version.split(".")[1])


# -- canonical descriptions (shared by the generator and the test) ---------------------------------


def bits(x: float) -> str:
    """A float64 as the hex of its bits: exact, NaN payloads included."""
    return f"{struct.unpack('<Q', struct.pack('<d', float(x)))[0]:016x}"


def _stats(s: TensorStats | None) -> dict[str, Any] | None:
    if s is None:
        return None
    out: dict[str, Any] = {
        k: None if getattr(s, k) is None else bits(getattr(s, k))
        for k in ("min", "max", "mean", "std", "norm")
    }
    out.update({k: getattr(s, k) for k in ("nan", "inf", "zero", "fingerprint")})
    return out


def _meta(m: TensorMeta) -> dict[str, Any]:
    return {
        "dtype": m.dtype.label,
        "shape": list(m.shape),
        "strides": None if m.strides is None else list(m.strides),
        "device": m.device,
        "role": m.role.label,
        "name": m.name,
        "producer": m.producer,
        "producer_slot": m.producer_slot,
        "version": m.version,
        "storage_offset": m.storage_offset,
    }


def _values(array: np.ndarray) -> dict[str, Any]:
    raw = np.ascontiguousarray(array).tobytes()
    return {"nbytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}


def describe_step(step: Step, *, starts: bool = False) -> dict[str, Any]:
    """What the reader returned for a step, as JSON data (``starts``: with each op's
    ``host_start_ns``, which goldens of 1.3 on describe)."""
    out = {
        "step": step.step,
        "graph": step.graph,
        "ops": [
            {
                "name": op.name,
                "phase": op.phase.label,
                "module": op.module,
                "inputs": list(op.inputs),
                "input_args": [list(a) for a in op.input_args],
                "outputs": list(op.outputs),
                "attrs": encode_attrs(op.attrs),
                "source": op.source,
                "host_ns": op.host_ns,
                "device_ns": op.device_ns,
                "mem_bytes": op.mem_bytes,
            }
            for op in step.ops
        ],
        "tensors": [
            {
                **_meta(t.meta),
                "stats": _stats(t.stats),
                "histogram": None
                if t.histogram is None
                else {
                    "lo": bits(t.histogram.lo),
                    "hi": bits(t.histogram.hi),
                    "counts": list(t.histogram.counts),
                },
                "values": _values(t.values()) if t.has_values else None,
            }
            for t in step.tensors
        ],
        "events": [[e.kind, e.message, e.op, e.tensor] for e in step.events],
        "scalars": {k: bits(v) for k, v in step.scalars.items()},
        "wall_time": bits(step.wall_time),
        "duration": bits(step.duration),
        "dropped": step.dropped,
        "has_nan": step.has_nan,
        "has_inf": step.has_inf,
    }
    if starts:
        for described, op in zip(out["ops"], step.ops, strict=True):
            described["host_start_ns"] = op.host_start_ns
    return out


def describe_modules(table: ModuleTable | None) -> list[list[Any]] | None:
    """A step's module table (1.5) as rows of (path, class, params, trainable, own params, own
    trainable, parameter bytes)."""
    if table is None:
        return None
    return [
        [m.path, m.class_name, m.params, m.trainable, m.own_params, m.own_trainable, m.param_bytes]
        for m in table
    ]


def describe_rng_states(step: Step) -> list[list[Any]]:
    """A step's RNG states (1.6) as rows of (device, bytes, SHA-256 of the bytes)."""
    return [[s.device, len(s.state), hashlib.sha256(s.state).hexdigest()] for s in step.rng_states]


def describe_light_step(light: LightStep) -> dict[str, Any]:
    """What the reader returned for a light step (1.4), as JSON data."""

    def opt(x: float | None) -> str | None:
        return None if x is None else bits(x)

    return {
        "step": light.step,
        "rows": [
            [
                r.name,
                r.kind.label,
                r.numel,
                *map(opt, (r.min, r.max, r.mean, r.std, r.norm)),
                r.nan,
                r.inf,
                r.inputs_nonfinite,
            ]
            for r in light.rows
        ],
        "scalars": {k: bits(v) for k, v in light.scalars.items()},
        "events": [[e.kind, e.message, e.op, e.tensor] for e in light.events],
        "wall_time": bits(light.wall_time),
        "duration": bits(light.duration),
        "has_nan": light.has_nan,
        "has_inf": light.has_inf,
        "nonfinite_created": light.nonfinite_created,
        "nonfinite_state": light.nonfinite_state,
    }


# -- make golden ------------------------------------------------------------------------------


def main() -> int:
    """Write the current format version's goldens, unless they exist (``make golden``)."""
    target = ROOT / L.FORMAT_VERSION
    if os.environ.get(SWITCH) != "1" or target.exists():
        why = f"{target} exists" if target.exists() else f"{SWITCH} is not set (make golden sets it)"
        print(
            f"Refusing to write golden traces: {why}. A format version's goldens are written "
            "once, by the version that introduced it, and later versions must read them as "
            "they are; a new format version adds its own directory.",
            file=sys.stderr,
        )
        return 2 if not target.exists() else 1
    from tests import goldgen

    return goldgen.main([str(target)])


if __name__ == "__main__":
    sys.exit(main())
