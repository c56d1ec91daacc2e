"""Progressive rollout: advance the candidate's weight step by step while live evidence stays within bounds.

The analysis is a pure function of two metric deltas (champion and candidate over the current step).
The controller is a loop around it whose effects (apply a weight, read metrics, move aliases, emit events,
report progress) are injected, so the same controller runs in a pipeline job, from the CLI and in tests.

While the metrics cannot be read the controller holds: the step's clock stops, the weight stays where it
is, nothing is promoted without evidence; past ``analysis.max_metrics_outage_s`` of unobserved time in a
step it rolls back.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from statistics import NormalDist
from typing import Any

import numpy as np

from contracts.vocabulary import Role, RolloutOutcome
from serving.metrics import VersionStats
from serving.spec import AnalysisSpec, RolloutPolicy

POLL_S = 1.0
RETRIES = 3  # attempts of one effect, 1 s and 2 s apart
PROGRESS_EVERY_S = 5.0  # a holding step reports its numbers this often (and whenever its status changes)
OUTAGE_BACKOFF_MAX_S = 5.0  # while metrics are unreachable, retries back off 1, 2, 4, 5, 5 ... s
CLEANUP_BACKOFF_MAX_S = 10.0  # a rollback's cleanup retries back off 1, 2, 4, 8, 10, 10 ... s


class EffectFailed(RuntimeError):
    """An effect (metrics, Serve, the registry) still failed after its retries."""


class MetricsOutage(EffectFailed):
    """The router's metrics stayed unreadable for longer than a step may go unobserved."""


@dataclass(frozen=True)
class StepVerdict:
    """``pass`` (enough evidence, within bounds), ``breach`` (out of bounds) or ``wait`` (too few requests)."""

    status: str
    reasons: tuple[str, ...]
    numbers: dict[str, float]


def divergence_interval(
    champion: VersionStats, candidate: VersionStats, confidence: float
) -> tuple[float, float, float]:
    """|difference of mean predictions| with the low and high ends of its two-sided confidence interval.

    The versions answered different requests, so the standard error is that of two independent means
    (variances from each version's prediction histogram). NaN when either version has no predictions.
    """
    difference = candidate.mean_prediction - champion.mean_prediction
    if math.isnan(difference):
        return (math.nan, math.nan, math.nan)
    variances = (candidate.prediction_variance, champion.prediction_variance)
    if any(math.isnan(v) for v in variances):
        return (abs(difference), abs(difference), abs(difference))
    error = math.sqrt(variances[0] / candidate.prediction_count + variances[1] / champion.prediction_count)
    return _interval_ends(difference, error, confidence)


def value_shift_interval(
    champion: VersionStats, candidate: VersionStats, confidence: float
) -> tuple[float, float, float]:
    """|difference of mean values| in champion standard deviations, with its confidence interval's ends.

    For regression outputs: the moments are exact, so the standard error is that of two independent means.
    NaN when either version has fewer than two values.
    """
    variances = (candidate.value_variance, champion.value_variance)
    if any(math.isnan(v) for v in variances):
        return (math.nan, math.nan, math.nan)
    scale = math.sqrt(variances[1]) or math.sqrt((variances[0] + variances[1]) / 2) or 1.0
    difference = (candidate.value_mean - champion.value_mean) / scale
    error = math.sqrt(variances[0] / candidate.value_count + variances[1] / champion.value_count) / scale
    return _interval_ends(difference, error, confidence)


def _interval_ends(difference: float, error: float, confidence: float) -> tuple[float, float, float]:
    """|difference| and the distances from 0 of the nearest and farthest ends of its two-sided interval."""
    margin = NormalDist().inv_cdf(0.5 + confidence / 2) * error
    low, high = difference - margin, difference + margin
    closest = 0.0 if low <= 0.0 <= high else min(abs(low), abs(high))
    return (abs(difference), closest, max(abs(low), abs(high)))


