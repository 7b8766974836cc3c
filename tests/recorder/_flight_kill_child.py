"""A flight-mode trainer that dies at step 50: ``python -m tests.recorder._flight_kill_child DIR HOW``.

Trains the small GPT example in flight mode (ring of 8, the default writer process) and, in step
50, after its forward and backward and a pause such as a slow or hung step has (0.3 s: time for
the trainer's writer thread to hand step 49 to the writer process), dies by ``HOW``: ``kill``
(SIGKILL), ``segv`` (SIGSEGV raised in the trainer).
"""

from __future__ import annotations

import os
import signal
import sys
import time

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
                time.sleep(0.3)
                os.kill(os.getpid(), signal.SIGKILL if how == "kill" else signal.SIGSEGV)
            opt.step()
            opt.zero_grad()
            rec.step(loss=loss)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
