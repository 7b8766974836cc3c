"""An op's attribute ``returned`` (the number ``tensor.item()`` handed to Python) in a hostile file.

A number a float64 cannot hold (an integer of 400 digits), a string or a list is skipped with a
sentence naming the op, in ``replayer check``, ``check --chain`` and ``tracefmt verify``, instead of
a raw ``OverflowError``; NaN is a number (a NaN loss's ``item()``) and is compared like any other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

import tracefmt
from replayer.check import check_step
from replayer.check.report import CHECKED, FAILED, SKIPPED
from replayer.cli import main as replayer_main
from tracefmt import DType, GraphBuilder, Phase, Role, StepRecord, TraceWriter
from tracefmt.records import empty_op_stats, empty_stats
from tracefmt.stats import tensor_stats

pytest.importorskip("onnxruntime", reason="replayer check runs ONNX Runtime")

ITEM = "aten::_local_scalar_dense.default"


def _write(path: Path, value: float, returned: Any) -> Path:
    """One step: a recorded 0-d float32 ``value`` and the op that handed ``returned`` to Python."""
    g = GraphBuilder()
    x = g.add_tensor(DType.FLOAT32, (), role=Role.INPUT, name="loss")
    g.add_op(ITEM, phase=Phase.FORWARD, module="", inputs=[x], outputs=[], attrs={"returned": returned})
    graph = g.finish()
    array = np.asarray(value, dtype=np.float32)
    stats = empty_stats(1)
    stats[0] = tensor_stats(array, DType.FLOAT32)
    record = StepRecord(step=0, graph=graph, stats=stats, op_stats=empty_op_stats(1), values={0: array})
    with TraceWriter(path) as w:
        w.write_step(record)
    return path


@pytest.mark.parametrize(
    "returned",
    [10**400, -(10**400), "1.5", [1.5], {"v": 1.5}],
    ids=["huge", "-huge", "str", "list", "dict"],
)
@pytest.mark.parametrize("chain", [False, True], ids=["local", "chain"])
def test_a_returned_value_that_is_no_float64_is_skipped_naming_the_op(
    tmp_path: Path, returned: Any, chain: bool
) -> None:
    path = _write(tmp_path / "t.tft.h5", 1.5, returned)
    with tracefmt.open(path) as trace:
        (result,) = check_step(trace, 0, chain=chain).results
    assert result.status == SKIPPED
    assert f"op 0 {ITEM}" in result.reason
    assert "'returned'" in result.reason
    assert "float64" in result.reason
    assert len(result.reason) < 300  # the value is shown abbreviated


def test_the_cli_and_verify_skip_a_huge_returned_integer(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.tft.h5", 1.5, 10**400)
    for args in (["check", str(path), "--step", "0"], ["check", str(path), "--step", "0", "--chain"]):
        result = CliRunner().invoke(replayer_main, args)
        assert result.exception is None or isinstance(result.exception, SystemExit), result.output
        assert "OverflowError" not in result.output
        assert "not a number a float64 holds" in result.output
    from tracefmt.cli import main as tracefmt_main

    result = CliRunner().invoke(tracefmt_main, ["verify", str(path), "--json"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "OverflowError" not in result.output


@pytest.mark.parametrize(
    ("value", "returned", "status"),
    [
        (1.5, 1.5, CHECKED),
        (1.5, 2.0, FAILED),
        (1.5, float("nan"), FAILED),
        (float("nan"), float("nan"), CHECKED),
        (float("inf"), float("inf"), CHECKED),
        (1.5, True, FAILED),
    ],
)
def test_numbers_nan_included_are_compared(
    tmp_path: Path, value: float, returned: Any, status: str
) -> None:
    path = _write(tmp_path / "t.tft.h5", value, returned)
    with tracefmt.open(path) as trace:
        (result,) = check_step(trace, 0).results
    assert (result.status, result.method) == (status, "number"), result.reason
