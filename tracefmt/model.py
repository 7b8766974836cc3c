"""The domain types a trace speaks: phases, roles, ops, tensors, statistics, events, provenance.

These are plain frozen dataclasses.  The reader builds them from HDF5 rows; nothing here holds an
h5py object.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tracefmt.dtypes import DType


class Phase(enum.IntEnum):
    """Which part of a training step an op ran in.  Codes are part of the format."""

    OTHER = 0
    FORWARD = 1
    BACKWARD = 2
    OPTIMIZER = 3

    @property
    def label(self) -> str:
        return self.name.lower()


class Role(enum.IntEnum):
    """What a tensor is to the training job.  Codes are part of the format."""

    ACTIVATION = 0
    INPUT = 1
    PARAMETER = 2
    BUFFER = 3
    GRADIENT = 4
    OPTIMIZER_STATE = 5
    CONSTANT = 6

    @property
    def label(self) -> str:
        return self.name.lower()


class StatFlags(enum.IntFlag):
    """Which groups of a ``stats`` row are set (the row's ``flags`` column, spec section 5.7)."""

    MOMENTS = 1  #: min, max, mean, std and norm
    COUNTS = 2  #: nan, inf and zero
    FINGERPRINT = 4  #: fingerprint


class StepFlags(enum.IntFlag):
    """What a step's NaN/Inf counts mean (the ``flags`` column of ``steps`` and, from format 1.4,
    of ``light_steps``; spec section 6.5)."""

    HAS_NAN = 1  #: a counted tensor (or light row) has NaN values
    HAS_INF = 2  #: a counted tensor (or light row) has infinite values
    #: format 1.4: an op (a module in a light step) created NaN/Inf from finite inputs, not from a
    #: constant argument (:mod:`tracefmt.nonfinite`)
    NONFINITE_CREATED = 4
    #: format 1.4: NaN/Inf in the loss, a parameter, a gradient or optimizer state
    NONFINITE_STATE = 8


@dataclass(frozen=True)
class TensorStats:
    """Statistics of one tensor in one step.  Fields that were not computed are ``None``."""

    min: float | None = None
    max: float | None = None
    mean: float | None = None
    std: float | None = None
    norm: float | None = None
    nan: int | None = None
    inf: int | None = None
    zero: int | None = None
    fingerprint: int | None = None

    @property
    def finite(self) -> bool:
        """False when NaN or Inf values were counted (unknown counts count as finite)."""
        return not (self.nan or self.inf)


@dataclass(frozen=True)
class Histogram:
    """Fixed-bin histogram over ``[lo, hi]`` (equal-width bins, ``hi`` included in the last)."""

    lo: float
    hi: float
    counts: tuple[int, ...]


@dataclass(frozen=True)
class TensorMeta:
    """Structural description of a tensor (value) in a step's graph."""

    dtype: DType
    shape: tuple[int, ...]
    strides: tuple[int, ...] | None = None
    device: str = "cpu"
    role: Role = Role.ACTIVATION
    name: str | None = None
    producer: int | None = None
    producer_slot: int = 0
    version: int = 0
    storage_offset: int = 0

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class TensorRecord:
    """One tensor of a loaded step: its metadata, statistics, and (maybe) its values."""

    index: int
    meta: TensorMeta
    stats: TensorStats | None
    histogram: Histogram | None
    has_values: bool
    _load: Callable[[], np.ndarray] | None = field(default=None, repr=False, compare=False)

    @property
    def dtype(self) -> DType:
        return self.meta.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        return self.meta.shape

    @property
    def role(self) -> Role:
        return self.meta.role

    @property
    def name(self) -> str | None:
        return self.meta.name

    def values(self) -> np.ndarray:
        """The recorded values, read now, as an array of the logical dtype (``ml_dtypes`` for
        bfloat16 and float8).  Raises :class:`~tracefmt.TraceError` when none were recorded."""
        from tracefmt.errors import TraceError

        if self._load is None:
            raise TraceError(
                f"Tensor {self.index} ({self.name or 'unnamed'}) has no recorded "
                "values in this step; record it with a values selection."
            )
        return self._load()


@dataclass(frozen=True)
class OpNode:
    """One op of a step's graph, in execution order.

    ``host_ns``, ``device_ns`` and ``mem_bytes`` are its host time, device time and allocated
    bytes; ``host_start_ns`` when it started on the host, in ns after its step's start (the
    instant of the step's ``wall_time``; format 1.3).  Each is ``None`` when not measured (or not
    in the file: a file older than 1.3 has no start times).
    """

    index: int
    name: str
    phase: Phase
    module: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    input_args: tuple[tuple[int, int], ...] = ()
    attrs: Mapping[str, Any] = field(default_factory=dict)
    source: str | None = None
    host_ns: int | None = None
    device_ns: int | None = None
    mem_bytes: int | None = None
    host_start_ns: int | None = None


@dataclass(frozen=True)
class Event:
    """Something that happened in a step: a trigger that fired, dropped data, a note."""

    kind: str
    message: str = ""
    op: int | None = None
    tensor: int | None = None


@dataclass(frozen=True)
class Provenance:
    """Who wrote a file: versions of tracefmt, h5py, HDF5, numpy, torch, Python, and the host."""

    tracefmt: str
    h5py: str
    hdf5: str
    numpy: str
    python: str
    created: str
    host: str = ""
    torch: str | None = None
    #: Other keys, as JSON values: strings mostly; ``distributed`` is an object (format 1.2).
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        data: dict[str, Any] = {
            k: getattr(self, k)
            for k in ("tracefmt", "h5py", "hdf5", "numpy", "python", "created", "host")
        }
        if self.torch is not None:
            data["torch"] = self.torch
        data.update(self.extra)
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Provenance:
        """Parse the provenance attribute; raises ``ValueError`` when a required field is missing."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("provenance is not a JSON object")
        required = ("tracefmt", "h5py", "hdf5", "numpy", "python", "created")
        missing = [k for k in required if not isinstance(data.get(k), str)]
        if missing:
            raise ValueError(f"provenance lacks string field(s) {', '.join(missing)}")
        known = {*required, "host", "torch"}
        torch_version = data.get("torch")
        return cls(
            **{k: data[k] for k in required},
            host=str(data.get("host", "")),
            torch=str(torch_version) if torch_version is not None else None,
            extra={k: v for k, v in data.items() if k not in known},
        )
