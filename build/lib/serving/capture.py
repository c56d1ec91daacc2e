"""Capture: a sample of served requests and their answers, written in Parquet batches to the artefact store.

Each router replica buffers the sampled rows it answered and writes them as one Parquet file per batch under
``<uri>/requests/``; labels that arrive later are written under ``<uri>/labels/`` and joined on the request id.
The store is any ``pyarrow.fs`` URI: a local directory in the embedded default, ``s3://`` on AWS. Files are
written under a temporary name and renamed, so a reader never sees half a batch; nothing is appended in place,
so any number of replicas can write side by side.

A binary classifier's answer is stored as ``probability`` and ``prediction`` columns; any other answer (a
regression value, a class label, class probabilities) as its JSON text in ``answer``, so files written for
different kinds of model read back together.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from serving.answers import PREDICTION, PROBABILITY, binary_probability

logger = logging.getLogger("ray.serve")
REQUESTS_DIR, LABELS_DIR, QUARANTINE_DIR = "requests", "labels", "quarantine"
BUFFER_BATCHES = 10
"""A replica buffers at most this many batches while the store refuses writes; older rows are dropped."""
ANSWER = "answer"
META_COLUMNS = ("request_id", "captured_at", "model", "version", "role", PROBABILITY, PREDICTION, ANSWER)
# Typed so that a batch with none of them set still writes a column every reader can combine.
ANSWER_TYPES = {PROBABILITY: pa.float64(), PREDICTION: pa.int64(), ANSWER: pa.string()}


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and root path of a local path or any ``pyarrow.fs`` URI (``s3://bucket/prefix``)."""
    if "://" not in uri:
        uri = os.path.abspath(uri)
    return pafs.FileSystem.from_uri(uri)


def _write_atomically(table: pa.Table, uri: str, directory: str, stem: str) -> str:
    store, root = filesystem(uri)
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    folder = f"{root.rstrip('/')}/{directory}/day={day}"
    store.create_dir(folder, recursive=True)
    final = f"{folder}/{stem}.parquet"
    partial = f"{folder}/.{stem}.parquet.partial"
    pq.write_table(table, partial, filesystem=store)
    store.move(partial, final)
    return final


class CaptureBuffer:
    """Sampled answers of one replica, flushed as a Parquet file every ``batch_rows`` rows or ``flush_s``."""

    def __init__(self, uri: str, batch_rows: int, flush_s: float, clock: Any = time.time):
        self.uri, self.batch_rows, self.flush_s, self.clock = uri, batch_rows, flush_s, clock
        self.writer_id = uuid.uuid4().hex[:8]
        self._rows: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._oldest: float | None = None
        self._sequence = 0
        self.written_files = 0
        self.written_rows = 0
        self.quarantined_rows = 0  # rows no table could hold (written aside as JSON lines, never retried)
        self.dropped_rows = 0  # rows dropped because the store refused writes for too long (buffer full)
        self.max_rows = BUFFER_BATCHES * batch_rows

    def add(
        self,
        rows: list[dict[str, Any]],
        answers: list[dict[str, Any]],
        *,
        request_id: str,
        model: str,
        version: str,
        role: str,
    ) -> None:
        """Buffer one answered request (all its rows); the row index is appended to the request id."""
        now = self.clock()
        with self._lock:
            if self._oldest is None:
                self._oldest = now
            overflow = len(self._rows) + len(rows) - self.max_rows
            if (
                overflow > 0
            ):  # the store has refused writes for long: the oldest rows go, memory stays bounded
                del self._rows[:overflow]
                self.dropped_rows += overflow
                logger.warning(
                    "capture buffer full (%d rows): dropped the oldest %d", self.max_rows, overflow
                )
            for index, (row, answer) in enumerate(zip(rows, answers, strict=True)):
                self._rows.append(
                    {
                        **row,
                        "request_id": request_id if len(rows) == 1 else f"{request_id}:{index}",
                        "captured_at": now,
                        "model": model,
                        "version": version,
                        "role": role,
                        **answer_columns(answer),
                    }
                )

    def due(self) -> bool:
        """Whether a batch is full or the oldest buffered row has waited ``flush_s``."""
        with self._lock:
            if not self._rows:
                return False
            return len(self._rows) >= self.batch_rows or self.clock() - (self._oldest or 0) >= self.flush_s

    def flush(self) -> str | None:
        """Write what is buffered as one file; the path, or None when nothing was buffered.

        On a write error the rows go back into the buffer (nothing is lost) and the error is raised.
        """
        with self._lock:
            rows, self._rows, oldest, self._oldest = self._rows, [], self._oldest, None
            self._sequence += 1
            sequence = self._sequence
        if not rows:
            return None
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        stem = f"{stamp}-{self.writer_id}-{sequence:06d}"
        table, bad = _writable(rows)
        if bad:
            self._quarantine(bad, stem)
        if table is None:
            return None
        try:
            path = _write_atomically(table, self.uri, REQUESTS_DIR, stem)
        except Exception:
            good = [row for row in rows if not any(row is b for b in bad)]
            with self._lock:
                room = max(self.max_rows - len(self._rows), 0)
                self.dropped_rows += max(len(good) - room, 0)
                self._rows[:0] = good[len(good) - min(room, len(good)) :]
                self._oldest = oldest if self._oldest is None else min(oldest or 0, self._oldest)
            raise
        self.written_files += 1
        self.written_rows += table.num_rows
        return path

    def _quarantine(self, rows: list[dict[str, Any]], stem: str) -> None:
        """Write rows no table could hold as JSON lines under ``quarantine/`` (escaped, so always writable)."""
        self.quarantined_rows += len(rows)
        logger.warning("capture: %d row(s) cannot be stored as a table; quarantined", len(rows))
        try:
            store, root = filesystem(self.uri)
            folder = f"{root.rstrip('/')}/{QUARANTINE_DIR}"
            store.create_dir(folder, recursive=True)
            with store.open_output_stream(f"{folder}/{stem}.jsonl") as stream:
                for row in rows:
                    stream.write((json.dumps(row, default=repr, ensure_ascii=True) + "\n").encode())
        except Exception:  # the quarantine is a courtesy: its failure must not stop good rows
            logger.exception("capture: the quarantined rows could not be written either")


