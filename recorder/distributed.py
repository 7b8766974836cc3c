"""Where this process stands in a distributed run, and the run id every rank agrees on.

Under ``torchrun`` (or any launcher that sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``LOCAL_WORLD_SIZE``, ``GROUP_RANK``, ``TORCHELASTIC_RUN_ID``) or with an initialised default
process group, :func:`recorder.record` writes one file per rank into one run directory.  The
decisions are pure functions of their inputs (:func:`resolve_placement`, :func:`resolve_run_id`),
tested with plain dicts; :func:`locate` feeds them the live environment and process group.

The run id, in order: ``record(run_id=...)``; ``TORCHELASTIC_RUN_ID`` (its value ``none`` is
torchrun's default without ``--standalone`` or ``--rdzv-id`` and means unset); agreed through the
default process group's c10d store (``compare_set`` on a ``tracefmt/`` key: the first rank's id
wins on every rank, one store round trip at ``record()`` start, never a collective); a new uuid.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import os
import socket
import uuid
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tracefmt import __version__ as tracefmt_version
from tracefmt.errors import TraceError
from tracefmt.manifest import (
    ProcessGroupInfo,
    RunManifest,
    group_id,
    manifest_path,
    rank_of_file,
    write_manifest,
)

__all__ = [
    "ENV_VARS",
    "GroupState",
    "Located",
    "ManifestKeeper",
    "Placement",
    "RunIdChoice",
    "current_group",
    "default_group_info",
    "locate",
    "resolve_placement",
    "resolve_run_id",
    "store_agreement",
]

#: The launcher's environment variables the recorder reads.
ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "TORCHELASTIC_RUN_ID")
#: The value torchrun gives ``TORCHELASTIC_RUN_ID`` when no rendezvous id was chosen.
_UNSET_RUN_ID = "none"
#: Store keys live under this prefix (inside the default group's own ``default_pg/0/`` prefix).
STORE_PREFIX = "tracefmt/"
_recordings = itertools.count()  # the n-th record() of this process agrees on key .../n


@dataclass(frozen=True)
class GroupState:
    """What an initialised default process group says about this process."""

    rank: int
    world_size: int
    backend: str | None
    name: str = "0"


@dataclass(frozen=True)
class Placement:
    """This process's place in the run: global rank and world size, and where known (else None)
    its rank and the process count on its node, the node's rank, and the process group backend.
    ``distributed`` is False for a lone process (no launcher variables, no process group, no
    ``world_size`` above 1): its files carry no distributed provenance."""

    rank: int
    world_size: int
    local_rank: int | None = None
    local_world_size: int | None = None
    node_rank: int | None = None
    backend: str | None = None
    distributed: bool = False

    def provenance(self, run_id_source: str, *, hostname: str, pid: int) -> dict[str, Any]:
        """The ``"distributed"`` object of a rank file's provenance (format 1.2)."""
        return {
            "rank": self.rank,
            "world_size": self.world_size,
            "local_rank": self.local_rank,
            "local_world_size": self.local_world_size,
            "node_rank": self.node_rank,
            "hostname": hostname,
            "pid": pid,
            "run_id_source": run_id_source,
            "backend": self.backend,
        }


@dataclass(frozen=True)
class RunIdChoice:
    """The run id, where it came from (:data:`tracefmt.manifest.RUN_ID_SOURCES`), and a warning
    to show when the ranks may not share it."""

    run_id: str
    source: str
    warning: str | None = None


def _env_int(env: Mapping[str, str], name: str, minimum: int) -> int | None:
    text = env.get(name)
    if text is None or text.strip() == "":
        return None
    try:
        value = int(text.strip())
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise ValueError(
            f"The environment variable {name}={text!r} is not an integer of at least {minimum}; "
            "fix the launcher's environment, or pass record(rank=..., world_size=...)."
        )
    return value


