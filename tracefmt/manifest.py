"""The run manifest: ``RUN/run.json``, written by global rank 0, naming the ranks a run expects.

A run directory holds one ``rank-NNNNN.tft.h5`` per rank.  Without a manifest a reader knows only
the files it finds; with one it can tell "rank 3 wrote nothing" (its file is missing) from "this run
had three ranks".  The manifest is a small JSON object (format 1.2, ``spec/format.md``, "Run
directories"), parsed field by field like every other piece of a trace: :func:`parse_manifest`
returns a :class:`RunManifest` or the :class:`~tracefmt._primitives.Problem` with it, so the reader
(:func:`read_manifest`, which raises) and the validator (which reports) refuse the same things in
the same words.

Example::

    >>> m = RunManifest(run_id="r1", world_size=2, expected_ranks=(0, 1), run_id_source="argument",
    ...                 process_groups=(ProcessGroupInfo(group_id("0", [0, 1]), "0", (0, 1), "gloo"),))
    >>> write_manifest("runs/exp1", m)
    >>> read_manifest("runs/exp1") == m
    True
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from tracefmt import _layout as L
from tracefmt._h5create import fsync_dir  # the writer makes its renames durable the same way
from tracefmt._primitives import Problem, rank_of_name, require
from tracefmt.errors import TraceError, UnsupportedVersionError
from tracefmt.rankinfo import is_int

__all__ = [
    "MANIFEST_NAME",
    "RUN_ID_SOURCES",
    "ProcessGroupInfo",
    "RunManifest",
    "group_id",
    "load_manifest",
    "manifest_path",
    "parse_manifest",
    "read_manifest",
    "write_manifest",
]

MANIFEST_NAME = L.RUN_MANIFEST
#: Where a run's id came from, in the order the recorder tries them.
RUN_ID_SOURCES = ("argument", "TORCHELASTIC_RUN_ID", "c10d_store", "generated")
_VERSION = re.compile(r"([0-9]{1,6})\.([0-9]{1,6})")
T = TypeVar("T")


def group_id(name: str, ranks: Iterable[int]) -> str:
    """A process group's id: its name, ``:``, and 8 hex digits of the SHA-1 of its sorted global
    ranks joined by commas.  Names repeat (every subgroup may be called "1"); ranks tell them apart.

    >>> group_id("0", [1, 0])
    '0:fa583645'
    """
    joined = ",".join(map(str, sorted(ranks)))
    return f"{name}:{hashlib.sha1(joined.encode('ascii')).hexdigest()[:8]}"


@dataclass(frozen=True)
class ProcessGroupInfo:
    """A process group of the run: its id (:func:`group_id`), c10d name, global ranks, backend."""

    id: str
    name: str
    ranks: tuple[int, ...]
    backend: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "ranks": list(self.ranks), "backend": self.backend}


@dataclass(frozen=True)
class RunManifest:
    """What rank 0 knows about the whole run (the content of ``run.json``)."""

    run_id: str
    world_size: int
    expected_ranks: tuple[int, ...]
    run_id_source: str
    process_groups: tuple[ProcessGroupInfo, ...] = ()
    created: str = ""
    writer: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of ``run.json``."""
        return {
            "tracefmt_run": L.FORMAT_VERSION,
            "run_id": self.run_id,
            "world_size": self.world_size,
            "expected_ranks": list(self.expected_ranks),
            "run_id_source": self.run_id_source,
            "process_groups": [g.to_dict() for g in self.process_groups],
            "created": self.created,
            "writer": self.writer,
        }

    def group(self, gid: str) -> ProcessGroupInfo | None:
        """The process group with id ``gid``, or None."""
        return next((g for g in self.process_groups if g.id == gid), None)


def manifest_path(run_dir: str | os.PathLike[str]) -> Path:
    """Where the manifest of ``run_dir`` lives."""
    return Path(run_dir) / MANIFEST_NAME


