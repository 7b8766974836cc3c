"""tracefmt.columns: run-wide series read in bulk equal what the step-by-step reader gives."""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
import pytest

import tracefmt
from tests.replayer.plots.plots_synth import write_run
from tracefmt.columns import (
    Selection,
    metric_names,
    read_events,
    read_histograms,
    read_series,
    scalar_names,
)
from tracefmt.errors import TraceError, TraceFormatError
from tracefmt.model import Phase, Role

STEPS = 40


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two ranks, full and light steps, 8-bin histograms, two events."""
    out = tmp_path_factory.mktemp("columns") / "run"
    return write_run(out, STEPS, ranks=2, light=True, hist_bins=8, events={7: "loss_spike", 30: "note"})


def _tensor(step: tracefmt.Step, name: str, *, last: bool = True) -> tracefmt.TensorRecord:
    found = [t for t in step.tensors if t.name == name]
    return found[-1] if last else found[0]


def test_module_outputs_equal_the_reader(run: Path) -> None:
    with tracefmt.open(run) as t:
        s = read_series(t, "norm", Selection(module="layers.1", source="full"), rank=1)
        assert s.source == "full"
        assert s.labels == ("layers.1",)
        assert s.rank == 1
        assert s.steps.tolist() == list(range(STEPS))
        for k in (0, 17, STEPS - 1):
            step = t.step(k, rank=1)
            # layers.1's output: its relu's (layers.1.act), read by layers.2
            relu = next(
                op for op in step.ops if op.module == "layers.1.act" and op.phase is Phase.FORWARD
            )
            stats = step.tensors[relu.outputs[0]].stats
            assert stats is not None
            assert stats.norm is not None
            assert s.values[0, k] == pytest.approx(stats.norm, rel=1e-12)


def test_gradients_of_a_module_combine(run: Path) -> None:
    """A module's backward series: the norm, mean and std of its parameters' gradients taken
    together."""
    with tracefmt.open(run) as t:
        sel = Selection(module="layers.2", phase="backward", source="full")
        norm, mean, std = (read_series(t, m, sel).series("layers.2") for m in ("norm", "mean", "std"))
        step = t.step(9)
        parts = [_tensor(step, f"layers.2.{p}.grad").stats for p in ("weight", "bias")]
        sizes = [256, 16]
        assert norm[9] == pytest.approx(math.sqrt(sum(p.norm**2 for p in parts)), rel=1e-12)
        m = sum(p.mean * n for p, n in zip(parts, sizes, strict=True)) / sum(sizes)
        second = sum((p.std**2 + p.mean**2) * n for p, n in zip(parts, sizes, strict=True)) / sum(sizes)
        assert mean[9] == pytest.approx(m, rel=1e-12)
        assert std[9] == pytest.approx(math.sqrt(second - m * m), rel=1e-9)


def test_tensor_labels_phases_and_versions(run: Path) -> None:
    with tracefmt.open(run) as t:
        step = t.step(3)
        last = read_series(t, "max_abs", Selection(tensor="layers.0.weight", source="full"))
        first = read_series(
            t, "max_abs", Selection(tensor="layers.0.weight", phase="forward", source="full")
        )
        after, before = (
            _tensor(step, "layers.0.weight").stats,
            _tensor(step, "layers.0.weight", last=False).stats,
        )
        assert last.values[0, 3] == pytest.approx(max(abs(after.min), abs(after.max)))
        assert first.values[0, 3] == pytest.approx(max(abs(before.min), abs(before.max)))
        unnamed = read_series(t, "mean", Selection(tensor="layers.3:addmm#*", source="full"))
        assert unnamed.labels == ("layers.3:addmm#0",)
        addmm = next(
            op for op in step.ops if op.module == "layers.3" and op.name == "aten::addmm.default"
        )
        assert unnamed.values[0, 3] == step.tensors[addmm.outputs[0]].stats.mean
        grads = read_series(t, "norm", Selection(tensor="*.grad", source="full"))
        assert len(grads.labels) == 12
        assert all(
            step.tensors[i].role is Role.GRADIENT
            for i in range(len(step.tensors))
            if step.tensors[i].name in grads.labels
        )


def test_light_series_and_update_ratio(run: Path) -> None:
    with tracefmt.open(run) as t:
        ratio = read_series(t, "update_ratio", Selection(tensor="layers.4.*"))
        assert ratio.source == "light"
        assert ratio.labels == ("layers.4.bias", "layers.4.weight")
        light = t.light_step(11)
        assert ratio.series("layers.4.weight")[11] == pytest.approx(
            light.update_ratio("layers.4.weight")
        )
        grads = read_series(t, "norm", Selection(module="layers.4", phase="backward", source="light"))
        rows = [light.row(f"layers.4.{p}", tracefmt.LightKind.GRADIENT) for p in ("weight", "bias")]
        assert grads.values[0, 11] == pytest.approx(math.sqrt(sum(r.norm**2 for r in rows)))
        outputs = read_series(t, "norm", Selection(module="layers.?"))  # auto: light has as many steps
        assert outputs.source == "full"


def test_scalars_step_time_and_events(run: Path) -> None:
    with tracefmt.open(run) as t:
        assert scalar_names(t) == ["loss", "lr"]
        assert "lr" in metric_names(t)
        assert "norm" in metric_names(t)
        loss = read_series(t, "loss")
        assert loss.source == "steps"
        assert loss.values[0, 5] == t.step(5).scalars["loss"]
        lr = read_series(t, "scalar:lr")
        assert np.all(lr.values == 1e-3)
        assert read_series(t, "step_time").values[0, 4] == t.step(4).duration
        ev = read_events(t, rank=1)
        assert ev.steps.tolist() == [7, 30]
        assert [ev.kind_labels[k] for k in ev.kinds] == ["loss_spike", "note"]


def test_histograms_equal_the_reader(run: Path) -> None:
    with tracefmt.open(run) as t:
        found = read_histograms(t, Selection(tensor="layers.1.weight.grad"))
        assert [h.label for h in found] == ["layers.1.weight.grad"]
        h = found[0]
        assert h.steps.tolist() == list(range(STEPS))
        ref = _tensor(t.step(12), "layers.1.weight.grad").histogram
        assert ref is not None
        assert (h.lo[12], h.hi[12]) == (ref.lo, ref.hi)
        assert h.counts[12].tolist() == list(ref.counts)


def test_errors_say_what_to_do(run: Path, tmp_path: Path) -> None:
    with tracefmt.open(run) as t:
        with pytest.raises(
            TraceError, match=r"Unknown metric 'bogus'; use one of norm, .*update_ratio.*lr"
        ):
            read_series(t, "bogus")
        with pytest.raises(TraceError, match=r"No 'norm' series of module 'nothing\.here'"):
            read_series(t, "norm", Selection(module="nothing.here"))
        with pytest.raises(TraceError, match="none of tensor 'nothing'"):
            read_histograms(t, Selection(tensor="nothing"))
    with pytest.raises(TraceError, match="Unknown phase"):
        Selection(phase="sideways")
    plain = write_run(tmp_path / "plain", 3)
    with tracefmt.open(plain) as t:
        with pytest.raises(TraceError, match=r"hist_bins=64"):
            read_histograms(t)
        with pytest.raises(TraceError, match=r"update ratios .* mode='flight'"):
            read_series(t, "update_ratio")


def test_a_hostile_stats_range_is_refused(tmp_path: Path) -> None:
    run = write_run(tmp_path / "bad", 6)
    with h5py.File(run / "rank-00000.tft.h5", "r+") as f:
        rows = f["steps"][...]
        rows["stats_start"][3] = 10**12
        f["steps"][...] = rows
    with (
        tracefmt.open(run) as t,
        pytest.raises(TraceFormatError, match=r"step 3: rows 1000000000000\.\.") as e,
    ):
        read_series(t, "norm", Selection(module="layers.1"))
    assert "/stats" in str(e.value)
