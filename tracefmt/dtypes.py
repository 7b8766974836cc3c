"""Logical tensor dtypes and how each is stored in HDF5.

HDF5 has no bfloat16 or float8 type, so every dtype has a *storage* dtype: the native HDF5/numpy
type where one exists, otherwise unsigned integers of the same width holding the raw bits.  The
logical dtype is always recorded next to the bits, and :func:`logical_view` gives them back as an
``ml_dtypes`` array.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import ml_dtypes
import numpy as np


class DType(enum.IntEnum):
    """Logical dtypes a trace can name.  The integer codes are part of the format: never renumber."""

    BOOL = 1
    UINT8 = 2
    INT8 = 3
    INT16 = 4
    INT32 = 5
    INT64 = 6
    UINT16 = 7
    UINT32 = 8
    UINT64 = 9
    FLOAT16 = 10
    BFLOAT16 = 11
    FLOAT32 = 12
    FLOAT64 = 13
    COMPLEX64 = 14
    COMPLEX128 = 15
    FLOAT8_E4M3FN = 16
    FLOAT8_E4M3FNUZ = 17
    FLOAT8_E5M2 = 18
    FLOAT8_E5M2FNUZ = 19
    FLOAT8_E8M0FNU = 20
    FLOAT4_E2M1FN_X2 = 21

    @property
    def label(self) -> str:
        """The name torch uses, without the ``torch.`` prefix (``"bfloat16"``)."""
        return self.name.lower()

    @classmethod
    def parse(cls, name: str) -> DType:
        """Parse a dtype name such as ``"bfloat16"`` or ``"torch.float8_e4m3fn"``."""
        key = name.removeprefix("torch.").upper()
        try:
            return cls[key]
        except KeyError:
            raise ValueError(
                f"Unknown dtype {name!r}; expected one of {', '.join(d.label for d in cls)}."
            ) from None


@dataclass(frozen=True)
class DTypeInfo:
    """How a logical dtype is stored: the heap it lives in and how many storage items per element."""

    storage: np.dtype[np.generic]
    per_element: int
    logical: np.dtype[np.generic]

    @property
    def itemsize(self) -> int:
        """Bytes per logical element."""
        return int(self.storage.itemsize) * self.per_element


def _info(storage: str, logical: object, per_element: int = 1) -> DTypeInfo:
    return DTypeInfo(np.dtype(storage), per_element, np.dtype(logical))  # type: ignore[call-overload]


DTYPE_INFO: dict[DType, DTypeInfo] = {
    DType.BOOL: _info("u1", np.bool_),
    DType.UINT8: _info("u1", np.uint8),
    DType.INT8: _info("i1", np.int8),
    DType.INT16: _info("<i2", np.int16),
    DType.INT32: _info("<i4", np.int32),
    DType.INT64: _info("<i8", np.int64),
    DType.UINT16: _info("<u2", np.uint16),
    DType.UINT32: _info("<u4", np.uint32),
    DType.UINT64: _info("<u8", np.uint64),
    DType.FLOAT16: _info("<f2", np.float16),
    DType.BFLOAT16: _info("<u2", ml_dtypes.bfloat16),
    DType.FLOAT32: _info("<f4", np.float32),
    DType.FLOAT64: _info("<f8", np.float64),
    DType.COMPLEX64: _info("<f4", np.complex64, 2),
    DType.COMPLEX128: _info("<f8", np.complex128, 2),
    DType.FLOAT8_E4M3FN: _info("u1", ml_dtypes.float8_e4m3fn),
    DType.FLOAT8_E4M3FNUZ: _info("u1", ml_dtypes.float8_e4m3fnuz),
    DType.FLOAT8_E5M2: _info("u1", ml_dtypes.float8_e5m2),
    DType.FLOAT8_E5M2FNUZ: _info("u1", ml_dtypes.float8_e5m2fnuz),
    DType.FLOAT8_E8M0FNU: _info("u1", ml_dtypes.float8_e8m0fnu),
    # Two float4 values packed in one byte, as torch stores them; the logical view is the byte.
    DType.FLOAT4_E2M1FN_X2: _info("u1", np.uint8),
}

#: The heaps values are stored in, one per storage dtype, named by numpy's dtype name.
STORAGE_HEAPS: tuple[str, ...] = tuple(sorted({i.storage.name for i in DTYPE_INFO.values()}))


def heap_name(dtype: DType) -> str:
    """Name of the value heap (``data/<name>``) holding tensors of ``dtype``."""
    return DTYPE_INFO[dtype].storage.name


def from_numpy(array: np.ndarray) -> DType:
    """The logical dtype of a numpy (or ml_dtypes) array."""
    for dtype, info in DTYPE_INFO.items():
        if dtype is DType.FLOAT4_E2M1FN_X2:
            continue
        if array.dtype == info.logical and (dtype is not DType.BOOL or array.dtype == np.bool_):
            return dtype
    raise ValueError(f"Arrays of numpy dtype {array.dtype} cannot be stored in a trace.")


def to_storage(array: np.ndarray, dtype: DType) -> np.ndarray:
    """The 1-D storage view of a C-contiguous array holding ``dtype`` values (no copy if possible)."""
    info = DTYPE_INFO[dtype]
    flat = np.ascontiguousarray(array).reshape(-1)
    if flat.dtype.itemsize * flat.size != info.itemsize * flat.size:
        raise ValueError(f"An array of numpy dtype {array.dtype} does not hold {dtype.label} values.")
    return flat.view(info.storage)


def logical_view(storage: np.ndarray, dtype: DType, shape: tuple[int, ...]) -> np.ndarray:
    """Reinterpret 1-D storage items as an array of the logical dtype and ``shape``."""
    info = DTYPE_INFO[dtype]
    return storage.view(info.logical).reshape(shape)


def fingerprint(storage: np.ndarray) -> int:
    """The tracefmt content fingerprint of a tensor's bytes, as an unsigned 64-bit integer.

    It is the sum, wrapping modulo 2**64, of the bytes read as little-endian unsigned 64-bit words,
    the last word zero-padded.  One memory pass; every single-bit flip changes it (by 2**k).  The
    recorder computes the same sum on the tensor's own device, so values and statistics agree.
    """
    raw = np.ascontiguousarray(storage).reshape(-1).view(np.uint8)
    whole = raw.size - raw.size % 8
    total = int(raw[:whole].view("<u8").sum(dtype=np.uint64)) if whole else 0
    if whole != raw.size:
        tail = np.zeros(8, dtype=np.uint8)
        tail[: raw.size - whole] = raw[whole:]
        total += int(tail.view("<u8")[0])
    return total % (1 << 64)
