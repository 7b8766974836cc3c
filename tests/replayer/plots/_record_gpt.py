"""Record the GPT example tiny for the plot tests (run in a subprocess: the tests import no torch).

``python tests/replayer/plots/_record_gpt.py OUT``: a flight recording of 10 steps with 16-bin
histograms, one weight element set to Inf before step 6 (a ``nonfinite_state`` trigger: the ring's
full steps are written, light steps every step), and the loss of step 3 multiplied by 20.  The
Python capture engine: the native one is built on first use (a minute), which this does not test.
"""

from __future__ import annotations

import sys

import torch

import recorder
from recorder.examples.gpt import build

STEPS = 10
NAN_STEP = 6


def main(out: str) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model, optimizer, data = build(layers=1, embd=32, heads=2, block=16, batch=4)
    with recorder.record(
        out, model=model, mode="flight", ring_steps=4, hist_bins=16, engine="python", overwrite=True
    ) as rec:
        for step in range(STEPS):
            if step == NAN_STEP:
                with torch.no_grad():
                    model.h[0].mlp.c_fc.weight.view(-1)[0] = float("inf")
            x, y = data.batch(step)
            loss = model(x, y)
            if step == 3:
                loss = loss * 20
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            rec.step(loss=loss)


if __name__ == "__main__":
    main(sys.argv[1])
