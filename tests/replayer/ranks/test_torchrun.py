"""``replayer ranks`` on real recordings of ``torchrun --standalone --nproc_per_node=2`` (gloo, CPU).

Each scenario is recorded once (module-scoped fixtures) with the GPT example at a tiny size:
a clean DDP run, a rank issuing one extra all_reduce, ranks initialised apart, a tampered
gradient (the example's ``--extra-allreduce``, ``--unsynced-init`` and ``--tamper-grad``), a rank
SIGKILLed in the middle of a step (``_killed_child.py``) and FSDP2 (``_collectives_child.py
fsdp`` of the recorder's tests).  The report is read through the CLI (click's ``CliRunner``) as
strict JSON, and what it says is checked against the rank files read directly with tracefmt, so a
report that looked at nothing would fail.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

pytest.importorskip("torch", reason="recording under torchrun needs torch")

import torch
import torch.distributed as dist

import tracefmt
from recorder.examples import gpt
from recorder.examples._common import Distributed, Faults
from replayer.cli import main
from tests.torchrun import torchrun, torchrun_ok
from tracefmt import Role, Step
from tracefmt.validate import validate

REPO = Path(__file__).resolve().parents[3]
ALLREDUCE = "c10d::allreduce_.default"
SMALL = ["--layers", "1", "--embd", "16", "--heads", "2", "--block", "16", "--batch", "4"]
TIMEOUT = 150  # seconds per torchrun; a hang fails the test instead of blocking CI

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(),
    reason="torch.distributed with gloo is not available in this torch build",
)


def _gpt(tmp: pytest.TempPathFactory, *faults: str) -> Path:
    """3 recorded DDP steps of the GPT example, with ``faults`` (the example's flags)."""
    run = tmp.mktemp("torchrun") / "run"
    args = ["-m", "recorder.examples.gpt", "--ddp", "--steps", "3", "--out", str(run), *SMALL]
    torchrun_ok([*args, "--quiet", *faults], TIMEOUT)
    return run


def _strict(text: str) -> Any:
    def refuse(c: str) -> object:
        raise ValueError(f"non-strict JSON constant {c}")

    return json.loads(text, parse_constant=refuse)


def _ranks(run: Path, *args: str) -> tuple[int, Any]:
    """``replayer ranks RUN ARGS --json``: (exit code, the report parsed strictly)."""
    result = CliRunner().invoke(main, ["ranks", str(run), *args, "--json"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, _strict(result.stdout)


def _text(run: Path, *args: str) -> tuple[int, str]:
    # rich wraps at COLUMNS when not on a terminal: wide enough for a finding on one line
    result = CliRunner().invoke(main, ["ranks", str(run), *args], env={"COLUMNS": "400"})
    return result.exit_code, result.output


def _steps(run: Path, step: int) -> dict[int, Step]:
    """``step`` of every rank that recorded it."""
    with tracefmt.open(run) as trace:
        return {r: trace.step(step, r) for r in trace.ranks if step in trace.steps(r)}


def _collectives(step: Step) -> list[Any]:
    return [op for op in step.ops if "c10d" in op.attrs and "wait_tensor" not in op.name]


def _written_prints(step: Step, name: str) -> list[list[int | None]]:
    """Fingerprints of what each ``name`` op of ``step`` wrote, in order."""
    out = []
    for op in step.ops:
        if op.name == name:
            stats = [step.tensors[t].stats for t in op.outputs]
            out.append([s.fingerprint if s is not None else None for s in stats])
    return out


def _final_params(step: Step) -> dict[str, int | None]:
    """Each parameter's fingerprint at its last version in the step."""
    last: dict[str, tuple[int, int | None]] = {}
    for t in step.tensors:
        if t.meta.role is Role.PARAMETER and t.meta.name is not None:
            fp = t.stats.fingerprint if t.stats is not None else None
            if last.get(t.meta.name, (-1, None))[0] <= t.meta.version:
                last[t.meta.name] = (t.meta.version, fp)
    return {name: fp for name, (_, fp) in last.items()}


def _model_params(**kw: Any) -> dict[str, torch.Tensor]:
    model, _, _ = gpt.build(layers=1, embd=16, heads=2, block=16, batch=4, **kw)
    return {n: p.detach().clone() for n, p in model.named_parameters()}


# -- 1. a clean DDP run ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _gpt(tmp_path_factory)


def test_ddp_ranks_share_one_run_and_step_1_is_consistent(clean: Path) -> None:
    manifest = tracefmt.read_manifest(clean)
    assert manifest is not None
    assert (manifest.world_size, manifest.expected_ranks) == (2, (0, 1))
    with tracefmt.open(clean) as trace:
        assert trace.ranks == (0, 1)
        assert (trace.missing_ranks, trace.damaged_ranks) == ((), {})
    for rank in (0, 1):
        with tracefmt.open(tracefmt.rank_file_path(clean, rank)) as one:
            assert one.run_id == manifest.run_id

    code, report = _ranks(clean, "--step", "1")
    assert code == 0, report
    assert report["consistent"] is True
    assert (report["steps"], report["ranks"], report["no_data"]) == ([1], [0, 1], [])
    assert report["replicas"] == []
    (group,) = report["groups"]
    assert group["ranks"] == [0, 1]
    assert (group["mismatches"], group["values"], group["omitted"]) == ([], [], 0)
    steps = _steps(clean, 1)
    # every collective of the step is counted, on both ranks
    assert group["matched"] == group["checked"] == len(_collectives(steps[0]))
    assert len(_collectives(steps[0])) == len(_collectives(steps[1])) >= 1

    # what the report calls identical is measured and identical in the files
    reduced = {r: _written_prints(s, ALLREDUCE) for r, s in steps.items()}
    assert reduced[0], "step 1 has no all-reduce"
    assert None not in [fp for prints in reduced[0] for fp in prints]
    assert reduced[0] == reduced[1]
    params = {r: _final_params(s) for r, s in steps.items()}
    assert set(params[0]) == set(_model_params())  # every parameter, named as in the model
    assert None not in params[0].values()
    assert params[0] == params[1]

    # when each rank entered each collective (format 1.3: op start times), all of them timed
    assert group["timed"] == group["checked"]
    assert group["arrivals"]
    for a in group["arrivals"]:
        starts = dict(a["starts"])
        assert sorted(starts) == [0, 1]
        assert a["spread_ns"] == starts[a["last_rank"]] - starts[a["first_rank"]] >= 0
        assert all(0 <= t < steps[r].duration * 1e9 for r, t in starts.items())
    assert report["step_times"][0]["widest_arrival"] == group["arrivals"][0]
    assert validate(clean) == []  # TF-OPSTART-003: every op ends within its step

    assert _ranks(clean)[0] == 0  # every step, the first with DDP's construction

    code, text = _text(clean, "--step", "1")
    assert code == 0
    assert "consistent" in text
    assert f"{group['matched']} of {group['checked']} collectives matched on every rank" in text


# -- 2. one extra all_reduce --------------------------------------------------------------------
@pytest.fixture(scope="module")
def extra(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _gpt(tmp_path_factory, "--extra-allreduce", "1:2")


def test_an_extra_all_reduce_is_named_by_rank_op_and_step(extra: Path) -> None:
    code, report = _ranks(extra)
    assert code == 1
    assert report["steps"] == [0, 1, 2]
    (group,) = report["groups"]
    (m,) = group["mismatches"]
    assert (m["kind"], m["ranks"], m["op"], m["step"]) == ("extra", [1], ALLREDUCE, 2)
    assert (report["no_data"], report["replicas"]) == ([], [])
    assert _ranks(extra, "--step", "1")[0] == 0  # the steps before are consistent

    code, text = _text(extra, "--step", "2")
    assert code == 1
    assert f"step 2: rank 1 issued {ALLREDUCE}" in text
    assert "which rank 0 did not issue" in text


# -- 3. replicas that differ --------------------------------------------------------------------
@pytest.fixture(scope="module")
def unsynced(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _gpt(tmp_path_factory, "--unsynced-init")


def test_ranks_initialised_apart_name_the_first_parameter_and_where_they_part(
    unsynced: Path,
) -> None:
    a, b = _model_params(init_seed=0), _model_params(init_seed=1)
    apart = {n for n in a if not torch.equal(a[n], b[n])}  # the randomly initialised ones
    assert "wte.weight" in apart
    assert "ln_f.weight" not in apart

    code, report = _ranks(unsynced, "--step", "1")
    assert code == 1
    assert report["groups"][0]["mismatches"] == []  # the collectives still match
    # the all-reduce averages the gradients: they agree, the parameters do not
    (finding,) = report["replicas"]
    assert finding["kind"] == "parameter"
    assert (finding["ranks"], finding["reference"]) == ([1], [0])
    assert finding["name"] == "wte.weight"  # the first parameter the forward reads
    assert finding["count"] == len(apart)
    assert set(finding["names"]) == apart
    parting = finding["parting"]
    assert (parting["how"], parting["op"], parting["module"]) == (
        "entry",
        "aten::embedding.default",
        "wte",
    )
    assert (
        "'wte.weight' already differs between ranks 0 and 1 when step 1 starts" in (parting["message"])
    )


@pytest.fixture(scope="module")
def tampered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _gpt(tmp_path_factory, "--tamper-grad", "1:1")


def test_a_tampered_gradient_names_the_parameter_and_the_op_that_parted_them(
    tampered: Path,
) -> None:
    last = list(_model_params())[-1]  # the example tampers with the last parameter's gradient
    assert _ranks(tampered, "--step", "0")[0] == 0

    code, report = _ranks(tampered, "--step", "1")
    assert code == 1
    assert report["groups"][0]["mismatches"] == []
    kinds = {f["kind"]: f for f in report["replicas"]}
    assert set(kinds) == {"parameter", "gradient"}
    param, grad = kinds["parameter"], kinds["gradient"]
    assert (param["name"], param["count"], param["ranks"]) == (last, 1, [1])
    assert f"step 1: 1 parameter differs across replicas; the first is {last!r}" in param["message"]
    assert (grad["name"], grad["count"], grad["ranks"]) == (f"{last}.grad", 1, [1])
    parting = param["parting"]
    assert (parting["how"], parting["op"]) == ("structural", "aten::add_.Tensor")
    assert "rank 1 ran" in parting["message"]
    assert "which rank 0 did not" in parting["message"]
    # the rank's own record of it: an add_ on that gradient, after the step's all-reduce
    steps = _steps(tampered, 1)
    op = steps[1].ops[parting["index"]]
    assert op.name == "aten::add_.Tensor"
    assert {steps[1].tensors[t].meta.name for t in op.outputs} == {f"{last}.grad"}
    assert op.index > max(o.index for o in _collectives(steps[1]))

    code, report = _ranks(tampered, "--step", "2")  # the difference is carried into step 2
    (finding,) = report["replicas"]
    assert (finding["kind"], finding["name"], finding["parting"]["how"]) == ("parameter", last, "entry")


# -- 4. a rank killed mid-run -------------------------------------------------------------------
KILL_STEP = 2


@pytest.fixture(scope="module")
def killed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, list[int]]]:
    run = tmp_path_factory.mktemp("torchrun") / "run"
    done = torchrun(["-m", "tests.replayer.ranks._killed_child", str(run), "1", str(KILL_STEP)], TIMEOUT)
    assert done.returncode != 0  # torchrun reports the lost rank
    printed: dict[int, list[int]] = {0: [], 1: []}
    for rank, step in re.findall(r"rank (\d) step (\d+)", done.stdout):
        printed[int(rank)].append(int(step))
    expected = {0: list(range(KILL_STEP + 1)), 1: list(range(KILL_STEP))}
    assert printed == expected, done.stdout[-2000:] + done.stderr[-3000:]
    return run, printed


def test_a_killed_rank_is_reported_with_its_last_committed_step(
    killed: tuple[Path, dict[int, list[int]]],
) -> None:
    run, printed = killed
    assert not [f for f in validate(run) if f.severity == "error"]
    with tracefmt.open(run) as trace:
        for rank in (0, 1):
            assert trace.steps(rank) == printed[rank]  # every flushed step, nothing more
            for step in printed[rank]:
                assert trace.step(step, rank).ops

    code, report = _ranks(run)
    assert code == 1
    (nodata,) = report["no_data"]
    assert (nodata["rank"], nodata["step"], nodata["last_step"]) == (1, KILL_STEP, KILL_STEP - 1)
    assert f"(its last committed step is {KILL_STEP - 1})" in nodata["reason"]
    (group,) = report["groups"]
    assert (group["mismatches"], group["values"], report["replicas"]) == ([], [], [])
    # collectives are matched across the ranks with data: both ranks' steps before the kill, and
    # rank 0's alone in the step rank 1 lacks
    steps = [_steps(run, k) for k in range(KILL_STEP + 1)]
    assert [sorted(s) for s in steps] == [[0, 1]] * KILL_STEP + [[0]]
    counted = sum(len(_collectives(s[0])) for s in steps)
    assert group["matched"] == group["checked"] == counted

    assert _ranks(run, "--step", str(KILL_STEP - 1))[0] == 0
    code, text = _text(run, "--step", str(KILL_STEP))
    assert code == 1
    assert f"rank 1 has no data for step {KILL_STEP} (its last committed step is 1)" in text
    assert "collectives matched on every rank with data" in text  # not "on every rank"


# -- 5. FSDP2 -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fsdp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("torchrun") / "run"
    run.mkdir()
    torchrun_ok(
        [str(REPO / "tests" / "recorder" / "_collectives_child.py"), "fsdp", str(run)], TIMEOUT, out=run
    )
    return run


def test_fsdp2_all_gathers_and_reduce_scatters_match_without_replica_findings(fsdp: Path) -> None:
    code, report = _ranks(fsdp)
    assert code == 0, report
    assert report["steps"] == [0, 1]
    assert report["replicas"] == []
    assert any("sharded" in n for n in report["notes"])  # said why parameters are not compared
    (group,) = report["groups"]
    counted = 0
    for step in (0, 1):
        steps = _steps(fsdp, step)
        names = [op.name for op in _collectives(steps[0])]
        assert "c10d::_allgather_base_.default" in names
        assert "c10d::_reduce_scatter_base_.default" in names
        counted += len(names)
        gathered = {r: _written_prints(s, "c10d::_allgather_base_.default") for r, s in steps.items()}
        assert None not in [fp for prints in gathered[0] for fp in prints]
        assert gathered[0] == gathered[1]  # what the report compared, measured and equal
        # DTensor parameters are named; the recorder leaves them unmeasured (no storage of
        # their own), and the step's reduce-scatter keeps them out of the replica check
        for r in (0, 1):
            assert {"0.weight", "0.bias", "2.weight", "2.bias"} <= set(_final_params(steps[r]))
    assert group["matched"] == group["checked"] == counted
    assert (group["mismatches"], group["values"]) == ([], [])


# -- the fault flags without torchrun ----------------------------------------------------------
def _args(**kw: Any) -> argparse.Namespace:
    values = {"extra_allreduce": None, "tamper_grad": None, "unsynced_init": False, "steps": 3}
    return argparse.Namespace(**{**values, **kw})


def test_fault_flags_are_checked_against_the_run() -> None:
    world = Distributed(0, 2, torch.device("cpu"))
    assert Faults.from_args(_args(), world) is None
    assert Faults.from_args(_args(tamper_grad=(1, 0)), world) == Faults(tamper_grad=(1, 0))
    with pytest.raises(SystemExit, match="must be the last one"):
        Faults.from_args(_args(extra_allreduce=(1, 1)), world)
    with pytest.raises(SystemExit, match="outside the run"):
        Faults.from_args(_args(tamper_grad=(2, 0)), world)
    with pytest.raises(SystemExit):
        gpt.main(["--unsynced-init", "--steps", "1", "--quiet"])  # needs --ddp
    with pytest.raises(SystemExit):
        gpt.main(["--ddp", "--tamper-grad", "one", "--quiet"])  # not RANK:STEP
