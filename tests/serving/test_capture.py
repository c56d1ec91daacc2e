"""Capture batches and late labels in the artefact store (a local directory here; any pyarrow URI in a cluster)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from serving.capture import (
    SPOOL_DIR,
    CaptureBuffer,
    read_captured,
    read_labels,
    read_spool,
    spool_root,
    write_labels,
)

ROW = {"age": 40, "income": 52_000.0, "region": "north"}


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def answered(buffer: CaptureBuffer, request_id: str, rows: int = 1, version: str = "1") -> None:
    buffer.add(
        [ROW] * rows,
        [{"probability": 0.25, "prediction": 0}] * rows,
        request_id=request_id,
        model="loans",
        version=version,
        role="champion",
    )


def test_batches_flush_when_full_or_old_and_read_back(tmp_path) -> None:
    clock = Clock()
    buffer = CaptureBuffer(str(tmp_path), batch_rows=3, flush_s=10, clock=clock)
    assert not buffer.due() and buffer.flush() is None, "nothing buffered, nothing written"
    answered(buffer, "a")
    answered(buffer, "b", rows=2)
    assert buffer.due(), "3 rows fill the batch"
    first = buffer.flush()
    assert first is not None and first.endswith(".parquet")
    answered(buffer, "c", version="2")
    assert not buffer.due()
    clock.now += 10
    assert buffer.due(), "the oldest row waited flush_s"
    buffer.flush()
    other = CaptureBuffer(str(tmp_path), batch_rows=1, flush_s=10, clock=clock)  # a second replica
    answered(other, "d")
    other.flush()
    frame = read_captured(str(tmp_path))
    assert frame["request_id"].tolist() == ["a", "b:0", "b:1", "c", "d"], "multi-row requests get a row index"
    assert frame["version"].tolist() == ["1", "1", "1", "2", "1"]
    assert set(ROW) <= set(frame.columns) and (frame["probability"] == 0.25).all()
    assert read_captured(str(tmp_path), since=1_005.0)["request_id"].tolist() == ["d"]
    assert (buffer.written_files, buffer.written_rows) == (2, 4)


def test_nothing_is_lost_when_a_write_fails(tmp_path) -> None:
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the store should be")
    buffer = CaptureBuffer(str(blocked), batch_rows=1, flush_s=1)
    answered(buffer, "a")
    with pytest.raises(OSError):
        buffer.flush()
    answered(buffer, "b")
    blocked.unlink()
    buffer.flush()
    assert read_captured(str(blocked))["request_id"].tolist() == ["a", "b"], "the failed batch was kept"


def test_half_written_files_are_never_read(tmp_path) -> None:
    buffer = CaptureBuffer(str(tmp_path), batch_rows=1, flush_s=1)
    answered(buffer, "a")
    path = buffer.flush()
    assert path is not None
    (tmp_path / "requests" / "stray.parquet.partial").write_bytes(b"PAR1 half")
    hidden = path.rsplit("/", 1)[0] + "/.hidden.parquet.partial"
    with open(hidden, "wb") as handle:
        handle.write(b"PAR1")
    assert read_captured(str(tmp_path))["request_id"].tolist() == ["a"]
    assert read_captured(str(tmp_path / "empty")).empty, "no capture yet is an empty frame, not an error"


def test_labels_are_validated_and_the_latest_wins(tmp_path) -> None:
    write_labels(str(tmp_path), [("a", 1), ("b", 0)])
    _, count = write_labels(str(tmp_path), [("a", 0)])
    assert count == 1
    labels = read_labels(str(tmp_path)).set_index("request_id")["label"].to_dict()
    assert labels == {"a": 0, "b": 0}
    for bad, why in (
        (True, "a number or a class name"),
        (float("nan"), "a finite number"),
        ("", "a number or a class name of 1 to 256"),
    ):
        with pytest.raises(ValueError, match=f"label for request 'c' must be {why}"):
            write_labels(str(tmp_path), [("c", bad)])
    with pytest.raises(ValueError, match="a number or a class name of 1 to 256"):
        write_labels(str(tmp_path), [("c", "x" * 257)])
    with pytest.raises(ValueError, match="lone surrogate"):
        write_labels(str(tmp_path), [("c", "\ud800")])
    with pytest.raises(ValueError, match="request_id must be a non-empty string"):
        write_labels(str(tmp_path), [("", 1)])
    with pytest.raises(ValueError, match="no labels"):
        write_labels(str(tmp_path), [])


def test_binary_answers_keep_their_columns_and_types(tmp_path) -> None:
    # Given a batch of the built-in classifier's answers only, when written and read back,
    buffer = CaptureBuffer(str(tmp_path), batch_rows=10, flush_s=10)
    answered(buffer, "a")
    path = buffer.flush()
    assert path is not None
    schema = pq.read_schema(path)
    # then the file holds probability (double) and prediction (int64) and no answer column, as before.
    assert schema.field("probability").type == pa.float64(), schema
    assert schema.field("prediction").type == pa.int64(), schema
    assert "answer" not in schema.names, f"binary batches are written as they always were: {schema.names}"


def test_other_answers_are_stored_as_json_and_read_back_beside_binary_ones(tmp_path) -> None:
    # Given one binary batch, then a batch mixing a classifier's label, a regression value and a binary answer,
    buffer = CaptureBuffer(str(tmp_path), batch_rows=10, flush_s=10)
    answered(buffer, "binary")
    buffer.flush()
    labelled = {"prediction": "yes", "probabilities": {"no": 0.25, "yes": 0.75}}
    for request_id, answer in [
        ("label", labelled),
        ("value", {"prediction": 12.5}),
        ("mixed", {"probability": 0.5, "prediction": 1}),
    ]:
        buffer.add([ROW], [answer], request_id=request_id, model="m", version="2", role="candidate")
    buffer.flush()
    # when everything is read back,
    frame = read_captured(str(tmp_path)).set_index("request_id")
    # then binary answers keep probability and prediction, the others are JSON in "answer", nothing dropped.
    assert frame.loc["binary", "probability"] == 0.25 and frame.loc["mixed", "prediction"] == 1, frame
    assert json.loads(frame.loc["label", "answer"]) == labelled, frame.loc["label"].to_dict()
    assert json.loads(frame.loc["value", "answer"]) == {"prediction": 12.5}, frame.loc["value"].to_dict()
    assert pd.isna(frame.loc["value", "probability"]), "no binary probability for a regression answer"
    assert pd.isna(frame.loc["binary", "answer"]), "binary answers have no JSON copy"


def test_an_all_integer_first_batch_does_not_fix_the_schema_for_later_reads(tmp_path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from serving.capture import REQUESTS_DIR, read_captured

    # Given a first capture file whose number column happened to hold only integers, and a later one with
    # fractions (two flushes of the same column),
    folder = tmp_path / REQUESTS_DIR
    folder.mkdir(parents=True)
    base = {"request_id": ["a"], "model": ["m"], "version": ["1"], "role": ["champion"]}
    pq.write_table(
        pa.table({**base, "income": pa.array([52_000], pa.int64()), "captured_at": [1.0]}),
        folder / "1.parquet",
    )
    pq.write_table(
        pa.table({**base, "request_id": ["b"], "income": [52_000.5], "captured_at": [2.0]}),
        folder / "2.parquet",
    )
    # when the checks read what was captured,
    frame = read_captured(str(tmp_path))
    # then both rows come back, the column as numbers, the fraction kept.
    assert list(frame["request_id"]) == ["a", "b"], frame
    assert list(frame["income"]) == [52_000.0, 52_000.5], frame["income"]


def test_a_row_no_table_can_hold_is_quarantined_and_the_good_rows_are_written(tmp_path) -> None:
    # Given a batch where one request carried a value Parquet cannot store (a lone surrogate, an integer
    # beyond 64 bits) between two good ones,
    buffer = CaptureBuffer(str(tmp_path), batch_rows=10, flush_s=10)
    answered(buffer, "good-1")
    for request_id, row in (("bad-str", {**ROW, "region": "\ud800"}), ("bad-int", {**ROW, "age": 10**30})):
        buffer.add(
            [row],
            [{"probability": 0.5, "prediction": 1}],
            request_id=request_id,
            model="loans",
            version="1",
            role="champion",
        )
    answered(buffer, "good-2")
    # when it is flushed,
    buffer.flush()
    # then the good rows are readable, the bad ones were set aside (not retried for ever), nothing is buffered.
    assert read_captured(str(tmp_path))["request_id"].tolist() == ["good-1", "good-2"], "good rows written"
    quarantined = [line for f in (tmp_path / "quarantine").iterdir() for line in f.read_text().splitlines()]
    assert sorted(json.loads(line)["request_id"] for line in quarantined) == ["bad-int", "bad-str"], (
        quarantined
    )
    assert buffer.quarantined_rows == 2 and not buffer.due(), "the bad rows are not kept to fail again"


def test_the_buffer_stays_bounded_while_the_store_refuses_writes(tmp_path) -> None:
    # Given a store that refuses every write,
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the store should be")
    buffer = CaptureBuffer(str(blocked), batch_rows=5, flush_s=1)
    # when far more requests arrive than the bound, with failed flushes in between,
    for index in range(200):
        answered(buffer, f"r{index}")
        if index % 5 == 4:
            with pytest.raises(OSError):
                buffer.flush()
    # then memory stays at the bound, the oldest rows were dropped and counted, and the newest are kept.
    assert len(buffer._rows) <= buffer.max_rows == 50, len(buffer._rows)
    assert buffer.dropped_rows == 200 - len(buffer._rows), buffer.dropped_rows
    assert buffer._rows[-1]["request_id"] == "r199", "the newest rows are the ones kept"


def test_labels_of_every_task_read_back_as_given_beside_older_integer_files(tmp_path) -> None:
    # Given a label file of an earlier release (integer labels only) and new ones: a class, a number,
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "labels").mkdir()
    old = pa.table({"request_id": ["old"], "label": pa.array([1], pa.int64()), "labelled_at": [1.0]})
    pq.write_table(old, tmp_path / "labels" / "00-old.parquet")
    write_labels(str(tmp_path), [("cls", "cultivar_b"), ("num", 151.5), ("bin", 0)])
    # when read back,
    labels = read_labels(str(tmp_path)).set_index("request_id")["label"].to_dict()
    # then each label is what was given, the old file's included.
    assert labels == {"old": 1, "cls": "cultivar_b", "num": 151.5, "bin": 0}, labels


def test_captured_answers_read_back_every_kind_of_answer(tmp_path) -> None:
    # Given a batch mixing a binary answer, a regression value and a class with its probabilities,
    from serving.capture import captured_answers, read_captured

    buffer = CaptureBuffer(str(tmp_path), batch_rows=10, flush_s=10)
    answers = [
        {"probability": 0.25, "prediction": 0},
        {"prediction": 151.5},
        {"prediction": "b", "probabilities": {"a": 0.1, "b": 0.9}},
    ]
    for index, answer in enumerate(answers):
        buffer.add([{"x": 1.0}], [answer], request_id=f"r{index}", model="m", version="1", role="champion")
    buffer.flush()
    # when the captured rows are read back, then each answer is the router's own.
    assert captured_answers(read_captured(str(tmp_path))) == answers


# -- the spool: a killed replica loses nothing it answered, recovered exactly once -------------------------
# A replica as the router runs it: each request spooled by ``add`` before it is answered (the id printed
# here stands for the answer), a batch written whenever one is due. ``--no-flush``: nothing is ever written,
# so every batch stays spooled (a replica whose store refused every write).
REPLICA = """
import sys, time
from serving.capture import CaptureBuffer
uri, tag, count, flush = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "flush"
buffer = CaptureBuffer(uri, batch_rows=7, flush_s=3600)
for index in range(count):
    buffer.add([{"age": index, "region": "north"}], [{"probability": 0.5, "prediction": 1}],
               request_id=f"{tag}-{index}", model="m", version="1", role="champion")
    print(f"{tag}-{index}", flush=True)
    if flush and buffer.due():
        buffer.flush()
