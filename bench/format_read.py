"""Read-side costs of tracefmt: locating and loading one step in long runs, ``info``, bytes per step.

Run: ``python bench/format_read.py`` (``--quick``: 10,000 instead of 100,000 steps, fewer
repeats; ``--step-read``: only ``step_read`` below).  Progress goes to stderr; stdout gets exactly
one JSON line.  Timings on a shared machine are noisy: ``env.loadavg`` records the 1-minute load
average before and after.  Traces are written under a temporary directory (``--tmp`` to choose
it) with ``fsync=False`` and deleted at the end.

Traces (synthetic, stats-only: statistics and op timings, no values; one graph that repeats):

- ``small``: 1,000 steps and ``large``: 100,000 steps of a ``--ops``-op graph (default 100 ops,
  126 tensors), step numbers ``0, 10, 20, ...``; flushed every 1,000 steps while generating.
- ``per_step``: steps of a 2,000-op graph (2,501 tensors), flushed after every step as the
  recorder does by default.

Figures:

- ``open_load.<small|large>_s``: median wall time, over ``reps`` step numbers spread through the
  trace, of ``tracefmt.open(path)``, ``trace.step(k)`` (find the row, read the graph, the stats and
  op timings), touching every op and every tensor's stats, and ``close()``.  ``..._min_s`` is the
  fastest.  ``ratio`` is large / small (goal <= 1.5).  ``find_us`` / ``load_ms`` split the cost on an
  already open file (``RankFile.find`` alone; ``RankFile.load`` with a cold graph cache).
- ``info``: ``tracefmt info --json`` on the large trace: ``cli_s`` through click's ``CliRunner`` in
  this process (median of 3), ``subprocess_s`` as a fresh ``python -c`` process (interpreter start
  and imports included), ``library_s`` for ``trace_info`` alone (the ``summaries()`` and
  ``dataset_sizes()`` it is built on).
- ``per_step``: ``bytes_per_step`` is the growth of the file on disk per step between two flushed
  points (steps ``warm`` and ``warm + steps``), so the first step's graph is not counted;
  ``raw_stats_bytes_per_step`` is the numpy ``nbytes`` of one step's stats rows plus op_stats
  rows; ``ratio`` is their quotient (goal <= 1.1).  ``by_dataset`` gives the stored bytes per step
  of the tables that grow; ``write_ms_per_step`` the time of ``write_step`` + ``flush``.
- ``per_step_small_graphs``: the same for 10-op and 100-op steps, where a flush's fixed costs
  (the rewritten last chunk of each table) weigh most.
- ``generation_s``: wall time spent writing each trace (not a goal; shows the write path's
  per-step cost for stats-only steps).
- ``step_read`` (alone with ``--step-read``): reading one training-size step, ``trace.step(k)``:
  the GPT example's last step (``python -m recorder.examples.gpt --steps 2``, skipped with a
  reason when torch is missing) and ``tests/replayer/view/_big.py``'s synthetic step at 10,000
  and 100,000 ops.  ``cold_s``: the minimum over ``--step-reps`` of a fresh ``tracefmt.open``
  and ``trace.step(k)`` (strings, graph and step decoded); ``warm_s``: ``trace.step(k)`` again on
  the open trace (the graph cached, the step's own rows decoded).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # tests/replayer/view/_big.py writes the synthetic steps
    sys.path.insert(0, str(ROOT))

import tracefmt  # noqa: E402
from tracefmt import DType, GraphBuilder, Phase, Role, StepRecord, TraceWriter  # noqa: E402
from tracefmt.records import OP_STATS_DTYPE, STATS_DTYPE, Graph  # noqa: E402

OP_NAMES = {
    Phase.FORWARD: [
        "aten::mm.default",
        "aten::add.Tensor",
        "aten::gelu.default",
        "aten::native_layer_norm.default",
        "aten::_softmax.default",
        "aten::view.default",
    ],
    Phase.BACKWARD: [
        "aten::mm.default",
        "aten::gelu_backward.default",
        "aten::native_layer_norm_backward.default",
        "aten::_softmax_backward_data.default",
        "aten::sum.dim_IntList",
    ],
    Phase.OPTIMIZER: [
        "aten::_foreach_mul_.Scalar",
        "aten::addcmul_.Tensor",
        "aten::lerp_.Scalar",
        "aten::sqrt.default",
    ],
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def make_graph(n_ops: int, seed: int = 0) -> Graph:
    """A transformer-like chain: 40% forward, 45% backward, 15% optimizer; every 4th op reads a
    parameter; module paths ``layers.N.{attn,mlp}``."""
    rng = np.random.default_rng(seed)
    g = GraphBuilder()
    x = g.add_tensor(DType.FLOAT32, (8, 128, 768), role=Role.INPUT, name="input")
    for i in range(n_ops):
        phase = (
            Phase.FORWARD if i < 0.4 * n_ops else Phase.BACKWARD if i < 0.85 * n_ops else Phase.OPTIMIZER
        )
        names = OP_NAMES[phase]
        layer = i * 12 // n_ops
        module = f"layers.{layer}.{'attn' if i % 2 else 'mlp'}"
        inputs = [x]
        if i % 4 == 0:
            inputs.append(
                g.add_tensor(
                    DType.BFLOAT16,
                    (768, 768),
                    role=Role.PARAMETER,
                    name=f"{module}.weight.{i}",
                    strides=(768, 1),
                )
            )
        role = Role.GRADIENT if phase is Phase.BACKWARD else Role.ACTIVATION
        y = g.add_tensor(DType.FLOAT32, (8, 128, 768), role=role, producer=g.num_ops)
        g.add_op(
            names[int(rng.integers(len(names)))],
            phase=phase,
            module=module,
            inputs=inputs,
            outputs=[y],
            attrs={"alpha": 1.0} if i % 7 == 0 else None,
        )
        x = y
    return g.finish()


class StatsSource:
    """Plausible per-step statistics for a graph: per-tensor base values drifting step to step."""

    def __init__(self, graph: Graph, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        n, m = graph.num_tensors, graph.num_ops
        self.n, self.m = n, m
        self.std = np.exp(self.rng.normal(-2, 1, n))
        self.mean = self.rng.normal(0, 0.1, n) * self.std
        self.relu = self.rng.random(n) < 0.2
        self.numel = np.array([int(np.prod(t.shape)) for t in graph.tensors], dtype=np.float64)
        self.host = np.exp(self.rng.normal(10, 1, m))
        self.mem = np.array([4 * 8 * 128 * 768] * m, dtype=np.int64)

    def step(self, step: int, graph: Graph) -> StepRecord:
        rng, n, m = self.rng, self.n, self.m
        drift = 1 + 0.01 * rng.standard_normal(n)
        std = self.std * drift
        mean = self.mean * drift
        stats = np.zeros(n, dtype=STATS_DTYPE)
        stats["flags"] = 7
        # min and max are elements of the tensor: float32 (or bf16) values held in float64.
        stats["min"] = (mean - 4 * std * (1 + 0.1 * rng.random(n))).astype(np.float32)
        stats["max"] = (mean + 4 * std * (1 + 0.1 * rng.random(n))).astype(np.float32)
        stats["mean"], stats["std"] = mean, std
        stats["norm"] = np.sqrt(self.numel) * np.sqrt(std**2 + mean**2)
        stats["zero"] = np.where(self.relu, (self.numel * (0.5 + 0.01 * rng.standard_normal(n))), 0)
        stats["fingerprint"] = rng.integers(0, 2**63, n, dtype=np.int64).view(np.uint64)
        op_stats = np.zeros(m, dtype=OP_STATS_DTYPE)
        op_stats["host_ns"] = (self.host * (1 + 0.1 * rng.random(m))).astype(np.int64)
        op_stats["device_ns"] = -1
        op_stats["mem_bytes"] = self.mem
        return StepRecord(
            step=step,
            graph=graph,
            stats=stats,
            op_stats=op_stats,
            scalars={"loss": float(rng.random())},
            wall_time=1.7e9 + step,
            duration=0.1,
        )


def write_trace(
    path: Path, n_steps: int, graph: Graph, *, stride: int = 10, flush_every: int = 1000
) -> float:
    src = StatsSource(graph)
    t0 = time.perf_counter()
    with TraceWriter(path, fsync=False) as w:
        for i in range(n_steps):
            w.write_step(src.step(i * stride, graph))
            if (i + 1) % flush_every == 0:
                w.flush()
            if (i + 1) % 20_000 == 0:
                log(f"  {path.name}: {i + 1} steps, {time.perf_counter() - t0:.1f}s")
    return time.perf_counter() - t0


def open_load(path: Path, k: int) -> float:
    t0 = time.perf_counter()
    with tracefmt.open(path) as trace:
        step = trace.step(k)
        n = sum(len(op.name) for op in step.ops)
        n += sum(t.stats.mean is not None for t in step.tensors if t.stats is not None)
    dt = time.perf_counter() - t0
    if n == 0:
        raise RuntimeError(f"step {k} of {path} read back empty")
    return dt


def time_open_load(path: Path, n_steps: int, stride: int, reps: int) -> dict[str, float]:
    ks = [int(i) * stride for i in np.linspace(0, n_steps - 1, reps).round()]
    open_load(path, ks[len(ks) // 2])  # warm: imports, page cache
    times = [open_load(path, k) for k in ks]
    with tracefmt.open(path) as trace:
        f = trace.rank_file()
        finds, loads = [], []
        for k in ks:
            t0 = time.perf_counter()
            row = f.find(k)
            finds.append(time.perf_counter() - t0)
            f._graph_cache.clear()
            t0 = time.perf_counter()
            f.load(row)
            loads.append(time.perf_counter() - t0)
    return {
        "s": statistics.median(times),
        "min_s": min(times),
        "find_us": statistics.median(finds) * 1e6,
        "load_ms": statistics.median(loads) * 1e3,
    }


def time_step_read(path: Path, reps: int) -> dict[str, Any]:
    """Minimum cold (open + ``step``) and warm (``step`` again) read times of the last step."""
    cold, warm = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        with tracefmt.open(path) as trace:
            k = trace.steps()[-1]
            step = trace.step(k)
            cold.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            trace.step(k)
            warm.append(time.perf_counter() - t0)
    return {
        "ops": len(step.ops),
        "tensors": len(step.tensors),
        "cold_s": round(min(cold), 4),
        "warm_s": round(min(warm), 4),
    }


def step_reads(tmp: Path, reps: int) -> dict[str, Any]:
    """``step_read``: the GPT example's step and the 10k- and 100k-op synthetic steps."""
    out: dict[str, Any] = {}
    gpt = tmp / "gpt"
    try:
        import torch  # noqa: F401
    except ImportError:
        out["gpt"] = {"skipped": "torch is not installed: the GPT example cannot be recorded"}
    else:
        log("recording the GPT example (2 steps)...")
        subprocess.run(
            [sys.executable, "-m", "recorder.examples.gpt", "--steps", "2", "--quiet", "--out", gpt],
            check=True,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
        )
        out["gpt"] = time_step_read(gpt, reps)
        log(f"gpt {out['gpt']}")
    from tests.replayer.view._big import write_training_step

    for n in (10_000, 100_000):
        path = tmp / f"synthetic_{n}.tft.h5"
        write_training_step(path, n)
        out[f"synthetic_{n // 1000}k"] = time_step_read(path, reps)
        log(f"synthetic {n}: {out[f'synthetic_{n // 1000}k']}")
    return out


