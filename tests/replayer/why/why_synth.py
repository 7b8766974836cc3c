"""Synthetic traces for ``replayer why``: small steps computed in numpy, written with the writer.

:class:`Tape` records ops as they compute (numpy arrays in, arrays out), so every tensor's
statistics are what its values say; views are left unmeasured as the recorder leaves them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tracefmt import DType, Event, GraphBuilder, LightKind, LightStepRecord, Phase, Role, StepRecord
from tracefmt.events import trigger_event
from tracefmt.light import LightFlags, empty_light_rows
from tracefmt.records import empty_stats
from tracefmt.stats import tensor_stats
from tracefmt.writer import TraceWriter, rank_file_path

RUN_ID = "why-synth"


class Tape:
    """One step's graph and values, op by op."""

    def __init__(self) -> None:
        self.g = GraphBuilder()
        self.values: list[np.ndarray] = []
        self.unmeasured: set[int] = set()

    def tensor(
        self, value: Any, *, role: Role = Role.INPUT, name: str | None = None, version: int = 0
    ) -> int:
        """A tensor entering the step (no producer)."""
        arr = np.asarray(value, dtype=np.float32)
        self.values.append(arr)
        return self.g.add_tensor(DType.FLOAT32, arr.shape, role=role, name=name, version=version)

    def op(
        self,
        name: str,
        inputs: Sequence[int],
        fn: Callable[..., Any],
        *,
        module: str = "",
        phase: Phase = Phase.FORWARD,
        attrs: dict[str, Any] | None = None,
        role: Role = Role.ACTIVATION,
        out_name: str | None = None,
        measured: bool = True,
    ) -> int:
        """An op computing one output ``fn(*input values)``; its index is the output's."""
        with np.errstate(all="ignore"):
            out = np.asarray(fn(*(self.values[i] for i in inputs)), dtype=np.float32)
        t = self.g.add_tensor(
            DType.FLOAT32, out.shape, role=role, name=out_name, producer=self.g.num_ops
        )
        self.g.add_op(name, phase=phase, module=module, inputs=list(inputs), outputs=[t], attrs=attrs)
        self.values.append(out)
        if not measured:
            self.unmeasured.add(t)
        return t

    def value(self, t: int) -> np.ndarray:
        return self.values[t]

    def record(self, step: int, events: Sequence[Event] = (), loss: int | None = None) -> StepRecord:
        graph = self.g.finish()
        stats = empty_stats(graph.num_tensors)
        for i, v in enumerate(self.values):
            if i not in self.unmeasured:
                stats[i] = tensor_stats(v, DType.FLOAT32)
        scalars = {} if loss is None else {"loss": float(self.value(loss))}
        return StepRecord(step=step, graph=graph, stats=stats, scalars=scalars, events=list(events))


def event(kind: str, *, rank: int = 0, **fields: Any) -> Event:
    return trigger_event(kind, f"synthetic {kind}", rank=rank, **fields)


def writer(run: Path, rank: int = 0, world_size: int = 1) -> TraceWriter:
    return TraceWriter(
        rank_file_path(run, rank), rank=rank, world_size=world_size, run_id=RUN_ID, overwrite=True
    )


def mlp_step(
    step: int,
    *,
    w_scale: float = 1.0,
    log_shift: float = 1.0,
    head_scale: float = 1.0,
    events: Sequence[Event] = (),
    seed: int = 0,
) -> StepRecord:
    """x -> mm(w) -> relu -> add(shift) -> log -> mul(head_scale) -> mean (the loss).

    ``log_shift`` below zero makes ``log`` create NaN from finite inputs (``block.1``);
    ``head_scale`` scales the ``head`` op's output (a spike); ``w_scale`` the weight."""
    rng = np.random.default_rng(seed + step)
    tape = Tape()
    x = tape.tensor(rng.standard_normal((8, 4)) * 0.1 + 1.0, name="x")
    w = tape.tensor(np.full((4, 4), 0.5) * w_scale, role=Role.PARAMETER, name="block.0.weight")
    y = tape.op("aten::mm.default", [x, w], np.matmul, module="block.0")
    r = tape.op("aten::relu.default", [y], lambda v: np.maximum(v, 0), module="block.0.act")
    s = tape.op(
        "aten::add.Scalar", [r], lambda v: v + log_shift, module="block.1", attrs={"other": log_shift}
    )
    lg = tape.op("aten::log.default", [s], np.log, module="block.1")
    h = tape.op(
        "aten::mul.Scalar", [lg], lambda v: v * head_scale, module="head", attrs={"other": head_scale}
    )
    loss = tape.op("aten::mean.default", [h], np.mean)
    return tape.record(step, events, loss)


def light_step(
    step: int,
    *,
    dec_inf: int = 0,
    enc_scale: float = 1.0,
    dec_param_inf: bool = False,
    events: Sequence[Event] = (),
) -> LightStepRecord:
    """Light rows of a two-module model: outputs of ``enc``, ``dec`` and the root, then each
    weight's gradient and value.  ``dec_inf``: Inf values ``dec`` creates (the root then
    receives them); ``enc_scale`` scales ``enc``'s output; ``dec_param_inf``: ``dec.weight``
    holds Inf after the update."""
    names = ["enc", "dec", "", "enc.weight", "dec.weight"]
    rows = empty_light_rows(7)
    spec = [
        (0, LightKind.OUTPUT, 2.0 * enc_scale, 0, False),
        (1, LightKind.OUTPUT, 3.0, dec_inf, False),
        (2, LightKind.OUTPUT, 3.0, dec_inf, dec_inf > 0),
        (3, LightKind.GRADIENT, 0.1, 0, False),
        (4, LightKind.GRADIENT, 0.1, 0, False),
        (3, LightKind.PARAMETER, 1.0, 0, False),
        (4, LightKind.PARAMETER, 1.0, int(dec_param_inf), False),
    ]
    for k, (name, kind, norm, inf, inputs_bad) in enumerate(spec):
        rows[k]["name"], rows[k]["kind"], rows[k]["numel"] = name, int(kind), 16
        flags = LightFlags.MOMENTS | LightFlags.COUNTS
        rows[k]["flags"] = int(flags | (LightFlags.INPUTS_NONFINITE if inputs_bad else 0))
        rows[k]["min"], rows[k]["max"] = -norm / 4, norm / 4
        rows[k]["mean"], rows[k]["std"], rows[k]["norm"] = 0.0, norm / 4, norm
        rows[k]["nan"], rows[k]["inf"] = 0, inf
    loss = float("inf") if dec_inf else 1.0 * enc_scale
    return LightStepRecord(
        step=step, names=names, rows=rows, scalars={"loss": loss}, events=list(events)
    )
