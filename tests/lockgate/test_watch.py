"""The watcher's checks on a temporary capture store with a fake registry and run starter: no Ray, no MLflow."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from contracts.settings import EnvVar
from lockgate.watch import MlflowRegistry, Watcher
from pipeline.config import PipelineConfig, parse_config
from pipeline.data import make_loans
from pipeline.drift import ReferenceProfile, build_profile
from pipeline.events import read_events
from pipeline.history import CURSOR, TRIGGER_STATE, DriftRow, QualityRow, history_store, read_rows
from pipeline.triggers import TriggerState
from serving.capture import CaptureBuffer, write_labels
from tests.conftest import deep_merge, shipped_config

MODEL = "loans-watch"
WINDOW = 300
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def score(frame: pd.DataFrame) -> np.ndarray:
    """A stand-in model: the lower the credit score, the likelier a default."""
    return 1.0 / (1.0 + np.exp((frame["credit_score"].to_numpy(dtype="float64") - 650.0) / 40.0))


@dataclass
class FakeRegistry:
    """A registry whose champion and reference the test sets."""

    champion: str | None
    profile: ReferenceProfile
    baseline: float | None = 0.8
    asked: list[tuple[str, str]] = field(default_factory=list)

    def champion_version(self, model_name: str) -> str | None:
        return self.champion

    def reference_profile(self, model_name: str, version: str) -> ReferenceProfile:
        self.asked.append((model_name, version))
        return self.profile

    def offline_metric(self, model_name: str, version: str, metric: str) -> float | None:
        return self.baseline


@dataclass
class FakeRuns:
    """Starts no run: records each trigger it is asked to start, or refuses them all."""

    refuse: bool = False
    started: list[dict[str, Any]] = field(default_factory=list)

    def submit(self, trigger: dict[str, Any]) -> str:
        if self.refuse:
            raise RuntimeError("creating RayJobs: 403")
        self.started.append(trigger)
        return f"run-{len(self.started)}"

    def running(self) -> int:
        return len(self.started)


@dataclass
class FakeExporter:
    """Records what the watcher exports."""

    drift: list[tuple[dict[str, float], bool]] = field(default_factory=list)
    quality: list[tuple[str, dict[str, float]]] = field(default_factory=list)

    def set_drift(self, scores: dict[str, float], drifted: bool) -> None:
        self.drift.append((scores, drifted))

    def set_quality(self, version: str, metrics: dict[str, float]) -> None:
        self.quality.append((version, metrics))


class Clock:
    """Ten simulated minutes per check."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def tick(self) -> None:
        self.now += timedelta(minutes=10)


def pipeline_config(tmp_path: Path, triggers: dict[str, Any] | None = None) -> PipelineConfig:
    override = {
        "registry": {"model_name": MODEL},
        "events": {"log_file": str(tmp_path / "events.jsonl")},
        "triggers": deep_merge({"drift": {"window_rows": WINDOW}}, triggers or {}),
    }
    return parse_config(deep_merge(shipped_config(), override))


def reference(config: PipelineConfig) -> ReferenceProfile:
    frame = make_loans(4_000, seed=0)
    return build_profile(frame, config.data_schema, config.features, predictions=score(frame))


def capture(uri: str, config: PipelineConfig, frame: pd.DataFrame, version: str, at: datetime) -> list[str]:
    """Answered rows as the router captures them (one request, all rows captured at ``at``); their ids."""
    buffer = CaptureBuffer(uri, batch_rows=len(frame), flush_s=60.0, clock=lambda: at.timestamp())
    probabilities = score(frame)
    answers = [{"probability": p, "prediction": int(p >= 0.5)} for p in probabilities]
    request = uuid.uuid4().hex
    buffer.add(
        frame[list(config.features)].to_dict("records"),
        answers,
        request_id=request,
        model=MODEL,
        version=version,
        role="champion",
    )
    assert buffer.flush() is not None, "the batch is written"
    return [f"{request}:{index}" for index in range(len(frame))]


