"""Export options are one frozen, checked object; every entry point builds the same model from it."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest
from click.testing import CliRunner

import replayer
import tracefmt
from replayer.cli import main
from replayer.export import (
    ExportOptions,
    ModelLabels,
    build_model,
    export_ops,
    load_selection,
    map_step,
)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("depth", -1),
        ("depth", 1.5),
        ("with_values", 1),
        ("split_saved", "yes"),
        ("external_threshold", -5),
        ("external_data", 3),
    ],
)
def test_bad_export_options_name_the_option(field: str, value: object) -> None:
    with pytest.raises(replayer.ReplayError, match=field):
        ExportOptions(**{field: value})  # type: ignore[arg-type]


def test_export_step_checks_its_option_keywords(small_trace: Path) -> None:
    """``depth=-1`` used to fold like 0 without a word."""
    with tracefmt.open(small_trace) as trace, pytest.raises(replayer.ReplayError, match="depth"):
        replayer.export_step(trace, 0, depth=-1)


def test_cli_reports_a_bad_depth_in_one_line(small_trace: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    args = ["export", str(small_trace), "--step", "0", "--depth", "-1", "-o", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0
    assert "depth" in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_export_options_are_frozen_and_their_defaults_are_written_once() -> None:
    options = ExportOptions()
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.depth = 2  # type: ignore[misc]
    fields = {f.name for f in dataclasses.fields(ExportOptions)}
    assert not fields & set(inspect.signature(replayer.export_step).parameters)
    assert not fields & set(inspect.signature(build_model).parameters) - {"options"}


@pytest.mark.parametrize(
    "options",
    [ExportOptions(), ExportOptions(depth=0, with_values=False), ExportOptions(split_saved=True)],
    ids=["defaults", "folded-no-values", "split-saved"],
)
def test_every_entry_point_builds_the_same_model(small_trace: Path, options: ExportOptions) -> None:
    fields = dataclasses.asdict(options)
    with tracefmt.open(small_trace) as trace:
        by_keywords, stats = replayer.export_step(trace, 1, **fields)
        step, ops = load_selection(trace, 1, None, "all", None)
        labels = ModelLabels.of(trace, step, "all")
        by_parts, parts_stats = build_model(map_step(step, ops), options, labels)
        by_ops, _ = export_ops(step, ops, options, labels=labels)
    assert by_parts.SerializeToString() == by_keywords.SerializeToString()
    assert by_ops.SerializeToString() == by_keywords.SerializeToString()
    assert parts_stats == stats
