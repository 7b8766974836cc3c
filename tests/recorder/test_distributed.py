"""The recorder under torchrun: ranks and run id from the environment, one run directory.

The resolution of rank, world size and run id is tested as pure functions (environment dicts
in, answers out).  Two tests run ``torchrun --standalone --nproc_per_node=2`` with gloo on CPU
(bound to 127.0.0.1): the GPT example with ``--ddp`` for 3 steps, and a DDP training whose rank
1 SIGKILLs itself after its step 3 was flushed.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch._C._distributed_c10d import HashStore

import recorder
import tracefmt
from recorder.distributed import (
    ENV_VARS,
    GroupState,
    Located,
    ManifestKeeper,
    Placement,
    RunIdChoice,
    default_group_info,
    resolve_placement,
    resolve_run_id,
    store_agreement,
)
from recorder.examples import gpt
from tests.recorder._util import mlp
from tests.torchrun import torchrun, torchrun_ok
from tracefmt import ProcessGroupInfo, group_id
from tracefmt.errors import TraceError
from tracefmt.validate import validate

TORCHRUN_ENV = {
    "GROUP_RANK": "0",
    "LOCAL_RANK": "1",
    "LOCAL_WORLD_SIZE": "2",
    "RANK": "1",
    "WORLD_SIZE": "2",
    "TORCHELASTIC_RUN_ID": "ed0b45d2-43e2-4dd7-8378-fa52feb90c2f",
}
PROVENANCE_KEYS = {
    "rank",
    "world_size",
    "local_rank",
    "local_world_size",
    "node_rank",
    "hostname",
    "pid",
    "run_id_source",
    "backend",
}
needs_gloo = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(),
    reason="torch.distributed with gloo is not available in this torch build",
)


# -- ranks: pure ---------------------------------------------------------------------------------
def test_lone_process_is_rank_0_of_1_and_not_distributed() -> None:
    assert resolve_placement({}) == Placement(0, 1, distributed=False)


def test_torchrun_environment_gives_every_field() -> None:
    p = resolve_placement(TORCHRUN_ENV)
    assert p == Placement(1, 2, local_rank=1, local_world_size=2, node_rank=0, distributed=True)
    info = p.provenance("TORCHELASTIC_RUN_ID", hostname="h", pid=7)
    assert set(info) == PROVENANCE_KEYS
    assert (info["rank"], info["hostname"], info["backend"]) == (1, "h", None)


def test_explicit_arguments_win_over_group_and_environment() -> None:
    group = GroupState(rank=1, world_size=2, backend="gloo")
    assert resolve_placement(TORCHRUN_ENV, rank=3, world_size=4, group=group).rank == 3
    assert resolve_placement({}, rank=1, world_size=2) == Placement(1, 2, distributed=True)
    assert resolve_placement(TORCHRUN_ENV, rank=0).world_size == 2  # the other from the env


def test_an_initialised_group_wins_over_the_environment() -> None:
    group = GroupState(rank=0, world_size=4, backend="gloo")
    p = resolve_placement(TORCHRUN_ENV, group=group)
    assert (p.rank, p.world_size, p.backend, p.local_rank) == (0, 4, "gloo", 1)
    assert resolve_placement({}, group=GroupState(0, 1, "gloo")).distributed


@pytest.mark.parametrize(
    ("env", "kwargs", "match"),
    [
        ({"RANK": "1"}, {}, "RANK but not WORLD_SIZE"),
        ({"WORLD_SIZE": "2"}, {}, "WORLD_SIZE but not RANK"),
        ({"RANK": "x", "WORLD_SIZE": "2"}, {}, "RANK='x'"),
        ({"RANK": "0", "WORLD_SIZE": "0"}, {}, "WORLD_SIZE='0'"),
        ({"RANK": "2", "WORLD_SIZE": "2"}, {}, "outside world size 2"),
        ({}, {"rank": 1}, r"record\(rank=...\).*lone process"),
        ({"RANK": "0", "WORLD_SIZE": "2"}, {"world_size": 1, "rank": 1}, "outside world size 1"),
    ],
)
def test_inconsistent_ranks_are_refused_with_a_sentence(
    env: Mapping[str, str], kwargs: dict[str, int], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        resolve_placement(env, rank=kwargs.get("rank"), world_size=kwargs.get("world_size"))


# -- run id: pure --------------------------------------------------------------------------------
def _fixed(value: str) -> Callable[[], str]:
    return lambda: value


def test_run_id_order_argument_elastic_store_generated() -> None:
    env = dict(TORCHRUN_ENV)
    agree = store_agreement("tracefmt/run_id/0", HashStore)
    choice = resolve_run_id("mine", env, world_size=2, agree=agree)
    assert (choice.run_id, choice.source) == ("mine", "argument")
    choice = resolve_run_id(None, env, world_size=2, agree=agree)
    assert (choice.run_id, choice.source, choice.warning) == (
        env["TORCHELASTIC_RUN_ID"],
        "TORCHELASTIC_RUN_ID",
        None,
    )
    choice = resolve_run_id(None, {}, world_size=1, new_id=_fixed("u1"))
    assert (choice.run_id, choice.source, choice.warning) == ("u1", "generated", None)


def test_elastic_none_is_unset_and_the_store_agrees_on_the_first_offer() -> None:
    store = HashStore()
    env = {**TORCHRUN_ENV, "TORCHELASTIC_RUN_ID": "none"}
    ids = []
    for candidate in ("first", "second"):  # two ranks offering their own ids, in turn
        agree = store_agreement("tracefmt/run_id/0", lambda: store)
        choice = resolve_run_id(None, env, world_size=2, agree=agree, new_id=_fixed(candidate))
        assert (choice.source, choice.warning) == ("c10d_store", None)
        ids.append(choice.run_id)
    assert ids == ["first", "first"]


def test_ranks_that_cannot_agree_are_told_how_to_fix_it() -> None:
    env = {**TORCHRUN_ENV, "TORCHELASTIC_RUN_ID": "none"}
    choice = resolve_run_id(None, env, world_size=2, new_id=_fixed("u2"))
    assert (choice.run_id, choice.source) == ("u2", "generated")
    assert choice.warning is not None
    assert "init_process_group()" in choice.warning
    assert "run_id=" in choice.warning


def test_a_failing_store_falls_back_to_a_generated_id_with_a_warning() -> None:
    def broken() -> object:
        raise RuntimeError("connection refused")

    choice = resolve_run_id(None, {}, world_size=2, agree=store_agreement("k", broken))
    assert choice.source == "generated"
    assert choice.warning is not None
    assert "connection refused" in choice.warning


def test_an_empty_run_id_argument_is_refused() -> None:
    with pytest.raises(ValueError, match="run_id"):
        resolve_run_id(" ", {}, world_size=1)


# -- record() in a run directory, one process playing one rank ---------------------------------
@pytest.fixture
def launch(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Set the launcher's variables as torchrun would for one rank (the others cleared)."""

    def set_env(**values: str) -> None:
        for name in ENV_VARS:
            monkeypatch.delenv(name, raising=False)
        for name, value in values.items():
            monkeypatch.setenv(name, value)

    set_env()
    return set_env


