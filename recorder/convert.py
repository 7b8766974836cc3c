"""Translations between torch objects and what a trace stores: dtypes, raw bits, JSON attributes."""

from __future__ import annotations

import enum
import re
import weakref
from collections.abc import MutableMapping
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
import torch
from torch.utils.weak import WeakTensorKeyDictionary

from tracefmt.dtypes import DType

_NAMES = [
    "bool",
    "uint8",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "bfloat16",
    "float32",
    "float64",
    "complex64",
    "complex128",
    "float8_e4m3fn",
    "float8_e4m3fnuz",
    "float8_e5m2",
    "float8_e5m2fnuz",
    "float8_e8m0fnu",
    "float4_e2m1fn_x2",
]

#: ``torch.cuda.Event``, typed loosely: torch leaves its constructor and methods unannotated
#: (:class:`DeviceEvent` says what the recorder uses of one).
CudaEvent: Any = torch.cuda.Event


class DeviceEvent(Protocol):
    """What the recorder uses of a ``torch.cuda.Event``."""

    def record(self) -> None: ...

    def synchronize(self) -> None: ...

    def elapsed_time(self, end_event: Any) -> float: ...


_V = TypeVar("_V")


def weak_tensor_map() -> MutableMapping[torch.Tensor, str]:
    """Tensor object -> name, holding no reference to the tensors (a ``WeakTensorKeyDictionary``:
    keyed by identity, since tensors compare elementwise)."""
    return WeakTensorKeyDictionary()


class TensorMap(Generic[_V]):
    """A map keyed by tensor *object*, holding only weak references to the keys.

    The per-op hot path of the capture: ``WeakTensorKeyDictionary.get`` builds a weak reference
    per lookup (about 4 us); this is a dict on ``id(t)`` whose entries keep a weak reference to
    check that the object at that id is still the one stored (ids are reused once a tensor dies),
    about 0.3 us.  Entries of dead tensors stay until the map is dropped (one step).
    """

    __slots__ = ("_d",)

    def __init__(self) -> None:
        self._d: dict[int, tuple[weakref.ref[torch.Tensor], _V]] = {}

    def get(self, t: torch.Tensor) -> _V | None:
        """The value stored for the object ``t``, or None."""
        entry = self._d.get(id(t))
        if entry is not None and entry[0]() is t:
            return entry[1]
        return None

    def __setitem__(self, t: torch.Tensor, value: _V) -> None:
        self._d[id(t)] = (weakref.ref(t), value)


#: torch dtype -> tracefmt logical dtype, for every dtype both know.
TORCH_TO_DTYPE: dict[torch.dtype, DType] = {
    getattr(torch, n): DType.parse(n) for n in _NAMES if hasattr(torch, n)
}

# dtypes numpy cannot hold: read their raw bits through an unsigned integer of the same width.
_RAW_BITS: dict[torch.dtype, torch.dtype] = {
    d: torch.uint8
    for n in _NAMES
    if n.startswith("float8") or n.startswith("float4")
    for d in [getattr(torch, n, None)]
    if d is not None
}
_RAW_BITS[torch.bfloat16] = torch.int16

_RAW_NUMPY = {torch.int16: np.uint16, torch.uint8: np.uint8}


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A C-contiguous CPU numpy array holding ``t``'s values or, for dtypes numpy lacks
    (bfloat16, float8), their raw bits as unsigned integers of the same width."""
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous()
    raw = _RAW_BITS.get(t.dtype)
    if raw is not None:
        return t.view(raw).numpy().view(_RAW_NUMPY[raw])
    return t.numpy()


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")

#: A tensor argument of an op: (tensor, argument position, item in a list argument or -1), the
#: order of :data:`recorder.captured.InputRef`.  A plain tuple, always unpacked: an op has a few.
ArgTensor = tuple[torch.Tensor, int, int]


def collect_arg(a: object, pos: int, name: str, tensors: list[ArgTensor], attrs: dict[str, Any]) -> None:
    """Sort op argument ``a`` (position ``pos``, schema name ``name``): tensors, also in a list
    (``Tensor[]``) or a list of lists (c10d's ``Tensor[][]``, items numbered in flat order), go to
    ``tensors``; anything else to ``attrs`` as JSON data, except script objects (a c10d
    ProcessGroup, ReduceOp or Work: the op's ``"c10d"`` attribute says what they mean)."""
    if isinstance(a, torch.Tensor):
        tensors.append((a, pos, -1))
    elif isinstance(a, (list, tuple)) and any(isinstance(x, torch.Tensor) for x in a):
        for item, x in enumerate(a):
            if isinstance(x, torch.Tensor):
                tensors.append((x, pos, item))
    elif isinstance(a, (list, tuple)) and a and all(isinstance(x, (list, tuple)) for x in a):
        flat = [x for inner in a for x in inner]
        if any(isinstance(x, torch.Tensor) for x in flat):
            for item, x in enumerate(flat):
                if isinstance(x, torch.Tensor):
                    tensors.append((x, pos, item))
        else:
            attrs[name] = json_value(a)
    elif not isinstance(a, torch.ScriptObject):
        attrs[name] = json_value(a)


def json_value(value: Any) -> Any:
    """A non-tensor op argument as JSON data (numbers, strings, lists, dicts, None).

    dtypes, devices, layouts and memory formats become their names; symbolic sizes their ``repr``;
    anything else its ``repr`` without memory addresses (``<... object at 0x7f...>`` would make
    every step's graph differ), so an attribute never needs code to read back.
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value  # tracefmt.records.encode_attrs keeps inf and nan
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    if isinstance(value, (torch.dtype, torch.device, torch.layout, torch.memory_format)):
        return str(value)
    if isinstance(value, (torch.SymInt, torch.SymFloat, torch.SymBool)):
        return repr(value)
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, complex):
        return {"real": value.real, "imag": value.imag}
    if isinstance(value, torch.Generator):
        return f"torch.Generator(device='{value.device}')"
    return _ADDRESS.sub("", repr(value))


def held_storages(tensors: list[ArgTensor]) -> set[int]:
    """The storage addresses of an op's tensor arguments: the storages its outputs hold apart
    from these are the op's new memory (``mem_bytes``, spec 5.8)."""
    return {s[0] for t, _, _ in tensors if (s := storage_extent(t)) is not None}


def storage_extent(t: torch.Tensor) -> tuple[int, int] | None:
    """Address and bytes of ``t``'s storage; None without a usable one (DTensor; a functional
    collective's result, its storage invalid to Python until waited on)."""
    try:
        storage = t.untyped_storage()
        return storage.data_ptr(), storage.nbytes()
    except (RuntimeError, NotImplementedError, TypeError):
        return None
