"""Random number generator states as a trace records them (format 1.6): per recorded step, the
state of each generator at the step's start.

A step that draws random numbers (dropout, ``randint``, random crops) can be drawn again from
these states: restore them and the same draws come out in the same order.  tracefmt's recorder
stores the CPU default generator (``torch.get_rng_state()``, device ``"cpu"``) and, when the
program has initialised CUDA, each CUDA device's default generator
(``torch.cuda.get_rng_state_all()``, devices ``"cuda:0"``, ``"cuda:1"``, ...).  The bytes are the
library's own state encoding, stored as they are: tracefmt neither reads nor changes them.

The checks here are the format's requirement TF-RNG-002 (devices): the writer refuses states that
break it (``ValueError``), the reader reports them as a damaged file and the validator as
findings, all from :func:`device_problem` and :func:`devices_problems`.

Example (with torch, in the recording program or a test)::

    step = trace.step(41)
    cpu = step.rng_state("cpu")
    if cpu is not None:
        torch.set_rng_state(torch.frombuffer(bytearray(cpu.state), dtype=torch.uint8))
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from tracefmt._rnglayout import MAX_GENERATORS, MAX_RNG_STATE_BYTES

__all__ = ["MAX_GENERATORS", "MAX_RNG_STATE_BYTES", "RngState", "device_problem", "devices_problems"]

#: ``cpu``, or a device type and index as torch writes them (``cuda:0``, ``xpu:3``).
_DEVICE = re.compile(r"cpu|[a-z][a-z0-9_]{0,31}:(0|[1-9][0-9]{0,8})")


def device_problem(device: str) -> str | None:
    """Why ``device`` is not a generator's device (TF-RNG-002), or None: ``"cpu"``, or a device
    type of lower-case letters, digits and ``_`` and an index without leading zeros (``cuda:0``)."""
    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        return f"Generator device {device!r} is not 'cpu' or a device type and index such as 'cuda:0'."
    return None


def devices_problems(devices: Sequence[str]) -> Iterator[tuple[int, str]]:
    """(row, sentence) for each way one step's generator ``devices`` break TF-RNG-002: at most
    :data:`MAX_GENERATORS` of them, each a valid device (:func:`device_problem`), none twice."""
    if len(devices) > MAX_GENERATORS:
        yield 0, f"A step has {len(devices)} generator states; it may have {MAX_GENERATORS}."
        return
    seen: set[str] = set()
    for i, device in enumerate(devices):
        problem = device_problem(device)
        if problem is not None:
            yield i, problem
        elif device in seen:
            yield i, f"A step has two states of the generator of device {device!r}."
        seen.add(device)


@dataclass(frozen=True, slots=True)
class RngState:
    """One generator's state at the start of a step: its ``device`` (``"cpu"``, ``"cuda:0"``)
    and ``state``, the bytes its library gives (1 to :data:`MAX_RNG_STATE_BYTES` of them).

    Raises ``ValueError`` for a device TF-RNG-002 refuses or a state of no or too many bytes.
    """

    device: str
    state: bytes

    def __post_init__(self) -> None:
        problem = device_problem(self.device)
        if problem is not None:
            raise ValueError(problem)
        if not isinstance(self.state, bytes):
            raise TypeError(
                f"The state of generator {self.device!r} is a {type(self.state).__name__}; "
                "give its bytes (bytes(...))."
            )
        if not 1 <= len(self.state) <= MAX_RNG_STATE_BYTES:
            raise ValueError(
                f"The state of generator {self.device!r} has {len(self.state)} bytes; a state "
                f"has 1 to {MAX_RNG_STATE_BYTES}."
            )

    def as_json(self) -> dict[str, Any]:
        """The state as JSON data (``tracefmt show --json``): device, byte count, SHA-256 and
        the bytes in base64 (``base64.b64decode(d["state_base64"])`` gives them back)."""
        return {
            "device": self.device,
            "bytes": len(self.state),
            "sha256": hashlib.sha256(self.state).hexdigest(),
            "state_base64": base64.b64encode(self.state).decode("ascii"),
        }

    def __repr__(self) -> str:
        return f"RngState(device={self.device!r}, state=<{len(self.state)} bytes>)"
