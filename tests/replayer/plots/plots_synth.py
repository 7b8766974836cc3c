"""Synthetic runs for the timeline and distribution tests (and the timeline benchmark): one
graph of a small MLP (forward, backward and optimizer: 50 ops, 63 tensors) repeated step after
step, with statistics drawn per step in bulk so that a long run is quick to write.

Layer ``layers.1``'s activations and gradients grow over the run (so a test can see the growth),
the others wander around a constant; ``loss`` and ``lr`` are scalars; events are optional, and so
are histograms and light steps (module outputs, parameter gradients, updates and parameters).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from tracefmt import DType, Event, GraphBuilder, LightKind, LightStepRecord, Phase, Role, StepRecord
from tracefmt.light import LightFlags, empty_light_rows
from tracefmt.records import Graph, empty_stats
from tracefmt.writer import TraceWriter, rank_file_path

LAYERS = 6
WIDTH = 16
BATCH = 8
#: The layer whose numbers grow with the step.
GROWING = "layers.1"


def mlp_graph(layers: int = LAYERS) -> Graph:
    """Forward (``layers.i`` linear and ``layers.i.act`` relu), backward and an SGD step."""
    g = GraphBuilder()
    f32 = DType.FLOAT32
    x = g.add_tensor(f32, (BATCH, WIDTH), role=Role.INPUT, name="input")
    params = []
    for i in range(layers):
        w = g.add_tensor(f32, (WIDTH, WIDTH), role=Role.PARAMETER, name=f"layers.{i}.weight")
        b = g.add_tensor(f32, (WIDTH,), role=Role.PARAMETER, name=f"layers.{i}.bias")
        params.append((i, w, b))
        y = g.add_tensor(f32, (BATCH, WIDTH), producer=g.num_ops)
        g.add_op(
            "aten::addmm.default",
            phase=Phase.FORWARD,
            module=f"layers.{i}",
            inputs=[b, x, w],
            outputs=[y],
        )
        r = g.add_tensor(f32, (BATCH, WIDTH), producer=g.num_ops)
        g.add_op(
            "aten::relu.default", phase=Phase.FORWARD, module=f"layers.{i}.act", inputs=[y], outputs=[r]
        )
        x = r
    loss = g.add_tensor(f32, (), producer=g.num_ops)
    g.add_op("aten::mean.default", phase=Phase.FORWARD, module="", inputs=[x], outputs=[loss])
    grad = g.add_tensor(f32, (BATCH, WIDTH), producer=g.num_ops)
    g.add_op("aten::expand.default", phase=Phase.BACKWARD, module="", inputs=[loss], outputs=[grad])
    grads = {}
    for i, w, _ in reversed(params):
        gr = g.add_tensor(f32, (BATCH, WIDTH), producer=g.num_ops)
        g.add_op(
            "aten::threshold_backward.default",
            phase=Phase.BACKWARD,
            module=f"layers.{i}.act",
            inputs=[grad],
            outputs=[gr],
        )
        gw = g.add_tensor(
            f32, (WIDTH, WIDTH), role=Role.GRADIENT, name=f"layers.{i}.weight.grad", producer=g.num_ops
        )
        g.add_op(
            "aten::mm.default", phase=Phase.BACKWARD, module=f"layers.{i}", inputs=[gr], outputs=[gw]
        )
        gb = g.add_tensor(
            f32, (WIDTH,), role=Role.GRADIENT, name=f"layers.{i}.bias.grad", producer=g.num_ops
        )
        g.add_op(
            "aten::sum.dim_IntList",
            phase=Phase.BACKWARD,
            module=f"layers.{i}",
            inputs=[gr],
            outputs=[gb],
        )
        grad = g.add_tensor(f32, (BATCH, WIDTH), producer=g.num_ops)
        g.add_op(
            "aten::mm.default",
            phase=Phase.BACKWARD,
            module=f"layers.{i}",
            inputs=[gr, w],
            outputs=[grad],
        )
        grads[i] = (gw, gb)
    for i, w, b in params:
        for p, gp, name in ((w, grads[i][0], "weight"), (b, grads[i][1], "bias")):
            new = g.add_tensor(
                f32,
                (WIDTH, WIDTH) if name == "weight" else (WIDTH,),
                role=Role.PARAMETER,
                name=f"layers.{i}.{name}",
                producer=g.num_ops,
                version=1,
            )
            g.add_op(
                "aten::add_.Tensor", phase=Phase.OPTIMIZER, module="", inputs=[p, gp], outputs=[new]
            )
    return g.finish()


def _growth(graph: Graph) -> np.ndarray:
    """Per tensor, how fast its numbers grow with the step (1 for ``GROWING``'s, else 0)."""
    out = np.zeros(graph.num_tensors)
    for op in graph.ops:
        if op.module.startswith(GROWING) and op.phase in (Phase.FORWARD, Phase.BACKWARD):
            out[list(op.outputs)] = 1.0
    return out


def _stats_block(graph: Graph, steps: np.ndarray, total: int, rng: np.random.Generator) -> np.ndarray:
    """Stats rows of ``steps`` (one row per step and tensor) of a run of ``total`` steps, varying
    per step."""
    n, k = len(steps), graph.num_tensors
    numel = np.array([math.prod(t.shape) for t in graph.tensors], dtype=np.float64)
    rows = empty_stats(n * k).reshape(n, k)
    scale = 1.0 + 0.1 * np.sin(steps[:, None] / 50.0 + np.arange(k)[None, :])
    scale = scale * (1.0 + _growth(graph)[None, :] * steps[:, None] / max(1, total))
    scale = scale * np.exp(0.02 * rng.standard_normal((n, k)))
    std = 0.5 * scale
    mean = 0.1 * scale
    rows["std"] = std
    rows["mean"] = mean
    rows["norm"] = np.sqrt(numel[None, :] * (std**2 + mean**2))
    rows["min"] = mean - 3 * std
    rows["max"] = mean + 3 * std
    rows["nan"] = 0
    rows["inf"] = 0
    rows["zero"] = 0
    rows["fingerprint"] = rng.integers(0, 1 << 62, (n, k), dtype=np.int64).view(np.uint64)
    rows["flags"] = 7
    return rows


def _histograms(stats: np.ndarray, bins: int) -> dict[int, tuple[float, float, np.ndarray]]:
    """A normal-looking histogram per tensor of one step's ``stats`` rows."""
    out = {}
    for i, r in enumerate(stats):
        lo, hi = float(r["min"]), float(r["max"])
        centres = lo + (np.arange(bins) + 0.5) * (hi - lo) / bins
        dens = np.exp(-0.5 * ((centres - r["mean"]) / r["std"]) ** 2)
        out[i] = (lo, hi, np.round(1000 * dens / dens.sum()).astype(np.uint64))
    return out


def _light(step: int, graph: Graph, stats: np.ndarray) -> LightStepRecord:
    """Module outputs and per-parameter gradient, update and parameter rows from ``stats``."""
    names: list[str] = []
    kinds: list[LightKind] = []
    norms: list[float] = []
    for op in graph.ops:
        if op.phase is Phase.FORWARD and op.module:
            names.append(op.module)
            kinds.append(LightKind.OUTPUT)
            norms.append(float(stats[op.outputs[0]]["norm"]))
    for op in graph.ops:
        if op.phase is Phase.OPTIMIZER:
            (param, _, _), (grad, _, _) = op.inputs
            name = graph.tensors[param].name or ""
            for kind, norm in (
                (LightKind.GRADIENT, float(stats[grad]["norm"])),
                (LightKind.UPDATE, 1e-3 * float(stats[grad]["norm"])),
                (LightKind.PARAMETER, float(stats[op.outputs[0]]["norm"])),
            ):
                names.append(name)
                kinds.append(kind)
                norms.append(norm)
    rows = empty_light_rows(len(names))
    rows["name"] = np.arange(len(names))
    rows["kind"] = kinds
    rows["flags"] = int(LightFlags.MOMENTS | LightFlags.COUNTS)
    rows["norm"] = norms
    rows["min"] = [-n for n in norms]
    rows["max"] = norms
    rows["mean"] = 0.0
    rows["std"] = [n / 4 for n in norms]
    rows["numel"] = 16
    return LightStepRecord(step=step, names=names, rows=rows, scalars={"loss": 2.0}, duration=0.01)


def write_run(
    run: Path,
    steps: int,
    *,
    ranks: int = 1,
    hist_bins: int = 0,
    events: Mapping[int, str] | None = None,
    light: bool = False,
    seed: int = 0,
    block: int = 4096,
) -> Path:
    """Write a run of ``steps`` full steps (and, with ``light``, a light step each) to ``run``;
    ``events`` maps a step to an event kind written in it.  Returns ``run``."""
    graph = mlp_graph()
    for rank in range(ranks):
        rng = np.random.default_rng(seed + rank)
        with TraceWriter(
            rank_file_path(run, rank),
            run_id="plots-synth",
            rank=rank,
            world_size=ranks,
            hist_bins=hist_bins,
            fsync=False,
            overwrite=True,
        ) as w:
            for first in range(0, steps, block):
                numbers = np.arange(first, min(steps, first + block))
                stats = _stats_block(graph, numbers, steps, rng)
                losses = 2.0 * np.exp(-numbers / max(1, steps)) + 0.05 * rng.random(len(numbers))
                for j, s in enumerate(numbers.tolist()):
                    kind = (events or {}).get(s)
                    w.write_step(
                        StepRecord(
                            step=s,
                            graph=graph,
                            stats=stats[j],
                            histograms=_histograms(stats[j], hist_bins) if hist_bins else {},
                            scalars={"loss": float(losses[j]), "lr": 1e-3},
                            events=[Event(kind, f"synthetic {kind} at step {s}")] if kind else [],
                            wall_time=1.7e9 + s,
                            duration=0.05 + 0.001 * (s % 7),
                        )
                    )
                    if light:
                        w.write_light_step(_light(s, graph, stats[j]))
                w.flush()
    return run
