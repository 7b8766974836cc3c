"""Synthetic data-parallel runs for the ``replayer ranks`` tests, written with the tracefmt writer
(no torch): every rank runs forward, backward, DDP's bucket all-reduce (``c10d::allreduce_`` with
the format's ``"c10d"`` attributes), a gradient scale and an SGD update, with real numbers, so the
all-reduce outputs, gradients and parameters agree across ranks unless a test breaks them.

Each rank also issues a ``c10d::broadcast_`` in forward.  ``Faults`` says what to break.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tracefmt import DType, GraphBuilder, Phase, Role, StepRecord, TraceWriter, rank_file_path
from tracefmt.records import empty_op_stats, empty_stats
from tracefmt.stats import tensor_stats

WIDTH = 8
PARAMS = ("layers.0.weight", "layers.1.weight")
LR = np.float32(0.1)


def group_id(name: str, ranks: list[int]) -> str:
    digest = hashlib.sha1(",".join(map(str, sorted(ranks))).encode()).hexdigest()[:8]
    return f"{name}:{digest}"


@dataclass
class Faults:
    """What to break: each key is ``(rank, step)``."""

    extra_allreduce: set[tuple[int, int]] = field(default_factory=set)
    bucket_size: dict[tuple[int, int], int] = field(default_factory=dict)
    bucket_dtype: dict[tuple[int, int], DType] = field(default_factory=dict)
    reduce_op: dict[tuple[int, int], str] = field(default_factory=dict)
    output_noise: set[tuple[int, int]] = field(default_factory=set)
    grad_scale: dict[tuple[int, int], float] = field(default_factory=dict)
    init_seed: dict[int, int] = field(default_factory=dict)
    missing_steps: dict[int, set[int]] = field(default_factory=dict)
    #: ns a rank spends before the bucket all-reduce: it arrives that much after the others
    late: dict[tuple[int, int], int] = field(default_factory=dict)
    #: steps written without op start times (as before format 1.3)
    no_starts: set[tuple[int, int]] = field(default_factory=set)


class _Step:
    """Builds one rank's graph with its values, stats and op times."""

    def __init__(self) -> None:
        self.g = GraphBuilder()
        self.data: list[np.ndarray] = []
        self.dtypes: list[DType] = []
        self.unmeasured: set[int] = set()
        self.delays: dict[int, int] = {}  # op index -> ns spent before it
        self.starts = True

    def tensor(self, a: np.ndarray, dtype: DType = DType.FLOAT32, **kw: Any) -> int:
        self.data.append(a)
        self.dtypes.append(dtype)
        return self.g.add_tensor(dtype, a.shape, **kw)

    def out(self, a: np.ndarray, dtype: DType = DType.FLOAT32, **kw: Any) -> int:
        return self.tensor(a, dtype, producer=self.g.num_ops, **kw)

    def record(self, step: int, duration: float) -> StepRecord:
        graph = self.g.finish()
        stats = empty_stats(graph.num_tensors)
        for i, (a, dt) in enumerate(zip(self.data, self.dtypes, strict=True)):
            if i not in self.unmeasured:
                stats[i] = tensor_stats(a, dt)
        op_stats = empty_op_stats(graph.num_ops)
        op_stats["host_ns"] = 1_000
        # ops one after another from 5 us into the step, 1 us each and 500 ns apart
        starts = [
            5_000 + 1_500 * i + sum(d for j, d in self.delays.items() if j <= i)
            for i in range(graph.num_ops)
        ]
        return StepRecord(
            step=step,
            graph=graph,
            stats=stats,
            op_stats=op_stats,
            duration=duration,
            op_starts=starts if self.starts else None,
        )


def _c10d(
    rank: int, ranks: list[int], seq: int, reduce_op: str | None, root: int | None
) -> dict[str, Any]:
    return {
        "c10d": {
            "group": group_id("0", ranks),
            "group_name": "0",
            "group_ranks": ranks,
            "kind": "collective",
            "seq": seq,
            "coalesced": None,
            "reduce_op": reduce_op,
            "root": root,
            "peer": None,
            "rank": rank,
            "backend_seq": None,
        }
    }


