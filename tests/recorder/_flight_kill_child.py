"""A flight-mode trainer that dies at step 50: ``python -m tests.recorder._flight_kill_child DIR HOW``.

Trains the small GPT example in flight mode (ring of 8, the default writer process) and, in step
50, after its forward and backward, dies by ``HOW``: ``kill`` (SIGKILL), ``segv`` (SIGSEGV raised
in the trainer).  Before dying it waits until the trainer's writer thread has handed every
finished step to the writer process (``rec.flush()``), as it has in a job killed for hanging;
a kill within milliseconds of ``rec.step()`` can lose the one or two steps still being turned
into records in the trainer (README, flight mode).
"""

from __future__ import annotations

import os
import signal
import sys

import torch

import recorder
from recorder.examples import gpt


def main(out: str, how: str) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model, opt, data = gpt.build(layers=1, embd=32, heads=2, block=16, batch=8)
    with recorder.record(out, model=model, mode="flight", ring_steps=8) as rec:
        for step in range(60):
            x, y = data.batch(step)
            loss = model(x, y)
            loss.backward()
            if step == 50:
                rec.flush()
                os.kill(os.getpid(), signal.SIGKILL if how == "kill" else signal.SIGSEGV)
            opt.step()
            opt.zero_grad()
            rec.step(loss=loss)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
