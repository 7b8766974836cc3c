"""The ``replayer`` command line: export, check (exit codes, JSON, what-if), usage errors."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from click.testing import CliRunner

from replayer.cli import main


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_export_writes_a_checked_model(small_trace: Path, tmp_path: Path) -> None:
    out = tmp_path / "step.onnx"
    code, text = _run("export", str(small_trace), "--step", "1", "--depth", "0", "-o", str(out))
    assert code == 0, text
    assert "ops" in text
    assert re.search(r"as custom nodes of \d+ op types?", text), text
    assert "Module nodes" in text
    onnx.checker.check_model(str(out), full_check=True)


def test_check_passes_on_a_consistent_step(consistent_trace: Path) -> None:
    code, text = _run("check", str(consistent_trace), "--step", "0")
    assert code == 0, text
    assert "PASS" in text
    assert "fraction of ops checked:" in text
    assert "forward" in text


def test_check_report_lists_every_op_with_its_method(consistent_trace: Path) -> None:
    code, text = _run("check", str(consistent_trace), "--step", "0", "--json")
    assert code == 0, text
    report = json.loads(text)
    methods = {r["name"]: (r["status"], r["method"], r["runtime"]) for r in report["ops"]}
    assert methods == {
        "aten::t.default": ("checked", "layout", "onnxruntime"),
        "aten::mm.default": ("checked", "values", "onnxruntime"),
        "aten::add.Tensor": ("checked", "values", "onnxruntime"),
        "aten::relu.default": ("checked", "values", "onnxruntime"),
        "aten::view.default": ("checked", "layout", "onnxruntime"),
        "aten::sum.default": ("checked", "stats", "onnxruntime"),
        "aten::gelu_backward.default": ("checked", "values", "reference"),
    }
    assert report["fraction_checked"] == {"forward": 1.0, "backward": 1.0, "all": 1.0}


def test_check_chain_mode_passes(consistent_trace: Path) -> None:
    code, text = _run("check", str(consistent_trace), "--step", "0", "--chain", "--json")
    assert code == 0, text
    assert json.loads(text)["mode"] == "chain"


def test_check_exits_1_and_names_the_ops_that_do_not_match(small_trace: Path) -> None:
    # The synthetic trace's values are random: no op's output is what the op computes.
    code, text = _run("check", str(small_trace), "--step", "0", "--json")
    assert code == 1, text
    report = json.loads(text)
    failed = [r for r in report["ops"] if r["status"] == "failed"]
    assert {r["name"] for r in failed} >= {"aten::relu.default"}
    assert all(r["reason"] for r in failed)
    code, text = _run("check", str(small_trace), "--step", "0")
    assert code == 1
    assert "FAIL" in text
    assert "relu" in text


def test_what_if_reports_changes_and_exits_0(consistent_trace: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "b.npy", np.full(16, 5.0, dtype=np.float32))
    code, text = _run(
        "check",
        str(consistent_trace),
        "--step",
        "0",
        "--feed",
        f"fc.bias={tmp_path / 'b.npy'}",
        "--json",
    )
    assert code == 0, text
    what_if = json.loads(text)["what_if"]
    changed = {c["tensor"] for c in what_if["changes"] if c["rel_change"] > 0.1}
    assert {"t5", "t6"} <= changed  # the add and the relu after it
    assert any(o["tensor"] == "t8" for o in what_if["outputs"])  # the sum, a step output


def test_usage_errors_exit_2(consistent_trace: Path, tmp_path: Path) -> None:
    code, text = _run("check", str(consistent_trace), "--step", "0", "--feed", "nonsense")
    assert code == 2
    assert "NAME=FILE.npy" in text
    np.save(tmp_path / "b.npy", np.zeros(3, dtype=np.float32))
    code, text = _run(
        "check", str(consistent_trace), "--step", "0", "--feed", f"fc.bias={tmp_path / 'b.npy'}"
    )
    assert code == 2
    assert "shape" in text
    code, text = _run(
        "check", str(consistent_trace), "--step", "0", "--feed", f"nope={tmp_path / 'b.npy'}"
    )
    assert code == 2
    assert "'nope'" in text
    code, text = _run("check", str(consistent_trace), "--step", "7")
    assert code == 2
    assert "Step 7" in text


def _strict(text: str) -> Any:
    """``json.loads`` that refuses ``NaN``, ``Infinity`` and ``-Infinity`` (RFC 8259)."""

    def reject(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=reject)


def test_check_json_writes_non_finite_numbers_as_strings(consistent_trace: Path, tmp_path: Path) -> None:
    # An infinite input makes infinite changes downstream: they were printed as Infinity.
    x = np.ones((8, 16), dtype=np.float32)
    x[0, 0] = np.inf
    np.save(tmp_path / "x.npy", x)
    code, text = _run(
        "check", str(consistent_trace), "--step", "0", "--feed", f"x={tmp_path / 'x.npy'}", "--json"
    )
    assert code == 0, text
    report = _strict(text)
    assert "inf" in {c["rel_change"] for c in report["what_if"]["changes"]}


def test_json_of_the_demo_trace_is_strict(record_trace: Callable[[str], Path]) -> None:
    """Every --json output of both CLIs on the GPT example parses with a strict parser; the
    attention mask's -inf shows as the string "-inf"."""
    from tracefmt.cli import main as tracefmt_main

    path = str(record_trace("gpt"))
    for args in (("info", path), ("ls", path), ("show", path, "--step", "1"), ("validate", path)):
        result = CliRunner().invoke(tracefmt_main, [*args, "--json"])
        assert result.exit_code == 0, result.output
        data = _strict(result.stdout)
        if args[0] == "show":
            attrs = [v for op in data["ops"] for v in op["attrs"].values()]
            assert "-inf" in attrs
    code, text = _run("diff", f"{path}:0", f"{path}:1", "--json")
    assert code == 1, text  # two training steps differ
    assert _strict(text)["kind"] == "step"
    code, text = _run("check", path, "--step", "1", "--phase", "forward", "--json")
    assert code == 0, text
    assert _strict(text)["passed"] is True