def answer_columns(answer: dict[str, Any]) -> dict[str, Any]:
    """How one answer is stored: a binary classifier's as probability and 0/1 prediction, any other as JSON."""
    probability = binary_probability(answer)
    prediction = answer.get(PREDICTION)
    if probability is not None and prediction in (0, 1) and not isinstance(prediction, bool):
        return {PROBABILITY: probability, PREDICTION: int(prediction)}
    return {ANSWER: json.dumps(answer, sort_keys=True)}


def _writable(rows: list[dict[str, Any]]) -> tuple[pa.Table | None, list[dict[str, Any]]]:
    """The rows as one table, and the rows no table could hold (found one by one only when the batch fails)."""
    try:
        return _table(rows), []
    except (pa.ArrowException, OverflowError, UnicodeError, TypeError, ValueError):
        pass
    good, bad = [], []
    for row in rows:
        try:
            _table([row])
        except (pa.ArrowException, OverflowError, UnicodeError, TypeError, ValueError):
            bad.append(row)
        else:
            good.append(row)
    if not good:
        return None, bad
    try:
        return _table(good), bad
    except (pa.ArrowException, OverflowError, UnicodeError, TypeError, ValueError):
        return None, rows  # rows fine alone that conflict together: set them all aside rather than loop


def _table(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows with differing keys (binary and other answers in one batch) as one table, missing cells null."""
    names = list(dict.fromkeys(name for row in rows for name in row))
    return pa.table(
        {name: pa.array([row.get(name) for row in rows], type=ANSWER_TYPES.get(name)) for name in names}
    )


MAX_LABEL_CHARS = 256
"""A class label longer than this is refused: labels are joined and counted, not stored as documents."""
LABEL, LABEL_CLASS = "label", "label_class"


def _label_columns(request_id: Any, label: Any) -> tuple[float | None, str | None]:
    """One label as stored: a number in ``label``, a class name in ``label_class``; ValueError when neither."""
    if not isinstance(request_id, str) or not request_id:
        raise ValueError(f"request_id must be a non-empty string, got {request_id!r}")
    if isinstance(label, bool):
        raise ValueError(f"label for request {request_id!r} must be a number or a class name, not {label!r}")
    if isinstance(label, int | float):
        if not math.isfinite(label) or abs(label) > 2.0**53:
            raise ValueError(f"label for request {request_id!r} must be a finite number, got {label!r}")
        return float(label), None
    if isinstance(label, str) and 0 < len(label) <= MAX_LABEL_CHARS:
        try:
            label.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(
                f"label for request {request_id!r} is not valid text (a lone surrogate)"
            ) from None
        return None, label
    raise ValueError(
        f"label for request {request_id!r} must be a number or a class name of 1 to {MAX_LABEL_CHARS} "
        f"characters, got {label!r:.80}"
    )


def write_labels(uri: str, labels: Iterable[tuple[str, Any]]) -> tuple[str, int]:
    """Record late labels (request id, label); returns the file written and how many labels it holds.

    A label is what the model predicts: 0/1 for a binary classifier, a class name (or number) for a
    multiclass one, a number for a regression. Whether it fits the model is judged where quality is
    measured, per task; here every pair is checked for shape, and nothing is written when one fails.
    """
    pairs = list(labels)
    if not pairs:
        raise ValueError("no labels given")
    columns = [_label_columns(request_id, label) for request_id, label in pairs]
    table = pa.table(
        {
            "request_id": [p[0] for p in pairs],
            LABEL: pa.array([c[0] for c in columns], pa.float64()),
            LABEL_CLASS: pa.array([c[1] for c in columns], pa.string()),
            "labelled_at": [time.time()] * len(pairs),
        }
    )
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    return _write_atomically(table, uri, LABELS_DIR, f"{stamp}-{uuid.uuid4().hex[:8]}"), len(pairs)


def _read(uri: str, directory: str) -> pa.Table | None:
    store, root = filesystem(uri)
    folder = f"{root.rstrip('/')}/{directory}"
    if store.get_file_info(folder).type == pafs.FileType.NotFound:
        return None
    selector = pafs.FileSelector(folder, recursive=True)
    files = sorted(
        info.path
        for info in store.get_file_info(selector)
        if info.is_file and info.path.endswith(".parquet") and not info.base_name.startswith(".")
    )
    if not files:
        return None
    # Files differ in columns (answers of other kinds, other feature sets): read them under one schema,
    # or columns missing from the first file would be dropped from all.
    schema: pa.Schema | None
    try:
        schema = pa.unify_schemas(
            [pq.read_schema(path, filesystem=store) for path in files], promote_options="permissive"
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        schema = None  # a column whose type conflicts between files: the first file's schema decides
    return ds.dataset(files, schema=schema, filesystem=store, format="parquet").to_table()


def read_captured(uri: str, since: float = 0.0, until: float | None = None) -> Any:
    """Captured rows answered in [since, until) as a DataFrame (empty when nothing was captured)."""
    import pandas as pd

    table = _read(uri, REQUESTS_DIR)
    if table is None:
        return pd.DataFrame(columns=list(META_COLUMNS))
    frame = table.to_pandas()
    keep = frame["captured_at"] >= since
    if until is not None:
        keep &= frame["captured_at"] < until
    return frame[keep].sort_values("captured_at", kind="stable").reset_index(drop=True)


def read_labels(uri: str) -> Any:
    """Every label recorded so far (the latest label wins for a request id).

    ``label`` holds each label as it was given: a number, or a class name (files of earlier releases hold
    integer labels only).
    """
    import pandas as pd

    table = _read(uri, LABELS_DIR)
    if table is None:
        return pd.DataFrame(columns=["request_id", LABEL, "labelled_at"])
    frame = table.to_pandas().sort_values("labelled_at", kind="stable")
    if LABEL_CLASS in frame.columns:
        named = frame[LABEL_CLASS].notna()
        if named.any():
            frame[LABEL] = frame[LABEL].astype(object)
            frame.loc[named, LABEL] = frame.loc[named, LABEL_CLASS]
        frame = frame.drop(columns=[LABEL_CLASS])
    frame = frame.drop_duplicates("request_id", keep="last").reset_index(drop=True)
    return frame


def captured_answers(frame: Any) -> list[dict[str, Any] | None]:
    """Each captured row's answer as the router gave it (a binary one from its columns), None when unreadable."""
    answers: list[dict[str, Any] | None] = []
    texts = frame[ANSWER] if ANSWER in frame.columns else [None] * len(frame)
    probabilities = frame[PROBABILITY] if PROBABILITY in frame.columns else [None] * len(frame)
    predictions = frame[PREDICTION] if PREDICTION in frame.columns else [None] * len(frame)
    for text, probability, prediction in zip(texts, probabilities, predictions, strict=True):
        if isinstance(text, str):
            try:
                answer = json.loads(text)
            except (json.JSONDecodeError, RecursionError):
                answer = None
            answers.append(answer if isinstance(answer, dict) else None)
        elif probability is not None and probability == probability:
            answers.append({PROBABILITY: float(probability), PREDICTION: prediction})
        else:
            answers.append(None)
    return answers
