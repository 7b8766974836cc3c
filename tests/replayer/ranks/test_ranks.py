"""``replayer ranks`` on synthetic data-parallel runs (no torch): collectives matched per group,
numbers compared across replicas, ranks without data reported apart, and the CLI's exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import tracefmt
from replayer.cli import main
from replayer.ranks import RanksReport, check_ranks
from tests.replayer.ranks.ranks_synth import Faults, write_run
from tracefmt import DType

ALLREDUCE = "c10d::allreduce_.default"


def _check(run: Path, step: int | None = None, **kw: object) -> RanksReport:
    with tracefmt.open(run) as t:
        return check_ranks(t, step, **kw)  # type: ignore[arg-type]


def _strict(text: str) -> object:
    def refuse(c: str) -> object:
        raise ValueError(f"non-strict JSON constant {c}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def consistent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_run(tmp_path_factory.mktemp("ranks") / "ok")


def test_consistent_two_rank_run(consistent: Path) -> None:
    calls: list[tuple[int, int]] = []
    report = _check(consistent, progress=lambda d, t: calls.append((d, t)))
    assert report.consistent
    assert report.steps == (0, 1, 2)
    assert report.ranks == (0, 1)
    (group,) = report.groups
    assert group.ranks == (0, 1)
    assert group.matched == group.checked == 6
    assert not report.no_data
    assert not report.replicas
    assert calls[-1] == (6, 6)
    assert len(calls) == 6
    # per-rank step time and time inside collectives; rank 1's steps are the slower ones
    assert report.slowest_rank == 1
    t0, t1 = report.times
    assert t0.steps == 3
    assert t0.collectives == 6
    assert t0.step_time == pytest.approx(0.3)
    assert t1.step_time == pytest.approx(0.45)
    assert t0.collective_time == pytest.approx(6e-6)
    assert all(s.slowest_rank == 1 for s in report.step_times)
    result = CliRunner().invoke(main, ["ranks", str(consistent), "--step", "1"])
    assert result.exit_code == 0, result.output
    assert "consistent" in result.output
    assert "2 of 2 collectives matched" in result.output


def test_extra_all_reduce_names_rank_op_module_and_step(tmp_path: Path) -> None:
    run = write_run(tmp_path / "extra", faults=Faults(extra_allreduce={(1, 2)}))
    report = _check(run)
    assert not report.consistent
    mismatches = [m for g in report.groups for m in g.mismatches]
    assert len(mismatches) == 1
    (m,) = mismatches
    assert (m.kind, m.step, m.ranks, m.op, m.module) == ("extra", 2, (1,), ALLREDUCE, "layers.1.probe")
    assert "rank 1" in m.message
    assert "step 2" in m.message
    assert "layers.1.probe" in m.message
    assert not report.replicas  # its values agree: only the extra collective is wrong
    result = CliRunner().invoke(main, ["ranks", str(run)])
    assert result.exit_code == 1
    assert "rank 1 issued c10d::allreduce_.default" in " ".join(result.output.split())


def test_size_mismatch(tmp_path: Path) -> None:
    run = write_run(tmp_path / "size", faults=Faults(bucket_size={(1, 1): 100}))
    report = _check(run, 1)
    (m,) = report.groups[0].mismatches
    assert (m.kind, m.ranks, m.op, m.step) == ("size", (1,), ALLREDUCE, 1)
    assert dict(m.values)[1].startswith("100 elements")


def test_dtype_mismatch(tmp_path: Path) -> None:
    run = write_run(tmp_path / "dtype", faults=Faults(bucket_dtype={(0, 0): DType.BFLOAT16}), world=4)
    report = _check(run, 0)
    kinds = {m.kind: m for m in report.groups[0].mismatches}
    assert set(kinds) == {"dtype"}
    assert kinds["dtype"].ranks == (0,)  # three ranks against one: rank 0 is the odd one
    assert "float32" in kinds["dtype"].message
    assert "bfloat16" in kinds["dtype"].message


def test_reduce_op_mismatch_in_four_ranks(tmp_path: Path) -> None:
    run = write_run(tmp_path / "op", world=4, faults=Faults(reduce_op={(2, 1): "AVG"}))
    report = _check(run, 1)
    (m,) = report.groups[0].mismatches
    assert (m.kind, m.ranks) == ("reduce_op", (2,))
    assert dict(m.values) == {0: "SUM", 1: "SUM", 2: "AVG", 3: "SUM"}


def test_all_reduce_output_differs(tmp_path: Path) -> None:
    run = write_run(tmp_path / "noise", world=4, faults=Faults(output_noise={(3, 0)}))
    report = _check(run, 0)
    (v,) = report.groups[0].values
    assert (v.kind, v.name, v.ranks, v.reference) == ("collective_output", ALLREDUCE, (3,), (0, 1, 2))
    assert not report.groups[0].mismatches
    # the differing bucket reaches rank 3's gradients and parameters
    assert {f.kind for f in report.replicas} == {"parameter", "gradient"}


def test_parameter_differs_after_the_optimizer(tmp_path: Path) -> None:
    run = write_run(tmp_path / "scale", faults=Faults(grad_scale={(1, 1): 1.01}))
    report = _check(run, 1)
    assert not any(g.mismatches or g.values for g in report.groups)
    params = [f for f in report.replicas if f.kind == "parameter"]
    (p,) = params
    assert p.name == "layers.0.weight"
    assert p.ranks == (1,)
    assert p.count == 2
    assert p.parting is not None
    assert p.parting.op == "aten::mul_.Scalar"
    assert p.parting.phase == "optimizer"
    assert (p.parting.rank_a, p.parting.rank_b) == (0, 1)
    with tracefmt.open(run) as t:
        step = t.step(1, 1)
    allreduce = next(op.index for op in step.ops if op.name == ALLREDUCE)
    assert p.parting.index is not None
    assert p.parting.index > allreduce


def test_replicas_that_never_were(tmp_path: Path) -> None:
    run = write_run(tmp_path / "seed", faults=Faults(init_seed={1: 99}))
    report = _check(run, 0)
    (p,) = [f for f in report.replicas if f.kind == "parameter"]
    assert p.name == "layers.0.weight"
    assert p.parting is not None
    assert p.parting.how == "entry"
    assert "layers.0.weight" in p.parting.message


def test_missing_rank_file_is_no_data_not_a_skipped_collective(tmp_path: Path) -> None:
    run = write_run(tmp_path / "gone", world=4)
    tracefmt.rank_file_path(run, 2).unlink()
    report = _check(run)
    assert [(d.rank, d.step) for d in report.no_data] == [(2, None)]
    assert not any(g.mismatches for g in report.groups)
    assert report.groups[0].matched == 6
    assert not report.consistent
    result = CliRunner().invoke(main, ["ranks", str(run)])
    assert result.exit_code == 1
    assert "rank 2 has no file" in result.output


def test_step_missing_on_one_rank_is_no_data(tmp_path: Path) -> None:
    run = write_run(tmp_path / "stopped", faults=Faults(missing_steps={1: {2}}))
    report = _check(run)
    (d,) = report.no_data
    assert (d.rank, d.step, d.last_step) == (1, 2, 1)
    assert "no data for step 2" in d.reason
    assert "last committed step is 1" in d.reason
    assert not any(g.mismatches for g in report.groups)


def test_json_is_strict_and_complete(tmp_path: Path) -> None:
    run = write_run(tmp_path / "json", faults=Faults(extra_allreduce={(1, 2)}, missing_steps={0: {0}}))
    result = CliRunner().invoke(main, ["ranks", str(run), "--json"])
    assert result.exit_code == 1
    data = _strict(result.output)
    assert isinstance(data, dict)
    assert data["consistent"] is False
    assert data["slowest_rank"] == 1
    assert data["no_data"][0]["rank"] == 0
    assert data["no_data"][0]["step"] == 0
    (m,) = data["groups"][0]["mismatches"]
    assert m["kind"] == "extra"
    assert m["ranks"] == [1]


def test_max_mismatches_caps_each_group(tmp_path: Path) -> None:
    sizes = {(1, s): 100 for s in range(3)}
    run = write_run(tmp_path / "cap", faults=Faults(bucket_size=sizes))
    report = _check(run, max_mismatches=1)
    (g,) = report.groups
    assert len(g.mismatches) == 1
    assert g.omitted == 2
    result = CliRunner().invoke(main, ["ranks", str(run), "--max-mismatches", "1", "--json"])
    assert result.exit_code == 1
    assert _strict(result.output)["groups"][0]["omitted"] == 2  # type: ignore[index]


def test_usage_and_unreadable_exit_2(consistent: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["ranks", str(consistent), "--step", "99"])
    assert result.exit_code == 2
    assert "recorded step 99" in result.output
    assert runner.invoke(main, ["ranks", str(consistent), "--max-mismatches", "0"]).exit_code == 2
    assert runner.invoke(main, ["ranks", str(tmp_path / "nothing")]).exit_code == 2
    (tmp_path / "empty").mkdir()
    result = runner.invoke(main, ["ranks", str(tmp_path / "empty")])
    assert result.exit_code == 2
    assert "no rank files" in result.output


def test_ranks_imports_without_torch(consistent: Path) -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import tracefmt, replayer.ranks\n"
        f"t = tracefmt.open({str(consistent)!r})\n"
        "assert replayer.ranks.check_ranks(t).consistent\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[3], timeout=120)
