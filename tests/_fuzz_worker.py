"""Fuzz worker: reads every part of each trace it is given and reports how it went, one JSON line each.

    python -m tests._fuzz_worker   # then one path per line on stdin

For each path it opens the trace, lists steps and summaries, loads every step (by row and by step
number), reads every recorded tensor's values, and computes what ``tracefmt info`` shows.  A
``TraceError`` is the expected way to refuse a damaged file; it is counted and reading goes on with
the next part.  Any other exception is reported with its traceback.  The parent process sends one
path at a time, so a crash (segfault) or a hang is attributed to the file being read.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import resource
import sys
import traceback
from collections.abc import Callable
from typing import Any

import tracefmt
from tracefmt import TraceError

MEMORY_LIMIT = 6 << 30  # address space: a reader allocating what a hostile file declares fails fast


def read_everything(path: str) -> dict[str, Any]:
    """Read all of ``path``; return counts of parts read and TraceErrors, or the first other error."""
    counts = {"ok": 0, "trace_error": 0}
    errors: list[str] = []

    def attempt(fn: Callable[[], Any]) -> Any:
        try:
            result = fn()
        except TraceError as e:
            counts["trace_error"] += 1
            if len(errors) < 3:
                errors.append(f"{type(e).__name__}: {str(e)[:200]}")
            return None
        counts["ok"] += 1
        return result

    trace = attempt(lambda: tracefmt.open(path))
    if trace is None:
        return {"status": "refused", **counts, "errors": errors}
    try:
        if importlib.util.find_spec("tracefmt.summary") is not None:  # what `tracefmt info` shows
            trace_info = importlib.import_module("tracefmt.summary").trace_info
            attempt(lambda: trace_info(trace))
        for rank in trace.ranks:
            rank_file = trace.rank_file(rank)
            attempt(functools.partial(trace.summaries, rank))
            attempt(rank_file.dataset_sizes)
            steps = attempt(functools.partial(trace.steps, rank)) or []
            for s in steps[:50]:
                attempt(functools.partial(trace.step, s, rank))
            for i in range(min(rank_file.num_steps(), 50)):
                step = attempt(functools.partial(rank_file.load, i))
                if step is None:
                    continue
                for t in step.tensors:
                    if t.has_values:
                        attempt(t.values)
    finally:
        trace.close()
    return {"status": "read", **counts, "errors": errors}


def main() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    for line in sys.stdin:
        path = line.rstrip("\n")
        try:
            result = read_everything(path)
        except Exception as e:  # what the fuzz test exists to find: anything but a TraceError
            result = {
                "status": "uncaught",
                "type": type(e).__name__,
                "traceback": traceback.format_exc()[-4000:],
            }
        result["file"] = path
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