def _record_two_steps(run: Path, **kwargs: Any) -> recorder.Recorder:
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with recorder.record(run, model=model, **kwargs) as rec:
        for _ in range(2):
            model(torch.randn(4, 8)).square().mean().backward()
            opt.step()
            opt.zero_grad()
            rec.step()
    return rec


def test_a_lone_process_writes_rank_0_and_a_one_rank_manifest(
    tmp_path: Path, launch: Callable[..., None]
) -> None:
    rec = _record_two_steps(tmp_path)
    manifest = tracefmt.read_manifest(tmp_path)
    assert manifest is not None
    assert (manifest.world_size, manifest.expected_ranks, manifest.run_id) == (1, (0,), rec.run_id)
    assert manifest.run_id_source == "generated"
    with tracefmt.open(tmp_path) as trace:
        assert "distributed" not in trace.provenance.extra
        assert trace.run_id == rec.run_id


def test_rank_1_from_the_environment_writes_its_own_file_and_no_manifest(
    tmp_path: Path, launch: Callable[..., None]
) -> None:
    launch(**{k: v for k, v in TORCHRUN_ENV.items()})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rec = _record_two_steps(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rank-00001.tft.h5"]
    assert rec.run_id == TORCHRUN_ENV["TORCHELASTIC_RUN_ID"]
    with tracefmt.open(tmp_path) as trace:
        assert (trace.ranks, trace.missing_ranks) == ((1,), (0,))
        info = trace.provenance.extra["distributed"]
    assert set(info) == PROVENANCE_KEYS
    assert (info["rank"], info["local_rank"], info["pid"]) == (1, 1, os.getpid())
    assert info["run_id_source"] == "TORCHELASTIC_RUN_ID"


def test_rank_0_without_a_shared_id_warns_and_says_so(
    tmp_path: Path, launch: Callable[..., None]
) -> None:
    launch(RANK="0", WORLD_SIZE="2", TORCHELASTIC_RUN_ID="none")
    with pytest.warns(UserWarning, match=r"init_process_group\(\).*run_id="):
        _record_two_steps(tmp_path / "a")
    manifest = tracefmt.read_manifest(tmp_path / "a")
    assert manifest is not None
    assert (manifest.run_id_source, manifest.expected_ranks) == ("generated", (0, 1))
    launch(RANK="1", WORLD_SIZE="2", TORCHELASTIC_RUN_ID="none")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rank 1 stays quiet: rank 0 has said it
        _record_two_steps(tmp_path / "b")


def test_overwrite_replaces_only_this_ranks_own_file(
    tmp_path: Path, launch: Callable[..., None]
) -> None:
    launch(RANK="0", WORLD_SIZE="2")
    _record_two_steps(tmp_path, run_id="first")
    launch(RANK="1", WORLD_SIZE="2")
    _record_two_steps(tmp_path, run_id="first")
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.iterdir()}
    rank1 = tmp_path / "rank-00001.tft.h5"
    _record_two_steps(tmp_path, run_id="second", overwrite=True)  # rank 1 again
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.iterdir()}
    assert set(after) == set(before)
    assert after["rank-00000.tft.h5"] == before["rank-00000.tft.h5"]
    assert after["run.json"] == before["run.json"]
    with tracefmt.open(rank1) as trace:
        assert trace.run_id == "second"
    launch(RANK="0", WORLD_SIZE="2")
    with pytest.raises(TraceError, match="already exists"):
        _record_two_steps(tmp_path, run_id="third")
    _record_two_steps(tmp_path, run_id="second", overwrite=True)
    manifest = tracefmt.read_manifest(tmp_path)
    assert manifest is not None
    assert (manifest.run_id, manifest.run_id_source) == ("second", "argument")


