"""The trigger checks' history: today's rows read back typed, rows written in today's format, bad lines skipped."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from pipeline.history import (
    CURSOR,
    DRIFT_HISTORY,
    QUALITY_HISTORY,
    SERVING_HISTORY,
    DriftRow,
    FileCursor,
    QualityRow,
    ServingSample,
    WatchCursor,
    append_row,
    history_store,
    read_cursor,
    read_rows,
    stamp_of,
    write_cursor,
)
from pipeline.store import StateStore

# Lines exactly as the watcher wrote them before the rows were typed (json.dumps(row, sort_keys=True)).
TODAYS_DRIFT = json.dumps(
    {"time": 1.5, "version": "3", "drifted": True, "scores": {"age": 0.31, "__prediction__": 0.4}},
    sort_keys=True,
)
TODAYS_QUALITY = json.dumps(
    {"time": 2.5, "version": "3", "metrics": {"auc": float("nan"), "rows": 250.0}}, sort_keys=True
)
TODAYS_SERVING = json.dumps(
    {
        "time": 3.5,
        "version": "3",
        "role": "champion",
        "requests_per_s": 12.0,
        "error_rate": 0.0,
        "p50_s": 0.005,
        "p99_s": None,
    },
    sort_keys=True,
)


@pytest.fixture()
def store(tmp_path: Path) -> StateStore:
    return history_store(tmp_path / "state", "loans")


def test_rows_in_todays_format_read_back_typed(store: StateStore) -> None:
    # Given a store whose histories were written by the watcher before the rows were typed
    store.write_text(DRIFT_HISTORY, TODAYS_DRIFT + "\n")
    store.write_text(QUALITY_HISTORY, TODAYS_QUALITY + "\n")
    store.write_text(SERVING_HISTORY, TODAYS_SERVING + "\n")

    # When they are read
    drift = read_rows(store, DriftRow)
    quality = read_rows(store, QualityRow)
    serving = read_rows(store, ServingSample)

    # Then every row comes back typed, nothing skipped
    assert drift.rows == (
        DriftRow(time=1.5, version="3", drifted=True, scores={"age": 0.31, "__prediction__": 0.4}),
    ), "the drift row, typed"
    assert (drift.skipped, quality.skipped, serving.skipped) == (0, 0, 0), "no line is malformed"
    latest = quality.latest
    assert latest is not None and latest.metrics["rows"] == 250.0, "the quality row, typed"
    assert math.isnan(latest.metrics["auc"]), "an AUC not measurable yet (one class) stays NaN"
    assert serving.rows == (
        ServingSample(
            time=3.5,
            version="3",
            role="champion",
            requests_per_s=12.0,
            error_rate=0.0,
            p50_s=0.005,
            p99_s=None,
        ),
    ), "the serving sample, typed, a missing quantile as None"


def test_a_written_row_is_the_line_todays_readers_expect(store: StateStore) -> None:
    # Given typed rows of each history
    drift = DriftRow(time=1.5, version="3", drifted=True, scores={"age": 0.31, "__prediction__": 0.4})
    quality = QualityRow(time=2.5, version="3", metrics={"auc": float("nan"), "rows": 250.0})
    serving = ServingSample(
        time=3.5, version="3", role="champion", requests_per_s=12.0, error_rate=0.0, p50_s=0.005, p99_s=None
    )

    # When they are appended
    for row in (drift, quality, serving):
        append_row(store, row)

    # Then each file holds the very line the untyped watcher wrote (same keys, same values)
    assert store.read_text(DRIFT_HISTORY) == TODAYS_DRIFT + "\n", "drift.jsonl unchanged on disk"
    assert store.read_text(QUALITY_HISTORY) == TODAYS_QUALITY + "\n", "quality.jsonl unchanged on disk"
    assert store.read_text(SERVING_HISTORY) == TODAYS_SERVING + "\n", "serving.jsonl unchanged on disk"
    assert store.rows(DRIFT_HISTORY) == [json.loads(TODAYS_DRIFT)], "untyped readers still read it"


def test_malformed_lines_are_skipped_and_counted(store: StateStore) -> None:
    # Given a drift history with a row, four kinds of bad line and a half-written last append
    newer = json.dumps({**json.loads(TODAYS_DRIFT), "time": 9.0, "window_id": "w7"})
    lines = [
        TODAYS_DRIFT,
        "not json",
        json.dumps([1, 2, 3]),
        json.dumps({"time": 4.0, "version": "3"}),
        json.dumps({**json.loads(TODAYS_DRIFT), "drifted": "perhaps"}),
        "",
        newer,
        TODAYS_DRIFT[:20],
    ]
    store.write_text(DRIFT_HISTORY, "\n".join(lines))

    # When it is read
    history = read_rows(store, DriftRow)

    # Then the valid rows come back in order and each bad line is counted, none raised
    assert [row.time for row in history.rows] == [1.5, 9.0], "both valid rows, oldest first"
    assert history.skipped == 5, "not JSON, not an object, a missing key, a bad value, a half line"


def test_a_missing_history_is_empty(store: StateStore) -> None:
    # Given a model whose checks have written nothing yet
    # When its history is read
    history = read_rows(store, QualityRow)

    # Then there are no rows, nothing skipped and no latest row
    assert (history.rows, history.skipped, history.latest) == ((), 0, None), "an empty history"


def test_a_version_written_as_a_number_reads_as_its_string(store: StateStore) -> None:
    # Given a row whose version was written as a number
    store.write_text(QUALITY_HISTORY, json.dumps({"time": 1.0, "version": 7, "metrics": {"auc": 0.8}}))

    # When it is read
    latest = read_rows(store, QualityRow).latest

    # Then the version is the string the registry uses
    assert latest is not None and latest.version == "7", "versions are strings"


def test_the_cursor_keeps_its_keys_and_starts_at_zero(store: StateStore) -> None:
    # Given a fresh store
    fresh = read_cursor(store)

    # When a cursor is written
    write_cursor(store, WatchCursor(drift_since=5.0, labels_since=6.0))

    # Then a fresh cursor starts at the beginning, and a cursor of an earlier release (times only) starts
    # its file cursors at those times: files begun before then hold only rows judged then
    assert fresh == WatchCursor(), "nothing judged yet"
    assert fresh.drift_files.unseen(["day=x/20260101T000000000000-a-000001.parquet"]) != [], "all unseen"
    back = read_cursor(store)
    assert back.drift_since == 5.0 and back.drift_files.before == stamp_of(5.0), "read back"
    store.write(CURSOR, {"drift_since": 5.0, "labels_since": 6.0})  # as earlier releases wrote it
    assert read_cursor(store).labels_files.before == stamp_of(6.0), "an old cursor is understood"


def test_a_file_that_lands_late_is_still_judged_and_the_cursor_stays_bounded() -> None:
    # Given a cursor that judged replica A's file named 12:00:05,
    a, b = "day=d/20260302T120005000000-a-000001.parquet", "day=d/20260302T120001000000-b-000001.parquet"
    cursor = FileCursor().advance([a])
    # when replica B's file, begun at 12:00:01, lands afterwards, then it is not judged yet,
    assert cursor.unseen([b, a]) == [b], "the late file is new to the cursor"
    # and once judged, neither is offered again;
    cursor = cursor.advance([b])
    assert cursor.unseen([b, a]) == [], cursor
    # files named more than the grace behind the newest count as judged, and are forgotten.
    later = "day=d/20260302T140000000000-a-000002.parquet"
    cursor = cursor.advance([later])
    assert cursor.seen == (later,) and cursor.unseen([a, b]) == [], cursor


def test_history_store_is_the_models_watch_directory(tmp_path: Path) -> None:
    # Given a state directory
    # When a model's history store is opened
    store = history_store(tmp_path, "loans")

    # Then it lives under watch/<model> (where the e2e tests and existing stores look)
    assert store.uri == f"{tmp_path}/watch/loans", "the same place as before"
