"""The model's modules for the trace (format 1.5): path, class and parameter counts of each.

:func:`module_table` reads them from a ``torch.nn.Module`` (through a DDP or ``torch.compile``
wrapper, so paths are the user's model's, as the ops' module paths are).  A model's modules change
rarely if ever, so :class:`ModuleWatch` builds the table once and builds it again only when a
cheap signature of the model changes (its modules, their classes, and each parameter's identity,
shape, dtype and ``requires_grad``), and that signature is taken only when a flat fingerprint of
the modules' children and parameters changes.  On 2 shared cores the per-step check costs 18 us on
bench/hf_models.py's tiny GPT-2 (34 modules; 83 us with the signature every step); building the
table took 0.9 ms on the GPT example and 4 ms on GPT-2 small, once.  The watch holds the model
weakly.

Example::

    watch = ModuleWatch(model)
    table = watch.changed()     # the table the first time, then None until the model changes
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable

import torch
from torch.nn.parameter import is_lazy

from recorder.tracking import _unwrap
from tracefmt.moduletable import ModuleInfo, ModuleTable

__all__ = ["ModuleWatch", "module_table"]


def _class_name(module: torch.nn.Module) -> str:
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__}"


def _numel(p: torch.Tensor) -> int:
    """Elements of ``p``; 0 for a lazy module's parameter, whose size is not known yet."""
    return 0 if is_lazy(p) else int(p.numel())


def _counts(params: Iterable[torch.Tensor]) -> tuple[int, int, int]:
    """(elements, trainable elements, bytes) of ``params`` (already free of duplicates)."""
    total = trainable = nbytes = 0
    for p in params:
        n = _numel(p)
        total += n
        trainable += n if p.requires_grad else 0
        nbytes += n * p.element_size() if n else 0
    return total, trainable, nbytes


def module_table(model: torch.nn.Module) -> ModuleTable:
    """The :class:`~tracefmt.moduletable.ModuleTable` of ``model``: every module of
    ``named_modules()`` (each once, under its first path), with its subtree's parameter counts
    (each parameter once, as ``module.parameters()`` lists them), its own, and its subtree's
    parameter bytes."""
    rows = []
    for path, module in _unwrap(model).named_modules():
        params, trainable, nbytes = _counts(module.parameters())
        own, own_trainable, _ = _counts(module.parameters(recurse=False))
        rows.append(
            ModuleInfo(
                path=path,
                class_name=_class_name(module),
                params=params,
                trainable=trainable,
                own_params=own,
                own_trainable=own_trainable,
                param_bytes=nbytes,
            )
        )
    return ModuleTable(tuple(rows))


def _signature(model: torch.nn.Module) -> tuple[object, ...]:
    """What :func:`module_table` depends on, compared cheaply: each module's path and class,
    and each of its own parameters' identity (sharing), shape, dtype and ``requires_grad``."""
    return tuple(
        (
            path,
            type(module),
            tuple(
                (id(p), None if is_lazy(p) else p.shape, p.dtype, p.requires_grad)
                for p in module.parameters(recurse=False)
            ),
        )
        for path, module in _unwrap(model).named_modules()
    )


def _quick(refs: list[weakref.ref[torch.nn.Module]]) -> tuple[object, ...] | None:
    """A flat fingerprint of ``modules`` (a model's, in ``named_modules`` order) that changes
    whenever :func:`_signature` can: a child or parameter added, removed or replaced anywhere
    below them changes the identities of some module's children or parameters; a parameter's
    own changes (``requires_grad_``, ``.data`` of another shape or dtype) change its entries.
    About 5x cheaper than :func:`_signature`: no recursion, no generators per module.  None when
    one of the modules is gone."""
    modules = [m for r in refs if (m := r()) is not None]
    if len(modules) < len(refs):
        return None
    children = [id(c) for m in modules for c in m._modules.values()]
    params = [p for m in modules for p in m._parameters.values()]
    return (
        children,
        [id(p) for p in params],
        [None if p is None or is_lazy(p) else (p.shape, p.dtype, p.requires_grad) for p in params],
    )


class ModuleWatch:
    """The module table of a model, built again only when the model changes.

    ``model`` may be None (nothing recorded about modules); it is held weakly, so the watch
    keeps nothing alive after the recording.
    """

    def __init__(self, model: torch.nn.Module | None) -> None:
        self._model = None if model is None else weakref.ref(model)
        self._signature: tuple[object, ...] | None = None
        self._modules: list[weakref.ref[torch.nn.Module]] = []  # when _signature was taken
        self._quick: tuple[object, ...] | None = None  # _quick(self._modules) then

    def changed(self) -> ModuleTable | None:
        """The model's table when it is new (the first call) or the model changed since the last
        call; None when it did not, or there is no model."""
        model = None if self._model is None else self._model()
        if model is None:
            return None
        if self._quick is not None and _quick(self._modules) == self._quick:
            return None
        signature = _signature(model)
        self._modules = [weakref.ref(m) for _, m in _unwrap(model).named_modules()]
        self._quick = _quick(self._modules)
        if signature == self._signature:
            return None
        table = module_table(model)
        self._signature = signature
        return table
