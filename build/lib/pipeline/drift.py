"""Drift and degradation: a small reference profile of the training data, and checks of captured traffic.

Design
------
At training time the pipeline calls :func:`build_profile` on the training rows (and the model's scores on
the held-out rows) and stores the resulting :class:`ReferenceProfile` with the model as one JSON artefact
(:data:`PROFILE_ARTIFACT`). The profile is a *binned* summary, not a sample of rows:

- numeric columns: the reference's decile cut points (``bins`` quantile bins, open at both ends, ties
  merged so an integer column with few values gets one bin per value) with the reference count per bin;
- categorical columns: the declared categories with their reference counts, plus an "unseen" bucket;
- every column: a missing-value bucket, and a few summaries (mean, std, min, max) for people.

Why bins rather than a Parquet sample: a few kilobytes of JSON whatever the training set's size, no raw
(possibly personal) training rows copied next to the model, nothing to re-read or re-sort at check time,
and a check that is one ``searchsorted`` + ``bincount`` (or one ``value_counts``) per column, so a million
captured rows take well under a second per column. What it gives up: changes *inside* one reference bin
are invisible, which is why the bin count is configurable.

The drift check (:func:`check_drift`) bins a captured batch the same way and, per column, reports

- ``score``: the population stability index, PSI = KL(cur||ref) + KL(ref||cur), computed with
  :func:`scipy.stats.entropy` over the bin shares (empty bins floored at ``1e-4``). PSI is an effect size:
  it does not grow with the sample size, so it is what decides. Conventional reading: < 0.1 stable,
  0.1-0.25 moderate shift, > 0.25 major shift; the default threshold is 0.2.
- ``statistic`` / ``p_value``: Pearson's chi-square test of homogeneity of the reference and current bin
  counts (:func:`scipy.stats.chi2_contingency`). With large batches the p-value becomes tiny for shifts
  nobody cares about, so it never decides alone: a column drifts when PSI >= its threshold *and* the
  p-value is below ``alpha`` (which only protects small batches from noisy PSI values).

Prediction drift is the same check on what the model answers: its probability (binary) or value
(regression) binned, its predicted class (multiclass) counted. A batch drifts overall when the share of
drifted features reaches ``drift_share`` or (by default) when the prediction drifts.

Degradation is :func:`measure_quality`: the very metrics the gates use offline
(:func:`pipeline.evaluate.compute_metrics`), on captured rows whose labels have arrived.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field
from scipy.stats import chi2_contingency, entropy

from contracts.strict import StrictModel
from contracts.vocabulary import ColumnType, Task
from pipeline.config.drift import DriftConfig, FeatureDriftRule, ProfileConfig
from pipeline.evaluate import compute_metrics
from pipeline.tasks import Predictions

if TYPE_CHECKING:
    from pipeline.config import DataSchema

PROFILE_ARTIFACT = "drift/reference_profile.json"
PROFILE_FORMAT_VERSION = 1
PREDICTION = "prediction"
# Floor for an empty bin's share in PSI, so an empty bin costs a large but finite amount (as Evidently does).
_PSI_FLOOR = 1e-4


class DriftInputError(ValueError):
    """A batch, profile or argument the drift check cannot use; the message names the column."""


# -- the reference profile ---------------------------------------------------------------------------
class NumericProfile(StrictModel):
    """A numeric column: inner quantile cut points, the reference count in each bin, and summaries."""

    kind: Literal["numeric"] = "numeric"
    edges: tuple[float, ...]
    counts: tuple[int, ...]
    missing: int
    mean: float
    std: float
    min: float
    max: float


class CategoricalProfile(StrictModel):
    """A categorical column: the known categories with their reference counts, unseen and missing."""

    kind: Literal["categorical"] = "categorical"
    categories: tuple[str, ...]
    counts: tuple[int, ...]
    unseen: int
    missing: int


ColumnProfile = Annotated[NumericProfile | CategoricalProfile, Field(discriminator="kind")]


class ReferenceProfile(StrictModel):
    """The training reference of one model version; JSON-serialisable, a few kilobytes."""

    format_version: int = PROFILE_FORMAT_VERSION
    rows: int
    bins: int
    columns: dict[str, ColumnProfile]
    # The served prediction: binned numbers (a binary model's probability, a regression value) or counted
    # classes (a multiclass model's predicted label).
    prediction: ColumnProfile | None = None
    # Probabilities (a binary model) must lie in [0, 1]; a regression model's values may be any number.
    prediction_is_probability: bool = True

    def to_json(self) -> str:
        """The profile as JSON text, for the model's artefacts."""
        return self.model_dump_json(indent=1)

    @classmethod
    def from_json(cls, text: str | bytes) -> ReferenceProfile:
        """Read a profile written by :meth:`to_json`."""
        return cls.model_validate_json(text)