# -- parsing, one function per field -----------------------------------------------------------
class _Bad(Exception):
    """A field is malformed: carries the :class:`Problem` (internal to this module)."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.message)
        self.problem = problem


def _field(data: Mapping[str, Any], key: str, parse: Callable[[Any], T], default: Any = ...) -> T:
    if key not in data:
        if default is ...:
            raise _Bad(Problem(f"The field {key!r} is missing.", attr=key))
        return parse(default)
    return parse(data[key])


def _fail(key: str, value: Any, wants: str) -> _Bad:
    shown = repr(value)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    return _Bad(Problem(f"The field {key!r} is {shown}, not {wants}.", attr=key))


def parse_version(value: Any) -> tuple[int, int]:
    """``tracefmt_run``: ``"MAJOR.MINOR"`` of the format that wrote it; an unknown major is refused."""
    m = _VERSION.fullmatch(value) if isinstance(value, str) else None
    if m is None:
        raise _fail("tracefmt_run", value, "a string 'MAJOR.MINOR'")
    major, minor = int(m.group(1)), int(m.group(2))
    if major != L.FORMAT_MAJOR:
        raise _Bad(
            Problem(
                f"The manifest has format version {major}.{minor}; this tracefmt reads major "
                f"version {L.FORMAT_MAJOR} only. Install a tracefmt release that supports it.",
                UnsupportedVersionError,
                "tracefmt_run",
            )
        )
    return major, minor


def parse_run_id(value: Any) -> str:
    """``run_id``: a non-empty string, the ``run_id`` of every rank file of the run."""
    if not isinstance(value, str) or not value or len(value) > L.MAX_RUN_ID_CHARS:
        raise _fail("run_id", value, f"a non-empty string of at most {L.MAX_RUN_ID_CHARS} characters")
    return value


def parse_world_size(value: Any) -> int:
    """``world_size``: the number of processes, ``1..MAX_WORLD_SIZE``."""
    if not is_int(value) or not 1 <= value <= L.MAX_WORLD_SIZE:
        raise _fail("world_size", value, f"an integer in 1..{L.MAX_WORLD_SIZE}")
    return int(value)


def parse_ranks(key: str, value: Any, world_size: int) -> tuple[int, ...]:
    """A list of distinct global ranks in ``0..world_size-1``, returned ascending."""
    wants = f"a list of distinct integers in 0..{world_size - 1}"
    if not isinstance(value, list) or len(value) > world_size:
        raise _fail(key, value, wants)
    if not all(is_int(r) and 0 <= r < world_size for r in value) or len(set(value)) != len(value):
        raise _fail(key, value, wants)
    return tuple(sorted(value))


def parse_source(value: Any, minor: int) -> str:
    """``run_id_source``: one of :data:`RUN_ID_SOURCES` (a newer minor version may add others)."""
    if isinstance(value, str) and (value in RUN_ID_SOURCES or (minor > L.FORMAT_MINOR and value)):
        return value
    raise _fail("run_id_source", value, f"one of {', '.join(RUN_ID_SOURCES)}")


def _text(key: str, value: Any, limit: int = L.MAX_STRING_BYTES) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise _fail(key, value, "a string")
    return value


def parse_group(i: int, value: Any, world_size: int) -> ProcessGroupInfo:
    """``process_groups[i]``: ``{"id", "name", "ranks", "backend"}``, the id matching
    :func:`group_id` of its name and ranks."""
    key = f"process_groups[{i}]"
    if not isinstance(value, dict):
        raise _fail(key, value, "a JSON object")
    try:
        name = _field(value, "name", lambda v: _text("name", v))
        ranks = _field(value, "ranks", lambda v: parse_ranks("ranks", v, world_size))
        backend = _field(value, "backend", lambda v: None if v is None else _text("backend", v), None)
        gid = _field(value, "id", lambda v: _text("id", v))
    except _Bad as e:
        raise _Bad(Problem(f"In {key}: {e.problem.message}", attr="process_groups")) from None
    if not ranks:
        raise _fail(f"{key}.ranks", ranks, "a non-empty list of ranks")
    if gid != group_id(name, ranks):
        raise _Bad(
            Problem(
                f"In {key}: the id {gid!r} does not match its name and ranks (expected "
                f"{group_id(name, ranks)!r}: the name, ':', and the first 8 hex digits of the SHA-1 "
                "of the sorted ranks joined by commas).",
                attr="process_groups",
            )
        )
    return ProcessGroupInfo(gid, name, ranks, backend)


def parse_groups(value: Any, world_size: int) -> tuple[ProcessGroupInfo, ...]:
    """``process_groups``: a list of groups with distinct ids."""
    if not isinstance(value, list) or len(value) > L.MAX_PROCESS_GROUPS:
        raise _fail("process_groups", value, f"a list of at most {L.MAX_PROCESS_GROUPS} groups")
    groups = tuple(parse_group(i, g, world_size) for i, g in enumerate(value))
    ids = [g.id for g in groups]
    dup = next((gid for gid in ids if ids.count(gid) > 1), None)
    if dup is not None:
        raise _Bad(Problem(f"The process group id {dup!r} appears twice.", attr="process_groups"))
    return groups


def parse_manifest(data: Any) -> RunManifest | Problem:
    """The :class:`RunManifest` of the decoded JSON ``data``, or the first problem with it.
    Keys this version does not know are ignored (a newer minor version may add some)."""
    if not isinstance(data, dict):
        return Problem("The manifest is not a JSON object.")
    try:
        _, minor = _field(data, "tracefmt_run", parse_version)
        world = _field(data, "world_size", parse_world_size)
        expected = _field(data, "expected_ranks", lambda v: parse_ranks("expected_ranks", v, world))
        if not expected:
            raise _fail("expected_ranks", [], "a non-empty list of ranks")
        return RunManifest(
            run_id=_field(data, "run_id", parse_run_id),
            world_size=world,
            expected_ranks=expected,
            run_id_source=_field(data, "run_id_source", lambda v: parse_source(v, minor)),
            process_groups=_field(data, "process_groups", lambda v: parse_groups(v, world), []),
            created=_field(data, "created", lambda v: _text("created", v, 64), ""),
            writer=_field(data, "writer", lambda v: _text("writer", v, 256), ""),
        )
    except _Bad as e:
        return e.problem


def load_manifest(run_dir: str | os.PathLike[str]) -> RunManifest | Problem | None:
    """The manifest of ``run_dir``: None when there is none, a :class:`Problem` when it cannot be
    read or parsed (too large, not UTF-8, not JSON, a malformed field)."""
    path = manifest_path(run_dir)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return None
    except OSError as e:
        return Problem(f"The manifest cannot be read ({e.strerror or e}).")
    if size > L.MAX_MANIFEST_BYTES:
        return Problem(
            f"The manifest is {size} bytes; the limit is {L.MAX_MANIFEST_BYTES}; it is not a "
            "tracefmt run manifest."
        )
    try:
        raw = path.read_bytes()[: L.MAX_MANIFEST_BYTES + 1]
        text = raw.decode("utf-8")
        data = json.loads(text, parse_constant=_no_constant)
    except OSError as e:
        return Problem(f"The manifest cannot be read ({e.strerror or e}).")
    except UnicodeDecodeError as e:
        return Problem(f"The manifest is not UTF-8 ({e.reason} at byte {e.start}).")
    except (ValueError, RecursionError) as e:
        return Problem(f"The manifest is not valid JSON ({e}); it may have been cut short.")
    return parse_manifest(data)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def read_manifest(run_dir: str | os.PathLike[str]) -> RunManifest | None:
    """The manifest of ``run_dir``, or None when the run has none.

    Raises :class:`~tracefmt.errors.TraceFormatError` (naming the file and the field) when it is
    malformed, :class:`~tracefmt.errors.UnsupportedVersionError` for an unknown major version.
    """
    found = load_manifest(run_dir)
    if found is None:
        return None
    return require(found, str(manifest_path(run_dir)))


def write_manifest(run_dir: str | os.PathLike[str], manifest: RunManifest) -> None:
    """Write ``run.json`` into ``run_dir`` atomically: a temporary file in the same directory,
    fsync, then :func:`os.replace`, so a reader sees the old manifest or the new, never half.

    The manifest is checked with the parser readers use first: one a reader would refuse raises
    :class:`~tracefmt.errors.TraceError` and nothing is written.
    """
    data = manifest.to_dict()
    parsed = parse_manifest(data)
    if isinstance(parsed, Problem):
        raise TraceError(f"Refusing to write an invalid run manifest: {parsed.message}")
    text = json.dumps(data, allow_nan=False) + "\n"
    directory = Path(run_dir)
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{MANIFEST_NAME}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates the file 0600; the manifest is as readable as the rank files beside it.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, directory / MANIFEST_NAME)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(directory)


def _umask() -> int:
    """The process's umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def rank_of_file(path: str | os.PathLike[str]) -> int | None:
    """The rank a rank file's name gives (``rank-00003.tft.h5``: 3), or None for another file:
    the inverse of :func:`tracefmt.rank_file_path`."""
    return rank_of_name(Path(path))
