"""Rollout analysis core and the controller loop, with injected effects (no cluster needed)."""

from __future__ import annotations

from serving.metrics import VersionStats, parse_version_stats
from serving.rollout import RolloutController, RolloutEffects, analyse_step
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
    assert (
        result.outcome == "rolled_back" and "reading the router's metrics failed 3 times" in result.reason
    ), result
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
