"""A model's modules as a trace records them (format 1.5): path, class and parameter counts.

A :class:`ModuleTable` is what ``torch.nn.Module.named_modules()`` says about a model, as plain
data: one :class:`ModuleInfo` per module, the root (path ``""``) first and every module after its
parent.  Parameter counts are given two ways, because a summary needs both:

* ``params`` / ``trainable``: the elements of every parameter in the module's subtree, each
  parameter counted once however many modules hold it (what ``sum(p.numel() for p in
  m.parameters())`` gives; a weight tied between the embedding and the head counts once in the
  root).  The root's counts are the model's totals, without double counting.
* ``own_params`` / ``own_trainable``: the elements of the parameters the module holds itself
  (``m.parameters(recurse=False)``).  Summed over modules they count a shared parameter once per
  module that holds it.

``trainable`` counts the parameters with ``requires_grad``; ``param_bytes`` the bytes of the
subtree's parameters (elements times element size, each parameter once).

The checks here are the format's requirements TF-MODULE-002 (the tree) and TF-MODULE-003 (the
counts): the writer refuses a table that breaks them (``ValueError``), the reader reports it as a
damaged file, and the validator as findings, all from :func:`tree_problems` and
:func:`count_problems`.

Example::

    table = ModuleTable(
        (
            ModuleInfo("", "torch.nn.modules.container.Sequential", 24, 24, 0, 0, 96),
            ModuleInfo("0", "torch.nn.modules.linear.Linear", 24, 24, 24, 24, 96),
        )
    )
    table.total_params            # 24
    table["0"].depth              # 1
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from tracefmt._modlayout import MAX_MODULES

__all__ = ["MAX_MODULES", "ModuleInfo", "ModuleTable", "count_problems", "parent_path", "tree_problems"]

_U64 = 1 << 64
#: (smaller, larger): counts of one module that TF-MODULE-003 orders.
_ORDERED = (
    ("trainable", "params"),
    ("own_params", "params"),
    ("own_trainable", "own_params"),
    ("own_trainable", "trainable"),
)


def parent_path(path: str) -> str | None:
    """The path of the module holding the module at ``path`` (``"h.0.attn"`` -> ``"h.0"``,
    ``"h"`` -> ``""``); None for the root."""
    if not path:
        return None
    return path.rpartition(".")[0]


@dataclass(frozen=True, slots=True)
class ModuleInfo:
    """One module of a model: its path (``""``: the root), its class qualified by its Python
    module (``torch.nn.modules.linear.Linear``; None: unknown) and its parameter counts (see the
    module docstring: subtree counts with each parameter once, own counts, subtree bytes)."""

    path: str
    class_name: str | None
    params: int
    trainable: int
    own_params: int
    own_trainable: int
    param_bytes: int

    @property
    def depth(self) -> int:
        """0 for the root, 1 for its children, and so on."""
        return 0 if not self.path else self.path.count(".") + 1

    @property
    def parent(self) -> str | None:
        """The path of the module holding this one; None for the root."""
        return parent_path(self.path)

    @property
    def short_class(self) -> str | None:
        """The class name without its Python module (``Linear``)."""
        return None if self.class_name is None else self.class_name.rpartition(".")[2]


def tree_problems(paths: Sequence[str]) -> Iterator[tuple[int, str]]:
    """(row, sentence) for each way ``paths`` breaks TF-MODULE-002: a table has 1 to
    :data:`MAX_MODULES` rows, the first is the root ``""``, paths are distinct, no path has an
    empty component, and every other path's parent comes before it."""
    if not 1 <= len(paths) <= MAX_MODULES:
        yield 0, f"A module table has {len(paths)} rows; it must have 1 to {MAX_MODULES}."
        return
    if paths[0] != "":
        yield 0, f"The first module is {paths[0]!r}; a module table starts with the root, path ''."
    seen: set[str] = set()
    for i, path in enumerate(paths):
        if path in seen:
            yield i, f"Module path {path!r} appears twice in one module table."
        elif i and "" in path.split("."):
            yield i, f"Module path {path!r} has an empty component."
        elif i and parent_path(path) not in seen:
            why = f"Module {path!r} comes before its parent {parent_path(path)!r} (or the parent "
            yield i, why + "is missing); a parent comes first, as named_modules() lists them."
        seen.add(path)


