"""Which graph tensor each tensor object holds now: identity, versions and storage generations.

Identity: ``id(tensor)`` is reused within a step, so tensor objects are keyed by object (a
:class:`recorder.convert.TensorMap`: a dict on ``id`` whose entries keep a weak reference to
check that the object at that id is still the one stored).  Each entry is a :class:`Slot`: the
graph tensor (value) the object holds now.  An op that writes a tensor gives it a new value with
the next version.  A write also bumps a generation counter of the storage, so another object
viewing the same storage is known to be stale and is read as a new value from outside rather
than linked to the wrong producer.

Blank bytes.  The output of an op that allocates without writing (``empty``, ``empty_like``, ...)
holds whatever the allocator left, and code outside the dispatcher may fill it before an op reads
it: DDP's first bucket rebuild writes its bucket indices into an ``at::empty`` tensor through a
``TensorAccessor`` (``Reducer::sync_bucket_indices``) and then ``copy_``-s it to the tensor it
broadcasts.  Such a storage is *blank* until an op writes it; its values (the output and any view
of it) carry a negative generation (``~gen``), so :meth:`TensorTable.current` refuses them
without a check of its own, and only then does the capture ask :meth:`TensorTable.blank_value`
whether the bytes are still as the allocating op left them.  An op that reads them (a ``copy_``
from them, a ``clone``) gets a new value read from outside the step, measured like a parameter:
the record then holds what was actually read.  An op that only writes them, views them, or reads
their shape keeps the link to the allocating op (nothing is measured: uninitialized memory).
"""

from __future__ import annotations

import weakref

import torch

from recorder.captured import TensorRow
from recorder.convert import TORCH_TO_DTYPE, ArgTensor, TensorMap
from tracefmt.model import Role

__all__ = ["Slot", "TensorTable", "storage_key"]

#: Builds a :class:`TensorRow` per value (see ``recorder.capture._new``): about half the cost of
#: the row's own ``__new__``, which is Python code; it does not check the fields' types.
_new = tuple.__new__


def storage_key(t: torch.Tensor) -> int | None:
    """The address of ``t``'s storage (without building a storage object); None for none."""
    try:
        ptr = int(t.data_ptr() - t.storage_offset() * t.element_size())
    except (RuntimeError, NotImplementedError):
        return None
    return ptr or None


class Slot:
    """The value a tensor object holds now, and the storage generation it was read at."""

    __slots__ = ("gen", "history", "key", "name", "role", "value", "version")

    def __init__(
        self, value: int, key: int | None, gen: int, version: int, role: Role, name: str | None
    ) -> None:
        self.value, self.key, self.gen, self.version = value, key, gen, version
        self.role, self.name = role, name
        #: every value the object has held in this step, so a late name reaches all of them
        self.history = [value]


