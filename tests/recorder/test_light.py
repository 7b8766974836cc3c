"""Light capture (recorder.flight.lightcapture): rows, non-finite origins, on_created, hygiene."""

from __future__ import annotations

import gc
import math
import weakref
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np
import pytest
import torch
import torch.optim.optimizer as optim_module
from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

from recorder.flight.lightcapture import LightCapture, ModuleInputs
from recorder.flight.lightstats import native_kernel, torch_stats
from recorder.tracking import Names
from tests.recorder._util import OpLog
from tracefmt.light import LightFlags, LightKind, LightStepRecord
from tracefmt.nonfinite import light_report

NATIVE = [
    pytest.param(True, id="native"),
    pytest.param(False, id="torch"),
]


class Pair(torch.nn.Module):
    """Returns a tuple: two floating-point tensors (measured together) and an integer one."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return x * 2, x.sum(dim=1), x.argmax(dim=1)


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8))
        self.pair = Pair()
        self.norm = torch.nn.LayerNorm(8)
        self.head = torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        a, b, _ = self.pair(h)
        h = self.norm(a + b[:, None])
        out: torch.Tensor = self.head(torch.relu(self.norm(h)))  # norm called twice: two rows
        return out


def _net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return Net()


def _ref(tensors: list[torch.Tensor], negate: bool = False) -> dict[str, float]:
    """The statistics a light row should hold, computed in float64 by plain torch."""
    x = torch.cat([t.detach().double().reshape(-1) for t in tensors])
    x = -x if negate else x
    finite = x[torch.isfinite(x)]
    out = {
        "numel": float(x.numel()),
        "nan": float(torch.isnan(x).sum()),
        "inf": float(torch.isinf(x).sum()),
    }
    if finite.numel():
        out |= {
            "min": float(finite.min()),
            "max": float(finite.max()),
            "mean": float(finite.mean()),
            "std": float(finite.std(correction=0)),
            "norm": float(finite.norm()),
        }
    return out


def _check_row(row: np.void, ref: dict[str, float], what: str) -> None:
    for key, want in ref.items():
        got = float(row[key])
        assert got == pytest.approx(want, rel=1e-6, abs=1e-7), f"{what}: {key} {got} != {want}"
    has = "min" in ref
    assert bool(row["flags"] & LightFlags.MOMENTS) == has, what
    assert row["flags"] & LightFlags.COUNTS, what
    if not has:
        assert math.isnan(float(row["min"])), what


class Expected:
    """An independent record of one training step: module outputs in the order they returned,
    and each parameter's gradient, value before and value after the optimizer step."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.outputs: list[tuple[str, list[torch.Tensor]]] = []
        self._handles = [m.register_forward_hook(self._hook(name)) for name, m in model.named_modules()]
        self.params = dict(model.named_parameters())

    def _hook(self, name: str) -> Any:
        def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
            outs = output if isinstance(output, tuple) else (output,)
            floats = [o.detach().clone() for o in outs if o.is_floating_point()]
            self.outputs.append((name, floats))

        return hook

    def before_step(self) -> None:
        self.grads = {n: p.grad.detach().clone() for n, p in self.params.items()}  # type: ignore[union-attr]
        self.old = {n: p.detach().clone() for n, p in self.params.items()}

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def _step(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    capture: LightCapture,
    step: int,
    expected: Expected | None = None,
) -> LightStepRecord:
    torch.manual_seed(100 + step)
    loss = model(torch.randn(6, 8)).square().mean()
    loss.backward()
    if expected is not None:
        expected.before_step()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return capture.finish(step, {"loss": loss}, wall_time=123.0, duration=0.5)


