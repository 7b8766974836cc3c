"""Names of the traces the replayer tests record, and a helper that rewrites a recorded step."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

import tracefmt
from tracefmt import GraphBuilder, StepRecord, TraceWriter
from tracefmt import _layout as L
from tracefmt.records import empty_stats

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
        s = trace.step(step)
        g = GraphBuilder()
        for t in s.tensors:
            m = t.meta
            g.add_tensor(
                m.dtype,
                m.shape,
                strides=m.strides,
                device=m.device,
                role=m.role,
                name=m.name,
                producer=m.producer,
                producer_slot=m.producer_slot,
                version=m.version,
                storage_offset=m.storage_offset,
            )
        for op in s.ops:
            g.add_op(
                op.name,
                phase=op.phase,
                module=op.module,
                inputs=[(t, a, i) for t, (a, i) in zip(op.inputs, op.input_args, strict=True)],
                outputs=list(op.outputs),
                attrs=dict(op.attrs) or None,
                source=op.source,
            )
        stats = empty_stats(len(s.tensors))
        values = {}
        for t in s.tensors:
            st = t.stats
            if st is not None:
                flags = 0
                if st.min is not None:
                    flags |= L.STAT_MOMENTS
                    for key in ("min", "max", "mean", "std", "norm"):
                        stats[key][t.index] = getattr(st, key)
                if st.nan is not None:
                    flags |= L.STAT_COUNTS
                    for key in ("nan", "inf", "zero"):
                        stats[key][t.index] = getattr(st, key)
                if st.fingerprint is not None:
                    flags |= L.STAT_FINGERPRINT
                    stats["fingerprint"][t.index] = st.fingerprint
                stats["flags"][t.index] = flags
            if t.has_values:
                array = t.values()
                values[t.index] = alter[t.index](array) if t.index in alter else array
        record = StepRecord(step=s.step, graph=g.finish(), stats=stats, values=values)
    with TraceWriter(target, overwrite=True) as w:
        w.write_step(record)
        w.flush()
