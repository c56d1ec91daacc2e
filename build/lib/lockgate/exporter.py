"""The Lockgate exporter: pipeline, rollout, trigger and drift metrics in Prometheus format.

Served by the long-lived ``lockgate watch`` on 127.0.0.1. Counters follow Prometheus semantics: they count
events appended to the event log after the exporter started (a restart resets them, which ``increase()``
handles), with every known label value present at 0 from the start so a first failure is an increase.
Gauges hold state (the last run's stage durations and cost, drift scores, model quality) and are filled from
the whole log and from the watcher.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from contracts.vocabulary import RolloutOutcome, RunOutcome
from pipeline.config.triggers import TriggerReason
from pipeline.delivery import outcome_after_rollout
from pipeline.events import Event, EventType, event_source
from pipeline.history import DriftRow, QualityRow, read_rows
from pipeline.store import StateStore

# Every outcome a run can end with (a running run has not ended), present at 0 from the start.
RUN_OUTCOMES = (
    RunOutcome.registered,
    RunOutcome.promoted,
    RunOutcome.blocked,
    RunOutcome.rolled_back,
    RunOutcome.failed,
)
# The rollout controller's outcomes (the deploy stage's ``deployed``/``skipped`` end no rollout).
ROLLOUT_OUTCOMES = (
    RolloutOutcome.promoted,
    RolloutOutcome.rolled_back,
    RolloutOutcome.stalled,
    RolloutOutcome.pinned,
)
# pipeline.triggers.TriggerReason's values, written out: importing it would load the drift check (scipy).
TRIGGER_REASONS = tuple(reason.value for reason in TriggerReason)
TERMINAL = (EventType.pipeline_succeeded, EventType.pipeline_failed, EventType.gate_blocked)


def run_outcome(event: Event) -> str | None:
    """The run outcome a terminal event records (None for other events)."""
    if event.type == EventType.pipeline_failed:
        return RunOutcome.failed
    if event.type == EventType.gate_blocked:
        return RunOutcome.blocked
    if event.type == EventType.pipeline_succeeded:
        return outcome_after_rollout(str(event.details.get("rollout", "")))
    return None


class Exporter:
    """Metrics for one pipeline and its model, fed from the event log and by the watcher."""

    def __init__(self, pipeline: str, model: str, events: str | Path):
        """``events``: the JSON-lines log file, or an event store's URI (in a cluster)."""
        self.pipeline, self.model, self.events = pipeline, model, event_source(events)
        self.registry = CollectorRegistry()
        r = self.registry
        self.runs = Counter(
            "lockgate_pipeline_runs", "Pipeline runs ended", ["pipeline", "outcome"], registry=r
        )
        self.stage = Gauge(
            "lockgate_pipeline_stage_duration_seconds",
            "Last run's stage duration",
            ["pipeline", "stage"],
            registry=r,
        )
        self.duration = Gauge(
            "lockgate_pipeline_duration_seconds", "Last run's duration", ["pipeline"], registry=r
        )
        self.cost = Gauge(
            "lockgate_pipeline_cost_estimate", "Last run's estimated cost", ["pipeline"], registry=r
        )
        self.rollouts = Counter("lockgate_rollouts", "Rollouts ended", ["model", "outcome"], registry=r)
        self.triggers = Counter(
            "lockgate_triggers", "Retraining runs triggered", ["pipeline", "reason"], registry=r
        )
        self.drift_score = Gauge(
            "lockgate_drift_score", "Drift score (0..1)", ["model", "feature"], registry=r
        )
        self.drift_detected = Gauge("lockgate_drift_detected", "Drift verdict (0/1)", ["model"], registry=r)
        self.quality = Gauge(
            "lockgate_model_quality",
            "Quality on labelled traffic",
            ["model", "version", "metric"],
            registry=r,
        )
        self._skipped_seen = 0  # of the reader's skipped count, what the counter already holds
        self.skipped = Counter(
            "lockgate_events_skipped", "Stored events that could not be read (truncated, unknown)", registry=r
        )
        self.last_event = Gauge(
            "lockgate_last_event_timestamp_seconds", "Time of the last event of a type", ["type"], registry=r
        )
        for run_end in RUN_OUTCOMES:
            self.runs.labels(pipeline, run_end)
        for rollout_end in ROLLOUT_OUTCOMES:
            self.rollouts.labels(model, rollout_end)
        for reason in TRIGGER_REASONS:
            self.triggers.labels(pipeline, reason)
        self.drift_detected.labels(model).set(0)
        self._server: Any = None
        history = self.events.read_new()
        for event in history:
            self._set_gauges(event)
        self._count_skipped()

    def _count_skipped(self) -> None:
        """Add the events the reader skipped since the last look to ``lockgate_events_skipped_total``."""
        new = self.events.skipped - self._skipped_seen
        if new > 0:
            self.skipped.inc(new)
        self._skipped_seen = self.events.skipped

    def _set_gauges(self, event: Event) -> None:
        self.last_event.labels(event.type.value).set(datetime.fromisoformat(event.time).timestamp())
        if event.pipeline != self.pipeline or event.type not in TERMINAL:
            return
        durations = event.details.get("durations_s") or {}
        if durations:
            for stage, seconds in durations.items():
                self.stage.labels(self.pipeline, stage).set(float(seconds))
            self.duration.labels(self.pipeline).set(sum(float(s) for s in durations.values()))
        if isinstance(event.details.get("cost_estimate"), int | float):
            self.cost.labels(self.pipeline).set(float(event.details["cost_estimate"]))

    def poll(self) -> int:
        """Count the events appended since the last poll; returns how many were read."""
        events = self.events.read_new()
        self._count_skipped()
        for event in events:
            self._set_gauges(event)
            if event.pipeline == self.pipeline and (outcome := run_outcome(event)) is not None:
                self.runs.labels(self.pipeline, outcome).inc()
            if event.type == EventType.promotion:
                self.rollouts.labels(self.model, RolloutOutcome.promoted).inc()
            elif event.type == EventType.rollback:
                # The controller says whether the rollback was a breach or a stall (too little traffic).
                ended = str(event.details.get("outcome", RolloutOutcome.rolled_back))
                self.rollouts.labels(self.model, ended).inc()
            elif event.type == EventType.trigger_fired:
                self.triggers.labels(self.pipeline, str(event.details.get("reason", "drift"))).inc()
        return len(events)

    def set_drift(self, scores: dict[str, float], drifted: bool) -> None:
        """The latest drift check's per-feature scores and verdict."""
        for feature, score in scores.items():
            self.drift_score.labels(self.model, feature).set(score)
        self.drift_detected.labels(self.model).set(1 if drifted else 0)

    def set_quality(self, version: str, metrics: dict[str, float]) -> None:
        """Quality measured on labelled traffic for a version."""
        for metric, value in metrics.items():
            if metric != "rows":
                self.quality.labels(self.model, version, metric).set(value)

    def read_history(self, history: StateStore) -> None:
        """Drift and quality from the trigger checks' history (in a cluster the checks run in other pods).

        ``history``: the model's store (:func:`pipeline.history.history_store`); malformed lines are skipped.
        """
        drift = read_rows(history, DriftRow).latest
        if drift is not None:
            self.set_drift(drift.scores, drift.drifted)
        quality = read_rows(history, QualityRow).latest
        if quality is not None:
            self.set_quality(quality.version, quality.metrics)

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve /metrics on ``host`` (port 0 picks a free one); returns the port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._server = server
        return int(server.server_address[1])

    def close(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def snapshot(self) -> dict[str, float]:
        """Every sample as ``name{labels}`` → value (for tests and the CLI)."""
        samples = {}
        for family in self.registry.collect():
            for sample in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                samples[f"{sample.name}{{{labels}}}"] = sample.value
        return samples


def dump(snapshot: dict[str, float]) -> str:
    """A snapshot as sorted JSON."""
    return json.dumps(snapshot, sort_keys=True, indent=2)
