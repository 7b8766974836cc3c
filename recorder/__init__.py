"""recorder: record whole PyTorch training steps (forward, backward, optimizer) into tracefmt traces.

Two lines added to a training loop::

    import recorder
    with recorder.record("runs/exp1", schedule=recorder.schedule(every=1)) as rec:
        for batch in loader:
            ...  # the unchanged forward, backward, optimizer.step(), zero_grad()
            rec.step(loss=loss)

Every aten op between two ``rec.step()`` calls is captured in execution order with its phase, module
path, inputs and outputs (linked producer to consumer), shapes, dtypes, attributes, host time, and
per-tensor statistics computed on the tensor's device.  Steps are written by a background thread.
Under ``torchrun`` every rank records its own ``rank-NNNNN.tft.h5`` into the one run directory,
with the same run id, and rank 0 writes the run's ``run.json`` (:mod:`recorder.distributed`).
This is the only package of the project that imports torch; it does so lazily, so ``schedule`` and
``select`` work (and are tested) without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from recorder.flight.alarms import TriggerOptions
from recorder.flight.spike import SpikeOptions
from recorder.options import Options, ValuesSelection, select
from recorder.schedule import Action, Schedule, schedule

if TYPE_CHECKING:
    from recorder.flight.keeper import Fired, TriggerFired
    from recorder.session import Recorder, record

__all__ = [
    "Action",
    "Fired",
    "Options",
    "Recorder",
    "Schedule",
    "SpikeOptions",
    "TriggerFired",
    "TriggerOptions",
    "ValuesSelection",
    "record",
    "schedule",
    "select",
]


def __getattr__(name: str) -> Any:
    if name in ("record", "Recorder"):
        from recorder import session

        return getattr(session, name)
    if name in ("Fired", "TriggerFired"):
        from recorder.flight import keeper

        return getattr(keeper, name)
    raise AttributeError(f"module 'recorder' has no attribute {name!r}")
