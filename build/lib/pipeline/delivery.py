"""Delivery metrics and run costs, computed from the event log: the numbers the report and exporter show.

Pure functions over ``Event`` lists. Definitions (DORA's four keys, read for models):

- *deployment frequency*: promotions (a candidate becoming champion) per day over the observed window;
- *lead time*: from the moment a change started (the trigger that fired it, else the run's start) to the
  promotion that put it in production;
- *change-failure rate*: rollouts rolled back (or abandoned) over rollouts that ended;
- *time to restore*: from a rolled-back candidate's first live traffic to the rollback that took it away.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from statistics import median
from typing import Any

from contracts.vocabulary import RolloutOutcome, RunOutcome
from pipeline.events import Event, EventType

_RUN_OUTCOME_AFTER_ROLLOUT: dict[str, RunOutcome] = {
    RolloutOutcome.promoted: RunOutcome.promoted,
    RolloutOutcome.rolled_back: RunOutcome.rolled_back,
    RolloutOutcome.stalled: RunOutcome.rolled_back,
}


def outcome_after_rollout(rollout_outcome: str) -> RunOutcome:
    """A registered run's outcome from its rollout's: promoted, rolled_back, or registered.

    A stalled rollout is rolled back too; no rollout, or one that yielded to a pinned weight, leaves it registered.
    """
    return _RUN_OUTCOME_AFTER_ROLLOUT.get(rollout_outcome, RunOutcome.registered)


def _at(event: Event) -> float:
    return datetime.fromisoformat(event.time).timestamp()


@dataclass(frozen=True)
class RunRecord:
    """One pipeline run as the events tell it."""

    run_id: str
    pipeline: str
    started_at: float
    ended_at: float | None
    outcome: str  # promoted | rolled_back | registered | blocked | failed | running
    model_version: str | None
    durations_s: dict[str, float]
    cost: float | None
    trigger: str | None
    failed_stage: str | None = None


@dataclass(frozen=True)
class DeliveryMetrics:
    """The four keys over a window, with the samples behind them."""

    window_days: float
    promotions: int
    rollouts_ended: int
    rollbacks: int
    deployment_frequency_per_day: float
    change_failure_rate: float | None
    lead_time_s_median: float | None
    time_to_restore_s_median: float | None
    lead_times_s: list[float] = field(default_factory=list)
    restore_times_s: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


def runs_from_events(events: list[Event]) -> list[RunRecord]:
    """Group events by run id into run records, oldest first."""
    by_run: dict[str, list[Event]] = {}
    for event in events:
        if event.run_id:
            by_run.setdefault(event.run_id, []).append(event)
    records = []
    for run_id, run_events in by_run.items():
        run_events.sort(key=_at)
        kinds = {e.type for e in run_events}
        started = next((e for e in run_events if e.type == EventType.pipeline_started), run_events[0])
        terminal = next(
            (
                e
                for e in reversed(run_events)
                if e.type in (EventType.pipeline_succeeded, EventType.pipeline_failed, EventType.gate_blocked)
            ),
            None,
        )
        details = terminal.details if terminal is not None else {}
        if EventType.pipeline_failed in kinds:
            outcome = "failed"
        elif EventType.gate_blocked in kinds:
            outcome = "blocked"
        elif EventType.promotion in kinds:
            outcome = "promoted"
        elif EventType.rollback in kinds:
            outcome = "rolled_back"
        elif EventType.pipeline_succeeded in kinds:
            outcome = "registered"
        else:
            outcome = "running"
        failed = next((e for e in run_events if e.type == EventType.pipeline_failed), None)
        records.append(
            RunRecord(
                run_id=run_id,
                pipeline=started.pipeline,
                started_at=_at(started),
                ended_at=_at(terminal) if terminal is not None else None,
                outcome=outcome,
                model_version=next((e.model_version for e in run_events if e.model_version), None),
                durations_s={k: float(v) for k, v in details.get("durations_s", {}).items()},
                cost=details.get("cost_estimate"),
                trigger=started.details.get("trigger"),
                failed_stage=failed.stage if failed is not None else None,
            )
        )
    return sorted(records, key=lambda r: r.started_at)


def delivery_metrics(events: list[Event], now: float | None = None) -> DeliveryMetrics:
    """The four keys from the event log (window: first event to ``now`` or the last event)."""
    ordered = sorted(events, key=_at)
    if not ordered:
        return DeliveryMetrics(0.0, 0, 0, 0, 0.0, None, None, None)
    first, last = _at(ordered[0]), now if now is not None else _at(ordered[-1])
    window_days = max((last - first) / 86_400, 1 / 24)  # at least an hour, so one event is not "infinite"
    started: dict[str, float] = {}
    first_traffic: dict[str, float] = {}
    triggered_at: dict[str, float] = {}
    lead_times, restore_times = [], []
    promotions = rollbacks = 0
    for event in ordered:
        run = event.run_id or ""
        if event.type == EventType.pipeline_started:
            started[run] = _at(event)
            fired = event.details.get("trigger_fired_at")
            if isinstance(fired, int | float):
                triggered_at[run] = float(fired)
        elif event.type == EventType.rollout_step and event.details.get("weight"):
            first_traffic.setdefault(run, _at(event))
        elif event.type == EventType.promotion:
            promotions += 1
            origin = triggered_at.get(run, started.get(run))
            if origin is not None:
                lead_times.append(_at(event) - origin)
        elif event.type == EventType.rollback:
            rollbacks += 1
            if run in first_traffic:
                restore_times.append(_at(event) - first_traffic[run])
    ended = promotions + rollbacks
    return DeliveryMetrics(
        window_days=window_days,
        promotions=promotions,
        rollouts_ended=ended,
        rollbacks=rollbacks,
        deployment_frequency_per_day=promotions / window_days,
        change_failure_rate=rollbacks / ended if ended else None,
        lead_time_s_median=median(lead_times) if lead_times else None,
        time_to_restore_s_median=median(restore_times) if restore_times else None,
        lead_times_s=lead_times,
        restore_times_s=restore_times,
    )


def estimate_cost(durations_s: dict[str, float], cpus: dict[str, float], price_per_cpu_hour: float) -> float:
    """Resource-seconds times price: each stage's duration times the CPUs it held (1 unless stated)."""
    return (
        sum(seconds * cpus.get(stage, 1.0) for stage, seconds in durations_s.items())
        * price_per_cpu_hour
        / 3600
    )
