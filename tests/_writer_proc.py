"""A writer process for the kill and live-reading tests.

    python -m tests._writer_proc PATH SEED [--filter NAME] [--steps N] [--pause S] [--lockstep N]
                                           [--wait-close]

Prints ``ready`` once the TraceWriter exists, then writes steps 0, 1, 2, ... and prints each step
number only after ``flush()`` returned for it.  Every step is a pure function of ``(seed, step)``
(:func:`make_step`), so a test regenerates what a flushed step must read back as.  Some steps carry
a few MB of values (a kill often lands inside their write), and every fourth step brings a new graph
with new strings (a kill also lands inside graph and string writes).  Steps on a recurring graph
differ from it in an op attribute and a storage offset most of the time, so most steps also write
rows of ``op_attrs``, ``tensor_offsets`` and ``step_overrides``.  ``--wait-close`` waits for a
line on stdin before closing, so a reader can check the file while it is still open for writing;
``--lockstep N`` waits for a line after each of the first N steps.
"""

from __future__ import annotations

import argparse
import sys
import time

import ml_dtypes
import numpy as np

from tracefmt import DType, Event, GraphBuilder, Phase, Role, StepRecord, TraceWriter
from tracefmt.records import Graph, empty_op_stats
from tracefmt.stats import tensor_stats

BIG = 1 << 20  # elements of the large tensor (4 MiB of float32, 2 MiB of bfloat16)


def make_graph(variant: int, step: int = 0) -> Graph:
    """Graph ``variant``: 0-2 recur, any other value is new (new module names and strings).
    ``step`` sets the values a step has of its own: an op attribute and a storage offset."""
    g = GraphBuilder()
    x = g.add_tensor(DType.FLOAT32, (4, 8), role=Role.INPUT, name="x", storage_offset=step % 5)
    w = g.add_tensor(DType.BFLOAT16, (8, 8), role=Role.PARAMETER, name=f"block{variant}.weight")
    y = g.add_tensor(DType.FLOAT32, (4, 8), producer=g.num_ops)
    g.add_op(
        "aten::mm.default",
        phase=Phase.FORWARD,
        module=f"block{variant}.fc",
        inputs=[x, w],
        outputs=[y],
        attrs={"variant": variant},
    )
    big_dtype = DType.FLOAT32 if variant % 2 else DType.BFLOAT16
    big = g.add_tensor(big_dtype, (BIG // 256, 256), producer=g.num_ops, name="big")
    g.add_op(
        "aten::expand.default",
        phase=Phase.FORWARD,
        module=f"block{variant}",
        inputs=[y],
        outputs=[big],
        attrs={"size": [BIG // 256, 256]},
    )
    e = g.add_tensor(DType.FLOAT8_E4M3FN, (16,), producer=g.num_ops, name="scaled")
    g.add_op(
        "aten::_to_copy.default",
        phase=Phase.BACKWARD,
        module=f"block{variant}",
        inputs=[y],
        outputs=[e],
        attrs={"scale": step % 7} if step % 7 else None,
    )
    return g.finish()


def graph_variant(step: int) -> int:
    return 1000 + step if step % 4 == 3 else step % 3


def make_step(seed: int, step: int) -> StepRecord:
    """The record of ``step``: a pure function of ``(seed, step)``."""
    rng = np.random.default_rng([seed, step])
    graph = make_graph(graph_variant(step), step)
    arrays: dict[int, np.ndarray] = {}
    for i, spec in enumerate(graph.tensors):
        data = rng.standard_normal(spec.shape, dtype=np.float32)
        if spec.dtype is DType.BFLOAT16:
            data = data.astype(ml_dtypes.bfloat16)
        elif spec.dtype is DType.FLOAT8_E4M3FN:
            data = data.astype(ml_dtypes.float8_e4m3fn)
        arrays[i] = data
    stats = np.stack([tensor_stats(a, graph.tensors[i].dtype) for i, a in arrays.items()])
    # Every other step records the big tensor's values: a kill often lands inside that write.
    keep = [i for i in arrays if graph.tensors[i].name != "big" or step % 2 == 0]
    op_stats = empty_op_stats(graph.num_ops)
    op_stats["host_ns"] = rng.integers(0, 10**6, graph.num_ops)
    return StepRecord(
        step=step,
        graph=graph,
        stats=stats,
        op_stats=op_stats,
        values={i: arrays[i] for i in keep},
        events=[Event("note", f"step {step}", op=0)] if step % 5 == 0 else [],
        scalars={"loss": float(rng.random()), "lr": 1e-3},
        wall_time=1.7e9 + step,
        duration=0.01,
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("path")
    p.add_argument("seed", type=int)
    p.add_argument("--filter", default="none")
    p.add_argument("--steps", type=int, default=10**9)
    p.add_argument("--pause", type=float, default=0.0, help="seconds to sleep after each step")
    p.add_argument(
        "--lockstep",
        type=int,
        default=0,
        help="after each of the first N steps, wait for a line on stdin",
    )
    p.add_argument("--wait-close", action="store_true")
    args = p.parse_args(argv)
    writer = TraceWriter(args.path, values_filter=args.filter, run_id=f"kill-{args.seed}")
    print("ready", flush=True)
    for step in range(args.steps):
        writer.write_step(make_step(args.seed, step))
        writer.flush()
        print(step, flush=True)
        if step < args.lockstep:
            sys.stdin.readline()
        if args.pause:
            time.sleep(args.pause)
    if args.wait_close:
        sys.stdin.readline()
    writer.close()
    print("closed", flush=True)


if __name__ == "__main__":
    main()