def _rank_step(
    rank: int, world: int, step: int, params: list[np.ndarray], faults: Faults
) -> tuple[StepRecord, list[np.ndarray]]:
    """One rank's step; returns the record and the parameters after it."""
    ranks = list(range(world))
    key = (rank, step)
    s = _Step()
    seq = 0
    ws = [s.tensor(p, role=Role.PARAMETER, name=n) for p, n in zip(params, PARAMS, strict=True)]
    flag = np.ones(4, dtype=np.float32)
    f0 = s.tensor(flag, role=Role.BUFFER, name="flag")
    f1 = s.out(flag, version=1, role=Role.BUFFER, name="flag")
    s.g.add_op(
        "c10d::broadcast_.default",
        phase=Phase.FORWARD,
        module="",
        inputs=[f0],
        outputs=[f1],
        attrs={"root_rank": 0, **_c10d(rank, ranks, seq, None, 0)},
    )
    seq += 1
    # Each rank has its own batch, so its own local gradients.
    batches = [
        np.random.default_rng(1000 * step + r).standard_normal(WIDTH).astype(np.float32) for r in ranks
    ]
    x = s.tensor(batches[rank], role=Role.INPUT, name="input")
    h = x
    for i, w in enumerate(ws):
        y = s.out((params[i] @ s.data[h]).astype(np.float32))
        s.g.add_op(
            "aten::mv.default", phase=Phase.FORWARD, module=f"layers.{i}", inputs=[w, h], outputs=[y]
        )
        h = y
    local = [
        [np.outer(b, b).astype(np.float32) * np.float32(i + 1) for i in range(len(params))]
        for b in batches
    ]
    grads = []
    for i, w in enumerate(ws):
        gt = s.out(local[rank][i], role=Role.GRADIENT, name=f"{PARAMS[i]}.grad")
        s.g.add_op(
            "aten::mm.default", phase=Phase.BACKWARD, module=f"layers.{i}", inputs=[h, w], outputs=[gt]
        )
        grads.append(gt)
    # DDP's bucket: the local gradients, flattened, all-reduced (mean over the ranks).
    n = WIDTH * WIDTH * len(params)
    size = faults.bucket_size.get(key, n)
    dtype = faults.bucket_dtype.get(key, DType.FLOAT32)
    flat = np.concatenate([g.reshape(-1) for g in local[rank]])[:size]
    bucket = s.out(flat.astype(np.float32), dtype, name="bucket")
    s.g.add_op("aten::cat.default", phase=Phase.BACKWARD, module="", inputs=grads, outputs=[bucket])
    stacked = np.stack([np.concatenate([g.reshape(-1) for g in lg]) for lg in local])
    mean: np.ndarray = (stacked.sum(axis=0, dtype=np.float32) / np.float32(world)).astype(np.float32)
    reduced = mean[:size].copy()
    if key in faults.output_noise:
        reduced[0] += np.float32(1e-3)
    bucket1 = s.out(reduced, dtype, name="bucket", version=1)
    s.delays[s.g.num_ops] = faults.late.get(key, 0)
    s.starts = key not in faults.no_starts
    s.g.add_op(
        "c10d::allreduce_.default",
        phase=Phase.BACKWARD,
        module="",
        inputs=[bucket],
        outputs=[bucket1],
        attrs=_c10d(rank, ranks, seq, faults.reduce_op.get(key, "SUM"), None),
    )
    seq += 1
    if key in faults.extra_allreduce:
        extra = s.tensor(np.ones(3, dtype=np.float32), name="extra")
        extra1 = s.out(np.full(3, world, dtype=np.float32), name="extra", version=1)
        s.g.add_op(
            "c10d::allreduce_.default",
            phase=Phase.BACKWARD,
            module="layers.1.probe",
            inputs=[extra],
            outputs=[extra1],
            attrs=_c10d(rank, ranks, seq, "SUM", None),
        )
        seq += 1
    new_params = []
    for i, w in enumerate(ws):
        avg = (
            reduced[i * WIDTH * WIDTH : (i + 1) * WIDTH * WIDTH]
            if size == n
            else mean[i * WIDTH * WIDTH : (i + 1) * WIDTH * WIDTH]
        )
        avg = avg.reshape(WIDTH, WIDTH).astype(np.float32)
        g1 = s.out(avg, role=Role.GRADIENT, name=f"{PARAMS[i]}.grad", version=1)
        s.g.add_op(
            "aten::copy_.default",
            phase=Phase.BACKWARD,
            module="",
            inputs=[grads[i], bucket1],
            outputs=[g1],
        )
        scale = faults.grad_scale.get(key, 1.0)
        scaled = (avg * np.float32(scale)).astype(np.float32)
        g2 = s.out(scaled, role=Role.GRADIENT, name=f"{PARAMS[i]}.grad", version=2)
        s.g.add_op(
            "aten::mul_.Scalar",
            phase=Phase.OPTIMIZER,
            module="",
            inputs=[g1],
            outputs=[g2],
            attrs={"other": scale},
        )
        p1 = (params[i] - LR * scaled).astype(np.float32)
        wn = s.out(p1, role=Role.PARAMETER, name=PARAMS[i], version=1)
        s.g.add_op(
            "aten::add_.Tensor",
            phase=Phase.OPTIMIZER,
            module="",
            inputs=[w, g2],
            outputs=[wn],
            attrs={"alpha": -float(LR)},
        )
        new_params.append(p1)
    return s.record(step, duration=0.1 + 0.05 * rank), new_params


