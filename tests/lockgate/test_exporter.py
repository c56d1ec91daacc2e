"""The exporter: counters count new events from 0, gauges hold the last run, /metrics on loopback only."""

from __future__ import annotations

import requests

from lockgate.exporter import Exporter
from pipeline.events import Event, EventType


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
