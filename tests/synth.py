"""Synthetic traces written with the writer API: for the demo, tests and benchmarks.

Run ``python -m tracefmt.synthetic --out runs/synthetic`` to write one.  Real traces come from the
recorder; these exercise the format without torch.
"""

from __future__ import annotations

import os

import ml_dtypes
import numpy as np

from tracefmt import DType, Event, GraphBuilder, Phase, Role, StepRecord, TraceWriter
from tracefmt.records import Graph, empty_op_stats, empty_stats
from tracefmt.stats import histogram, tensor_stats


def mlp_graph(
    batch: int = 8, width: int = 16, layers: int = 2, *, lr: float = 0.01, input_offset: int = 0
) -> Graph:
    """Forward, backward and optimizer ops of a tiny MLP, with module paths and roles.

    ``lr`` (the optimizer ops' ``alpha`` is ``-lr``) and ``input_offset`` (the input's storage
    offset) change a step's values but not its structure: graphs that differ only there share one
    stored graph, and each step stores its own values (format 1.1).
    """
    g = GraphBuilder()
    x = g.add_tensor(
        DType.FLOAT32, (batch, width), role=Role.INPUT, name="input", storage_offset=input_offset
    )
    params = []
    for i in range(layers):
        w = g.add_tensor(
            DType.BFLOAT16,
            (width, width),
            role=Role.PARAMETER,
            name=f"layers.{i}.weight",
            strides=(width, 1),
        )
        params.append(w)
        y = g.add_tensor(DType.FLOAT32, (batch, width), producer=g.num_ops)
        g.add_op(
            "aten::mm.default", phase=Phase.FORWARD, module=f"layers.{i}", inputs=[x, w], outputs=[y]
        )
        r = g.add_tensor(DType.FLOAT32, (batch, width), producer=g.num_ops)
        g.add_op(
            "aten::relu.default", phase=Phase.FORWARD, module=f"layers.{i}.act", inputs=[y], outputs=[r]
        )
        x = r
    loss = g.add_tensor(DType.FLOAT32, (), producer=g.num_ops)
    g.add_op("aten::mean.default", phase=Phase.FORWARD, module="", inputs=[x], outputs=[loss])
    for i, w in enumerate(params):
        grad = g.add_tensor(
            DType.BFLOAT16,
            (width, width),
            role=Role.GRADIENT,
            name=f"layers.{i}.weight.grad",
            producer=g.num_ops,
        )
        g.add_op(
            "aten::mm.default",
            phase=Phase.BACKWARD,
            module=f"layers.{i}",
            inputs=[loss, w],
            outputs=[grad],
            attrs={"note": "synthetic"},
        )
        new = g.add_tensor(
            DType.BFLOAT16,
            (width, width),
            role=Role.PARAMETER,
            name=f"layers.{i}.weight",
            producer=g.num_ops,
            version=1,
        )
        g.add_op(
            "aten::add_.Tensor",
            phase=Phase.OPTIMIZER,
            module="",
            inputs=[w, grad],
            outputs=[new],
            attrs={"alpha": -lr},
        )
    return g.finish()


def synthetic_step(
    step: int, graph: Graph, rng: np.random.Generator, *, hist_bins: int = 0, with_values: bool = True
) -> StepRecord:
    """A StepRecord for ``graph`` with random values, their stats and (optionally) histograms."""
    values: dict[int, np.ndarray] = {}
    stats = empty_stats(graph.num_tensors)
    hists = {}
    for i, t in enumerate(graph.tensors):
        data = rng.standard_normal(t.shape).astype(np.float32)
        if t.dtype is DType.BFLOAT16:
            data = data.astype(ml_dtypes.bfloat16)
        stats[i] = tensor_stats(data, t.dtype)
        if with_values:
            values[i] = data
        if hist_bins:
            hists[i] = histogram(data, hist_bins)
    op_stats = empty_op_stats(graph.num_ops)
    op_stats["host_ns"] = rng.integers(1_000, 100_000, graph.num_ops)
    # One op after another, 500 ns apart: derived from the drawn times, so the random stream (and
    # the golden traces generated from it) stays as it was before format 1.3.
    ends = np.cumsum(op_stats["host_ns"] + 500)
    op_starts = ends - op_stats["host_ns"]
    return StepRecord(
        step=step,
        graph=graph,
        stats=stats,
        op_stats=op_stats,
        values=values,
        histograms=hists,
        scalars={"loss": float(rng.random())},
        events=[Event("note", f"synthetic step {step}")],
        wall_time=1.7e9 + step,
        duration=0.1,
        op_starts=op_starts,
    )


