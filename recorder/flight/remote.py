"""Triggers across ranks: a trigger on any rank makes every rank write its ring.

The ranks talk through the default process group's c10d store (the ``TCPStore`` torchrun's
rendezvous made), read at each ``rec.step()``: never a collective, so a rank that is slow, stuck
or dead does not hold the others on the training path.  The rank that fires posts; every rank
polls at its next step and learns who fired first, at which step, and why.

Keys (inside the store's own ``default_pg/`` prefix, under the recorder's ``tracefmt/``)::

    tracefmt/trigger/<run_id>/count   a counter: store.add(count, 1) gives each post its number
    tracefmt/trigger/<run_id>/<n>     the n-th post, JSON {"rank", "step", "kind", "reason"}

The counter makes the first writer win without a lock: post 1 is the first to reach the store,
and a later post takes the next number instead of overwriting it; a run that fires again much
later (a spike at step 40,000 after a NaN at step 1,000) posts again and every rank learns of it
too.  A poll is one ``store.check([next key])`` round trip when nothing is new: 11-17
microseconds to torchrun's TCPStore over loopback on an idle 2-core machine, up to 60 under load
(tests/recorder/test_crossrank.py prints it); across hosts, one network round trip.

Example::

    remote = RemoteTriggers.from_default_group(run_id)   # None in a single process
    ...
    if events and remote is not None:
        remote.post(step, events[0].kind, reason)        # once per ring written, not every step
    if remote is not None and (hit := remote.poll()) is not None and hit.rank != remote.rank:
        ... write the ring: rank hit.rank fired hit.kind at step hit.step

A store that fails (its host rank died, the job is being torn down) is reported once with a
warning and cross-rank triggers stop there; the training step never fails because of them.
"""

from __future__ import annotations

import collections
import json
import warnings
from typing import Any, NamedTuple, Protocol

from tracefmt.events import REMOTE_TRIGGER, trigger_event
from tracefmt.model import Event

__all__ = ["KEY_PREFIX", "RemoteTrigger", "RemoteTriggers", "TriggerStore", "default_store"]

#: Where the posts live in the store (``recorder.distributed`` keeps its keys under ``tracefmt/``).
KEY_PREFIX = "tracefmt/trigger/"
#: Longest reason kept in the store; a post is a message, not a payload.
MAX_REASON = 2000


class TriggerStore(Protocol):
    """The part of ``torch.distributed.Store`` used here."""

    def add(self, key: str, value: int, /) -> int: ...

    def set(self, key: str, value: str, /) -> None: ...

    def get(self, key: str, /) -> bytes: ...

    def check(self, keys: list[str], /) -> bool: ...


class RemoteTrigger(NamedTuple):
    """The ``seq``-th trigger posted in the run (1 is the first): ``rank`` fired ``kind`` at its
    step ``step``, for ``reason``."""

    seq: int
    rank: int
    step: int
    kind: str
    reason: str

    def event(self) -> Event:
        """The ``remote_trigger`` event a rank writes when this post makes it write its ring;
        its ``rank`` is where the trigger was first seen."""
        return trigger_event(
            REMOTE_TRIGGER,
            f"Rank {self.rank} fired {self.kind} at its step {self.step}: {self.reason}",
            rank=self.rank,
            step=self.step,
            trigger=self.kind,
            seq=self.seq,
        )


def _parse(seq: int, raw: Any) -> RemoteTrigger:
    """A post read back from the store; ``ValueError`` when it is not one of ours."""
    text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    rank, step, kind, reason = (data.get(k) for k in ("rank", "step", "kind", "reason"))
    if not (isinstance(rank, int) and isinstance(step, int)):
        raise ValueError("rank and step must be integers")
    if not (isinstance(kind, str) and isinstance(reason, str)):
        raise ValueError("kind and reason must be strings")
    return RemoteTrigger(seq, rank, step, kind, reason[:MAX_REASON])