@pytest.mark.parametrize("native", NATIVE)
def test_rows_of_a_small_model_match_torch(native: bool) -> None:
    if native and native_kernel() is None:
        pytest.skip("the one-pass statistics kernel is not available (no C compiler)")
    model = _net()
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    names = Names()
    names.add_root(model)
    capture = LightCapture(names, native=native)
    with capture.install():
        _step(model, opt, capture, 0)
        expected = Expected(model)
        record = _step(model, opt, capture, 1, expected)
        expected.close()
    record.check()
    assert (record.step, record.wall_time, record.duration) == (1, 123.0, 0.5)
    assert set(record.scalars) == {"loss"}
    rows = record.rows
    kinds = rows["kind"]
    outputs = rows[kinds == LightKind.OUTPUT]
    assert [record.names[i] for i in outputs["name"]] == [n for n, _ in expected.outputs]
    assert [n for n, _ in expected.outputs] == [
        "body.0", "body.1", "body.2", "body", "pair", "norm", "norm", "head", ""
    ]  # fmt: skip
    for row, (name, tensors) in zip(outputs, expected.outputs, strict=True):
        _check_row(row, _ref(tensors), f"output {name!r}")
    params = list(expected.params)
    for kind, source, negate in [
        (LightKind.GRADIENT, expected.grads, False),
        (LightKind.UPDATE, None, False),
        (LightKind.PARAMETER, expected.params, False),
    ]:
        part = rows[kinds == kind]
        assert [record.names[i] for i in part["name"]] == params, kind.label
        for row, name in zip(part, params, strict=True):
            if source is None:  # the update: new minus old
                tensor = expected.params[name].detach() - expected.old[name]
            else:
                tensor = source[name]
            _check_row(row, _ref([tensor], negate), f"{kind.label} {name!r}")
    # every row is in order: outputs, then gradients, then updates, then parameters
    assert list(kinds) == sorted(kinds)


def test_the_kernel_measures_float32_rows() -> None:
    if native_kernel() is None:
        pytest.skip("the one-pass statistics kernel is not available (no C compiler)")
    model = _net()
    opt = torch.optim.AdamW(model.parameters())
    capture = LightCapture(Names())
    with capture.install():
        model(torch.randn(6, 8)).sum().backward()
        opt.step()
        rows = capture._rows.rows
        assert len(rows) == 9 + 3 * 8
        assert all(src == -1 for *_, src in rows), "a float32 CPU row took the torch path"


@pytest.mark.parametrize("native", NATIVE)
def test_names_are_stable_from_step_to_step(native: bool) -> None:
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    names = Names()
    names.add_root(model)
    capture = LightCapture(names, updates=False, native=native)
    with capture.install():
        first = _step(model, opt, capture, 0)
        second = _step(model, opt, capture, 1)
    assert list(first.names) == list(second.names)
    assert np.array_equal(first.rows["name"], second.rows["name"])
    assert not (first.rows["kind"] == LightKind.UPDATE).any()
    assert capture.update_bytes == 0


@pytest.mark.parametrize("native", NATIVE)
def test_update_buffers_are_reused_from_step_to_step(native: bool) -> None:
    model = _net()
    opt = torch.optim.AdamW(model.parameters())
    names = Names()
    names.add_root(model)
    capture = LightCapture(names, native=native)
    with capture.install():
        _step(model, opt, capture, 0)
        kept = capture._kept[opt]
        _step(model, opt, capture, 1)
        assert capture._kept[opt] is kept
        assert capture.update_bytes == sum(p.nbytes for p in model.parameters())


def _inject_nan(model: Any) -> Any:
    with torch.no_grad():
        model.body[2].weight[0, 0] = math.nan
    return model


def _nan_record(native: bool, on_created: Any = None) -> LightStepRecord:
    model = _inject_nan(_net())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    names = Names()
    names.add_root(model)
    capture = LightCapture(names, native=native, on_created=on_created)
    with capture.install():
        record = _step(model, opt, capture, 0)
    record.check()
    return record


@pytest.mark.parametrize("native", NATIVE)
def test_a_nan_in_a_weight_is_created_where_it_is_used(native: bool) -> None:
    record = _nan_record(native)
    rows = record.rows
    by = {(record.names[r["name"]], int(r["kind"])): r for r in rows}
    # the NaN weight: its gradient, update and value are non-finite
    for kind in (LightKind.GRADIENT, LightKind.UPDATE, LightKind.PARAMETER):
        assert by["body.2.weight", kind]["nan"] > 0, kind.label
    outputs = [r for r in rows if r["kind"] == LightKind.OUTPUT]
    state = [
        (
            record.names[r["name"]],
            bool(r["nan"] + r["inf"]),
            bool(r["flags"] & LightFlags.INPUTS_NONFINITE),
        )
        for r in outputs
    ]
    assert state[:3] == [("body.0", False, False), ("body.1", False, False), ("body.2", True, False)]
    # everything after it received non-finite inputs ...
    for name, bad, inputs_bad in state[4:-1]:
        assert bad, name
        assert inputs_bad, name
    # ... except the containers, whose own inputs were finite
    assert state[3] == ("body", True, False)
    assert state[-1] == ("", True, False)
    assert first_created(record) == "body.2"