def count_problems(modules: Sequence[ModuleInfo]) -> Iterator[tuple[int, str]]:
    """(row, sentence) for each way the counts of ``modules`` break TF-MODULE-003: counts are
    integers in ``0..2**64-1``; ``trainable <= params``, ``own_params <= params``,
    ``own_trainable <= own_params`` and ``own_trainable <= trainable``; ``param_bytes`` is 0
    exactly when ``params`` is; and a module's subtree counts (``params``, ``trainable``,
    ``param_bytes``) are at most its parent's.  A parent the table lacks is TF-MODULE-002's."""
    by_path: dict[str, ModuleInfo] = {}
    for i, m in enumerate(modules):
        numbers = (m.params, m.trainable, m.own_params, m.own_trainable, m.param_bytes)
        if not all(isinstance(n, int) and 0 <= n < _U64 for n in numbers):
            yield i, f"Module {m.path!r} has counts {numbers}; each must be an integer 0..2**64-1."
            continue
        for small, large in _ORDERED:
            if getattr(m, small) > getattr(m, large):
                mine, theirs = getattr(m, small), getattr(m, large)
                yield i, f"Module {m.path!r} has {small} {mine}, more than its {large} {theirs}."
        if (m.params == 0) != (m.param_bytes == 0):
            why = f"Module {m.path!r} has {m.params} parameter elements in {m.param_bytes} bytes; "
            yield i, why + "the bytes are 0 exactly when there are no elements."
        parent = by_path.get(m.parent) if m.parent is not None else None
        if parent is not None:
            for field in ("params", "trainable", "param_bytes"):
                mine, theirs = getattr(m, field), getattr(parent, field)
                if mine > theirs:
                    why = f"Module {m.path!r} has {field} {mine}, more than its parent {parent.path!r} "
                    yield i, why + f"({theirs}); a subtree holds its children's parameters."
        by_path.setdefault(m.path, m)


@dataclass(frozen=True)
class ModuleTable:
    """A model's modules, root first and each after its parent (``named_modules()`` order).

    Built from a sequence of :class:`ModuleInfo`; raises ``ValueError`` when it breaks the
    format's rules (TF-MODULE-002, TF-MODULE-003).  Index it by path (``table["h.0.attn"]``).
    """

    modules: tuple[ModuleInfo, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "modules", tuple(self.modules))
        for problems in (tree_problems([m.path for m in self.modules]), count_problems(self.modules)):
            for _, message in problems:
                raise ValueError(message)

    def __len__(self) -> int:
        return len(self.modules)

    def __iter__(self) -> Iterator[ModuleInfo]:
        return iter(self.modules)

    def __contains__(self, path: object) -> bool:
        return path in self.by_path

    def __getitem__(self, path: str) -> ModuleInfo:
        try:
            return self.by_path[path]
        except KeyError:
            raise KeyError(f"The model has no module {path!r}.") from None

    @functools.cached_property
    def by_path(self) -> dict[str, ModuleInfo]:
        """Every module by its path."""
        return {m.path: m for m in self.modules}

    @property
    def root(self) -> ModuleInfo:
        """The model itself (path ``""``)."""
        return self.modules[0]

    @property
    def total_params(self) -> int:
        """Elements of the model's parameters, each parameter once."""
        return self.root.params

    @property
    def total_trainable(self) -> int:
        """Elements of the model's parameters that require gradients, each parameter once."""
        return self.root.trainable

    @property
    def total_param_bytes(self) -> int:
        """Bytes of the model's parameters, each parameter once."""
        return self.root.param_bytes

    @functools.cached_property
    def digest(self) -> bytes:
        """128-bit BLAKE2b digest of the table: a writer stores equal tables once."""
        rows = [
            (m.path, m.class_name, m.params, m.trainable, m.own_params, m.own_trainable, m.param_bytes)
            for m in self.modules
        ]
        return hashlib.blake2b(repr(rows).encode(), digest_size=16).digest()
