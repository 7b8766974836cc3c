"""record(...) options are keyword-only and checked with exceptions."""

from __future__ import annotations

import pytest
import torch

import recorder
from recorder.options import ValuesSelection
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
        recorder.record("runs/x", recorder.schedule())  # type: ignore[misc]


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
