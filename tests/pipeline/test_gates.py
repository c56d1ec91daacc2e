"""Gate stage core: thresholds overall and per slice, modes, and the paired bootstrap regression gate."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from contracts.vocabulary import Task
from pipeline.config import GateMode, RegressionGateConfig, ThresholdGateConfig, ThresholdRule
from pipeline.evaluate import evaluate_predictions
from pipeline.gates import evaluate_regression, evaluate_thresholds, paired_bootstrap
from pipeline.tasks import Predictions

RNG = np.random.default_rng(11)
N = 4_000
Y = (RNG.random(N) < 0.25).astype(float)
SIGNAL = Y - 0.25


def scores(strength: float, seed: int) -> np.ndarray:
    """Model scores whose quality grows with ``strength``."""
    noise = np.random.default_rng(seed).normal(0, 1, N)
    return 1 / (1 + np.exp(-(strength * SIGNAL * 4 + noise)))


def test_threshold_rules_overall_and_per_slice() -> None:
    frame = pd.DataFrame({"y": Y, "region": np.where(np.arange(N) % 2 == 0, "a", "b")})
    p = scores(1.0, 1)
    p_bad_b = np.where(frame["region"] == "b", 0.5, p)
    rules = (ThresholdRule(metric="auc", min=0.6), ThresholdRule(metric="auc", min=0.6, slices=("region",)))
    good = evaluate_thresholds(
        evaluate_predictions(frame, "y", p, ("region",)), ThresholdGateConfig(rules=rules)
    )
    assert good.passed and len(good.checks) == 3, good.reason
    bad = evaluate_thresholds(
        evaluate_predictions(frame, "y", p_bad_b, ("region",)), ThresholdGateConfig(rules=rules)
    )
    assert not bad.passed and bad.blocks, bad.reason
    assert [c.scope for c in bad.checks if not c.passed] == ["region=b"], bad.checks
    assert "region=b auc=0.5000 not >= 0.6" in bad.reason


def test_modes_decide_whether_a_failure_blocks() -> None:
    evaluation = {"overall": {"auc": 0.55, "rows": 100.0}}
    rules = (ThresholdRule(metric="auc", min=0.7),)
    enforced = evaluate_thresholds(evaluation, ThresholdGateConfig(mode=GateMode.enforced, rules=rules))
    dry = evaluate_thresholds(evaluation, ThresholdGateConfig(mode=GateMode.dry_run, rules=rules))
    off = evaluate_thresholds(evaluation, ThresholdGateConfig(mode=GateMode.disabled, rules=rules))
    assert enforced.blocks and enforced.status == "blocked"
    assert not dry.blocks and dry.status == "would_block" and not dry.passed, "dry-run records, never blocks"
    assert not off.blocks and off.status == "disabled" and not off.checks


def test_equal_models_pass_despite_noise() -> None:
    config = RegressionGateConfig(tolerance=0.01, bootstrap_samples=500)
    champion, candidate = scores(1.0, 1), scores(1.0, 2)
    decision = evaluate_regression(Y, candidate, champion, "1", config)
    assert decision.passed, decision.reason
    assert decision.details["ci_low"] < decision.details["delta"] < decision.details["ci_high"]


def test_real_regression_is_blocked() -> None:
    config = RegressionGateConfig(tolerance=0.01, bootstrap_samples=500)
    decision = evaluate_regression(Y, scores(0.5, 2), scores(1.0, 1), "4", config)
    assert decision.blocks, decision.reason
    assert decision.details["ci_high"] < -0.01, "the whole interval sits below the tolerance"
    assert "champion v4" in decision.reason


def test_no_champion_skips_and_lower_is_better_is_oriented() -> None:
    skipped = evaluate_regression(Y, scores(1.0, 1), None, None, RegressionGateConfig())
    assert skipped.passed and skipped.status == "skipped"
    better, worse = scores(1.0, 1), scores(0.3, 2)
    stats = paired_bootstrap(Y, better, worse, "log_loss", 200, 0.9, 0)
    assert stats["delta"] > 0 and stats["ci_low"] > 0, "lower log loss counts as an improvement"


def test_bootstrap_is_reproducible() -> None:
    a = paired_bootstrap(Y, scores(1.0, 1), scores(1.0, 2), "auc", 300, 0.95, 5)
    b = paired_bootstrap(Y, scores(1.0, 1), scores(1.0, 2), "auc", 300, 0.95, 5)
    assert a == b
    with pytest.raises(ValueError, match="has no metric 'nonsense'; its metrics are: auc"):
        paired_bootstrap(Y, Y, Y, "nonsense", 10, 0.9, 0)


def test_a_candidate_better_overall_but_worse_on_one_slice_is_blocked() -> None:
    # Given a candidate that beats the champion in region a and is worse in region b,
    region = np.where(np.arange(N) % 2 == 0, "a", "b")
    masks = {"region=a": region == "a", "region=b": region == "b"}
    champion = scores(1.0, 1)
    candidate = np.where(region == "a", scores(6.0, 2), scores(0.7, 3))
    config = RegressionGateConfig(
        tolerance=0.01, bootstrap_samples=300, slices=("region",), min_slice_rows=500
    )
    # when the regression gate judges overall and per slice,
    decision = evaluate_regression(Y, candidate, champion, "1", config, slice_masks=masks)
    # then it blocks, naming the slice that regressed, while the overall check passes.
    by_scope = {check.scope: check.passed for check in decision.checks}
    assert by_scope == {"overall": True, "region=a": True, "region=b": False}, f"checks: {by_scope}"
    assert decision.blocks and "region=b" in decision.reason, decision.reason
    assert set(decision.details["slices"]) == {"region=a", "region=b"}, "each slice's interval is recorded"


def test_slices_with_too_few_rows_are_not_judged() -> None:
    region = np.where(np.arange(N) < 100, "small", "big")
    masks = {"region=small": region == "small", "region=big": region == "big"}
    config = RegressionGateConfig(bootstrap_samples=200, slices=("region",), min_slice_rows=500)
    decision = evaluate_regression(Y, scores(1.0, 1), scores(1.0, 2), "1", config, slice_masks=masks)
    assert [c.scope for c in decision.checks] == ["overall", "region=big"], (
        "a 100-row slice is too small to judge"
    )


@pytest.mark.parametrize(
    ("task", "metric"),
    [
        (Task.regression, "rmse"),
        (Task.regression, "r2"),
        (Task.multiclass, "macro_f1"),
        (Task.multiclass, "accuracy"),
    ],
)
def test_the_regression_gate_works_for_every_task(task: Task, metric: str) -> None:
    # Given labels of the task and a good champion,
    rng = np.random.default_rng(3)
    if task == Task.regression:
        y = rng.normal(0, 1, N)
        good, bad = y + rng.normal(0, 0.3, N), y + rng.normal(0, 1.0, N)
        champion, same, worse = (Predictions(task, v) for v in (good, y + rng.normal(0, 0.3, N), bad))
    else:
        y = rng.integers(0, 3, N)

        def guesses(accuracy: float, seed: int) -> Predictions:
            flip = np.random.default_rng(seed).random(N) > accuracy
            return Predictions(task, np.where(flip, (y + 1) % 3, y))

        champion, same, worse = guesses(0.8, 1), guesses(0.8, 2), guesses(0.6, 3)
    config = RegressionGateConfig(metric=metric, tolerance=0.04, bootstrap_samples=300)
    # when an equally good and a clearly worse candidate are judged,
    equal = evaluate_regression(y, same, champion, "1", config, task)
    regressed = evaluate_regression(y, worse, champion, "1", config, task)
    # then the first passes and the second is blocked, on the task's own metric.
    assert equal.passed, f"{task}/{metric}: an equally good model is blocked: {equal.reason}"
    assert regressed.blocks, f"{task}/{metric}: a worse model passes: {regressed.reason}"
    assert regressed.details["metric"] == metric, "the decision names the metric it judged"


def test_the_default_metric_is_the_tasks() -> None:
    y = np.random.default_rng(4).normal(0, 1, 500)
    model = Predictions(Task.regression, y + 0.1)
    decision = evaluate_regression(
        y, model, model, "1", RegressionGateConfig(bootstrap_samples=100), Task.regression
    )
    assert decision.details["metric"] == "rmse", (
        f"regression's default metric, got {decision.details['metric']}"
    )
