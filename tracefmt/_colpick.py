"""Which tensors of a graph (or which light rows) make each series of :mod:`tracefmt.columns`.

Resolved once per distinct graph (a long run has few: graphs are deduplicated, spec section 7)
from its decoded ops and tensors, never per step.  Two ways to select:

* **by tensor** (a glob over tensor labels): one series per matching tensor.  A tensor's label is
  its name (``h.0.attn.c_attn.weight``, ``h.0.attn.c_attn.weight.grad``), or for an unnamed one
  ``module:op#k``, the ``k``-th output of ``op`` (namespace and overload dropped) in that
  module (``h.0.mlp.c_fc:addmm#0``; the root module is ``<root>``, a tensor entering the step
  from outside is ``<input>#k``).  Where several versions share a label (a parameter before and
  after the optimizer step), the last is taken: the value at the end of the step (or phase).
  Tensors the recorder leaves unmeasured (pure views, spec section 5.7) have no series.
* **by module** (a glob over module paths, ``""`` being the root): one series per matching
  module, of its tensors of the phase taken together: ``forward``, the module's outputs (what
  its forward ops produce and a forward op outside it reads; for the root, or a module none of
  whose results is read outside, the outputs of its last forward op); ``backward``, the
  gradients of the parameters inside it; ``optimizer``, those parameters after the step.

An output left unmeasured because it is a pure view (spec section 5.7) stands for its base: the
view's numbers are (part of) the base's.  Integer and bool outputs are left out of a module's.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from tracefmt.dtypes import DType
from tracefmt.light import LightKind
from tracefmt.model import OpNode, Phase, Role, TensorMeta

__all__ = [
    "ROOT_LABEL",
    "Pick",
    "ancestors",
    "light_labels",
    "module_label",
    "module_matches",
    "pick_graph",
    "tensor_labels",
]

ROOT_LABEL = "<root>"
INPUT_LABEL = "<input>"
_FLOATS = frozenset(
    {DType.FLOAT16, DType.BFLOAT16, DType.FLOAT32, DType.FLOAT64}
    | {d for d in DType if d.name.startswith("FLOAT8")}
)
#: How many views an unmeasured output is followed through to its measured base.
_MAX_VIEW_DEPTH = 16
#: The light row kind a phase selects (module outputs, parameter gradients, parameters).
PHASE_KINDS = {
    "forward": LightKind.OUTPUT,
    "backward": LightKind.GRADIENT,
    "optimizer": LightKind.PARAMETER,
}


class Pick(NamedTuple):
    """One series of a graph: its label and its members (graph-local tensor indices)."""

    label: str
    members: np.ndarray


def module_label(path: str) -> str:
    return path or ROOT_LABEL


def ancestors(path: str) -> list[str]:
    """``path`` and the modules above it, the root ``""`` included: ``a.b`` -> ``a.b, a, ""``."""
    out = [path]
    while path:
        path = path.rpartition(".")[0]
        out.append(path)
    return out


def _inside(path: str, module: str) -> bool:
    return not module or path == module or path.startswith(module + ".")


def _short(op: str) -> str:
    """``aten::addmm.default`` -> ``addmm``: the op without namespace and overload."""
    return op.split("::", 1)[-1].split(".", 1)[0]


def tensor_labels(ops: Sequence[OpNode], metas: Sequence[TensorMeta]) -> list[str]:
    """Every tensor's label (see the module docstring)."""
    labels = [""] * len(metas)
    seen: dict[str, int] = {}
    for op in ops:
        base = f"{module_label(op.module)}:{_short(op.name)}"
        for t in op.outputs:
            if metas[t].name is None and not labels[t]:
                labels[t] = f"{base}#{seen.get(base, 0)}"
                seen[base] = seen.get(base, 0) + 1
    inputs = 0
    for j, meta in enumerate(metas):
        if meta.name is not None:
            labels[j] = meta.name
        elif not labels[j]:
            labels[j] = f"{INPUT_LABEL}#{inputs}"
            inputs += 1
    return labels


def _homes(
    ops: Sequence[OpNode], metas: Sequence[TensorMeta]
) -> tuple[list[OpNode | None], list[OpNode | None]]:
    """Each tensor's producer op, and the first op that reads it (None where there is none)."""
    producer: list[OpNode | None] = [None if m.producer is None else ops[m.producer] for m in metas]
    reader: list[OpNode | None] = [None] * len(metas)
    for op in ops:
        for t in op.inputs:
            if reader[t] is None:
                reader[t] = op
    return producer, reader


