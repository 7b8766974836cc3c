"""The writer process's side of :mod:`recorder.flight.wire`: messages back to records.

The writer process decodes a held step only if it writes it: :meth:`Decoder.decode` with
``lazy=True`` gives a :class:`HeldStep` (the message's bytes, its parsed header and what it
needs of the decoder's state) and :meth:`Decoder.record` makes its record; most held steps fall
out of the ring unread.  For that the decoder keeps each graph structure as the graph first sent
with its digest plus the attributes and offsets changed since (:class:`_Variants`), so that a
held step's graph is rebuilt from those alone, whenever it is written.  Arrays of a decoded
record are views of its message.  Nothing in a message can name code to run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from recorder.flight.wire import (
    NAMED_DTYPES,
    PLAIN_KINDS,
    PREFIX,
    ControlMessage,
    Decoded,
    LightMessage,
    OpenMessage,
    StepMessage,
)
from tracefmt.dtypes import DType
from tracefmt.errors import TraceError
from tracefmt.light import LightStepRecord
from tracefmt.model import Event, Phase, Role
from tracefmt.moduletable import ModuleInfo, ModuleTable
from tracefmt.records import Graph, OpSpec, StepRecord, TensorSpec, decode_attrs
from tracefmt.rngstate import RngState

__all__ = ["Decoder", "HeldStep"]


def _bad(what: str) -> TraceError:
    return TraceError(f"The writer process received a malformed message ({what}); this is a bug.")


class _Variants:
    """One graph structure as the decoder knows it: ``base``, the graph first sent with its
    digest, and the ops' attributes (encoded, as sent) and tensors' storage offsets changed
    since, by index (each step's message says what changed since the step before)."""

    __slots__ = ("_chain", "attrs", "base", "current", "offsets")

    def __init__(self, base: Graph) -> None:
        self.base = base
        self.attrs: dict[int, str | None] = {}
        self.offsets: dict[int, int] = {}
        #: the graph of the latest step, once built; None until it is asked for
        self.current: Graph | None = base
        #: (the graph before the latest change, that change): what ``latest`` builds from
        self._chain: tuple[Graph, list[Any], list[Any]] | None = None

    def change(self, attrs: list[Any], offsets: list[Any]) -> None:
        try:
            new_attrs = {int(i): a for i, a in attrs}  # strings: checked when decoded
            new_offsets = {int(i): int(n) for i, n in offsets}
        except (TypeError, ValueError) as e:
            raise _bad(f"graph changes: {e}") from e
        n_ops, n_tensors = self.base.num_ops, self.base.num_tensors
        if any(not 0 <= i < n_ops for i in new_attrs) or any(
            not 0 <= i < n_tensors for i in new_offsets
        ):
            raise _bad("graph changes of ops or tensors the graph does not have")
        self.attrs.update(new_attrs)
        self.offsets.update(new_offsets)
        last, self.current = self.current, None
        changes = (list(new_attrs.items()), list(new_offsets.items()))
        self._chain = None if last is None else (last, *changes)

    def latest(self) -> Graph:
        """The graph of the latest step (from the one before when that was built: few ops)."""
        if self.current is None:
            chain, self._chain = self._chain, None
            if chain is not None:
                self.current = _variant(*chain)
            else:
                self.current = _variant(self.base, list(self.attrs.items()), list(self.offsets.items()))
        return self.current


def _variant(graph: Graph, attrs: Sequence[Any], offsets: Sequence[Any]) -> Graph:
    if not attrs and not offsets:
        return graph
    try:
        return graph.variant(
            attrs={int(i): None if a is None else decode_attrs(a) for i, a in attrs},
            storage_offsets={int(i): int(n) for i, n in offsets},
        )
    except (TypeError, ValueError, IndexError, TraceError) as e:
        raise _bad(f"graph changes: {e}") from e


@dataclass(frozen=True, slots=True)
class HeldStep:
    """A held step as it arrived, not decoded yet (:meth:`Decoder.record` decodes it)."""

    step: int
    buf: bytearray
    header: dict[str, Any]
    graph: _Variants
    #: the changes of ``graph`` as of this step (copies: later steps change the originals)
    attrs: dict[int, str | None]
    offsets: dict[int, int]
    modules: ModuleTable | None

    @property
    def nbytes(self) -> int:
        """The message's bytes (what the ring's budget counts)."""
        return len(self.buf)


class Decoder:
    """The writer process's side: messages back to records.  Arrays are views of the message."""

    def __init__(self) -> None:
        self._graphs: dict[bytes, _Variants] = {}
        self._modules: ModuleTable | None = None  # the last module table a step brought
        self._names: list[str] = []  # the last light names a light step brought

    def _module_table(self, h: dict[str, Any]) -> ModuleTable | None:
        if "modules" in h:
            rows = h["modules"]
            try:
                self._modules = (
                    None if rows is None else ModuleTable(tuple(ModuleInfo(*r) for r in rows))
                )
            except (TypeError, ValueError) as e:
                raise _bad(f"module table: {e}") from e
        return self._modules

    def decode(self, buf: bytearray, *, lazy: bool = False) -> Decoded | HeldStep:
        """The message in ``buf``; with ``lazy``, a held step stays undecoded (a
        :class:`HeldStep`: :meth:`record` decodes it).  Messages must come in the order sent."""
        if len(buf) < PREFIX.size:
            raise _bad("shorter than its prefix")
        total, hlen = PREFIX.unpack_from(buf, 0)
        if total != len(buf) or hlen > total - PREFIX.size:
            raise _bad(f"lengths {total}, {hlen} for {len(buf)} bytes")
        try:
            h = json.loads(bytes(buf[total - hlen :]))
        except ValueError as e:
            raise _bad(f"header: {e}") from e
        kind = h.get("k")
        if kind == "step":
            held = self._held(buf, h)
            if lazy and held.header["hold"]:
                return held
            return StepMessage(bool(h["hold"]), self._record(held, held.graph.latest()))
        if kind == "light":
            return LightMessage(self._light(buf, h))
        if kind == "open":
            return OpenMessage(dict(h["args"]))
        if kind in ("flush", "release", "bye"):
            return ControlMessage(kind, int(h["seq"]))
        raise _bad(f"kind {kind!r}")

    def _array(self, buf: bytearray, spec: list[Any]) -> np.ndarray:
        code, shape, offset, nbytes = spec
        dtype = NAMED_DTYPES.get(code)
        if dtype is None:
            dtype = np.dtype(code)
            if dtype.kind not in PLAIN_KINDS:
                raise _bad(f"dtype {code!r}")
        count = 1
        for d in shape:
            count *= int(d)
        if count * dtype.itemsize != nbytes or offset < 0 or offset + nbytes > len(buf):
            raise _bad(f"array {spec}")
        return np.frombuffer(buf, dtype=dtype, count=count, offset=offset).reshape(shape)

    def _graph(self, h: dict[str, Any]) -> _Variants:
        """The step's graph structure, with the step's changes applied to it."""
        digest = bytes.fromhex(h["digest"])
        if "graph" in h:
            g = h["graph"]
            ops = tuple(
                OpSpec(n, Phase(p), m, tuple((a, b, c) for a, b, c in ins), tuple(outs), at, src)
                for n, p, m, ins, outs, at, src in g["ops"]
            )
            tensors = tuple(
                TensorSpec(
                    DType(dt),
                    tuple(shape),
                    None if strides is None else tuple(strides),
                    dev,
                    Role(role),
                    name,
                    prod,
                    slot,
                    ver,
                    off,
                )
                for dt, shape, strides, dev, role, name, prod, slot, ver, off in g["tensors"]
            )
            graph = Graph(ops, tensors)
            if graph.digest != digest:
                raise _bad("a graph whose digest differs from the one sent with it")
            variants = self._graphs[digest] = _Variants(graph)
            return variants
        variants = self._graphs.get(digest)  # type: ignore[assignment]
        if variants is None:
            raise _bad(f"graph {h['digest']} was never sent")
        attrs, offsets = h.get("attrs") or [], h.get("offsets") or []
        if attrs or offsets:
            variants.change(attrs, offsets)
        return variants

    def _held(self, buf: bytearray, h: dict[str, Any]) -> HeldStep:
        """What a step needs of this decoder's state, taken now (steps change the state)."""
        variants = self._graph(h)
        return HeldStep(
            int(h["step"]),
            buf,
            h,
            variants,
            dict(variants.attrs),
            dict(variants.offsets),
            self._module_table(h),
        )

    def record(self, held: HeldStep) -> StepRecord:
        """The record of a held step (its arrays are views of its message)."""
        g = held.graph
        if held.attrs == g.attrs and held.offsets == g.offsets:
            graph = g.latest()  # nothing changed since: the latest graph is this step's
        else:
            graph = _variant(g.base, list(held.attrs.items()), list(held.offsets.items()))
        return self._record(held, graph)

    def _record(self, held: HeldStep, graph: Graph) -> StepRecord:
        arr, buf, h = self._array, held.buf, held.header
        return StepRecord(
            step=held.step,
            graph=graph,
            stats=arr(buf, h["stats"]) if "stats" in h else None,
            op_stats=arr(buf, h["op_stats"]) if "op_stats" in h else None,
            op_starts=arr(buf, h["op_starts"]) if "op_starts" in h else None,
            values={int(t): arr(buf, spec) for t, spec in h["values"]},
            histograms={int(t): (lo, hi, arr(buf, spec)) for t, lo, hi, spec in h["hists"]},
            events=[Event(k, m, op, t) for k, m, op, t in h["events"]],
            scalars={k: v for k, v in h["scalars"]},
            wall_time=h["wall_time"],
            duration=h["duration"],
            dropped=int(h["dropped"]),
            modules=held.modules,
            rng_states=self._rng_states(buf, h.get("rng") or []),
        )

    def _light_names(self, h: dict[str, Any]) -> list[str]:
        if "names" in h:
            names = h["names"]
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise _bad("light step names")
            self._names = names
        return self._names

    def _rng_states(self, buf: bytearray, specs: list[Any]) -> tuple[RngState, ...]:
        try:
            return tuple(RngState(str(d), self._array(buf, spec).tobytes()) for d, spec in specs)
        except (TypeError, ValueError) as e:
            raise _bad(f"RNG states: {e}") from e

    def _light(self, buf: bytearray, h: dict[str, Any]) -> LightStepRecord:
        return LightStepRecord(
            step=int(h["step"]),
            names=self._light_names(h),
            rows=self._array(buf, h["rows"]),
            scalars={k: v for k, v in h["scalars"]},
            events=[Event(k, m, op, t) for k, m, op, t in h["events"]],
            wall_time=h["wall_time"],
            duration=h["duration"],
        )
