"""Names of the traces the replayer tests record, and a helper that rewrites a recorded step."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

import tracefmt
from tracefmt import TraceWriter
from tracefmt.torecord import step_record

#: The built-in examples (``python -m recorder.examples.<name>``).
EXAMPLES = ("gpt", "cnn", "mlp")
#: Extra models of ``_record_models.py``.
MODELS = ("convnet", "adamw_foreach")


def copy_step(
    source: Path, target: Path, step: int, alter: Mapping[int, Callable[[np.ndarray], np.ndarray]]
) -> None:
    """Write step ``step`` of ``source`` to a new trace ``target``, with the values of the
    tensors in ``alter`` (by index) replaced by ``alter[t](values)`` and their statistics kept:
    what a trace whose recorded parameter was changed after the fact looks like."""
    with tracefmt.open(source) as trace:
        record = step_record(trace.step(step))
    record.values = {i: alter[i](v) if i in alter else v for i, v in record.values.items()}
    with TraceWriter(target, overwrite=True) as w:
        w.write_step(record)
        w.flush()