def first_created(record: LightStepRecord) -> str | None:
    """The module of the first row the spec's rule calls created (tracefmt.nonfinite)."""
    created = light_report(record.rows, {}).created
    return record.names[int(record.rows[created[0]]["name"])] if created else None


def test_first_created_is_none_for_a_finite_step() -> None:
    model = _net()
    names = Names()
    names.add_root(model)
    capture = LightCapture(names)
    with capture.install():
        record = _step(model, torch.optim.SGD(model.parameters(), lr=0.1), capture, 0)
    assert first_created(record) is None
    assert not (record.rows["nan"] + record.rows["inf"]).any()


@pytest.mark.parametrize("native", NATIVE)
def test_on_created_is_called_once_per_step_with_the_inputs(native: bool) -> None:
    calls: list[tuple[str, torch.nn.Module, ModuleInputs, Any]] = []

    def on_created(path: str, module: torch.nn.Module, inputs: ModuleInputs, output: Any) -> None:
        assert torch.isfinite(inputs.args[0]).all()
        assert not torch.isfinite(output).all()
        calls.append((path, module, inputs, output))

    model = _inject_nan(_net())
    names = Names()
    names.add_root(model)
    capture = LightCapture(names, native=native, on_created=on_created)
    with capture.install():
        for step in range(2):
            model(torch.randn(6, 8))
            capture.finish(step)
            assert [c[0] for c in calls] == ["body.2"] * (step + 1)
    for _, module, inputs, output in calls:
        assert module is model.body[2]
        assert inputs.kwargs == {}
        assert torch.equal(output.isnan(), module(*inputs.args).isnan())


def test_on_created_may_raise_and_leaves_nothing_behind() -> None:
    def stop(path: str, module: torch.nn.Module, inputs: ModuleInputs, output: Any) -> None:
        raise FloatingPointError(f"non-finite values created in {path!r}")

    before = _global_state()
    model = _inject_nan(_net())
    names = Names()
    names.add_root(model)
    capture = LightCapture(names, on_created=stop)
    with pytest.raises(FloatingPointError, match=r"body\.2"), capture.install():
        model(torch.randn(2, 8))
    assert _global_state() == before
    assert len(capture._rows) == 0


def _global_state() -> tuple[int, ...]:
    m = torch.nn.modules.module
    return (
        len(m._global_forward_pre_hooks),
        len(m._global_forward_hooks),
        len(m._global_forward_hooks_with_kwargs),
        len(optim_module._global_optimizer_pre_hooks),
        len(optim_module._global_optimizer_post_hooks),
        len(_get_current_dispatch_mode_stack()),
    )


@pytest.mark.parametrize("fail", [False, True])
def test_no_hook_or_reference_remains_after_the_stack_closes(fail: bool) -> None:
    before = _global_state()
    model = _net()
    opt = torch.optim.AdamW(model.parameters())
    names = Names()
    names.add_root(model)
    capture = LightCapture(names)
    raising: AbstractContextManager[object] = (
        pytest.raises(RuntimeError, match="boom") if fail else nullcontext()
    )
    with raising, capture.install():
        _step(model, opt, capture, 0)
        assert _global_state() != before
        assert capture.update_bytes == sum(p.nbytes for p in model.parameters())
        model(torch.randn(2, 8)).sum().backward()  # a step under way, never finished
        if fail:
            raise RuntimeError("boom")
    assert _global_state() == before
    assert capture.update_bytes == 0
    assert len(capture._rows) == 0
    refs: list[weakref.ref[Any]] = [weakref.ref(model), weakref.ref(opt)]
    refs += [weakref.ref(p) for p in model.parameters()]
    del model, opt
    gc.collect()
    assert [r() for r in refs] == [None] * len(refs), "the capture keeps the model or optimizer alive"


def test_a_capture_installs_once_at_a_time() -> None:
    capture = LightCapture(Names())
    with capture.install(), pytest.raises(RuntimeError, match="installed already"):
        capture.install()
    with capture.install():  # again after closing
        pass


def test_modules_outside_any_root_are_named_at_the_end() -> None:
    model = _net()
    names = Names()  # no root: the capture finds it
    capture = LightCapture(names)
    with capture.install():
        model(torch.randn(2, 8))
        record = capture.finish(0)
    got = [record.names[i] for i in record.rows["name"]]
    assert got == ["body.0", "body.1", "body.2", "body", "pair", "norm", "norm", "head", ""]


