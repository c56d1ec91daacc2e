"""Capture: a sample of served requests and their answers, written in Parquet batches to the artefact store.

Each router replica appends the sampled rows of a request to a spool file of its own *before* it answers
(one write per request), and converts spooled batches into one Parquet file each under ``<uri>/requests/``;
labels that arrive later are written under ``<uri>/labels/`` and joined on the request id. The store is any
``pyarrow.fs`` URI: a local directory in the embedded default, ``s3://`` on AWS. Files are written under a
temporary name and renamed, so a reader never sees half a batch; nothing is appended in place, so any number
of replicas can write side by side.

The spool makes a killed replica lose nothing it answered: a replica holds an exclusive ``flock`` on its spool
directory for its life, the kernel drops that lock when the process dies however it dies, and any live
replica of the same capture location then claims the orphan's files (an atomic rename: exactly one claimer
wins) and converts them. A Parquet file is named after the spool file it came from, so converting one twice
(a replica killed between writing the Parquet file and deleting the spool file) rewrites the same file:
recovery is idempotent. Where the spool lives: beside a local capture directory (``<uri>/spool``); for a
remote store (``s3://``) in a local directory (``<tmp>/lockgate-capture-spool/<hash of the URI>``). What
survives, plainly: a replica process killed or restarted on the same machine (the same pod, whose filesystem
stays) - yes; a lost pod or node - no, its spool goes with its disk. No ``fsync`` per request: the spool must
outlive the *process*, and a ``write(2)`` that returned is in the kernel's page cache, which any process
reads at once and which a SIGKILL does not touch; only a kernel crash or power loss loses it, and that loses
the node (and, in a cluster, the pod's local disk) too. An fsync per request would cost a disk flush on the
request path for no case the spool can save (measured: ``benchmarks/chaos_bench/spool_cost.py``).

A binary classifier's answer is stored as ``probability`` and ``prediction`` columns; any other answer (a
regression value, a class label, class probabilities) as its JSON text in ``answer``, so files written for
different kinds of model read back together.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import math
import os
import tempfile
import threading
import time
import uuid
import weakref
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


def _write_atomically(table: pa.Table, uri: str, directory: str, stem: str, day: str | None = None) -> str:
    """Write ``table`` as ``<uri>/<directory>/day=<day>/<stem>.parquet`` (rename from a hidden partial)."""
    store, root = filesystem(uri)
    day = day or datetime.now(UTC).strftime("%Y-%m-%d")
    folder = f"{root.rstrip('/')}/{directory}/day={day}"
    store.create_dir(folder, recursive=True)
    final = f"{folder}/{stem}.parquet"
    # Unique per attempt: a recovering replica and a dying owner may convert the same spool file at once.
    partial = f"{folder}/.{stem}.{uuid.uuid4().hex[:6]}.parquet.partial"
    pq.write_table(table, partial, filesystem=store)
    store.move(partial, final)
    return final


SPOOL_DIR = "spool"
"""A local capture location keeps its replicas' spools in ``<uri>/spool`` (beside ``requests/``)."""
SPOOL_SUFFIX, OWNER_LOCK = ".jsonl", "owner.lock"
RECOVER_S = 30.0
"""How often a live replica looks for the spools of replicas that died (one also looks when it starts)."""


def spool_root(uri: str) -> str:
    """Where the replicas capturing to ``uri`` spool: beside a local capture directory, else a local temp dir.

    A remote store (``s3://``) cannot be appended to; its spool is on the replica's own disk, so only a
    replica on the same machine (the same pod) can recover it.
    """
    if "://" not in uri or uri.startswith("file://"):
        return os.path.join(os.path.abspath(uri.removeprefix("file://")), SPOOL_DIR)
    digest = hashlib.sha256(uri.encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), "lockgate-capture-spool", digest)


def _day_of(stem: str) -> str | None:
    """The day a spool file was started (from its name), so that converting it twice gives the same path."""
    try:
        return datetime.strptime(stem[:8], "%Y%m%d").strftime("%Y-%m-%d")
    except ValueError:
        return None


