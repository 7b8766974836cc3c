"""A recording training process whose files may not grow past a limit (``RLIMIT_FSIZE``), for the
disk-full test: ``python -m tests.recorder._diskfull_child DIR LIMIT_BYTES``.

Prints ``flushed N`` after each step it has flushed, and ``error <message>`` when the recorder
raises; exits 0 then, 1 if it never raised.
"""

from __future__ import annotations

import resource
import signal
import sys

import torch

import recorder
from recorder.examples.mlp import build
from tracefmt.errors import TraceError


def main(out: str, limit: int) -> int:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
    torch.set_num_threads(1)
    model, opt, _, data = build(batch=64, hidden=256)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    try:
        with recorder.record(out, model=model, values="all", flush_every_steps=1) as rec:
            for step in range(1000):
                x, y = data.batch_at(step)
                loss = torch.nn.functional.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                opt.zero_grad()
                rec.step(loss=loss)
                rec.flush()
                print("flushed", step, flush=True)
    except TraceError as e:
        print("error", str(e).replace("\n", " "), flush=True)
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2])))
