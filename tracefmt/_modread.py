"""Reading a step's module metadata (format 1.5) from one rank file, for :mod:`tracefmt.reader`.

A step's row of ``step_modules`` (row ``k`` for row ``k`` of ``steps``) names its range of
``modules``; the rows there are decoded and checked with the functions the validator uses
(:func:`~tracefmt.moduletable.tree_problems`, :func:`~tracefmt.moduletable.count_problems`),
so a hostile table is a :class:`~tracefmt.errors.TraceFormatError` naming the file and step.
Steps share tables, so each range is decoded once per open file.  A file older than 1.5, or a
step written without a model, has no module metadata: None.
"""

from __future__ import annotations

import weakref

import numpy as np

from tracefmt import _layout as L
from tracefmt._modlayout import MAX_MODULES, MODULES, STEP_MODULES, ModuleRow
from tracefmt._rankfile import RankFile
from tracefmt._rows import named
from tracefmt.errors import TraceFormatError
from tracefmt.moduletable import ModuleInfo, ModuleTable, count_problems, tree_problems

#: Per open rank file, its decoded module tables by (start, count) of ``modules``.
_CACHE: weakref.WeakKeyDictionary[RankFile, dict[tuple[int, int], ModuleTable]] = (
    weakref.WeakKeyDictionary()
)


def step_modules(rf: RankFile, index: int) -> ModuleTable | None:
    """The module table of the step in row ``index`` of ``rf``'s step index, or None when it has
    none (a file older than 1.5, or a step recorded without a model)."""
    if not L.has_dataset(STEP_MODULES, rf.version.minor):
        return None
    step = int(rf._rows(L.STEPS, index, 1)[0]["step"])
    where = f"{rf.path}, step {step}"
    if index >= rf.length(STEP_MODULES):
        raise TraceFormatError(
            f"{where}: /{STEP_MODULES} has {rf.length(STEP_MODULES)} rows, none for this "
            f"step (row {index} of /{L.STEPS}); the file is damaged."
        )
    span = rf._rows(STEP_MODULES, index, 1, step)[0]
    start, count = int(span["module_start"]), int(span["module_count"])
    if count == 0:
        return None
    cache = _CACHE.setdefault(rf, {})
    table = cache.get((start, count))
    if table is None:
        rows = rf._rows(MODULES, start, count, step, MAX_MODULES)
        table = cache[(start, count)] = decode_modules(rows, rf, step, where)
    return table


def decode_modules(rows: np.ndarray, rf: RankFile, step: int, where: str) -> ModuleTable:
    """The :class:`ModuleTable` of ``modules`` rows, its strings read from ``rf``."""
    modules = []
    for r in named(rows, ModuleRow):
        path = rf.string(r.path, step)
        if path is None:
            raise TraceFormatError(f"{where}: a module of the step's module table has no path (-1).")
        modules.append(
            ModuleInfo(
                path=path,
                class_name=rf.string(r.class_name, step),
                params=r.params,
                trainable=r.trainable,
                own_params=r.own_params,
                own_trainable=r.own_trainable,
                param_bytes=r.param_bytes,
            )
        )
    for problems in (tree_problems([m.path for m in modules]), count_problems(modules)):
        for row, message in problems:
            raise TraceFormatError(f"{where}: module table row {row}: {message}")
    return ModuleTable(tuple(modules))