class _SpoolHandles:
    """The open files of one replica's spool: its lock (held for its life) and the file being appended to."""

    def __init__(self) -> None:
        self.directory: str | None = None
        self.lock_fd: int | None = None
        self.active_fd: int | None = None

    def close_active(self) -> None:
        if self.active_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.active_fd)
        self.active_fd = None

    def release(self) -> None:
        """Close everything; an empty directory is removed, one with batches left is left to recovery."""
        self.close_active()
        if self.lock_fd is None or self.directory is None:
            return
        with contextlib.suppress(OSError):
            if not any(name.endswith(SPOOL_SUFFIX) for name in os.listdir(self.directory)):
                os.unlink(os.path.join(self.directory, OWNER_LOCK))
                os.rmdir(self.directory)
        os.close(self.lock_fd)
        self.lock_fd = None


def read_spool(path: str) -> tuple[list[dict[str, Any]], int]:
    """The rows of one spool file, and how many lines were unreadable (a torn last write, a damaged line).

    A line is written whole before the router answers: a torn one belongs to a request that was not answered.
    """
    with open(path, "rb") as handle:
        data = handle.read()
    lines = data.split(b"\n")
    torn = 1 if lines[-1] else 0  # text after the last newline: a write the process did not finish
    rows: list[dict[str, Any]] = []
    for line in lines[:-1]:
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            torn += 1
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            torn += 1
    return rows, torn


