"""The recorder's options: what to capture, which full values to keep, how to write.

Plain frozen data, checked field by field when built, so a typo fails at ``record(...)`` with a
sentence saying what is allowed, not deep inside a training step.  Nothing here imports torch.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Collection, Iterable
from dataclasses import dataclass

__all__ = ["CAPTURE_KINDS", "ROLE_NAMES", "Options", "ValuesSelection", "select"]

CAPTURE_KINDS = frozenset({"graph", "stats", "values"})
#: Role names a values selection may use (the labels of :class:`tracefmt.model.Role`).
ROLE_NAMES = frozenset(
    {"activation", "input", "parameter", "buffer", "gradient", "optimizer_state", "constant"}
)
_ROLE_ALIASES = {
    "inputs": "input",
    "parameters": "parameter",
    "params": "parameter",
    "buffers": "buffer",
    "gradients": "gradient",
    "grads": "gradient",
    "activations": "activation",
    "optimizer": "optimizer_state",
    "optimizer_states": "optimizer_state",
    "constants": "constant",
}
BACKPRESSURE = frozenset({"block", "drop"})


def _strings(name: str, value: str | Iterable[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = (value,) if isinstance(value, str) else tuple(value)
    for item in items:
        if not isinstance(item, str) or not item:
            raise TypeError(f"select({name}=...) takes non-empty strings, got {item!r}.")
    return items


@dataclass(frozen=True)
class ValuesSelection:
    """Which tensors get their full values recorded.

    Each criterion that is set must hold (they combine with AND); inside one criterion any item
    may match (OR).  ``None`` means "any".  A tensor's module and op are those of the op that
    produced it, or, for a tensor that entered the step from outside (parameters, inputs), of the
    first op that read it.
    """

    roles: frozenset[str] | None = None
    modules: tuple[str, ...] | None = None
    ops: tuple[str, ...] | None = None

    def matches(self, role: str, module: str, op: str) -> bool:
        """True when a tensor of ``role``, made or first read by ``op`` in ``module``, is selected.

        ``op`` is the full overload name (``aten::mm.default``); a pattern may name the packet
        (``aten::mm``) or use globs (``aten::conv*``).
        """
        if self.roles is not None and role not in self.roles:
            return False
        if self.modules is not None and not any(fnmatch.fnmatchcase(module, p) for p in self.modules):
            return False
        if self.ops is not None:
            packet = op.rsplit(".", 1)[0]
            if not any(fnmatch.fnmatchcase(op, p) or fnmatch.fnmatchcase(packet, p) for p in self.ops):
                return False
        return True


ALL_VALUES = ValuesSelection()


def select(
    *,
    roles: str | Iterable[str] | None = None,
    modules: str | Iterable[str] | None = None,
    ops: str | Iterable[str] | None = None,
) -> ValuesSelection:
    """Choose the tensors whose full values are recorded.

    >>> select(roles=["parameters", "gradients"], modules="layers.0.*")
    >>> select(ops="aten::convolution*")

    Roles: ``inputs, parameters, buffers, gradients, activations, optimizer_state, constants`` (the
    singular forms work too).  Modules and ops are ``fnmatch`` globs.
    """
    role_items = _strings("roles", roles)
    role_set: frozenset[str] | None = None
    if role_items is not None:
        normalised = [_ROLE_ALIASES.get(r, r) for r in role_items]
        unknown = sorted(set(normalised) - ROLE_NAMES)
        if unknown:
            raise ValueError(
                f"Unknown role(s) {', '.join(map(repr, unknown))} in select(roles="
                f"...); use {', '.join(sorted(ROLE_NAMES))}."
            )
        role_set = frozenset(normalised)
    return ValuesSelection(role_set, _strings("modules", modules), _strings("ops", ops))


def _positive(
    name: str, value: object, *, allow_zero: bool = False, kind: type | tuple[type, ...] = int
) -> None:
    if isinstance(value, bool) or not isinstance(value, kind):
        raise TypeError(f"record() option {name!r} must be a number, got {value!r}.")
    if value < 0 or (value == 0 and not allow_zero):  # type: ignore[operator]
        raise ValueError(
            f"record() option {name!r} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}."
        )


@dataclass(frozen=True)
class Options:
    """Everything :func:`recorder.record` accepts besides the path, schedule, model and sink."""

    capture: frozenset[str] = frozenset({"graph", "stats"})
    values: ValuesSelection | None = None
    views: bool = False
    hist_bins: int = 0
    source: bool = False
    backpressure: str = "block"
    max_queue_steps: int = 4
    max_queue_bytes: int = 1 << 30
    flush_every_steps: int = 10
    flush_every_seconds: float = 1.0
    rank: int = 0
    world_size: int = 1

    @property
    def stats(self) -> bool:
        return "stats" in self.capture

    @classmethod
    def build(
        cls,
        *,
        capture: str | Collection[str] = ("graph", "stats"),
        values: ValuesSelection | str | None = None,
        views: bool = False,
        hist_bins: int = 0,
        source: bool = False,
        backpressure: str = "block",
        max_queue_steps: int = 4,
        max_queue_bytes: int = 1 << 30,
        flush_every_steps: int = 10,
        flush_every_seconds: float = 1.0,
        rank: int = 0,
        world_size: int = 1,
    ) -> Options:
        """Check every option and return them frozen; raises ``ValueError`` / ``TypeError``."""
        kinds = frozenset((capture,) if isinstance(capture, str) else capture)
        unknown = sorted(kinds - CAPTURE_KINDS)
        if unknown:
            raise ValueError(
                f"record(capture=...) got {', '.join(map(repr, unknown))}; choose "
                f"from {', '.join(sorted(CAPTURE_KINDS))}."
            )
        if "graph" not in kinds:
            raise ValueError(
                "record(capture=...) must include 'graph': statistics and values are "
                "stored against the step's graph."
            )
        if values == "all":
            values = ALL_VALUES
        elif isinstance(values, str):
            raise ValueError(
                f"record(values={values!r}) is not a selection; pass 'all' or "
                "recorder.select(roles=..., modules=..., ops=...)."
            )
        if values is not None and not isinstance(values, ValuesSelection):
            raise TypeError(f"record(values=...) takes recorder.select(...) or 'all', got {values!r}.")
        if "values" in kinds and values is None:
            values = ALL_VALUES
        if values is not None and "values" not in kinds:
            kinds = kinds | {"values"}
        if backpressure not in BACKPRESSURE:
            raise ValueError(
                f"record(backpressure={backpressure!r}) must be 'block' (wait for the "
                "writer) or 'drop' (skip the step and count it)."
            )
        _positive("hist_bins", hist_bins, allow_zero=True)
        if hist_bins > 4096:
            raise ValueError(f"record(hist_bins={hist_bins}) is more than 4096 bins.")
        _positive("max_queue_steps", max_queue_steps)
        _positive("max_queue_bytes", max_queue_bytes)
        _positive("flush_every_steps", flush_every_steps)
        _positive("flush_every_seconds", flush_every_seconds, kind=(int, float))
        _positive("world_size", world_size)
        _positive("rank", rank, allow_zero=True)
        if rank >= world_size:
            raise ValueError(f"record(rank={rank}) must be below world_size={world_size}.")
        for name, flag in (("views", views), ("source", source)):
            if not isinstance(flag, bool):
                raise TypeError(f"record() option {name!r} must be True or False, got {flag!r}.")
        return cls(
            kinds,
            values,
            views,
            hist_bins,
            source,
            backpressure,
            max_queue_steps,
            max_queue_bytes,
            flush_every_steps,
            float(flush_every_seconds),
            rank,
            world_size,
        )