def class_distance_interval(
    champion: VersionStats, candidate: VersionStats, confidence: float, draws: int = 400, seed: int = 0
) -> tuple[float, float, float]:
    """Total-variation distance between the versions' predicted-class shares, with a bootstrap interval.

    For multiclass outputs. The interval comes from redrawing each version's class counts from its own
    shares (parametric bootstrap); NaN when either version predicted nothing.
    """
    labels = sorted(set(champion.class_counts) | set(candidate.class_counts))
    counts = [
        np.array([stats.class_counts.get(label, 0.0) for label in labels]) for stats in (champion, candidate)
    ]
    totals = [float(c.sum()) for c in counts]
    if min(totals) <= 0:
        return (math.nan, math.nan, math.nan)
    shares = [c / t for c, t in zip(counts, totals, strict=True)]
    distance = 0.5 * float(np.abs(shares[1] - shares[0]).sum())
    rng = np.random.default_rng(seed)
    redrawn = [rng.multinomial(int(t), s, size=draws) / t for s, t in zip(shares, totals, strict=True)]
    distances = 0.5 * np.abs(redrawn[1] - redrawn[0]).sum(axis=1)
    alpha = (1 - confidence) / 2
    return (distance, float(np.quantile(distances, alpha)), float(np.quantile(distances, 1 - alpha)))


def prediction_divergence(
    champion: VersionStats, candidate: VersionStats, analysis: AnalysisSpec
) -> tuple[str, float, tuple[float, float, float]]:
    """The divergence that fits what the versions answer: (what it measures, its bound, its interval)."""
    confidence = analysis.divergence_confidence
    binary = divergence_interval(champion, candidate, confidence)
    if not math.isnan(binary[0]):
        return "mean prediction", analysis.max_prediction_divergence, binary
    if champion.value_count and candidate.value_count:
        shift = value_shift_interval(champion, candidate, confidence)
        return "mean value (in champion standard deviations)", analysis.max_standardised_shift, shift
    if champion.class_counts and candidate.class_counts:
        distance = class_distance_interval(champion, candidate, confidence)
        return "predicted-class shares (total variation)", analysis.max_class_share_distance, distance
    return "mean prediction", analysis.max_prediction_divergence, binary


def analyse_step(
    champion: VersionStats, candidate: VersionStats, analysis: AnalysisSpec, final: bool = True
) -> StepVerdict:
    """Judge the candidate against the champion on the traffic both answered during this step.

    Errors and latency are judged at every look (waiting only adds victims); prediction divergence, a
    statistical comparison, only at the ``final`` look of a step.
    """
    numbers = {
        "candidate_requests": candidate.total,
        "champion_requests": champion.total,
        "candidate_error_rate": candidate.error_rate,
        "champion_error_rate": champion.error_rate,
        "candidate_p99_s": candidate.latency_quantile(0.99),
        "champion_p99_s": champion.latency_quantile(0.99),
    }
    measured, bound, (divergence, divergence_low, divergence_high) = prediction_divergence(
        champion, candidate, analysis
    )
    numbers |= {
        "prediction_divergence": divergence,
        "prediction_divergence_low": divergence_low,
        "prediction_divergence_high": divergence_high,
        "prediction_divergence_bound": bound,
    }
    reasons = []
    # Errors breach as soon as they exceed what the minimum sample could excuse; waiting only adds victims.
    error_increase = candidate.error_rate - champion.error_rate
    if candidate.errors > analysis.max_error_rate_increase * max(candidate.total, analysis.min_requests):
        reasons.append(
            f"error rate {candidate.error_rate:.2%} vs champion {champion.error_rate:.2%} "
            f"(+{error_increase:.2%} > +{analysis.max_error_rate_increase:.2%})"
        )
    if candidate.total < analysis.min_requests:
        return StepVerdict("breach" if reasons else "wait", tuple(reasons), numbers)
    champion_p99, candidate_p99 = numbers["champion_p99_s"], numbers["candidate_p99_s"]
    if champion.total >= analysis.min_requests and not math.isnan(champion_p99) and champion_p99 > 0:
        ratio = candidate_p99 / champion_p99
        numbers["p99_ratio"] = ratio
        if ratio > analysis.max_p99_latency_ratio and candidate_p99 > analysis.p99_latency_floor_s:
            reasons.append(
                f"p99 latency {candidate_p99:.3f}s is {ratio:.1f}x the champion's {champion_p99:.3f}s "
                f"(> {analysis.max_p99_latency_ratio:g}x)"
            )
    if final and not math.isnan(divergence_low) and divergence_low > bound:
        reasons.append(
            f"{measured} differs from the champion's by {divergence:.3f} "
            f"({analysis.divergence_confidence:.0%} CI [{divergence_low:.3f}, {divergence_high:.3f}] "
            f"> {bound:g})"
        )
    return StepVerdict("breach" if reasons else "pass", tuple(reasons), numbers)


