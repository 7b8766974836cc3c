"""The rule about what a full step's NaN/Inf mean (format 1.4): ``STEP_NONFINITE_CREATED`` and
``STEP_NONFINITE_STATE`` agree with the classification of spec section 6.5, whose reference is
:func:`tracefmt.nonfinite.classify` (the writer sets the flags with it, from the same rows)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from tracefmt import _layout as L
from tracefmt.nonfinite import Counts, GraphFlow, NonfiniteReport, classify, stored_constant_kinds
from tracefmt.rules._base import Issue, rule
from tracefmt.rules._context import FileContext
from tracefmt.rules._views import GraphView, StepRef


def _flow(view: GraphView) -> GraphFlow:
    return GraphFlow(
        [view.op_tensors(i, outputs=False) or [] for i in range(view.n_ops)],
        [t.producer for t in view.tensor_list],
        np.array([t.role for t in view.tensor_list], dtype=np.uint8),
    )


def _report(ctx: FileContext, ref: StepRef, view: GraphView, stats: np.ndarray) -> NonfiniteReport:
    """The classification of step ``ref`` from its rows: its own op attributes where it has them."""
    scalar_rows = ctx.step_rows(ref, L.SCALARS)
    scalars = {}
    if scalar_rows is not None:
        for sid, value in zip(scalar_rows["name"].tolist(), scalar_rows["value"].tolist(), strict=True):
            name = ctx.string(sid)
            if name is not None:
                scalars[name] = value
    own_rows = ctx.override_rows(ref, L.OP_ATTRS)
    own = (
        {}
        if own_rows is None
        else dict(zip(own_rows["op"].tolist(), own_rows["attrs"].tolist(), strict=True))
    )

    def constants(op: int) -> tuple[bool, bool]:
        sid = own.get(op, view.op_list[op].attrs)
        return stored_constant_kinds(ctx.string(sid))

    counts = Counts.of_stats(stats) if len(stats) else Counts(*(np.zeros(view.n_tensors, bool),) * 3)
    return classify(counts, lambda: _flow(view), constants, scalars)


@rule("TF-STEP-006", "STEP_NONFINITE_CREATED and STEP_NONFINITE_STATE agree with the classification")
def step_nonfinite(ctx: FileContext) -> Iterator[Issue]:
    if ctx.minor < 4:
        return  # the bits are undefined before 1.4 (TF-STEP-005)
    for ref, view in ctx.step_graphs():
        stats = ctx.step_rows(ref, L.STATS)
        if stats is None or len(stats) not in (0, view.n_tensors):
            continue  # TF-STEP-002, TF-STEP-003
        report = _report(ctx, ref, view, stats)
        first = report.first_created
        loc = ctx.loc(L.STEPS, ref.row, ref.step)
        created = bool(ref.flags & L.STEP_NONFINITE_CREATED)
        if created and first is None:
            yield Issue(
                loc,
                f"STEP_NONFINITE_CREATED is set, but no op of the step created NaN or Inf "
                f"({len(report.ops)} ops output some: propagated or by design).",
            )
        elif first is not None and not created:
            yield Issue(
                loc,
                f"STEP_NONFINITE_CREATED is clear, but op {first.op} created NaN or Inf from "
                "finite inputs and finite constants.",
            )
        state = bool(ref.flags & L.STEP_NONFINITE_STATE)
        if state != report.state:
            why = (
                f"tensors {list(report.state_tensors[:5])} of a state role hold NaN or Inf"
                if report.state_tensors
                else "the loss is not finite"
                if report.loss_nonfinite
                else "no parameter, gradient, optimizer state or loss holds NaN or Inf"
            )
            yield Issue(
                loc,
                f"STEP_NONFINITE_STATE is {'set' if state else 'clear'}, but {why}.",
            )
