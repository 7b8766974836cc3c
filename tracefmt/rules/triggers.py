"""Rules about the flight recorder's events (format 1.4): a trigger event's message says why it
fired and on which rank, as a JSON object (spec section 5.11, :mod:`tracefmt.events`)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from tracefmt import _layout as L
from tracefmt.events import TRIGGER_KINDS, message_problem
from tracefmt.rules._base import Issue, rule
from tracefmt.rules._context import FileContext
from tracefmt.rules.lightsteps import light_rows, usable_light_refs


def _events(ctx: FileContext) -> Iterator[tuple[str, int, int | None, np.ndarray]]:
    """(table, first row, step, rows) of every committed full and light step's events."""
    for ref in ctx.steps():
        rows = ctx.step_rows(ref, L.EVENTS)
        if rows is not None and len(rows):
            yield L.EVENTS, ref.ranges[L.EVENTS].start, ref.step, rows
    for light in usable_light_refs(ctx):
        rows = light_rows(ctx, light, L.LIGHT_EVENTS)
        if rows is not None and len(rows):
            yield L.LIGHT_EVENTS, light.ranges[L.LIGHT_EVENTS].start, light.step, rows


@rule("TF-EVENT-002", "A trigger event's message is a JSON object with a reason and a rank")
def trigger_messages(ctx: FileContext) -> Iterator[Issue]:
    identity = ctx.identity()
    if ctx.minor < 4 or identity is None:
        return  # the kinds are defined from 1.4; a file without a world size: TF-FILE-005
    for table, start, step, rows in _events(ctx):
        for k, (kind_sid, message_sid) in enumerate(
            zip(rows["kind"].tolist(), rows["message"].tolist(), strict=True)
        ):
            kind = ctx.string(kind_sid)
            if kind not in TRIGGER_KINDS:
                continue
            message = ctx.string(message_sid)
            if message is None and message_sid != L.NO_STRING:
                continue  # TF-STR-001, TF-STR-002
            problem = message_problem(message or "", identity.world_size)
            if problem is not None:
                yield Issue(
                    ctx.loc(table, start + k, step),
                    f"The {kind!r} event's message {message!r} breaks the format of section "
                    f"5.11: {problem}",
                )
