"""Trigger guardrails: N of M, events and de-duplication, cooldown, cap, schedule; and 100+ seeded batches."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from pipeline.config import load_config
from pipeline.config.triggers import (
    BreachRule,
    DegradationTrigger,
    DriftTrigger,
    GuardrailsConfig,
    ScheduleTrigger,
    TriggerReason,
    TriggersConfig,
)
from pipeline.data import make_loans
from pipeline.drift import DriftReport, build_profile, check_drift, describe_report
from pipeline.triggers import (
    Decision,
    TriggerState,
    WindowSignal,
    decide,
    make_window,
)
from tests.conftest import ROOT

T0 = datetime(2026, 1, 5, 0, 0, tzinfo=UTC)
STEP = timedelta(minutes=10)
DRIFTED = WindowSignal(drifted=True, model_version="1")
STABLE = WindowSignal(drifted=False, model_version="1")


def spec(
    breaches: int = 2, windows: int = 3, cooldown_s: float = 3_600, cap: int = 1, **more: object
) -> TriggersConfig:
    return TriggersConfig.model_validate(
        {
            "drift": {"confirm": {"breaches": breaches, "windows": windows}},
            "guardrails": {"cooldown_s": cooldown_s, "max_concurrent_runs": cap},
            **more,
        }
    )


@dataclass
class Clock:
    """Feeds windows to ``decide`` one step apart, keeping the state like a watcher would."""

    spec: TriggersConfig
    state: TriggerState = field(default_factory=TriggerState)
    now: datetime = T0
    running: int = 0
    decisions: list[Decision] = field(default_factory=list)

    def feed(self, window: WindowSignal | None) -> Decision:
        decision, self.state = decide(self.spec, self.state, window, self.now, self.running)
        # Round-trip the state through JSON every time, as the watcher persists it.
        self.state = TriggerState.from_json(self.state.to_json())
        self.decisions.append(decision)
        self.now += STEP
        return decision


def test_a_breach_must_hold_in_n_of_m_including_the_latest() -> None:
    clock = Clock(spec(breaches=2, windows=3, cap=1))
    first = clock.feed(DRIFTED)
    assert not first.fire and first.suppressed_by == "n_of_m", first.explanation
    assert "1 of the last 1 windows" in first.explanation
    clock.running = 1  # another run holds the only slot, so the confirmed event stays pending
    held = clock.feed(DRIFTED)
    assert not held.fire and held.suppressed_by == "cap" and held.event_id is not None
    clock.running = 0
    latest_clean = clock.feed(STABLE)
    assert not latest_clean.fire, "2 of the last 3 breached, but not the latest: no run"
    assert held.event_id is not None and held.event_id in latest_clean.explanation, "the open event is named"
    again = clock.feed(DRIFTED)
    assert again.fire and again.reason == TriggerReason.drift, again.explanation
    assert again.event_id == held.event_id, "the event kept its id while it was pending"


def test_one_run_per_event_and_a_new_event_needs_the_signal_to_clear() -> None:
    clock = Clock(spec(breaches=1, windows=1, cooldown_s=0))
    fired = clock.feed(DRIFTED)
    assert fired.fire and fired.event_id is not None and fired.event_id.startswith("drift-")
    repeats = [clock.feed(DRIFTED) for _ in range(5)]
    assert not any(d.fire for d in repeats), "one run per event"
    assert {d.suppressed_by for d in repeats} == {"dedup"}, [d.explanation for d in repeats]
    assert {d.event_id for d in repeats} == {fired.event_id}, "every repeat names the handled event"
    assert not clock.feed(STABLE).fire
    second = clock.feed(DRIFTED)
    assert second.fire and second.event_id != fired.event_id, "after clearing, a new event fires again"


def test_a_single_clean_window_inside_an_event_does_not_split_it() -> None:
    clock = Clock(spec(breaches=2, windows=3, cooldown_s=0))
    decisions = [clock.feed(w) for w in (DRIFTED, DRIFTED, DRIFTED, STABLE, DRIFTED, DRIFTED)]
    assert [d.fire for d in decisions] == [False, True, False, False, False, False]
    assert decisions[4].suppressed_by == "dedup", "2 of the last 3 still breach: the same event goes on"
    [clock.feed(STABLE) for _ in range(2)]
    assert clock.state.drift.event_id is None, "fewer than 2 of the last 3 breach: the event is over"


def test_cooldown_suppresses_new_events_then_lets_a_persisting_one_through() -> None:
    clock = Clock(spec(breaches=1, windows=1, cooldown_s=3_600))
    assert clock.feed(DRIFTED).fire
    clock.feed(STABLE)
    relapse = clock.feed(DRIFTED)
    assert not relapse.fire and relapse.suppressed_by == "cooldown", relapse.explanation
    assert "cooldown 3600 s" in relapse.explanation
    later = [clock.feed(DRIFTED) for _ in range(3)]
    assert not any(d.fire for d in later), "still inside the hour (the last one 50 minutes after the run)"
    after = clock.feed(DRIFTED)
    assert after.fire and after.event_id == relapse.event_id, "a still-breaching event fires once it may"


def test_cap_on_concurrent_runs() -> None:
    clock = Clock(spec(breaches=1, windows=1, cooldown_s=0, cap=2))
    clock.running = 2
    capped = clock.feed(DRIFTED)
    assert not capped.fire and capped.suppressed_by == "cap" and "at most 2" in capped.explanation
    clock.running = 1
    assert clock.feed(DRIFTED).fire


def test_schedule_fires_once_per_tick_and_coalesces_missed_ticks() -> None:
    hourly = spec(schedule={"cron": "0 * * * *"}, cooldown_s=0)
    state = TriggerState()
    start = datetime(2026, 1, 5, 9, 30, tzinfo=UTC)
    first, state = decide(hourly, state, None, start, 0)
    assert not first.fire, "a new watcher does not fire for ticks before it started"
    tick, state = decide(hourly, state, None, datetime(2026, 1, 5, 10, 0, tzinfo=UTC), 0)
    assert (
        tick.fire and tick.reason == TriggerReason.schedule and tick.event_id == "schedule-20260105T100000Z"
    )
    same, state = decide(hourly, state, None, datetime(2026, 1, 5, 10, 20, tzinfo=UTC), 0)
    assert not same.fire, "one run per tick"
    capped, state = decide(hourly, state, None, datetime(2026, 1, 5, 13, 5, tzinfo=UTC), 1)
    assert not capped.fire and capped.suppressed_by == "cap"
    late, state = decide(hourly, state, None, datetime(2026, 1, 5, 15, 40, tzinfo=UTC), 0)
    assert late.fire and late.event_id == "schedule-20260105T150000Z", (
        "the missed ticks coalesce into one run"
    )
    quiet, state = decide(hourly, state, None, datetime(2026, 1, 5, 15, 50, tzinfo=UTC), 0)
    assert not quiet.fire


def test_one_run_covers_every_due_trigger() -> None:
    both = spec(
        breaches=1,
        windows=1,
        degradation={"enabled": True, "min_value": 0.7, "confirm": {"breaches": 1, "windows": 1}},
    )
    clock = Clock(both)
    decision = clock.feed(WindowSignal(drifted=True, quality=0.6))
    assert decision.fire and decision.reason == TriggerReason.drift
    assert len(decision.covers) == 1 and decision.covers[0].startswith("degradation-")
    follow_up = clock.feed(WindowSignal(drifted=True, quality=0.6))
    assert not follow_up.fire and follow_up.suppressed_by == "dedup"


@pytest.mark.parametrize(
    ("trigger", "quality", "baseline", "breached"),
    [
        ({"min_value": 0.7}, 0.69, None, True),
        ({"min_value": 0.7}, 0.71, None, False),
        ({"max_drop": 0.05}, 0.74, 0.80, True),
        ({"max_drop": 0.05}, 0.76, 0.80, False),
        ({"max_drop": 0.05}, 0.50, None, False),
        ({"metric": "log_loss", "max_value": 0.5}, 0.6, None, True),
        ({"metric": "log_loss", "max_drop": 0.1}, 0.45, 0.3, True),
        ({"metric": "log_loss", "max_drop": 0.1}, 0.25, 0.3, False),
    ],
)
def test_degradation_bounds(trigger: dict, quality: float, baseline: float | None, breached: bool) -> None:
    config = spec(
        degradation={"enabled": True, "confirm": {"breaches": 1, "windows": 1}, **trigger},
        drift={"enabled": False},
    )
    decision, _ = decide(config, TriggerState(), WindowSignal(quality=quality, baseline=baseline), T0, 0)
    assert decision.fire is breached, decision.explanation
    if breached:
        assert decision.reason == TriggerReason.degradation


def test_a_new_serving_model_resets_the_history() -> None:
    clock = Clock(spec(breaches=2, windows=3))
    clock.feed(WindowSignal(drifted=True, model_version="1"))
    moved = clock.feed(WindowSignal(drifted=True, model_version="2"))
    assert not moved.fire and moved.suppressed_by == "n_of_m", "windows judged against v1 do not count for v2"
    assert clock.state.model_version == "2" and clock.state.drift.history == (True,)


def test_make_window_ignores_what_was_not_measurable() -> None:
    config = TriggersConfig()
    small = DriftReport(
        rows=10,
        sufficient=False,
        features={},
        prediction=None,
        drifted_features=(),
        drift_share=0.0,
        drifted=False,
        explanation="",
    )
    window = make_window(config, small, quality={"rows": 50.0, "auc": 0.6}, baseline=0.8, model_version="3")
    assert window.drifted is None and window.quality is None and window.model_version == "3"
    enough = make_window(config, quality={"rows": 500.0, "auc": 0.6})
    assert enough.quality == 0.6
    assert make_window(config, quality={"rows": 500.0, "auc": float("nan")}).quality is None


def test_config_validation_names_the_problem() -> None:
    with pytest.raises(ValueError, match=r"breaches \(4\) cannot exceed windows \(3\)"):
        BreachRule(breaches=4, windows=3)
    with pytest.raises(ValueError, match="not a valid cron expression"):
        ScheduleTrigger(cron="every day")
    with pytest.raises(ValueError, match="needs min_value/max_value or max_drop"):
        DegradationTrigger(enabled=True)
    with pytest.raises(ValueError, match="lower-is-better"):
        DegradationTrigger(metric="brier", min_value=0.1)
    with pytest.raises(ValueError, match="cooldown"):
        TriggersConfig.model_validate({"guardrails": {"cooldown": 10}})
    with pytest.raises(ValueError, match="timezone-aware"):
        decide(TriggersConfig(), TriggerState(), None, datetime(2026, 1, 1), 0)


def test_defaults_live_in_the_models() -> None:
    config = TriggersConfig()
    assert config.drift == DriftTrigger() and config.drift.enabled and config.schedule is None
    assert config.guardrails == GuardrailsConfig(cooldown_s=3_600, max_concurrent_runs=1)
    assert not config.degradation.enabled
    assert "properties" in TriggersConfig.model_json_schema()


# -- 100+ seeded batches: the real drift check and the trigger logic, on a simulated clock ---------------
BATCHES = 120
BATCH_ROWS = 2_000
RUN_WINDOWS = 3  # a simulated run takes three windows (30 minutes)


@dataclass(frozen=True)
class Episode:
    """Planted drift: ``on`` marks batches drawn from the shifted population; one run is expected."""

    name: str
    on: tuple[int, ...]
    shift: float


EPISODES = (
    Episode("downturn", tuple(range(10, 16)), 0.8),
    Episode("severe", tuple(range(32, 37)), 1.0),
    Episode("mild-long", tuple(range(55, 63)), 0.6),
    # Repeated signals inside the cooldown: on for 3, clear for 3 (the event ends), on for 3 again.
    Episode("flapping", (80, 81, 82, 86, 87, 88), 1.0),
    Episode("late", tuple(range(105, 110)), 0.9),
)
BLIP = 70  # one shifted batch alone: 1 of the last 3 windows is not a confirmed breach


def score_loans(frame: pd.DataFrame) -> np.ndarray:
    logit = (
        -1.6
        - 0.012 * (frame["credit_score"] - 680)
        + 1.8 * frame["debt_to_income"]
        + 0.9 * np.log(frame["loan_amount"] / frame["income"] + 0.05)
    )
    return (1 / (1 + np.exp(-logit))).to_numpy(dtype="float64")


def test_seeded_batches_one_retraining_per_drift_event() -> None:
    schema = load_config(ROOT / "pipeline.yaml").data_schema
    profile = build_profile(
        make_loans(20_000, seed=0), schema, predictions=score_loans(make_loans(5_000, seed=1))
    )
    # Cooldown of two hours = 12 windows: longer than the flapping episode, shorter than the gaps between episodes.
    config = spec(breaches=2, windows=3, cooldown_s=7_200, cap=1)
    shifts = dict.fromkeys(range(BATCHES), 0.0)
    for episode in EPISODES:
        shifts.update(dict.fromkeys(episode.on, episode.shift))
    shifts[BLIP] = 1.0

    state, now, runs_end_at = TriggerState(), T0, []
    fired: dict[int, Decision] = {}
    false_alarms: list[str] = []
    for index in range(BATCHES):
        batch = make_loans(BATCH_ROWS, seed=1_000 + index, shift=shifts[index])
        report = check_drift(profile, batch, predictions=score_loans(batch), config=config.drift.check)
        if shifts[index] == 0.0 and report.drifted:
            false_alarms.append(f"batch {index}: {describe_report(report)}")
        window = make_window(config, report, model_version="1", window_id=f"batch-{index:03d}")
        running = sum(1 for end in runs_end_at if end > now)
        decision, state = decide(config, state, window, now, running)
        state = TriggerState.from_json(state.to_json())
        if decision.fire:
            fired[index] = decision
            runs_end_at.append(now + RUN_WINDOWS * STEP)
        now += STEP

    assert not false_alarms, "stable batches never drift:\n" + "\n".join(false_alarms)
    for episode in EPISODES:
        span = range(episode.on[0], episode.on[-1] + 1)
        inside = [i for i in fired if i in span]
        assert len(inside) == 1, f"{episode.name}: exactly one retraining, got runs at batches {inside}"
        assert inside[0] == episode.on[1], f"{episode.name}: fires on the second breaching window (2 of 3)"
    planted = {i for e in EPISODES for i in range(e.on[0], e.on[-1] + 1)}
    stray = sorted(set(fired) - planted)
    assert not stray, f"no retraining outside the drift events (blip at {BLIP} included), got {stray}"
    assert len({d.event_id for d in fired.values()}) == len(EPISODES), "each run belongs to its own event"
    assert state.runs_started == len(EPISODES)
