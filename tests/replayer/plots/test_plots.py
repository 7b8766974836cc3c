"""``replayer timeline`` and ``replayer dist``: the figures they write open, are not blank, and
mark the trace's events; SVG and HTML outputs are well-formed and self-contained."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from matplotlib import image
from matplotlib.colors import to_rgb

import tracefmt
from replayer.plots import (
    DistOptions,
    TimelineOptions,
    dist_figure,
    percentiles,
    read_dist,
    read_timeline,
    timeline_figure,
)
from replayer.plots.cli import dist, timeline
from replayer.plots.figures import EVENT_COLORS
from tests.replayer.plots.plots_synth import GROWING, write_run
from tracefmt.columns import HistSeries, Selection
from tracefmt.errors import TraceError
from tracefmt.validate import validate

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("plots") / "run"
    return write_run(out, 120, ranks=3, hist_bins=16, events={40: "loss_spike", 90: "nonfinite_created"})


@pytest.fixture(scope="module")
def gpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The GPT example recorded tiny in flight mode with histograms and a NaN at step 6."""
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed: recording the GPT example needs it")
    out = tmp_path_factory.mktemp("plots-gpt") / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(
        [sys.executable, str(Path(__file__).with_name("_record_gpt.py")), str(out)],
        check=True, env=env, cwd=ROOT, timeout=300, capture_output=True,
    )  # fmt: skip
    return out


def _invoke(command: object, args: list[str]) -> Result:
    result = CliRunner().invoke(command, args)  # type: ignore[arg-type]
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def _pixels(path: Path) -> np.ndarray:
    rgba = image.imread(str(path))
    assert rgba.ndim == 3
    assert rgba.shape[0] >= 300, rgba.shape
    assert rgba.shape[1] >= 500, rgba.shape
    return rgba[..., :3]


