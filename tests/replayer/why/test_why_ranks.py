"""``replayer why`` across ranks: the rank that created the value is seen first, not the rank
that received it through DDP's all-reduce."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import tracefmt
from replayer.why import WhyOptions, WhyReport, explain
from tests.replayer.why.why_synth import Tape, event, mlp_step, writer
from tracefmt import Phase, Role
from tracefmt.events import NONFINITE_CREATED, NONFINITE_STATE, REMOTE_TRIGGER


def _explain(run: Path, **options: object) -> WhyReport:
    with tracefmt.open(run) as trace:
        return explain(trace, WhyOptions(**options))  # type: ignore[arg-type]


def _received_step(step: int, *, nan: bool) -> tuple[Tape, int]:
    """Rank 0's step: its own gradient is finite; the all-reduce brings rank 1's NaN."""
    tape = Tape()
    x = tape.tensor(np.ones((2, 3)), name="x")
    w = tape.tensor(np.full((3, 3), 0.5), role=Role.PARAMETER, name="fc.weight")
    y = tape.op("aten::mm.default", [x, w], np.matmul, module="fc")
    loss = tape.op("aten::mean.default", [y], np.mean)
    g = tape.op(
        "aten::ones_like.default",
        [w],
        np.ones_like,
        phase=Phase.BACKWARD,
        module="fc",
        role=Role.GRADIENT,
    )
    tape.op(
        "c10d::allreduce_",
        [g],
        (lambda a: np.full_like(a, np.nan)) if nan else (lambda a: a),
        phase=Phase.BACKWARD,
        role=Role.GRADIENT,
        out_name="fc.weight.grad",
    )
    return tape, loss


def _write(run: Path, *, rank1: bool = True) -> None:
    remote = event(REMOTE_TRIGGER, rank=1, step=5, trigger=NONFINITE_CREATED, seq=1)
    with writer(run, 0, 2) as w:
        tape, loss = _received_step(4, nan=False)
        w.write_step(tape.record(4, [], loss))
        tape, loss = _received_step(5, nan=True)
        w.write_step(tape.record(5, [event(NONFINITE_STATE, module="fc.weight.grad"), remote], loss))
    if rank1:
        with writer(run, 1, 2) as w:
            w.write_step(mlp_step(4, seed=1))
            created = event(NONFINITE_CREATED, rank=1, module="block.1")
            w.write_step(mlp_step(5, log_shift=-3.0, seed=1, events=[created]))


def test_the_rank_that_created_it_is_seen_first(tmp_path: Path) -> None:
    _write(tmp_path)
    report = _explain(tmp_path)
    first = report.first_seen
    assert first is not None
    assert (first.rank, first.step, first.how, first.source) == (1, 5, "created", "event")
    by = {(e.rank, e.kind): e for e in report.explanations}
    assert set(by) == {(0, NONFINITE_STATE), (0, REMOTE_TRIGGER), (1, NONFINITE_CREATED)}
    received = by[(0, NONFINITE_STATE)].cause
    assert received is not None
    assert received.kind == "received"
    assert received.at.name == "c10d::allreduce_"
    assert by[(0, REMOTE_TRIGGER)].category == "nonfinite"
    created = by[(1, NONFINITE_CREATED)].cause
    assert created is not None
    assert created.kind == "created"
    assert created.at.module == "block.1"
    assert all(e.first_seen == first for e in report.explanations)
    assert all("torchrun" in e.rerecord.python for e in report.explanations)


def test_narrowed_to_rank_0_still_says_rank_1_saw_it_first(tmp_path: Path) -> None:
    _write(tmp_path)
    report = _explain(tmp_path, rank=0)
    assert {e.rank for e in report.explanations} == {0}
    assert report.first_seen is not None
    assert report.first_seen.rank == 1


def test_a_remote_trigger_names_a_rank_that_wrote_no_file(tmp_path: Path) -> None:
    _write(tmp_path, rank1=False)
    report = _explain(tmp_path)
    first = report.first_seen
    assert first is not None
    assert (first.rank, first.step, first.how, first.source) == (1, 5, "created", "remote_trigger")
    assert any("Rank 1 wrote no file" in n for n in report.notes)
