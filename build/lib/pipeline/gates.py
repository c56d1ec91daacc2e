"""Gate stage: absolute thresholds and no-regression against the champion, each with a mode.

The regression gate is a paired non-inferiority test: both models score the same held-out rows, the
same bootstrap resamples give a confidence interval of (candidate - champion), oriented so that
positive means "candidate better", and the candidate passes when the interval's lower bound is
above ``-tolerance``. A model as good as the champion passes despite noise; a model whose whole
interval sits below the tolerance is blocked.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from contracts.vocabulary import DEFAULT_METRIC, Task
from pipeline import tasks
from pipeline.config import GateMode, RegressionGateConfig, ThresholdGateConfig
from pipeline.evaluate import OVERALL, as_predictions
from pipeline.tasks import Predictions


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
            value = evaluation[scope].get(rule.metric, math.nan)  # absent: the model cannot give it
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
    y: Any,
    candidate: Predictions | np.ndarray,
    champion: Predictions | np.ndarray,
    metric: str,
    samples: int,
    confidence: float,
    seed: int,
    task: Task = Task.binary,
) -> dict[str, float]:
    """Point difference and percentile interval of (candidate - champion), oriented so higher is better."""
    return tasks.paired_bootstrap(
        task,
        metric,
        np.asarray(y),
        as_predictions(task, candidate),
        as_predictions(task, champion),
        samples,
        confidence,
        seed,
    ).to_dict()


def evaluate_regression(
    y: Any,
    candidate: Predictions | np.ndarray,
    champion: Predictions | np.ndarray | None,
    champion_version: str | None,
    config: RegressionGateConfig,
    task: Task = Task.binary,
    slice_masks: Mapping[str, np.ndarray] | None = None,
) -> GateDecision:
    """Non-inferiority of the candidate against the champion on the same rows, overall and per slice.

    ``slice_masks`` (``column=value`` → row mask) holds the declared slices; those of ``config.slices`` with
    at least ``config.min_slice_rows`` rows are each judged with their own interval, and every one must pass.
    """
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
    metric = config.metric or DEFAULT_METRIC[task]
    y = np.asarray(y)
    ours, theirs = as_predictions(task, candidate), as_predictions(task, champion)
    scopes: dict[str, np.ndarray | None] = {OVERALL: None}
    scopes.update(
        (scope, mask)
        for scope, mask in (slice_masks or {}).items()
        if scope.split("=", 1)[0] in config.slices and int(mask.sum()) >= config.min_slice_rows
    )
    results = {}
    for scope, mask in scopes.items():
        if mask is None:
            results[scope] = paired_bootstrap(
                y, ours, theirs, metric, config.bootstrap_samples, config.confidence, config.seed, task
            )
        else:
            results[scope] = paired_bootstrap(
                y[mask],
                ours.subset(mask),
                theirs.subset(mask),
                metric,
                config.bootstrap_samples,
                config.confidence,
                config.seed,
                task,
            )
    bound = f"CI low >= {-config.tolerance:g}"
    checks = tuple(
        Check(scope, metric, stats["delta"], bound, stats["ci_low"] >= -config.tolerance)
        for scope, stats in results.items()
    )
    passed = all(check.passed for check in checks)
    stats = results[OVERALL]
    level = f"{config.confidence:.0%}"
    reason = (
        f"{metric}: candidate {stats['candidate']:.4f} vs champion v{champion_version} "
        f"{stats['champion']:.4f}, improvement {stats['delta']:+.4f} ({level} CI [{stats['ci_low']:+.4f}, "
        f"{stats['ci_high']:+.4f}]) {'within' if checks[0].passed else 'exceeds'} tolerance {config.tolerance:g}"
    )
    failed_slices = [check for check in checks[1:] if not check.passed]
    if failed_slices:
        reason += "; " + "; ".join(
            f"{check.scope}: improvement {results[check.scope]['delta']:+.4f} "
            f"(CI low {results[check.scope]['ci_low']:+.4f}) exceeds tolerance {config.tolerance:g}"
            for check in failed_slices
        )
    details: dict[str, Any] = {
        **stats,
        "metric": metric,
        "champion_version": champion_version,
        "tolerance": config.tolerance,
        "confidence": config.confidence,
    }
    if len(results) > 1:
        details["slices"] = {scope: value for scope, value in results.items() if scope != OVERALL}
    return GateDecision("regression", config.mode, passed, reason, checks, details)
