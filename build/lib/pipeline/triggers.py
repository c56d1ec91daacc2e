"""Retraining triggers (drift, degradation, schedule) and their guardrails, as a pure decision function.

The caller (``lockgate watch`` / ``lockgate triggers check``) owns all I/O. Each interval it

1. turns what it measured into a :class:`WindowSignal` with :func:`make_window` (a drift report of the
   latest captured window and/or the quality of newly labelled rows; ``None`` when nothing new arrived,
   so the schedule is still checked);
2. calls :func:`decide` with the declared :class:`TriggersConfig`, the persisted :class:`TriggerState`,
   the current time and how many pipeline runs are running now;
3. persists the returned state (``state.to_json()``), and when ``decision.fire`` starts the pipeline,
   recording ``decision`` (reason, event id, explanation) in the ``trigger_fired`` event.

Semantics
---------
- **N of M, latest included**: a signal (drift, degradation) is *confirmed* when at least ``breaches`` of
  its last ``windows`` windows breached and the latest one did. Windows without a measurement for that
  signal (too few rows or labels) are skipped, not counted as clean.
- **Events and de-duplication**: a confirmed signal opens an *event* with a stable id
  (``drift-20260101T120000Z-w000042``: the opening time and window number), kept in the state. The
  event lasts until the signal has *cleared*, i.e. fewer than ``breaches`` of the last ``windows``
  windows breach; with ``breaches == windows == 1`` that is exactly a run of consecutive breaching
  windows, and larger values tolerate a single clean window inside a long event. One run per event: once
  a run started for it, further breaches of the same event are suppressed (``dedup``); a new event needs
  the signal to clear first.
- **Schedule**: a cron expression (UTC, parsed by ``croniter``). The latest tick at or before ``now`` is
  due when no run started at or after it; missed ticks coalesce into that one. Ticks before the state
  was first used are never due, so a new watcher does not fire for the past.
- **Cooldown**: no run starts within ``cooldown_s`` of the previous start (any reason). **Cap**: no run
  starts while ``max_concurrent_runs`` runs are running. A signal suppressed by either stays pending and
  fires once they allow, if it is still confirmed (an event that clears meanwhile never fires).
- One decision starts at most one run. Its ``reason`` is the first due trigger in the order drift,
  degradation, schedule; every other due or open event is marked handled by that same run (``covers``),
  since the run retrains on the same fresh data.
- A window judged against another serving model version (``model_version`` changed) resets the signal
  histories and closes open events: windows judged against the old reference say nothing about the new.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

from croniter import croniter

from contracts.strict import StrictModel
from contracts.vocabulary import LOWER_IS_BETTER
from pipeline.config.triggers import (
    BreachRule,
    DegradationTrigger,
    TriggerReason,
    TriggersConfig,
)
from pipeline.drift import DriftReport

Suppression = Literal["cooldown", "cap", "dedup", "n_of_m"]

STATE_FORMAT_VERSION = 1


# -- what one window measured ------------------------------------------------------------------------
class WindowSignal(StrictModel):
    """What one watch interval measured; ``None`` fields were not measured in this window.

    ``drifted``: the drift verdict of the latest full capture window. ``quality``: the degradation metric
    on newly labelled rows; ``baseline``: the serving model's offline value of that metric (for
    ``max_drop``). ``model_version``: the serving model both were judged against.
    """

    window_id: str | None = None
    model_version: str | None = None
    drifted: bool | None = None
    quality: float | None = None
    baseline: float | None = None


def make_window(
    spec: TriggersConfig,
    drift_report: DriftReport | None = None,
    quality: dict[str, float] | None = None,
    baseline: float | None = None,
    model_version: str | None = None,
    window_id: str | None = None,
) -> WindowSignal:
    """Build a window from a drift report and/or quality metrics (:func:`pipeline.drift.measure_quality`).

    A drift report of a too-small batch, or quality measured on fewer than ``min_labelled_rows`` labels,
    counts as not measured. ``baseline`` is the serving model's offline metric (e.g. its ``test.auc``).
    """
    drifted = drift_report.drifted if drift_report is not None and drift_report.sufficient else None
    value = None
    if quality is not None and quality.get("rows", 0.0) >= spec.degradation.min_labelled_rows:
        measured = quality.get(spec.degradation.metric)
        value = measured if measured is not None and measured == measured else None  # NaN: not measurable
    return WindowSignal(
        window_id=window_id, model_version=model_version, drifted=drifted, quality=value, baseline=baseline
    )


# -- persisted state ---------------------------------------------------------------------------------
class SignalState(StrictModel):
    """One signal's recent windows (newest last) and its open event, if any."""

    history: tuple[bool, ...] = ()
    event_id: str | None = None
    event_handled: bool = False


