"""Reading primitives shared by the reader and the validator: each returns a value or a :class:`Problem`.

A rank file is read two ways.  :class:`~tracefmt._rankfile.RankFile` stops at the first problem and
raises it; the validator (:mod:`tracefmt.rules`) reports every problem as a finding and reads on.
Both find rank files, read root attributes, parse the format version, open datasets, check row
ranges, decode tensor dimensions and interned strings through the functions here, so they accept
and refuse the same things in the same words: the reader turns a problem into an exception
(:func:`require`), a rule turns it into a finding.

Example::

    version = read_version(f)           # (1, 1), or a Problem
    major, minor = require(version, str(path))    # the reader: raise TraceFormatError
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import h5py
import numpy as np
from h5py import h5t

from tracefmt import _layout as L
from tracefmt._rows import TensorRow
from tracefmt.errors import (
    TraceCorruptError,
    TraceError,
    TraceFormatError,
    TraceNotFoundError,
    UnsupportedVersionError,
)
from tracefmt.filters import FILTERS
from tracefmt.model import Provenance

T = TypeVar("T")


@dataclass(frozen=True)
class Problem:
    """Why part of a file cannot be used: a whole sentence that does not name the file.

    ``error`` is what the reader raises for it; ``attr`` names the root attribute concerned, if
    any (the validator reports the problem there).
    """

    message: str
    error: type[TraceError] = TraceFormatError
    attr: str | None = None

    def exception(self, where: str) -> TraceError:
        """The reader's exception for this problem in ``where`` (a file, and a step)."""
        return self.error(f"{where}: {self.message}")


class Version(NamedTuple):
    """A format version, ``major.minor``."""

    major: int
    minor: int


class Rank(NamedTuple):
    """Which process of how many wrote a rank file."""

    rank: int
    world_size: int


class Dims(NamedTuple):
    """A tensor's shape and strides (strides all -1: not recorded)."""

    shape: tuple[int, ...]
    strides: tuple[int, ...]


def require(value: T | Problem, where: str) -> T:
    """``value``, or raise the exception of the problem it is (naming ``where``)."""
    if isinstance(value, Problem):
        raise value.exception(where)
    return value


def refuse(problem: Problem | None, where: str) -> None:
    """Raise the exception of ``problem`` (naming ``where``), if there is one."""
    if problem is not None:
        raise problem.exception(where)


# -- rank files -------------------------------------------------------------------------------
def rank_files(path: Path) -> tuple[list[Path], bool]:
    """The rank files ``path`` names, and whether it is a run directory.

    Raises :class:`~tracefmt.errors.TraceNotFoundError` when it names neither a file nor a
    directory with rank files: there is nothing to read or to report on.
    """
    if path.is_dir():
        files = sorted(path.glob(L.RANK_FILE_GLOB))
        if not files:
            raise TraceNotFoundError(
                f"{str(path)!r} is a directory with no rank files "
                f"({L.RANK_FILE_GLOB}); is it a tracefmt run directory?"
            )
        return files, True
    if path.exists():
        return [path], False
    raise TraceNotFoundError(f"No trace file or run directory at {str(path)!r}.")


_RANK_NAME = re.compile(r"rank-([0-9]{1,12})\.tft\.h5")


def rank_of_name(path: Path) -> int | None:
    """The rank a rank file's name gives (``rank-00003.tft.h5``: 3), or None."""
    m = _RANK_NAME.fullmatch(path.name)
    return int(m.group(1)) if m else None


# -- the HDF5 file ---------------------------------------------------------------------------
_SIGNATURE = b"\x89HDF\r\n\x1a\n"


class Superblock(NamedTuple):
    """What is read of an HDF5 superblock: its version and the end of the file it
    records (None when it cannot be read)."""

    version: int
    eof: int | None


