"""From an origin found in a step to a :class:`~replayer.why.Cause`: the sentence, the numbers at
that step and at the step before, the path to the loss, and (for a state that was non-finite when
the step began) the cause found in the steps before.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

from replayer.diff.align import align_ops
from replayer.why.departure import Departure
from replayer.why.explained import Cause, Link, Site
from replayer.why.fullorigin import FullOrigin, find_nonfinite_origin
from replayer.why.holdings import RankSteps
from replayer.why.lightorigin import LightOrigin, light_links, light_nonfinite_origin, light_site
from replayer.why.stepflow import first_reader, links, nonfinite_tensors, numbers, path_to_loss, site
from tracefmt.light import LightKind
from tracefmt.reader import Step

__all__ = ["Found", "earlier_cause", "full_departure_cause", "full_nonfinite_cause", "light_cause"]

#: How far back :func:`earlier_cause` walks through held steps.
MAX_LOOKBACK = 1000


class Found(NamedTuple):
    """A cause with its path to the loss, the module to record values of, and notes."""

    cause: Cause
    path: tuple[Link, ...]
    module: str | None
    notes: tuple[str, ...] = ()


def _kinds(nan: int | None, inf: int | None) -> str:
    parts = [f"{nan} NaN" if nan else "", f"{inf} Inf" if inf else ""]
    return " and ".join(p for p in parts if p) or "NaN/Inf"


def _before_site(prev: Step | None, cur: Step, op: int | None) -> Site | None:
    """The op of ``prev`` aligned with ``cur``'s op ``op`` (None: none ran there)."""
    if prev is None or op is None:
        return None
    al = align_ops(prev.ops, cur.ops, prev.tensors, cur.tensors)
    for a, b in zip(al.a, al.b, strict=True):
        if b == op:
            return None if a < 0 else site(prev, a)
    return None


def _named_site(step: Step | None, name: str | None) -> Site | None:
    """The last version of the tensor named ``name`` in ``step`` (a state as the step left it)."""
    if step is None or not name:
        return None
    last = max((t.index for t in step.tensors if t.name == name), default=None)
    if last is None:
        return None
    p = step.tensors[last].meta.producer
    node = None if p is None else step.ops[p]
    return Site(
        step.step,
        "full",
        node.module if node else "",
        node.phase.label if node else None,
        op=p,
        name=node.name if node else None,
        outputs=(numbers(step, last),),
    )


def _describe(step: Step, o: FullOrigin) -> str:
    node = None if o.op is None else step.ops[o.op]
    t = None if o.tensor is None else step.tensors[o.tensor]
    tname = "tensor" if t is None else (t.name or f"tensor {t.index}")
    what = "NaN/Inf" if t is None or t.stats is None else _kinds(t.stats.nan, t.stats.inf)
    at = "" if node is None else f"{node.name} in {node.module or '<top>'} ({node.phase.label})"
    if o.kind == "created":
        return f"{at} made {what} from finite inputs at step {step.step}."
    if o.kind == "received":
        return (
            f"{at} received {what} from another rank at step {step.step}: its inputs were finite here."
        )
    if o.kind == "state_write" and node is not None and t is not None:
        outs = [step.tensors[x].stats for x in node.outputs]
        wrote = _kinds(sum(s.nan or 0 for s in outs if s), sum(s.inf or 0 for s in outs if s))
        return f"{at} wrote {wrote} into {tname} ({t.role.label}) at step {step.step}, from a constant."
    reader = f"; its first reader is {at}" if node else ""
    role = "" if t is None else f" ({t.role.label})"
    if o.kind == "state_at_start":
        return f"{tname}{role} already held {what} when step {step.step} began{reader}."
    return f"Non-finite data entered step {step.step} in {tname}{role}{reader}."


def full_nonfinite_cause(steps: RankSteps, step: Step, o: FullOrigin) -> Found:
    """The cause of origin ``o`` of full step ``step``."""
    prev = steps.step(step.step - 1)
    state = None if o.tensor is None else step.tensors[o.tensor].name
    at = site(step, o.op) if o.op is not None else _named_site(step, state)
    if at is None:
        outputs = () if o.tensor is None else (numbers(step, o.tensor),)
        at = Site(step.step, "full", "", None, outputs=outputs)
    before = _before_site(prev, step, o.op)
    if before is None and o.kind in ("state_write", "state_at_start"):
        before = _named_site(prev, state)
    through = nonfinite_tensors(step)
    starts = [] if o.op is None else [o.op]
    if o.kind == "state_write" and state:
        reader = first_reader(step, [], after=o.op if o.op is not None else -1, name=state)
        if reader is not None:
            starts.append(reader)
            # what the write left in the state, as its next reader sees it
            read = [t for t in step.ops[reader].inputs if step.tensors[t].name == state][:1]
            at = dataclasses.replace(at, outputs=(*at.outputs, *(numbers(step, t) for t in read)))
    ops = path_to_loss(step, starts, through)
    if o.op is not None and o.op not in ops:
        ops = [o.op, *ops]
    notes: tuple[str, ...] = ()
    if len(ops) <= 1 and o.op is not None and step.ops[o.op].phase.label in ("backward", "optimizer"):
        notes = ("It is after the loss (in the backward pass or the optimizer): no path leads to it.",)
    module = at.module if o.kind != "state_write" or not state else state.rpartition(".")[0]
    cause = Cause(
        o.kind,
        _describe(step, o),
        at,
        before,
        state if o.kind in ("state_write", "state_at_start", "input") else None,
    )
    return Found(cause, tuple(links(step, ops)), module, notes)


def _ratio_text(r: float) -> str:
    return "from finite to NaN/Inf" if r == float("inf") else f"{r:.3g}x"