class CaptureBuffer:
    """Sampled answers of one replica: spooled per request, written as Parquet every ``batch_rows`` or ``flush_s``.

    ``spool_dir`` overrides where the spool lives (default :func:`spool_root` of ``uri``). When the spool
    cannot be written (a read-only or full disk) rows are kept in memory instead, bounded, as before the
    spool existed: capture never fails a request.
    """

    def __init__(
        self,
        uri: str,
        batch_rows: int,
        flush_s: float,
        clock: Any = time.time,
        *,
        spool_dir: str | None = None,
        recover_s: float = RECOVER_S,
    ):
        self.uri, self.batch_rows, self.flush_s, self.clock = uri, batch_rows, flush_s, clock
        self.recover_s = recover_s
        self.writer_id = uuid.uuid4().hex[:8]
        self._rows: list[dict[str, Any]] = []  # only rows the spool could not take
        self._lock = threading.Lock()  # the spool files, the counters, the memory rows
        self._flush_lock = threading.Lock()  # one conversion at a time
        self._oldest: float | None = None
        self._sequence = 0
        self.written_files = 0
        self.written_rows = 0
        self.quarantined_rows = 0  # rows no table could hold (written aside as JSON lines, never retried)
        self.dropped_rows = 0  # rows dropped because the store refused writes for too long (buffer full)
        self.recovered_files = 0  # spool files of dead replicas this one claimed
        self.unreadable_lines = 0  # spool lines that were torn or damaged (never answered)
        self.max_rows = BUFFER_BATCHES * batch_rows
        self.spool_root = spool_dir or spool_root(uri)
        self._pending: dict[str, int] = {}  # spool file name -> rows, oldest name first
        self._active: str | None = None  # the spool file requests are appended to
        self._active_bytes = 0  # its length: only this replica writes it
        self._converting: str | None = None
        self._next_recovery = time.monotonic() + recover_s
        self._handles = _SpoolHandles()
        self._dir = self._claim_directory()
        # A buffer dropped without close() still releases its spool when collected (or at exit).
        self._finalizer = weakref.finalize(self, self._handles.release)
        if self._dir is not None:
            self._recover()

    # -- the spool ------------------------------------------------------------------------------------
    def _claim_directory(self) -> str | None:
        """Make and lock the spool directory of this replica (held for its life); None when the disk refuses."""
        try:
            os.makedirs(self.spool_root, exist_ok=True)
            # Made under a hidden name and locked before it is renamed into view: a recoverer never sees it
            # unlocked, so never takes a live replica's directory for a dead one's.
            hidden = os.path.join(self.spool_root, f".{self.writer_id}.new")
            os.makedirs(hidden, exist_ok=False)
            fd = os.open(os.path.join(hidden, OWNER_LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            final = os.path.join(self.spool_root, self.writer_id)
            os.rename(hidden, final)
            self._handles.directory, self._handles.lock_fd = final, fd
            return final
        except OSError:
            logger.exception(
                "capture: no spool at %s; captured rows are kept in memory only", self.spool_root
            )
            return None

    def _recover(self) -> int:
        """Claim the spool files of replicas that died (their lock is free); how many files were claimed.

        The claim is a rename into this replica's directory: of two recoverers racing for one file exactly
        one succeeds, and the file is then converted by its new owner like its own.
        """
        self._next_recovery = time.monotonic() + self.recover_s
        if self._dir is None:
            return 0
        claimed = 0
        try:
            entries = sorted(os.listdir(self.spool_root))
        except OSError:
            logger.exception("capture: cannot list the spool directory %s", self.spool_root)
            return 0
        for entry in entries:
            if entry.startswith(".") or entry == self.writer_id:
                continue
            claimed += self._claim_orphan(os.path.join(self.spool_root, entry))
        if claimed:
            self.recovered_files += claimed
            logger.warning("capture: recovered %d spool file(s) of replicas that died", claimed)
        return claimed

    def _claim_orphan(self, directory: str) -> int:
        """Move a dead replica's spool files into this one's (nothing when it still lives); files claimed."""
        try:
            fd = os.open(os.path.join(directory, OWNER_LOCK), os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            return 0  # not a spool directory, or another recoverer just removed it
        claimed = 0
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                if error.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                    return 0  # its owner lives
                raise
            for name in sorted(os.listdir(directory)):
                if not name.endswith(SPOOL_SUFFIX):
                    continue
                target = os.path.join(str(self._dir), name)
                try:
                    os.rename(os.path.join(directory, name), target)
                except FileNotFoundError:
                    continue  # another recoverer won this one
                try:
                    with open(target, "rb") as handle:
                        rows = handle.read().count(b"\n")
                except OSError:
                    rows = 0
                with self._lock:
                    self._pending[name] = rows
                    self._oldest = 0.0  # due at once
                claimed += 1
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, OWNER_LOCK))
                os.rmdir(directory)
        except OSError:
            logger.exception("capture: could not recover the spool in %s", directory)
        finally:
            os.close(fd)
        return claimed

    def _spool(self, lines: bytes, rows: int) -> bool:
        """Append one request's rows to the active spool file (one write); False when the disk refused."""
        if self._dir is None:
            return False
        try:
            if self._handles.active_fd is None:
                self._sequence += 1
                stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
                name = f"{stamp}-{self.writer_id}-{self._sequence:06d}{SPOOL_SUFFIX}"
                flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
                self._handles.active_fd = os.open(os.path.join(self._dir, name), flags, 0o600)
                self._active, self._active_bytes = name, 0
                self._pending[name] = 0
            view = memoryview(lines)
            while view:
                view = view[os.write(self._handles.active_fd, view) :]
        except OSError:
            logger.exception("capture: spool write failed; these rows are kept in memory only")
            if self._handles.active_fd is not None:
                # A write cut short (a full disk) may have left whole lines of these rows: cut them off, or the
                # rows kept in memory would be written twice.
                with contextlib.suppress(OSError):
                    os.ftruncate(self._handles.active_fd, self._active_bytes)
            self._seal()
            return False
        self._active_bytes += len(lines)
        assert self._active is not None
        self._pending[self._active] += rows
        if self._pending[self._active] >= self.batch_rows:
            self._seal()  # one spool file per batch: one Parquet file each
        return True

    def _seal(self) -> None:
        """Close the active spool file: it is converted at the next flush, new rows go to a new one."""
        self._handles.close_active()
        self._active = None

    def _drop_overflow(self) -> None:
        """The store has refused writes for long: drop the oldest spooled batches so the spool stays bounded."""
        while self.pending_rows > self.max_rows:
            oldest = min(
                (n for n in self._pending if n not in (self._active, self._converting)), default=None
            )
            if oldest is None:
                if self._rows:  # memory rows only
                    overflow = self.pending_rows - self.max_rows
                    del self._rows[:overflow]
                    self.dropped_rows += overflow
                    logger.warning(
                        "capture buffer full (%d rows): dropped the oldest %d", self.max_rows, overflow
                    )
                return
            dropped = self._pending.pop(oldest)
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(str(self._dir), oldest))
            self.dropped_rows += dropped
            logger.warning("capture spool full (%d rows): dropped the oldest %d", self.max_rows, dropped)

    @property
    def pending_rows(self) -> int:
        """Rows captured and not yet written to the store (spooled and in memory)."""
        return sum(self._pending.values()) + len(self._rows)

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
        """Spool one answered request (all its rows) before it is answered; the row index joins the request id."""
        now = self.clock()
        captured = [
            {
                **row,
                "request_id": request_id if len(rows) == 1 else f"{request_id}:{index}",
                "captured_at": now,
                "model": model,
                "version": version,
                "role": role,
                **answer_columns(answer),
            }
            for index, (row, answer) in enumerate(zip(rows, answers, strict=True))
        ]
        # ASCII JSON escapes anything (a lone surrogate too), so the line is always writable; a value JSON
        # cannot hold is spooled as its repr and quarantined at conversion like any row a table cannot hold.
        lines = (
            "".join(json.dumps(row, ensure_ascii=True, default=repr) + "\n" for row in captured).encode()
            if self._dir is not None
            else b""
        )
        with self._lock:
            if self._oldest is None:
                self._oldest = now
            if not self._spool(lines, len(captured)):
                self._rows.extend(captured)
            self._drop_overflow()

    def due(self) -> bool:
        """Whether a batch is full, the oldest captured row has waited ``flush_s``, or recovery is due."""
        with self._lock:
            if self.pending_rows:
                if self.pending_rows >= self.batch_rows or self.clock() - (self._oldest or 0) >= self.flush_s:
                    return True
        return self._dir is not None and time.monotonic() >= self._next_recovery

    def flush(self) -> str | None:
        """Write what is captured (one Parquet file per spooled batch); the last path, or None if nothing.

        Looks for dead replicas' spools first when that is due. On a write error the unwritten batches stay
        spooled (nothing is lost), the error is raised, and the next flush tries them again.
        """
        with self._flush_lock:
            if time.monotonic() >= self._next_recovery:
                self._recover()
            with self._lock:
                self._seal()
                memory, self._rows = self._rows, []
                oldest, self._oldest = self._oldest, None
                names = [name for name in sorted(self._pending)]
            last: str | None = None
            try:
                if memory:
                    last = self._write_memory(memory, oldest) or last
                for name in names:
                    last = self._convert(name) or last
            except Exception:
                with self._lock:
                    self._oldest = oldest if self._oldest is None else min(oldest or 0, self._oldest)
                raise
            return last

    def close(self) -> None:
        """Flush, then release the spool: what could not be written is left for another replica to recover."""
        try:
            self.flush()
        except Exception:  # noqa: BLE001 - left spooled; the lock released below makes it recoverable
            logger.exception("capture: final flush to %s failed; the spool is left for recovery", self.uri)
        with self._lock:
            self._active = None
            self._finalizer()  # releases the lock; removes the directory when nothing is left in it
            self._dir = None

    def _convert(self, name: str) -> str | None:
        """Write one spool file as one Parquet file named after it, then delete it; the path written."""
        path = os.path.join(str(self._dir), name)
        with self._lock:
            if name not in self._pending:
                return None  # dropped as overflow meanwhile
            self._converting = name
        try:
            try:
                rows, torn = read_spool(path)
            except FileNotFoundError:
                rows, torn = [], 0
            if torn:
                self.unreadable_lines += torn
                logger.warning("capture: %d torn or damaged line(s) in spool file %s skipped", torn, name)
            stem = name.removesuffix(SPOOL_SUFFIX)
            written = self._write(rows, stem, _day_of(stem)) if rows else None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            with self._lock:
                self._pending.pop(name, None)
            return written
        finally:
            self._converting = None

    def _write_memory(self, rows: list[dict[str, Any]], oldest: float | None) -> str | None:
        """Write rows the spool could not take; on failure they go back to memory, bounded, and it raises."""
        with self._lock:
            self._sequence += 1
            sequence = self._sequence
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        stem = f"{stamp}-{self.writer_id}-m{sequence:06d}"
        bad: list[dict[str, Any]] = []
        try:
            return self._write(rows, stem, None, bad)
        except Exception:
            good = [row for row in rows if not any(row is b for b in bad)]
            with self._lock:
                room = max(self.max_rows - self.pending_rows, 0)
                self.dropped_rows += max(len(good) - room, 0)
                self._rows[:0] = good[len(good) - min(room, len(good)) :]
            raise

    def _write(
        self, rows: list[dict[str, Any]], stem: str, day: str | None, bad_out: list | None = None
    ) -> str | None:
        """One batch as one Parquet file (rows no table can hold quarantined); the path, None if none fit."""
        table, bad = _writable(rows)
        if bad_out is not None:
            bad_out.extend(bad)
        if bad:
            self._quarantine(bad, stem)
        if table is None:
            return None
        path = _write_atomically(table, self.uri, REQUESTS_DIR, stem, day)
        self.written_files += 1
        self.written_rows += table.num_rows
        return path

    def _quarantine(self, rows: list[dict[str, Any]], stem: str) -> None:
        """Write rows no table could hold as JSON lines under ``quarantine/`` (escaped, so always writable).

        Named after the batch: quarantining one batch twice (a recovery after a crash) rewrites one file.
        """
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