def test_parameters_near_one_have_an_exact_std() -> None:
    """A LayerNorm weight near 1: the kernel's sums alone would cancel in std."""
    torch.manual_seed(0)
    p = torch.nn.Parameter(1.0 + 1e-4 * torch.randn(256))
    q = torch.nn.Parameter(torch.full((64,), 3.0))  # constant: std 0
    opt = torch.optim.SGD([p, q], lr=0.0)
    names = Names()
    capture = LightCapture(names)
    with capture.install():
        (p.sum() + q.sum()).backward()  # type: ignore[no-untyped-call]
        opt.step()
        record = capture.finish(0)
    rows = record.rows[record.rows["kind"] == LightKind.PARAMETER]
    _check_row(rows[0], _ref([p]), "p")
    assert rows[1]["std"] == 0.0
    assert rows[1]["mean"] == 3.0


@pytest.mark.parametrize("native", NATIVE)
def test_bfloat16_and_float64_tensors(native: bool) -> None:
    outputs: list[torch.Tensor] = []
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 8).double())
    model[0].to(torch.bfloat16)
    model[0].register_forward_hook(lambda m, a, o: outputs.append(o.detach().clone()))
    capture = LightCapture(Names(), native=native)
    with capture.install():
        model[0](torch.randn(4, 8, dtype=torch.bfloat16))
        model[1](torch.randn(4, 8, dtype=torch.float64))
        record = capture.finish(0)
    _check_row(record.rows[0], _ref(outputs), "bfloat16 output")
    assert record.rows[1]["numel"] == 32
    assert record.rows[1]["flags"] & LightFlags.MOMENTS


def _torch_stats_cases() -> Iterator[list[torch.Tensor]]:
    yield [torch.randn(10)]
    yield [torch.tensor([1.0, math.nan, math.inf, -math.inf, 2.0])]
    yield [torch.tensor([math.nan, math.inf])]  # no finite value
    yield [torch.zeros(0), torch.randn(3, 4), torch.tensor([math.nan, 5.0]), torch.randn(7).double()]


@pytest.mark.parametrize("tensors", list(_torch_stats_cases()))
@pytest.mark.parametrize("segments", [False, True])
def test_torch_stats_per_tensor_and_together(tensors: list[torch.Tensor], segments: bool) -> None:
    rows = torch_stats(tensors, segments=segments).numpy()
    together = torch_stats(tensors, together=True).numpy()
    assert rows.shape == (len(tensors), 8)
    assert together.shape == (1, 8)
    for got, group in [*zip(rows, ([t] for t in tensors), strict=True), (together[0], tensors)]:
        ref = _ref(group)
        assert (got[4], got[5]) == (ref["nan"], ref["inf"])
        if "min" in ref:
            m = ref["numel"] - ref["nan"] - ref["inf"]
            assert got[0] / m == pytest.approx(ref["mean"], rel=1e-6, abs=1e-7)
            assert math.sqrt(got[1]) == pytest.approx(ref["norm"], rel=1e-6)
            assert (got[2], got[3]) == pytest.approx((ref["min"], ref["max"]))
            assert math.sqrt(got[6] / m) == pytest.approx(ref["std"], rel=1e-6, abs=1e-7)


def test_our_work_is_hidden_from_a_dispatch_mode() -> None:
    """Under a full capture's dispatch mode, the light capture's own ops (the update buffers'
    copy and subtraction, the torch path) are not part of the step it records."""
    model = _net()
    opt = torch.optim.AdamW(model.parameters(), foreach=False)
    names = Names()
    names.add_root(model)
    capture = LightCapture(names, native=False)
    with capture.install(), OpLog() as log:
        _step(model, opt, capture, 0)
    ops = {name for name, _, _ in log.ops}
    assert not {"aten::_foreach_copy_.default", "aten::_foreach_sub_.List"} & ops
    assert "aten::segment_reduce.default" not in ops


def test_finite_values_too_large_for_the_sums_give_no_moments_not_infinite_ones() -> None:
    """A diverging run's 1e20s overflow float32 squares: the row keeps its counts, and no
    infinite moment (a MOMENTS row must hold finite ones, TF-LIGHT-003)."""
    for native in (True, False):
        lin = torch.nn.Linear(4, 4)
        names = Names()
        names.add_root(lin)
        capture = LightCapture(names, updates=False, native=native)
        with capture.install():
            lin(torch.full((2, 4), 1e20))
            record = capture.finish(0)
        record.check()
        for row in record.rows:
            if row["flags"] & LightFlags.MOMENTS:
                assert all(np.isfinite(row[f]) for f in ("min", "max", "mean", "std", "norm"))