class TriggerState(StrictModel):
    """Everything :func:`decide` remembers between calls; persist it as JSON between watch intervals."""

    format_version: int = STATE_FORMAT_VERSION
    model_version: str | None = None
    windows_seen: int = 0
    schedule_anchor: datetime | None = None
    drift: SignalState = SignalState()
    degradation: SignalState = SignalState()
    last_run_started_at: datetime | None = None
    last_run_reason: TriggerReason | None = None
    last_run_event_id: str | None = None
    runs_started: int = 0

    def to_json(self) -> str:
        """The state as JSON text."""
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str | bytes) -> TriggerState:
        """Read a state written by :meth:`to_json`."""
        return cls.model_validate_json(text)


class Decision(StrictModel):
    """The outcome of one :func:`decide` call.

    ``fire``: start a run now. ``reason``/``event_id``: the trigger and event concerned (also set when a
    run was suppressed). ``covers``: other events the same run handles. ``suppressed_by``: why a breaching
    signal did not start a run. ``explanation``: one human sentence either way.
    """

    fire: bool
    at: datetime
    reason: TriggerReason | None = None
    event_id: str | None = None
    covers: tuple[str, ...] = ()
    suppressed_by: Suppression | None = None
    explanation: str


# -- the decision ------------------------------------------------------------------------------------
def _degraded(spec: DegradationTrigger, quality: float, baseline: float | None) -> bool:
    """True when the window's metric is worse than the absolute bound or dropped too far from baseline."""
    lower_is_better = spec.metric in LOWER_IS_BETTER
    if spec.min_value is not None and quality < spec.min_value:
        return True
    if spec.max_value is not None and quality > spec.max_value:
        return True
    if spec.max_drop is not None and baseline is not None:
        worsening = quality - baseline if lower_is_better else baseline - quality
        return worsening > spec.max_drop
    return False


def _update_signal(
    signal: SignalState,
    breached: bool,
    rule: BreachRule,
    reason: TriggerReason,
    now: datetime,
    window_no: int,
) -> SignalState:
    history = (*signal.history, breached)[-rule.windows :]
    active = sum(history) >= rule.breaches
    event_id, handled = signal.event_id, signal.event_handled
    if event_id is not None and not active:
        event_id, handled = None, False
    if event_id is None and active and breached:
        event_id, handled = f"{reason.value}-{now:%Y%m%dT%H%M%SZ}-w{window_no:06d}", False
    return SignalState(history=history, event_id=event_id, event_handled=handled)


def _confirmed(signal: SignalState, rule: BreachRule) -> bool:
    return bool(signal.history) and signal.history[-1] and sum(signal.history) >= rule.breaches


def _latest_tick(cron: str, now: datetime) -> datetime:
    # croniter's get_prev is strictly before its start: start a microsecond later to include ``now``.
    tick: datetime = croniter(cron, now + timedelta(microseconds=1)).get_prev(datetime)
    return tick


