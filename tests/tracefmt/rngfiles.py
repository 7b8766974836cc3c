"""Traces with RNG states (format 1.6) and the minimal bad files of their rules.

:func:`write_rng` writes the synthetic MLP of :mod:`tests.synth` with the generators' states of
:data:`STEP_STATES`; each entry of :data:`RNG_CASES` breaks one thing of a copy of it, so that
exactly its rule fires (``tests/tracefmt/test_validator.py`` counts these rules as tested).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from tests import badfiles as bad
from tests.synth import mlp_graph, synthetic_step
from tracefmt import RngState, TraceWriter

_CPU_A = bytes(np.random.default_rng(7).integers(0, 256, 5056, dtype=np.uint8))
_CPU_B = bytes(np.random.default_rng(8).integers(0, 256, 5056, dtype=np.uint8))


def _cuda(step: int) -> bytes:
    return np.array([1234, 16 * step], dtype="<u8").tobytes()  # a Philox seed and offset


#: Each step's generators: step 1 was written without states; step 2 drew no random numbers
#: (its CPU state is step 0's, stored once); step 3 has two CUDA devices.
STEP_STATES: tuple[tuple[RngState, ...], ...] = (
    (RngState("cpu", _CPU_A), RngState("cuda:0", _cuda(0))),
    (),
    (RngState("cpu", _CPU_A), RngState("cuda:0", _cuda(2))),
    (RngState("cpu", _CPU_B), RngState("cuda:0", _cuda(3)), RngState("cuda:1", _cuda(3))),
)


def write_rng(path: Path) -> Path:
    """Four steps of the synthetic MLP with the generator states of :data:`STEP_STATES`."""
    rng = np.random.default_rng(5)
    with TraceWriter(path, fsync=False) as w:
        for s, states in enumerate(STEP_STATES):
            record = synthetic_step(s, mlp_graph(), rng, with_values=False)
            record.rng_states = states
            w.write_step(record)
            w.flush()
    return path


class RngCase(NamedTuple):
    rule: str
    make: Callable[[Path], Path]  # (copy of the RNG trace) -> path to validate
    deep: bool = False


def _device_sid(p: Path, row: int) -> int:
    return int(bad.get(p, "rng_states", row, "device"))


def _set_device(p: Path, row: int, text: str) -> Path:
    return bad.set_field(p, "rng_states", row, device=bad.add_string(p, text.encode()))


RNG_CASES: list[RngCase] = [
    RngCase("TF-LAYOUT-001", lambda p: bad.delete(p, "step_rng_states")),
    RngCase("TF-LAYOUT-001", lambda p: bad.delete(p, "rng_bytes")),
    RngCase("TF-RNG-001", lambda p: bad.shorten(p, "step_rng_states", 2)),
    RngCase("TF-RNG-001", lambda p: bad.set_field(p, "step_rng_states", 0, rng_count=10**6)),
    RngCase("TF-RNG-001", lambda p: bad.set_field(p, "step_rng_states", 3, rng_start=6)),
    # a device that is not one
    RngCase("TF-RNG-002", lambda p: _set_device(p, 1, "gpu")),
    RngCase("TF-RNG-002", lambda p: _set_device(p, 1, "cuda:01")),
    # a step with two states of one generator
    RngCase("TF-RNG-002", lambda p: bad.set_field(p, "rng_states", 5, device=_device_sid(p, 6))),
    RngCase("TF-RNG-003", lambda p: bad.set_field(p, "rng_states", 0, state_count=0)),
    RngCase("TF-RNG-003", lambda p: bad.set_field(p, "rng_states", 1, state_start=10**9)),
    RngCase("TF-RNG-003", lambda p: bad.set_field(p, "rng_states", 0, state_count=(1 << 20) + 1)),
    RngCase("TF-RNG-004", lambda p: bad.set_item(p, "rng_bytes", 3, int(_CPU_A[3]) ^ 1), deep=True),
    RngCase("TF-STR-001", lambda p: bad.set_field(p, "rng_states", 0, device=-1)),
    RngCase("TF-STR-001", lambda p: bad.set_field(p, "rng_states", 0, device=10_000)),
]
