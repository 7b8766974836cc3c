"""Origins in light steps (format 1.4): modules and parameters, no graph.

A light step's rows come in the order they were measured: each module's ``OUTPUT`` as its
forward finished (a child before its parent), then each parameter's ``GRADIENT``, ``UPDATE`` and
``PARAMETER`` (after the optimizer's step).  A parameter as it entered step N is the
``PARAMETER`` row of step N-1, so that row, when the trace holds step N-1, comes first in
execution order.

* Non-finite: a parameter already non-finite after step N-1's update (state at start); else the
  first ``OUTPUT`` row that :func:`tracefmt.nonfinite.light_report` calls created (NaN/Inf from
  finite inputs: a parameter written between steps shows up here, in the module that reads it);
  else the first gradient, update or parameter holding NaN/Inf; else the loss.
* Spike: a parameter whose ``PARAMETER`` row departed between steps N-2 and N-1; else the first
  row of step N whose statistics departed from the same row of step N-1
  (:func:`replayer.why.departure.departure`); else the row that departed most.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from replayer.why.departure import departure
from replayer.why.explained import Link, Site, TensorNumbers
from tracefmt.light import LIGHT_ROW_DTYPE, LightFlags, LightKind, LightRow, LightStep
from tracefmt.nonfinite import light_report

__all__ = ["LightOrigin", "light_departure", "light_links", "light_nonfinite_origin", "light_site"]

_PHASE = {
    LightKind.OUTPUT: "forward",
    LightKind.GRADIENT: "backward",
    LightKind.UPDATE: "optimizer",
    LightKind.PARAMETER: "optimizer",
}


class LightOrigin(NamedTuple):
    """An origin in light step ``step``: its kind, the row (its name: a module path or a
    parameter's FQN; its kind), the departure factor (spikes), and the rows that hold the
    non-finite value or departed after it (the path), by index into the step's rows."""

    kind: str
    step: int
    row: LightRow
    ratio: float | None = None
    after: tuple[int, ...] = ()


def _rows_array(step: LightStep) -> np.ndarray:
    rows = np.zeros(len(step.rows), dtype=LIGHT_ROW_DTYPE)
    for k, r in enumerate(step.rows):
        flags = (LightFlags.COUNTS if r.nan is not None else 0) | (
            LightFlags.INPUTS_NONFINITE if r.inputs_nonfinite else 0
        )
        rows[k]["kind"], rows[k]["flags"] = int(r.kind), int(flags)
        rows[k]["nan"], rows[k]["inf"] = r.nan or 0, r.inf or 0
    return rows


def _bad(r: LightRow) -> bool:
    return bool(r.nan or r.inf)


def _state_at_start(prev: LightStep | None, cur: int) -> LightOrigin | None:
    if prev is None:
        return None
    for r in prev.rows:
        if r.kind is LightKind.PARAMETER and _bad(r):
            return LightOrigin("state_at_start", prev.step, r)
    return None


def light_nonfinite_origin(cur: LightStep, prev: LightStep | None) -> LightOrigin | None:
    """Where the light step ``cur``'s NaN/Inf entered (``prev``: step N-1, when held)."""
    report = light_report(_rows_array(cur), cur.scalars)
    start = _state_at_start(prev, cur.step)
    after = tuple(k for k, r in enumerate(cur.rows) if r.kind is LightKind.OUTPUT and _bad(r))
    if start is not None:
        return start._replace(after=after)
    if report.created:
        k = report.created[0]
        return LightOrigin("created", cur.step, cur.rows[k], None, tuple(x for x in after if x > k))
    if report.state_rows:
        return LightOrigin("state", cur.step, cur.rows[report.state_rows[0]])
    if report.loss_nonfinite:
        return LightOrigin("loss", cur.step, LightRow("loss", LightKind.OUTPUT, 1))
    return None


def light_departure(
    cur: LightStep, prev: LightStep, before_prev: LightStep | None, ratio: float
) -> LightOrigin | None:
    """Where light step ``cur`` departed from ``prev`` (see the module docstring)."""
    if before_prev is not None:
        old = {r.name: r for r in before_prev.rows if r.kind is LightKind.PARAMETER}
        for r in prev.rows:
            if r.kind is LightKind.PARAMETER and r.name in old:
                f = departure(old[r.name], r)
                if f is not None and f >= ratio:
                    return LightOrigin("state_departure", prev.step, r, f)
    earlier = {(r.name, r.kind): r for r in prev.rows}
    factors = [departure(earlier.get((r.name, r.kind)), r) for r in cur.rows]
    moved = tuple(k for k, f in enumerate(factors) if f is not None and f >= ratio)
    if moved:
        k = moved[0]
        return LightOrigin("departure", cur.step, cur.rows[k], factors[k], moved[1:])
    known = [(f, k) for k, f in enumerate(factors) if f is not None]
    if not known or max(known)[0] <= 1.0:
        return None
    f, k = max(known, key=lambda x: (x[0], -x[1]))
    return LightOrigin("largest_departure", cur.step, cur.rows[k], f)


def row_numbers(r: LightRow) -> TensorNumbers:
    return TensorNumbers(
        name=r.name,
        role=r.kind.label,
        min=r.min,
        max=r.max,
        mean=r.mean,
        std=r.std,
        norm=r.norm,
        nan=r.nan,
        inf=r.inf,
    )


def light_site(
    step: LightStep | None, name: str, kind: LightKind, start: LightStep | None
) -> Site | None:
    """The module (or parameter) ``name`` in light step ``step``: its row of ``kind`` as the
    output and, for a module, its own parameters as they entered the step (``start``: the
    light step before, whose ``PARAMETER`` rows they are) as the inputs."""
    if step is None:
        return None
    row = step.row(name, kind)
    if row is None:
        return None
    inputs: tuple[TensorNumbers, ...] = ()
    if kind is LightKind.OUTPUT and start is not None:
        prefix = f"{name}." if name else ""
        inputs = tuple(
            row_numbers(r)
            for r in start.rows
            if r.kind is LightKind.PARAMETER
            and r.name.startswith(prefix)
            and "." not in r.name[len(prefix) :]
        )
    return Site(step.step, "light", name, _PHASE[kind], inputs=inputs, outputs=(row_numbers(row),))


def light_links(step: LightStep, origin: LightOrigin) -> list[Link]:
    """The origin's row, then the modules after it whose outputs hold the value (or departed),
    in the order they ran (the root module, ``""``, last: it returned the loss)."""
    out = [Link(origin.row.name, phase=_PHASE[origin.row.kind])]
    for k in origin.after:
        r = step.rows[k]
        if r.name != origin.row.name:
            out.append(Link(r.name, phase=_PHASE[r.kind]))
    return out
