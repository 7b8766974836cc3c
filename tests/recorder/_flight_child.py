"""A trainer for the flight writer-process tests: ``python -m tests.recorder._flight_child PATH HOW``.

Starts a :class:`recorder.flight.process.WriterProcess` on ``PATH`` (ring of 8 steps) with
``pickle`` made unusable (the transport must not need it), prints ``ready WRITER_PID``, holds
synthetic steps 0..49 (``--steps``), prints ``held 49``, and then ends as ``HOW`` says:

* ``wait``: waits for the test to kill it (SIGKILL or any signal);
* ``segv``: raises SIGSEGV in itself; ``segv-real``: reads address 0 through ctypes;
* ``exit``: ``os._exit(3)``;
* ``close``: closes the sink normally (the unreleased ring is discarded).

No torch: the trainer's side of the sink needs none.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import pickle
import signal
import sys
import time
from typing import Any

import numpy as np

from recorder.flight.process import WriterProcess
from tests.synth import mlp_graph, synthetic_step


def _no_pickle(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("the flight recorder's transport used pickle")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("path")
    p.add_argument("how", choices=["wait", "segv", "segv-real", "exit", "close"])
    p.add_argument("--steps", type=int, default=50)
    args = p.parse_args()
    for name in ("dumps", "loads", "dump", "load"):
        setattr(pickle, name, _no_pickle)
    sink = WriterProcess(args.path, ring_steps=8, fsync=False)
    print("ready", sink.pid, flush=True)
    rng = np.random.default_rng(0)
    graph = mlp_graph()
    for step in range(args.steps):
        sink.hold(synthetic_step(step, graph.variant(attrs={6: {"alpha": -0.01 * step}}), rng))
    print("held", args.steps - 1, flush=True)
    if args.how == "wait":
        time.sleep(600)
    elif args.how == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif args.how == "segv-real":
        ctypes.string_at(0)
    elif args.how == "exit":
        os._exit(3)
    sink.close()
    print("closed", flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
