"""Gate stage: absolute thresholds and no-regression against the champion, each with a mode.

The regression gate is a paired non-inferiority test: both models score the same held-out rows, the
same bootstrap resamples give a confidence interval of (candidate - champion), oriented so that
positive means "candidate better", and the candidate passes when the interval's lower bound is
above ``-tolerance``. A model as good as the champion passes despite noise; a model whose whole
interval sits below the tolerance is blocked.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from contracts.vocabulary import LOWER_IS_BETTER
from pipeline.config import GateMode, RegressionGateConfig, ThresholdGateConfig
from pipeline.evaluate import METRICS, OVERALL


@dataclass(frozen=True)
class Check:
    """One comparison a gate made."""

    scope: str
    metric: str
    value: float
    bound: str
    passed: bool


@dataclass(frozen=True)
class GateDecision:
    """The outcome of one gate: what it checked, whether it passed, and whether that blocks."""

    gate: str
    mode: GateMode
    passed: bool
    reason: str
    checks: tuple[Check, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def blocks(self) -> bool:
        """Only an enforced gate that failed stops the candidate."""
        return self.mode == GateMode.enforced and not self.passed

    @property
    def status(self) -> str:
        """One word for tags and summaries: passed / blocked / would_block / disabled / skipped."""
        if self.mode == GateMode.disabled:
            return "disabled"
        if self.details.get("skipped"):
            return "skipped"
        if self.passed:
            return "passed"
        return "blocked" if self.mode == GateMode.enforced else "would_block"

    def to_dict(self) -> dict[str, Any]:
        """Plain data for artefacts and events."""
        data = asdict(self)
        data["mode"] = self.mode.value
        data["status"] = self.status
        data["checks"] = [asdict(c) for c in self.checks]
        return data


def evaluate_thresholds(evaluation: dict[str, dict[str, float]], config: ThresholdGateConfig) -> GateDecision:
    """Check every rule overall, or on every slice of its columns that has enough rows."""
    if config.mode == GateMode.disabled:
        return GateDecision("thresholds", config.mode, True, "gate disabled")
    checks: list[Check] = []
    for rule in config.rules:
        scopes = (
            [OVERALL]
            if not rule.slices
            else [
                scope
                for scope in evaluation
                if scope.split("=", 1)[0] in rule.slices and evaluation[scope]["rows"] >= rule.min_slice_rows
            ]
        )
        for scope in scopes:
            value = evaluation[scope][rule.metric]
            ok = not math.isnan(value)
            bounds = []
            if rule.min is not None:
                ok = ok and value >= rule.min
                bounds.append(f">= {rule.min:g}")
            if rule.max is not None:
                ok = ok and value <= rule.max
                bounds.append(f"<= {rule.max:g}")
            checks.append(Check(scope, rule.metric, value, " and ".join(bounds), ok))
    failed = [c for c in checks if not c.passed]
    reason = (
        f"all {len(checks)} threshold check(s) passed"
        if not failed
        else "; ".join(f"{c.scope} {c.metric}={c.value:.4f} not {c.bound}" for c in failed)
    )
    return GateDecision("thresholds", config.mode, not failed, reason, tuple(checks))


def paired_bootstrap(
    y: np.ndarray,
    candidate: np.ndarray,
    champion: np.ndarray,
    metric: str,
    samples: int,
    confidence: float,
    seed: int,
) -> dict[str, float]:
    """Point difference and percentile interval of (candidate - champion), oriented so higher is better."""
    fn = METRICS[metric]
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    rng = np.random.default_rng(seed)
    n = len(y)
    deltas = np.empty(samples)
    for i in range(samples):
        index = rng.integers(0, n, n)
        deltas[i] = sign * (fn(y[index], candidate[index]) - fn(y[index], champion[index]))
    deltas = deltas[~np.isnan(deltas)]
    alpha = (1 - confidence) / 2
    return {
        "candidate": fn(y, candidate),
        "champion": fn(y, champion),
        "delta": sign * (fn(y, candidate) - fn(y, champion)),
        "ci_low": float(np.quantile(deltas, alpha)),
        "ci_high": float(np.quantile(deltas, 1 - alpha)),
        "resamples": float(len(deltas)),
    }


def evaluate_regression(
    y: np.ndarray,
    candidate: np.ndarray,
    champion: np.ndarray | None,
    champion_version: str | None,
    config: RegressionGateConfig,
) -> GateDecision:
    """Non-inferiority of the candidate against the champion on the same rows."""
    if config.mode == GateMode.disabled:
        return GateDecision("regression", config.mode, True, "gate disabled")
    if champion is None:
        return GateDecision(
            "regression",
            config.mode,
            True,
            "no champion yet: nothing to regress against",
            details={"skipped": True},
        )
    stats = paired_bootstrap(
        y, candidate, champion, config.metric, config.bootstrap_samples, config.confidence, config.seed
    )
    passed = stats["ci_low"] >= -config.tolerance
    level = f"{config.confidence:.0%}"
    reason = (
        f"{config.metric}: candidate {stats['candidate']:.4f} vs champion v{champion_version} "
        f"{stats['champion']:.4f}, improvement {stats['delta']:+.4f} ({level} CI [{stats['ci_low']:+.4f}, "
        f"{stats['ci_high']:+.4f}]) {'within' if passed else 'exceeds'} tolerance {config.tolerance:g}"
    )
    check = Check(OVERALL, config.metric, stats["delta"], f"CI low >= {-config.tolerance:g}", passed)
    details = {
        **stats,
        "champion_version": champion_version,
        "tolerance": config.tolerance,
        "confidence": config.confidence,
    }
    return GateDecision("regression", config.mode, passed, reason, (check,), details)