def resolve_placement(
    env: Mapping[str, str],
    *,
    rank: int | None = None,
    world_size: int | None = None,
    group: GroupState | None = None,
) -> Placement:
    """Rank and world size: explicit arguments win, then an initialised default process group,
    then ``RANK``/``WORLD_SIZE``, else a lone process (0 of 1).

    >>> resolve_placement({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}).rank
    1
    """
    env_rank = _env_int(env, "RANK", 0)
    env_world = _env_int(env, "WORLD_SIZE", 1)
    found_rank, found_world = env_rank, env_world
    if group is not None:
        found_rank, found_world = group.rank, group.world_size
    if (found_rank is None) != (found_world is None) and (rank is None or world_size is None):
        given, missing = ("RANK", "WORLD_SIZE") if found_world is None else ("WORLD_SIZE", "RANK")
        raise ValueError(
            f"The environment sets {given} but not {missing}; set both, or pass "
            "record(rank=..., world_size=...)."
        )
    final_rank = rank if rank is not None else (found_rank or 0)
    final_world = world_size if world_size is not None else (found_world or 1)
    if final_rank >= final_world:
        where = "the process group" if group is not None else "the environment"
        raise ValueError(
            f"Rank {final_rank} is outside world size {final_world} (rank from "
            f"{'record(rank=...)' if rank is not None else where}, world size from "
            f"{'record(world_size=...)' if world_size is not None else where}, where unset "
            "means a lone process, 0 of 1); pass both record(rank=..., world_size=...) or neither."
        )
    launched = env_rank is not None or env_world is not None or group is not None
    return Placement(
        rank=final_rank,
        world_size=final_world,
        local_rank=_env_int(env, "LOCAL_RANK", 0),
        local_world_size=_env_int(env, "LOCAL_WORLD_SIZE", 1),
        node_rank=_env_int(env, "GROUP_RANK", 0),
        backend=group.backend if group is not None else None,
        distributed=launched or final_world > 1,
    )


def resolve_run_id(
    explicit: str | None,
    env: Mapping[str, str],
    *,
    world_size: int,
    agree: Callable[[str], str] | None = None,
    new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
) -> RunIdChoice:
    """The run id every rank shares.  ``agree`` (given when a default process group is
    initialised) offers a candidate to the c10d store and returns the id the store holds.

    >>> resolve_run_id(None, {"TORCHELASTIC_RUN_ID": "job-7"}, world_size=2).source
    'TORCHELASTIC_RUN_ID'
    """
    if explicit is not None:
        if not isinstance(explicit, str) or not explicit.strip():
            raise ValueError(f"record(run_id=...) must be a non-empty string, got {explicit!r}.")
        return RunIdChoice(explicit, "argument")
    elastic = env.get("TORCHELASTIC_RUN_ID", "").strip()
    if elastic and elastic != _UNSET_RUN_ID:
        return RunIdChoice(elastic, "TORCHELASTIC_RUN_ID")
    mine = new_id()
    if agree is not None:
        try:
            return RunIdChoice(agree(mine), "c10d_store")
        except Exception as e:  # the store is the user's; any failure of it falls back
            return RunIdChoice(
                mine,
                "generated",
                f"The recorder could not agree on a run id through the c10d store ({e}); this "
                f"rank's files carry the generated id {mine!r}, which other ranks may not share. "
                "Pass record(run_id=...) with the same value on every rank.",
            )
    if world_size > 1:
        return RunIdChoice(
            mine,
            "generated",
            f"This process is rank 0 of {world_size}, but the ranks cannot agree on a run id: "
            "no default process group is initialised yet and TORCHELASTIC_RUN_ID is unset. Each "
            "rank generates its own id, so tools will see the rank files as different runs. Call "
            "torch.distributed.init_process_group() before recorder.record(), or pass "
            "record(run_id=...) with the same value on every rank.",
        )
    return RunIdChoice(mine, "generated")


