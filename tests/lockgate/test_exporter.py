"""The exporter: counters count new events from 0, gauges hold the last run, /metrics on loopback only."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import requests

from lockgate.exporter import Exporter
from pipeline.config import EventsConfig
from pipeline.events import EVENTS_URI_ENV, Event, EventType, emit, read_events
from pipeline.history import DRIFT_HISTORY, QUALITY_HISTORY, history_store
from pipeline.store import StateStore
from tests.conftest import write_pipeline


def append(path, *events: Event) -> None:
    with path.open("a") as handle:
        for event in events:
            handle.write(event.model_dump_json() + "\n")


def test_counters_start_at_zero_and_count_new_events(tmp_path) -> None:
    log = tmp_path / "events.jsonl"
    base = {"pipeline": "loans", "model_name": "m"}
    append(
        log,
        Event(type=EventType.pipeline_failed, run_id="old", stage="train", **base),
        Event(
            type=EventType.pipeline_succeeded,
            run_id="a",
            details={
                "durations_s": {"train": 20.0, "prepare": 1.0},
                "cost_estimate": 0.002,
                "rollout": "promoted",
            },
            **base,
        ),
    )
    exporter = Exporter("loans", "m", log)
    before = exporter.snapshot()
    assert before['lockgate_pipeline_runs_total{outcome="failed",pipeline="loans"}'] == 0, (
        "history is not re-counted"
    )
    assert before['lockgate_pipeline_stage_duration_seconds{pipeline="loans",stage="train"}'] == 20.0
    assert before['lockgate_pipeline_duration_seconds{pipeline="loans"}'] == 21.0
    assert before['lockgate_pipeline_cost_estimate{pipeline="loans"}'] == 0.002
    assert before['lockgate_triggers_total{pipeline="loans",reason="drift"}'] == 0
    with log.open("a") as handle:  # a half-written line is left for the next poll
        handle.write(
            Event(type=EventType.pipeline_failed, run_id="b", stage="gate", **base).model_dump_json()
        )
    assert exporter.poll() == 0
    with log.open("a") as handle:
        handle.write("\n")
    append(
        log,
        Event(type=EventType.trigger_fired, details={"reason": "drift"}, **base),
        Event(type=EventType.rollback, run_id="c", message="p99 too high", **base),
        Event(type=EventType.rollback, run_id="s", details={"outcome": "stalled"}, **base),
        Event(type=EventType.promotion, run_id="d", **base),
        Event(type=EventType.gate_blocked, run_id="e", **base),
    )
    assert exporter.poll() == 6
    after = exporter.snapshot()
    assert after['lockgate_pipeline_runs_total{outcome="failed",pipeline="loans"}'] == 1
    assert after['lockgate_pipeline_runs_total{outcome="blocked",pipeline="loans"}'] == 1
    assert after['lockgate_triggers_total{pipeline="loans",reason="drift"}'] == 1
    assert after['lockgate_rollouts_total{model="m",outcome="rolled_back"}'] == 1
    assert after['lockgate_rollouts_total{model="m",outcome="stalled"}'] == 1
    assert after['lockgate_rollouts_total{model="m",outcome="promoted"}'] == 1
    exporter.set_drift({"age": 0.4, "__prediction__": 0.1}, drifted=True)
    exporter.set_quality("3", {"auc": 0.71, "rows": 500})
    port = exporter.serve(0)
    try:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert 'lockgate_drift_score{feature="age",model="m"} 0.4' in text
        assert 'lockgate_drift_detected{model="m"} 1.0' in text
        assert 'lockgate_model_quality{metric="auc",model="m",version="3"} 0.71' in text
        assert "rows" not in text.split("lockgate_model_quality")[-1].split("\n")[0]
        assert exporter._server.server_address[0] == "127.0.0.1", "listens on loopback only"
    finally:
        exporter.close()


def test_events_from_many_pods_meet_in_the_event_store(tmp_path, monkeypatch) -> None:
    """In a cluster each run and check writes its events as objects; the exporter and report read them all."""
    store = f"file://{tmp_path}/events"
    monkeypatch.setenv(EVENTS_URI_ENV, store)
    config = EventsConfig(log_file=str(tmp_path / "pod-local.jsonl"))
    base = {"pipeline": "loans", "model_name": "m"}
    first = Event(
        type=EventType.pipeline_succeeded, run_id="a", details={"durations_s": {"train": 5.0}}, **base
    )
    assert emit(first, config) == {"log_file": True, "store": True}
    exporter = Exporter("loans", "m", store)
    assert exporter.snapshot()['lockgate_pipeline_duration_seconds{pipeline="loans"}'] == 5.0
    assert exporter.poll() == 0, "an event is read once"
    emit(Event(type=EventType.trigger_fired, details={"reason": "drift"}, **base), config)
    emit(Event(type=EventType.pipeline_failed, run_id="b", stage="train", **base), config)
    assert exporter.poll() == 2
    after = exporter.snapshot()
    assert after['lockgate_triggers_total{pipeline="loans",reason="drift"}'] == 1
    assert after['lockgate_pipeline_runs_total{outcome="failed",pipeline="loans"}'] == 1
    assert [e.run_id for e in read_events(store)] == ["a", None, "b"], "in time order"
    # The trigger checks' history gives drift and quality.
    history = StateStore(f"file://{tmp_path}/state")
    history.append("drift.jsonl", {"time": 1.0, "version": "1", "drifted": False, "scores": {"age": 0.01}})
    history.append("drift.jsonl", {"time": 2.0, "version": "1", "drifted": True, "scores": {"age": 0.3}})
    history.append("quality.jsonl", {"time": 2.0, "version": "1", "metrics": {"auc": 0.7, "rows": 300}})
    exporter.read_history(history)
    now = exporter.snapshot()
    assert now['lockgate_drift_score{feature="age",model="m"}'] == 0.3, "the latest drift row's score"
    assert now['lockgate_drift_detected{model="m"}'] == 1, "the latest drift row's verdict"
    assert now['lockgate_model_quality{metric="auc",model="m",version="1"}'] == 0.7, "the latest quality"


def test_every_known_label_value_is_exported_at_zero_from_the_start(tmp_path) -> None:
    # Given an empty event log
    log = tmp_path / "events.jsonl"
    log.write_text("")

    # When an exporter starts
    samples = Exporter("loans", "m", log).snapshot()

    # Then every run outcome, rollout outcome and trigger reason is present at 0, and no other
    def values(prefix: str, label: str) -> set[str]:
        return {
            name.split(f'{label}="')[1].split('"')[0]
            for name, value in samples.items()
            if name.startswith(prefix + "{") and value == 0
        }

    assert values("lockgate_pipeline_runs_total", "outcome") == {
        "registered",
        "promoted",
        "blocked",
        "rolled_back",
        "failed",
    }, "the run outcomes dashboards and alerts select on"
    assert values("lockgate_rollouts_total", "outcome") == {"promoted", "rolled_back", "stalled", "pinned"}, (
        "the rollout outcomes"
    )
    assert values("lockgate_triggers_total", "reason") == {"drift", "degradation", "schedule"}, (
        "the trigger reasons"
    )


def test_the_checks_history_gives_the_latest_rows_and_skips_a_half_written_line(tmp_path) -> None:
    # Given a model's history in today's format whose last drift append was cut off
    log = tmp_path / "events.jsonl"
    log.write_text("")
    history = history_store(tmp_path / "state", "m")
    history.append(DRIFT_HISTORY, {"time": 1.0, "version": "2", "drifted": True, "scores": {"age": 0.4}})
    history.append(QUALITY_HISTORY, {"time": 1.0, "version": "2", "metrics": {"auc": 0.8, "rows": 250.0}})
    history.write_text(DRIFT_HISTORY, (history.read_text(DRIFT_HISTORY) or "") + '{"time": 2.0, "ver')
    exporter = Exporter("loans", "m", log)

    # When the exporter reads it
    exporter.read_history(history)

    # Then the latest valid rows are exported and the broken line is ignored
    samples = exporter.snapshot()
    assert samples['lockgate_drift_score{feature="age",model="m"}'] == 0.4, "the last valid drift row"
    assert samples['lockgate_drift_detected{model="m"}'] == 1, "its verdict"
    assert samples['lockgate_model_quality{metric="auc",model="m",version="2"}'] == 0.8, "the latest quality"
    assert not any("rows" in name for name in samples if name.startswith("lockgate_model_quality")), (
        "the row count is not a quality metric"
    )


def test_an_unreachable_event_store_never_fails_the_emitter(tmp_path, monkeypatch) -> None:
    (tmp_path / "file").write_text("a file where the store's directory would be")
    monkeypatch.setenv(EVENTS_URI_ENV, f"file://{tmp_path}/file/events")
    config = EventsConfig(log_file=str(tmp_path / "events.jsonl"))
    delivered = emit(Event(type=EventType.pipeline_failed, pipeline="loans", run_id="x"), config)
    assert delivered == {"log_file": True, "store": False}
    assert [e.run_id for e in read_events(tmp_path / "events.jsonl")] == ["x"], "the other sinks still get it"


def test_export_command_serves_metrics_until_stopped(tmp_path, monkeypatch) -> None:
    store = f"file://{tmp_path}/events"
    (tmp_path / "serving.yaml").write_text("model_name: m\n")
    config = write_pipeline(tmp_path, {"name": "loans"})
    process = subprocess.Popen(
        [sys.executable, "-m", "lockgate", "export", "-c", str(config), "--port", "0", "--interval", "1"],
        env={**os.environ, EVENTS_URI_ENV: store},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert "http://127.0.0.1:" in line, line + (
            process.stderr.read() if process.poll() is not None else ""
        )
        url = line.strip().split()[-1]
        monkeypatch.setenv(EVENTS_URI_ENV, store)  # another pod's run fails
        emit(
            Event(type=EventType.pipeline_failed, pipeline="loans", run_id="x"),
            EventsConfig(log_file=str(tmp_path / "pod.jsonl")),
        )
        deadline = time.monotonic() + 30
        text = ""
        while time.monotonic() < deadline:
            text = requests.get(url, timeout=5).text
            if 'lockgate_pipeline_runs_total{outcome="failed",pipeline="loans"} 1.0' in text:
                break
            time.sleep(0.5)
        assert 'lockgate_pipeline_runs_total{outcome="failed",pipeline="loans"} 1.0' in text
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0, "SIGTERM stops it cleanly"


def test_the_exporter_starts_and_counts_past_a_bad_event_line(tmp_path) -> None:
    from lockgate.exporter import Exporter
    from pipeline.events import Event, EventType

    # Given an event log whose second line is cut short,
    log = tmp_path / "events.jsonl"
    good = Event(type=EventType.pipeline_failed, pipeline="p", stage="train").model_dump_json()
    log.write_text(good + "\n" + good[:30] + "\n")
    # when the exporter starts on it and later reads one more good event,
    exporter = Exporter("p", "m", log)
    with log.open("a") as handle:
        handle.write(good + "\n")
    exporter.poll()
    # then it runs, counts the failure, and reports the skipped line.
    skipped = exporter.registry.get_sample_value("lockgate_events_skipped_total")
    failed = exporter.registry.get_sample_value(
        "lockgate_pipeline_runs_total", {"pipeline": "p", "outcome": "failed"}
    )
    assert skipped == 1, f"one unreadable line counted, got {skipped}"
    assert failed == 1, f"the event after the bad line is counted, got {failed}"
