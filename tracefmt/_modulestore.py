"""How a writer stores module metadata (format 1.5): each distinct module table once in
``modules``, and for every step a ``step_modules`` row naming its table's range.

A model's modules change only when the model does, so the steps of a run share one table (or a
few): the first step with a table appends its rows, later steps with an equal table
(:attr:`~tracefmt.moduletable.ModuleTable.digest`) point at the same range.  A step without a
table gets an empty range.  The ``step_modules`` rows wait with their steps' ``steps`` rows and
are appended when the writer commits, before those (spec section 8), so that row ``k`` of
``step_modules`` always belongs to row ``k`` of ``steps``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tracefmt._appender import Appender
from tracefmt._modlayout import (
    MODULE_DTYPE,
    MODULES,
    STEP_MODULE_DTYPE,
    STEP_MODULES,
    StepModuleRow,
)
from tracefmt.moduletable import ModuleTable


class ModuleStore:
    """The module tables of one file being written, appended through ``tables``; strings are
    interned through the writer's ``intern_all`` and ``intern``."""

    def __init__(
        self,
        tables: Appender,
        intern_all: Callable[[list[str | None]], None],
        intern: Callable[[str | None], int],
    ) -> None:
        self._tables = tables
        self._intern_all, self._intern = intern_all, intern
        self._ranges: dict[bytes, StepModuleRow] = {}
        self._pending: list[StepModuleRow] = []

    def pend(self, modules: ModuleTable | None) -> None:
        """Store ``modules`` if this file does not hold an equal table yet, and queue the
        ``step_modules`` row of the step being written (an empty range for None)."""
        self._pending.append(self._range(modules))

    def _range(self, modules: ModuleTable | None) -> StepModuleRow:
        if modules is None:
            return StepModuleRow(module_start=self._tables.length(MODULES), module_count=0)
        found = self._ranges.get(modules.digest)
        if found is not None:
            return found
        self._intern_all([text for m in modules for text in (m.path, m.class_name)])
        rows = np.zeros(len(modules), dtype=MODULE_DTYPE)
        rows["path"] = [self._intern(m.path) for m in modules]
        rows["class_name"] = [self._intern(m.class_name) for m in modules]
        for field in ("params", "trainable", "own_params", "own_trainable", "param_bytes"):
            rows[field] = np.array([getattr(m, field) for m in modules], dtype=np.uint64)
        found = StepModuleRow(module_start=self._tables.append(MODULES, rows), module_count=len(rows))
        self._ranges[modules.digest] = found
        return found

    def commit(self) -> None:
        """Append the queued steps' ``step_modules`` rows (the writer commits their steps next)."""
        pending, self._pending = self._pending, []
        self._tables.append(STEP_MODULES, np.array(pending, dtype=STEP_MODULE_DTYPE))