def test_the_light_entry_points_come_with_the_statistics_kernel() -> None:
    """The light capture's C entry points live in the same library as the statistics kernel:
    where that builds, so must they (else the native tests above would skip silently)."""
    from recorder.flight.lightnative import native_kernels
    from recorder.stats.native import available

    if not available():
        pytest.skip("the one-pass statistics kernel is not available (no C compiler)")
    assert native_kernels() is not None


def _same_rows(got: LightStepRecord, want: LightStepRecord) -> None:
    """The same rows: names, kinds, counts and flags equal, moments to float tolerance."""
    for field in ("name", "kind", "flags", "nan", "inf", "numel"):
        assert np.array_equal(got.rows[field], want.rows[field]), field
    for field in ("min", "max", "mean", "std", "norm"):
        close = np.isclose(got.rows[field], want.rows[field], rtol=1e-6, atol=1e-9, equal_nan=True)
        assert close.all(), field


class Mixed(torch.nn.Module):
    """Parameters of every kind the optimizer hooks meet: float32, bfloat16, float64, a
    non-contiguous one, one with a NaN and Inf, one constant, one near 1, one without a grad."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(8, 8)
        self.brain = torch.nn.Linear(8, 8).to(torch.bfloat16)
        self.wide = torch.nn.Linear(8, 8).double()
        self.turned = torch.nn.Parameter(torch.randn(8, 8).t())  # a view: not contiguous
        self.bad = torch.nn.Parameter(torch.tensor([1.0, math.nan, math.inf, -2.0] * 4))
        self.const = torch.nn.Parameter(torch.full((16,), 3.0))
        self.near = torch.nn.Parameter(1.0 + 1e-4 * torch.randn(64))
        self.unused = torch.nn.Parameter(torch.randn(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x) @ self.turned
        h = self.brain(h.bfloat16()).float() + self.wide(h.double()).float()
        extra = self.bad.nan_to_num().sum() + self.const.sum() + (self.near * self.near).sum()
        return h + 1e-3 * extra


def _mixed_records(native: bool, steps: int = 2, move: bool = False) -> list[LightStepRecord]:
    torch.manual_seed(0)
    model = Mixed()
    opt = torch.optim.AdamW(model.parameters(), lr=0.01, foreach=False)
    names = Names()
    names.add_root(model)
    capture = LightCapture(names, native=native)
    records = []
    with capture.install():
        for step in range(steps):
            if move and step == 1:  # the parameter moves, and another one changes its size
                model.lin.weight.data = model.lin.weight.data.clone()
                model.near.data = 1.0 + 1e-4 * torch.randn(80)
                opt.state.pop(model.near, None)
            torch.manual_seed(10 + step)
            model(torch.randn(4, 8)).square().mean().backward()  # type: ignore[no-untyped-call]
            opt.step()
            opt.zero_grad(set_to_none=True)
            records.append(capture.finish(step))
    return records


@pytest.mark.parametrize("move", [False, True], ids=["in-place", "moved"])
def test_native_and_torch_paths_give_the_same_rows(move: bool) -> None:
    """The kernel's batched optimizer rows and fused update rows (float32 and bfloat16, the
    rest on the torch path) against the torch path alone: same rows, values, flags."""
    if native_kernel() is None:
        pytest.skip("the one-pass statistics kernel is not available (no C compiler)")
    for got, want in zip(_mixed_records(True, move=move), _mixed_records(False, move=move), strict=True):
        got.check()
        assert got.names == want.names
        _same_rows(got, want)
    kinds = got.rows["kind"]
    assert (kinds == LightKind.UPDATE).sum() == (kinds == LightKind.PARAMETER).sum() == 10


def test_update_rows_of_a_bfloat16_parameter_are_its_change_in_bfloat16() -> None:
    if native_kernel() is None:
        pytest.skip("the one-pass statistics kernel is not available (no C compiler)")
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(300).bfloat16())
    opt = torch.optim.SGD([p], lr=0.37)
    capture = LightCapture(Names())
    with capture.install():
        old = p.detach().clone()
        (p.float() ** 3).sum().backward()  # type: ignore[no-untyped-call]
        opt.step()
        record = capture.finish(0)
    (row,) = record.rows[record.rows["kind"] == LightKind.UPDATE]
    _check_row(row, _ref([p.detach() - old]), "bfloat16 update")


def _big_step(native: bool) -> LightStepRecord:
    p = torch.nn.Parameter(torch.arange(100.0))  # p - 1 is exact: the update is -1 everywhere
    q = torch.nn.Parameter(torch.linspace(1e19, 2e19, 100))  # float sums of squares overflow
    opt = torch.optim.SGD([p, q], lr=1.0)
    capture = LightCapture(Names(), native=native)
    with capture.install():
        (p.sum() + 0.25 * (q * q).sum()).backward()  # type: ignore[no-untyped-call]
        opt.step()
        record = capture.finish(0)
    record.check()
    return record


def test_constant_and_overflowing_updates() -> None:
    """An update of the same value everywhere has std 0 (the kernel's second pass); updates and
    parameters too large for float sums take the torch path (float64): the rows are those of
    the torch path alone."""
    if native_kernel() is None:
        pytest.skip("the one-pass statistics kernel is not available (no C compiler)")
    got, want = _big_step(True), _big_step(False)
    rows = got.rows[got.rows["kind"] == LightKind.UPDATE]
    assert (rows[0]["mean"], rows[0]["std"], rows[0]["min"]) == (-1.0, 0.0, -1.0)
    assert rows[1]["min"] < -5e18
    _same_rows(got, want)


def _plain_records(native: bool) -> list[LightStepRecord]:
    """Two steps of a model whose rows are all kernel rows, one tensor each (the rows built
    in one C call), the second with a NaN weight (non-finite rows, INPUTS_NONFINITE)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    names = Names()
    names.add_root(model)
    capture = LightCapture(names, native=native)
    records = []
    with capture.install():
        for step in range(2):
            if step:
                with torch.no_grad():
                    model[0].weight[0, 0] = math.nan  # type: ignore[index]
            torch.manual_seed(10 + step)
            model(torch.randn(4, 8)).square().mean().backward()  # type: ignore[no-untyped-call]
            opt.step()
            opt.zero_grad(set_to_none=True)
            if native:
                assert capture._rows.counts.count(1) == len(capture._rows) == capture._rows.n_slots
            records.append(capture.finish(step))
    return records


def test_rows_built_in_c_are_those_numpy_builds() -> None:
    if native_kernel() is None:
        pytest.skip("the one-pass statistics kernel is not available (no C compiler)")
    for got, want in zip(_plain_records(True), _plain_records(False), strict=True):
        got.check()
        assert got.rows.dtype == want.rows.dtype
        _same_rows(got, want)
    assert (got.rows["nan"] > 0).any()
    assert (got.rows["flags"] & LightFlags.INPUTS_NONFINITE).any()
    assert not (got.rows["flags"] & LightFlags.MOMENTS).all()  # a row of NaN only: no moments


class Wraps(torch.nn.Module):
    """Returns its submodule's output as it is, or (``scale``) after scaling it in place."""

    def __init__(self, scale: bool) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.lin(x)
        if self.scale:
            y.mul_(-2.0)
        return y


@pytest.mark.parametrize("scale", [False, True], ids=["same", "changed"])
def test_a_container_returning_its_submodules_output_is_read_once(scale: bool) -> None:
    """The kernel reads a tensor once when a container returns its last submodule's output
    unchanged (the same rows); once changed in place (its version moved) it is read again."""
    if native_kernel() is None:
        pytest.skip("the one-pass statistics kernel is not available (no C compiler)")
    torch.manual_seed(0)
    model = Wraps(scale)
    names = Names()
    names.add_root(model)
    capture = LightCapture(names)
    calls = []
    run = capture._rows._run
    capture._rows._run = lambda *a: calls.append(a) or run(*a)  # type: ignore[method-assign]
    with capture.install():
        model(torch.randn(3, 4))
        record = capture.finish(0)
    inner, outer = record.rows
    assert [record.names[i] for i in record.rows["name"]] == ["lin", ""]
    assert len(calls) == (2 if scale else 1)
    factor = -2.0 if scale else 1.0
    assert outer["mean"] == pytest.approx(factor * inner["mean"])
    assert outer["std"] == pytest.approx(abs(factor) * inner["std"])
    assert (outer["flags"], outer["numel"]) == (inner["flags"], inner["numel"])