class RemoteTriggers:
    """Posts this rank's triggers and polls the other ranks', through ``store``, for one run.

    ``run_id`` is the id every rank of the run agreed on (``recorder.distributed``), so two runs
    sharing a store (or two ``record()`` blocks of one job, given different ids) never see each
    other's triggers.  Not thread-safe: call it from the training thread.
    """

    def __init__(self, store: TriggerStore, run_id: str, rank: int) -> None:
        if not run_id or "/" in run_id:
            raise ValueError(
                f"RemoteTriggers needs a run id without '/' to name its store keys, got {run_id!r}."
            )
        self.store = store
        self.run_id = run_id
        self.rank = rank
        self.prefix = f"{KEY_PREFIX}{run_id}/"
        self.disabled = False
        self._seen = 0  # posts read so far (they are numbered 1, 2, ...)
        self._pending: collections.deque[RemoteTrigger] = collections.deque()

    @classmethod
    def from_default_group(cls, run_id: str) -> RemoteTriggers | None:
        """Triggers through the default process group's store; None in a single process (no
        ``torch.distributed``, no initialised group, or a world of one)."""
        store = default_store()
        if store is None:
            return None
        import torch.distributed as dist

        return cls(store, run_id, dist.get_rank())

    def post(self, step: int, kind: str, reason: str) -> RemoteTrigger | None:
        """Tell every rank that this rank fired ``kind`` at ``step``; the post's number says
        whether it came first (1).  Post once per ring written: every post is read by every rank.
        None when the store failed (warned once)."""
        if self.disabled:
            return None
        reason = reason[:MAX_REASON]
        message = json.dumps({"rank": self.rank, "step": step, "kind": kind, "reason": reason})
        try:
            seq = int(self.store.add(self.prefix + "count", 1))
            self.store.set(f"{self.prefix}{seq}", message)
        except Exception as e:  # the store's errors are RuntimeError, OSError, TimeoutError
            self._fail("post a trigger", e)
            return None
        return RemoteTrigger(seq, self.rank, step, kind, reason)

    def poll(self) -> RemoteTrigger | None:
        """The oldest post this rank has not seen yet (its own included), or None; one store
        round trip when nothing is new, never waiting for a key.  A post whose number is taken
        but whose text is not stored yet is read at a later poll."""
        if self._pending:
            return self._pending.popleft()
        if self.disabled:
            return None
        try:
            while True:
                key = f"{self.prefix}{self._seen + 1}"
                if not self.store.check([key]):
                    break
                raw = self.store.get(key)
                self._seen += 1
                try:
                    self._pending.append(_parse(self._seen, raw))
                except ValueError as e:
                    warnings.warn(
                        f"Store key {key!r} does not hold a trigger post ({e}); it is skipped.",
                        RuntimeWarning,
                        stacklevel=2,
                    )
        except Exception as e:
            self._fail("poll for triggers", e)
        return self._pending.popleft() if self._pending else None

    def first(self) -> RemoteTrigger | None:
        """The run's first post, if it is stored (without changing what :meth:`poll` returns)."""
        key = f"{self.prefix}1"
        try:
            if self.disabled or not self.store.check([key]):
                return None
            return _parse(1, self.store.get(key))
        except ValueError:
            return None
        except Exception as e:
            self._fail("read the first trigger", e)
            return None

    def _fail(self, what: str, error: Exception) -> None:
        self.disabled = True
        warnings.warn(
            f"Rank {self.rank} could not {what} through the c10d store under {self.prefix!r} "
            f"({type(error).__name__}: {error}); cross-rank triggers are off for this run, and "
            "this rank writes its ring only on its own triggers.",
            RuntimeWarning,
            stacklevel=3,
        )


def default_store() -> TriggerStore | None:
    """The default process group's c10d store, or None in a single process.

    torch keeps it private (``distributed_c10d._get_default_store()``, the store
    ``init_process_group`` was given, wrapped in the group's ``default_pg/`` prefix); where a
    future torch moves it, the recorder falls back to no cross-rank triggers with a warning.
    """
    try:
        import torch.distributed as dist
    except ImportError:
        return None
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() < 2:
        return None
    try:
        from torch.distributed import distributed_c10d

        store: TriggerStore = distributed_c10d._get_default_store()
    except (AttributeError, ImportError, ValueError, RuntimeError) as e:
        warnings.warn(
            f"The default process group's c10d store is not reachable ({type(e).__name__}: {e}); "
            "a trigger on one rank will not make the other ranks write their rings.",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    return store