def _measured_base(
    t: int, metas: Sequence[TensorMeta], ops: Sequence[OpNode], measured: np.ndarray | None
) -> int:
    """``t``, or the tensor an unmeasured view ``t`` shows (followed through views)."""
    for _ in range(_MAX_VIEW_DEPTH):
        producer = metas[t].producer
        if measured is None or measured[t] or producer is None or not ops[producer].inputs:
            return t
        t = ops[producer].inputs[0]
    return t


def _module_outputs(ops: Sequence[OpNode], metas: Sequence[TensorMeta]) -> dict[str, set[int]]:
    """Each module's outputs: forward results read by a forward op outside it (module path ->
    tensors), and for a module with none, its last forward op's outputs."""
    out: dict[str, set[int]] = {}
    last: dict[str, OpNode] = {}
    producer = [None if m.producer is None else ops[m.producer] for m in metas]
    for op in ops:
        if op.phase is not Phase.FORWARD:
            continue
        for m in ancestors(op.module):
            last[m] = op
        inside_reader = set(ancestors(op.module))
        for t in op.inputs:
            p = producer[t]
            if p is None or p.phase is not Phase.FORWARD:
                continue
            for m in ancestors(p.module):
                if m not in inside_reader:
                    out.setdefault(m, set()).add(t)
    for m, op in last.items():
        if not out.get(m):
            out[m] = set(op.outputs)
    return out


def pick_graph(
    ops: Sequence[OpNode],
    metas: Sequence[TensorMeta],
    *,
    module: str | None,
    tensor: str | None,
    phase: str | None,
    measured: np.ndarray | None,
) -> list[Pick]:
    """The series of one graph for a selection (see the module docstring); ``measured`` (one
    bool per tensor, from a step of the graph) lets unmeasured views stand for their bases."""
    producer, reader = _homes(ops, metas)
    if tensor is not None:
        labels = tensor_labels(ops, metas)
        chosen: dict[str, int] = {}
        for j, label in enumerate(labels):
            home = producer[j] or reader[j]
            if not fnmatch.fnmatchcase(label, tensor) or (measured is not None and not measured[j]):
                continue
            if phase is not None and (home is None or home.phase.label != phase):
                continue
            if module is not None and (home is None or not module_matches(home.module, module)):
                continue
            chosen[label] = j  # the last version of a label wins
        return [Pick(label, np.array([j], dtype=np.int64)) for label, j in chosen.items()]
    glob = "*" if module is None else module
    phase = phase or "forward"
    members: dict[str, set[int]] = {}
    if phase == "forward":
        for m, ts in _module_outputs(ops, metas).items():
            floats = {_measured_base(t, metas, ops, measured) for t in ts if metas[t].dtype in _FLOATS}
            if floats:
                members[m] = floats
    else:
        role = Role.GRADIENT if phase == "backward" else Role.PARAMETER
        last: dict[str, int] = {}
        for j, meta in enumerate(metas):
            if meta.role is role and meta.name is not None:
                last[meta.name] = j
        for name, j in last.items():
            owner = name[: -len(".grad")] if name.endswith(".grad") else name
            for m in ancestors(owner.rpartition(".")[0]):
                members.setdefault(m, set()).add(j)
    return [
        Pick(module_label(m), np.array(sorted(ts), dtype=np.int64))
        for m, ts in sorted(members.items())
        if module_matches(m, glob)
    ]


def module_matches(path: str, glob: str) -> bool:
    """Whether module ``path`` matches ``glob``; the root (``""``) matches a glob that matches
    the empty path (``*``) or its label ``<root>``."""
    if path:
        return fnmatch.fnmatchcase(path, glob)
    return fnmatch.fnmatchcase("", glob) or fnmatch.fnmatchcase(ROOT_LABEL, glob)


def light_labels(
    name: str, kind: LightKind, *, module: str | None, tensor: str | None, suffix: bool
) -> list[str]:
    """The series a light row of ``name`` and ``kind`` belongs to (its labels; none: left out).

    By module, an ``output`` row belongs to its module's series, a parameter's row to the series
    of every module above the parameter; by tensor, a row is its own series (labelled
    ``name [kind]`` with ``suffix``, when rows of several kinds are shown).
    """
    if tensor is not None:
        if not fnmatch.fnmatchcase(name, tensor):
            return []
        owner = name if kind is LightKind.OUTPUT else name.rpartition(".")[0]
        if module is not None and not module_matches(owner, module):
            return []
        return [f"{name} [{kind.label}]" if suffix else name]
    glob = "*" if module is None else module
    paths = [name] if kind is LightKind.OUTPUT else ancestors(name.rpartition(".")[0])
    return [module_label(p) for p in paths if module_matches(p, glob)]
