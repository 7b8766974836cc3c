"""The generators' states at the start of a recorded step (format 1.6), taken on the training thread.

:func:`rng_snapshot` copies the CPU default generator's state (``torch.get_rng_state()``, 5,056
bytes) and, only when the program has initialised CUDA itself, each CUDA device's default
generator (``torch.cuda.get_rng_state_all()``, 16 bytes each: a Philox seed and offset).  It never
initialises CUDA: a CPU-only program stays CPU-only.  The recorder calls it at a step's start,
before the step's first op, so restoring the states (:func:`restore`) and running the step's
random ops again in order draws the same numbers (dropout masks, ``randint``, random crops).

Generators the program creates itself (``torch.Generator()`` passed to an op) are not recorded:
their state is the program's, and it can record them as scalars or provenance.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tracefmt.rngstate import RngState

__all__ = ["restore", "rng_snapshot"]


def rng_snapshot() -> tuple[RngState, ...]:
    """The CPU default generator's state and, when CUDA is initialised, each CUDA device's."""
    states = [RngState("cpu", torch.get_rng_state().numpy().tobytes())]
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            states.append(RngState(f"cuda:{i}", state.numpy().tobytes()))
    return tuple(states)


def restore(states: Sequence[RngState]) -> None:
    """Set the default generators to ``states`` (a step's :attr:`tracefmt.Step.rng_states`):
    the CPU generator and each CUDA device's (which initialises CUDA when the states name one).
    Raises ``ValueError`` for a device that is neither the CPU nor a CUDA device of this machine."""
    for s in states:
        tensor = torch.frombuffer(bytearray(s.state), dtype=torch.uint8)
        if s.device == "cpu":
            torch.set_rng_state(tensor)
        elif s.device.startswith("cuda:") and int(s.device[5:]) < torch.cuda.device_count():
            torch.cuda.set_rng_state(tensor, device=int(s.device[5:]))
        else:
            raise ValueError(
                f"The recorded generator of device {s.device!r} has no counterpart here "
                f"({torch.cuda.device_count()} CUDA devices); restore the others alone."
            )
