"""Rules about RNG states (format 1.6): the tables ``rng_states`` and ``step_rng_states`` and the
heap ``rng_bytes``.

Row k of ``step_rng_states`` names the range of ``rng_states`` that holds the generators of row k
of ``steps``; each of those rows names a device and a range of ``rng_bytes``.  The device checks
are :mod:`tracefmt.rngstate`'s, the ones the writer and the reader apply.  A file older than 1.6
has no such datasets, and these rules have nothing to check.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from tracefmt import _layout as L
from tracefmt._rnglayout import (
    MAX_GENERATORS,
    MAX_RNG_STATE_BYTES,
    RNG_BYTES,
    RNG_STATES,
    STEP_RNG_STATES,
)
from tracefmt.rngstate import devices_problems
from tracefmt.rules._base import Issue, Skip, rule
from tracefmt.rules._context import FileContext
from tracefmt.rules._views import Span, StepRef, StringRef


def _applies(ctx: FileContext) -> bool:
    return L.has_dataset(STEP_RNG_STATES, ctx.minor)


def _step_spans(ctx: FileContext) -> list[tuple[StepRef, Span]]:
    """Each committed step that has a ``step_rng_states`` row, with its range of ``rng_states``."""
    n = min(ctx.length(STEP_RNG_STATES), len(ctx.steps()))
    if not n:
        return []
    rows = ctx.table(STEP_RNG_STATES)[:n]
    starts, counts = rows["rng_start"].tolist(), rows["rng_count"].tolist()
    return [(ref, Span(starts[i], counts[i])) for i, ref in enumerate(ctx.steps()[:n])]


def _states(ctx: FileContext) -> Iterator[tuple[StepRef, Span, np.ndarray]]:
    """Each committed step with a non-empty, valid range of ``rng_states``, and its rows."""
    for ref, span in _step_spans(ctx):
        if span.count and ctx.range_ok(RNG_STATES, span.start, span.count, MAX_GENERATORS):
            yield ref, span, ctx.rows(RNG_STATES, span.start, span.count)


def rng_string_refs(ctx: FileContext) -> Iterator[StringRef]:
    """The device string references of the RNG states committed steps reach (required)."""
    if not _applies(ctx):
        return
    try:
        for ref, span, rows in _states(ctx):
            for k, sid in enumerate(rows["device"].tolist()):
                yield StringRef(
                    table=RNG_STATES,
                    row=span.start + k,
                    step=ref.step,
                    field="device",
                    sid=sid,
                    required=True,
                )
    except Skip:
        return


@rule("TF-RNG-001", "Every step has a step_rng_states row whose range lies inside rng_states")
def rng_ranges(ctx: FileContext) -> Iterator[Issue]:
    if not _applies(ctx):
        return
    n_index, n_steps = ctx.length(STEP_RNG_STATES), ctx.length(L.STEPS)
    if n_index < n_steps:
        ref = ctx.steps()[n_index]
        yield Issue(
            ctx.loc(L.STEPS, ref.row, ref.step),
            f"/{STEP_RNG_STATES} has {n_index} rows, fewer than the {n_steps} committed steps; "
            f"every row of /{L.STEPS} needs its row of /{STEP_RNG_STATES}.",
        )
    for ref, span in _step_spans(ctx):
        if not ctx.range_ok(RNG_STATES, span.start, span.count, MAX_GENERATORS):
            yield Issue(
                ctx.loc(STEP_RNG_STATES, ref.row, ref.step),
                f"The step's RNG states, rows {span.start}..{span.start + span.count} of "
                f"/{RNG_STATES}, are out of range (it has {ctx.length(RNG_STATES)} rows; a step "
                f"has at most {MAX_GENERATORS} generators).",
            )


@rule("TF-RNG-002", "A step's generators name valid devices, each once")
def rng_devices(ctx: FileContext) -> Iterator[Issue]:
    if not _applies(ctx):
        return
    for ref, span, rows in _states(ctx):
        devices = [ctx.string(sid) for sid in rows["device"].tolist()]
        if any(d is None for d in devices):
            continue  # -1 or an unusable string: TF-STR-001 and TF-STR-002 report it
        for row, message in devices_problems([d for d in devices if d is not None]):
            yield Issue(ctx.loc(RNG_STATES, span.start + row, ref.step), message)


@rule("TF-RNG-003", "A generator's state is 1 byte to 1 MiB inside rng_bytes")
def rng_bytes(ctx: FileContext) -> Iterator[Issue]:
    if not _applies(ctx):
        return
    for ref, span, rows in _states(ctx):
        starts, counts = rows["state_start"].tolist(), rows["state_count"].tolist()
        for k, (start, count) in enumerate(zip(starts, counts, strict=True)):
            if count and ctx.range_ok(RNG_BYTES, start, count, MAX_RNG_STATE_BYTES):
                continue
            yield Issue(
                ctx.loc(RNG_STATES, span.start + k, ref.step),
                f"The generator's state, bytes {start}..{start + count} of /{RNG_BYTES}, is out "
                f"of range (it has {ctx.length(RNG_BYTES)} bytes; a state has 1 to "
                f"{MAX_RNG_STATE_BYTES}).",
            )


@rule("TF-RNG-004", "A generator's state matches its fingerprint", deep=True)
def rng_fingerprints(ctx: FileContext) -> Iterator[Issue]:
    if not _applies(ctx):
        return
    for ref, span, rows in _states(ctx):
        fields = (rows[f].tolist() for f in ("state_start", "state_count", "fingerprint"))
        for k, (start, count, fp) in enumerate(zip(*fields, strict=True)):
            if not count or not ctx.range_ok(RNG_BYTES, start, count, MAX_RNG_STATE_BYTES):
                continue  # TF-RNG-003
            if ctx.values_fingerprint(RNG_BYTES, start, count) != fp:
                yield Issue(
                    ctx.loc(RNG_STATES, span.start + k, ref.step),
                    f"The generator's state, bytes {start}..{start + count} of /{RNG_BYTES}, "
                    f"does not match its fingerprint {fp}; the file is damaged.",
                )