def _numeric_values(series: pd.Series, column: str) -> np.ndarray:
    """The column as float64 with NaN for missing; a clear error naming the column when it is not numeric."""
    if pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
        return series.to_numpy(dtype="float64", na_value=np.nan)
    # Captured rows may arrive with a generic dtype (object, text): accept them if every value is a number.
    numeric = pd.to_numeric(series, errors="coerce")
    not_numeric = numeric.isna() & series.notna()
    if not_numeric.any():
        shown = ", ".join(repr(v) for v in pd.unique(series[not_numeric])[:3])
        raise DriftInputError(
            f"column '{column}': expected numeric values, {int(not_numeric.sum())} row(s) are not (e.g. {shown})"
        )
    return numeric.to_numpy(dtype="float64", na_value=np.nan)


def _profile_numeric(values: np.ndarray, bins: int, column: str) -> NumericProfile:
    present = values[~np.isnan(values)]
    if present.size == 0:
        raise DriftInputError(f"column '{column}': no non-missing values in the reference")
    # Quantile cut points; ties merge (np.unique), so discrete columns get one bin per frequent value.
    edges = np.unique(np.quantile(present, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
    counts = np.bincount(np.searchsorted(edges, present, side="right"), minlength=edges.size + 1)
    return NumericProfile(
        edges=tuple(float(e) for e in edges),
        counts=tuple(int(c) for c in counts),
        missing=int(values.size - present.size),
        mean=float(present.mean()),
        std=float(present.std()),
        min=float(present.min()),
        max=float(present.max()),
    )


def _category_counts(series: pd.Series, categories: Sequence[str]) -> tuple[np.ndarray, int, int]:
    """Counts per known category, then unseen and missing counts; one hash pass over the column."""
    missing = int(series.isna().sum())
    observed = series.value_counts(dropna=True)
    by_label: dict[str, int] = {}
    for value, count in observed.items():
        key = str(value)
        by_label[key] = by_label.get(key, 0) + int(count)
    counts = np.array([by_label.pop(c, 0) for c in categories], dtype="int64")
    return counts, int(sum(by_label.values())), missing


def _profile_categorical(series: pd.Series, declared: Sequence[str] | None) -> CategoricalProfile:
    if declared:
        categories = tuple(declared)
    else:
        categories = tuple(sorted({str(v) for v in pd.unique(series.dropna())}))
    counts, unseen, missing = _category_counts(series, categories)
    return CategoricalProfile(
        categories=categories, counts=tuple(int(c) for c in counts), unseen=unseen, missing=missing
    )


def _is_categorical(schema: DataSchema, column: str) -> bool:
    return schema.columns[column].type in (ColumnType.category, ColumnType.boolean)


def build_profile(
    frame: pd.DataFrame,
    schema: DataSchema,
    features: Sequence[str] | None = None,
    predictions: Sequence[float] | np.ndarray | pd.Series | None = None,
    config: ProfileConfig | None = None,
    probabilities: bool = True,
    prediction_classes: Sequence[str] | None = None,
) -> ReferenceProfile:
    """Profile the reference data of one model at training time.

    ``frame``: the training rows (features; the label may be present and is ignored).
    ``schema``: the pipeline's declared schema; integer/float columns are binned, category/boolean
    columns counted (declared categories first, anything else counts as unseen).
    ``features``: the model's input columns (default: every declared non-label column).
    ``predictions``: the model's probabilities on reference rows (the held-out split is best: scores on
    training rows are over-confident); they may come from other rows than ``frame``. With
    ``probabilities=False`` (a regression model) they are values of any size. With ``prediction_classes``
    (a multiclass model) they are predicted class labels, counted per class like a category column.
    Store the result with the model: ``mlflow.log_text(profile.to_json(), PROFILE_ARTIFACT)``.
    """
    settings = config or ProfileConfig()
    names = tuple(features) if features is not None else schema.feature_columns
    if not names:
        raise DriftInputError("no feature columns to profile")
    unknown = [c for c in names if c not in schema.columns]
    if unknown:
        raise DriftInputError(f"columns not declared in the schema: {', '.join(unknown)}")
    missing = [c for c in names if c not in frame.columns]
    if missing:
        raise DriftInputError(f"reference is missing column(s): {', '.join(missing)}")
    if len(frame) == 0:
        raise DriftInputError("reference has no rows")
    columns: dict[str, NumericProfile | CategoricalProfile] = {}
    for name in names:
        if _is_categorical(schema, name):
            columns[name] = _profile_categorical(frame[name], schema.columns[name].categories)
        else:
            columns[name] = _profile_numeric(_numeric_values(frame[name], name), settings.bins, name)
    prediction: NumericProfile | CategoricalProfile | None = None
    if predictions is not None and prediction_classes is not None:
        prediction = _profile_categorical(_class_labels(predictions, None), prediction_classes)
    elif predictions is not None:
        values = _prediction_values(predictions, None, probabilities)
        prediction = _profile_numeric(values, settings.bins, PREDICTION)
    return ReferenceProfile(
        rows=len(frame),
        bins=settings.bins,
        columns=columns,
        prediction=prediction,
        prediction_is_probability=probabilities,
    )


# -- the drift check ---------------------------------------------------------------------------------
class FeatureDrift(StrictModel):
    """The verdict on one column (or on the prediction).

    ``score`` is the PSI (the effect size that decides), ``statistic``/``p_value`` the chi-square test
    of homogeneity of the bin counts; ``threshold`` the PSI this column was held to; ``checked`` is False
    when the column was disabled or the batch too small (then ``drifted`` is False).
    """

    column: str
    kind: Literal["numeric", "categorical"]
    score: float
    statistic: float
    p_value: float
    threshold: float
    drifted: bool
    checked: bool
    missing_share: float
    unseen_share: float = 0.0
    reference_mean: float | None = None
    current_mean: float | None = None


class DriftReport(StrictModel):
    """The verdict on one batch: per-column results, prediction drift, and the overall decision."""

    rows: int
    sufficient: bool
    features: dict[str, FeatureDrift]
    prediction: FeatureDrift | None
    drifted_features: tuple[str, ...]
    drift_share: float
    drifted: bool
    explanation: str

    def to_metrics(self) -> dict[str, float]:
        """Flat metric names for MLflow / Prometheus: ``drift.psi.<column>``, ``drift.p_value.<column>``, ..."""
        metrics: dict[str, float] = {
            "drift.rows": float(self.rows),
            "drift.share": self.drift_share,
            "drift.drifted": float(self.drifted),
        }
        results = list(self.features.values()) + ([self.prediction] if self.prediction else [])
        for result in results:
            metrics[f"drift.psi.{result.column}"] = result.score
            metrics[f"drift.p_value.{result.column}"] = result.p_value
            metrics[f"drift.drifted.{result.column}"] = float(result.drifted)
        return metrics


def _psi_and_test(reference: np.ndarray, current: np.ndarray) -> tuple[float, float, float]:
    """PSI of the current bin shares against the reference, and the chi-square homogeneity test."""
    ref_share = np.maximum(reference / reference.sum(), _PSI_FLOOR)
    cur_share = np.maximum(current / current.sum(), _PSI_FLOOR)
    psi = float(entropy(cur_share, ref_share) + entropy(ref_share, cur_share))
    used = (reference + current) > 0
    if used.sum() < 2:
        return psi, 0.0, 1.0
    test = chi2_contingency(np.vstack([reference[used], current[used]]), correction=False)
    return psi, float(test.statistic), float(test.pvalue)


def _prediction_values(
    predictions: Sequence[float] | np.ndarray | pd.Series, rows: int | None, probabilities: bool = True
) -> np.ndarray:
    try:
        values = np.asarray(predictions, dtype="float64").reshape(-1)
    except (TypeError, ValueError) as error:
        raise DriftInputError(f"column '{PREDICTION}': expected probabilities, {error}") from None
    if rows is not None and values.size != rows:
        raise DriftInputError(f"column '{PREDICTION}': {values.size} predictions for a batch of {rows} rows")
    present = values[~np.isnan(values)]
    if not np.isfinite(present).all():
        raise DriftInputError(f"column '{PREDICTION}': predictions must be finite numbers")
    if probabilities and present.size and (present.min() < 0.0 or present.max() > 1.0):
        raise DriftInputError(
            f"column '{PREDICTION}': probabilities must lie in [0, 1], got [{present.min():g}, {present.max():g}]"
        )
    return values


def _class_labels(predictions: Sequence[Any] | np.ndarray | pd.Series, rows: int | None) -> pd.Series:
    """Predicted class labels as text (as categories are profiled); missing ones stay missing."""
    labels = pd.Series(np.asarray(predictions, dtype=object).reshape(-1))
    if rows is not None and len(labels) != rows:
        raise DriftInputError(f"column '{PREDICTION}': {len(labels)} predictions for a batch of {rows} rows")
    present = labels.notna()
    labels[present] = labels[present].map(class_key)
    return labels


def class_key(value: Any) -> str:
    """A class label as text, the same whichever way it travelled: ``2``, ``2.0`` and ``"2"`` are ``"2"``."""
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, int | np.integer):
        return str(int(value))
    return str(value)


def _numeric_drift(
    column: str,
    profile: NumericProfile,
    values: np.ndarray,
    threshold: float,
    checked: bool,
    alpha: float | None,
) -> FeatureDrift:
    nan = np.isnan(values)
    present = values[~nan]
    bins = np.bincount(
        np.searchsorted(np.asarray(profile.edges), present, side="right"), minlength=len(profile.counts)
    )
    current = np.append(bins, nan.sum()).astype("float64")
    reference = np.append(np.asarray(profile.counts), profile.missing).astype("float64")
    psi, statistic, p_value = _psi_and_test(reference, current)
    return FeatureDrift(
        column=column,
        kind="numeric",
        score=psi,
        statistic=statistic,
        p_value=p_value,
        threshold=threshold,
        drifted=checked and _decide(psi, p_value, threshold, alpha),
        checked=checked,
        missing_share=float(nan.mean()) if values.size else 0.0,
        reference_mean=profile.mean,
        current_mean=float(present.mean()) if present.size else None,
    )


def _categorical_drift(
    column: str,
    profile: CategoricalProfile,
    series: pd.Series,
    threshold: float,
    checked: bool,
    alpha: float | None,
) -> FeatureDrift:
    counts, unseen, missing = _category_counts(series, profile.categories)
    current = np.append(counts, [unseen, missing]).astype("float64")
    reference = np.append(np.asarray(profile.counts), [profile.unseen, profile.missing]).astype("float64")
    psi, statistic, p_value = _psi_and_test(reference, current)
    rows = len(series)
    return FeatureDrift(
        column=column,
        kind="categorical",
        score=psi,
        statistic=statistic,
        p_value=p_value,
        threshold=threshold,
        drifted=checked and _decide(psi, p_value, threshold, alpha),
        checked=checked,
        missing_share=missing / rows,
        unseen_share=unseen / rows,
    )


def _decide(psi: float, p_value: float, threshold: float, alpha: float | None) -> bool:
    return psi >= threshold and (alpha is None or p_value < alpha)


def check_drift(
    profile: ReferenceProfile,
    batch: pd.DataFrame,
    predictions: Sequence[float] | np.ndarray | pd.Series | None = None,
    config: DriftConfig | None = None,
) -> DriftReport:
    """Judge a batch of captured rows against the serving model's reference profile.

    ``batch`` must hold every profiled column (extra columns are ignored); numeric columns must have a
    numeric dtype (nullable ones are fine: missing values are counted in their own bin). ``predictions``
    are the served probabilities for the same rows (``None``: no prediction drift is computed).
    Raises :class:`DriftInputError` naming the column when the input cannot be used. A batch below
    ``config.min_rows`` gets a report with ``sufficient=False`` and nothing drifted.
    """
    settings = config or DriftConfig()
    unknown_rules = [name for name in settings.features if name not in profile.columns and name != PREDICTION]
    if unknown_rules:
        raise DriftInputError(f"drift rules name unknown column(s): {', '.join(unknown_rules)}")
    missing = [name for name in profile.columns if name not in batch.columns]
    if missing:
        raise DriftInputError(f"batch is missing column(s): {', '.join(missing)}")
    if predictions is not None and profile.prediction is None:
        raise DriftInputError(f"column '{PREDICTION}': the reference profile has no prediction distribution")
    rows = len(batch)
    if rows == 0:
        raise DriftInputError("batch has no rows")
    sufficient = rows >= settings.min_rows
    features: dict[str, FeatureDrift] = {}
    for name, column_profile in profile.columns.items():
        rule = settings.features.get(name, FeatureDriftRule())
        threshold = rule.psi_threshold or settings.psi_threshold
        checked = sufficient and rule.enabled
        if isinstance(column_profile, NumericProfile):
            values = _numeric_values(batch[name], name)
            features[name] = _numeric_drift(name, column_profile, values, threshold, checked, settings.alpha)
        else:
            features[name] = _categorical_drift(
                name, column_profile, batch[name], threshold, checked, settings.alpha
            )
    prediction = None
    if predictions is not None and profile.prediction is not None:
        rule = settings.features.get(PREDICTION, FeatureDriftRule())
        threshold = rule.psi_threshold or settings.prediction_psi_threshold
        if isinstance(profile.prediction, CategoricalProfile):
            prediction = _categorical_drift(
                PREDICTION,
                profile.prediction,
                _class_labels(predictions, rows),
                threshold,
                sufficient and rule.enabled,
                settings.alpha,
            )
        else:
            prediction = _numeric_drift(
                PREDICTION,
                profile.prediction,
                _prediction_values(predictions, rows, profile.prediction_is_probability),
                threshold,
                sufficient and rule.enabled,
                settings.alpha,
            )
    judged = [f for f in features.values() if f.checked]
    drifted_features = tuple(f.column for f in judged if f.drifted)
    share = len(drifted_features) / len(judged) if judged else 0.0
    by_features = bool(judged) and share >= settings.drift_share
    by_prediction = prediction is not None and prediction.drifted and settings.prediction_decides
    return DriftReport(
        rows=rows,
        sufficient=sufficient,
        features=features,
        prediction=prediction,
        drifted_features=drifted_features,
        drift_share=share,
        drifted=by_features or by_prediction,
        explanation=_explain(rows, sufficient, settings, drifted_features, len(judged), share, prediction),
    )


def _explain(
    rows: int,
    sufficient: bool,
    settings: DriftConfig,
    drifted_features: tuple[str, ...],
    judged: int,
    share: float,
    prediction: FeatureDrift | None,
) -> str:
    if not sufficient:
        return f"{rows} rows is below min_rows={settings.min_rows}: not judged"
    parts = [
        f"{len(drifted_features)}/{judged} features drifted ({share:.0%}, limit {settings.drift_share:.0%})"
        + (f": {', '.join(drifted_features)}" if drifted_features else "")
    ]
    if prediction is not None:
        state = "drifted" if prediction.drifted else "stable"
        parts.append(f"prediction {state} (PSI {prediction.score:.3f}, limit {prediction.threshold:g})")
    return "; ".join(parts)


# -- degradation -------------------------------------------------------------------------------------
def measure_quality(
    labels: Sequence[Any] | np.ndarray | pd.Series,
    predictions: Sequence[float] | np.ndarray | pd.Series | Predictions,
    task: Task | str = Task.binary,
) -> dict[str, float]:
    """Model quality on captured rows whose labels have arrived, with the task's own metrics.

    ``predictions`` per task: binary, P(positive) per row; regression, the predicted values; multiclass, a
    :class:`~pipeline.tasks.Predictions` (class probabilities with their classes, or predicted labels).
    Returns the task's gate metrics (binary: auc, accuracy, f1, log_loss, brier; multiclass: accuracy,
    macro_f1 and, with probabilities, log_loss; regression: rmse, mae, r2) plus ``rows`` and the label
    statistics, so a degradation trigger compares like with like with the offline ``test.<metric>``.

    Rows whose label is still missing are skipped, so the caller may pass every captured row. A label the
    task cannot have (not 0/1 for binary, not a number for regression, not one of the model's classes)
    raises :class:`DriftInputError` naming it: the caller decides whether to drop such rows first. ``auc``
    is NaN while only one class has been labelled.
    """
    task = Task(task)
    if task == Task.multiclass:
        if not isinstance(predictions, Predictions):
            predictions = Predictions(task, np.asarray(predictions, dtype=object))
        y_any = pd.Series(np.asarray(labels, dtype=object).reshape(-1))
        if len(y_any) != len(predictions):
            raise DriftInputError(f"column 'label': {len(y_any)} labels for {len(predictions)} predictions")
        labelled = y_any.notna().to_numpy()
        truth = np.asarray([class_key(v) for v in y_any[labelled]], dtype=object)
        try:
            return compute_metrics(truth, predictions.subset(labelled), task)
        except ValueError as error:
            raise DriftInputError(f"column 'label': {error}") from None
    y = np.asarray(pd.to_numeric(pd.Series(labels), errors="coerce"), dtype="float64").reshape(-1)
    values = predictions.values if isinstance(predictions, Predictions) else predictions
    p = _prediction_values(values, None, probabilities=task == Task.binary)
    if y.size != p.size:
        raise DriftInputError(f"column 'label': {y.size} labels for {p.size} predictions")
    labelled = ~np.isnan(y)
    if np.isnan(p[labelled]).any():
        raise DriftInputError(f"column '{PREDICTION}': missing prediction for a labelled row")
    y, p = y[labelled], p[labelled]
    if task == Task.binary and not np.isin(y, (0.0, 1.0)).all():
        raise DriftInputError(
            f"column 'label': labels must be 0 or 1, got {sorted(set(y.tolist()) - {0.0, 1.0})[:3]}"
        )
    return compute_metrics(y, p, task)


def describe_report(report: DriftReport, top: int = 5) -> str:
    """A few human lines: the verdict, then the columns with the highest PSI."""
    ranked = sorted(report.features.values(), key=lambda f: f.score, reverse=True)[:top]
    lines = [("DRIFT: " if report.drifted else "no drift: ") + report.explanation]
    for result in ranked + ([report.prediction] if report.prediction else []):
        flag = "drifted" if result.drifted else "ok"
        lines.append(f"  {result.column}: PSI {result.score:.3f} (p={result.p_value:.2g}) {flag}")
    return "\n".join(lines)


def _bin_labels(edges: Sequence[float]) -> list[str]:
    if not edges:
        return ["all"]
    inner = [f"{low:.3g}–{high:.3g}" for low, high in zip(edges[:-1], edges[1:], strict=True)]
    return [f"<{edges[0]:.3g}", *inner, f"≥{edges[-1]:.3g}"]


def _shares(counts: np.ndarray) -> list[float]:
    total = counts.sum()
    return [float(c / total) if total else 0.0 for c in counts]


def drift_histograms(
    profile: ReferenceProfile, batch: pd.DataFrame, report: DriftReport, top: int = 4
) -> list[dict]:
    """Reference and current share of rows per bin for the ``top`` features with the highest PSI.

    The bins are the reference profile's (quantile bins, or categories, plus unseen and missing where
    present), so the bars are exactly what the PSI compared. Plain data, for :mod:`pipeline.figures` and
    the watcher's history.
    """
    ranked = sorted(
        (f for f in report.features.values() if f.column in batch.columns),
        key=lambda f: f.score,
        reverse=True,
    )[:top]
    histograms = []
    for result in ranked:
        column = profile.columns[result.column]
        if isinstance(column, NumericProfile):
            values = _numeric_values(batch[result.column], result.column)
            present = values[~np.isnan(values)]
            current = np.bincount(
                np.searchsorted(np.asarray(column.edges), present, side="right"), minlength=len(column.counts)
            ).astype("float64")
            current = np.append(current, values.size - present.size)
            reference = np.append(np.asarray(column.counts, dtype="float64"), column.missing)
            labels = [*_bin_labels(column.edges), "missing"]
            specials = 1
        else:
            counts, unseen, missing = _category_counts(batch[result.column], column.categories)
            current = np.append(counts, [unseen, missing]).astype("float64")
            reference = np.append(np.asarray(column.counts), [column.unseen, column.missing]).astype(
                "float64"
            )
            labels = [*column.categories, "unseen", "missing"]
            specials = 2
        # Empty trailing buckets (no missing, no unseen on either side) are noise in a picture.
        keep = [i for i in range(len(labels)) if i < len(labels) - specials or reference[i] or current[i]]
        histograms.append(
            {
                "column": result.column,
                "score": result.score,
                "threshold": result.threshold,
                "labels": [labels[i] for i in keep],
                "reference": [_shares(reference)[i] for i in keep],
                "current": [_shares(current)[i] for i in keep],
            }
        )
    return histograms