def write_run(
    run: Path,
    *,
    world: int = 2,
    steps: int = 3,
    faults: Faults | None = None,
    run_id: str = "synthetic-ddp",
) -> Path:
    """Write ``steps`` steps of every rank of a ``world``-rank data-parallel run to ``run``."""
    faults = faults or Faults()
    for rank in range(world):
        rng = np.random.default_rng(faults.init_seed.get(rank, 7))
        params = [(rng.standard_normal((WIDTH, WIDTH)) * 0.1).astype(np.float32) for _ in PARAMS]
        with TraceWriter(
            rank_file_path(run, rank), rank=rank, world_size=world, run_id=run_id, fsync=False
        ) as w:
            for step in range(steps):
                record, params = _rank_step(rank, world, step, params, faults)
                if step not in faults.missing_steps.get(rank, set()):
                    w.write_step(record)
    return run


@dataclass
class Op:
    """One c10d op of a hand-made step: sizes in elements, ``value`` fills what it writes.

    ``c10d`` replaces the op's ``"c10d"`` attribute (``None``: the regular one).
    """

    name: str
    seq: int
    sent: int = 4
    written: int = 4
    kind: str = "collective"
    peer: int | None = None
    value: float = 1.0
    module: str = ""
    c10d: Any = None
    measured: bool = True


def write_ops(run: Path, per_rank: dict[int, list[Op]], *, world: int | None = None) -> Path:
    """One step (step 0) per rank holding only ``per_rank[rank]``'s ops, in order."""
    world = world or len(per_rank)
    ranks = list(range(world))
    for rank, ops in per_rank.items():
        s = _Step()
        for op in ops:
            src = s.tensor(np.full(op.sent, 2.0, dtype=np.float32)) if op.sent else None
            out = s.out(np.full(op.written, op.value, dtype=np.float32)) if op.written else None
            if out is not None and not op.measured:
                s.unmeasured.add(out)
            attrs = _c10d(rank, ranks, op.seq, None, None)
            attrs["c10d"].update(kind=op.kind, peer=op.peer)
            if op.c10d is not None:
                attrs["c10d"] = op.c10d
            inputs: list[int | tuple[int, int, int]] = []
            if src is not None:
                arg = 1 if "allgather" in op.name else 0
                inputs.append((src, arg, -1))
            s.g.add_op(
                op.name,
                phase=Phase.FORWARD,
                module=op.module,
                inputs=inputs,
                outputs=[] if out is None else [out],
                attrs=attrs,
            )
        with TraceWriter(
            rank_file_path(run, rank), rank=rank, world_size=world, run_id="ops", fsync=False
        ) as w:
            w.write_step(s.record(0, duration=0.01))
    return run
