"""Mappers the examples do not reach, each checked against numpy on a one-op step (no torch):
``replayer check`` must pass on the right output and fail on a perturbed one."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

import replayer
import tracefmt
from tracefmt import GraphBuilder, Phase, Role, StepRecord, TraceWriter
from tracefmt.dtypes import from_numpy
from tracefmt.records import empty_stats
from tracefmt.stats import tensor_stats

RNG = np.random.default_rng(0)
X = RNG.standard_normal((3, 4, 5)).astype(np.float32)
M = RNG.standard_normal((4, 5)).astype(np.float32)
I = np.array([5, -3, 7, -8], dtype=np.int64)  # noqa: E741

# (op, inputs as (array, arg, item), attrs, expected outputs)
CASES: list[tuple[str, list[tuple[np.ndarray, int, int]], dict[str, Any], list[np.ndarray]]] = [
    (
        "aten::isnan.default",
        [(np.array([1.0, np.nan], np.float32), 0, -1)],
        {},
        [np.array([False, True])],
    ),
    ("aten::logical_not.default", [(np.array([True, False]), 0, -1)], {}, [np.array([False, True])]),
    ("aten::gt.Scalar", [(M, 0, -1)], {"other": 0.25}, [M > 0.25]),
    ("aten::where.self", [(M > 0, 0, -1), (M, 1, -1), (-M, 2, -1)], {}, [np.where(M > 0, M, -M)]),
    ("aten::remainder.Scalar", [(I, 0, -1)], {"other": 3}, [np.mod(I, 3)]),
    (
        "aten::remainder.Scalar",
        [(M, 0, -1)],
        {"other": 0.3},
        [(M - np.floor(M / np.float32(0.3)) * np.float32(0.3)).astype(np.float32)],
    ),
    (
        "aten::floor_divide.default",
        [(I, 0, -1), (np.full(4, 3, np.int64), 1, -1)],
        {},
        [np.floor_divide(I, 3)],
    ),
    ("aten::clamp.default", [(M, 0, -1)], {"min": -0.5, "max": 0.5}, [np.clip(M, -0.5, 0.5)]),
    ("aten::pow.Tensor_Scalar", [(M, 0, -1)], {"exponent": 2}, [M * M]),
    (
        "aten::sum.dim_IntList",
        [(X, 0, -1)],
        {"dim": [1], "keepdim": True},
        [X.sum(axis=1, keepdims=True)],
    ),
    ("aten::mean.dim", [(X, 0, -1)], {"dim": [-1, 0]}, [X.mean(axis=(0, 2))]),
    ("aten::amax.default", [(X, 0, -1)], {"dim": [2]}, [X.max(axis=2)]),
    ("aten::max.dim", [(X, 0, -1)], {"dim": 1}, [X.max(axis=1), X.argmax(axis=1)]),
    (
        "aten::var.correction",
        [(X, 0, -1)],
        {"dim": [2], "correction": 1},
        [X.astype(np.float64).var(axis=2, ddof=1).astype(np.float32)],
    ),
    (
        "aten::linalg_vector_norm.default",
        [(X, 0, -1)],
        {"dim": [1]},
        [np.sqrt((X.astype(np.float64) ** 2).sum(axis=1)).astype(np.float32)],
    ),
    ("aten::permute.default", [(X, 0, -1)], {"dims": [2, 0, 1]}, [X.transpose(2, 0, 1)]),
    ("aten::slice.Tensor", [(X, 0, -1)], {"dim": 2, "start": 1, "end": 100, "step": 2}, [X[:, :, 1::2]]),
    ("aten::select.int", [(X, 0, -1)], {"dim": 1, "index": -1}, [X[:, -1]]),
    ("aten::squeeze.dim", [(X[:, :1], 0, -1)], {"dim": 1}, [X[:, 0]]),
    (
        "aten::cat.default",
        [(M, 0, 0), (2 * M, 0, 1)],
        {"dim": -1},
        [np.concatenate([M, 2 * M], axis=-1)],
    ),
    ("aten::stack.default", [(M, 0, 0), (2 * M, 0, 1)], {"dim": 1}, [np.stack([M, 2 * M], 1)]),
    (
        "aten::split_with_sizes.default",
        [(X, 0, -1)],
        {"split_sizes": [1, 3], "dim": 1},
        [X[:, :1], X[:, 1:]],
    ),
    (
        "aten::masked_fill.Scalar",
        [(M, 0, -1), (M < 0, 1, -1)],
        {"value": -1.0},
        [np.where(M < 0, np.float32(-1), M)],
    ),
    ("aten::_to_copy.default", [(M, 0, -1)], {"dtype": "torch.float64"}, [M.astype(np.float64)]),
    (
        "aten::arange.start_step",
        [],
        {"start": 2, "end": 11, "step": 3},
        [np.arange(2, 11, 3, dtype=np.int64)],
    ),
    ("aten::full.default", [], {"size": [2, 3], "fill_value": 1.5}, [np.full((2, 3), 1.5, np.float32)]),
    ("aten::triu.default", [(M, 0, -1)], {"diagonal": 1}, [np.triu(M, 1)]),
    (
        "aten::index_select.default",
        [(M, 0, -1), (np.array([3, 0], np.int64), 2, -1)],
        {"dim": 0},
        [M[[3, 0]]],
    ),
    (
        "aten::softmax.int",
        [(X, 0, -1)],
        {"dim": 1},
        [(np.exp(X) / np.exp(X).sum(axis=1, keepdims=True)).astype(np.float32)],
    ),
    ("aten::silu.default", [(M, 0, -1)], {}, [(M / (1 + np.exp(-M))).astype(np.float32)]),
    (
        "aten::baddbmm.default",
        [(X[:, :, :4], 0, -1), (X[:, :, :2], 1, -1), (X[:, :2, :4], 2, -1)],
        {"beta": 0.5, "alpha": 2.0},
        [0.5 * X[:, :, :4] + 2.0 * (X[:, :, :2] @ X[:, :2, :4])],
    ),
]


def _strides(shape: Sequence[int]) -> tuple[int, ...]:
    out, acc = [], 1
    for d in reversed(shape):
        out.append(acc)
        acc *= d
    return tuple(reversed(out))


def _write(
    path: Path,
    name: str,
    inputs: list[tuple[np.ndarray, int, int]],
    attrs: dict[str, Any],
    outputs: list[np.ndarray],
) -> None:
    g = GraphBuilder()
    values: dict[int, np.ndarray] = {}
    triples = []
    for k, (array, arg, item) in enumerate(inputs):
        t = g.add_tensor(
            from_numpy(array), array.shape, strides=_strides(array.shape), role=Role.INPUT, name=f"in{k}"
        )
        values[t] = np.ascontiguousarray(array)
        triples.append((t, arg, item))
    outs = []
    for slot, array in enumerate(outputs):
        array = np.ascontiguousarray(array)
        t = g.add_tensor(
            from_numpy(array), array.shape, strides=_strides(array.shape), producer=0, producer_slot=slot
        )
        values[t] = array
        outs.append(t)
    g.add_op(name, phase=Phase.FORWARD, module="m", inputs=triples, outputs=outs, attrs=attrs)
    graph = g.finish()
    stats = empty_stats(graph.num_tensors)
    for t, array in values.items():
        stats[t] = tensor_stats(array, from_numpy(array))
    with TraceWriter(path, overwrite=True) as w:
        w.write_step(StepRecord(step=0, graph=graph, stats=stats, values=values))
        w.flush()


@pytest.mark.parametrize(
    ("name", "inputs", "attrs", "outputs"),
    CASES,
    ids=[f"{c[0].removeprefix('aten::')}-{i}" for i, c in enumerate(CASES)],
)
def test_mapper_matches_numpy(
    tmp_path: Path,
    name: str,
    inputs: list[tuple[np.ndarray, int, int]],
    attrs: dict[str, Any],
    outputs: list[np.ndarray],
) -> None:
    path = tmp_path / "one.tft.h5"
    _write(path, name, inputs, attrs, outputs)
    with tracefmt.open(path) as trace:
        model, stats = replayer.export_step(trace, 0)
        onnx.checker.check_model(model, full_check=True)
        assert stats.standard == 1, f"{name} was not mapped to standard ONNX: {stats.custom}"
        report = replayer.check_step(trace, 0)
    assert report.passed, report.failed
    assert report.results[0].status == "checked"
    # The same op against a wrong record must fail.
    wrong = [o.copy() for o in outputs]
    flat = wrong[0].reshape(-1)
    flat[0] = (~flat[0]) if flat.dtype == np.bool_ else flat[0] + 7
    _write(path, name, inputs, attrs, wrong)
    with tracefmt.open(path) as trace:
        assert not replayer.check_step(trace, 0).passed
