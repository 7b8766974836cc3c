"""The built-in examples train, record and write traces that read back and validate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import tracefmt
from recorder.examples import cnn, gpt, mlp
from tracefmt.model import Phase, Role
from tracefmt.validate import validate


@pytest.mark.parametrize("example", [gpt, cnn, mlp], ids=lambda m: m.__name__.rsplit(".", 1)[1])
def test_example_records_a_valid_trace(
    example: object, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    main = example.main  # type: ignore[attr-defined]
    assert main(["--steps", "3", "--out", str(out), "--quiet", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 3
    assert summary["recorded"]
    with tracefmt.open(out) as trace:
        assert trace.steps() == [0, 1, 2]
        step = trace.step(2)
        phases = {op.phase for op in step.ops}
        assert {Phase.FORWARD, Phase.BACKWARD, Phase.OPTIMIZER} <= phases
        roles = {t.role for t in step.tensors}
        assert {Role.PARAMETER, Role.GRADIENT, Role.OPTIMIZER_STATE} <= roles
        assert "loss" in step.scalars
    assert not [f for f in validate(out) if f.severity == "error"]


def test_cnn_has_batchnorm_buffers_and_dropout(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert cnn.main(["--steps", "2", "--out", str(out), "--quiet", "--size", "16"]) == 0
    with tracefmt.open(out) as trace:
        step = trace.step(1)
        names = {op.name.split(".")[0] for op in step.ops}
        assert "aten::native_batch_norm" in names
        assert {"aten::bernoulli_", "aten::native_dropout"} & names
        buffers = [t for t in step.tensors if t.role is Role.BUFFER and t.meta.version > 0]
        assert {t.name for t in buffers} >= {"features.1.running_mean", "features.1.running_var"}
        assert "lr" in step.scalars


def test_example_runs_unrecorded(capsys: pytest.CaptureFixture[str]) -> None:
    assert mlp.main(["--steps", "2", "--off", "--quiet", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip())["recorded"] is False