def _check_png(path: Path, marker: str | None) -> None:
    """Not blank, several colours, and (``marker``: an event kind) its marker colour drawn."""
    rgb = _pixels(path)
    colours = np.unique((rgb * 255).round().astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 20
    white = np.all(rgb > 0.97, axis=-1).mean()
    assert white < 0.97, "the figure is (almost) blank"
    if marker is not None:
        want = np.array(to_rgb(EVENT_COLORS[marker]))
        close = np.all(np.abs(rgb - want) < 0.1, axis=-1)  # lines are antialiased
        assert close.sum() > 30, f"no {marker} marker ({EVENT_COLORS[marker]}) in {path.name}"


def _event_gids(fig: object) -> set[str]:
    return {
        artist.get_gid()
        for ax in fig.axes  # type: ignore[attr-defined]
        for artist in ax.collections
        if (artist.get_gid() or "").startswith("event:")
    }


def test_timeline_png_marks_events(synth: Path, tmp_path: Path) -> None:
    out = tmp_path / "norm.png"
    result = _invoke(timeline, [str(synth), "--metric", "norm", "--module", "layers.*", "-o", str(out)])
    assert "over 120 steps, 2 events marked" in result.output
    _check_png(out, "loss_spike")
    _check_png(out, "nonfinite_created")


def test_timeline_figure_lines_events_and_growth(synth: Path) -> None:
    options = TimelineOptions(metric="norm", selection=Selection(module="layers.?"))
    with tracefmt.open(synth) as t:
        tl = read_timeline(t, options)
    assert tl.labels == tuple(f"layers.{i}" for i in range(6))
    growing = tl.values[0, tl.labels.index(GROWING)]
    assert growing[-10:].mean() > 1.5 * growing[:10].mean()
    fig = timeline_figure(tl, options)
    assert _event_gids(fig) == {"event:loss_spike", "event:nonfinite_created"}
    assert len(fig.axes[0].lines) == 6


def test_timeline_bands_over_ranks_and_line_cap(synth: Path, tmp_path: Path) -> None:
    out = tmp_path / "band.png"
    result = _invoke(
        timeline,
        [
            str(synth),
            "--metric",
            "max_abs",
            "--ranks",
            "all",
            "--band",
            "--max-lines",
            "3",
            "-o",
            str(out),
        ],
    )
    assert "Showing the 3 of" in result.output
    assert "largest values" in result.output
    _check_png(out, "loss_spike")
    options = TimelineOptions(metric="max_abs", ranks=(0, 1, 2), band=True, max_lines=3)
    with tracefmt.open(synth) as t:
        tl = read_timeline(t, options)
    fig = timeline_figure(tl, options)
    assert tl.values.shape == (3, 3, 120)
    assert sum(1 for c in fig.axes[0].collections if not (c.get_gid() or "").startswith("event:")) == 3
    lines = TimelineOptions(metric="max_abs", ranks=(0, 2), max_lines=4)
    with tracefmt.open(synth) as t:
        assert len(read_timeline(t, lines).labels) == 2  # two lines (ranks) per series


def test_timeline_svg_and_html(synth: Path, tmp_path: Path) -> None:
    svg, page = tmp_path / "loss.svg", tmp_path / "loss.html"
    _invoke(timeline, [str(synth), "--metric", "loss", "-o", str(svg)])
    root = ET.parse(svg).getroot()
    assert root.tag.endswith("svg")
    _invoke(timeline, [str(synth), "--metric", "step_time", "--ranks", "0,1", "-o", str(page)])
    text = page.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    assert "<svg" in text
    assert "</html>" in text
    assert not re.search(r"https?://|//[a-z]|\bsrc=|<link|<script", text), "the page fetches something"
    ET.fromstring(text[text.index("<svg") : text.index("</svg>") + 6])  # the inline SVG is XML


def test_timeline_reports_bad_requests(synth: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        timeline, [str(synth), "--metric", "bogus", "-o", str(tmp_path / "x.png")]
    )
    assert isinstance(result.exception, TraceError)
    assert "use one of norm, max_abs" in str(result.exception)
    assert "lr" in str(result.exception)
    result = CliRunner().invoke(
        timeline, [str(synth), "--metric", "norm", "-o", str(tmp_path / "x.jpg")]
    )
    assert result.exit_code == 2
    assert ".png, .svg, .html" in result.output
    result = CliRunner().invoke(
        timeline, [str(synth), "--metric", "norm", "--ranks", "7", "-o", str(tmp_path / "x.png")]
    )
    assert isinstance(result.exception, TraceError)
    assert "Rank 7" in str(result.exception)
    assert "update_ratio" in CliRunner().invoke(timeline, ["--help"]).output


def test_dist_ridge_and_bands(synth: Path, tmp_path: Path) -> None:
    ridge, bands = tmp_path / "ridge.png", tmp_path / "bands.png"
    _invoke(dist, [str(synth), "--tensor", "layers.1.weight*", "-o", str(ridge)])
    _check_png(ridge, "nonfinite_created")
    _invoke(dist, [str(synth), "--tensor", "layers.1.weight", "--view", "bands", "-o", str(bands)])
    _check_png(bands, "loss_spike")
    options = DistOptions(
        selection=Selection(tensor="layers.*.weight.grad"), max_tensors=2, max_curves=5
    )
    with tracefmt.open(synth) as t:
        d = read_dist(t, options)
    assert [h.label for h in d.series] == ["layers.0.weight.grad", "layers.1.weight.grad"]
    assert d.notes
    assert "Showing 2 of the 6 tensors" in d.notes[0]
    fig = dist_figure(d, options)
    assert _event_gids(fig) == {"event:loss_spike", "event:nonfinite_created"}
    assert len(fig.axes) == 2
    assert len(fig.axes[0].collections) == 5 + 2 + 2  # curves, event steps added, their markers


def test_dist_without_histograms_says_how_to_record(tmp_path: Path) -> None:
    plain = write_run(tmp_path / "plain", 3)
    result = CliRunner().invoke(dist, [str(plain), "--tensor", "*", "-o", str(tmp_path / "d.png")])
    assert isinstance(result.exception, TraceError)
    assert "hist_bins=" in str(result.exception)


def test_percentiles_from_a_histogram() -> None:
    counts = np.array([[10, 10, 10, 10], [0, 0, 40, 0], [0, 0, 0, 0]], dtype=np.uint64)
    h = HistSeries("t", 0, np.arange(3), np.array([0.0, 0.0, 1.0]), np.array([4.0, 4.0, 1.0]), counts)
    p = percentiles(h, (0, 25, 50, 100))
    np.testing.assert_allclose(p[:, 0], [0.0, 1.0, 2.0, 4.0])  # uniform: linear
    np.testing.assert_allclose(p[:, 1], [0.0, 2.25, 2.5, 4.0])  # all in bin 2 (2..3)
    assert np.isnan(p[:, 2]).all()


def test_gpt_flight_recording(gpt: Path, tmp_path: Path) -> None:
    """The real thing: light steps every step (auto picks them), full steps with histograms
    around the NaN, whose events are marked."""
    out = tmp_path / "grad.png"
    _invoke(
        timeline,
        [str(gpt), "--metric", "norm", "--phase", "backward", "--module", "h.0.*", "-o", str(out)],
    )
    _check_png(out, "nonfinite_state")
    with tracefmt.open(gpt) as t:
        tl = read_timeline(
            t, TimelineOptions(metric="update_ratio", selection=Selection(module="h.0.mlp"))
        )
        assert tl.source == "light"
        assert len(tl.steps) == 10
        assert tl.labels == ("h.0.mlp",)
        assert np.isfinite(tl.values[0, 0, :6]).all()
        assert (tl.values[0, 0, :6] > 0).all()
        d = read_dist(t, DistOptions(selection=Selection(tensor="h.0.mlp.c_fc.weight"), view="bands"))
        # the ring's full steps 2..6; at 6 the updated weight holds no finite value: no histogram
        weight = [x for x in t.step(6).tensors if x.name == "h.0.mlp.c_fc.weight"][-1]
        assert weight.stats is not None
        assert weight.stats.norm is None
        assert weight.histogram is None
    assert d.series[0].steps.tolist() == [2, 3, 4, 5]
    # a tensor without a finite value gets no histogram (lo, hi = inf, -inf broke TF-HIST-001)
    assert not [f for f in validate(gpt) if f.rule == "TF-HIST-001"]
    ridge = tmp_path / "ridge.png"
    _invoke(dist, [str(gpt), "--tensor", "h.0.mlp.c_fc.weight", "-o", str(ridge)])
    _check_png(ridge, "nonfinite_created")  # step 6's events, below the last curve (step 5)


def test_plots_import_no_torch() -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import replayer.plots, replayer.plots.cli, tracefmt.columns\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    subprocess.run(
        [sys.executable, "-c", code], check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
