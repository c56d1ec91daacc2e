"""Rollout analysis core and the controller loop, with injected effects (no cluster needed)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from serving.metrics import VersionStats, parse_version_stats
from serving.rollout import (
    EffectFailed,
    ProgressThrottle,
    RolloutController,
    RolloutEffects,
    StepProgress,
    StepVerdict,
    analyse_step,
    describe_progress,
)
from serving.spec import AnalysisSpec, RolloutPolicy

ANALYSIS = AnalysisSpec(
    min_requests=50,
    max_error_rate_increase=0.02,
    max_p99_latency_ratio=3,
    p99_latency_floor_s=0.05,
    max_prediction_divergence=0.1,
)


def stats(ok: float, errors: float = 0, p99: float = 0.01, mean: float = 0.2) -> VersionStats:
    buckets = {0.005: 0.0, 0.01: 0.0, 0.05: 0.0, 0.5: 0.0, float("inf"): 0.0}
    for bound in buckets:
        buckets[bound] = ok + errors if bound >= p99 else (ok + errors) * 0.5
    return VersionStats(
        ok=ok, errors=errors, latency_buckets=buckets, prediction_sum=mean * ok, prediction_count=ok
    )


def test_verdicts() -> None:
    champion = stats(500)
    assert analyse_step(champion, stats(20), ANALYSIS).status == "wait", "too few requests to judge"
    assert analyse_step(champion, stats(100), ANALYSIS).status == "pass"
    errors = analyse_step(champion, stats(90, errors=10), ANALYSIS)
    assert errors.status == "breach" and "error rate" in errors.reasons[0], errors
    early = analyse_step(champion, stats(10, errors=5), ANALYSIS)
    assert early.status == "breach", "errors breach before the minimum sample is reached"
    slow = analyse_step(champion, stats(100, p99=0.5), ANALYSIS)
    assert slow.status == "breach" and "p99 latency" in slow.reasons[0], slow
    jitter = analyse_step(stats(500, p99=0.005), stats(100, p99=0.05), ANALYSIS)
    assert jitter.status == "pass", "a ratio under the latency floor is not judged"
    diverging = analyse_step(champion, stats(100, mean=0.5), ANALYSIS)
    assert diverging.status == "breach" and "prediction" in diverging.reasons[0], diverging
    early_look = analyse_step(champion, stats(100, mean=0.5), ANALYSIS, final=False)
    assert early_look.status == "pass", "divergence is judged once, when the step's hold is over"


def spread(ok: float, mean: float) -> VersionStats:
    """Predictions spread over the [mean-0.2, mean+0.2] buckets (variance about 0.02), latency fine."""
    base = stats(ok, mean=mean)
    low = round(mean - 0.2, 1)
    bounds = [round(0.1 * i, 1) for i in range(1, 10)] + [float("inf")]
    base.prediction_buckets = {b: ok * min(max((min(b, 1.0) - low) / 0.4, 0.0), 1.0) for b in bounds}
    return base


def test_divergence_needs_evidence_beyond_noise() -> None:
    analysis = ANALYSIS.model_copy(update={"min_requests": 20})
    # The same 0.12 gap in means: noise with 20 requests each, a real shift with 2,000.
    few = analyse_step(spread(20, 0.3), spread(20, 0.42), analysis)
    assert few.status == "pass", few
    assert few.numbers["prediction_divergence_low"] < 0.1 < few.numbers["prediction_divergence"]
    many = analyse_step(spread(2_000, 0.3), spread(2_000, 0.42), analysis)
    assert many.status == "breach" and "CI" in many.reasons[0], many
    assert 0.1 < many.numbers["prediction_divergence_low"] <= many.numbers["prediction_divergence"]


def test_prediction_variance_from_buckets() -> None:
    uniform = VersionStats(
        prediction_count=1_000,
        prediction_sum=500,
        prediction_buckets={
            b: 100.0 * i for i, b in enumerate([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, float("inf")], 1)
        },
    )
    # Uniform on [0, 1]: variance 1/12, less the bucket-width term (0.1^2/12) the midpoints lose.
    assert abs(uniform.prediction_variance - (1 / 12 - 0.01 / 12)) < 1e-9


def test_parse_prometheus_text() -> None:
    text = "\n".join(
        [
            "# TYPE ray_lockgate_requests_total counter",
            'ray_lockgate_requests_total{version="2",role="candidate",mode="weighted",status="ok"} 8.0',
            'ray_lockgate_requests_total{version="2",role="candidate",mode="weighted",status="error"} 2.0',
            "# TYPE ray_lockgate_request_latency_seconds histogram",
            'ray_lockgate_request_latency_seconds_bucket{version="2",role="candidate",mode="weighted",le="0.01"} 9.0',
            'ray_lockgate_request_latency_seconds_bucket{version="2",role="candidate",mode="weighted",le="+Inf"} 10.0',
            'ray_lockgate_request_latency_seconds_count{version="2",role="candidate",mode="weighted"} 10.0',
            'ray_lockgate_request_latency_seconds_sum{version="2",role="candidate",mode="weighted"} 0.05',
        ]
    )
    parsed = parse_version_stats(text)[("2", "candidate")]
    assert (parsed.ok, parsed.errors, parsed.error_rate) == (8.0, 2.0, 0.2)
    assert parsed.latency_quantile(0.5) == 0.01 and parsed.latency_quantile(0.99) == float("inf")


class World:
    """Fake effects: a scripted metric stream and a record of what the controller did."""

    def __init__(self, candidate_errors_per_tick: float, pinned_after: int | None = None):
        self.time, self.weight, self.actions = 0.0, 0.0, []
        self.champion, self.candidate = VersionStats(), VersionStats()
        self.errors, self.pinned_after, self.ticks = candidate_errors_per_tick, pinned_after, 0

    def sleep(self, seconds: float) -> None:
        self.time += seconds
        self.ticks += 1
        share = self.weight / 100
        self.champion = self.champion.minus(VersionStats(ok=-(1 - share) * 40))
        self.candidate = self.candidate.minus(VersionStats(ok=-share * 40, errors=-self.errors * share))

    def effects(self) -> RolloutEffects:
        return RolloutEffects(
            apply_weight=lambda w: (setattr(self, "weight", w), self.actions.append(("weight", w))),
            scrape=lambda: {("1", "champion"): self.champion, ("2", "candidate"): self.candidate},
            promote=lambda: self.actions.append(("promote",)),
            reject=lambda reason: self.actions.append(("reject", reason)),
            emit=lambda kind, message, details: self.actions.append(("event", kind)),
            is_pinned=lambda: self.pinned_after is not None and self.ticks >= self.pinned_after,
            clock=lambda: self.time,
            sleep=self.sleep,
        )


POLICY = RolloutPolicy(
    steps=(10, 50, 100),
    interval_s=5,
    max_step_wait_s=60,
    analysis=AnalysisSpec(min_requests=10, max_prediction_divergence=1.0),
)


def test_controller_promotes_a_healthy_candidate() -> None:
    world = World(candidate_errors_per_tick=0)
    result = RolloutController(POLICY, "1", "2", world.effects()).run()
    assert result.outcome == "promoted" and [s["weight"] for s in result.steps] == [10, 50, 100]
    assert world.actions[-2:] == [("promote",), ("event", "promotion")]


def test_controller_rolls_back_on_errors_and_yields_to_a_pin() -> None:
    world = World(candidate_errors_per_tick=10)
    result = RolloutController(POLICY, "1", "2", world.effects()).run()
    assert result.outcome == "rolled_back"
    kinds = [a[0] for a in world.actions]
    assert ("weight", 0.0) in world.actions and "reject" in kinds and "promote" not in kinds
    assert world.actions.index(("weight", 0.0)) < kinds.index("reject"), (
        "traffic leaves before the alias moves"
    )
    pinned = World(candidate_errors_per_tick=0, pinned_after=3)
    assert RolloutController(POLICY, "1", "2", pinned.effects()).run().outcome == "pinned"
    assert ("promote",) not in pinned.actions, "a pin in config wins over automation"


def latency(ok: float) -> dict[float, float]:
    return {0.01: ok, float("inf"): ok}


def regression_stats(values, errors: float = 0) -> VersionStats:
    import numpy as np

    values = np.asarray(values, dtype=float)
    moments = {
        "n": float(len(values)),
        "sum_pos": float(values[values > 0].sum()),
        "sum_neg": float(-values[values < 0].sum()),
        "sum_sq": float((values**2).sum()),
    }
    return VersionStats(
        ok=len(values), errors=errors, latency_buckets=latency(len(values)), value_moments=moments
    )


def classifier_stats(counts: dict[str, float]) -> VersionStats:
    total = sum(counts.values())
    return VersionStats(ok=total, latency_buckets=latency(total), class_counts=counts)


def test_a_regression_candidate_is_judged_on_its_mean_value_in_champion_standard_deviations() -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    # Given a champion predicting around 150 (sd 50) and candidates predicting the same, or 2 sd higher,
    champion = regression_stats(rng.normal(150, 50, 2_000))
    same = analyse_step(champion, regression_stats(rng.normal(150, 50, 400)), ANALYSIS)
    shifted = analyse_step(champion, regression_stats(rng.normal(250, 50, 400)), ANALYSIS)
    # then the first passes and the second breaches, the reason naming what was measured.
    assert same.status == "pass", same
    assert same.numbers["prediction_divergence_low"] < 0.5, same.numbers
    assert (
        shifted.status == "breach" and "mean value (in champion standard deviations)" in shifted.reasons[0]
    ), shifted
    assert shifted.numbers["prediction_divergence"] > 1.5, shifted.numbers


def test_a_multiclass_candidate_is_judged_on_its_predicted_class_shares() -> None:
    champion = classifier_stats({"a": 600, "b": 300, "c": 100})
    similar = analyse_step(champion, classifier_stats({"a": 118, "b": 62, "c": 20}), ANALYSIS)
    different = analyse_step(champion, classifier_stats({"a": 40, "b": 60, "c": 100}), ANALYSIS)
    assert similar.status == "pass", similar
    assert different.status == "breach" and "predicted-class shares" in different.reasons[0], different
    assert different.numbers["prediction_divergence_low"] > 0.1, different.numbers


def test_moments_and_class_counts_are_read_back_from_prometheus_text() -> None:
    text = "\n".join(
        [
            "# TYPE ray_lockgate_prediction_moments_total counter",
            'ray_lockgate_prediction_moments_total{version="3",role="candidate",mode="weighted",moment="n"} 4',
            'ray_lockgate_prediction_moments_total{version="3",role="candidate",mode="weighted",moment="sum_pos"} 10',
            'ray_lockgate_prediction_moments_total{version="3",role="candidate",mode="weighted",moment="sum_neg"} 2',
            'ray_lockgate_prediction_moments_total{version="3",role="candidate",mode="weighted",moment="sum_sq"} 40',
            "# TYPE ray_lockgate_predicted_class_total counter",
            'ray_lockgate_predicted_class_total{version="2",role="champion",mode="weighted",class="a"} 5',
            'ray_lockgate_predicted_class_total{version="2",role="champion",mode="weighted",class="b"} 7',
        ]
    )
    parsed = parse_version_stats(text + "\n")
    candidate, champion = parsed[("3", "candidate")], parsed[("2", "champion")]
    assert candidate.value_count == 4 and candidate.value_mean == 2.0, candidate.value_moments
    assert candidate.value_variance == (40 / 4 - 4) * 4 / 3, "the sample variance from exact moments"
    assert champion.class_counts == {"a": 5, "b": 7}, champion.class_counts


class FlakyWorld(World):
    """A world whose metrics endpoint or Serve fails: ``scrape_failures`` ticks in a row, or for good."""

    def __init__(
        self, scrape_fails_at: int | None = None, scrape_failures: int = 0, weight_fails: bool = False
    ):
        super().__init__(candidate_errors_per_tick=0)
        self.scrapes, self.fails_at, self.failures, self.weight_fails = (
            0,
            scrape_fails_at,
            scrape_failures,
            weight_fails,
        )

    def effects(self) -> RolloutEffects:
        effects = super().effects()
        scrape, apply_weight = effects.scrape, effects.apply_weight

        def flaky_scrape():
            self.scrapes += 1
            if self.fails_at is not None and self.fails_at <= self.scrapes < self.fails_at + self.failures:
                raise ConnectionError("Prometheus is not answering")
            return scrape()

        def flaky_weight(weight: float) -> None:
            if self.weight_fails and weight > 0:
                raise RuntimeError("Serve refused the config")
            apply_weight(weight)

        effects.scrape, effects.apply_weight = flaky_scrape, flaky_weight
        return effects


def test_a_scrape_failing_for_a_moment_is_retried_and_the_rollout_goes_on() -> None:
    # Given metrics that fail twice in a row mid-step (fewer than the retries),
    world = FlakyWorld(scrape_fails_at=3, scrape_failures=2)
    # when the rollout runs, then it promotes as if nothing happened.
    result = RolloutController(POLICY, "1", "2", world.effects()).run()
    assert result.outcome == "promoted", result


def test_metrics_gone_for_good_end_in_one_rollback_at_weight_zero_never_stuck() -> None:
    # Given metrics that stop answering for good in the first step,
    world = FlakyWorld(scrape_fails_at=3, scrape_failures=10_000)
    # when the rollout runs,
    result = RolloutController(POLICY, "1", "2", world.effects()).run()
    # then the candidate ends at weight 0, tagged rejected, with exactly one rollback event saying why.
    assert result.outcome == "rolled_back" and "metrics were unreadable" in result.reason, result
    assert "max_metrics_outage_s is 60s" in result.reason, f"the reason names the bound: {result.reason}"
    assert world.weight == 0.0, f"the candidate is left at {world.weight}%"
    assert [a for a in world.actions if a[0] == "event" and a[1] == "rollback"] == [("event", "rollback")]
    assert any(a[0] == "reject" for a in world.actions) and ("promote",) not in world.actions, world.actions


def test_a_rollback_mid_step_names_the_weight_the_candidate_had() -> None:
    # Given metrics that stop answering for good while the first step (10%) holds,
    world = FlakyWorld(scrape_fails_at=3, scrape_failures=10_000)
    effects = world.effects()
    details: list[dict] = []
    effects.emit = lambda kind, message, detail: details.append({"kind": kind, "message": message, **detail})
    # when the rollout runs,
    RolloutController(POLICY, "1", "2", effects).run()
    # then its rollback event says it was rolled back at 10%, where it was, not at 0%.
    rollback = [d for d in details if d["kind"] == "rollback"]
    assert len(rollback) == 1 and rollback[0]["weight"] == 10, rollback
    assert "rolled back at 10%" in rollback[0]["message"], rollback[0]["message"]


def test_serve_refusing_a_weight_rolls_back_instead_of_leaving_the_last_weight() -> None:
    world = FlakyWorld(weight_fails=True)
    result = RolloutController(POLICY, "1", "2", world.effects()).run()
    assert result.outcome == "rolled_back" and "Serve refused the config" in result.reason, result
    assert world.weight == 0.0 and ("event", "rollback") in world.actions, world.actions


class TimedWorld:
    """Traffic at a steady rate per second of (fake) time; the metrics endpoint down in a window of time.

    ``errors_while_down`` is the candidate's error share while nobody can see it; ``reset_counters`` makes
    the router's counters restart from zero when the metrics come back (a restarted exposition).
    """

    RATE = 40.0  # requests per second

    def __init__(
        self,
        down_from: float = math.inf,
        down_for: float = 0.0,
        errors_while_down: float = 0.0,
        reset_counters: bool = False,
    ):
        self.time, self.weight = 0.0, 0.0
        # Cumulative counts, as the router's counters: champion ok, candidate ok, candidate errors.
        self.champion_ok, self.candidate_ok, self.candidate_errors = 0.0, 0.0, 0.0
        self.down = (down_from, down_from + down_for)
        self.errors_while_down, self.reset_counters = errors_while_down, reset_counters
        self.actions: list[tuple] = []  # (time, what, ...)
        self.progress: list[StepProgress] = []
        self.scrapes_while_down = 0

    def is_down(self) -> bool:
        return self.down[0] <= self.time < self.down[1]

    def sleep(self, seconds: float) -> None:
        # Traffic in one-second slices, so an outage starting mid-sleep gets its share of errors.
        remaining = seconds
        while remaining > 1e-9:
            dt = min(1.0, remaining)
            share, down = self.weight / 100, self.is_down()
            candidate = share * self.RATE * dt
            errors = candidate * self.errors_while_down if down else 0.0
            self.champion_ok += (1 - share) * self.RATE * dt
            self.candidate_ok += candidate - errors
            self.candidate_errors += errors
            self.time += dt
            remaining -= dt

    def scrape(self) -> dict[tuple[str, str], VersionStats]:
        if self.is_down():
            self.scrapes_while_down += 1
            raise ConnectionError("the metrics endpoint is not answering")
        if self.reset_counters and self.time >= self.down[1]:
            self.champion_ok = self.candidate_ok = self.candidate_errors = 0.0
            self.reset_counters = False
        # Both versions answer alike: fast, predictions spread around 0.3.
        candidate = spread(self.candidate_ok, mean=0.3)
        candidate.errors = self.candidate_errors
        return {("1", "champion"): spread(self.champion_ok, mean=0.3), ("2", "candidate"): candidate}

    def effects(self) -> RolloutEffects:
        def apply_weight(weight: float) -> None:
            self.weight = weight
            self.actions.append((self.time, "weight", weight))

        return RolloutEffects(
            apply_weight=apply_weight,
            scrape=self.scrape,
            promote=lambda: self.actions.append((self.time, "promote")),
            reject=lambda reason: self.actions.append((self.time, "reject", reason)),
            emit=lambda kind, message, details: self.actions.append((self.time, "event", kind)),
            is_pinned=lambda: False,
            clock=lambda: self.time,
            sleep=self.sleep,
            progress=self.progress.append,
        )

    def events(self) -> list[str]:
        return [a[2] for a in self.actions if a[1] == "event"]


OUTAGE_POLICY = RolloutPolicy(
    steps=(10, 50, 100),
    interval_s=10,
    max_step_wait_s=60,
    analysis=AnalysisSpec(min_requests=10, max_prediction_divergence=1.0, max_metrics_outage_s=30),
)


def test_a_15s_metrics_outage_holds_the_step_and_the_good_candidate_is_promoted() -> None:
    # Given a healthy candidate whose metrics endpoint goes away for 15 s, 4 s into the first step (10%),
    world = TimedWorld(down_from=4, down_for=15)
    # when the rollout runs,
    result = RolloutController(OUTAGE_POLICY, "1", "2", world.effects()).run()
    # then it is promoted, each step once, with no weight change and no event while the metrics were gone,
    assert result.outcome == "promoted" and [s["weight"] for s in result.steps] == [10, 50, 100], result
    assert world.events() == ["rollout_step"] * 3 + ["promotion"], world.actions
    during = [a for a in world.actions if 4 <= a[0] < 19]
    assert during == [], f"nothing may move while the analysis is impossible: {during}"
    assert world.scrapes_while_down >= 4, (
        f"the scrape is retried through the outage: {world.scrapes_while_down}"
    )
    # and the first step's clock stopped: it held its 10 s of observed time after the 15 s gap, not before.
    second_step = next(a[0] for a in world.actions if a[1:] == ("weight", 50))
    assert second_step >= 4 + 15 + (10 - 4), (
        f"the step must hold 10 s with metrics, moved on at {second_step}s"
    )
    outage = [p for p in world.progress if p.status == "outage"]
    assert outage and all(p.weight == 10 and p.step == 1 for p in outage), "the holding step says why"


def test_metrics_gone_longer_than_the_bound_end_in_exactly_one_rollback_at_weight_zero() -> None:
    # Given metrics that go away 4 s into the first step and stay away for longer than the 30 s bound,
    world = TimedWorld(down_from=4, down_for=1_000)
    # when the rollout runs,
    result = RolloutController(OUTAGE_POLICY, "1", "2", world.effects()).run()
    # then it rolls back once the step has gone 30 s unobserved (not after 3 quick retries, not never),
    assert result.outcome == "rolled_back" and "unreadable for 30s" in result.reason, result
    ended = next(a[0] for a in world.actions if a[1:] == ("weight", 0.0))
    assert 4 + 30 <= ended <= 4 + 30 + 1, f"rolled back {ended - 4:.1f}s into the outage, bound 30 s"
    # with exactly one ending event, the candidate at weight 0, rejected, never promoted.
    assert world.events() == ["rollout_step", "rollback"], world.actions
    assert world.weight == 0.0 and [a[1] for a in world.actions].count("reject") == 1, world.actions
    assert "promote" not in [a[1] for a in world.actions], world.actions


def test_a_flapping_metrics_endpoint_is_bounded_by_the_steps_total_unobserved_time() -> None:
    # Given metrics down 20 s, back 3 s, down 20 s again in the first step (each outage under the 30 s bound),
    class Flapping(TimedWorld):
        def is_down(self) -> bool:
            return 4 <= self.time < 24 or 27 <= self.time < 47

    world = Flapping()
    result = RolloutController(OUTAGE_POLICY, "1", "2", world.effects()).run()
    # then the step's 30 s of unobserved time in total ends it: a flapping endpoint cannot hold it forever.
    assert result.outcome == "rolled_back" and "30s unobserved in this step" in result.reason, result
    assert world.events() == ["rollout_step", "rollback"], world.actions


def test_errors_served_while_nobody_could_see_them_are_judged_after_recovery() -> None:
    # Given a candidate failing half its requests only while its metrics are gone (15 s),
    world = TimedWorld(down_from=4, down_for=15, errors_while_down=0.5)
    # when the rollout runs, then the first look after recovery counts them and rolls the candidate back.
    result = RolloutController(OUTAGE_POLICY, "1", "2", world.effects()).run()
    assert result.outcome == "rolled_back" and "error rate" in result.reason, result
    rolled_back_at = next(a[0] for a in world.actions if a[1:] == ("weight", 0.0))
    assert rolled_back_at <= 19 + 2, f"judged at the first looks after recovery, at {rolled_back_at}s"


def test_after_recovery_the_next_step_judges_only_its_own_traffic() -> None:
    # Given a 15 s outage in the first step (10%) of a healthy rollout at 40 requests/s,
    world = TimedWorld(down_from=4, down_for=15)
    result = RolloutController(OUTAGE_POLICY, "1", "2", world.effects()).run()
    # then the second step (50%) counts only what was served at 50%: about 20 requests/s over its 10 s hold.
    second = result.steps[1]
    assert 150 <= second["candidate_requests"] <= 260, second
    assert second["candidate_error_rate"] == 0.0, second


def test_counters_that_restart_during_an_outage_restart_the_step_instead_of_going_negative() -> None:
    # Given metrics that come back after 15 s with the router's counters restarted from zero,
    world = TimedWorld(down_from=4, down_for=15, reset_counters=True)
    result = RolloutController(OUTAGE_POLICY, "1", "2", world.effects()).run()
    # then the step judges what was counted since, never a negative count, and the candidate is promoted.
    assert result.outcome == "promoted", result
    assert result.steps[0]["candidate_requests"] > 0, result.steps[0]
    assert all(p.verdict.numbers.get("candidate_requests", 0) >= 0 for p in world.progress), "no negatives"


def test_the_progress_callback_gets_each_steps_live_numbers_throttled() -> None:
    # Given a healthy rollout of 10 s steps, when it runs with a progress sink,
    world = TimedWorld()
    RolloutController(OUTAGE_POLICY, "1", "2", world.effects()).run()
    progress = world.progress
    # then every step reports its numbers: requests, error rates, p99s and the divergence,
    assert sorted({p.step for p in progress}) == [1, 2, 3], [p.step for p in progress]
    last = progress[-1]
    for number in ("candidate_requests", "champion_requests", "candidate_error_rate", "candidate_p99_s"):
        assert number in last.verdict.numbers, f"{number} missing from {last.verdict.numbers}"
    assert last.candidate_version == "2" and last.champion_version == "1" and last.weight == 100
    assert last.status == "pass" and last.elapsed_s >= 10, last
    # not at every 1 s poll: within a step and a status, reports are at least 5 s apart, except each step's
    # last (its final numbers are always shown).
    for step in (1, 2, 3):
        reports = [p for p in progress if p.step == step]
        assert reports[-1].elapsed_s >= 10, f"step {step} ends with its final numbers: {reports[-1]}"
        for earlier, later in zip(reports, reports[1:-1], strict=False):
            if earlier.status == later.status:
                assert later.elapsed_s - earlier.elapsed_s >= 5 - 1e-9, (earlier, later)
    assert len(progress) <= 3 * 4, f"throttled: {len(progress)} reports for three 10 s steps"


def test_a_failing_progress_display_does_not_decide_the_rollout() -> None:
    world = TimedWorld()
    effects = world.effects()

    def broken(progress: StepProgress) -> None:
        raise BrokenPipeError("the terminal went away")

    effects.progress = broken
    assert RolloutController(OUTAGE_POLICY, "1", "2", effects).run().outcome == "promoted"


def test_the_throttle_reports_the_first_look_every_interval_and_each_change_of_status() -> None:
    throttle = ProgressThrottle(every_s=5)
    looks = [(0, "wait"), (1, "wait"), (4.9, "wait"), (5, "wait"), (6, "pass"), (7, "pass"), (8, "wait")]
    due = [t for t, status in looks if throttle.due(t, (1, status))]
    assert due == [0, 5, 6, 8], f"first look, after 5 s, and on each change of status: got {due}"
    assert throttle.due(8.5, (2, "wait")), "a new step reports at once"


def progress_of(status: str, **numbers: float) -> StepProgress:
    base = {
        "candidate_requests": 41.0,
        "champion_requests": 380.0,
        "candidate_error_rate": 0.0,
        "champion_error_rate": 0.0026,
        "candidate_p99_s": 0.012,
        "champion_p99_s": 0.0105,
        "prediction_divergence": 0.031,
        "prediction_divergence_low": 0.0,
        "prediction_divergence_high": 0.08,
        "prediction_divergence_bound": 0.1,
    }
    verdict = StepVerdict(
        "wait" if status == "outage" else status,
        ("error rate 9.00% vs champion 0.26%",) if status == "breach" else (),
        base | numbers,
    )
    return StepProgress(
        step=1,
        steps=3,
        weight=10,
        champion_version="1",
        candidate_version="2",
        elapsed_s=12.4,
        hold_s=20,
        max_wait_s=300,
        min_requests=100,
        verdict=verdict,
        metrics_down=status == "outage",
        metrics_outage_s=7 if status == "outage" else 0,
        unobserved_s=7 if status == "outage" else 0,
        max_outage_s=60,
    )


def test_a_progress_line_shows_step_clock_requests_errors_p99_and_divergence_with_its_interval() -> None:
    line = describe_progress(progress_of("wait"))
    expected = [
        "step 1/3 at 10%: 12s of 20s hold (at most 300s)",
        "requests v2 41, v1 380",
        "errors 0.00% vs 0.26%",
        "p99 12ms vs 10ms",
        "divergence 0.031 [0.000, 0.080] bound 0.1",
        "waiting: 41 of 100 v2 requests",
    ]
    assert line == " | ".join(expected), line
    assert describe_progress(progress_of("pass")).endswith("| within bounds so far"), "12 s of a 20 s hold"
    done = replace(progress_of("pass"), elapsed_s=20.0)
    assert describe_progress(done).endswith("| within bounds"), describe_progress(done)
    assert describe_progress(progress_of("breach")).endswith("| BREACH: error rate 9.00% vs champion 0.26%")
    outage = describe_progress(progress_of("outage"))
    assert outage.endswith("| HOLDING: metrics unreadable for 7s (7s of 60s allowed this step)"), outage


def test_numbers_not_measurable_yet_show_as_dashes_and_json_nulls() -> None:
    # Given a first look with no candidate requests yet (p99 and divergence are NaN),
    nan = math.nan
    progress = progress_of("wait", candidate_requests=0.0, candidate_p99_s=nan, prediction_divergence=nan)
    # then the line shows a dash and leaves the divergence out, and the JSON record has null, not NaN.
    line = describe_progress(progress)
    assert "p99 - vs 10ms" in line and "divergence" not in line, line
    record = progress.to_dict()
    assert record["candidate_p99_s"] is None and record["status"] == "wait", record
    assert record["step"] == 1 and record["candidate_requests"] == 0.0, record


class DeadHeadWorld(World):
    """A world whose registry writes (the alias writer, on a Ray head that died) fail until ``reject_back_at``.

    ``weight_back_at`` does the same for setting a weight to 0 (Serve down with the head). Every sleep the
    controller asks for is recorded, to check its backoff.
    """

    def __init__(
        self,
        candidate_errors_per_tick: float = 10,
        reject_back_at: float = 0.0,
        weight_back_at: float = 0.0,
    ):
        super().__init__(candidate_errors_per_tick)
        self.reject_back_at, self.weight_back_at = reject_back_at, weight_back_at
        self.sleeps: list[float] = []
        self.reject_attempts = 0

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        super().sleep(seconds)

    def effects(self) -> RolloutEffects:
        effects = super().effects()
        reject, apply_weight = effects.reject, effects.apply_weight

        def failing_reject(reason: str) -> None:
            self.reject_attempts += 1
            if self.time < self.reject_back_at:
                raise ConnectionError("Ray's GCS at 127.0.0.1:28390 is not answering")
            reject(reason)

        def failing_weight(weight: float) -> None:
            if weight == 0 and self.time < self.weight_back_at:
                raise ConnectionError("the dashboard at 127.0.0.1:28275 is not answering")
            apply_weight(weight)

        effects.reject, effects.apply_weight = failing_reject, failing_weight
        return effects

    def rollbacks(self) -> list[tuple]:
        return [a for a in self.actions if a == ("event", "rollback")]


CLEANUP_POLICY = POLICY.model_copy(
    update={"analysis": POLICY.analysis.model_copy(update={"cleanup_timeout_s": 120.0})}
)


def test_a_rejection_failing_while_the_head_restarts_is_retried_until_it_lands_then_rolled_back() -> None:
    # Given a candidate that breaches, and a registry that refuses every write for the next 25 s (a Ray head
    # killed and coming back: 13-25 s on these machines),
    world = DeadHeadWorld(candidate_errors_per_tick=10)
    effects = world.effects()
    controller = RolloutController(CLEANUP_POLICY, "1", "2", effects)
    original_apply = effects.apply_weight

    def weight_then_head_dies(weight: float) -> None:
        original_apply(weight)
        if weight == 0:
            world.reject_back_at = world.time + 25
            world.head_died_at = world.time

    effects.apply_weight = weight_then_head_dies
    # when the rollout runs,
    result = controller.run()
    # then it ends rolled back (no error), the rejection landed after the head came back, weight 0 first,
    assert result.outcome == "rolled_back" and "pending" not in result.reason, result
    assert ("reject", result.reason) in world.actions, f"the candidate is tagged rejected: {world.actions}"
    kinds = [a[0] for a in world.actions]
    assert world.actions.index(("weight", 0.0)) < kinds.index("reject"), "weight 0 comes before the aliases"
    assert world.time >= world.head_died_at + 25, f"it gave up at {world.time}s, before the head was back"
    # with exactly one rollback event, after the retries, whose backoff never exceeds 10 s.
    assert world.rollbacks() == [("event", "rollback")], world.actions
    assert world.reject_attempts >= 4, f"retried with backoff, {world.reject_attempts} attempts"
    assert max(world.sleeps) <= 10.0, f"the backoff is capped at 10 s: {max(world.sleeps)}"


def test_a_rejection_failing_beyond_the_budget_ends_rolled_back_with_the_cleanup_pending() -> None:
    # Given metrics that stop answering for good and a registry that never comes back,
    world = DeadHeadWorld(candidate_errors_per_tick=0, reject_back_at=math.inf)
    effects = world.effects()
    scrape = effects.scrape
    effects.scrape = lambda: (_ for _ in ()).throw(ConnectionError("gone")) if world.ticks > 3 else scrape()
    details: list[tuple[str, dict]] = []
    emit = effects.emit
    effects.emit = lambda kind, message, detail: (
        details.append((message, detail)),
        emit(kind, message, detail),
    )
    # when the rollout runs,
    started = world.time
    result = RolloutController(CLEANUP_POLICY, "1", "2", effects).run()
    # then it does not raise: it ends rolled back at weight 0, its reason saying the alias cleanup is pending,
    assert result.outcome == "rolled_back", result
    assert "alias and tag cleanup is pending" in result.reason, result.reason
    assert "analysis.cleanup_timeout_s" in result.reason, f"the reason names the budget: {result.reason}"
    assert world.weight == 0.0 and not [a for a in world.actions if a[0] == "reject"], world.actions
    # with exactly one rollback event that says so too, after a bounded wait (outage bound + cleanup budget).
    assert world.rollbacks() == [("event", "rollback")], world.actions
    message, detail = details[-1]
    assert detail["cleanup_pending"] and "pending" in message, (message, detail)
    cleanup_s = world.time - started - 60  # the metrics outage bound (60 s) came first
    assert 120 <= cleanup_s <= 120 + 10 + 5, f"the cleanup retried for {cleanup_s:.0f}s, budget 120 s"


def test_a_weight_that_cannot_go_to_zero_within_the_budget_is_an_error_after_one_rollback_event() -> None:
    # Given a breaching candidate and a Serve that refuses weight 0 for longer than the cleanup budget,
    world = DeadHeadWorld(candidate_errors_per_tick=10, weight_back_at=math.inf)
    # when the rollout runs, then it raises (traffic may still reach the candidate: nobody may be told
    # otherwise), after one rollback event, and it never touched the aliases before weight 0 held.
    with pytest.raises(EffectFailed, match="setting the candidate's weight to 0 failed"):
        RolloutController(CLEANUP_POLICY, "1", "2", world.effects()).run()
    assert world.rollbacks() == [("event", "rollback")], world.actions
    assert world.reject_attempts == 0, f"no alias work before weight 0 is written: {world.reject_attempts}"
