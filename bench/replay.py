"""Replayer cost: export and check time per 1,000 ops, and Netron's time to first graph.

Run: ``python bench/replay.py`` (``--quick`` for 1k and 10k only).  Progress goes to stderr;
stdout gets exactly one JSON line.

Synthetic steps of about 1k, 10k and 50k ops are written with the tracefmt writer
(``TraceWriter`` + ``GraphBuilder``): a chain of blocks ``mm -> add -> relu`` (standard ONNX, run
in ONNX Runtime) plus a ``gelu_backward`` per block (a custom node, run by its numpy reference),
on 8 x 16 float32 tensors, every value and its statistics recorded, modules
``layers.<i>.block<j>``.  For each size:

- ``export_s_per_1k_ops``: :func:`replayer.export_step` (map every op, build the model with every
  recorded input as an initializer) plus serialization, per 1,000 ops; best of ``reps``;
- ``check_s_per_1k_ops``: :func:`replayer.check_step` of the whole step (replay and compare every
  op), per 1,000 ops; best of ``reps``.

``linear``: the per-1k-op cost at the largest size divided by the cost at the smallest (about 1
when the cost grows linearly with the op count).

``netron``: for the GPT example's step 1 (recorded here with ``python -m recorder.examples.gpt
--steps 2 --values all`` unless ``--gpt TRACE`` is given), the default ``replayer view``
(forward phase, depth chosen from the op count) served by netron and opened in headless
Chromium by the browser tests' harness (:func:`tests.browser.render`, Playwright driving the
system's Chromium): ``first_graph_s`` is the time from navigation to the first rendered graph
node; ``nodes`` the rendered top-level nodes and ``expected_nodes`` the exported ones.  Null (with
``netron_skipped`` saying why) without Chromium, Playwright or torch.  Goal: export and check
linear in op count; the GPT default view under 5 s.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import tracefmt
from tracefmt import DType, GraphBuilder, Phase, Role, StepRecord, TraceWriter
from tracefmt.records import empty_stats
from tracefmt.stats import tensor_stats

ROOT = Path(__file__).resolve().parent.parent


def _gelu_backward(g: np.ndarray, x: np.ndarray) -> np.ndarray:
    erf = np.frompyfunc(math.erf, 1, 1)
    cdf = 0.5 * (1 + np.asarray(erf(x / math.sqrt(2)), dtype=np.float64))
    pdf = np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    out: np.ndarray = (g * (cdf + x * pdf)).astype(np.float32)
    return out


def synthetic_step(n_ops: int, seed: int = 0) -> StepRecord:
    """A step of about ``n_ops`` ops (blocks of four) with every value recorded."""
    rng = np.random.default_rng(seed)
    g = GraphBuilder()
    values: dict[int, np.ndarray] = {}

    def tensor(array: np.ndarray, **kw: Any) -> int:
        index = g.add_tensor(DType.FLOAT32, array.shape, strides=_strides(array.shape), **kw)
        values[index] = array
        return index

    x_val = rng.standard_normal((8, 16)).astype(np.float32)
    x = tensor(x_val, role=Role.INPUT, name="input")
    for block in range(max(1, n_ops // 4)):
        module = f"layers.{block // 10}.block{block % 10}"
        w_val = (rng.standard_normal((16, 16)) / 4).astype(np.float32)
        b_val = (rng.standard_normal(16) / 4).astype(np.float32)
        w = tensor(w_val, role=Role.PARAMETER, name=f"{module}.weight")
        b = tensor(b_val, role=Role.PARAMETER, name=f"{module}.bias")
        y_val = x_val @ w_val
        y = tensor(y_val, producer=g.num_ops)
        g.add_op("aten::mm.default", phase=Phase.FORWARD, module=module, inputs=[x, w], outputs=[y])
        z_val = y_val + b_val
        z = tensor(z_val, producer=g.num_ops)
        g.add_op("aten::add.Tensor", phase=Phase.FORWARD, module=module, inputs=[y, b], outputs=[z])
        r_val = np.maximum(z_val, 0)
        r = tensor(r_val, producer=g.num_ops)
        g.add_op("aten::relu.default", phase=Phase.FORWARD, module=module, inputs=[z], outputs=[r])
        gb = tensor(
            _gelu_backward(r_val.astype(np.float64), z_val.astype(np.float64)), producer=g.num_ops
        )
        g.add_op(
            "aten::gelu_backward.default",
            phase=Phase.BACKWARD,
            module=module,
            inputs=[r, z],
            outputs=[gb],
        )
        x, x_val = r, r_val
    graph = g.finish()
    stats = empty_stats(graph.num_tensors)
    for i, array in values.items():
        stats[i] = tensor_stats(array, DType.FLOAT32)
    return StepRecord(step=0, graph=graph, stats=stats, values=values)


def _strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    out, acc = [], 1
    for d in reversed(shape):
        out.append(acc)
        acc *= d
    return tuple(reversed(out))


def _best(fn: Any, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def measure_size(n_ops: int, folder: Path, reps: int) -> dict[str, Any]:
    import replayer

    path = folder / f"synthetic-{n_ops}.tft.h5"
    record = synthetic_step(n_ops)
    with TraceWriter(path, overwrite=True) as w:
        w.write_step(record)
        w.flush()
    ops = record.graph.num_ops
    with tracefmt.open(path) as trace:

        def export() -> None:
            model, _ = replayer.export_step(trace, 0)
            model.SerializeToString()

        def check() -> None:
            report = replayer.check_step(trace, 0)
            if not report.passed:
                raise SystemExit(f"check failed on the synthetic {n_ops}-op step: {report.failed[:3]}")

        export_s = _best(export, reps)
        check_s = _best(check, reps)
    path.unlink()
    return {
        "ops": ops,
        "export_s": round(export_s, 3),
        "check_s": round(check_s, 3),
        "export_s_per_1k_ops": round(1000 * export_s / ops, 4),
        "check_s_per_1k_ops": round(1000 * check_s / ops, 4),
    }


def measure_netron(gpt: str | None, folder: Path) -> tuple[dict[str, Any] | None, str | None]:
    from replayer.view.netron import serve_step, stop

    # The harness lives with the tests (it is no part of the shipped packages): import it from
    # the checkout.
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tests.browser import render, unavailable

    why = unavailable()
    if why is not None:
        return None, why
    if gpt is None:
        try:
            import importlib.util

            if importlib.util.find_spec("torch") is None:
                return None, "torch is not installed: cannot record the GPT example"
        except ValueError:
            return None, "torch is not importable"
        out = folder / "gpt"
        print("recording the GPT example ...", file=sys.stderr)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "recorder.examples.gpt",
                "--steps",
                "2",
                "--out",
                str(out),
                "--values",
                "all",
                "--quiet",
            ],
            check=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        gpt = str(out)
    with tracefmt.open(gpt) as trace:
        served = serve_step(trace, 1)
    try:
        shot = render(served.url, timeout=120)
    finally:
        stop(served.host, served.port)
    return {
        "trace": "recorder.examples.gpt step 1" if gpt.endswith("gpt") else gpt,
        "phase": "forward",
        "depth": served.depth,
        "ops": served.ops,
        "expected_nodes": served.nodes,
        "nodes": shot.nodes,
        "first_graph_s": round(shot.seconds, 3),
        "expired": shot.expired,
    }, None


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1k and 10k ops only, one repetition")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--gpt", default=None, help="a recorded GPT example trace (default: record)")
    p.add_argument("--no-netron", action="store_true")
    args = p.parse_args(argv)
    sizes = [1_000, 10_000] if args.quick else [1_000, 10_000, 50_000]
    reps = 1 if args.quick else args.reps
    result: dict[str, Any] = {
        "bench": "replay",
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "sizes": [],
    }
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as tmp:
        folder = Path(tmp)
        for n in sizes:
            print(f"synthetic step of {n} ops ...", file=sys.stderr)
            result["sizes"].append(measure_size(n, folder, reps))
        first, last = result["sizes"][0], result["sizes"][-1]
        result["linear"] = {
            "export": round(last["export_s_per_1k_ops"] / first["export_s_per_1k_ops"], 2),
            "check": round(last["check_s_per_1k_ops"] / first["check_s_per_1k_ops"], 2),
        }
        if args.no_netron:
            result["netron"], result["netron_skipped"] = None, "--no-netron"
        else:
            netron, why = measure_netron(args.gpt, folder)
            result["netron"] = netron
            if why:
                result["netron_skipped"] = why
    print(json.dumps(result))


if __name__ == "__main__":
    main()