def full_departure_cause(prev: Step, step: Step, d: Departure) -> Found:
    """The cause of departure ``d`` of ``step`` from ``prev``."""
    t = step.tensors[d.tensor]
    tname = t.name or f"tensor {t.index}"
    node = None if d.op is None else step.ops[d.op]
    where = "" if node is None else f"{node.name} in {node.module or '<top>'} ({node.phase.label})"
    moved = _ratio_text(d.ratio)
    state: str | None = None
    if d.kind == "state_departure":
        reader = f"; its first reader is {where}" if node else ""
        text = f"{tname} ({t.role.label}) moved {moved} from step {prev.step} as it entered "
        text += f"step {step.step}{reader}."
        before, state = _named_site(prev, t.name), t.name
    elif d.added:
        text = f"{where} ran only in step {step.step} and scaled its input {moved}."
        before = None
    else:
        text = f"{where}: its output {tname} moved {moved} from step {prev.step}."
        before = None if d.before_op is None else site(prev, d.before_op)
    if d.kind == "largest_departure":
        text += " No op moved that much more than its inputs did; this one moved most."
    at = site(step, d.op) if d.op is not None else _named_site(step, t.name)
    if at is None:
        at = Site(step.step, "full", "", None, outputs=(numbers(step, d.tensor),))
    ops = path_to_loss(step, [] if d.op is None else [d.op], set(d.departed))
    if d.op is not None and d.op not in ops:
        ops = [d.op, *ops]
    module = at.module if state is None else state.rpartition(".")[0]
    return Found(Cause(d.kind, text, at, before, state, d.ratio), tuple(links(step, ops)), module)


def _light_text(o: LightOrigin, current: int) -> str:
    r = o.row
    what, name, moved = _kinds(r.nan, r.inf), r.name or "<root>", _ratio_text(o.ratio or 1.0)
    texts = {
        "created": f"Module {name} output {what} from finite inputs at step {o.step}.",
        "state_at_start": (
            f"The {r.kind.label} {name} already held {what} after step {o.step}'s update, when "
            f"step {current} began."
        ),
        "state": (
            f"The {r.kind.label} of {name} holds {what} at step {o.step}; no module output did "
            "(it was made in the backward pass or the optimizer)."
        ),
        "loss": f"Only the loss is not finite at step {o.step}.",
        "state_departure": (
            f"Parameter {name} moved {moved} in step {o.step}'s update, before step {current}."
        ),
        "departure": f"The {r.kind.label} of {name} moved {moved} from step {o.step - 1}.",
        "largest_departure": (
            f"The {r.kind.label} of {name} moved {moved} from step {o.step - 1}. No row moved by the "
            "ratio; this one moved most."
        ),
    }
    return texts[o.kind]


def _suspects(steps: RankSteps, o: LightOrigin, at: Site) -> list[str]:
    """Notes on the parameters of a module that created NaN/Inf, where they hold it."""
    notes = []
    cur = steps.light(o.step)
    for p in at.inputs:
        now = None if cur is None else cur.row(p.name or "", LightKind.PARAMETER)
        if (p.nan or p.inf) or (now is not None and (now.nan or now.inf)):
            when = "entered the step" if (p.nan or p.inf) else "left the step"
            notes.append(f"Its parameter {p.name} holds NaN/Inf as it {when}.")
    if steps.light(o.step - 1) is None:
        notes.append(
            f"The trace holds no light step {o.step - 1}: the parameters at the start are unknown."
        )
    return notes


def light_cause(steps: RankSteps, o: LightOrigin, current: int) -> Found:
    """The cause of light origin ``o`` found for step ``current``."""
    r = o.row
    at = light_site(steps.light(o.step), r.name, r.kind, steps.light(o.step - 1))
    if at is None:  # the loss, which has no row
        at = Site(o.step, "light", "", None)
    before = light_site(steps.light(o.step - 1), r.name, r.kind, steps.light(o.step - 2))
    notes = _suspects(steps, o, at) if o.kind == "created" else []
    cur = steps.light(current)
    path = tuple(light_links(cur, o)) if cur is not None and o.kind != "loss" else ()
    state = r.name if r.kind is not LightKind.OUTPUT else None
    module = r.name if r.kind is LightKind.OUTPUT else r.name.rpartition(".")[0]
    cause = Cause(o.kind, _light_text(o, current), at, before, state, o.ratio)
    return Found(cause, path, module if o.kind != "loss" else None, tuple(notes))


def earlier_cause(steps: RankSteps, n: int, name: str | None) -> tuple[Found | None, str]:
    """The cause of a state non-finite when step ``n`` began, from the steps before it: the
    first (going back) whose origin is not itself a state non-finite at its start; with a note."""
    lowest = steps.first
    m = n - 1
    while lowest is not None and m >= max(lowest, n - MAX_LOOKBACK):
        full = steps.step(m)
        if full is not None:
            o = find_nonfinite_origin(full)
            if o is None:
                return None, (
                    f"Step {m} held {name or 'it'} finite: it was written between steps {m} and {n}, "
                    "outside the recorded ops."
                )
            if o.kind != "state_at_start":
                return full_nonfinite_cause(steps, full, o), f"It started at step {m}."
        else:
            light = steps.light(m)
            if light is None:
                break
            lo = light_nonfinite_origin(light, steps.light(m - 1))
            if lo is None:
                return None, f"Light step {m} shows no NaN/Inf: it was written after step {m}'s update."
            if lo.kind != "state_at_start":
                return light_cause(steps, lo, m), f"It started at step {m}."
        m -= 1
    return None, f"The trace holds no step before {m + 1} on rank {steps.rank} to look further back."
