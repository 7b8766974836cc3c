"""The HDF5 layout of per-step RNG states (format 1.6): ``rng_states``, ``step_rng_states`` and
the heap ``rng_bytes``.

Part of :mod:`tracefmt._layout`, which imports and registers everything here (and is where the
rest of the code takes it from); kept apart so that the layout module stays one screenful per idea.

``rng_bytes`` holds generators' states as the raw bytes their library gives
(``torch.get_rng_state()``: 5,056 bytes for the CPU generator; 16 for a CUDA device's).
``rng_states`` holds one row per (step, generator): the generator's device (a string id), its
state's range of ``rng_bytes`` and the state's fingerprint.  ``step_rng_states`` runs along
``steps`` (row ``k`` belongs to row ``k`` of ``steps``, as ``step_modules`` does) and names the
step's range of ``rng_states``; an empty range means the step has no RNG states.  A state equal to
the one stored last for the same device points at the same bytes: a step that draws no random
numbers leaves its generators as they were, and costs a row, not another copy.  All three are new
datasets rather than fields of ``steps``: a reader checks row dtypes exactly (spec section 4.1).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

RNG_STATES = "rng_states"
STEP_RNG_STATES = "step_rng_states"
RNG_BYTES = "rng_bytes"

#: One generator's state at the start of a step: its device (string id), its bytes' range of
#: ``rng_bytes`` and their fingerprint (spec section 9).
RNG_STATE_DTYPE = np.dtype(
    [("device", "<i4"), ("state_start", "<u8"), ("state_count", "<u4"), ("fingerprint", "<u8")]
)
#: Row k: the range of ``rng_states`` that holds the generators of row k of ``steps``.
STEP_RNG_DTYPE = np.dtype([("rng_start", "<u8"), ("rng_count", "<u4")])

#: The most bytes one state may have (torch's CPU generator has 5,056).
MAX_RNG_STATE_BYTES = 1 << 20
#: The most generators one step may have (one per device and the CPU's).
MAX_GENERATORS = 65_536

#: Path -> (row dtype, rows per chunk), registered in ``tracefmt._layout.TABLES`` and ``HEAPS``.
RNG_TABLES: dict[str, tuple[np.dtype[Any], int]] = {
    RNG_STATES: (RNG_STATE_DTYPE, 2048),  # 48 KiB: 2,048 steps of one generator
    STEP_RNG_STATES: (STEP_RNG_DTYPE, 1024),  # 12 KiB, like step_modules
}
RNG_HEAPS: dict[str, tuple[np.dtype[Any], int]] = {
    RNG_BYTES: (np.dtype("u1"), 65536),  # 64 KiB: 12 steps of a CPU generator's state
}
#: The minor version that added each (``tracefmt._layout.SINCE_MINOR``).
RNG_SINCE: dict[str, int] = dict.fromkeys([*RNG_TABLES, *RNG_HEAPS], 6)


class RngStateRow(NamedTuple):
    """A row of ``rng_states`` (format 1.6)."""

    device: int
    state_start: int
    state_count: int
    fingerprint: int


class StepRngRow(NamedTuple):
    """A row of ``step_rng_states`` (format 1.6): the step's range of ``rng_states``."""

    rng_start: int
    rng_count: int
