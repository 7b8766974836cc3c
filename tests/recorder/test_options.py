"""record(...) options are keyword-only and checked with exceptions."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch

import recorder
from recorder.options import Options, ValuesSelection
from tests.recorder._util import ListSink


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"capture": ("stats",)}, ValueError),
        ({"capture": ("graph", "numbers")}, ValueError),
        ({"values": "some"}, ValueError),
        ({"values": 3}, TypeError),
        ({"backpressure": "wait"}, ValueError),
        ({"hist_bins": -1}, ValueError),
        ({"hist_bins": 5000}, ValueError),
        ({"max_queue_steps": 0}, ValueError),
        ({"flush_every_seconds": "1"}, TypeError),
        ({"rank": 2, "world_size": 2}, ValueError),
        ({"views": 1}, TypeError),
        ({"schedule": 5}, TypeError),
        ({"model": "gpt"}, TypeError),
        ({"start_step": -1}, ValueError),
    ],
)
def test_bad_options_raise(kwargs: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        recorder.record(sink=ListSink(), **kwargs)  # type: ignore[arg-type]


def test_path_or_sink_is_required_and_exclusive(tmp_path: object) -> None:
    with pytest.raises(ValueError, match="path"):
        recorder.record()
    with pytest.raises(ValueError, match="not both"):
        recorder.record(str(tmp_path), sink=ListSink())


def test_options_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        recorder.record("runs/x", recorder.schedule())  # type: ignore[call-arg]


def test_select_normalises_roles_and_matches_globs() -> None:
    sel = recorder.select(roles=["params", "gradients"], modules="h.0.*", ops="aten::mm")
    assert sel.roles == frozenset({"parameter", "gradient"})
    assert sel.matches("gradient", "h.0.attn", "aten::mm.default")
    assert not sel.matches("activation", "h.0.attn", "aten::mm.default")
    assert not sel.matches("gradient", "h.1.attn", "aten::mm.default")
    assert not sel.matches("gradient", "h.0.attn", "aten::addmm.default")
    with pytest.raises(ValueError, match="Unknown role"):
        recorder.select(roles="weights")


def test_values_selection_turns_on_value_capture() -> None:
    rec = recorder.record(sink=ListSink(), values=recorder.select(roles="parameters"))
    assert "values" in rec.options.capture
    assert isinstance(rec.options.values, ValuesSelection)
    assert torch is not None


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"flush_every_seconds": float("nan")}, "flush_every_seconds"),
        ({"flush_every_seconds": 0}, "flush_every_seconds"),
        ({"max_queue_bytes": 0}, "max_queue_bytes"),
        ({"world_size": 0}, "world_size"),
        ({"hist_bins": 2.5}, "hist_bins"),
        ({"capture": 5}, "capture"),
        ({"source": "yes"}, "source"),
    ],
)
def test_bad_option_messages_name_the_option(kwargs: dict[str, object], name: str) -> None:
    with pytest.raises((TypeError, ValueError), match=name):
        recorder.record(sink=ListSink(), **kwargs)  # type: ignore[arg-type]


def test_unknown_option_is_named_with_the_known_ones() -> None:
    with pytest.raises(TypeError, match=r"'flush_every'.*flush_every_steps"):
        recorder.record(sink=ListSink(), flush_every=3)  # type: ignore[call-arg]


def test_defaults_live_on_the_options_object() -> None:
    """record() writes no option default of its own: an unset option is the field default."""
    params = inspect.signature(recorder.record).parameters
    option_names = {f.name for f in dataclasses.fields(Options)}
    assert not option_names & set(params)
    assert recorder.record(sink=ListSink()).options == Options()
    for f in dataclasses.fields(Options):
        assert f.name in (recorder.record.__doc__ or "")


def test_options_check_and_normalise_when_made_directly() -> None:
    opts = Options(capture="graph", values="all")  # type: ignore[arg-type]
    assert opts.capture == frozenset({"graph", "values"})
    assert opts.values == ValuesSelection()
    assert Options(capture=("graph", "values")).values == ValuesSelection()  # type: ignore[arg-type]
    assert Options(flush_every_seconds=2).flush_every_seconds == 2.0
    with pytest.raises(ValueError, match="world_size"):
        Options(rank=1, world_size=1)
    assert Options(rank=1).world_size is None  # decided when recording starts
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.rank = 3  # type: ignore[misc]
