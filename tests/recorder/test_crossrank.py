"""recorder.flight.remote: a trigger on one rank reaches every rank through the c10d store.

In process against torch's ``HashStore`` (the logic, the races, a failing store), and under
``torchrun --standalone --nproc_per_node=2`` (gloo, loopback) through the default group's real
``TCPStore``: rank 1 posts at step 20, both ranks see it at their next poll, a later post does
not overwrite it.  The torchrun test prints what a poll that finds nothing costs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch.distributed as dist

from recorder.flight.remote import RemoteTrigger, RemoteTriggers, default_store
from tests.torchrun import torchrun_ok
from tracefmt.events import REMOTE_TRIGGER, message_fields

CHILD = Path(__file__).with_name("_crossrank_child.py")


def _hash_store() -> Any:
    """torch's in-memory store: the same API as the TCPStore, in one process."""
    return dist.HashStore()  # type: ignore[attr-defined]


def test_every_rank_sees_every_post_in_order_and_the_first_stays_first() -> None:
    store = _hash_store()
    rank0, rank1 = RemoteTriggers(store, "run-a", 0), RemoteTriggers(store, "run-a", 1)
    assert rank0.poll() is None
    assert rank0.first() is None
    posted = rank1.post(20, "nonfinite_created", "module 'h.1' made 3 NaN")
    assert posted == RemoteTrigger(1, 1, 20, "nonfinite_created", "module 'h.1' made 3 NaN")
    assert rank0.poll() == posted
    assert rank0.poll() is None
    second = rank0.post(21, "nonfinite_state", "the loss is nan")
    assert second is not None
    assert second.seq == 2
    assert rank1.poll() == posted  # a rank sees its own posts too, in order
    assert rank1.poll() == second
    assert rank0.poll() == second
    assert rank0.first() == rank1.first() == posted


def test_runs_sharing_a_store_do_not_see_each_other() -> None:
    store = _hash_store()
    RemoteTriggers(store, "run-a", 0).post(3, "user_trigger", "why not")
    assert RemoteTriggers(store, "run-b", 1).poll() is None
    with pytest.raises(ValueError, match="run id without '/'"):
        RemoteTriggers(store, "a/b", 0)


def test_a_post_numbered_but_not_yet_written_is_read_at_a_later_poll() -> None:
    store = _hash_store()
    reader = RemoteTriggers(store, "run", 0)
    store.add("tracefmt/trigger/run/count", 1)  # a poster between its add and its set
    assert reader.poll() is None
    late = RemoteTriggers(store, "run", 1).post(8, "loss_spike", "spike")
    assert late is not None
    assert late.seq == 2
    assert reader.poll() is None  # post 1 still missing: order is kept
    store.set("tracefmt/trigger/run/1", json.dumps({"rank": 1, "step": 7, "kind": "x", "reason": ""}))
    assert [reader.poll(), reader.poll(), reader.poll()] == [
        RemoteTrigger(1, 1, 7, "x", ""),
        late,
        None,
    ]


def test_a_malformed_post_is_skipped_with_a_warning() -> None:
    store = _hash_store()
    store.set("tracefmt/trigger/run/1", "not json at all")
    reader = RemoteTriggers(store, "run", 0)
    with pytest.warns(RuntimeWarning, match="does not hold a trigger post"):
        assert reader.poll() is None
    assert reader.first() is None


class _BrokenStore:
    def __init__(self) -> None:
        self.calls = 0

    def _fail(self, *args: Any) -> Any:
        self.calls += 1
        raise RuntimeError("Connection reset by peer")

    add = set = get = check = _fail


def test_a_failing_store_warns_once_and_never_fails_the_step() -> None:
    store = _BrokenStore()
    remote = RemoteTriggers(store, "run", 3)
    with pytest.warns(RuntimeWarning, match=r"Rank 3 could not poll for triggers .*Connection reset"):
        assert remote.poll() is None
    assert remote.disabled
    assert remote.poll() is None
    assert remote.post(5, "loss_spike", "x") is None
    assert store.calls == 1


def test_a_single_process_has_no_store() -> None:
    assert not dist.is_initialized()
    assert default_store() is None
    assert RemoteTriggers.from_default_group("run") is None


def test_the_remote_event_names_the_rank_that_fired() -> None:
    fields = message_fields(RemoteTrigger(1, 1, 20, "nonfinite_created", "made NaN").event())
    assert fields["rank"] == 1
    assert fields["step"] == 20
    assert fields["trigger"] == "nonfinite_created"
    assert fields["reason"].startswith("Rank 1 fired nonfinite_created at its step 20")
    assert RemoteTrigger(1, 1, 20, "x", "y").event().kind == REMOTE_TRIGGER


def test_under_torchrun_a_trigger_on_rank_1_reaches_rank_0(tmp_path: Path) -> None:
    torchrun_ok([str(CHILD), str(tmp_path)], timeout=120)
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for rank, report in enumerate(reports):
        assert report["type"] == "PrefixStore"
        seen = report["seen"]
        first = seen[0]
        assert (first["seq"], first["rank"], first["step"], first["kind"]) == (
            1,
            1,
            20,
            "nonfinite_created",
        )
        # rank 1 reads its own post in the same step; rank 0 at its step 20 or, if its poll
        # came first, at step 21 (rank 1 cannot leave step 21's all-reduce before posting)
        assert first["at"] == 20 if rank == 1 else first["at"] in (20, 21)
        second = seen[1]
        assert (second["seq"], second["rank"], second["step"]) == (2, 0, 25)
        assert second["at"] in (25, 26)
        assert sorted((s["seq"], s["rank"]) for s in seen[2:]) in (
            [(3, 0), (4, 1)],
            [(3, 1), (4, 0)],
        )
        assert [s["seq"] for s in seen] == [1, 2, 3, 4]
        assert report["first"] == {
            "seq": 1,
            "rank": 1,
            "step": 20,
            "kind": "nonfinite_created",
            "reason": "module 'h.1' made 3 NaN",
        }
        assert report["other_run"] is None
        assert json.loads(report["event"])["rank"] == 1
    posted = {(p["seq"], p["rank"]) for r in reports for p in r["posted"]}
    assert len(posted) == 4  # no post overwrote another
    costs = [round(r["poll_us"], 1) for r in reports]
    print(f"\npoll that finds nothing, TCPStore over loopback: {costs} us per call (rank 0, 1)")
