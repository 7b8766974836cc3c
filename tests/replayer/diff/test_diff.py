"""``replayer diff`` on real recorded training runs (the recorder, torch on CPU).

Each scenario records two short runs of :mod:`tests.replayer.diff.diff_training` (or the built-in GPT
example) that differ in one way, and checks what the diff says about them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("torch", reason="recording the test runs needs torch")

import tracefmt
from replayer.cli import main
from replayer.diff.core import diff_steps, divergent_ops
from replayer.diff.results import RunDiff, Status, StepDiff
from replayer.diff.runs import diff_sides
from tracefmt.model import Phase, Role

PERTURBED = "l1.fc.weight"


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every recorded run the tests compare, recorded once per session."""
    from tests.replayer.diff.diff_training import record_gpt, record_mlp

    root = tmp_path_factory.mktemp("diff_runs")
    out = {
        "base": record_mlp(root / "base"),
        "same": record_mlp(root / "same"),
        "ulp": record_mlp(root / "ulp", perturb=(3, PERTURBED)),
        "base_values": record_mlp(root / "base_values", values=True),
        "ulp_values": record_mlp(root / "ulp_values", values=True, perturb=(3, PERTURBED)),
        "dropout": record_mlp(root / "dropout", dropout_seed=7),
        "bf16": record_mlp(root / "bf16", autocast=True, steps=2),
        "extra": record_mlp(root / "extra", extra_layer=True, steps=2),
        "gpt": record_gpt(root / "gpt"),
        "gpt_same": record_gpt(root / "gpt_same"),
        "gpt_dropout": record_gpt(root / "gpt_dropout", steps=1, dropout_seed=5),
    }
    return out


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["diff", *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def _run_diff(runs: dict[str, Path], a: str, b: str, **kw: object) -> RunDiff:
    result = diff_sides(str(runs[a]), str(runs[b]), **kw)  # type: ignore[arg-type]
    assert isinstance(result, RunDiff)
    return result


def test_same_seed_is_identical_and_exits_0(runs: dict[str, Path]) -> None:
    result = _run_diff(runs, "base", "same")
    assert result.identical
    assert result.equal
    assert [v.verdict for v in result.steps] == ["identical"] * 4
    assert result.first_divergent is None
    assert result.diff is None
    code, out = _run(str(runs["base"]), str(runs["same"]))
    assert code == 0, out
    assert "IDENTICAL" in out


def test_builtin_gpt_example_same_seed_is_identical(runs: dict[str, Path]) -> None:
    code, out = _run(str(runs["gpt"]), str(runs["gpt_same"]), "--json")
    assert code == 0, out
    data = json.loads(out)
    assert data["verdict"] == "identical"
    assert data["common"] == 3
    with tracefmt.open(runs["gpt"]) as ta, tracefmt.open(runs["gpt_same"]) as tb:
        d = diff_steps(ta.step(1), tb.step(1))
        assert d.identical
        assert d.matched == d.ops_a == d.ops_b
        assert d.counts.equal > 100
        assert d.counts.close == d.counts.different == 0


def test_builtin_gpt_example_other_dropout_seed(runs: dict[str, Path]) -> None:
    result = _run_diff(runs, "gpt", "gpt_dropout")
    assert result.first_divergent == 0
    d = result.diff
    assert d is not None
    assert d.origin is not None
    assert d.origin.kind == "op"
    assert d.origin.a is not None
    # The GPT's first dropout is the embedding dropout, ``drop``, before the first block.
    assert d.origin.a.module == "drop"
    assert "bernoulli" in d.origin.a.name or "dropout" in d.origin.a.name


def _first_reader(step: tracefmt.Step, name: str) -> int:
    return next(op.index for op in step.ops if any(step.tensors[t].name == name for t in op.inputs))


@pytest.mark.parametrize(("a", "b"), [("base", "ulp"), ("base_values", "ulp_values")])
def test_one_ulp_parameter_origin_is_its_first_reader(runs: dict[str, Path], a: str, b: str) -> None:
    result = _run_diff(runs, a, b, stop_at_first_different=False)
    assert result.first_divergent == 3
    assert [v.verdict for v in result.steps[:3]] == ["identical"] * 3
    d = result.diff
    assert d is not None
    assert d.step_a == 3
    origin = d.origin
    assert origin is not None
    assert origin.kind == "input"
    assert origin.tensor is not None
    assert origin.tensor.name == PERTURBED
    assert origin.tensor.role is Role.PARAMETER
    with tracefmt.open(runs[b]) as tb:
        step = tb.step(3)
        assert origin.b is not None
        assert origin.b.index == _first_reader(step, PERTURBED)
    assert origin.a is not None
    assert origin.a.phase is Phase.FORWARD
    assert origin.a.module == "l1.fc"
    assert d.first_parameter is not None
    assert d.first_parameter.name == PERTURBED
    code, out = _run(f"{runs[a]}:3", str(runs[b]))
    assert PERTURBED in out
    assert "Origin" in out
    # One ULP is within the float32 tolerance: equal (exit 0), but not identical.
    assert code == 0
    assert "EQUAL" in out


def test_one_ulp_with_values_measures_one_ulp(runs: dict[str, Path]) -> None:
    with tracefmt.open(runs["base_values"]) as ta, tracefmt.open(runs["ulp_values"]) as tb:
        d = diff_steps(ta.step(3), tb.step(3))
    assert d.origin is not None
    assert d.origin.tensor is not None
    dist = d.origin.tensor.distance
    assert dist is not None
    assert dist.source == "values"
    assert dist.ulp == 1
    assert dist.count == 1
    assert dist.numel == 24 * 24
    assert d.origin.tensor.status is Status.CLOSE
    # With a zero tolerance the same difference is beyond it: exit 1.
    code, _ = _run(f"{runs['base_values']}:3", str(runs["ulp_values"]), "--rtol", "0", "--atol", "0")
    assert code == 1


def test_stats_only_traces_find_the_origin_by_fingerprint(runs: dict[str, Path]) -> None:
    with tracefmt.open(runs["base"]) as ta, tracefmt.open(runs["ulp"]) as tb:
        sa, sb = ta.step(3), tb.step(3)
        assert not any(t.has_values for t in sa.tensors + sb.tensors)
        d = diff_steps(sa, sb)
    assert d.origin is not None
    assert d.origin.kind == "input"
    t = d.origin.tensor
    assert t is not None
    assert t.name == PERTURBED
    assert t.stats_a is not None
    assert t.stats_b is not None
    assert t.stats_a.fingerprint != t.stats_b.fingerprint
    assert t.distance is not None
    assert t.distance.source == "stats"


def test_other_dropout_seed_origin_is_first_layer_dropout(runs: dict[str, Path]) -> None:
    result = _run_diff(runs, "base", "dropout")
    assert result.first_divergent == 0
    assert result.first_different == 0
    assert result.stopped_early
    assert len(result.steps) == 1
    d = result.diff
    assert d is not None
    assert d.origin is not None
    assert d.origin.kind == "op"
    assert d.origin.a is not None
    assert d.origin.a.module == "l0.drop"
    assert "bernoulli" in d.origin.a.name or "dropout" in d.origin.a.name
    assert d.origin.a.phase is Phase.FORWARD
    # No op before it in execution order has a measured difference.
    assert all(x.position >= d.origin.position for x in d.divergences)
    assert d.chain
    assert d.chain[0] == d.origin.a
    assert d.chain_diverged
    with tracefmt.open(runs["base"]) as ta:
        step = ta.step(0)
        assert d.loss_a is not None
        assert step.tensors[d.loss_a].meta.numel == 1
        assert d.chain[-1].index == step.tensors[d.loss_a].meta.producer
    assert d.origin.a.index in divergent_ops(result, side="a")
    code, out = _run(str(runs["base"]), str(runs["dropout"]))
    assert code == 1
    assert "l0.drop" in out


def test_bf16_autocast_is_structural_and_numerical(runs: dict[str, Path], tmp_path: Path) -> None:
    result = _run_diff(runs, "base", "bf16")
    d = result.diff
    assert d is not None
    assert not d.equal
    kinds = {c.kind for c in d.structural}
    assert {"added", "dtype"} <= kinds
    added = [c for c in d.structural if c.kind == "added"]
    assert any(c.b is not None and "_to_copy" in c.b.name for c in added)
    assert any("bfloat16" in c.detail for c in d.structural if c.kind == "dtype")
    assert d.counts.different > 0
    assert d.counts.close + d.counts.equal > 0
    assert any(x.status is Status.DIFFERENT for x in d.divergences)
    assert d.origin is not None
    report = tmp_path / "bf16.html"
    code, out = _run(str(runs["base"]), str(runs["bf16"]), "--report", str(report))
    assert code == 1
    assert "Structural changes" in out
    page = report.read_text()
    assert "data:image/png;base64," in page
    assert "bfloat16" in page
    code, out = _run(str(runs["base"]), str(runs["bf16"]), "--json", "--all-steps")
    data = json.loads(out)
    assert code == 1
    assert data["first_different"] == 0
    assert len(data["steps"]) == 2


def test_extra_layer_is_named_and_the_rest_aligns(runs: dict[str, Path]) -> None:
    with tracefmt.open(runs["base"]) as ta, tracefmt.open(runs["extra"]) as tb:
        sa, sb = ta.step(0), tb.step(0)
        d = diff_steps(sa, sb)
        extra_params = {t.name for t in sb.tensors if t.name and t.name.startswith("extra.")}
    assert d.modules_added == ("extra",)
    assert d.modules_removed == ()
    assert d.matched == d.ops_a  # every op of A found its counterpart
    kinds = {c.kind for c in d.structural}
    assert kinds == {"added"}
    for c in d.structural:
        assert c.b is not None
        assert c.module.startswith("extra.") or (c.b.phase is Phase.OPTIMIZER and c.module == ""), c
    assert extra_params
    assert d.origin is not None
    assert d.origin.kind == "structural"
    assert d.origin.b is not None
    assert d.origin.b.module.startswith("extra")
    code, out = _run(f"{runs['base']}:0", f"{runs['extra']}:0")
    assert code == 1
    assert "modules only in B: extra" in out


def test_two_steps_of_one_run_and_json_is_strict(runs: dict[str, Path]) -> None:
    code, out = _run(f"{runs['base']}:1", f"{runs['base']}:2", "--json")
    assert code == 1
    data = json.loads(out)
    json.dumps(data, allow_nan=False)
    assert data["kind"] == "step"
    assert data["step_a"] == 1
    assert data["step_b"] == 2
    assert data["first_parameter"]["name"]
    result = diff_sides(f"{runs['base']}:1", f"{runs['base']}:2")
    assert isinstance(result, StepDiff)
    assert result.first_optimizer_state is not None


def test_replayer_diff_runs_without_torch(runs: dict[str, Path], tmp_path: Path) -> None:
    report = tmp_path / "r.html"
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import json, tracefmt\n"
        "from click.testing import CliRunner\n"
        "from replayer.cli import main\n"
        "from replayer.diff.runs import diff_sides\n"
        f"r = diff_sides({str(runs['base'])!r}, {str(runs['ulp'])!r})\n"
        "assert r.first_divergent == 3 and r.diff.origin.tensor.name == 'l1.fc.weight'\n"
        f"res = CliRunner().invoke(main, ['diff', {str(runs['base'])!r}, "
        f"{str(runs['dropout'])!r}, '--report', {str(report)!r}])\n"
        "assert res.exit_code == 1, res.output\n"
        "loaded = [k for k, v in sys.modules.items() if v is not None]\n"
        "assert not any(k == 'torch' or k.startswith('torch.') for k in loaded)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[3])
    assert report.stat().st_size > 10_000
