"""Reading a step's RNG states (format 1.6) from one rank file, for :mod:`tracefmt._rankfile`.

A step's row of ``step_rng_states`` (row ``k`` for row ``k`` of ``steps``) names its range of
``rng_states``; each of those rows names a device and a range of ``rng_bytes``.  Everything is
checked as the validator checks it (the ranges and limits, the devices with
:func:`~tracefmt.rngstate.devices_problems`, the bytes against their fingerprint), so a hostile
file is a :class:`~tracefmt.errors.TraceFormatError` (or, for bytes that do not match their
fingerprint, a :class:`~tracefmt.errors.TraceCorruptError`) naming the file and step.  A file
older than 1.6 has no RNG states: every step has none.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tracefmt import _layout as L
from tracefmt._rnglayout import (
    MAX_GENERATORS,
    MAX_RNG_STATE_BYTES,
    RNG_BYTES,
    RNG_STATES,
    STEP_RNG_STATES,
    RngStateRow,
)
from tracefmt._rows import named
from tracefmt.dtypes import fingerprint
from tracefmt.errors import TraceCorruptError, TraceFormatError
from tracefmt.rngstate import RngState, devices_problems

if TYPE_CHECKING:
    from tracefmt._rankfile import RankFile


def read_rng_states(rf: RankFile, index: int, step: int) -> tuple[RngState, ...]:
    """The generators' states of step ``step``, in row ``index`` of ``rf``'s step index, in the
    order they were written; none in a file older than 1.6 or for a step written without them."""
    if not L.has_dataset(STEP_RNG_STATES, rf.version.minor):
        return ()
    where, length, rows = f"{rf.path}, step {step}", rf.length, rf._rows
    if index >= length(STEP_RNG_STATES):
        raise TraceFormatError(
            f"{where}: /{STEP_RNG_STATES} has {length(STEP_RNG_STATES)} rows, none for this step "
            f"(row {index} of /{L.STEPS}); the file is damaged."
        )
    span = rows(STEP_RNG_STATES, index, 1, step, 1)[0]
    count = int(span["rng_count"])
    if not count:
        return ()
    states = []
    for r in named(rows(RNG_STATES, int(span["rng_start"]), count, step, MAX_GENERATORS), RngStateRow):
        if r.state_count == 0:
            raise TraceFormatError(f"{where}: a generator's state has no bytes (TF-RNG-003).")
        data = rows(RNG_BYTES, r.state_start, r.state_count, step, MAX_RNG_STATE_BYTES)
        if fingerprint(data) != r.fingerprint:
            raise TraceCorruptError(
                f"{where}: a generator's state (/{RNG_BYTES}, bytes {r.state_start}.."
                f"{r.state_start + r.state_count}) does not match its fingerprint; the file is "
                "damaged."
            )
        device = rf.string(r.device, step)
        if device is None:
            raise TraceFormatError(f"{where}: a generator's state names no device (-1).")
        states.append((device, data.tobytes()))
    for _, message in devices_problems([device for device, _ in states]):
        raise TraceFormatError(f"{where}: {message}")
    return tuple(RngState(device, state) for device, state in states)
