"""A synthetic training step of any size for the Model Explorer tests and ``bench/view.py``.

Forward: ``layers`` blocks of ``mm -> add -> relu`` in modules ``layers.<i>.block<j>`` (four blocks
of three ops per layer); backward: two ops per forward op in the same modules, in reverse order,
reading the saved forward tensors; optimizer: per parameter, the AdamW-like ops outside any
module, touching the parameter, its gradient and its ``exp_avg`` state.  Every tensor has
statistics and every op a host time, so every overlay has values.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tracefmt import DType, GraphBuilder, Phase, Role, StepRecord, TraceWriter
from tracefmt.records import empty_op_stats, empty_stats

#: Ops per forward block, backward block and parameter update.
FORWARD, BACKWARD, OPTIMIZER = 3, 6, 4
SHAPE = (8, 16)


def ops_per_layer(blocks: int = 4) -> int:
    return blocks * (FORWARD + BACKWARD + OPTIMIZER)


def write_training_step(path: Path, ops: int, *, blocks: int = 4) -> int:
    """Write one step of about ``ops`` ops (a multiple of :func:`ops_per_layer`) to ``path``;
    returns the exact op count."""
    layers = max(1, round(ops / ops_per_layer(blocks)))
    g = GraphBuilder()
    f32 = DType.FLOAT32
    x = g.add_tensor(f32, SHAPE, role=Role.INPUT, name="input")
    saved: list[tuple[str, int, int, int]] = []  # module, input, weight, output
    for i in range(layers):
        for j in range(blocks):
            module = f"layers.{i}.block{j}"
            w = g.add_tensor(f32, (16, 16), role=Role.PARAMETER, name=f"{module}.weight")
            y = g.add_tensor(f32, SHAPE, producer=g.num_ops)
            g.add_op("aten::mm.default", phase=Phase.FORWARD, module=module, inputs=[x, w], outputs=[y])
            z = g.add_tensor(f32, SHAPE, producer=g.num_ops)
            g.add_op("aten::add.Tensor", phase=Phase.FORWARD, module=module, inputs=[y, x], outputs=[z])
            r = g.add_tensor(f32, SHAPE, producer=g.num_ops)
            g.add_op("aten::relu.default", phase=Phase.FORWARD, module=module, inputs=[z], outputs=[r])
            saved.append((module, x, w, r))
            x = r
    grad = g.add_tensor(f32, SHAPE, producer=g.num_ops)
    g.add_op("aten::ones_like.default", phase=Phase.BACKWARD, inputs=[x], outputs=[grad])
    grads: list[tuple[str, int, int]] = []
    for module, inp, w, out in reversed(saved):
        t1 = g.add_tensor(f32, SHAPE, producer=g.num_ops)
        g.add_op("aten::threshold_backward.default", phase=Phase.BACKWARD, module=module,
                 inputs=[grad, out], outputs=[t1], attrs={"threshold": 0.0})  # fmt: skip
        t2 = g.add_tensor(f32, (16, 8), producer=g.num_ops)
        g.add_op("aten::t.default", phase=Phase.BACKWARD, module=module, inputs=[inp], outputs=[t2])
        gw = g.add_tensor(
            f32, (16, 16), role=Role.GRADIENT, name=f"{module}.weight.grad", producer=g.num_ops
        )
        g.add_op("aten::mm.default", phase=Phase.BACKWARD, module=module, inputs=[t2, t1], outputs=[gw])
        t3 = g.add_tensor(f32, (16, 16), producer=g.num_ops)
        g.add_op("aten::t.default", phase=Phase.BACKWARD, module=module, inputs=[w], outputs=[t3])
        t4 = g.add_tensor(f32, SHAPE, producer=g.num_ops)
        g.add_op("aten::mm.default", phase=Phase.BACKWARD, module=module, inputs=[t1, t3], outputs=[t4])
        t5 = g.add_tensor(f32, SHAPE, producer=g.num_ops)
        g.add_op("aten::add.Tensor", phase=Phase.BACKWARD, module=module, inputs=[t4, t1], outputs=[t5])
        grad = t5
        grads.append((module, w, gw))
    for module, w, gw in grads:
        avg = g.add_tensor(f32, (16, 16), role=Role.OPTIMIZER_STATE, name=f"{module}.weight.exp_avg")
        avg1 = g.add_tensor(f32, (16, 16), role=Role.OPTIMIZER_STATE, name=f"{module}.weight.exp_avg",
                            producer=g.num_ops, version=1)  # fmt: skip
        g.add_op("aten::lerp_.Scalar", phase=Phase.OPTIMIZER, inputs=[avg, gw], outputs=[avg1],
                 attrs={"weight": 0.1})  # fmt: skip
        s = g.add_tensor(f32, (16, 16), producer=g.num_ops)
        g.add_op("aten::sqrt.default", phase=Phase.OPTIMIZER, inputs=[avg1], outputs=[s])
        d = g.add_tensor(f32, (16, 16), producer=g.num_ops)
        g.add_op("aten::div.Tensor", phase=Phase.OPTIMIZER, inputs=[avg1, s], outputs=[d])
        w1 = g.add_tensor(f32, (16, 16), role=Role.PARAMETER, name=f"{module}.weight",
                          producer=g.num_ops, version=1)  # fmt: skip
        g.add_op("aten::add_.Tensor", phase=Phase.OPTIMIZER, inputs=[w, d], outputs=[w1],
                 attrs={"alpha": -1e-3})  # fmt: skip
    graph = g.finish()
    rng = np.random.default_rng(0)
    stats = empty_stats(graph.num_tensors)
    stats["flags"] = 3
    stats["min"] = -rng.random(graph.num_tensors)
    stats["max"] = rng.random(graph.num_tensors)
    stats["mean"] = 0.0
    stats["std"] = 1.0
    stats["norm"] = rng.lognormal(0, 2, graph.num_tensors)
    stats["nan"] = 0
    stats["inf"] = 0
    stats["zero"] = 0
    op_stats = empty_op_stats(graph.num_ops)
    op_stats["host_ns"] = rng.integers(1_000, 1_000_000, graph.num_ops)
    with TraceWriter(path) as writer:
        writer.write_step(StepRecord(step=0, graph=graph, stats=stats, op_stats=op_stats))
    return graph.num_ops