print("done", flush=True)
time.sleep(600)
"""

# A replica that starts (recovering dead replicas' spools), writes what it holds and stops, once ``go`` exists.
RECOVERER = """
import os, sys, time
from serving.capture import CaptureBuffer
uri, go = sys.argv[1], sys.argv[2]
while not os.path.exists(go):
    time.sleep(0.001)
buffer = CaptureBuffer(uri, batch_rows=7, flush_s=3600)
buffer.flush()
print(buffer.recovered_files, flush=True)
buffer.close()
"""


def start_python(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True, env=dict(os.environ)
    )


def kill(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)


def answered_then_killed(
    uri: str, tag: str, count: int, flush: bool, kill_after: int | None = None
) -> list[str]:
    """Run a replica; SIGKILL it after ``kill_after`` answers (or once all are answered); the ids answered."""
    replica = start_python(REPLICA, uri, tag, str(count), "flush" if flush else "keep")
    answered: list[str] = []
    try:
        assert replica.stdout is not None
        for line in replica.stdout:
            if line.strip() == "done" or (kill_after is not None and len(answered) >= kill_after):
                break
            answered.append(line.strip())
    finally:
        kill(replica)
    assert replica.stdout is not None
    answered += [line.strip() for line in replica.stdout if line.strip() != "done"]  # answered before it died
    return answered


def lines_until_done(process: subprocess.Popen[str]) -> list[str]:
    """What a replica printed up to its "done" (bounded by its output ending, should it die)."""
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        if line.strip() == "done":
            break
        lines.append(line.strip())
    return lines


def captured_ids(uri: str) -> list[str]:
    return read_captured(uri)["request_id"].tolist()


def test_a_replica_killed_mid_stream_loses_no_answered_row_and_recovery_writes_each_once(tmp_path) -> None:
    # Given a replica answering a stream of requests, writing a batch every 7 rows, SIGKILLed mid-stream,
    uri = str(tmp_path)
    answered = answered_then_killed(uri, "r", count=100_000, flush=True, kill_after=300)
    assert len(answered) >= 300, f"the replica answered {len(answered)} requests before the kill"
    before = set(captured_ids(uri))
    assert set(answered) - before, "the killed replica had answered rows not yet written (the case at stake)"
    # when the next replica starts and flushes,
    recoverer = CaptureBuffer(uri, batch_rows=7, flush_s=3600)
    recoverer.flush()
    # then every answered row is captured exactly once; at most the one request in flight is captured unanswered.
    ids = captured_ids(uri)
    duplicated = sorted({i for i in ids if ids.count(i) > 1})
    assert not duplicated, f"rows captured twice: {duplicated[:5]}"
    assert not set(answered) - set(ids), f"answered rows lost: {sorted(set(answered) - set(ids))[:5]}"
    assert len(set(ids) - set(answered)) <= 1, f"captured, never answered: {sorted(set(ids) - set(answered))}"
    assert recoverer.recovered_files >= 1 and recoverer.pending_rows == 0, recoverer.recovered_files
    leftovers = [p.name for p in (tmp_path / SPOOL_DIR).rglob("*.jsonl")]
    assert not leftovers, f"recovered spool files are deleted once written: {leftovers}"


def test_racing_recoverers_write_each_orphaned_row_exactly_once(tmp_path) -> None:
    # Given three replicas, alive together, killed with all they answered still spooled (9 batches each),
    uri = str(tmp_path)
    replicas = [start_python(REPLICA, uri, tag, "63", "keep") for tag in "abc"]
    answered = []
    try:
        for replica in replicas:
            answered += lines_until_done(replica)
    finally:
        for replica in replicas:
            kill(replica)
    assert len(answered) == 189 and captured_ids(uri) == [], "nothing written before the recovery"
    orphans = list((tmp_path / SPOOL_DIR).rglob("*.jsonl"))
    # when three replicas start at the same instant and all race to recover them,
    go = tmp_path / "go"
    recoverers = [start_python(RECOVERER, uri, str(go)) for _ in range(3)]
    time.sleep(2.0)  # every recoverer imported and waiting
    go.touch()
    claimed = []
    for recoverer in recoverers:
        out, _ = recoverer.communicate(timeout=120)
        assert recoverer.returncode == 0, f"a recoverer failed (exit {recoverer.returncode})"
        claimed.append(int(out.strip()))
    # then each orphaned file was claimed by exactly one of them and every row is written exactly once.
    assert sum(claimed) == len(orphans), f"claims per recoverer {claimed} for {len(orphans)} orphaned files"
    ids = captured_ids(uri)
    assert sorted(ids) == sorted(answered), (
        f"{len(ids)} rows for {len(answered)} answered; twice: {sorted({i for i in ids if ids.count(i) > 1})[:5]}"
    )
    assert not list((tmp_path / SPOOL_DIR).iterdir()), "the dead and the closed spools are all cleaned up"


def test_a_spool_converted_twice_after_a_crash_writes_no_duplicate(tmp_path) -> None:
    # Given a replica that wrote a batch and died before deleting its spool file (a copy stands for it),
    uri = str(tmp_path)
    buffer = CaptureBuffer(uri, batch_rows=100, flush_s=3600)
    for index in range(5):
        answered(buffer, f"r{index}")
    (spooled,) = (tmp_path / SPOOL_DIR / buffer.writer_id).glob("*.jsonl")
    copy = spooled.read_bytes()
    first = buffer.flush()
    assert first is not None and captured_ids(uri) == [f"r{i}" for i in range(5)]
    buffer.close()
    dead = tmp_path / SPOOL_DIR / "deadbeef"
    dead.mkdir()
    (dead / "owner.lock").touch()
    (dead / spooled.name).write_bytes(copy)
    # when another replica recovers that spool file and converts it again,
    other = CaptureBuffer(uri, batch_rows=100, flush_s=3600)
    second = other.flush()
    # then it rewrote the same file: every row is there once.
    assert second == first, f"the same batch goes to the same file: {second} vs {first}"
    assert captured_ids(uri) == [f"r{i}" for i in range(5)], captured_ids(uri)


def test_a_live_replicas_spool_is_never_taken_and_a_torn_last_line_is_skipped(tmp_path) -> None:
    # Given a live replica (another process) holding spooled rows it has not written,
    uri = str(tmp_path)
    replica = start_python(REPLICA, uri, "live", "10", "keep")
    try:
        live = lines_until_done(replica)
        assert len(live) == 10, live
        # and a dead one whose last write was torn by the kill,
        dead = tmp_path / SPOOL_DIR / "deadbeef"
        dead.mkdir()
        (dead / "owner.lock").touch()
        whole = json.dumps({**ROW, "request_id": "whole", "captured_at": 1.0, "model": "m", "version": "1"})
        (dead / "20261130T000000000000-deadbeef-000001.jsonl").write_text(whole + '\n{"request_id": "to')
        # when this process recovers,
        recoverer = CaptureBuffer(uri, batch_rows=100, flush_s=3600)
        recoverer.flush()
        # then it took the dead spool only: the whole line written, the torn one skipped, the live rows left.
        assert captured_ids(uri) == ["whole"], captured_ids(uri)
        assert recoverer.unreadable_lines == 1, recoverer.unreadable_lines
    finally:
        kill(replica)
    # and once the live one dies, its rows are recovered too.
    CaptureBuffer(uri, batch_rows=100, flush_s=3600).flush()
    assert sorted(captured_ids(uri)) == sorted(["whole", *live]), captured_ids(uri)


def test_the_spool_stays_bounded_while_a_remote_store_refuses_writes(tmp_path) -> None:
    # Given a store that refuses every write, with a spool on local disk (as for s3://),
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the store should be")
    buffer = CaptureBuffer(str(blocked), batch_rows=5, flush_s=1, spool_dir=str(tmp_path / "spool"))
    # when far more requests arrive than the bound, with failed flushes in between,
    for index in range(200):
        answered(buffer, f"r{index}")
        if index % 5 == 4:
            with pytest.raises(OSError):
                buffer.flush()
    # then the spool holds at most the bound, the oldest batches were dropped and counted, the newest kept;
    spooled = sorted((tmp_path / "spool" / buffer.writer_id).glob("*.jsonl"))
    rows = [r["request_id"] for path in spooled for r in read_spool(str(path))[0]]
    assert len(rows) == buffer.pending_rows <= buffer.max_rows == 50, (len(rows), buffer.pending_rows)
    assert buffer.dropped_rows == 200 - len(rows) and rows[-1] == "r199", (buffer.dropped_rows, rows[-3:])
    # and when the store takes writes again, what was kept is written.
    blocked.unlink()
    buffer.flush()
    assert captured_ids(str(blocked)) == rows, "the kept rows are written once the store is back"


def test_where_the_spool_lives() -> None:
    # A local capture directory spools beside itself; a remote store on the replica's local disk, per URI.
    assert spool_root("/data/capture") == "/data/capture/spool"
    assert spool_root("file:///data/capture") == "/data/capture/spool"
    remote = spool_root("s3://bucket/capture")
    assert remote.startswith(tempfile.gettempdir()) and remote != spool_root("s3://bucket/other"), remote


def test_a_spool_write_cut_short_keeps_the_rows_in_memory_and_writes_each_once(tmp_path, monkeypatch) -> None:
    import errno as errno_module

    import serving.capture as capture_module

    class DiskFillsUp:
        """``os`` as the capture module sees it, whose next write stores half its bytes, then fails (ENOSPC)."""

        def __getattr__(self, name: str) -> object:
            return getattr(os, name)

        def write(self, fd: int, data: bytes) -> int:
            os.write(fd, bytes(data[: len(data) * 2 // 3]))  # whole lines of the first rows, then a torn one
            raise OSError(errno_module.ENOSPC, "No space left on device")

    # Given a spool that takes one request, then fails in the middle of a three-row one,
    buffer = CaptureBuffer(str(tmp_path), batch_rows=100, flush_s=3600)
    answered(buffer, "a")
    monkeypatch.setattr(capture_module, "os", DiskFillsUp())
    answered(buffer, "b", rows=3)
    monkeypatch.undo()
    answered(buffer, "c")
    # when it is flushed,
    buffer.flush()
    # then every row is written exactly once: the cut-short request from memory, nothing of it from the spool.
    ids = captured_ids(str(tmp_path))
    assert sorted(ids) == ["a", "b:0", "b:1", "b:2", "c"], ids
