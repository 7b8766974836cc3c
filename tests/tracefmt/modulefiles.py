"""Traces with module metadata (format 1.5) and the minimal bad files of its rules.

:func:`write_modules` writes the synthetic MLP of :mod:`tests.synth` with a module table per step;
each entry of :data:`MODULE_CASES` breaks one thing of a copy of it, so that exactly its rule fires
(``tests/tracefmt/test_validator.py`` counts these rules as tested).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from tests import badfiles as bad
from tests.synth import mlp_graph, synthetic_step
from tracefmt import TraceWriter
from tracefmt.moduletable import ModuleInfo, ModuleTable

#: The module table of each step of :func:`write_modules`: step 1 has none, step 3 the model
#: with its first layer frozen.
STEP_TABLES = ("A", None, "A", "B")


def mlp_modules(*, frozen: bool = False) -> ModuleTable:
    """The modules of the synthetic MLP: ``layers.0`` and ``layers.1`` each hold a 16x16 bfloat16
    weight (256 elements, 512 bytes) and a ``ReLU`` child; ``frozen``: ``layers.0``'s weight does
    not require gradients."""
    lin, relu = "torch.nn.modules.linear.Linear", "torch.nn.modules.activation.ReLU"
    t0 = 0 if frozen else 256
    return ModuleTable(
        (
            ModuleInfo("", "tests.synth.MLP", 512, 256 + t0, 0, 0, 1024),
            ModuleInfo("layers", "torch.nn.modules.container.ModuleList", 512, 256 + t0, 0, 0, 1024),
            ModuleInfo("layers.0", lin, 256, t0, 256, t0, 512),
            ModuleInfo("layers.0.act", relu, 0, 0, 0, 0, 0),
            ModuleInfo("layers.1", lin, 256, 256, 256, 256, 512),
            ModuleInfo("layers.1.act", relu, 0, 0, 0, 0, 0),
        )
    )


def write_modules(path: Path) -> Path:
    """Four steps of the synthetic MLP with the module tables of :data:`STEP_TABLES`."""
    tables = {"A": mlp_modules(), "B": mlp_modules(frozen=True), None: None}
    rng = np.random.default_rng(3)
    with TraceWriter(path, fsync=False) as w:
        for s, name in enumerate(STEP_TABLES):
            record = synthetic_step(s, mlp_graph(), rng, with_values=False)
            record.modules = tables[name]
            w.write_step(record)
            w.flush()
    return path


class ModuleCase(NamedTuple):
    rule: str
    make: Callable[[Path], Path]  # (copy of the module trace) -> path to validate


def _path_sid(p: Path, row: int) -> int:
    return int(bad.get(p, "modules", row, "path"))


def _set_path(p: Path, row: int, sid: int) -> Path:
    """Give ``modules`` row ``row`` the path string ``sid`` (``bad.set_field`` names its first
    argument ``path``, so it cannot set a field of that name)."""
    with bad.edit(p) as f:
        rows = f["modules"][row : row + 1]
        rows["path"] = sid
        f["modules"][row : row + 1] = rows
    return p


def _swap_paths(p: Path, a: int, b: int) -> Path:
    sid_a, sid_b = _path_sid(p, a), _path_sid(p, b)
    return _set_path(_set_path(p, a, sid_b), b, sid_a)


MODULE_CASES: list[ModuleCase] = [
    ModuleCase("TF-LAYOUT-001", lambda p: bad.delete(p, "step_modules")),
    ModuleCase("TF-MODULE-001", lambda p: bad.shorten(p, "step_modules", 2)),
    ModuleCase("TF-MODULE-001", lambda p: bad.set_field(p, "step_modules", 0, module_count=10**6)),
    ModuleCase("TF-MODULE-001", lambda p: bad.set_field(p, "step_modules", 2, module_start=10)),
    # the root after its child
    ModuleCase("TF-MODULE-002", lambda p: _swap_paths(p, 0, 1)),
    # a path twice
    ModuleCase("TF-MODULE-002", lambda p: _set_path(p, 3, _path_sid(p, 2))),
    ModuleCase("TF-MODULE-003", lambda p: bad.set_field(p, "modules", 2, trainable=300)),
    # a layer with more parameters than the list holding it
    ModuleCase("TF-MODULE-003", lambda p: bad.set_field(p, "modules", 4, params=600, own_params=600)),
    ModuleCase("TF-MODULE-003", lambda p: bad.set_field(p, "modules", 3, param_bytes=4)),
    ModuleCase("TF-STR-001", lambda p: _set_path(p, 2, -1)),
    ModuleCase("TF-STR-001", lambda p: bad.set_field(p, "modules", 2, class_name=10_000)),
]
