"""The flight recorder's writer process (:mod:`recorder.flight.process`): a ring that reaches the
disk when the trainer dies, and a writer whose death the trainer hears about.

The kill tests run a trainer in a subprocess (``tests/recorder/_flight_child.py``) that holds steps
0..49 in a ring of 8 and then dies; its parent ``wait()``s at once, as ``subprocess.run`` and
torchrun's agent do, so the writer process races the reaping of its trainer.  Needs Linux.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import mmap
import os
import platform
import select
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tracefmt
from recorder.flight.channel import Consumer, Producer
from recorder.flight.process import WriterProcess
from recorder.flight.wire import Encoder, LightMessage, Message, StepMessage
from recorder.flight.wiredecode import Decoder
from tests.synth import mlp_graph, synthetic_step
from tracefmt.errors import TraceError, WriterClosedError
from tracefmt.light import LightKind, LightStepRecord, empty_light_rows
from tracefmt.records import StepRecord
from tracefmt.validate import validate
from tracefmt.writer import TraceWriter

REPO = Path(__file__).resolve().parents[2]
FLIGHT = REPO / "recorder" / "flight"
pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the writer process needs Linux")


def _kernel_at_least(major: int, minor: int) -> bool:
    parts = platform.release().split(".")
    try:
        return (int(parts[0]), int(parts[1].split("-")[0])) >= (major, minor)
    except (IndexError, ValueError):
        return False


#: PIDFD_INFO_EXIT (Linux 6.15): the exit status survives the parent's reaping
EXACT_STATUS = _kernel_at_least(6, 15)


def _steps(n: int, start: int = 0, *, width: int = 16, seed: int = 0) -> list[StepRecord]:
    """Steps ``start..start+n-1`` of one graph structure whose attributes and offsets vary."""
    rng = np.random.default_rng(seed)
    base = mlp_graph(width=width)
    return [
        synthetic_step(
            s,
            base.variant(attrs={6: {"alpha": -0.01 * s}}, storage_offsets={0: s % 3}),
            rng,
            hist_bins=8,
        )
        for s in range(start, start + n)
    ]


def _assemble(msg: Message) -> bytearray:
    buf = bytearray(msg.total)
    for offset, data in msg.pieces:
        buf[offset : offset + data.size] = data.tobytes()
    return buf


def _same(a: StepRecord, b: StepRecord) -> None:
    assert a.step == b.step
    assert a.graph == b.graph
    assert a.graph.digest == b.graph.digest
    assert a.stats is not None
    assert b.stats is not None
    assert a.stats.tobytes() == b.stats.tobytes()
    assert np.asarray(a.op_stats).tobytes() == np.asarray(b.op_stats).tobytes()
    assert np.asarray(a.op_starts, np.int64).tolist() == np.asarray(b.op_starts).tolist()
    assert a.values.keys() == b.values.keys()
    for t, v in a.values.items():
        assert np.ascontiguousarray(v).tobytes() == b.values[t].tobytes()
    for t, (lo, hi, counts) in a.histograms.items():
        got_lo, got_hi, got_counts = b.histograms[t]
        assert (lo, hi, counts.tolist()) == (got_lo, got_hi, got_counts.tolist())
    assert list(a.events) == list(b.events)
    assert dict(a.scalars) == dict(b.scalars)
    assert (a.wall_time, a.dropped) == (b.wall_time, b.dropped)


# -- the wire, in this process ---------------------------------------------------------------------
def test_wire_round_trip_sends_each_graph_once() -> None:
    enc, dec = Encoder(), Decoder()
    records = _steps(4)
    sizes = []
    for record in records:
        msg = enc.step(record, hold=True)
        sizes.append(msg.total)
        out = dec.decode(_assemble(msg))
        assert isinstance(out, StepMessage)
        assert out.hold
        _same(record, out.record)
    assert sizes[1] < sizes[0] - 1000, sizes  # the first message carries the graph


def test_wire_sends_the_module_table_when_it_changes() -> None:
    from tracefmt.moduletable import ModuleInfo, ModuleTable

    def table(width: int) -> ModuleTable:
        return ModuleTable(
            (
                ModuleInfo("", "m.Net", 2 * width, width, 0, 0, 8 * width),
                ModuleInfo("fc", "torch.nn.Linear", 2 * width, width, 2 * width, width, 8 * width),
            )
        )

    enc, dec = Encoder(), Decoder()
    first, second = table(3), table(5)
    sent = []
    for record, modules in zip(_steps(5), [first, first, second, None, None], strict=True):
        record.modules = modules
        msg = enc.step(record, hold=False)
        sent.append(b'"modules"' in bytes(_assemble(msg)))
        out = dec.decode(_assemble(msg))
        assert isinstance(out, StepMessage)
        assert out.record.modules == modules
    assert sent == [True, False, True, True, False]  # a table travels when it changes only


def test_wire_round_trip_of_a_light_step() -> None:
    rows = empty_light_rows(2)
    rows["name"], rows["kind"], rows["norm"] = [0, 1], [LightKind.OUTPUT, LightKind.GRADIENT], [1.5, 2.5]
    record = LightStepRecord(
        step=3, names=["fc", "fc.weight"], rows=rows, scalars={"loss": float("nan")}
    )
    out = Decoder().decode(_assemble(Encoder().light(record)))
    assert isinstance(out, LightMessage)
    assert out.record.rows.tobytes() == rows.tobytes()
    assert list(out.record.names) == ["fc", "fc.weight"]
    assert np.isnan(out.record.scalars["loss"])


def test_channel_streams_a_message_bigger_than_its_buffer() -> None:
    mm = mmap.mmap(-1, 1 << 16)
    producer, consumer = Producer(mm), Consumer(mm)
    (record,) = _steps(1, width=256)  # ~1 MB of values through 64 KiB
    msg = Encoder().step(record, hold=False)
    got: list[bytearray] = []

    def publish(head: int) -> None:
        consumer.head = head

    def wait() -> None:
        got.extend(consumer.take())
        producer.tail = consumer.tail

    for _ in range(3):
        producer.write(msg, publish, wait)
        got.extend(consumer.take())
        producer.tail = consumer.tail
    assert len(got) == 3  # padding between arrays is never written: compare what decodes
    for buf in got:
        out = Decoder().decode(buf)
        assert isinstance(out, StepMessage)
        assert not out.hold
        _same(record, out.record)
    producer.close()
    consumer.close()
    mm.close()


# -- a WriterProcess in this process ---------------------------------------------------------------
def _trace(path: Path) -> tuple[list[int], list[Any]]:
    with tracefmt.open(path) as trace:
        return trace.steps(), trace.light_steps()


def test_release_writes_exactly_the_held_steps(tmp_path: Path) -> None:
    path = tmp_path / "rank-00000.tft.h5"
    records = _steps(12)
    with WriterProcess(path, ring_steps=8, hist_bins=8, fsync=False) as sink:
        for r in records[:6]:
            sink.hold(r)
        assert sink.release() == [0, 1, 2, 3, 4, 5]
        assert sink.release() == []
        sink.write_step(records[6])
        sink.hold(records[7])
        sink.hold(records[8])
        sink.write_step(records[10])
        sink.hold(records[9])  # older than step 10, written: skipped
        sink.hold(records[11])
        assert sink.release() == [11]
        with pytest.raises(ValueError, match="increasing order"):
            sink.write_step(records[11])
        sink.flush()
        assert sink.writer_stats["steps_written"] == 9
    with pytest.raises(WriterClosedError):
        sink.hold(records[0])
    sink.close()  # idempotent
    steps, _ = _trace(path)
    assert steps == [0, 1, 2, 3, 4, 5, 6, 10, 11]
    with tracefmt.open(path) as trace:
        for n in steps:
            step, want = trace.step(n), records[n]
            assert [op.attrs for op in step.ops] == [
                {} if op.attrs is None else json.loads(op.attrs) for op in want.graph.ops
            ]
            assert step.tensors[0].meta.storage_offset == n % 3
            for t, values in want.values.items():
                assert step.tensors[t].values().tobytes() == values.tobytes()
    assert not [f for f in validate(path) if getattr(f, "severity", "error") == "error"]


def test_close_discards_the_unreleased_ring(tmp_path: Path) -> None:
    path = tmp_path / "rank-00000.tft.h5"
    records = _steps(10)
    with WriterProcess(path, hist_bins=8, fsync=False) as sink:
        sink.write_step(records[0])
        for r in records[1:]:
            sink.hold(r)
        pid = sink.pid
    steps, lights = _trace(path)
    assert steps == [0]
    assert lights == []
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the writer process has ended and been reaped


def test_byte_budget_evicts_the_oldest_and_keeps_an_oversized_step_alone(tmp_path: Path) -> None:
    records = _steps(8, width=128)  # ~190 KB of values a step
    enc = Encoder()
    sizes = [enc.step(r, hold=True).total for r in records]
    budget = int(sizes[-1] * 3.5)
    with WriterProcess(tmp_path / "a.tft.h5", ring_bytes=budget, hist_bins=8, fsync=False) as sink:
        for r in records:
            sink.hold(r)
        assert sink.release() == [5, 6, 7]
        assert 3 * sizes[-1] <= sink.ring_peak_bytes <= budget
        assert sink.writer_stats["evicted"] == 5
    with WriterProcess(tmp_path / "b.tft.h5", ring_bytes=1000, hist_bins=8, fsync=False) as sink:
        for r in records[:3]:
            sink.hold(r)
        assert sink.release() == [2]  # each step alone exceeds the budget: only the newest stays
        assert sink.writer_stats["oversized"] == 3


def _wait_dead(pid: int) -> None:
    """Until every thread of ``pid`` has exited (its pidfd is readable; a zombie leader in
    ``/proc`` is not enough: its other threads may still hold its descriptors)."""
    fd = os.pidfd_open(pid)
    try:
        ready, _, _ = select.select([fd], [], [], 30)
    finally:
        os.close(fd)
    assert ready, f"process {pid} did not die"


def test_a_killed_writer_process_is_a_trace_error_at_the_next_call(tmp_path: Path) -> None:
    path = tmp_path / "rank-00000.tft.h5"
    records = _steps(6)
    sink = WriterProcess(path, hist_bins=8)
    for r in records[:5]:
        sink.write_step(r)
    sink.flush()
    os.kill(sink.pid, signal.SIGKILL)
    _wait_dead(sink.pid)  # our child: a zombie until we reap it
    with pytest.raises(TraceError, match=r"writer process .* ended unexpectedly \(killed by SIGKILL\)"):
        sink.hold(records[5])
    with pytest.raises(TraceError, match="killed by SIGKILL"):
        sink.flush()  # still failed
    sink.close()  # the failure was reported: close lets go quietly
    steps, _ = _trace(path)
    assert steps == [0, 1, 2, 3, 4]  # every step the trainer saw flushed
    assert not [f for f in validate(path) if getattr(f, "severity", "error") == "error"]


def test_a_stuck_writer_process_is_a_trace_error_not_a_hang(tmp_path: Path) -> None:
    """A writer stuck in a system call (a hung network file system) stands for a stopped one."""
    path = tmp_path / "rank-00000.tft.h5"
    sink = WriterProcess(path, reply_timeout=1.0)
    sink.write_step(_steps(1)[0])
    os.kill(sink.pid, signal.SIGSTOP)
    try:
        with pytest.raises(TraceError, match=r"did not answer within 1 seconds"):
            sink.flush()
    finally:
        os.kill(sink.pid, signal.SIGCONT)
    sink.close()


def test_a_failed_write_in_the_writer_process_is_raised_at_the_next_call(tmp_path: Path) -> None:
    records = _steps(3)  # histograms of 8 bins, into files of 4
    sink = WriterProcess(tmp_path / "a.tft.h5", hist_bins=4, fsync=False)
    sink.write_step(records[0])  # returns at once: the writer process refuses it later
    with pytest.raises(TraceError, match=r"failed: Writing step 0 failed: .*has 8 bins"):
        sink.flush()
    with pytest.raises(TraceError, match="has 8 bins"):
        sink.write_step(records[1])  # and every call after
    sink.close()  # reported already: close lets go quietly
    assert _trace(tmp_path / "a.tft.h5") == ([], [])
    sink = WriterProcess(tmp_path / "b.tft.h5", hist_bins=4, fsync=False)
    sink.hold(records[0])
    with pytest.raises(TraceError, match=r"Writing the ring failed: .*has 8 bins"):
        sink.release()  # waits for the writer process: fails itself
    sink.close()


def test_a_writer_process_that_cannot_open_the_file_fails_at_once(tmp_path: Path) -> None:
    path = tmp_path / "rank-00000.tft.h5"
    path.write_bytes(b"")
    with pytest.raises(TraceError, match="already exists"):
        WriterProcess(path)


@pytest.mark.skipif(
    not hasattr(TraceWriter, "write_light_step"), reason="tracefmt cannot write light steps yet"
)
def test_light_steps_reach_the_trace(tmp_path: Path) -> None:
    path = tmp_path / "rank-00000.tft.h5"
    rows = empty_light_rows(1)
    rows["kind"], rows["norm"], rows["flags"] = LightKind.OUTPUT, 3.0, 1
    with WriterProcess(path, fsync=False) as sink:
        for s in range(3):
            sink.write_light_step(
                LightStepRecord(step=s, names=["fc"], rows=rows, scalars={"loss": 1.0})
            )
    _, lights = _trace(path)
    assert [s.step for s in lights] == [0, 1, 2]
    assert lights[0].rows[0].name == "fc"
    assert lights[0].scalars == {"loss": 1.0}


# -- a trainer that dies ---------------------------------------------------------------------------
def _run_child(tmp: Path, how: str, *, kill: bool = False) -> tuple[int, Path, str]:
    """Run the child trainer; returns its exit code, the trace, and the stderr that it and its
    writer process wrote.  Waits for the writer process to end (bounded)."""
    path = tmp / "rank-00000.tft.h5"
    err = tmp / "stderr.txt"
    with open(err, "w") as errf:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.recorder._flight_child", str(path), how],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=errf,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        assert proc.stdout is not None
        ready = proc.stdout.readline().split()
        assert ready[:1] == ["ready"], err.read_text()[-2000:]
        writer = os.pidfd_open(int(ready[1]))
        assert proc.stdout.readline().split() == ["held", "49"], err.read_text()[-2000:]
        if kill:
            proc.send_signal(signal.SIGKILL)
        code = proc.wait(timeout=60)  # reaps at once, racing the writer process
        ended, _, _ = select.select([writer], [], [], 60)
        os.close(writer)
    assert ended, "the writer process outlived its trainer by more than 60 s"
    return code, path, err.read_text()


def _death(path: Path) -> dict[str, Any]:
    steps, lights = _trace(path)
    assert steps == list(range(42, 50)), steps
    assert not [f for f in validate(path) if getattr(f, "severity", "error") == "error"]
    if hasattr(TraceWriter, "write_light_step"):
        assert [s.step for s in lights] == [50]
        events = list(lights[0].events)
    else:
        with tracefmt.open(path) as trace:
            events = list(trace.step(49).events)
    died = [e for e in events if e.kind == "process_died"]
    assert len(died) == 1, events
    fields: dict[str, Any] = json.loads(died[0].message)
    return fields


def test_sigkilled_trainer_leaves_its_ring_on_disk(tmp_path: Path) -> None:
    code, path, err = _run_child(tmp_path, "wait", kill=True)
    assert code == -signal.SIGKILL
    fields = _death(path)
    if EXACT_STATUS:
        assert fields["signal"] == "SIGKILL", fields
        assert "killed by SIGKILL" in fields["reason"]
    else:  # the parent may reap it before the writer process reads its status
        assert fields["signal"] in ("SIGKILL", None)
        assert fields["signal"] or "SIGKILL (or the OOM killer) or os._exit" in fields["reason"]
    assert "wrote steps 42..49 and a process_died event" in err


@pytest.mark.parametrize("how", ["segv", "segv-real"])
def test_segfaulting_trainer_leaves_its_ring_and_names_sigsegv(tmp_path: Path, how: str) -> None:
    code, path, err = _run_child(tmp_path, how)
    assert code == -signal.SIGSEGV
    fields = _death(path)
    assert fields["signal"] == "SIGSEGV", fields
    assert "SIGSEGV" in fields["reason"]
    assert "Fatal Python error: Segmentation fault" in fields["traceback"]
    assert "_flight_child.py" in fields["traceback"]
    assert "Fatal Python error: Segmentation fault" in err  # echoed where faulthandler would write


def test_os_exit_names_the_exit_code(tmp_path: Path) -> None:
    code, path, _ = _run_child(tmp_path, "exit")
    assert code == 3
    fields = _death(path)
    if EXACT_STATUS:
        assert fields["exit_code"] == 3, fields
        assert fields["signal"] is None


def test_closing_trainer_writes_nothing_of_its_ring(tmp_path: Path) -> None:
    code, path, err = _run_child(tmp_path, "close")
    assert code == 0, err[-2000:]
    assert _trace(path) == ([], [])
    assert "process_died" not in err


# -- what the writer process is made of ------------------------------------------------------------
def test_the_writer_process_imports_neither_torch_nor_multiprocessing() -> None:
    probe = (
        "import sys, recorder.flight.writerproc, recorder.flight.process; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'multiprocessing')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout


def test_the_transport_uses_no_pickle() -> None:
    banned = {"pickle", "_pickle", "multiprocessing", "marshal", "shelve", "copyreg"}
    for name in ("process", "wire", "wiredecode", "channel", "writerproc", "deathwatch"):
        tree = ast.parse((FLIGHT / f"{name}.py").read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mods = [node.module or ""]
            else:
                continue
            assert not {m.split(".")[0] for m in mods} & banned, (name, mods)


def test_record_dataclass_fields_all_travel() -> None:
    """A field added to StepRecord or LightStepRecord must be added to the wire too."""
    assert [f.name for f in dataclasses.fields(StepRecord)] == [
        "step", "graph", "stats", "op_stats", "values", "histograms", "events", "scalars",
        "wall_time", "duration", "dropped", "op_starts", "modules", "rng_states",
    ]  # fmt: skip
    assert [f.name for f in dataclasses.fields(LightStepRecord)] == [
        "step", "names", "rows", "scalars", "events", "wall_time", "duration",
    ]  # fmt: skip
