"""Evaluate stage: the task's metrics on the held-out split, overall and per declared slice."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd

from contracts.vocabulary import Task
from pipeline import tasks
from pipeline.tasks import Predictions

OVERALL = "overall"


def as_predictions(task: Task, output: Predictions | np.ndarray) -> Predictions:
    """A model's output as task predictions: a plain array is P(positive) (binary) or the values (regression)."""
    return output if isinstance(output, Predictions) else Predictions(task, np.asarray(output))


def compute_metrics(y: Any, output: Predictions | np.ndarray, task: Task = Task.binary) -> dict[str, float]:
    """Every metric of the task the predictions allow, plus the row count and the task's label statistics."""
    return tasks.compute_metrics(task, np.asarray(y), as_predictions(task, output))


def slice_key(column: str, value: str) -> str:
    """The name of one slice, as it appears in metrics and gate reports."""
    return f"{column}={value}"


def slice_masks(frame: pd.DataFrame, slices: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Every value of every slice column, as a row mask, keyed by :func:`slice_key`."""
    masks = {}
    for column in slices:
        values = frame[column].astype(str).to_numpy()
        for value in sorted(set(values)):
            masks[slice_key(column, value)] = values == value
    return masks


def label_values(frame: pd.DataFrame, label: str, task: Task) -> np.ndarray:
    """The label column as the task's metrics read it: numbers for binary and regression, as-is otherwise."""
    column = frame[label]
    return column.to_numpy() if task == Task.multiclass else column.to_numpy(dtype="float64")


def evaluate_predictions(
    frame: pd.DataFrame,
    label: str,
    output: Predictions | np.ndarray,
    slices: tuple[str, ...],
    task: Task = Task.binary,
) -> dict[str, dict[str, float]]:
    """Metrics overall and for every value of every slice column."""
    y = label_values(frame, label, task)
    predictions = as_predictions(task, output)
    result = {OVERALL: tasks.compute_metrics(task, y, predictions)}
    for scope, mask in slice_masks(frame, slices).items():
        result[scope] = tasks.compute_metrics(task, y[mask], predictions.subset(mask))
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
