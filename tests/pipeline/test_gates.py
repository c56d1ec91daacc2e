"""Gate stage core: thresholds overall and per slice, modes, and the paired bootstrap regression gate."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.config import GateMode, RegressionGateConfig, ThresholdGateConfig, ThresholdRule
from pipeline.evaluate import evaluate_predictions
from pipeline.gates import evaluate_regression, evaluate_thresholds, paired_bootstrap

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
    with pytest.raises(KeyError):
        paired_bootstrap(Y, Y, Y, "nonsense", 10, 0.9, 0)
