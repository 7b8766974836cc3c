"""The event kinds a flight recorder writes (format 1.4) and their JSON messages.

An event's ``kind`` says what happened; its ``message`` is a JSON object with at least
``"reason"`` (a sentence for people) and ``"rank"`` (the rank where it was first seen), plus
whatever the kind adds: ``"module"`` (a module path or parameter FQN), ``"value"``,
``"score"``, ``"signal"``, ``"exit_code"``.  Spec section 5.11 is normative (TF-EVENT-002:
:func:`message_problem`).  Example::

    event = trigger_event(LOSS_SPIKE, "loss 9.1 is 11.3 MADs above the median 2.30", rank=0,
                          value=9.1, score=11.3)
    message_fields(event)["score"]   # 11.3
"""

from __future__ import annotations

import json
import math
from typing import Any

from tracefmt.model import Event

__all__ = [
    "EXCEPTION",
    "GRAD_NORM_SPIKE",
    "LOSS_SPIKE",
    "NONFINITE_CREATED",
    "NONFINITE_STATE",
    "PROCESS_DIED",
    "REMOTE_TRIGGER",
    "TRIGGER_KINDS",
    "USER_TRIGGER",
    "message_fields",
    "message_problem",
    "trigger_event",
]

#: an op (full step) or module (light step) made NaN/Inf from finite inputs, not from a
#: constant argument
NONFINITE_CREATED = "nonfinite_created"
#: NaN/Inf in the loss, a gradient, a parameter or optimizer state
NONFINITE_STATE = "nonfinite_state"
LOSS_SPIKE = "loss_spike"
GRAD_NORM_SPIKE = "grad_norm_spike"
#: an exception raised inside the step
EXCEPTION = "exception"
#: the user's trigger predicate returned true
USER_TRIGGER = "user_trigger"
#: another rank's trigger reached this rank
REMOTE_TRIGGER = "remote_trigger"
#: the training process died (a signal or an exit without closing the recorder)
PROCESS_DIED = "process_died"

TRIGGER_KINDS = frozenset(
    {
        NONFINITE_CREATED,
        NONFINITE_STATE,
        LOSS_SPIKE,
        GRAD_NORM_SPIKE,
        EXCEPTION,
        USER_TRIGGER,
        REMOTE_TRIGGER,
        PROCESS_DIED,
    }
)


def trigger_event(
    kind: str,
    reason: str,
    *,
    rank: int,
    op: int | None = None,
    tensor: int | None = None,
    **fields: Any,
) -> Event:
    """An event of ``kind`` whose message is the JSON object ``{"reason", "rank", **fields}``."""
    if kind not in TRIGGER_KINDS:
        raise ValueError(f"Unknown trigger kind {kind!r}; expected one of {sorted(TRIGGER_KINDS)}.")
    data = {"reason": reason, "rank": rank, **{k: _plain(v) for k, v in fields.items()}}
    message = json.dumps(data, sort_keys=True, allow_nan=False)
    return Event(kind=kind, message=message, op=op, tensor=tensor)


def _plain(value: Any) -> Any:
    """JSON has no NaN or infinity: a non-finite float is written as ``"nan"``, ``"inf"``,
    ``"-inf"``."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return value


def message_fields(event: Event) -> dict[str, Any]:
    """The JSON fields of a trigger event's message; ``{"reason": message}`` for a plain one."""
    try:
        data = json.loads(event.message)
    except ValueError:
        return {"reason": event.message}
    return data if isinstance(data, dict) else {"reason": event.message}


def _refuse_constant(token: str) -> Any:
    raise ValueError(f"{token} is not JSON (RFC 8259 has no NaN or infinity)")


def message_problem(message: str, world_size: int) -> str | None:
    """Why the message of an event of a kind in :data:`TRIGGER_KINDS` breaks TF-EVENT-002 (a
    JSON object with a string ``reason`` and an integer ``rank`` of the run), or None."""
    try:
        data = json.loads(message, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as e:
        return f"The message is not JSON ({e})."
    if not isinstance(data, dict):
        return f"The message is a JSON {type(data).__name__}, not an object."
    if not isinstance(data.get("reason"), str):
        return f"The message's reason is {data.get('reason')!r}, not a string."
    rank = data.get("rank")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        return f"The message's rank is {rank!r}, not an integer in 0..{world_size - 1}."
    return None