def read_superblock(path: Path) -> Superblock | None:
    """The file's HDF5 superblock, or None when there is none.

    The superblock is at offset 0, 512, 1024, 2048, ... (after a user block).
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        offset = 0
        while offset + 64 <= max(size, 64):
            f.seek(offset)
            head = f.read(96)
            if head[:8] == _SIGNATURE and len(head) >= 12:
                version, width = head[8], head[13] if head[8] < 2 else head[9]
                if width not in (2, 4, 8):
                    return Superblock(version, None)
                # Fields before the base address: 16 bytes (v0), 20 (v1), 4 (v2 and v3).
                first = {0: 24, 1: 28}.get(version, 12)
                at = first + 2 * width  # base address, then one more address, then end of file
                if len(head) < at + width:
                    return Superblock(version, None)
                base = int.from_bytes(head[first : first + width], "little")
                eof = int.from_bytes(head[at : at + width], "little")
                return Superblock(version, offset + base + eof if base + eof < 1 << 62 else None)
            offset = 512 if offset == 0 else offset * 2
    return None


def truncation(path: Path) -> Problem | None:
    """Why ``path`` is shorter than its superblock says (a copy cut short, a full disk), or None.
    HDF5 may open such a file and fail only on the first read past the end."""
    block = read_superblock(path)
    size = path.stat().st_size
    if block is not None and block.eof is not None and size < block.eof:
        return Problem(
            f"The file is truncated: it has {size} bytes, and its superblock says {block.eof}.",
            TraceCorruptError,
        )
    return None


# -- root attributes --------------------------------------------------------------------------
def root_attr(f: h5py.File, name: str) -> Any:
    """Root attribute ``name`` as stored, or a :class:`Problem` when it is missing or unreadable.

    Variable-length data is refused before it is read: HDF5 2.0 loops for ever decoding a damaged
    global heap (a zeroed 4 KiB block is enough), and tracefmt writes fixed-length strings.
    """
    try:
        attrs = f.attrs
        if name not in attrs:
            return Problem(f"The root attribute {name!r} is missing.", attr=name)
        kind = attrs.get_id(name).get_type()
        if kind.get_class() == h5t.VLEN or (
            isinstance(kind, h5t.TypeStringID) and kind.is_variable_str()
        ):
            return Problem(
                f"The root attribute {name!r} is variable-length data; the format stores "
                "fixed-length UTF-8 strings and integers, and variable-length data is not read (a "
                "damaged heap can hang HDF5). Rewrite the attribute as a fixed-length string.",
                attr=name,
            )
        return attrs[name]
    except Exception as e:  # a damaged attribute: h5py raises whatever HDF5 hands it
        return Problem(f"The root attribute {name!r} cannot be read ({e}).", attr=name)


def text_value(value: object) -> str | None:
    """An attribute's value as text, or None when it is not a (UTF-8) string."""
    if isinstance(value, (bytes, np.bytes_)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return None
    return str(value) if isinstance(value, str) else None


def int_value(value: object) -> int | None:
    """An attribute's value as an integer, or None when it is not an integer scalar."""
    if isinstance(value, (bool, np.bool_)):
        return None
    return int(value) if isinstance(value, (int, np.integer)) else None


def trace_mark(f: h5py.File) -> Problem | None:
    """Why the HDF5 file ``f`` is not marked as a trace, or None when it is."""
    value = root_attr(f, L.ATTR_MAGIC)
    if isinstance(value, Problem):
        return Problem(f"{value.message} This HDF5 file is not a tracefmt trace.", attr=L.ATTR_MAGIC)
    if text_value(value) != L.FORMAT_MAGIC:
        return Problem(
            f"The root attribute {L.ATTR_MAGIC!r} is {value!r}, not {L.FORMAT_MAGIC!r}; this HDF5 "
            "file is not a tracefmt trace.",
            attr=L.ATTR_MAGIC,
        )
    return None


_VERSION = re.compile(r"([0-9]{1,6})\.([0-9]{1,6})")


def read_version(f: h5py.File) -> Version | Problem:
    """``(major, minor)`` of the ``format_version`` attribute, whatever the major version."""
    value = root_attr(f, L.ATTR_VERSION)
    if isinstance(value, Problem):
        return value
    text = text_value(value)
    m = None if text is None else _VERSION.fullmatch(text)
    if m is None:
        return Problem(f"format_version {value!r} is not a string 'MAJOR.MINOR'.", attr=L.ATTR_VERSION)
    return Version(int(m.group(1)), int(m.group(2)))


def unsupported(version: Version) -> Problem | None:
    """Why a file of ``version`` cannot be read (an unknown major version), or None."""
    if version.major == L.FORMAT_MAJOR:
        return None
    return Problem(
        f"The file has format version {version.major}.{version.minor}; this tracefmt reads major "
        f"version {L.FORMAT_MAJOR} only. Install a tracefmt release that supports version "
        f"{version.major}.",
        UnsupportedVersionError,
        L.ATTR_VERSION,
    )


def read_provenance(f: h5py.File) -> Provenance | Problem:
    """The ``provenance`` attribute: a JSON object naming the software that wrote the file."""
    name = L.ATTR_PROVENANCE
    value = root_attr(f, name)
    if isinstance(value, Problem):
        return value
    text = text_value(value)
    if text is None:
        return Problem("The provenance attribute is not a UTF-8 string.", attr=name)
    try:
        provenance = Provenance.from_json(text)
        data = json.loads(text)
    except (ValueError, RecursionError) as e:
        return Problem(f"The provenance attribute is not valid: {e}.", attr=name)
    for key in ("host", "torch"):
        if key in data and not isinstance(data[key], str):
            return Problem(f"The provenance field {key!r} is {data[key]!r}, not a string.", attr=name)
    return provenance


def read_run_id(f: h5py.File) -> str | Problem:
    """The ``run_id`` attribute: a non-empty string, the same in every rank file of a run."""
    value = root_attr(f, L.ATTR_RUN_ID)
    if isinstance(value, Problem):
        return value
    text = text_value(value)
    if not text:
        return Problem(f"run_id {value!r} is not a non-empty string.", attr=L.ATTR_RUN_ID)
    return text


def read_rank(f: h5py.File) -> Rank | Problem:
    """``(rank, world_size)``: integers with ``0 <= rank < world_size``."""
    rank, world = root_attr(f, L.ATTR_RANK), root_attr(f, L.ATTR_WORLD_SIZE)
    for value in (rank, world):
        if isinstance(value, Problem):
            return value
    r, w = int_value(rank), int_value(world)
    if r is None or w is None:
        return Problem(f"rank {rank!r} and world_size {world!r} must be integers.")
    if not 0 <= r < w:
        return Problem(f"rank {r} is outside 0..world_size-1 (world_size {w}).")
    return Rank(r, w)


def read_values_filter(f: h5py.File) -> str | Problem:
    """The ``values_filter`` attribute: the name of a known filter pipeline."""
    value = root_attr(f, L.ATTR_VALUES_FILTER)
    if isinstance(value, Problem):
        return value
    text = text_value(value)
    if text not in FILTERS:
        return Problem(
            f"values_filter {value!r} is not one of {', '.join(FILTERS)}.", attr=L.ATTR_VALUES_FILTER
        )
    return text


def read_hist_bins(f: h5py.File) -> int | Problem:
    """The ``hist_bins`` attribute: bins per histogram, ``0..MAX_HIST_BINS``."""
    value = root_attr(f, L.ATTR_HIST_BINS)
    if isinstance(value, Problem):
        return value
    bins = int_value(value)
    if bins is None or not 0 <= bins <= L.MAX_HIST_BINS:
        return Problem(
            f"hist_bins {value!r} is not an integer in 0..{L.MAX_HIST_BINS}.", attr=L.ATTR_HIST_BINS
        )
    return bins


# -- datasets and rows ------------------------------------------------------------------------
def open_dataset(f: h5py.File, name: str, dtype: np.dtype[Any] | None) -> h5py.Dataset | Problem:
    """Dataset ``name``, 1-D with rows of ``dtype`` (any rows when ``dtype`` is None)."""
    try:
        # ``in`` then ``[]``, not ``f.get()``: that would call a damaged object header "missing".
        if name not in f:
            return Problem(f"The dataset /{name} is missing.")
        obj = f[name]
        if not isinstance(obj, h5py.Dataset):
            return Problem(f"/{name} is not a dataset; the format wants a dataset of rows there.")
        ndim, found = obj.ndim, obj.dtype
    except Exception as e:  # the link is there, the object header is damaged
        return Problem(
            f"The dataset /{name} cannot be opened ({e}); the file is damaged.", TraceCorruptError
        )
    if ndim != 1 or (dtype is not None and found != dtype):
        wants = "1-D rows" if dtype is None else f"1-D {dtype}"
        return Problem(
            f"The dataset /{name} has dtype {found} and {ndim} dimensions; the format wants {wants}."
        )
    return obj


def rows_in_range(start: int, count: int, length: int, limit: int) -> bool:
    """Whether rows ``[start, start + count)`` lie in a table of ``length`` rows and
    ``count <= limit`` (a hostile count must not make a reader allocate it)."""
    return start >= 0 and 0 <= count <= limit and start + count <= length


# -- decoding ---------------------------------------------------------------------------------
def string_text(
    index: np.ndarray, sid: int, n_bytes: int, read: Callable[[int, int], bytes]
) -> str | Problem:
    """Interned string ``sid`` (not -1), from the whole ``strings/index`` table; ``read(offset,
    length)`` reads bytes of ``strings/bytes``, which has ``n_bytes``."""
    if not 0 <= sid < len(index):
        return Problem(
            f"The string id {sid} is out of range (/{L.STRINGS_INDEX} has {len(index)} rows)."
        )
    offset, length = int(index[sid]["offset"]), int(index[sid]["length"])
    if length > L.MAX_STRING_BYTES:
        return Problem(f"The string {sid} is {length} bytes long; the limit is {L.MAX_STRING_BYTES}.")
    if not rows_in_range(offset, length, n_bytes, L.MAX_STRING_BYTES):
        return Problem(
            f"The string {sid} points outside /{L.STRINGS_BYTES}: bytes {offset}.."
            f"{offset + length} of {n_bytes}."
        )
    try:
        return read(offset, length).decode("utf-8")
    except UnicodeDecodeError as e:
        return Problem(f"The string {sid} is not UTF-8 ({e.reason} at byte {e.start}).")


def tensor_dims(j: int, t: TensorRow, dims: list[int]) -> Dims | Problem:
    """Shape and strides of tensor ``j`` (row ``t``) of a graph whose ``dims`` entries are ``dims``."""
    ndim, d0 = t.ndim, t.dim_start
    if ndim > L.MAX_NDIM or d0 + 2 * ndim > len(dims):
        return Problem(
            f"Tensor {j}'s dimensions lie outside /{L.DIMS}: {ndim} dimensions at entry {d0}, "
            f"of the graph's {len(dims)} entries (the limit is {L.MAX_NDIM} dimensions)."
        )
    shape = tuple(dims[d0 : d0 + ndim])
    if any(d < 0 for d in shape):
        return Problem(f"Tensor {j} has a negative dimension in shape {shape}.")
    return Dims(shape, tuple(dims[d0 + ndim : d0 + 2 * ndim]))