def test_rank_0_warns_about_rank_files_of_an_earlier_larger_run(
    tmp_path: Path, launch: Callable[..., None]
) -> None:
    launch(RANK="3", WORLD_SIZE="4")
    _record_two_steps(tmp_path)
    launch(RANK="0", WORLD_SIZE="2")
    with pytest.warns(UserWarning, match=r"rank-00003\.tft\.h5 from an earlier run") as seen:
        _record_two_steps(tmp_path, run_id="r")
    assert seen[0].filename == __file__  # points at the user's record() call
    assert (tmp_path / "rank-00003.tft.h5").exists()  # reported, never removed


def test_the_manifest_is_rewritten_when_a_step_names_a_new_group(tmp_path: Path) -> None:
    world = GroupState(rank=0, world_size=2, backend="gloo")
    located = Located(resolve_placement({}, group=world), RunIdChoice("r", "argument"), world, "h", 1)
    keeper = ManifestKeeper(tmp_path, located)
    keeper.write()
    default = default_group_info(world)
    assert tracefmt.read_manifest(tmp_path) == keeper.manifest
    assert keeper.manifest.process_groups == (default,)
    stamp = (tmp_path / "run.json").stat().st_mtime_ns
    keeper.note_groups([default])
    assert (tmp_path / "run.json").stat().st_mtime_ns == stamp  # nothing new: not rewritten
    sub = ProcessGroupInfo(group_id("1", [1]), "1", (1,), "gloo")
    keeper.note_groups([default, sub, sub])
    manifest = tracefmt.read_manifest(tmp_path)
    assert manifest is not None
    assert manifest.process_groups == (default, sub)


