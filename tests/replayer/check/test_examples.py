"""The acceptance tests on real traces: the built-in examples (GPT, CNN, MLP) and two extra
models (a conv net with BatchNorm and dropout, an MLP with foreach AdamW)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

import replayer
import tracefmt
from replayer.export.mapping import PHASES
from tests.replayer._traces import EXAMPLES, MODELS, copy_step

ALL = EXAMPLES + MODELS


@pytest.mark.parametrize("name", ALL)
def test_every_step_and_phase_exports_a_model_that_passes_the_full_check(
    record_trace: Callable[[str], Path], name: str
) -> None:
    path = record_trace(name)
    with tracefmt.open(path) as trace:
        for step in trace.steps():
            loaded = trace.step(step)
            present = {op.phase.label for op in loaded.ops}
            for phase in PHASES:
                if phase != "all" and phase not in present:
                    continue
                for depth in (None, 1) if phase == "all" else (None,):
                    model, stats = replayer.export_step(
                        trace, step, phase=phase, depth=depth, split_saved=phase == "all"
                    )
                    onnx.checker.check_model(model, full_check=True)
                    assert stats.ops == len(replayer.select(loaded, phase))


@pytest.mark.parametrize("name", ALL)
def test_check_passes_on_the_recorded_forward(record_trace: Callable[[str], Path], name: str) -> None:
    with tracefmt.open(record_trace(name)) as trace:
        for step in trace.steps():
            report = replayer.check_step(trace, step, phase="forward")
            assert report.passed, [r for r in report.failed]
            assert report.fractions()["forward"] == 1.0, report.skip_reasons()


@pytest.mark.parametrize("name", ALL)
def test_check_passes_on_every_phase(record_trace: Callable[[str], Path], name: str) -> None:
    with tracefmt.open(record_trace(name)) as trace:
        report = replayer.check_step(trace, trace.steps()[-1])
    assert report.passed, report.failed
    fractions = report.fractions()
    assert fractions["backward"] == 1.0, report.skip_reasons()
    # Only tensor.item() (a Python number, not recorded) is skipped in the optimizer.
    assert set(report.skip_reasons()) <= {
        "aten::_local_scalar_dense.default: returns no tensor (e.g. tensor.item()); the trace "
        "holds nothing to compare"
    }


def test_gpt_fraction_checked_per_phase(
    record_trace: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from click.testing import CliRunner

    from replayer.cli import main

    result = CliRunner().invoke(main, ["check", str(record_trace("gpt")), "--step", "1"])
    assert result.exit_code == 0, result.output
    assert "fraction of ops checked:" in result.output
    lines = {
        line.split()[0]: line
        for line in result.output.splitlines()
        if line.startswith("  ") and "%" in line
    }
    assert set(lines) >= {"forward", "backward", "optimizer", "all"}
    assert "100.0%" in lines["forward"]
    assert "100.0%" in lines["backward"]
    capsys.readouterr()
    print("GPT step 1, fraction of ops checked per phase:\n" + "\n".join(lines.values()))


@pytest.mark.parametrize(
    ("name", "parameter"), [("gpt", "h.0.mlp.c_fc.weight"), ("convnet", "4.weight"), ("mlp", None)]
)
def test_check_fails_naming_the_op_when_a_recorded_parameter_is_altered(
    record_trace: Callable[[str], Path], tmp_path: Path, name: str, parameter: str | None
) -> None:
    source = record_trace(name)
    with tracefmt.open(source) as trace:
        loaded = trace.step(1)
        params = [
            t
            for t in loaded.tensors
            if t.role.label == "parameter"
            and t.has_values
            and t.meta.version == 0
            and len(t.shape) == 2
            and (parameter is None or t.name == parameter)
        ]
        if not params:
            params = [t for t in loaded.tensors if t.name == parameter and t.meta.version == 0]
        target = params[0]
        readers = [op for op in loaded.ops if target.index in op.inputs and op.phase.label == "forward"]
    altered = tmp_path / "altered.tft.h5"
    copy_step(source, altered, 1, {target.index: lambda v: (v * 1.01).astype(v.dtype)})
    from click.testing import CliRunner

    from replayer.cli import main

    result = CliRunner().invoke(
        main, ["check", str(altered), "--step", "1", "--phase", "forward", "--json"]
    )
    assert result.exit_code == 1, result.output
    import json

    report = json.loads(result.output)
    failed = [r for r in report["ops"] if r["status"] == "failed"]
    assert failed
    # The first op to fail is the one that reads the parameter (or the view of it that does).
    first = failed[0]
    assert first["module"] == readers[0].module
    assert first["op"] >= readers[0].index


def test_unaltered_copy_still_passes(record_trace: Callable[[str], Path], tmp_path: Path) -> None:
    copy = tmp_path / "copy.tft.h5"
    copy_step(record_trace("convnet"), copy, 1, {})
    with tracefmt.open(copy) as trace:
        assert replayer.check_step(trace, 1).passed


def test_dropout_is_replayed_with_its_recorded_mask(record_trace: Callable[[str], Path]) -> None:
    with tracefmt.open(record_trace("convnet")) as trace:
        model, _ = replayer.export_step(trace, 1, phase="forward")
        report = replayer.check_step(trace, 1, phase="forward")
    drops = [n for n in model.graph.node if "bernoulli" in n.name]
    assert drops
    assert all(n.op_type == "Identity" and n.input[0].endswith(".recorded") for n in drops)
    assert {i.name for i in model.graph.initializer} >= {n.input[0] for n in drops}
    draws = [r for r in report.results if "bernoulli" in r.name]
    assert draws
    assert all(r.status == "checked" and r.method == "draws" for r in draws)


def test_batch_norm_runs_in_training_mode(record_trace: Callable[[str], Path]) -> None:
    with tracefmt.open(record_trace("convnet")) as trace:
        model, _ = replayer.export_step(trace, 1, phase="forward")
        report = replayer.check_step(trace, 1, phase="forward")
    norms = [n for n in model.graph.node if n.op_type == "BatchNormalization"]
    assert norms
    for node in norms:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["training_mode"] == 1
    checked = [r for r in report.results if r.name == "aten::native_batch_norm.default"]
    assert checked
    assert all(r.status == "checked" and r.method == "values" for r in checked)


def test_foreach_optimizer_is_checked_by_numpy_references(record_trace: Callable[[str], Path]) -> None:
    with tracefmt.open(record_trace("adamw_foreach")) as trace:
        report = replayer.check_step(trace, 1, phase="optimizer")
    foreach = [r for r in report.results if "_foreach_" in r.name]
    assert foreach
    assert all(r.status == "checked" and r.runtime == "reference" for r in foreach)


def test_what_if_feed_changes_the_loss(record_trace: Callable[[str], Path], tmp_path: Path) -> None:
    from click.testing import CliRunner

    from replayer.cli import main

    path = record_trace("gpt")
    with tracefmt.open(path) as trace:
        weight = next(t for t in trace.step(1).tensors if t.name == "ln_f.weight")
        np.save(tmp_path / "w.npy", weight.values() * 3)
    result = CliRunner().invoke(
        main,
        [
            "check",
            str(path),
            "--step",
            "1",
            "--phase",
            "forward",
            "--feed",
            f"ln_f.weight={tmp_path / 'w.npy'}",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    import json

    report = json.loads(result.output)
    assert report["mode"] == "chain"
    outputs = report["what_if"]["outputs"]
    loss = next(c for c in outputs if c["recorded"] != c["replayed"] and c["rel_change"] > 1e-3)
    assert loss["rel_change"] > 1e-3


@pytest.mark.parametrize("name", ALL)
def test_chain_mode_replays_the_step_from_its_sources(
    record_trace: Callable[[str], Path], name: str
) -> None:
    # Also the regression test of ONNX Runtime's training-mode BatchNormalization, which updates
    # the running-statistics buffers it is given in place (it corrupted the running_var update).
    with tracefmt.open(record_trace(name)) as trace:
        report = replayer.check_step(trace, 1, chain=True)
    assert report.mode == "chain"
    assert report.passed, report.failed
