"""The HDF5 layout of module metadata (format 1.5): the tables ``modules`` and ``step_modules``.

Part of :mod:`tracefmt._layout`, which imports everything here (and is where the rest of the
code takes it from); kept apart so that the layout module stays one screenful per idea.

``modules`` holds module tables: one row per module of a model, in the order
``torch.nn.Module.named_modules()`` gives (the root first, a parent before its children).  A
table is written once and shared by every step that has it.  ``step_modules`` runs along
``steps`` (row ``k`` belongs to row ``k`` of ``steps``, as ``step_overrides`` does) and names the
step's range of ``modules``; an empty range means the step has no module metadata.  Both are new
datasets rather than fields of ``graphs`` or ``steps``: a reader checks row dtypes exactly, so a
new field would be a major version (spec section 4.1).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

MODULES = "modules"
STEP_MODULES = "step_modules"

#: One module: its path and class (string ids), its parameters counted over its whole subtree
#: (each parameter once) and held directly, and the bytes of its subtree's parameters.
MODULE_DTYPE = np.dtype(
    [
        ("path", "<i4"),
        ("class_name", "<i4"),
        ("params", "<u8"),
        ("trainable", "<u8"),
        ("own_params", "<u8"),
        ("own_trainable", "<u8"),
        ("param_bytes", "<u8"),
    ]
)
#: Row k: the range of ``modules`` that holds the module table of row k of ``steps``.
STEP_MODULE_DTYPE = np.dtype([("module_start", "<u8"), ("module_count", "<u4")])

#: The most modules one table may hold (a 70B-parameter transformer has about 1,000).
MAX_MODULES = 10_000_000


class ModuleRow(NamedTuple):
    """A row of ``modules`` (format 1.5): string ids of the path and the class (-1: unknown),
    and the parameter counts."""

    path: int
    class_name: int
    params: int
    trainable: int
    own_params: int
    own_trainable: int
    param_bytes: int


class StepModuleRow(NamedTuple):
    """A row of ``step_modules`` (format 1.5): the step's range of ``modules``."""

    module_start: int
    module_count: int
