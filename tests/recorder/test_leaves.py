"""``values="leaves"``: the selection predicate and its list of random ops (torch's tags)."""

from __future__ import annotations

import pytest

import recorder
from recorder.options import Options
from recorder.selection import LEAF_VALUES, RANDOM_OPS, is_random_op, parse_values

torch = pytest.importorskip("torch")


def _tagged() -> set[str]:
    """Every aten op torch tags ``nondeterministic_seeded``, over all registered schemas
    (``dir(torch.ops.aten)`` lists only the packets resolved so far, which depends on what ran
    before)."""
    names = set()
    for schema in torch._C._jit_get_all_schemas():
        if not schema.name.startswith("aten::"):
            continue
        packet = getattr(torch.ops.aten, schema.name.removeprefix("aten::"))
        overload = getattr(packet, schema.overload_name or "default")
        if torch.Tag.nondeterministic_seeded in overload.tags:
            names.add(schema.name)
    return names


def test_every_op_torch_tags_as_random_is_a_random_op() -> None:
    tagged = _tagged()
    assert tagged, "torch tags no op nondeterministic_seeded"
    assert tagged <= RANDOM_OPS, sorted(tagged - RANDOM_OPS)
    assert is_random_op("aten::bernoulli_.float")
    assert is_random_op("aten::randint.low_generator")
    assert is_random_op("aten::random_.from")
    assert not is_random_op("aten::native_dropout_backward.default")
    assert not is_random_op("aten::addmm.default")


def test_leaves_selects_sources_of_any_role_and_random_draws_only() -> None:
    assert parse_values("leaves") is LEAF_VALUES
    assert Options.build(values="leaves").values == LEAF_VALUES
    assert recorder.select(leaves=True) == LEAF_VALUES
    for role in ("parameter", "buffer", "optimizer_state", "input", "gradient"):
        assert LEAF_VALUES.matches(role, "h.0", "aten::t.default", source=True)
        # the same role made by an op of the step (an updated parameter) is not a leaf
        assert not LEAF_VALUES.matches(role, "", "aten::add_.Tensor")
    assert LEAF_VALUES.matches("activation", "h.0.mlp", "aten::bernoulli_.float")
    assert not LEAF_VALUES.matches("activation", "h.0.mlp", "aten::gelu.default")
    narrowed = recorder.select(leaves=True, roles="parameters")
    assert narrowed.matches("parameter", "", "aten::t.default", source=True)
    assert not narrowed.matches("input", "", "aten::t.default", source=True)
    assert not narrowed.matches("activation", "", "aten::bernoulli_.float")
    # a plain selection ignores where a tensor came from
    assert recorder.select(roles="parameters").matches("parameter", "", "aten::add_.Tensor")


def test_leaves_option_errors_are_sentences() -> None:
    with pytest.raises(ValueError, match="'all', 'leaves'"):
        parse_values("leaf")
    with pytest.raises(TypeError, match="leaves"):
        recorder.select(leaves="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize("engine", ["python", "native"])
def test_leaves_record_what_the_step_starts_from(tmp_path, engine: str) -> None:
    import tracefmt

    if engine == "native":
        from recorder.engine import extension

        if extension.load().module is None:
            pytest.skip(f"the native engine is not available: {extension.load().reason}")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x = torch.randn(4, 8)
    with recorder.record(tmp_path / "run", model=model, values="leaves", engine=engine) as rec:
        for _ in range(2):
            loss = model(x).square().mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            rec.step(loss=loss)
    with tracefmt.open(tmp_path / "run") as trace:
        step = trace.step(1)
        kept = [t for t in step.tensors if t.has_values]
        made = {step.ops[t.meta.producer].name for t in kept if t.meta.producer is not None}
        assert made
        assert all(is_random_op(name) for name in made)
        sources = {t.name for t in kept if t.meta.producer is None}
        assert {"0.weight", "0.bias", "2.weight", "2.bias"} <= sources
        states = [t for t in kept if t.role.label == "optimizer_state"]
        assert states
        assert all(t.meta.producer is None for t in states)
        assert not [t for t in kept if t.role.label == "parameter" and t.meta.producer is not None]


@pytest.mark.parametrize("engine", ["python", "native"])
def test_an_items_number_is_kept_only_when_values_are_recorded(tmp_path, engine: str) -> None:
    """``tensor.item()``'s number goes in the op's attribute ``returned`` with values recorded;
    without them it would only give the graph an override per step (a changing step count)."""
    import tracefmt

    if engine == "native":
        from recorder.engine import extension

        if extension.load().module is None:
            pytest.skip(f"the native engine is not available: {extension.load().reason}")
    x = torch.arange(6.0)
    kept = {}
    for values in (None, "all"):
        run = tmp_path / str(values)
        with recorder.record(run, values=values, engine=engine) as rec:
            number = (x * 2).sum().item()
            rec.step()
        with tracefmt.open(run) as trace:
            item = next(op for op in trace.step(0).ops if "_local_scalar_dense" in op.name)
            kept[values] = item.attrs.get("returned")
    assert kept == {None: None, "all": number}
