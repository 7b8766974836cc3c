"""The native capture engine records what the Python dispatch mode records.

Each model is built twice from the same seed and trained for the same steps, once recorded by
each engine, and the recorded steps are compared op by op: names, phases, module paths, edges
(which op made each input, or which named value it was), roles, names, versions, arguments and
statistics (within spec section 5.7's tolerance).

A Python dispatch mode changes the program it watches in three known ways (torch takes other
code paths when a mode is active: ``isTensorSubclassLike``): ``reshape`` becomes ``view``
instead of ``_reshape_alias``, some in-place ``add_`` become ``add`` (gradient accumulation),
and ``AccumulateGrad`` detaches gradients it would otherwise steal.  So the engines are
compared twice: the native engine *under a pass-through dispatch mode* (the same program runs)
must equal the Python engine exactly; without the mode, the native engine's ops must equal the
Python engine's up to those three rewrites.
"""

from __future__ import annotations

import contextlib
import difflib
import math
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import recorder
import tracefmt
from recorder.engine import extension
from recorder.examples import cnn, gpt, mlp
from tracefmt.model import TensorStats

StepFn = Callable[[], None]
Make = Callable[[], tuple[torch.nn.Module, StepFn]]

pytestmark = pytest.mark.skipif(
    extension.load().module is None,
    reason=f"the native engine cannot be built here: {extension.load().reason}",
)


class _PassThrough(TorchDispatchMode):  # type: ignore[misc]
    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        return func(*args, **(kwargs or {}))


def _gpt() -> tuple[torch.nn.Module, StepFn]:
    model, opt, data = gpt.build(layers=1, embd=32, heads=2, block=16, batch=4)
    count = iter(range(1 << 30))

    def step() -> None:
        x, y = data.batch(next(count))
        loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad()

    return model, step


def _example(module: Any, **sizes: int) -> tuple[torch.nn.Module, StepFn]:
    model, opt, sched, data = module.build(**sizes)

    count = iter(range(1 << 30))

    def step() -> None:
        batch = data.batch_at(next(count))
        module._loss(model, batch).backward()
        opt.step()
        sched.step()
        opt.zero_grad()

    return model, step


