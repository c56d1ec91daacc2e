"""The trigger checks' history: typed rows, the store's file names, and the one way they are written and read.

The checks (``lockgate watch``, ``lockgate triggers check``) keep, per model, under ``<state>/watch/<model>/``
(a local directory or the artefact store, see :mod:`pipeline.store`):

- ``drift.jsonl``: one :class:`DriftRow` per judged drift window;
- ``quality.jsonl``: one :class:`QualityRow` per window of newly labelled answers;
- ``serving.jsonl``: one :class:`ServingSample` per version and role between two checks;
- ``cursor.json`` (:class:`WatchCursor`: how far captured traffic and labels have been judged) and
  ``trigger_state.json`` (the guardrails' memory, :class:`pipeline.triggers.TriggerState`).

The report and the exporter read the histories through :func:`read_rows`. A row's JSON keys are the ones every
earlier version wrote, so existing stores keep working; keys a newer writer may add are ignored, and a line
that is not a valid row (a half-written append, a hand edit) is skipped and counted instead of failing the
reader.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from pipeline.store import StateStore

logger = logging.getLogger(__name__)

DRIFT_HISTORY = "drift.jsonl"
QUALITY_HISTORY = "quality.jsonl"
SERVING_HISTORY = "serving.jsonl"
CURSOR = "cursor.json"
TRIGGER_STATE = "trigger_state.json"


def history_store(state_uri: str | Path, model_name: str) -> StateStore:
    """Where the trigger checks keep a model's state and history.

    ``state_uri``: the local state directory, or an artefact-store URI in a cluster.
    """
    return StateStore(str(state_uri)).child("watch", model_name)


class HistoryRow(BaseModel):
    """One row of a history: when it was recorded (epoch seconds) and the model version it concerns.

    Frozen, like every model here; unlike config it ignores keys it does not know (a newer writer's), and a
    version written as a number reads as its string.
    """

    model_config = ConfigDict(frozen=True, extra="ignore", coerce_numbers_to_str=True)

    history_file: ClassVar[str]

    time: float
    version: str


class DriftRow(HistoryRow):
    """One judged drift window: the verdict and the PSI per feature (``__prediction__`` for the prediction)."""

    history_file: ClassVar[str] = DRIFT_HISTORY

    drifted: bool
    scores: dict[str, float]
    # Reference vs current shares per bin of the most-drifted features (pipeline.drift.drift_histograms);
    # rows written before it existed have none.
    histograms: list[dict[str, Any]] = []


class QualityRow(HistoryRow):
    """Quality on newly labelled answers of the champion (:func:`pipeline.drift.measure_quality`'s metrics)."""

    history_file: ClassVar[str] = QUALITY_HISTORY

    metrics: dict[str, float]


class ServingSample(HistoryRow):
    """Throughput, error rate and latency of one version and role between two checks (from the router)."""

    history_file: ClassVar[str] = SERVING_HISTORY

    role: str
    requests_per_s: float
    error_rate: float
    p50_s: float | None
    p99_s: float | None


RowT = TypeVar("RowT", bound=HistoryRow)


@dataclass(frozen=True)
class HistoryRead(Generic[RowT]):
    """The valid rows of one history, oldest first, and how many lines were skipped as malformed."""

    rows: tuple[RowT, ...]
    skipped: int = 0

    @property
    def latest(self) -> RowT | None:
        """The newest row, or None when there is none."""
        return self.rows[-1] if self.rows else None


def append_row(store: StateStore, row: HistoryRow) -> None:
    """Add one row to its history (the file its type names)."""
    # Fields left at their default (a newer, optional key such as a drift row's histograms) are not
    # written, so a row without them is the very line earlier writers wrote.
    store.append(row.history_file, row.model_dump(exclude_defaults=True))


def read_rows(store: StateStore, kind: type[RowT]) -> HistoryRead[RowT]:
    """Every valid row of ``kind``'s history (none when it does not exist); malformed lines are counted."""
    text = store.read_text(kind.history_file) or ""
    rows: list[RowT] = []
    skipped = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            rows.append(kind.model_validate(json.loads(line)))
        except (json.JSONDecodeError, ValidationError):
            skipped += 1
    if skipped:
        logger.warning("%s/%s: skipped %d malformed line(s)", store.uri, kind.history_file, skipped)
    return HistoryRead(tuple(rows), skipped)


class WatchCursor(BaseModel):
    """How far the checks have judged: captured answers since ``drift_since``, labels since ``labels_since``."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    drift_since: float = 0.0
    labels_since: float = 0.0


def read_cursor(store: StateStore) -> WatchCursor:
    """The checks' cursor (from the start when there is none yet)."""
    saved = store.read(CURSOR)
    return WatchCursor.model_validate(saved) if saved is not None else WatchCursor()


def write_cursor(store: StateStore, cursor: WatchCursor) -> None:
    """Replace the checks' cursor."""
    store.write(CURSOR, cursor.model_dump())
