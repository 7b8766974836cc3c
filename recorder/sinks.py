"""Where a recording's steps go: this rank's trace file, through a writer in this process or,
in flight mode, a writer process that keeps the ring of recent steps and outlives the trainer."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from recorder.distributed import Located
from recorder.flight.ring import FlightSink, RingSink
from recorder.options import Options
from recorder.pipeline import BackgroundWriter, Sink
from recorder.provenance import run_provenance
from tracefmt.errors import TraceError

__all__ = ["background_writer", "open_trace_writer"]


def open_trace_writer(
    path: str | os.PathLike[str],
    located: Located,
    options: Options,
    *,
    overwrite: bool,
    values_filter: str,
    provenance_extra: Mapping[str, Any],
) -> tuple[Sink, str]:
    """This rank's writer; it replaces (with ``overwrite``) only this rank's own file.  In
    flight mode it is a writer process holding the ring (``writer_process=False``: a ring in
    front of a writer in this process)."""
    try:
        from tracefmt.writer import TraceWriter, rank_file_path
    except ImportError as e:
        raise TraceError(
            "tracefmt.writer is not available in this installation, so the "
            "recorder cannot write traces; pass sink=... to receive step records "
            "instead."
        ) from e
    run_dir = Path(path)
    run_dir.mkdir(parents=True, exist_ok=True)
    place = located.placement
    file = rank_file_path(run_dir, place.rank)
    extra: dict[str, Any] = {"torch": torch.__version__, "recorder": "recorder", **provenance_extra}
    # what produced the run: code, command, numerics, packages, hardware, capture path
    extra = run_provenance(str(extra.get("recorder_engine", "python")), options, extra)
    distributed = located.provenance()
    if distributed is not None:
        extra["distributed"] = distributed
    kwargs: dict[str, Any] = {
        "run_id": located.run_id.run_id,
        "rank": place.rank,
        "world_size": place.world_size,
        "values_filter": values_filter,
        "hist_bins": options.hist_bins,
        "provenance_extra": extra,
        "overwrite": overwrite,
    }
    if options.mode != "record" and options.writer_process:
        from recorder.flight.process import WriterProcess

        process = WriterProcess(
            file, ring_steps=options.ring_steps, ring_bytes=options.ring_bytes, **kwargs
        )
        return process, str(file)
    writer: Sink = TraceWriter(file, **kwargs)
    if options.mode == "flight":
        writer = RingSink(writer, steps=options.ring_steps, budget=options.ring_bytes)
    return writer, str(file)


def background_writer(sink: Sink, target: str, options: Options) -> BackgroundWriter:
    """The writer thread in front of ``sink``; in flight mode a sink without a ring of its own
    (a user's ``sink=``) gets one in this process."""
    if options.mode == "flight" and not isinstance(sink, FlightSink):
        sink = RingSink(sink, steps=options.ring_steps, budget=options.ring_bytes)
    return BackgroundWriter(
        sink,
        target=target,
        max_steps=options.max_queue_steps,
        max_bytes=options.max_queue_bytes,
        backpressure=options.backpressure,
        flush_every_steps=options.flush_every_steps,
        flush_every_seconds=options.flush_every_seconds,
    )
