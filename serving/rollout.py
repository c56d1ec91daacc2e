"""Progressive rollout: advance the candidate's weight step by step while live evidence stays within bounds.

The analysis is a pure function of two metric deltas (champion and candidate over the current step).
The controller is a loop around it whose effects (apply a weight, read metrics, move aliases, emit events)
are injected, so the same controller runs in a pipeline job, from the CLI and in tests.
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


class EffectFailed(RuntimeError):
    """An effect (metrics, Serve, the registry) still failed after its retries."""


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

    def _scrape(self) -> dict[tuple[str, str], VersionStats]:
        return dict(self._retried("reading the router's metrics", self.effects.scrape))

    def _delta(self, now: dict, baseline: dict, key: tuple[str, str]) -> VersionStats:
        return now.get(key, VersionStats()).minus(baseline.get(key, VersionStats()))

    def run(self) -> RolloutResult:
        """Run to the end; every exit leaves traffic and aliases consistent.

        An effect that keeps failing (metrics unreachable, Serve or MLflow refusing) ends the rollout as a
        rollback: the candidate's weight goes to 0, it is tagged rejected, and one ``rollback`` event says
        why. Only if even that fails does the error propagate, after the event.
        """
        result = RolloutResult(None)
        self._weight = 0.0
        try:
            return self._walk(result)
        except Exception as error:
            # The weight the candidate had when it failed: a step in progress is in no finished step yet.
            weight = self._weight
            reason = f"the rollout could not continue: {error}"
            failures = []
            cleanup: tuple[tuple[str, Callable[[], Any]], ...] = (
                ("setting the candidate's weight to 0", partial(self.effects.apply_weight, 0.0)),
                ("tagging the candidate rejected", partial(self.effects.reject, reason)),
            )
            for what, action in cleanup:
                try:
                    self._retried(what, action)
                except EffectFailed as failed:
                    failures.append(str(failed))
            self.effects.emit(
                "rollback",
                f"candidate v{self.candidate_version} rolled back at {weight:g}%: {reason}"
                + (f"; and {'; '.join(failures)}" if failures else ""),
                {
                    "weight": weight,
                    "outcome": RolloutOutcome.rolled_back,
                    "error": str(error),
                    "steps": result.steps,
                },
            )
            if failures:
                raise
            result.outcome, result.reason = RolloutOutcome.rolled_back, reason
            return result

    def _walk(self, result: RolloutResult) -> RolloutResult:
        """The steps, the holds and the end: promotion, or the rollback a verdict asks for."""
        for weight in self.policy.steps:
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
            verdict = self._hold(weight)
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
                self._retried("setting the candidate's weight to 0", partial(self.effects.apply_weight, 0.0))
                self._retried("tagging the candidate rejected", partial(self.effects.reject, reason))
                self.effects.emit(
                    "rollback",
                    f"candidate v{self.candidate_version} rolled back at {weight:g}%: {reason}",
                    {"weight": weight, "verdict": verdict.numbers, "outcome": outcome, "steps": result.steps},
                )
                result.outcome, result.reason = outcome, reason
                return result
        self.effects.promote()  # a refused promotion is not retried: the aliases moved meanwhile
        self.effects.emit(
            "promotion", f"candidate v{self.candidate_version} promoted to champion", {"steps": result.steps}
        )
        result.outcome = RolloutOutcome.promoted
        return result

    def _hold(self, weight: float) -> StepVerdict:
        """Hold a weight for the interval (longer if evidence is short); stop early on a breach."""
        baseline = self._scrape()
        started = self.effects.clock()
        verdict = StepVerdict("wait", (), {})
        while True:
            self.effects.sleep(POLL_S)
            self._retried("renewing the rollout's lease", self.effects.heartbeat)
            elapsed = self.effects.clock() - started
            now = self._scrape()
            verdict = analyse_step(
                self._delta(now, baseline, self.champion_key),
                self._delta(now, baseline, self.candidate_key),
                self.policy.analysis,
                final=elapsed >= min(self.policy.interval_s, self.policy.max_step_wait_s),
            )
            if verdict.status == "breach":
                return verdict
            if verdict.status == "pass" and elapsed >= self.policy.interval_s:
                return verdict
            if elapsed >= self.policy.max_step_wait_s:
                return verdict
