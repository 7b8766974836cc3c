"""Module metadata (format 1.5) from the recorder: both capture engines write the model's modules
with the parameter counts torch gives, once while the model is unchanged and again when it
changes; without a model there is none."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path
from typing import cast

import h5py
import pytest
import torch
from torch import nn

import recorder
import tracefmt
from recorder.engine import extension
from recorder.examples import gpt
from recorder.moduleinfo import ModuleWatch, module_table

_NATIVE = pytest.param(
    "native",
    marks=pytest.mark.skipif(
        extension.load().module is None,
        reason=f"the native engine cannot be built here: {extension.load().reason}",
    ),
)


def _train(net: nn.Module, run: Path, steps: int = 2, **kw: object) -> None:
    """Record ``steps`` steps of the tiny GPT ``net`` into ``run`` (``kw``: of ``record``)."""
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x = torch.randint(0, 34, (2, 8))
    with recorder.record(run, overwrite=True, **kw) as rec:  # type: ignore[arg-type]
        for _ in range(steps):
            loss = net(x, x)
            loss.backward()
            opt.step()
            opt.zero_grad()
            rec.step(loss=loss)


def _tiny_gpt() -> gpt.GPT:
    torch.manual_seed(0)
    return gpt.GPT(gpt.GPTConfig(vocab_size=34, block_size=8, n_layer=1, n_head=2, n_embd=16))


@pytest.mark.parametrize("engine", ["python", _NATIVE])
def test_both_engines_record_the_modules_torch_has(engine: str, tmp_path: Path) -> None:
    model = _tiny_gpt()
    _train(model, tmp_path / "run", model=model, engine=engine)
    with tracefmt.open(tmp_path / "run") as trace:
        assert trace.provenance.extra["recorder_engine"] == engine
        tables = [trace.modules(s) for s in trace.steps()]
    assert tables[0] is not None
    assert tables[0] == tables[1]
    modules = dict(model.named_modules())
    assert [m.path for m in tables[0]] == list(modules)
    for m in tables[0]:
        torch_module = modules[m.path]
        assert m.params == sum(p.numel() for p in torch_module.parameters()), m.path
        assert m.own_params == sum(p.numel() for p in torch_module.parameters(recurse=False))
        assert m.class_name == f"{type(torch_module).__module__}.{type(torch_module).__qualname__}"
    # the head's weight is the embedding's: in both subtrees, once in the total
    assert tables[0]["lm_head"].params == tables[0]["wte"].params == 34 * 16
    assert tables[0].total_params == sum(p.numel() for p in model.parameters())
    assert tables[0].total_param_bytes == 4 * tables[0].total_params


def test_a_changed_model_gets_a_new_table_and_an_unchanged_one_none(tmp_path: Path) -> None:
    model = _tiny_gpt()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randint(0, 34, (2, 8))
    with recorder.record(tmp_path / "run", model=model, engine="python") as rec:
        for step in range(3):
            if step == 2:
                model.wpe.weight.requires_grad_(False)  # frozen from step 2 on
            model(x, x).backward()
            opt.step()
            opt.zero_grad()
            rec.step()
    with tracefmt.open(tmp_path / "run") as trace:
        tables = [trace.modules(s) for s in trace.steps()]
    assert tables[0] is not None
    assert tables[2] is not None
    assert tables[0] == tables[1] != tables[2]
    assert tables[2].total_trainable == tables[0].total_trainable - 8 * 16
    assert tables[2]["wpe"].trainable == 0
    with h5py.File(tmp_path / "run" / "rank-00000.tft.h5", "r", swmr=True) as f:
        assert f["modules"].shape[0] == 2 * len(tables[0])  # two tables, each stored once


def test_without_a_model_steps_have_no_module_metadata(tmp_path: Path) -> None:
    model = _tiny_gpt()
    _train(model, tmp_path / "run", steps=1, engine="python")
    with tracefmt.open(tmp_path / "run") as trace:
        assert trace.modules(0) is None
        assert len(trace.step(0).ops) > 0


def test_the_watch_builds_once_and_holds_the_model_weakly() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
    watch = ModuleWatch(model)
    first = watch.changed()
    assert first is not None
    assert watch.changed() is None  # unchanged: no new table, nothing rebuilt
    model[0].bias.requires_grad_(False)
    changed = watch.changed()
    assert changed is not None
    assert changed.total_trainable == 12
    model.half()  # the same parameters in another dtype: other bytes
    halved = watch.changed()
    assert halved is not None
    assert halved.total_param_bytes == 2 * 15
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None
    assert watch.changed() is None
    assert ModuleWatch(None).changed() is None


def test_the_watch_sees_changes_deep_in_the_model() -> None:
    """The cheap per-step check misses no change the table depends on: a module added, replaced
    or removed below the top, a parameter replaced in place of another, or given other data."""
    inner = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
    model = nn.Sequential(inner, nn.Linear(3, 2))
    watch = ModuleWatch(model)
    assert watch.changed() is not None
    inner.extra = nn.Linear(2, 2)  # added two levels down
    added = watch.changed()
    assert added is not None
    assert "0.extra" in [m.path for m in added]
    assert watch.changed() is None
    inner.extra = nn.Linear(2, 5)  # replaced under the same name
    replaced = watch.changed()
    assert replaced is not None
    assert replaced["0.extra"].params == 15
    del inner.extra
    removed = watch.changed()
    assert removed is not None
    assert "0.extra" not in [m.path for m in removed]
    model[1].weight = nn.Parameter(torch.zeros(2, 3))  # the same shape, another parameter
    same = watch.changed()  # seen (sharing is compared), with nothing the table holds changed
    assert same is None or same == removed
    model[1].weight.data = torch.zeros(4, 3)  # other data, another shape
    grown = watch.changed()
    assert grown is not None
    assert grown["1"].own_params == 12 + 2
    assert watch.changed() is None


def test_wrappers_lazy_and_shared_modules() -> None:
    shared = nn.Linear(2, 2)
    model = nn.Sequential(shared, nn.Tanh(), shared, nn.LazyLinear(3))
    compiled = cast(nn.Module, torch.compile(model))
    table = module_table(compiled)  # paths are the model's, not "_orig_mod.0"
    assert [m.path for m in table] == ["", "0", "1", "3"]  # the shared module once, first path
    assert table["3"].params == 0  # lazy: its size is not known before its first call
    assert table.total_params == 6
    assert table["3"].class_name == "torch.nn.modules.linear.LazyLinear"
