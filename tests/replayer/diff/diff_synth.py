"""Synthetic traces for diff tests that need no torch: a chain of elementwise ops, written with
the tracefmt writer, whose numbers really flow (each op's output is computed from its inputs).

``write_chain(path, n_ops, noise_at=k)`` makes op ``k`` add noise to its output (a
nondeterministic kernel), so everything after it differs and op ``k`` is the origin.
``insert_at=k`` adds one extra op (module ``inserted``) before op ``k``.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

from tracefmt import DType, GraphBuilder, Phase, Role, StepRecord, TraceWriter
from tracefmt.records import empty_stats
from tracefmt.stats import tensor_stats

NUMEL = 16


def _tensor(g: GraphBuilder, data: list[np.ndarray], array: np.ndarray, **kw: Any) -> int:
    data.append(array)
    return g.add_tensor(DType.FLOAT32, array.shape, **kw)


def write_chain(
    path: Path,
    n_ops: int,
    *,
    steps: int = 1,
    noise_at: int | None = None,
    noise_step: int = 0,
    insert_at: int | None = None,
    values: bool = False,
    params: int = 4,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    run_id: str | None = None,
) -> Path:
    """Write ``steps`` steps of an ``n_ops``-op chain ``h = h * w[k % params]`` to ``path``."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(NUMEL).astype(np.float32)
    ws = [(1 + 0.01 * rng.standard_normal(NUMEL)).astype(np.float32) for _ in range(params)]
    with TraceWriter(path, fsync=False, rank=rank, world_size=world_size, run_id=run_id) as writer:
        for step in range(steps):
            g = GraphBuilder()
            data: list[np.ndarray] = []
            tensor = functools.partial(_tensor, g, data)

            h_val = x
            h = tensor(x, role=Role.INPUT, name="input")
            w_idx = [tensor(w, role=Role.PARAMETER, name=f"w{i}") for i, w in enumerate(ws)]
            for k in range(n_ops):
                if insert_at == k:
                    h_val = (h_val * np.float32(1.5)).astype(np.float32)
                    out = tensor(h_val, producer=g.num_ops)
                    g.add_op(
                        "aten::mul.Scalar",
                        phase=Phase.FORWARD,
                        module="inserted",
                        inputs=[h],
                        outputs=[out],
                        attrs={"other": 1.5},
                    )
                    h = out
                w = k % params
                h_val = (h_val * ws[w]).astype(np.float32)
                if noise_at == k and step == noise_step:
                    h_val = (h_val + np.float32(1e-3)).astype(np.float32)
                out = tensor(h_val, producer=g.num_ops)
                g.add_op(
                    "aten::mul.Tensor",
                    phase=Phase.FORWARD,
                    module=f"layers.{k // 2}",
                    inputs=[h, w_idx[w]],
                    outputs=[out],
                )
                h = out
            loss_val = np.asarray(h_val.mean(dtype=np.float32), dtype=np.float32).reshape(())
            loss = tensor(loss_val, producer=g.num_ops)
            g.add_op("aten::mean.default", phase=Phase.FORWARD, module="", inputs=[h], outputs=[loss])
            graph = g.finish()
            stats = empty_stats(graph.num_tensors)
            for i, a in enumerate(data):
                stats[i] = tensor_stats(a, DType.FLOAT32)
            record = StepRecord(
                step=step,
                graph=graph,
                stats=stats,
                values=dict(enumerate(data)) if values else {},
                scalars={"loss": float(loss_val)},
            )
            writer.write_step(record)
    return path