def attention_graph(view: bool = False) -> Graph:
    """A causal mask added to attention scores, as models build it: ``zeros``, then
    ``masked_fill.Scalar(z, cond, -inf)`` (the ``-inf`` is a constant argument: by design), then
    ``add`` (propagated), ``_softmax`` (finite again) and ``mean`` (the loss).  With ``view``
    the mask goes through an unmeasured ``aten::view`` first (section 5.7: pure views are not
    measured; the classification looks through them)."""
    g = GraphBuilder()
    x = g.add_tensor(DType.FLOAT32, (4, 3), role=Role.INPUT, name="x")
    w = g.add_tensor(DType.FLOAT32, (3, 4), role=Role.PARAMETER, name="attn.weight")
    cond = g.add_tensor(DType.BOOL, (4, 4), role=Role.INPUT, name="causal")
    z = g.add_tensor(DType.FLOAT32, (4, 4), producer=g.num_ops)
    g.add_op(
        "aten::zeros.default", phase=Phase.FORWARD, module="attn", outputs=[z], attrs={"size": [4, 4]}
    )
    mask = g.add_tensor(DType.FLOAT32, (4, 4), producer=g.num_ops)
    g.add_op(
        "aten::masked_fill.Scalar",
        phase=Phase.FORWARD,
        module="attn",
        inputs=[z, cond],
        outputs=[mask],
        attrs={"value": float("-inf")},
    )
    if view:
        viewed = g.add_tensor(DType.FLOAT32, (4, 4), producer=g.num_ops)
        g.add_op(
            "aten::view.default",
            phase=Phase.FORWARD,
            module="attn",
            inputs=[mask],
            outputs=[viewed],
            attrs={"size": [4, 4]},
        )
        mask = viewed
    y = g.add_tensor(DType.FLOAT32, (4, 4), producer=g.num_ops)
    g.add_op("aten::mm.default", phase=Phase.FORWARD, module="attn", inputs=[x, w], outputs=[y])
    scores = g.add_tensor(DType.FLOAT32, (4, 4), producer=g.num_ops)
    g.add_op("aten::add.Tensor", phase=Phase.FORWARD, module="attn", inputs=[y, mask], outputs=[scores])
    p = g.add_tensor(DType.FLOAT32, (4, 4), producer=g.num_ops)
    g.add_op(
        "aten::_softmax.default",
        phase=Phase.FORWARD,
        module="attn",
        inputs=[scores],
        outputs=[p],
        attrs={"dim": -1, "half_to_float": False},
    )
    loss = g.add_tensor(DType.FLOAT32, (), producer=g.num_ops)
    g.add_op("aten::mean.default", phase=Phase.FORWARD, module="", inputs=[p], outputs=[loss])
    return g.finish()


def attention_step(
    step: int,
    rng: np.random.Generator,
    *,
    masked_row: bool = False,
    nan_weight: bool = False,
    view: bool = False,
) -> StepRecord:
    """A step of :func:`attention_graph` with real values and their statistics.

    ``masked_row`` masks a whole row, so the softmax creates NaN from ``-inf`` (a created
    non-finite value); ``nan_weight`` puts a NaN in the parameter (non-finite state, propagated
    by every op downstream).  The view's output, with ``view``, is left unmeasured.
    """
    graph = attention_graph(view)
    x = rng.standard_normal((4, 3)).astype(np.float32)
    w = rng.standard_normal((3, 4)).astype(np.float32)
    if nan_weight:
        w[0, 0] = np.nan
    cond = np.triu(np.ones((4, 4), dtype=bool), k=1)
    if masked_row:
        cond[0, :] = True
    z = np.zeros((4, 4), dtype=np.float32)
    mask = np.where(cond, np.float32(-np.inf), z)
    y = x @ w
    with np.errstate(invalid="ignore", over="ignore"):
        scores = y + mask
        e = np.exp(scores - scores.max(axis=-1, keepdims=True))
        p = (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)
    loss = np.array(p.mean(), dtype=np.float32)
    values = [x, w, cond, z, mask, *([mask] if view else []), y, scores, p, loss]
    stats = np.stack([tensor_stats(v, t.dtype) for v, t in zip(values, graph.tensors, strict=True)])
    if view:
        stats[5] = empty_stats(1)[0]  # a pure view is not measured
    return StepRecord(
        step=step,
        graph=graph,
        stats=stats,
        scalars={"loss": float(loss)},
        wall_time=1.7e9 + step,
        duration=0.01,
    )


def write_synthetic(
    path: str | os.PathLike[str],
    *,
    steps: int = 5,
    seed: int = 0,
    hist_bins: int = 0,
    values_filter: str = "none",
    **writer_kwargs: object,
) -> None:
    """Write ``steps`` steps (0, 1, ...) of the synthetic MLP to ``path``, flushing each step."""
    rng = np.random.default_rng(seed)
    graph = mlp_graph()
    with TraceWriter(path, hist_bins=hist_bins, values_filter=values_filter, **writer_kwargs) as w:  # type: ignore[arg-type]
        for s in range(steps):
            w.write_step(synthetic_step(s, graph, rng, hist_bins=hist_bins))
            w.flush()


def main(argv: list[str] | None = None) -> None:
    """``python -m tracefmt.synthetic --out DIR [--steps N] [--ranks R] [--filter NAME]``."""
    import argparse
    import shutil

    from tracefmt.writer import rank_file_path

    parser = argparse.ArgumentParser(prog="python -m tracefmt.synthetic", description=main.__doc__)
    parser.add_argument("--out", required=True, help="run directory to (re)create")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--ranks", type=int, default=1)
    parser.add_argument("--filter", default="none", help="values filter (none, fast, ...)")
    args = parser.parse_args(argv)
    shutil.rmtree(args.out, ignore_errors=True)
    for rank in range(args.ranks):
        write_synthetic(
            rank_file_path(args.out, rank),
            steps=args.steps,
            seed=rank,
            hist_bins=16,
            values_filter=args.filter,
            rank=rank,
            world_size=args.ranks,
            run_id="synthetic-demo",
        )
    print(f"wrote {args.steps} synthetic steps x {args.ranks} rank(s) to {args.out}")


if __name__ == "__main__":
    main()