@dataclass(frozen=True)
class StepProgress:
    """Where a holding step stands: its weight, its clock (outages excluded) and its latest verdict.

    ``metrics_down`` says the metrics cannot be read right now, ``metrics_outage_s`` for how long;
    ``unobserved_s`` is this step's total time without metrics so far, bounded by ``max_outage_s``.
    """

    step: int
    steps: int
    weight: float
    champion_version: str
    candidate_version: str
    elapsed_s: float
    hold_s: float
    max_wait_s: float
    min_requests: int
    verdict: StepVerdict
    metrics_down: bool = False
    metrics_outage_s: float = 0.0
    unobserved_s: float = 0.0
    max_outage_s: float = math.inf

    @property
    def status(self) -> str:
        """The verdict's status, or ``outage`` while the metrics cannot be read."""
        return "outage" if self.metrics_down else self.verdict.status

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN, for a number not measurable yet, becomes None)."""
        numbers = {k: None if math.isnan(v) else v for k, v in self.verdict.numbers.items()}
        return {
            "step": self.step,
            "steps": self.steps,
            "weight": self.weight,
            "champion_version": self.champion_version,
            "candidate_version": self.candidate_version,
            "status": self.status,
            "elapsed_s": round(self.elapsed_s, 3),
            "hold_s": self.hold_s,
            "max_wait_s": self.max_wait_s,
            "metrics_down": self.metrics_down,
            "metrics_outage_s": round(self.metrics_outage_s, 3),
            "unobserved_s": round(self.unobserved_s, 3),
            "reasons": list(self.verdict.reasons),
            **numbers,
        }


def _no_progress(progress: StepProgress) -> None:
    """The default progress sink: nobody is watching."""


class ProgressThrottle:
    """Decides when a holding step reports: its first look, every ``every_s``, and on a change of status.

    Pure: the caller passes the time, so a test drives it without sleeping.
    """

    def __init__(self, every_s: float = PROGRESS_EVERY_S):
        self.every_s = every_s
        self._last: tuple[float, tuple[Any, ...]] | None = None

    def due(self, now: float, key: tuple[Any, ...]) -> bool:
        """Whether to report now; ``key`` (step, status) changing always reports."""
        if self._last is not None and self._last[1] == key and now - self._last[0] < self.every_s:
            return False
        self._last = (now, key)
        return True


def _share(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2%}"


def _seconds(value: float) -> str:
    if math.isnan(value):
        return "-"
    return "inf" if math.isinf(value) else f"{value * 1000:.0f}ms"


def describe_progress(progress: StepProgress) -> str:
    """One line a person reads: step, clock, requests, error rates, p99s and divergence per version.

    The same line is a Rich status on a terminal, a plain line in a pipe, and a log line in a pipeline job.
    """
    n = progress.verdict.numbers
    candidate, champion = f"v{progress.candidate_version}", f"v{progress.champion_version}"
    parts = [
        f"step {progress.step}/{progress.steps} at {progress.weight:g}%: "
        f"{progress.elapsed_s:.0f}s of {progress.hold_s:g}s hold (at most {progress.max_wait_s:g}s)"
    ]
    if n:
        parts += [
            f"requests {candidate} {n['candidate_requests']:.0f}, {champion} {n['champion_requests']:.0f}",
            f"errors {_share(n['candidate_error_rate'])} vs {_share(n['champion_error_rate'])}",
            f"p99 {_seconds(n['candidate_p99_s'])} vs {_seconds(n['champion_p99_s'])}",
        ]
        divergence = n["prediction_divergence"]
        if not math.isnan(divergence):
            parts.append(
                f"divergence {divergence:.3f} [{n['prediction_divergence_low']:.3f}, "
                f"{n['prediction_divergence_high']:.3f}] bound {n['prediction_divergence_bound']:g}"
            )
    if progress.status == "outage":
        parts.append(
            f"HOLDING: metrics unreadable for {progress.metrics_outage_s:.0f}s "
            f"({progress.unobserved_s:.0f}s of {progress.max_outage_s:g}s allowed this step)"
        )
    elif progress.status == "wait":
        requests = n.get("candidate_requests", 0.0)
        parts.append(f"waiting: {requests:.0f} of {progress.min_requests} {candidate} requests")
    elif progress.status == "breach":
        parts.append("BREACH: " + "; ".join(progress.verdict.reasons))
    else:
        parts.append("within bounds" + (" so far" if progress.elapsed_s < progress.hold_s else ""))
    return " | ".join(parts)


@dataclass
class RolloutResult:
    """How a rollout ended (promoted, rolled_back, stalled or pinned; None while running), with every step."""

    outcome: RolloutOutcome | None
    steps: list[dict[str, Any]] = field(default_factory=list)
    reason: str = ""


@dataclass
class RolloutEffects:
    """What the controller does to the world, injected."""

    apply_weight: Callable[[float], None]
    scrape: Callable[[], dict[tuple[str, str], VersionStats]]
    promote: Callable[[], None]
    reject: Callable[[str], None]
    emit: Callable[[str, str, dict[str, Any]], None]
    is_pinned: Callable[[], bool]
    # Renews the rollout's lease in the live state store while a step holds (serving/livestate.py).
    heartbeat: Callable[[], None] = lambda: None
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    # Live numbers while a step holds (throttled by the controller): for people, not the event log.
    progress: Callable[[StepProgress], None] = _no_progress


class RolloutController:
    """Walks the policy's steps for one candidate; promotes at the end, rolls back on the first breach."""

    def __init__(
        self, policy: RolloutPolicy, champion_version: str, candidate_version: str, effects: RolloutEffects
    ):
        self.policy, self.effects = policy, effects
        self.champion_key = (champion_version, Role.champion.value)
        self.candidate_key = (candidate_version, Role.candidate.value)
        self.candidate_version = candidate_version
        self._weight = 0.0  # the candidate's weight as last applied
        self._ending = False  # set once the rollback's cleanup has begun: it ends the rollout exactly once
        self._throttle = ProgressThrottle()

    def _retried(self, what: str, action: Callable[[], Any]) -> Any:
        """An effect retried with backoff (1, 2, 4 s): a scrape or a Serve call may fail for a moment."""
        for attempt in range(RETRIES):
            try:
                return action()
            except Exception as error:  # the last failure is re-raised with what was being done
                if attempt == RETRIES - 1:
                    raise EffectFailed(
                        f"{what} failed {RETRIES} times: {type(error).__name__}: {error}"
                    ) from error
                self.effects.sleep(2.0**attempt)
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def _retried_until(self, deadline: float, what: str, action: Callable[[], Any]) -> None:
        """An effect of the rollback's cleanup, retried with backoff (capped) until it works or ``deadline``.

        It is tried at least once even when the deadline has passed. Raises :class:`EffectFailed` naming
        ``what``, the attempts and the last error once the deadline is reached.
        """
        delay, attempts = 1.0, 0
        while True:
            attempts += 1
            try:
                action()
                return
            except Exception as error:  # every failure is retried: the cause (a dead head) may be transient
                left = deadline - self.effects.clock()
                if left <= 0:
                    raise EffectFailed(
                        f"{what} failed {attempts} times in "
                        f"{self.policy.analysis.cleanup_timeout_s:g}s (analysis.cleanup_timeout_s): "
                        f"{type(error).__name__}: {error}"
                    ) from error
                self.effects.sleep(min(delay, left))
                delay = min(2 * delay, CLEANUP_BACKOFF_MAX_S)

    def _roll_back(
        self, result: RolloutResult, weight: float, reason: str, outcome: RolloutOutcome, details: dict
    ) -> RolloutResult:
        """End the rollout: weight 0 first, then the alias and tag, then exactly one ``rollback`` event.

        Both cleanups share one budget, ``analysis.cleanup_timeout_s``. Traffic is what matters: if weight 0
        cannot be written within it the event says so and :class:`EffectFailed` propagates. If only the
        candidate's alias and tag could not be written the rollout has still ended (no traffic reaches the
        candidate), so it returns ``outcome`` with a reason that says the cleanup is pending.
        """
        self._ending = True  # from here on a failure must not start a second ending
        deadline = self.effects.clock() + self.policy.analysis.cleanup_timeout_s
        stuck: EffectFailed | None = None
        pending = ""
        try:
            self._retried_until(
                deadline, "setting the candidate's weight to 0", partial(self.effects.apply_weight, 0.0)
            )
        except EffectFailed as failed:
            stuck = failed
        if stuck is None:
            try:
                self._retried_until(
                    deadline, "tagging the candidate rejected", partial(self.effects.reject, reason)
                )
            except EffectFailed as failed:
                pending = f"the candidate's alias and tag cleanup is pending: {failed}"
        message = f"candidate v{self.candidate_version} rolled back at {weight:g}%: {reason}"
        if stuck is not None:
            message += f"; and {stuck}"
        elif pending:
            message += f"; {pending}"
        self.effects.emit(
            "rollback",
            message,
            {"weight": weight, "outcome": outcome, "steps": result.steps, "cleanup_pending": pending}
            | details,
        )
        if stuck is not None:
            raise stuck
        result.outcome, result.reason = outcome, f"{reason}; {pending}" if pending else reason
        return result

    def _delta(self, now: dict, baseline: dict, key: tuple[str, str]) -> VersionStats:
        return now.get(key, VersionStats()).minus(baseline.get(key, VersionStats()))

    def run(self) -> RolloutResult:
        """Run to the end; every exit leaves traffic and aliases consistent.

        An effect that keeps failing (metrics unreachable, Serve or MLflow refusing) ends the rollout as a
        rollback: the candidate's weight goes to 0, it is tagged rejected, and one ``rollback`` event says
        why. The cleanup is retried for up to ``analysis.cleanup_timeout_s``; an alias cleanup still failing
        then leaves the outcome ``rolled_back`` with the reason saying it is pending. Only a weight that
        cannot be set to 0 propagates its error, after the event.
        """
        result = RolloutResult(None)
        self._weight, self._ending = 0.0, False
        try:
            return self._walk(result)
        except Exception as error:
            if self._ending:  # the ending's own event is out already; nothing is left to clean up
                raise
            # The weight the candidate had when it failed: a step in progress is in no finished step yet.
            reason = f"the rollout could not continue: {error}"
            return self._roll_back(
                result, self._weight, reason, RolloutOutcome.rolled_back, {"error": str(error)}
            )

    def _walk(self, result: RolloutResult) -> RolloutResult:
        """The steps, the holds and the end: promotion, or the rollback a verdict asks for."""
        for step, weight in enumerate(self.policy.steps, 1):
            if self.effects.is_pinned():
                result.outcome, result.reason = (
                    RolloutOutcome.pinned,
                    "the serving config pins the weight; automation yields",
                )
                self.effects.emit("rollout_step", result.reason, {"weight": None})
                return result
            self._retried(
                f"setting the candidate's weight to {weight:g}%",
                partial(self.effects.apply_weight, weight),
            )
            self._weight = weight
            self.effects.emit(
                "rollout_step", f"candidate v{self.candidate_version} at {weight:g}%", {"weight": weight}
            )
            verdict = self._hold(_Hold(step, weight))
            result.steps.append(
                {
                    "weight": weight,
                    "status": verdict.status,
                    "reasons": list(verdict.reasons),
                    **verdict.numbers,
                }
            )
            if verdict.status != "pass":
                stalled = verdict.status == "wait"
                outcome = RolloutOutcome.stalled if stalled else RolloutOutcome.rolled_back
                reason = (
                    f"too few requests at {weight:g}% within {self.policy.max_step_wait_s:g}s"
                    if stalled
                    else "; ".join(verdict.reasons)
                )
                return self._roll_back(result, weight, reason, outcome, {"verdict": verdict.numbers})
        self.effects.promote()  # a refused promotion is not retried: the aliases moved meanwhile
        self.effects.emit(
            "promotion", f"candidate v{self.candidate_version} promoted to champion", {"steps": result.steps}
        )
        result.outcome = RolloutOutcome.promoted
        return result

    def _hold(self, hold: _Hold) -> StepVerdict:
        """Hold a weight for the interval (longer if evidence is short); stop early on a breach.

        The step's clock counts only time with metrics: an outage holds the step where it is. The evidence is
        everything the router counted since the step began, traffic served during an outage included (its
        counters are cumulative, so errors nobody could see then are judged at the first look after), unless
        the counters went back (the exposition restarted): a delta across that is meaningless, so the step
        starts over from the first reading after it. Breaches seen before an outage ended the step already.
        """
        policy = self.policy
        baseline, _ = self._read_metrics(hold)
        verdict = StepVerdict("wait", (), {})
        while True:
            before = self.effects.clock()
            self.effects.sleep(POLL_S)
            self._retried("renewing the rollout's lease", self.effects.heartbeat)
            now, unobserved = self._read_metrics(hold)
            hold.elapsed_s += self.effects.clock() - before - unobserved
            if self._counters_went_back(now, baseline):
                baseline, hold.elapsed_s = now, 0.0
                continue
            verdict = analyse_step(
                self._delta(now, baseline, self.champion_key),
                self._delta(now, baseline, self.candidate_key),
                policy.analysis,
                final=hold.elapsed_s >= min(policy.interval_s, policy.max_step_wait_s),
            )
            ended = (
                verdict.status == "breach"
                or (verdict.status == "pass" and hold.elapsed_s >= policy.interval_s)
                or hold.elapsed_s >= policy.max_step_wait_s
            )
            self._report(hold, verdict, force=ended)
            if ended:
                return verdict

    def _counters_went_back(self, now: dict, baseline: dict) -> bool:
        """Whether a version's request count fell since the baseline: its counters restarted from zero."""
        return any(
            now.get(key, VersionStats()).total < baseline.get(key, VersionStats()).total
            for key in (self.champion_key, self.candidate_key)
        )

    def _read_metrics(self, hold: _Hold) -> tuple[dict[tuple[str, str], VersionStats], float]:
        """The router's metrics, waiting through an outage; with how long this reading was unobserved time.

        Each failure is retried with backoff while the step holds; once the step's unobserved time reaches
        ``analysis.max_metrics_outage_s`` it raises :class:`MetricsOutage`, which ends the rollout as a
        rollback at weight 0. Any exception counts: nothing the scrape raises says the candidate is bad.
        """
        bound = self.policy.analysis.max_metrics_outage_s
        began: float | None = None
        delay = 1.0
        while True:
            try:
                stats = dict(self.effects.scrape())
            except Exception as error:  # the analysis is impossible for now; the candidate is not judged
                now = self.effects.clock()
                began = now if began is None else began
                down = now - began
                if hold.unobserved_s + down >= bound:
                    raise MetricsOutage(
                        f"the router's metrics were unreadable for {down:.0f}s at {hold.weight:g}% "
                        f"({hold.unobserved_s + down:.0f}s unobserved in this step, "
                        f"analysis.max_metrics_outage_s is {bound:g}s); last error "
                        f"{type(error).__name__}: {error}"
                    ) from error
                self._report(hold, hold.verdict, metrics_down=down)
                self.effects.sleep(min(delay, bound - hold.unobserved_s - down))
                delay = min(2 * delay, OUTAGE_BACKOFF_MAX_S)
                continue
            unobserved = 0.0 if began is None else self.effects.clock() - began
            hold.unobserved_s += unobserved
            return stats, unobserved

    def _report(
        self, hold: _Hold, verdict: StepVerdict, metrics_down: float | None = None, force: bool = False
    ) -> None:
        """Tell the progress sink where the step stands, when the throttle allows (or ``force``)."""
        hold.verdict = verdict
        progress = StepProgress(
            step=hold.step,
            steps=len(self.policy.steps),
            weight=hold.weight,
            champion_version=self.champion_key[0],
            candidate_version=self.candidate_version,
            elapsed_s=hold.elapsed_s,
            hold_s=self.policy.interval_s,
            max_wait_s=self.policy.max_step_wait_s,
            min_requests=self.policy.analysis.min_requests,
            verdict=verdict,
            metrics_down=metrics_down is not None,
            metrics_outage_s=metrics_down or 0.0,
            unobserved_s=hold.unobserved_s + (metrics_down or 0.0),
            max_outage_s=self.policy.analysis.max_metrics_outage_s,
        )
        if not (self._throttle.due(self.effects.clock(), (hold.step, progress.status)) or force):
            return
        try:
            self.effects.progress(progress)
        except Exception:  # noqa: S110 - progress is for people: a display that fails must not decide a rollout
            pass


@dataclass
class _Hold:
    """One step's running state: its clock (outages excluded), its unobserved time and its latest verdict."""

    step: int
    weight: float
    elapsed_s: float = 0.0
    unobserved_s: float = 0.0
    verdict: StepVerdict = field(default_factory=lambda: StepVerdict("wait", (), {}))