def test_the_ddp_example_outside_torchrun_says_how_to_launch_it(
    launch: Callable[..., None],
) -> None:
    with pytest.raises(SystemExit, match="torchrun --standalone --nproc_per_node=2"):
        gpt.main(["--ddp", "--steps", "1", "--quiet"])


# -- under torchrun --------------------------------------------------------------------------
def _rank_provenance(run: Path, rank: int) -> dict[str, object]:
    with tracefmt.open(tracefmt.rank_file_path(run, rank)) as trace:
        distributed = trace.provenance.extra["distributed"]
    assert isinstance(distributed, dict)
    return distributed


@needs_gloo
def test_torchrun_ddp_example_records_every_rank_into_one_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    small = ["--layers", "1", "--embd", "16", "--heads", "2", "--block", "16", "--batch", "4"]
    args = ["-m", "recorder.examples.gpt", "--ddp", "--steps", "3", "--out", str(run), *small]
    done = torchrun_ok([*args, "--quiet", "--json"], timeout=150)
    summary = json.loads(done.stdout.strip().splitlines()[-1])  # rank 0 alone prints it
    assert (summary["world_size"], summary["recorded"]) == (2, True)
    manifest = tracefmt.read_manifest(run)
    assert manifest is not None
    assert (manifest.world_size, manifest.expected_ranks) == (2, (0, 1))
    assert manifest.run_id_source == "TORCHELASTIC_RUN_ID"
    assert any(g.ranks == (0, 1) and g.backend == "gloo" for g in manifest.process_groups)
    with tracefmt.open(run) as trace:
        assert trace.ranks == (0, 1)
        assert trace.run_id == manifest.run_id
        assert trace.missing_ranks == ()
        assert trace.damaged_ranks == {}
        for rank in (0, 1):
            assert trace.steps(rank=rank) == [0, 1, 2]
            names = {op.name for op in trace.step(1, rank=rank).ops}
            assert "c10d::allreduce_.default" in names  # DDP's gradient bucket, on every rank
    pids = set()
    for rank in (0, 1):
        info = _rank_provenance(run, rank)
        assert set(info) >= PROVENANCE_KEYS
        assert (info["rank"], info["world_size"], info["local_rank"]) == (rank, 2, rank)
        assert (info["node_rank"], info["backend"]) == (0, "gloo")
        assert info["run_id_source"] == "TORCHELASTIC_RUN_ID"
        pids.add(info["pid"])
        with tracefmt.open(tracefmt.rank_file_path(run, rank)) as one:
            assert one.run_id == manifest.run_id
    assert len(pids) == 2
    assert not [f for f in validate(run) if f.severity == "error"]


@needs_gloo
def test_a_rank_killed_mid_run_leaves_every_flushed_step_readable(tmp_path: Path) -> None:
    run = tmp_path / "run"
    done = torchrun(["-m", "tests.recorder._ddp_child", str(run), "1", "3"], timeout=150)
    assert done.returncode != 0  # torchrun reports the lost rank
    printed: dict[int, list[int]] = {0: [], 1: []}
    for rank, step in re.findall(r"rank (\d) step (\d+)", done.stdout):
        printed[int(rank)].append(int(step))
    assert printed[1] == [0, 1, 2, 3], done.stdout[-2000:] + done.stderr[-3000:]
    assert printed[0][:3] == [0, 1, 2]  # rank 0 got at least as far as its step 2
    manifest = tracefmt.read_manifest(run)
    assert manifest is not None
    assert manifest.expected_ranks == (0, 1)
    assert manifest.run_id_source == "c10d_store"  # the child unsets TORCHELASTIC_RUN_ID
    for rank in (0, 1):
        with tracefmt.open(tracefmt.rank_file_path(run, rank)) as trace:
            assert trace.run_id == manifest.run_id
            assert trace.provenance.extra["distributed"]["run_id_source"] == "c10d_store"
            steps = trace.steps()
            assert set(printed[rank]) <= set(steps), (rank, printed[rank], steps)
            for step in printed[rank]:
                loaded = trace.step(step)
                assert loaded.ops
                assert "loss" in loaded.scalars
    assert not [f for f in validate(run) if f.severity == "error"]