# -- the live state ----------------------------------------------------------------------------
def current_group() -> GroupState | None:
    """The initialised default process group, or None (also when torch.distributed is absent)."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        return None
    world = dist.group.WORLD
    name = getattr(world, "group_name", "0") if world is not None else "0"
    return GroupState(dist.get_rank(), dist.get_world_size(), str(dist.get_backend()), str(name))


def default_group_info(group: GroupState) -> ProcessGroupInfo:
    """The manifest entry of the default process group (all ranks)."""
    ranks = tuple(range(group.world_size))
    return ProcessGroupInfo(group_id(group.name, ranks), group.name, ranks, group.backend)


def store_agreement(key: str, get_store: Callable[[], Any]) -> Callable[[str], str]:
    """An ``agree`` for :func:`resolve_run_id`: offer a candidate under ``key`` of the c10d store
    ``get_store()`` returns, with ``compare_set(key, "", candidate)``; the first offer is set and
    every later one gets it back.  One store round trip, no collective."""

    def agree(candidate: str) -> str:
        won = get_store().compare_set(key, "", candidate)
        text = won.decode("utf-8") if isinstance(won, bytes) else str(won)
        if not text:
            raise RuntimeError(f"the store returned an empty value for {key!r}")
        return text

    return agree


def _default_store() -> Any:
    from torch.distributed import distributed_c10d

    return distributed_c10d._get_default_store()


@dataclass(frozen=True)
class Located:
    """What :func:`locate` found: the placement, the run id, the default group if initialised."""

    placement: Placement
    run_id: RunIdChoice
    group: GroupState | None
    hostname: str
    pid: int

    def provenance(self) -> dict[str, Any] | None:
        """The ``"distributed"`` provenance object, None for a lone process."""
        if not self.placement.distributed:
            return None
        return self.placement.provenance(self.run_id.source, hostname=self.hostname, pid=self.pid)


def locate(
    *,
    run_id: str | None,
    rank: int | None,
    world_size: int | None,
    env: Mapping[str, str] | None = None,
) -> Located:
    """Resolve this process's placement and the run id from the live environment and process
    group; warns (on rank 0, or on a rank whose store call failed) when the ranks may not share
    the run id."""
    env = os.environ if env is None else env
    group = current_group()
    placement = resolve_placement(env, rank=rank, world_size=world_size, group=group)
    agree = None
    if group is not None and group.world_size > 1:
        agree = store_agreement(f"{STORE_PREFIX}run_id/{next(_recordings)}", _default_store)
    choice = resolve_run_id(run_id, env, world_size=placement.world_size, agree=agree)
    if choice.warning is not None and (placement.rank == 0 or agree is not None):
        warnings.warn(choice.warning, stacklevel=3)
    return Located(placement, choice, group, socket.gethostname(), os.getpid())


class ManifestKeeper:
    """Global rank 0's ``run.json``: written when recording starts, rewritten (atomically) when a
    captured step names a process group it does not list yet.  Other ranks never write it."""

    def __init__(self, run_dir: str | os.PathLike[str], located: Located) -> None:
        self.run_dir = run_dir
        p = located.placement
        groups = () if located.group is None else (default_group_info(located.group),)
        self.manifest = RunManifest(
            run_id=located.run_id.run_id,
            world_size=p.world_size,
            expected_ranks=tuple(range(p.world_size)),
            run_id_source=located.run_id.source,
            process_groups=groups,
            created=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            writer=f"tracefmt {tracefmt_version}",
        )

    def check_free(self, *, overwrite: bool) -> None:
        """Refuse a run directory holding a manifest (unless ``overwrite``); warn about rank files
        of an earlier, larger run (this run's manifest will not name them; no rank removes them)."""
        path = manifest_path(self.run_dir)
        if path.exists() and not overwrite:
            raise TraceError(
                f"{str(path)!r} already exists; choose a new run directory or pass overwrite=True."
            )
        world = self.manifest.world_size
        stale = sorted(
            f.name
            for f in Path(self.run_dir).glob("rank-*")  # nothing when the directory is new
            if (r := rank_of_file(f)) is not None and r >= world
        )
        if stale:
            shown = ", ".join(stale[:3]) + (f" and {len(stale) - 3} more" if len(stale) > 3 else "")
            warnings.warn(
                f"The run directory {str(self.run_dir)!r} holds {shown} from an earlier run with "
                f"more ranks; this run has {world} rank(s) and its run.json does not name them. "
                "Remove them, or record into a new directory.",
                stacklevel=3,
            )

    def write(self) -> None:
        try:
            write_manifest(self.run_dir, self.manifest)
        except OSError as e:
            raise TraceError(
                f"Cannot write the run manifest into {str(self.run_dir)!r}: {e.strerror or e}."
            ) from e

    def note_groups(self, groups: Iterable[ProcessGroupInfo]) -> None:
        """Add the groups not listed yet; rewrite the manifest when there were any."""
        known = {g.id for g in self.manifest.process_groups}
        new: list[ProcessGroupInfo] = []
        for g in groups:
            if g.id not in known:
                known.add(g.id)
                new.append(g)
        if new:
            groups_now = (*self.manifest.process_groups, *new)
            self.manifest = replace(self.manifest, process_groups=groups_now)
            try:
                self.write()
            except TraceError as e:  # training goes on; the rank files are what matters
                warnings.warn(f"{e} Its process groups stay as they were.", stacklevel=4)
