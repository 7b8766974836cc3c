"""A recording training process for the kill test: ``python -m tests.recorder._kill_child DIR``.

Trains the MLP example and records every step with statistics (and, every third step, the
parameters' values); after each ``rec.step()`` it calls ``rec.flush()`` and then prints the step
number, so a printed step is one the recorder had committed and fsynced.  It runs until killed.
"""

from __future__ import annotations

import sys

import torch

import recorder
from recorder.examples.mlp import build


def main(out: str) -> None:
    torch.set_num_threads(1)
    model, opt, scheduler, data = build(batch=32, hidden=64)
    values = recorder.select(roles="parameters")
    with recorder.record(out, model=model, values=values) as rec:
        print("ready", flush=True)
        step = 0
        while True:
            x, y = data.batch_at(step)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            scheduler.step()
            rec.step(loss=loss)
            rec.flush()
            print(step, flush=True)
            step += 1


if __name__ == "__main__":
    main(sys.argv[1])