@pytest.fixture(autouse=True)
def events_only_in_the_log(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(EnvVar.events_uri, raising=False)
    monkeypatch.delenv(EnvVar.events_file, raising=False)


@dataclass
class Setup:
    """One watcher wired to fakes and temporary stores."""

    watcher: Watcher
    config: PipelineConfig
    registry: FakeRegistry
    runs: FakeRuns
    exporter: FakeExporter
    clock: Clock
    capture_uri: str
    state_uri: str
    events: Path


def make_setup(tmp_path: Path, champion: str | None = "1", triggers: dict[str, Any] | None = None) -> Setup:
    config = pipeline_config(tmp_path, triggers)
    registry, runs, exporter, clock = (
        FakeRegistry(champion, reference(config)),
        FakeRuns(),
        FakeExporter(),
        Clock(),
    )
    capture_uri, state_uri = str(tmp_path / "capture"), str(tmp_path / "state")
    watcher = Watcher(
        config,
        tmp_path,
        MODEL,
        capture_uri,
        state_uri,
        submit=runs.submit,
        running_runs=runs.running,
        exporter=exporter,
        clock=clock,
        registry=registry,
    )
    return Setup(
        watcher, config, registry, runs, exporter, clock, capture_uri, state_uri, tmp_path / "events.jsonl"
    )


def event_types(path: Path) -> list[str]:
    return [event.type for event in read_events(path)] if path.exists() else []


def test_stable_traffic_starts_nothing(tmp_path: Path) -> None:
    # Given a champion and one window of traffic like its training data
    setup = make_setup(tmp_path)
    capture(setup.capture_uri, setup.config, make_loans(WINDOW, seed=1), "1", setup.clock())

    # When the watcher checks
    result = setup.watcher.check()

    # Then the window is judged stable, nothing starts, and the verdict is kept as a typed row
    assert result.drift is not None and result.drift.sufficient, "a full window is judged"
    assert not result.drift.drifted, f"stable traffic does not drift: {result.drift.explanation}"
    assert result.submission_id is None and setup.runs.started == [], "no run starts"
    history = read_rows(history_store(setup.state_uri, MODEL), DriftRow)
    assert [(row.version, row.drifted) for row in history.rows] == [("1", False)], "one stable drift row"
    assert event_types(setup.events) == [], "no drift event, no trigger event"
    assert setup.exporter.drift[-1][1] is False, "the exporter shows no drift"


def test_drift_over_enough_windows_starts_exactly_one_run(tmp_path: Path) -> None:
    # Given a rule that needs drift in 2 of the last 3 windows, and three drifted windows
    setup = make_setup(tmp_path, triggers={"drift": {"confirm": {"breaches": 2, "windows": 3}}})
    results = []

    # When the watcher checks after each window
    for seed in (21, 22, 23):
        capture(setup.capture_uri, setup.config, make_loans(WINDOW, seed=seed, shift=1.0), "1", setup.clock())
        results.append(setup.watcher.check())
        setup.clock.tick()

    # Then the second window starts one run, the third starts none, and every window is a typed drift row
    assert [r.drift is not None and r.drift.drifted for r in results] == [True] * 3, "every window drifts"
    assert [r.submission_id for r in results] == [None, "run-1", None], "one event, one run"
    assert [trigger["reason"] for trigger in setup.runs.started] == ["drift"], "started for drift"
    store = history_store(setup.state_uri, MODEL)
    history = read_rows(store, DriftRow)
    assert len(history.rows) == 3 and all(row.drifted for row in history.rows), (
        "each window kept for the report"
    )
    assert all(row.version == "1" and "__prediction__" in row.scores for row in history.rows), (
        "judged against the champion, prediction included"
    )
    assert event_types(setup.events) == ["drift_detected", "trigger_fired"], "one event of each"
    state = TriggerState.model_validate(store.read(TRIGGER_STATE))
    assert state.runs_started == 1 and state.drift.event_handled, "the state remembers the handled event"
    assert setup.registry.asked == [(MODEL, "1")], "the champion's reference is fetched once"


def test_a_refused_submission_records_nothing(tmp_path: Path) -> None:
    # Given a rule that fires on the first drifted window, and a run starter that refuses
    setup = make_setup(tmp_path, triggers={"drift": {"confirm": {"breaches": 1, "windows": 1}}})
    setup.runs.refuse = True
    capture(setup.capture_uri, setup.config, make_loans(WINDOW, seed=31, shift=1.0), "1", setup.clock())

    # When the watcher checks
    with pytest.raises(RuntimeError, match="403"):
        setup.watcher.check()

    # Then nothing is recorded: no history row, no state, no cursor, no event...
    store = history_store(setup.state_uri, MODEL)
    assert read_rows(store, DriftRow).rows == (), "no drift row"
    assert store.read(TRIGGER_STATE) is None and store.read(CURSOR) is None, "no state, no cursor"
    assert event_types(setup.events) == [], "no event"

    # ...so when the starter accepts again, the next check judges the same window and starts the run
    setup.runs.refuse = False
    setup.clock.tick()
    again = setup.watcher.check()
    assert again.submission_id == "run-1" and again.window_rows == WINDOW, "the same window fires now"
    assert len(read_rows(store, DriftRow).rows) == 1, "recorded once it succeeded"


def test_without_a_champion_the_check_says_so(tmp_path: Path) -> None:
    # Given a model with no champion yet, and captured traffic
    setup = make_setup(tmp_path, champion=None)
    capture(setup.capture_uri, setup.config, make_loans(WINDOW, seed=41, shift=1.0), "1", setup.clock())

    # When the watcher checks
    result = setup.watcher.check()

    # Then nothing is judged or started, the result says why, and no history row is written
    assert result.champion is None and result.drift is None and result.window_rows == 0, "nothing judged"
    assert any("no champion" in note for note in result.notes), f"the check says so: {result.notes}"
    assert result.summary()["fire"] is False and setup.runs.started == [], "nothing starts"
    assert read_rows(history_store(setup.state_uri, MODEL), DriftRow).rows == (), "no drift row"
    assert setup.registry.asked == [], "no reference is fetched without a champion"


def test_labelled_answers_record_a_quality_row(tmp_path: Path) -> None:
    # Given a champion's answers, then labels for 250 of them that agree with the answers
    setup = make_setup(tmp_path)
    frame = make_loans(WINDOW, seed=51)
    ids = capture(setup.capture_uri, setup.config, frame, "1", setup.clock())
    agreeing = (score(frame) >= np.median(score(frame))).astype(int)
    write_labels(setup.capture_uri, zip(ids[:250], (int(label) for label in agreeing[:250]), strict=True))

    # When the watcher checks twice
    first = setup.watcher.check()
    setup.clock.tick()
    second = setup.watcher.check()

    # Then the first check measures quality once, kept as a typed row and exported; the second has nothing new
    assert first.quality is not None and first.quality["rows"] == 250, "quality on the labelled answers"
    history = read_rows(history_store(setup.state_uri, MODEL), QualityRow)
    latest = history.latest
    assert len(history.rows) == 1 and latest is not None, "one quality row"
    assert latest.version == "1" and latest.metrics["auc"] > 0.99, "agreeing labels: a perfect AUC"
    assert setup.exporter.quality == [("1", first.quality)], "exported once"
    assert second.quality is None, "labels are measured once"


def test_the_default_registry_is_mlflow_and_opens_nothing_when_built(tmp_path: Path) -> None:
    # Given the arguments the CLI passes today (no registry)
    config = pipeline_config(tmp_path)

    # When a watcher is built
    watcher = Watcher(
        config,
        tmp_path,
        MODEL,
        str(tmp_path / "capture"),
        str(tmp_path / "state"),
        submit=FakeRuns().submit,
        running_runs=lambda: 0,
        metrics_url=None,
        exporter=None,
    )

    # Then it asks the MLflow registry, and nothing was written yet
    assert isinstance(watcher.registry, MlflowRegistry), "MLflow is the default registry"
    assert not (tmp_path / "state").exists(), "building a watcher touches no store"


def test_rows_a_slower_replica_writes_after_a_judged_window_are_judged_too(tmp_path: Path) -> None:
    # Given one replica's window, judged,
    setup = make_setup(tmp_path)
    capture(setup.capture_uri, setup.config, make_loans(WINDOW, seed=61), "1", setup.clock())
    first = setup.watcher.check()
    assert first.drift is not None and first.window_rows == WINDOW, first.notes
    # when another replica's file lands afterwards, with rows answered a minute *before* that window,
    earlier = setup.clock() - timedelta(minutes=1)
    capture(setup.capture_uri, setup.config, make_loans(WINDOW, seed=62, shift=1.0), "1", earlier)
    setup.clock.tick()
    second = setup.watcher.check()
    # then the next check judges those rows (a cursor on answer times skipped them for good), and only them.
    assert second.window_rows == WINDOW and second.drift is not None, second.notes
    assert second.drift.drifted, second.drift.explanation
    setup.clock.tick()
    assert setup.watcher.check().window_rows == 0, "nothing is judged twice"