class TensorTable:
    """The graph tensors of one step (``rows``, with ``roles`` and ``names`` alongside) and the
    :class:`Slot` of every tensor object seen, with the names known for tensor objects."""

    def __init__(self) -> None:
        self.rows: list[TensorRow] = []
        self.roles: list[Role] = []
        self.names: list[str | None] = []
        self._objects: TensorMap[Slot] = TensorMap()
        self._named: TensorMap[tuple[Role, str]] = TensorMap()
        self._gens: dict[int, int] = {}
        #: blank storages (module docstring): key -> the generation their values were made at,
        #: and the storage (torch keeps one Python object per storage; while it lives, no other
        #: storage has its address)
        self._blank: dict[int, tuple[int, weakref.ref[torch.UntypedStorage]]] = {}
        self._devices: dict[torch.device, str] = {}
        #: The slot of a tensor object, if it has one (the map's own method: this is per input).
        self.slot = self._objects.get
        #: The role and name given to a tensor object, if any.

    def name(self, t: torch.Tensor, role: Role, name: str) -> None:
        """Give ``t`` (and every value it has held in this step) a role and a name."""
        self._named[t] = (role, name)
        slot = self._objects.get(t)
        if slot is not None and slot.name != name:
            slot.role, slot.name = role, name
            for i in slot.history:
                self.roles[i], self.names[i] = role, name

    def current(self, t: torch.Tensor) -> int | None:
        """The value ``t`` holds, unless it is unknown or its storage was written through
        another object since (then ``t`` must be read again with :meth:`read`)."""
        slot = self._objects.get(t)
        if slot is not None and (slot.key is None or self._gens.get(slot.key, 0) == slot.gen):
            return slot.value
        return None

    def read(self, t: torch.Tensor) -> int:
        """A new value for ``t`` read from outside the step (or after a write through another
        object): it keeps the role and name ``t`` has, with the next version."""
        slot = self._objects.get(t)
        version = 0 if slot is None else slot.version + 1
        named = self._named.get(t)
        name: str | None
        if named is not None:
            role, name = named
        elif slot is not None:
            role, name = slot.role, slot.name
        else:
            role, name = Role.INPUT, None
        key = storage_key(t)
        if self._blank and key is not None:
            self._blank.pop(key, None)  # its bytes are measured now: no longer blank
        return self._add(t, -1, 0, version, role, name, key, slot).value

    def blank(self, t: torch.Tensor, slot: Slot) -> None:
        """Mark ``t``'s value (``slot``), just made by an op that does not write its output
        (``empty``), as blank bytes (module docstring)."""
        if slot.key is None or slot.gen < 0:
            return
        try:
            storage = t.untyped_storage()
        except (RuntimeError, NotImplementedError, TypeError):
            return
        self._blank[slot.key] = (slot.gen, weakref.ref(storage))
        slot.gen = ~slot.gen

    def blank_value(self, t: torch.Tensor) -> int | None:
        """The value ``t`` holds if it is blank bytes no op has written since an op allocated
        them (module docstring), else None.  Asked only when :meth:`current` is None."""
        slot = self._objects.get(t)
        if slot is None or slot.key is None or slot.gen >= 0:
            return None
        gen = ~slot.gen
        if self._blank_gen(slot.key) == gen and self._gens.get(slot.key, 0) == gen:
            return slot.value
        return None

    def _blank_gen(self, key: int) -> int | None:
        """The generation at which storage ``key`` became blank, while it still exists."""
        found = self._blank.get(key)
        if found is None:
            return None
        if found[1]() is None:  # freed: its address may hold another storage now
            del self._blank[key]
            return None
        return found[0]

    def write(
        self,
        o: torch.Tensor,
        previous: Slot | None,
        op: int,
        op_slot: int,
        written: bool,
        again: bool,
        grad_of: str | None,
    ) -> Slot:
        """The new value of ``o``, output ``op_slot`` of op ``op``; ``previous``: its slot.

        ``written``: the op wrote ``o`` (a new version of it); ``again``: ``o`` was an input of
        the op too (written, or handed back as it was), so it keeps its role and name.
        ``grad_of``: the parameter whose gradient the op (``AccumulateGrad``) makes.
        """
        key = storage_key(o)
        if written and key is not None:
            self._gens[key] = self._gens.get(key, 0) + 1
            if self._blank:
                self._blank.pop(key, None)
        if previous is not None and again:
            version = previous.version + (1 if written else 0)
            role, name = previous.role, previous.name
        else:
            version = 0
            named: tuple[Role, str] | None = self._named.get(o)
            if named is not None:
                role, name = named
            elif grad_of is not None:
                role, name = Role.GRADIENT, f"{grad_of}.grad"
                self._named[o] = (role, name)
            else:
                role, name = Role.ACTIVATION, None
        return self._add(o, op, op_slot, version, role, name, key, previous)

    def same_bytes(self, o: torch.Tensor, inputs: list[ArgTensor]) -> int | None:
        """The value of an input whose bytes ``o`` shares exactly (``detach``, ``_unsafe_view``,
        ``alias``, a reshape of a contiguous tensor), if any."""
        ptr = o.data_ptr()
        for t, _, _ in inputs:
            if (
                t.data_ptr() == ptr
                and t.dtype == o.dtype
                and t.numel() == o.numel()
                and t.is_contiguous()
                and o.is_contiguous()
            ):
                slot = self._objects.get(t)
                if slot is not None:
                    return slot.value
        return None

    def _add(
        self,
        t: torch.Tensor,
        producer: int,
        producer_slot: int,
        version: int,
        role: Role,
        name: str | None,
        key: int | None,
        slot: Slot | None,
    ) -> Slot:
        """A new graph tensor for the value ``t`` holds now; ``slot``: ``t``'s slot, if any."""
        device = self._devices.get(t.device)
        if device is None:
            device = self._devices[t.device] = str(t.device)
        index = len(self.rows)
        dtype, shape, offset = TORCH_TO_DTYPE[t.dtype], tuple(t.shape), t.storage_offset()
        row = (dtype, shape, t.stride(), device, producer, producer_slot, version, offset)
        self.rows.append(_new(TensorRow, row))
        self.roles.append(role)
        self.names.append(name)
        gen = self._gens.get(key, 0) if key else 0
        if self._blank and key and self._blank_gen(key) == gen:
            gen = ~gen  # a view of blank bytes is blank too
        if slot is None:
            slot = Slot(index, key, gen, version, role, name)
            self._objects[t] = slot
        else:
            slot.value, slot.key, slot.gen, slot.version = index, key, gen, version
            slot.role, slot.name = role, name
            slot.history.append(index)
        return slot
