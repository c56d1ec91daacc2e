"""Capture batches and late labels in the artefact store (a local directory here; any pyarrow URI in a cluster)."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from serving.capture import CaptureBuffer, read_captured, read_labels, write_labels

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