def _hf(name: str) -> tuple[torch.nn.Module, StepFn]:
    transformers = pytest.importorskip(
        "transformers", reason="the Hugging Face models need transformers (the bench extra)"
    )
    torch.manual_seed(0)
    if name == "gpt2":
        config = transformers.GPT2Config(
            n_layer=1,
            n_embd=32,
            n_head=2,
            vocab_size=64,
            n_positions=16,
            bos_token_id=0,
            eos_token_id=0,
        )
        model = transformers.GPT2LMHeadModel(config)
    else:
        config = transformers.LlamaConfig(
            num_hidden_layers=1,
            hidden_size=32,
            intermediate_size=64,
            num_attention_heads=2,
            num_key_value_heads=1,
            vocab_size=64,
            bos_token_id=0,
            eos_token_id=0,
        )
        model = transformers.LlamaForCausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))

    def step() -> None:
        model(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()

    return model, step


MODELS: dict[str, Make] = {
    "gpt": _gpt,
    "cnn": lambda: _example(cnn, batch=4, size=16, width=4),
    "mlp": lambda: _example(mlp, batch=8, hidden=16),
    "hf_gpt2": lambda: _hf("gpt2"),
    "hf_llama": lambda: _hf("llama"),
}


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same reductions in the same order in both runs
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _record(make: Make, engine: str, path: Path, *, passthrough: bool = False) -> list[Any]:
    """Three steps of a freshly built model, recorded by ``engine``; the steps read back."""
    with _one_thread(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers' config chatter
        model, step = make()
        with recorder.record(path, model=model, engine=engine) as rec:  # type: ignore[arg-type]
            for _ in range(3):
                with _PassThrough() if passthrough else contextlib.nullcontext():
                    step()
                rec.step()
    trace = tracefmt.open(path)
    assert trace.provenance.extra["recorder_engine"] == engine
    return [trace.step(s) for s in trace.steps()]


def _ref(step: Any, index: int) -> str:
    meta = step.tensors[index].meta
    if meta.producer is not None and meta.producer >= 0:
        return f"op{meta.producer}.{meta.producer_slot}"
    return f"{meta.role.label}:{meta.name}:v{meta.version}"


def _op(step: Any, op: Any) -> str:
    inputs = [(_ref(step, i), arg) for i, arg in zip(op.inputs, op.input_args, strict=True)]
    outputs = [
        (step.tensors[i].meta.role.label, step.tensors[i].meta.name, step.tensors[i].meta.version)
        for i in op.outputs
    ]
    # None-valued arguments are left out: the pass-through mode calls each op again from Python,
    # which passes an absent optional tensor as None where the original caller passed an
    # undefined tensor (the dispatch mode shows the first as absent, the second as None).
    attrs = sorted((k, v) for k, v in op.attrs.items() if v is not None)
    return f"{op.name} {op.phase.label} {op.module!r} {inputs} -> {outputs} {attrs}"


def _stats_equal(a: TensorStats | None, b: TensorStats | None, numel: int) -> bool:
    """Equal within spec 5.7: counts, fingerprint, min and max exact; mean and norm within 1e-6
    and std within 1e-5 of the float64 reference, so within twice that of each other, taken
    relative to the values' scale (their rms: the std of a tensor whose mean dominates is
    computed differently by the two engines, each within the spec)."""
    if a is None or b is None:
        return a is b
    exact = ("nan", "inf", "zero", "fingerprint", "min", "max")
    if any(getattr(a, f) != getattr(b, f) for f in exact):
        return False
    moments = ("mean", "std", "norm")
    if any(getattr(a, f) is None for f in moments) or any(getattr(b, f) is None for f in moments):
        return all((getattr(a, f) is None) == (getattr(b, f) is None) for f in moments)
    rms = a.norm / math.sqrt(max(numel, 1))
    return (
        math.isclose(a.norm, b.norm, rel_tol=2e-6, abs_tol=1e-12)
        and abs(a.mean - b.mean) <= 2e-6 * rms + 1e-12
        and abs(a.std - b.std) <= 2e-5 * rms + 1e-12
    )


@pytest.mark.parametrize("model", sorted(MODELS))
def test_native_engine_records_what_the_dispatch_mode_records(model: str, tmp_path: Path) -> None:
    python = _record(MODELS[model], "python", tmp_path / "python")
    native = _record(MODELS[model], "native", tmp_path / "native", passthrough=True)
    assert len(python) == len(native) == 3
    for a, b in zip(python, native, strict=True):
        ops_a = [_op(a, op) for op in a.ops]
        ops_b = [_op(b, op) for op in b.ops]
        assert ops_a == ops_b, "\n".join(list(difflib.unified_diff(ops_a, ops_b, n=0))[:20])
        metas_a = [t.meta for t in a.tensors]
        metas_b = [t.meta for t in b.tensors]
        assert metas_a == metas_b
        differ = [
            t.index
            for t, u in zip(a.tensors, b.tensors, strict=True)
            if not _stats_equal(t.stats, u.stats, t.meta.numel)
        ]
        assert not differ, f"step {a.step}: statistics differ for tensors {differ[:10]}"


#: What a dispatch mode changes in the program (see the module docstring).
_REWRITES = {
    "aten::_reshape_alias.default": "aten::view.default",
    "aten::add_.Tensor": "aten::add.Tensor",
}


def _plain(step: Any) -> list[str]:
    return [
        f"{_REWRITES.get(op.name, op.name)} {op.phase.label} {op.module}"
        for op in step.ops
        if op.name != "aten::detach.default"
    ]


@pytest.mark.parametrize("model", ["gpt", "hf_gpt2"])
def test_without_a_mode_the_engines_differ_by_the_modes_rewrites_only(
    model: str, tmp_path: Path
) -> None:
    python = _record(MODELS[model], "python", tmp_path / "python")
    native = _record(MODELS[model], "native", tmp_path / "native")
    for a, b in zip(python, native, strict=True):
        assert _plain(a) == _plain(b)


def _record_small(path: Path, **options: Any) -> str:
    """One step of a tiny MLP recorded into ``path``; the engine the trace says ran."""
    model, step = _example(mlp, batch=4, hidden=8)
    with recorder.record(path, model=model, **options) as rec:
        step()
        rec.step()
    return str(tracefmt.open(path).provenance.extra["recorder_engine"])


def test_without_a_compiler_the_python_engine_records_and_says_so_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(extension, "_result", None)  # build again, in this process
    monkeypatch.setattr(recorder.engine, "_warned", False)
    monkeypatch.setenv("CXX", "no-such-compiler")
    with pytest.warns(UserWarning, match="native capture engine is not available.*no C\\+\\+"):
        assert _record_small(tmp_path / "a") == "python"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per process
        assert _record_small(tmp_path / "b") == "python"
    with pytest.raises(tracefmt.TraceError, match=r"engine='native'.*not available"):
        _record_small(tmp_path / "c", engine="native")


def test_switched_off_the_python_engine_records_without_a_warning(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(extension, "_result", None)
    monkeypatch.setattr(recorder.engine, "_warned", False)
    monkeypatch.setenv("TRACEFMT_NATIVE_ENGINE", "0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _record_small(tmp_path / "a") == "python"
    monkeypatch.setattr(extension, "_result", None)
    monkeypatch.delenv("TRACEFMT_NATIVE_ENGINE")
    assert _record_small(tmp_path / "b") == "native"  # the cached build, loaded again
    assert _record_small(tmp_path / "c", engine="python") == "python"


class _Sub(torch.Tensor):
    """A tensor subclass standing in for FSDP2's DTensor parameters."""


def test_auto_records_a_distributed_job_natively_only_when_its_model_holds_plain_tensors() -> None:
    from recorder.engine import choose
    from recorder.options import Options

    plain = torch.nn.Linear(2, 2)
    assert choose(Options(), distributed=False)[0] == "native"
    assert choose(Options(), distributed=True, model=plain)[0] == "native"  # DDP
    assert choose(Options(), distributed=True)[0] == "python"  # model unknown
    sharded = torch.nn.Linear(2, 2)
    sharded.register_buffer("shard", torch.zeros(2).as_subclass(_Sub))
    assert choose(Options(), distributed=True, model=sharded)[0] == "python"
    assert choose(Options(source=True), distributed=False)[0] == "python"
    with pytest.raises(tracefmt.TraceError, match="does not record source lines"):
        choose(Options(engine="native", source=True), distributed=False)


def test_the_engine_and_the_python_collector_share_the_cancellation_threshold() -> None:
    from recorder.stats.cpu import _CANCEL

    assert extension.load().module.CANCEL == _CANCEL  # type: ignore[union-attr]


def test_a_nested_recorder_is_refused_whatever_the_engines(tmp_path: Path) -> None:
    model, step = _example(mlp, batch=4, hidden=8)
    for outer, inner in (("native", "python"), ("python", "native")):
        refused = pytest.raises(tracefmt.TraceError, match="Another recorder is capturing")
        with (
            recorder.record(tmp_path / outer, model=model, engine=outer),  # type: ignore[arg-type]
            refused,
            recorder.record(tmp_path / f"{outer}-{inner}", model=model, engine=inner),  # type: ignore[arg-type]
        ):
            step()


@pytest.mark.parametrize("engine", ["python", "native"])
def test_a_failure_inside_an_ops_outputs_leaves_a_consistent_step(
    engine: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The op whose outputs were half recorded still goes in (its outputs name it as their
    producer), the step says where capture stopped, and the trace stays valid."""
    from recorder.options import ValuesSelection
    from tracefmt.validate import validate

    def matches(self: ValuesSelection, role: str, module: str, op: str, source: bool = False) -> bool:
        if role == "activation":  # an op's output, after the table has it
            raise RuntimeError("selection broke")
        return False

    monkeypatch.setattr(ValuesSelection, "matches", matches)
    model, step = _example(mlp, batch=4, hidden=8)
    with recorder.record(
        tmp_path / "run",
        model=model,
        engine=engine,
        values=recorder.select(roles="activation"),  # type: ignore[arg-type]
    ) as rec:
        step()
        rec.step()
    trace = tracefmt.open(tmp_path / "run")
    (recorded,) = [trace.step(s) for s in trace.steps()]
    assert [e.kind for e in recorded.events] == ["recorder_error"]
    assert "selection broke" in recorded.events[0].message
    assert validate(tmp_path / "run") == []
