"""Fixtures of the replayer tests: real traces recorded once per session, in subprocesses.

The built-in examples (``python -m recorder.examples.<name>``) and two models of
``_record_models.py`` are recorded with every value, two steps each.  Torch is needed to record
them; the tests themselves never import it (one test checks that).  Without torch, or without
an example module, the tests that need the trace skip and say why.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.replayer._traces import EXAMPLES
from tracefmt import GraphBuilder, StepRecord, TraceWriter
from tracefmt.records import empty_stats

ROOT = Path(__file__).resolve().parents[2]


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


@pytest.fixture(scope="session")
def record_trace(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``record_trace(name)``: the run directory of example or model ``name`` (cached)."""
    cache: dict[str, Path] = {}
    root = tmp_path_factory.mktemp("replayer-traces")

    def get(name: str) -> Path:
        if name in cache:
            return cache[name]
        if not _has_module("torch"):
            pytest.skip("torch is not installed: recording the example traces needs it")
        out = root / name
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        if name in EXAMPLES:
            if not _has_module(f"recorder.examples.{name}"):
                pytest.skip(f"recorder.examples.{name} does not exist (yet)")
            cmd = [
                sys.executable,
                "-m",
                f"recorder.examples.{name}",
                "--steps",
                "2",
                "--out",
                str(out),
                "--values",
                "all",
                "--quiet",
                "--overwrite",
            ]
        else:
            cmd = [sys.executable, str(Path(__file__).with_name("_record_models.py")), name, str(out)]
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            pytest.fail(f"recording {name} failed:\n{done.stderr[-3000:]}")
        cache[name] = out
        return out

    return get


def _contiguous(shape: tuple[int, ...]) -> tuple[int, ...]:
    out, acc = [], 1
    for d in reversed(shape):
        out.append(acc)
        acc *= d
    return tuple(reversed(out))


@pytest.fixture
def consistent_trace(tmp_path: Path) -> Path:
    """A torch-free step whose record is what the ops compute (numpy float32): a transposed
    weight (a view: strides only), mm, add, relu, a flattening view, a sum recorded by statistics
    only, and a ``gelu_backward`` (a custom node with a numpy reference)."""
    from tracefmt import DType, Phase, Role
    from tracefmt.stats import tensor_stats

    rng = np.random.default_rng(0)
    g = GraphBuilder()
    values: dict[int, np.ndarray] = {}
    stats_only: set[int] = set()

    def add(
        array: np.ndarray, strides: tuple[int, ...] | None = None, record: bool = True, **kw: object
    ) -> int:
        index = g.add_tensor(
            DType.FLOAT32, array.shape, strides=strides or _contiguous(array.shape), **kw
        )  # type: ignore[arg-type]
        if record:
            values[index] = np.ascontiguousarray(array)
        return index

    xv = rng.standard_normal((8, 16)).astype(np.float32)
    wv = (rng.standard_normal((16, 16)) / 4).astype(np.float32)
    bv = rng.standard_normal(16).astype(np.float32)
    x = add(xv, role=Role.INPUT, name="x")
    w = add(wv, role=Role.PARAMETER, name="fc.weight")
    b = add(bv, role=Role.PARAMETER, name="fc.bias")
    wt = add(wv.T, strides=(1, 16), record=False, producer=0)
    g.add_op("aten::t.default", phase=Phase.FORWARD, module="fc", inputs=[w], outputs=[wt])
    yv = xv @ wv.T
    y = add(yv, producer=1)
    g.add_op("aten::mm.default", phase=Phase.FORWARD, module="fc", inputs=[x, wt], outputs=[y])
    zv = yv + bv
    z = add(zv, producer=2)
    g.add_op("aten::add.Tensor", phase=Phase.FORWARD, module="fc", inputs=[y, b], outputs=[z])
    rv = np.maximum(zv, 0)
    r = add(rv, producer=3)
    g.add_op("aten::relu.default", phase=Phase.FORWARD, module="act", inputs=[z], outputs=[r])
    v = add(rv.reshape(128), record=False, producer=4)
    g.add_op(
        "aten::view.default",
        phase=Phase.FORWARD,
        module="",
        inputs=[r],
        outputs=[v],
        attrs={"size": [-1]},
    )
    sv = np.asarray(rv.astype(np.float64).sum(), dtype=np.float32)
    s = add(sv, record=False, producer=5)
    stats_only.add(s)
    values_s = {s: sv}
    g.add_op("aten::sum.default", phase=Phase.FORWARD, module="", inputs=[v], outputs=[s])
    import math

    erf = np.frompyfunc(math.erf, 1, 1)
    z64, r64 = zv.astype(np.float64), rv.astype(np.float64)
    cdf = 0.5 * (1 + np.asarray(erf(z64 / math.sqrt(2)), dtype=np.float64))
    gbv = r64 * (cdf + z64 * np.exp(-0.5 * z64 * z64) / math.sqrt(2 * math.pi))
    gb = add(gbv.astype(np.float32), producer=6)
    g.add_op(
        "aten::gelu_backward.default", phase=Phase.BACKWARD, module="act", inputs=[r, z], outputs=[gb]
    )
    graph = g.finish()
    stats = empty_stats(graph.num_tensors)
    for index, array in {**values, **values_s}.items():
        stats[index] = tensor_stats(array, DType.FLOAT32)
    path = tmp_path / "consistent.tft.h5"
    with TraceWriter(path) as w_:
        w_.write_step(StepRecord(step=0, graph=graph, stats=stats, values=values))
        w_.flush()
    return path
