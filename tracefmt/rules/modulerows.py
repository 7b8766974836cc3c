"""Rules about module metadata (format 1.5): the tables ``modules`` and ``step_modules``.

Row k of ``step_modules`` names the range of ``modules`` that holds the module table of row k of
``steps``; steps share a range while the model does not change, so each distinct range is checked
once.  The tree and count checks are :mod:`tracefmt.moduletable`'s, the ones the writer and the
reader apply.  A file older than 1.5 has no such tables, and these rules have nothing to check.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from tracefmt import _layout as L
from tracefmt._modlayout import MAX_MODULES, MODULES, STEP_MODULES
from tracefmt.moduletable import ModuleInfo, count_problems, tree_problems
from tracefmt.rules._base import Issue, Skip, rule
from tracefmt.rules._context import FileContext
from tracefmt.rules._views import Span, StepRef, StringRef


def _applies(ctx: FileContext) -> bool:
    return L.has_dataset(STEP_MODULES, ctx.minor)


def _step_spans(ctx: FileContext) -> list[tuple[StepRef, Span]]:
    """Each committed step that has a ``step_modules`` row, with its range of ``modules``."""
    n = min(ctx.length(STEP_MODULES), len(ctx.steps()))
    if not n:
        return []
    rows = ctx.table(STEP_MODULES)[:n]
    starts, counts = rows["module_start"].tolist(), rows["module_count"].tolist()
    return [(ref, Span(starts[i], counts[i])) for i, ref in enumerate(ctx.steps()[:n])]


def _tables(ctx: FileContext) -> Iterator[tuple[StepRef, Span, np.ndarray]]:
    """Each distinct non-empty, valid module range with the first step using it and its rows."""
    seen: set[tuple[int, int]] = set()
    for ref, span in _step_spans(ctx):
        key = (span.start, span.count)
        if not span.count or key in seen or not ctx.range_ok(MODULES, *key, MAX_MODULES):
            continue
        seen.add(key)
        yield ref, span, ctx.rows(MODULES, span.start, span.count)


def module_string_refs(ctx: FileContext) -> Iterator[StringRef]:
    """The string references of the module tables committed steps reach (path required)."""
    if not _applies(ctx):
        return
    try:
        for ref, span, rows in _tables(ctx):
            for k, (path, cls) in enumerate(
                zip(rows["path"].tolist(), rows["class_name"].tolist(), strict=True)
            ):
                row = span.start + k
                for field, sid, required in (("path", path, True), ("class_name", cls, False)):
                    yield StringRef(
                        table=MODULES,
                        row=row,
                        step=ref.step,
                        field=field,
                        sid=sid,
                        required=required,
                    )
    except Skip:
        return


def _modules(ctx: FileContext, rows: np.ndarray) -> list[ModuleInfo]:
    """The rows as :class:`ModuleInfo`; raises Skip when a path is not a usable string
    (TF-STR-001, TF-STR-002 report it)."""
    out = []
    for r in rows.tolist():
        path = ctx.string(r[0]) if r[0] != L.NO_STRING else None
        if path is None:
            raise Skip
        out.append(ModuleInfo(path, None, *r[2:]))
    return out


@rule("TF-MODULE-001", "Every step has a step_modules row whose range lies inside modules")
def module_ranges(ctx: FileContext) -> Iterator[Issue]:
    if not _applies(ctx):
        return
    n_index, n_steps = ctx.length(STEP_MODULES), ctx.length(L.STEPS)
    if n_index < n_steps:
        ref = ctx.steps()[n_index]
        yield Issue(
            ctx.loc(L.STEPS, ref.row, ref.step),
            f"/{STEP_MODULES} has {n_index} rows, fewer than the {n_steps} committed steps; "
            f"every row of /{L.STEPS} needs its row of /{STEP_MODULES}.",
        )
    for ref, span in _step_spans(ctx):
        if not ctx.range_ok(MODULES, span.start, span.count, MAX_MODULES):
            yield Issue(
                ctx.loc(STEP_MODULES, ref.row, ref.step),
                f"The step's module table, rows {span.start}..{span.start + span.count} of "
                f"/{MODULES}, is out of range (it has {ctx.length(MODULES)} rows; a table "
                f"has at most {MAX_MODULES}).",
            )


@rule("TF-MODULE-002", "A module table starts at the root, each module after its parent, once")
def module_tree(ctx: FileContext) -> Iterator[Issue]:
    if not _applies(ctx):
        return
    for ref, span, rows in _tables(ctx):
        try:
            paths = [m.path for m in _modules(ctx, rows)]
        except Skip:
            continue
        for row, message in tree_problems(paths):
            yield Issue(ctx.loc(MODULES, span.start + row, ref.step), message)


@rule("TF-MODULE-003", "A module's parameter counts are ordered and within its parent's")
def module_counts(ctx: FileContext) -> Iterator[Issue]:
    if not _applies(ctx):
        return
    for ref, span, rows in _tables(ctx):
        try:
            modules = _modules(ctx, rows)
        except Skip:
            continue
        for row, message in count_problems(modules):
            yield Issue(ctx.loc(MODULES, span.start + row, ref.step), message)
