"""Evaluate stage: classification metrics on the held-out split, overall and per declared slice."""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
import pandas as pd
from scipy.stats import rankdata

OVERALL = "overall"
_EPS = 1e-7


def auc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum identity (ties share the average rank); NaN if one class."""
    positives = int(y.sum())
    negatives = len(y) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = rankdata(p)
    return float((ranks[y == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def accuracy(y: np.ndarray, p: np.ndarray) -> float:
    """Share of rows whose 0.5-threshold prediction equals the label."""
    return float(np.mean((p >= 0.5) == (y == 1)))


def f1(y: np.ndarray, p: np.ndarray) -> float:
    """F1 of the positive class at the 0.5 threshold; 0 when nothing is predicted or present."""
    predicted = p >= 0.5
    actual = y == 1
    true_positive = float(np.sum(predicted & actual))
    denominator = float(predicted.sum() + actual.sum())
    return 2 * true_positive / denominator if denominator else 0.0


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    """Binary cross-entropy with clipped probabilities."""
    clipped = np.clip(p, _EPS, 1 - _EPS)
    return float(-np.mean(y * np.log(clipped) + (1 - y) * np.log(1 - clipped)))


def brier(y: np.ndarray, p: np.ndarray) -> float:
    """Mean squared error of the probabilities."""
    return float(np.mean((p - y) ** 2))


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "auc": auc,
    "accuracy": accuracy,
    "f1": f1,
    "log_loss": log_loss,
    "brier": brier,
}


def compute_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """Every metric the gates understand, plus the row count and positive rate."""
    values = {name: fn(y, p) for name, fn in METRICS.items()}
    values["rows"] = float(len(y))
    values["positive_rate"] = float(np.mean(y)) if len(y) else float("nan")
    return values


def slice_key(column: str, value: str) -> str:
    """The name of one slice, as it appears in metrics and gate reports."""
    return f"{column}={value}"


def evaluate_predictions(
    frame: pd.DataFrame, label: str, probability: np.ndarray, slices: tuple[str, ...]
) -> dict[str, dict[str, float]]:
    """Metrics overall and for every value of every slice column."""
    y = frame[label].to_numpy(dtype="float64")
    result = {OVERALL: compute_metrics(y, probability)}
    for column in slices:
        values = frame[column].astype(str).to_numpy()
        for value in sorted(set(values)):
            mask = values == value
            result[slice_key(column, value)] = compute_metrics(y[mask], probability[mask])
    return result


def flatten_metrics(evaluation: dict[str, dict[str, float]]) -> dict[str, float]:
    """MLflow metric names: ``test.auc`` overall, ``test.region.north.auc`` per slice; NaN dropped."""
    flat = {}
    for scope, metrics in evaluation.items():
        prefix = (
            "test"
            if scope == OVERALL
            else "test." + re.sub(r"[^A-Za-z0-9_\-.]", "_", scope.replace("=", "."))
        )
        for name, value in metrics.items():
            if not np.isnan(value):
                flat[f"{prefix}.{name}"] = value
    return flat