def decide(
    spec: TriggersConfig,
    state: TriggerState,
    window: WindowSignal | None,
    now: datetime,
    running_runs: int,
) -> tuple[Decision, TriggerState]:
    """Decide whether to start a retraining run now; pure: returns the decision and the new state.

    ``window``: what this interval measured (``None``: nothing new; only the schedule and pending events
    are considered). ``now``: a timezone-aware time (the caller's clock; tests pass a simulated one).
    ``running_runs``: pipeline runs running right now, whatever started them. Persist the returned state.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware (use datetime.now(UTC))")
    if running_runs < 0:
        raise ValueError(f"running_runs must be >= 0, got {running_runs}")
    schedule = spec.schedule if spec.schedule is not None and spec.schedule.enabled else None
    # Ticks before the schedule was first seen are never due: a new watcher does not fire for the past.
    anchor = state.schedule_anchor or (now if schedule is not None else None)
    drift, degradation = state.drift, state.degradation
    model_version, windows_seen = state.model_version, state.windows_seen
    unconfirmed: list[tuple[TriggerReason, str]] = []
    if window is not None:
        windows_seen += 1
        if window.model_version is not None and window.model_version != model_version:
            if model_version is not None:
                drift, degradation = SignalState(), SignalState()
            model_version = window.model_version
        if spec.drift.enabled and window.drifted is not None:
            drift = _update_signal(
                drift, window.drifted, spec.drift.confirm, TriggerReason.drift, now, windows_seen
            )
            if window.drifted and not _confirmed(drift, spec.drift.confirm):
                unconfirmed.append((TriggerReason.drift, _n_of_m_text("drift", drift, spec.drift.confirm)))
        if spec.degradation.enabled and window.quality is not None:
            breached = _degraded(spec.degradation, window.quality, window.baseline)
            rule = spec.degradation.confirm
            degradation = _update_signal(
                degradation, breached, rule, TriggerReason.degradation, now, windows_seen
            )
            if breached and not _confirmed(degradation, rule):
                unconfirmed.append(
                    (TriggerReason.degradation, _n_of_m_text("degradation", degradation, rule))
                )

    # Candidates in priority order: (reason, event id, why it is due).
    due: list[tuple[TriggerReason, str, str]] = []
    deduplicated: list[tuple[TriggerReason, str]] = []
    signals = (
        (TriggerReason.drift, drift, spec.drift.confirm, spec.drift.enabled),
        (TriggerReason.degradation, degradation, spec.degradation.confirm, spec.degradation.enabled),
    )
    for reason, signal, rule, enabled in signals:
        if not enabled or signal.event_id is None or not _confirmed(signal, rule):
            continue
        if signal.event_handled:
            deduplicated.append((reason, signal.event_id))
        else:
            why = (
                f"{reason.value} breached in {sum(signal.history)} of the last {len(signal.history)} windows"
            )
            due.append((reason, signal.event_id, why + " including the latest"))
    if schedule is not None and anchor is not None:
        tick = _latest_tick(schedule.cron, now)
        last = state.last_run_started_at
        if tick > anchor and (last is None or tick > last):
            due.append(
                (
                    TriggerReason.schedule,
                    f"schedule-{tick:%Y%m%dT%H%M%SZ}",
                    f"cron tick {tick:%Y-%m-%d %H:%M} UTC",
                )
            )

    new_state = state.model_copy(
        update={
            "model_version": model_version,
            "windows_seen": windows_seen,
            "schedule_anchor": anchor,
            "drift": drift,
            "degradation": degradation,
        }
    )
    if not due:
        return _quiet(now, new_state, deduplicated, unconfirmed, state)

    reason, event_id, why = due[0]
    blocks: list[tuple[Suppression, str]] = []
    if state.last_run_started_at is not None:
        elapsed = (now - state.last_run_started_at).total_seconds()
        if elapsed < spec.guardrails.cooldown_s:
            blocks.append(
                (
                    "cooldown",
                    f"cooldown: the last run started {elapsed:.0f} s ago "
                    f"(cooldown {spec.guardrails.cooldown_s:g} s)",
                )
            )
    if running_runs >= spec.guardrails.max_concurrent_runs:
        blocks.append(
            ("cap", f"cap: {running_runs} run(s) running, at most {spec.guardrails.max_concurrent_runs}")
        )
    if blocks:
        explanation = f"{why} (event {event_id}) but suppressed by " + "; ".join(text for _, text in blocks)
        decision = Decision(
            fire=False,
            at=now,
            reason=reason,
            event_id=event_id,
            suppressed_by=blocks[0][0],
            explanation=explanation,
        )
        return decision, new_state

    # Fire: this run handles every open event (it retrains on the same fresh data).
    covers = tuple(e for _, e, _ in due[1:])
    if drift.event_id is not None and not drift.event_handled:
        if drift.event_id != event_id and drift.event_id not in covers:
            covers += (drift.event_id,)
        drift = drift.model_copy(update={"event_handled": True})
    if degradation.event_id is not None and not degradation.event_handled:
        if degradation.event_id != event_id and degradation.event_id not in covers:
            covers += (degradation.event_id,)
        degradation = degradation.model_copy(update={"event_handled": True})
    fired_state = new_state.model_copy(
        update={
            "drift": drift,
            "degradation": degradation,
            "last_run_started_at": now,
            "last_run_reason": reason,
            "last_run_event_id": event_id,
            "runs_started": state.runs_started + 1,
        }
    )
    explanation = f"{why}: start a {reason.value} retraining run (event {event_id})"
    if covers:
        explanation += f"; it also covers {', '.join(covers)}"
    decision = Decision(
        fire=True, at=now, reason=reason, event_id=event_id, covers=covers, explanation=explanation
    )
    return decision, fired_state


def _n_of_m_text(name: str, signal: SignalState, rule: BreachRule) -> str:
    return (
        f"{name} breached in {sum(signal.history)} of the last {len(signal.history)} windows, "
        f"needs {rule.breaches} of {rule.windows} including the latest"
    )


def _quiet(
    now: datetime,
    new_state: TriggerState,
    deduplicated: list[tuple[TriggerReason, str]],
    unconfirmed: list[tuple[TriggerReason, str]],
    old_state: TriggerState,
) -> tuple[Decision, TriggerState]:
    """The decision when nothing is due: deduplicated, not yet confirmed, or simply quiet."""
    if deduplicated:
        reason, event_id = deduplicated[0]
        started = old_state.last_run_started_at
        when = f" (last run started {started:%Y-%m-%d %H:%M:%S} UTC)" if started else ""
        explanation = f"{reason.value} still breaching, but event {event_id} already has a run{when}"
        decision = Decision(
            fire=False,
            at=now,
            reason=reason,
            event_id=event_id,
            suppressed_by="dedup",
            explanation=explanation,
        )
        return decision, new_state
    if unconfirmed:
        explanation = "; ".join(text for _, text in unconfirmed)
        decision = Decision(
            fire=False, at=now, reason=unconfirmed[0][0], suppressed_by="n_of_m", explanation=explanation
        )
        return decision, new_state
    pending = [
        signal.event_id
        for signal in (new_state.drift, new_state.degradation)
        if signal.event_id is not None and not signal.event_handled
    ]
    if pending:
        explanation = (
            f"no trigger is due: event {', '.join(pending)} is open but the latest window did not breach"
        )
        return Decision(fire=False, at=now, explanation=explanation), new_state
    return Decision(fire=False, at=now, explanation="no trigger is due"), new_state


def event_slug(event_id: str) -> str:
    """A name part that is the same for every decision about one event: lowercase, ``[a-z0-9-]``, 32 at most.

    Runs are named from it (a Ray job's submission id, a RayJob's name), so a second check that decides
    to start the same event's run finds it already there instead of starting another.
    """
    import hashlib
    import re

    readable = re.sub(r"[^a-z0-9]+", "-", event_id.lower()).strip("-")[:23].strip("-")
    digest = hashlib.sha256(event_id.encode()).hexdigest()[:8]
    return f"{readable}-{digest}" if readable else digest