def list_files(uri: str, directory: str = REQUESTS_DIR) -> list[str]:
    """The finished files under ``<uri>/<directory>``, as paths relative to it, oldest name first."""
    store, root = filesystem(uri)
    folder = f"{root.rstrip('/')}/{directory}"
    if store.get_file_info(folder).type == pafs.FileType.NotFound:
        return []
    selector = pafs.FileSelector(folder, recursive=True)
    names = [
        info.path[len(folder) + 1 :]
        for info in store.get_file_info(selector)
        if info.is_file and info.path.endswith(".parquet") and not info.base_name.startswith(".")
    ]
    return sorted(names, key=lambda name: (name.rsplit("/", 1)[-1], name))


def _read(uri: str, directory: str, names: Iterable[str] | None = None) -> pa.Table | None:
    store, root = filesystem(uri)
    folder = f"{root.rstrip('/')}/{directory}"
    files = [f"{folder}/{name}" for name in (list_files(uri, directory) if names is None else names)]
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


def read_captured(
    uri: str, since: float = 0.0, until: float | None = None, files: Iterable[str] | None = None
) -> Any:
    """Captured rows answered in [since, until) as a DataFrame (empty when nothing was captured).

    ``files``: only these files (names :func:`list_files` gives), for example the ones not judged yet.
    """
    import pandas as pd

    table = _read(uri, REQUESTS_DIR, files)
    if table is None:
        return pd.DataFrame(columns=list(META_COLUMNS))
    frame = table.to_pandas()
    keep = frame["captured_at"] >= since
    if until is not None:
        keep &= frame["captured_at"] < until
    return frame[keep].sort_values("captured_at", kind="stable").reset_index(drop=True)


def read_labels(uri: str, files: Iterable[str] | None = None) -> Any:
    """Every label recorded so far (the latest label wins for a request id); ``files``: only these files.

    ``label`` holds each label as it was given: a number, or a class name (files of earlier releases hold
    integer labels only).
    """
    import pandas as pd

    table = _read(uri, LABELS_DIR, files)
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