def _library_info(trace: tracefmt.Trace) -> None:
    try:
        from tracefmt.summary import trace_info
    except ImportError:  # before the CLI existed: what ``info`` is built on
        trace.summaries()
        trace.rank_file().dataset_sizes()
        return
    trace_info(trace)


def time_info(path: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        with tracefmt.open(path) as trace:
            _library_info(trace)
        times.append(time.perf_counter() - t0)
    out["library_s"] = statistics.median(times)
    try:
        from click.testing import CliRunner

        from tracefmt.cli import main as cli_main
    except ImportError:
        return out
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        result = CliRunner().invoke(cli_main, ["info", "--json", str(path)])
        times.append(time.perf_counter() - t0)
        if result.exit_code != 0:
            raise RuntimeError(f"tracefmt info failed: {result.output}")
    out["cli_s"] = statistics.median(times)
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", "from tracefmt.cli import main; main()", "info", "--json", str(path)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    out["subprocess_s"] = time.perf_counter() - t0
    return out


def per_step_bytes(path: Path, n_ops: int, warm: int, steps: int) -> dict[str, Any]:
    """File growth per step of a stats-only ``n_ops``-op step whose graph repeats, flushed every
    step, between step ``warm`` and ``warm + steps``."""
    graph = make_graph(n_ops, seed=1)
    src = StatsSource(graph, seed=1)
    raw = graph.num_tensors * STATS_DTYPE.itemsize + graph.num_ops * OP_STATS_DTYPE.itemsize
    with TraceWriter(path, fsync=False) as w:
        for i in range(warm):
            w.write_step(src.step(i, graph))
            w.flush()
        size0 = os.path.getsize(path)
        with tracefmt.open(path) as t:
            ds0 = {d.path: d.stored_bytes for d in t.rank_file().dataset_sizes()}
        t0 = time.perf_counter()
        for i in range(warm, warm + steps):
            w.write_step(src.step(i, graph))
            w.flush()
        write_s = time.perf_counter() - t0
        size1 = os.path.getsize(path)
    with tracefmt.open(path) as t:
        ds1 = {d.path: d.stored_bytes for d in t.rank_file().dataset_sizes()}
    per = (size1 - size0) / steps
    grown = {k: round((ds1[k] - ds0[k]) / steps, 1) for k in ds1 if ds1[k] != ds0[k]}
    return {
        "ops": graph.num_ops,
        "tensors": graph.num_tensors,
        "warm_steps": warm,
        "steps": steps,
        "bytes_per_step": round(per, 1),
        "raw_stats_bytes_per_step": raw,
        "ratio": round(per / raw, 4),
        "by_dataset": grown,
        "write_ms_per_step": round(write_s / steps * 1e3, 2),
    }


def _env(load_before: float | None = None) -> dict[str, Any]:
    load_now = round(os.getloadavg()[0], 2)
    return {
        "cpus": os.cpu_count(),
        "loadavg": [load_now if load_before is None else round(load_before, 2), load_now],
        "python": platform.python_version(),
        "tracefmt": tracefmt.__version__,
        "h5py": h5py.version.version,
        "hdf5": h5py.version.hdf5_version,
        "numpy": np.__version__,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="10,000 instead of 100,000 steps")
    p.add_argument("--ops", type=int, default=100, help="ops per step of the long traces")
    p.add_argument("--tmp", default=None, help="directory for the traces (default: a temp dir)")
    p.add_argument("--step-read", action="store_true", help="measure only step_read")
    p.add_argument("--step-reps", type=int, default=5, help="repeats of each step read")
    args = p.parse_args()
    if args.step_read:
        with tempfile.TemporaryDirectory(dir=args.tmp, prefix="tracefmt-bench-") as d:
            reads = step_reads(Path(d), args.step_reps)
        print(json.dumps({"bench": "format_read", "step_read": reads, "env": _env()}))
        return
    load_before = os.getloadavg()[0]
    small_n, large_n = 1_000, (10_000 if args.quick else 100_000)
    reps = 9 if args.quick else 25
    stride = 10
    graph = make_graph(args.ops)
    with tempfile.TemporaryDirectory(dir=args.tmp, prefix="tracefmt-bench-") as d:
        tmp = Path(d)
        gen: dict[str, float] = {}
        log(f"writing {small_n} and {large_n} steps of {graph.num_ops} ops...")
        gen["small_s"] = write_trace(tmp / "small.tft.h5", small_n, graph, stride=stride)
        gen["large_s"] = write_trace(tmp / "large.tft.h5", large_n, graph, stride=stride)
        log(f"generation: {gen}")
        small = time_open_load(tmp / "small.tft.h5", small_n, stride, reps)
        large = time_open_load(tmp / "large.tft.h5", large_n, stride, reps)
        log(f"open+load small {small}, large {large}")
        info = time_info(tmp / "large.tft.h5")
        log(f"info {info}")
        per = per_step_bytes(tmp / "per_step.tft.h5", 2000, *((10, 40) if args.quick else (20, 200)))
        log(f"per step {per}")
        small_steps = {
            str(n): per_step_bytes(tmp / f"per_step_{n}.tft.h5", n, 20, 200 if args.quick else 1000)
            for n in (10, 100)
        }
        log(f"per step, small graphs {small_steps}")
        sizes = {k: os.path.getsize(tmp / f"{k}.tft.h5") for k in ("small", "large")}
        reads = step_reads(tmp, args.step_reps)
    ratio = large["s"] / small["s"]
    print(
        json.dumps(
            {
                "bench": "format_read",
                "quick": args.quick,
                "fsync": False,
                "long_traces": {
                    "ops": graph.num_ops,
                    "tensors": graph.num_tensors,
                    "stride": stride,
                    "small_steps": small_n,
                    "large_steps": large_n,
                    "file_bytes": sizes,
                },
                "open_load": {
                    "small_s": round(small["s"], 5),
                    "small_min_s": round(small["min_s"], 5),
                    "large_s": round(large["s"], 5),
                    "large_min_s": round(large["min_s"], 5),
                    "ratio": round(ratio, 3),
                    "find_us": {
                        "small": round(small["find_us"], 1),
                        "large": round(large["find_us"], 1),
                    },
                    "load_ms": {
                        "small": round(small["load_ms"], 3),
                        "large": round(large["load_ms"], 3),
                    },
                    "reps": reps,
                },
                "info": {k: round(v, 4) for k, v in info.items()},
                "per_step": per,
                "per_step_small_graphs": {
                    n: {
                        k: v[k]
                        for k in (
                            "ops",
                            "tensors",
                            "bytes_per_step",
                            "raw_stats_bytes_per_step",
                            "ratio",
                            "write_ms_per_step",
                        )
                    }
                    for n, v in small_steps.items()
                },
                "step_read": reads,
                "generation_s": {k: round(v, 1) for k, v in gen.items()},
                "goals": {
                    "open_load_ratio_at_most_1_5": ratio <= 1.5,
                    "repeated_stats_step_at_most_1_1x_raw": per["ratio"] <= 1.1,
                },
                "env": _env(load_before),
            }
        )
    )


if __name__ == "__main__":
    main()
