"""Task types: binary, multiclass and regression predictions, their metrics, label checks and paired bootstrap.

A pure core (numpy arrays in, numbers out) for "any model, any task". Each task has a typed prediction
container (:class:`Predictions`), a metric registry whose entries carry their direction
(:func:`metrics_for`, :func:`metric_spec`), a label check (:func:`check_labels`), per-row values for the
non-inferiority test (:func:`row_losses`) and a paired bootstrap of (candidate - champion) that works for
every metric (:func:`paired_bootstrap`).

The bootstrap never loops over resamples in Python. Resamples are drawn as row-index matrices and turned
into count matrices ``W`` (resamples x rows); every metric has an exact *weighted* form, so a metric on
all resamples at once is a few matrix products: a mean of per-row losses is ``W @ loss / n``; F1 and
macro-F1 come from weighted confusion counts; RMSE and R² from weighted sums of squares; AUC from
weighted cumulative counts of negatives over the rows sorted once by score. Both models see the same
``W``, which makes the comparison paired.

Binary metrics keep the exact formulas of :mod:`pipeline.evaluate`, so their values are identical.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import rankdata

from contracts.vocabulary import Task

_EPS = 1e-7  # probability clipping for log loss, as pipeline.evaluate
_ROW_SUM_TOLERANCE = 1e-4  # float32 softmax outputs over many classes sum to 1 only to about 1e-6
_CHUNK_CELLS = 1 << 20  # cells of a resample matrix per chunk: memory stays at ~8 MB per float matrix
_SHOWN = 5  # offending values quoted in a message

Resampled = Callable[[np.ndarray], np.ndarray]


def parse_task(value: str | Task) -> Task:
    """The task named ``value``; a ``ValueError`` listing the tasks when it is not one."""
    try:
        return Task(value)
    except ValueError:
        raise ValueError(f"unknown task '{value}'; tasks are: {', '.join(Task)}") from None


# -- predictions ---------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Predictions:
    """One model's outputs on n rows, validated against its task on construction.

    * ``binary``: ``values`` is P(positive), shape (n,), every value in [0, 1].
    * ``multiclass``: ``values`` is either the class-probability matrix (n, k), columns in the order of
      ``classes`` (k labels, required) and rows summing to 1, or, for a model that gives no probabilities,
      the predicted labels (n,); ``classes`` is then optional (the labels the model can predict).
    * ``regression``: ``values`` is the predicted number, shape (n,), finite.

    The arrays are copied and made read-only; a problem raises ``ValueError`` saying what is wrong.
    """

    task: Task
    values: np.ndarray
    classes: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        task = parse_task(self.task)
        classes = tuple(_plain(label) for label in self.classes)
        if task == Task.binary:
            values = _probability_vector(self.values)
        elif task == Task.regression:
            values = _finite_vector(self.values, "regression predictions")
        else:
            values = _multiclass_values(self.values, classes)
        if classes and task != Task.multiclass:
            raise ValueError(f"{task} predictions take no 'classes' (only multiclass predictions name them)")
        values.flags.writeable = False
        object.__setattr__(self, "task", task)
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "classes", classes)

    def __len__(self) -> int:
        """The number of rows predicted."""
        return int(self.values.shape[0])

    @property
    def has_probabilities(self) -> bool:
        """Whether the model gave probabilities (always for binary; for multiclass, a matrix)."""
        return self.task == Task.binary or (self.task == Task.multiclass and self.values.ndim == 2)

    @property
    def labels(self) -> np.ndarray:
        """Hard predictions: 0/1 at the 0.5 threshold, the most probable class, or the predicted number."""
        if self.task == Task.binary:
            return (self.values >= 0.5).astype(np.int64)
        if self.task == Task.multiclass and self.values.ndim == 2:
            return np.asarray(self.classes)[np.argmax(self.values, axis=1)]
        return self.values

    def subset(self, index: np.ndarray) -> Predictions:
        """The predictions on the rows ``index`` selects (a boolean mask or positions), e.g. one slice."""
        return Predictions(self.task, self.values[index], self.classes)


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python scalar it holds (so labels compare, hash and print as plain values)."""
    return value.item() if isinstance(value, np.generic) else value


def _numbers(values: Any, what: str) -> np.ndarray:
    """``values`` as a new float64 array; ``ValueError`` when they are not numbers."""
    array = np.asarray(values)
    if array.dtype.kind == "O":
        try:
            array = array.astype(np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{what} must be numbers, found {_show(array.ravel())}") from None
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{what} must be numbers, got dtype {array.dtype}")
    return array.astype(np.float64)


def _check_finite(array: np.ndarray, what: str) -> None:
    bad = ~np.isfinite(array)
    if bad.any():
        rows = np.unique(np.nonzero(bad)[0])
        raise ValueError(
            f"{what} must be finite; {len(rows)} row(s) hold NaN or infinity, first row {int(rows[0])}"
        )


def _finite_vector(values: Any, what: str) -> np.ndarray:
    array = _numbers(values, what)
    if array.ndim != 1:
        raise ValueError(f"{what} must have shape (n,), got shape {array.shape}")
    _check_finite(array, what)
    return array


def _check_unit_range(array: np.ndarray, what: str) -> None:
    outside = (array < 0.0) | (array > 1.0)
    if outside.any():
        raise ValueError(
            f"{what} must be probabilities in [0, 1]; {int(outside.sum())} value(s) are not, "
            f"such as {_show(array[outside])}"
        )


def _probability_vector(values: Any) -> np.ndarray:
    what = "binary predictions (P(positive))"
    array = _numbers(values, what)
    if array.ndim != 1:
        raise ValueError(
            f"{what} must have shape (n,), got shape {array.shape}"
            + (" (pass the positive-class column alone)" if array.ndim == 2 else "")
        )
    _check_finite(array, what)
    _check_unit_range(array, what)
    return array


def _multiclass_values(values: Any, classes: tuple[Any, ...]) -> np.ndarray:
    array = np.asarray(values)
    if len(set(classes)) != len(classes):
        raise ValueError(f"multiclass classes must not repeat a label, got {list(classes)}")
    if array.ndim == 2:
        what = "multiclass probabilities"
        array = _numbers(array, what)
        rows, columns = array.shape
        if columns < 2:
            raise ValueError(f"{what} need at least two columns (one per class), got shape {array.shape}")
        if len(classes) != columns:
            raise ValueError(
                f"{what} have {columns} columns but 'classes' names {len(classes)} label(s): "
                "give one class label per column, in column order"
            )
        _check_finite(array, what)
        _check_unit_range(array, what)
        sums = array.sum(axis=1)
        off = np.flatnonzero(np.abs(sums - 1.0) > _ROW_SUM_TOLERANCE)
        if len(off):
            raise ValueError(
                f"{what}: every row must sum to 1 (within {_ROW_SUM_TOLERANCE:g}); {len(off)} row(s) do not, "
                f"first row {int(off[0])} sums to {sums[off[0]]:.6g}"
            )
        return array
    if array.ndim != 1:
        raise ValueError(
            f"multiclass predictions must be probabilities (n, k) or labels (n,), got shape {array.shape}"
        )
    what = "multiclass predicted labels"
    kind, missing = _label_kind(array)
    if missing.any():
        raise ValueError(f"{what} must not be missing; {int(missing.sum())} row(s) are")
    if kind not in ("boolean", "integer", "string", "float"):
        raise ValueError(f"{what} must be integers or strings, found {_show(array)}")
    if kind == "float" and _fractional(array).any():
        raise ValueError(
            f"{what} must be class labels, found fractional values {_show(array[_fractional(array)])}"
        )
    if classes:
        _encode_labels(array, {label: code for code, label in enumerate(classes)}, extend=False, what=what)
    return array.copy()


# -- rows encoded for the metric functions --------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class EncodedRows:
    """True labels and one model's predictions on the same rows, in the numeric form every metric reads.

    * ``binary``: ``truth`` 0.0/1.0, ``output`` P(positive).
    * ``multiclass``: ``truth`` and ``output`` are class codes (indexes into ``classes``); ``probabilities``
      is the (n, k) matrix in code order when the model gave one, else None.
    * ``regression``: ``truth`` the target, ``output`` the prediction.
    """

    task: Task
    truth: np.ndarray
    output: np.ndarray
    probabilities: np.ndarray | None = None
    classes: tuple[Any, ...] = ()

    def __len__(self) -> int:
        """The number of rows."""
        return int(self.truth.shape[0])

    def take(self, index: np.ndarray) -> EncodedRows:
        """The rows ``index`` selects, repeats allowed (a bootstrap resample, a slice)."""
        probabilities = None if self.probabilities is None else self.probabilities[index]
        return EncodedRows(self.task, self.truth[index], self.output[index], probabilities, self.classes)


def encode_rows(task: Task | str, y: Any, predictions: Predictions) -> EncodedRows:
    """Pair the true labels with one model's predictions; ``ValueError`` when they cannot be compared.

    Labels must fit the task's domain (0/1 for binary, finite numbers for regression, for multiclass one
    of the probability columns' classes); one class only is allowed here (a slice may have one), it is
    :func:`check_labels` that refuses it for a whole data set.
    """
    task = parse_task(task)
    if predictions.task != task:
        raise ValueError(f"predictions are for task '{predictions.task}', not '{task}'")
    labels = np.asarray(y)
    if labels.ndim != 1 or len(labels) != len(predictions):
        raise ValueError(
            f"{len(predictions)} predictions for labels of shape {labels.shape}: give one label per row"
        )
    if task == Task.binary:
        truth = _numbers(labels, "binary labels")
        outside = ~np.isin(truth, (0.0, 1.0))
        if outside.any():
            raise ValueError(f"binary labels must be 0/1 or booleans, found {_show(labels[outside])}")
        return EncodedRows(task, truth, predictions.values)
    if task == Task.regression:
        return EncodedRows(task, _finite_vector(labels, "regression labels"), predictions.values)
    index = {label: code for code, label in enumerate(predictions.classes)}
    if predictions.has_probabilities:
        truth = _encode_labels(labels, index, extend=False, what="multiclass labels")
        probabilities = predictions.values
        output = np.argmax(probabilities, axis=1)
        return EncodedRows(task, truth, output, probabilities, predictions.classes)
    truth = _encode_labels(labels, index, extend=True, what="multiclass labels")
    output = _encode_labels(predictions.values, index, extend=True, what="multiclass predicted labels")
    return EncodedRows(task, truth, output, None, tuple(index))


def _encode_labels(values: np.ndarray, index: dict[Any, int], extend: bool, what: str) -> np.ndarray:
    """Class codes of ``values`` by ``index``; new labels are added when ``extend``, else refused."""
    if len(values) == 0:
        return np.zeros(0, dtype=np.int64)
    try:
        uniques, inverse = np.unique(values, return_inverse=True)
    except TypeError:
        raise ValueError(f"{what} mix types that cannot be compared: {_show(values)}") from None
    codes = np.empty(len(uniques), dtype=np.int64)
    unknown = []
    for position, label in enumerate(uniques):
        key = _plain(label)
        if key not in index:
            if not extend:
                unknown.append(label)
                continue
            index[key] = len(index)
        codes[position] = index[key]
    if unknown:
        raise ValueError(f"{what} {_show(np.asarray(unknown))} are not among the classes {list(index)}")
    return codes[inverse.reshape(-1)]


# -- metrics --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricSpec:
    """One metric of one task: its direction and its three forms.

    ``fn`` computes it on all rows. ``row_values`` gives one number per row whose mean is the metric:
    the per-row loss for a mean metric (``decomposable``), else the metric plus each row's first-order
    influence (a linearisation, exact in the mean; useful for a delta-method error). ``resampler``
    prepares, once per model, a function from a matrix of whole-number row weights (resamples x rows: the
    bootstrap's draw counts) to the metric on every resample: the bootstrap recomputes every metric exactly
    this way.
    """

    name: str
    task: Task
    higher_is_better: bool
    fn: Callable[[EncodedRows], float]
    needs_probabilities: bool
    row_values: Callable[[EncodedRows], np.ndarray]
    resampler: Callable[[EncodedRows], Resampled]
    decomposable: bool

    @property
    def sign(self) -> float:
        """+1 when higher is better, -1 when lower is: multiplies a difference so positive means better."""
        return 1.0 if self.higher_is_better else -1.0


def _weighted_mean(values: np.ndarray) -> Resampled:
    """Weighted means of one per-row vector: ``W @ values / W.sum(axis=1)``."""
    vector = np.asarray(values, dtype=np.float64)

    def resampled(weights: np.ndarray) -> np.ndarray:
        return (weights @ vector) / weights.sum(axis=1)

    return resampled


def _mean_metric(
    name: str,
    task: Task,
    higher_is_better: bool,
    rows_fn: Callable[[EncodedRows], np.ndarray],
    probabilities: bool = False,
) -> MetricSpec:
    """A metric that is the mean of a per-row loss: its value, row values and resamples all follow."""
    return MetricSpec(
        name=name,
        task=task,
        higher_is_better=higher_is_better,
        fn=lambda rows: float(np.mean(rows_fn(rows))),
        needs_probabilities=probabilities,
        row_values=lambda rows: np.asarray(rows_fn(rows), dtype=np.float64),
        resampler=lambda rows: _weighted_mean(rows_fn(rows)),
        decomposable=True,
    )


def _safe_ratio(numerator: np.ndarray, denominator: np.ndarray, empty: float) -> np.ndarray:
    """Elementwise numerator / denominator, ``empty`` where the denominator is 0."""
    out = np.full(np.broadcast(numerator, denominator).shape, empty, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


# binary: the formulas of pipeline.evaluate, written the same way so that the numbers are identical


def _binary_auc(rows: EncodedRows) -> float:
    y, p = rows.truth, rows.output
    positives = int(y.sum())
    negatives = len(y) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = rankdata(p)
    return float((ranks[y == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def _binary_auc_rows(rows: EncodedRows) -> np.ndarray:
    """AUC plus each row's influence, from placement values (DeLong): mean over all rows = AUC."""
    y, p = rows.truth, rows.output
    positive = y == 1
    positives, negatives = int(positive.sum()), int((~positive).sum())
    if positives == 0 or negatives == 0:
        return np.full(len(y), np.nan)
    ranks = rankdata(p)
    within = np.empty(len(y))
    within[positive] = rankdata(p[positive])
    within[~positive] = rankdata(p[~positive])
    # a positive's share of negatives scored below it; a negative's share of positives scored above it
    placement = np.where(positive, (ranks - within) / negatives, 1.0 - (ranks - within) / positives)
    area = _binary_auc(rows)
    scale = np.where(positive, len(y) / positives, len(y) / negatives)
    return area + scale * (placement - area)


def _binary_auc_resampler(rows: EncodedRows) -> Resampled:
    """AUC under whole-number row weights: weighted positive-negative pairs in order, rows sorted once by score."""
    order = np.argsort(rows.output, kind="stable")
    scores = rows.output[order]
    positive = (rows.truth[order] == 1).astype(np.int64)
    starts = np.flatnonzero(np.r_[True, scores[1:] != scores[:-1]])  # one group per distinct score
    tied = len(starts) < len(scores)

    def resampled(weights: np.ndarray) -> np.ndarray:
        # counts as int64: numpy's cumulative sum is several times faster on integers than on floats
        ordered = np.rint(weights).astype(np.int64)[:, order]
        positives = ordered * positive
        negatives = ordered - positives
        if tied:
            positives = np.add.reduceat(positives, starts, axis=1)
            negatives = np.add.reduceat(negatives, starts, axis=1)
        below = np.cumsum(negatives, axis=1) - negatives
        doubled_pairs = (positives * (2 * below + negatives)).sum(axis=1)  # a tie counts half a pair
        total_positive, total_negative = positives.sum(axis=1), negatives.sum(axis=1)
        return _safe_ratio(
            doubled_pairs / 2.0, (total_positive * total_negative).astype(np.float64), math.nan
        )

    return resampled


def _binary_correct(rows: EncodedRows) -> np.ndarray:
    return (rows.output >= 0.5) == (rows.truth == 1)


def _binary_f1(rows: EncodedRows) -> float:
    predicted = rows.output >= 0.5
    actual = rows.truth == 1
    true_positive = float(np.sum(predicted & actual))
    denominator = float(predicted.sum() + actual.sum())
    return 2 * true_positive / denominator if denominator else 0.0


def _binary_f1_counts(rows: EncodedRows) -> np.ndarray:
    """Per-row (2 x true positive, predicted positive + actual positive): F1 is the ratio of their sums."""
    predicted = rows.output >= 0.5
    actual = rows.truth == 1
    return np.column_stack([2.0 * (predicted & actual), predicted.astype(np.float64) + actual])


def _binary_f1_rows(rows: EncodedRows) -> np.ndarray:
    counts = _binary_f1_counts(rows)
    return _ratio_rows(counts[:, 0], counts[:, 1])


def _binary_f1_resampler(rows: EncodedRows) -> Resampled:
    counts = _binary_f1_counts(rows)

    def resampled(weights: np.ndarray) -> np.ndarray:
        sums = weights @ counts
        return _safe_ratio(sums[:, 0], sums[:, 1], 0.0)

    return resampled


def _ratio_rows(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Row values of a ratio of means R = mean(a) / mean(d): R + (a_i - R d_i) / mean(d); R = 0 when d is 0."""
    scale = float(np.mean(denominator)) if len(denominator) else 0.0
    if scale == 0.0:
        return np.zeros(len(numerator))
    ratio = float(np.mean(numerator)) / scale
    return ratio + (numerator - ratio * denominator) / scale


def _binary_log_loss(rows: EncodedRows) -> np.ndarray:
    y, clipped = rows.truth, np.clip(rows.output, _EPS, 1 - _EPS)
    return -(y * np.log(clipped) + (1 - y) * np.log(1 - clipped))


def _binary_brier(rows: EncodedRows) -> np.ndarray:
    return (rows.output - rows.truth) ** 2


# multiclass: class codes in, the scikit-learn definitions (macro-F1 over the labels present in y or predicted)


def _multiclass_correct(rows: EncodedRows) -> np.ndarray:
    return rows.output == rows.truth


def _multiclass_log_loss(rows: EncodedRows) -> np.ndarray:
    if rows.probabilities is None:
        raise ValueError("multiclass log_loss needs class probabilities; these predictions are labels only")
    chosen = rows.probabilities[np.arange(len(rows)), rows.truth]
    return -np.log(np.clip(chosen, _EPS, 1 - _EPS))


def _class_counts(rows: EncodedRows) -> np.ndarray:
    """Per-row one-hot (actual class, predicted class, true positive), shape (n, 3k)."""
    k = len(rows.classes)
    actual = np.zeros((len(rows), k))
    actual[np.arange(len(rows)), rows.truth] = 1.0
    predicted = np.zeros((len(rows), k))
    predicted[np.arange(len(rows)), rows.output] = 1.0
    return np.hstack([actual, predicted, actual * predicted])


def _macro_f1_of_sums(sums: np.ndarray, k: int) -> np.ndarray:
    """Macro-F1 from summed (actual, predicted, true positive) counts, shape (m, 3k) -> (m,)."""
    denominator = sums[:, :k] + sums[:, k : 2 * k]
    present = denominator > 0
    per_class = _safe_ratio(2.0 * sums[:, 2 * k :], denominator, 0.0)
    return _safe_ratio(per_class.sum(axis=1), present.sum(axis=1).astype(np.float64), math.nan)


def _macro_f1(rows: EncodedRows) -> float:
    k = len(rows.classes)
    actual = np.bincount(rows.truth, minlength=k)
    predicted = np.bincount(rows.output, minlength=k)
    hits = np.bincount(rows.truth[rows.truth == rows.output], minlength=k)
    sums = np.concatenate([actual, predicted, hits]).astype(np.float64)[None, :]
    return float(_macro_f1_of_sums(sums, k)[0])


def _macro_f1_rows(rows: EncodedRows) -> np.ndarray:
    k = len(rows.classes)
    counts = _class_counts(rows)
    numerator, denominator = 2.0 * counts[:, 2 * k :], counts[:, :k] + counts[:, k : 2 * k]
    present = denominator.sum(axis=0) > 0
    if not present.any():
        return np.full(len(rows), np.nan)
    per_class = np.column_stack(
        [_ratio_rows(numerator[:, c], denominator[:, c]) for c in np.flatnonzero(present)]
    )
    return per_class.mean(axis=1)


def _macro_f1_resampler(rows: EncodedRows) -> Resampled:
    k = len(rows.classes)
    counts = _class_counts(rows)

    def resampled(weights: np.ndarray) -> np.ndarray:
        return _macro_f1_of_sums(weights @ counts, k)

    return resampled


# regression


def _squared_error(rows: EncodedRows) -> np.ndarray:
    return (rows.output - rows.truth) ** 2


def _absolute_error(rows: EncodedRows) -> np.ndarray:
    return np.abs(rows.output - rows.truth)


def _rmse(rows: EncodedRows) -> float:
    return float(np.sqrt(np.mean(_squared_error(rows))))


def _rmse_rows(rows: EncodedRows) -> np.ndarray:
    squared = _squared_error(rows)
    root = float(np.sqrt(np.mean(squared)))
    return root + (squared - root**2) / (2 * root) if root > 0 else np.zeros(len(rows))


def _rmse_resampler(rows: EncodedRows) -> Resampled:
    mean_squared = _weighted_mean(_squared_error(rows))
    return lambda weights: np.sqrt(mean_squared(weights))


def _r2(rows: EncodedRows) -> float:
    y = rows.truth
    total = float(np.sum((y - np.mean(y)) ** 2)) if len(y) else 0.0
    return 1.0 - float(np.sum(_squared_error(rows))) / total if total > 0 else math.nan


def _r2_rows(rows: EncodedRows) -> np.ndarray:
    y = rows.truth
    squared = _squared_error(rows)
    spread = (y - np.mean(y)) ** 2
    residual, total = float(np.mean(squared)), float(np.mean(spread))
    if total == 0.0:
        return np.full(len(rows), np.nan)
    r2 = 1.0 - residual / total
    return r2 - (squared - residual) / total + residual * (spread - total) / total**2


def _r2_resampler(rows: EncodedRows) -> Resampled:
    # centred on the full-sample mean so the weighted sum of squares does not lose digits to cancellation
    centred = rows.truth - (np.mean(rows.truth) if len(rows) else 0.0)
    sums = np.column_stack([_squared_error(rows), centred, centred**2])

    def resampled(weights: np.ndarray) -> np.ndarray:
        residual, first, second = (weights @ sums).T
        total = second - first**2 / weights.sum(axis=1)
        # a resample of one distinct target has total ~ 0 up to rounding: R² is undefined there
        total = np.where(total > 1e-12 * second, total, 0.0)
        return 1.0 - _safe_ratio(residual, total, math.nan)

    return resampled


def _recomputed_metric(
    name: str,
    task: Task,
    higher_is_better: bool,
    fn: Callable[[EncodedRows], float],
    row_values: Callable[[EncodedRows], np.ndarray],
    resampler: Callable[[EncodedRows], Resampled],
    probabilities: bool = False,
) -> MetricSpec:
    """A metric that is not a mean of rows: recomputed from its weighted form on every resample."""
    return MetricSpec(
        name=name,
        task=task,
        higher_is_better=higher_is_better,
        fn=fn,
        needs_probabilities=probabilities,
        row_values=row_values,
        resampler=resampler,
        decomposable=False,
    )


_REGISTRY: dict[Task, dict[str, MetricSpec]] = {
    Task.binary: {
        "auc": _recomputed_metric(
            "auc", Task.binary, True, _binary_auc, _binary_auc_rows, _binary_auc_resampler, probabilities=True
        ),
        "accuracy": _mean_metric("accuracy", Task.binary, True, _binary_correct, probabilities=True),
        "f1": _recomputed_metric(
            "f1", Task.binary, True, _binary_f1, _binary_f1_rows, _binary_f1_resampler, probabilities=True
        ),
        "log_loss": _mean_metric("log_loss", Task.binary, False, _binary_log_loss, probabilities=True),
        "brier": _mean_metric("brier", Task.binary, False, _binary_brier, probabilities=True),
    },
    Task.multiclass: {
        "accuracy": _mean_metric("accuracy", Task.multiclass, True, _multiclass_correct),
        "macro_f1": _recomputed_metric(
            "macro_f1", Task.multiclass, True, _macro_f1, _macro_f1_rows, _macro_f1_resampler
        ),
        "log_loss": _mean_metric(
            "log_loss", Task.multiclass, False, _multiclass_log_loss, probabilities=True
        ),
    },
    Task.regression: {
        "rmse": _recomputed_metric("rmse", Task.regression, False, _rmse, _rmse_rows, _rmse_resampler),
        "mae": _mean_metric("mae", Task.regression, False, _absolute_error),
        "r2": _recomputed_metric("r2", Task.regression, True, _r2, _r2_rows, _r2_resampler),
    },
}


def metrics_for(task: Task | str) -> tuple[MetricSpec, ...]:
    """Every metric of ``task``, in report order."""
    return tuple(_REGISTRY[parse_task(task)].values())


def metric_names(task: Task | str) -> tuple[str, ...]:
    """The names of the metrics of ``task``, in report order."""
    return tuple(_REGISTRY[parse_task(task)])


def metric_spec(task: Task | str, name: str) -> MetricSpec:
    """The metric ``name`` of ``task``; a ``ValueError`` listing the task's metrics when it has no such metric."""
    task = parse_task(task)
    spec = _REGISTRY[task].get(name)
    if spec is None:
        raise ValueError(
            f"task '{task}' has no metric '{name}'; its metrics are: {', '.join(_REGISTRY[task])}"
        )
    return spec


def _usable_spec(task: Task, metric: str, predictions: Iterable[Predictions]) -> MetricSpec:
    spec = metric_spec(task, metric)
    if spec.needs_probabilities and not all(p.has_probabilities for p in predictions):
        raise ValueError(
            f"metric '{metric}' of task '{task}' needs class probabilities; the model gave labels only"
        )
    return spec


def compute_metrics(task: Task | str, y: Any, predictions: Predictions) -> dict[str, float]:
    """Every metric of the task the predictions allow, plus ``rows`` and the task's label statistics.

    A metric that needs probabilities is absent when the model gave labels only. The extras are
    ``positive_rate`` (binary), ``label_classes`` and ``majority_rate`` (multiclass), ``label_mean`` and
    ``label_std`` (regression). On no rows every value is NaN; ``rows`` is 0.
    """
    rows = encode_rows(task, y, predictions)
    values = {
        spec.name: spec.fn(rows) if len(rows) else math.nan
        for spec in metrics_for(rows.task)
        if predictions.has_probabilities or not spec.needs_probabilities
    }
    values["rows"] = float(len(rows))
    values.update(_label_statistics(rows))
    return values


def _label_statistics(rows: EncodedRows) -> dict[str, float]:
    empty = len(rows) == 0
    if rows.task == Task.binary:
        return {"positive_rate": math.nan if empty else float(np.mean(rows.truth))}
    if rows.task == Task.multiclass:
        counts = np.bincount(rows.truth, minlength=len(rows.classes))
        return {
            "label_classes": float(np.count_nonzero(counts)),
            "majority_rate": math.nan if empty else float(counts.max() / len(rows)),
        }
    return {
        "label_mean": math.nan if empty else float(np.mean(rows.truth)),
        "label_std": math.nan if empty else float(np.std(rows.truth)),
    }


def row_losses(task: Task | str, metric: str, y: Any, predictions: Predictions) -> np.ndarray:
    """One value per row whose mean is the metric, in the metric's own direction (not sign-flipped).

    For a mean metric (accuracy, log_loss, brier, mae) this is the per-row loss (for accuracy, 1 when
    right), so the mean over any resample is the metric on it. For AUC, F1, macro-F1, RMSE and R², which
    are not means of rows, it is the metric plus each row's first-order influence: the mean is exactly the
    metric on these rows and the spread gives the delta-method error, but a resample's mean is only an
    approximation, which is why :func:`paired_bootstrap` recomputes those metrics on every resample.
    """
    task = parse_task(task)
    spec = _usable_spec(task, metric, (predictions,))
    return spec.row_values(encode_rows(task, y, predictions))


# -- paired bootstrap -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairedBootstrap:
    """A paired comparison on the same rows: both values and (candidate - champion), positive = better."""

    metric: str
    candidate: float
    champion: float
    delta: float
    ci_low: float
    ci_high: float
    resamples: int

    def to_dict(self) -> dict[str, float]:
        """The numbers the regression gate records (the keys of ``pipeline.gates.paired_bootstrap``)."""
        return {
            "candidate": self.candidate,
            "champion": self.champion,
            "delta": self.delta,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "resamples": float(self.resamples),
        }


def resample_weights(rng: np.random.Generator, rows: int, resamples: int) -> np.ndarray:
    """Bootstrap count matrix (resamples x rows): how often each row is drawn in each resample of ``rows``."""
    index = rng.integers(0, rows, size=(resamples, rows)) + (np.arange(resamples) * rows)[:, None]
    return np.bincount(index.ravel(), minlength=resamples * rows).reshape(resamples, rows).astype(np.float64)


def paired_bootstrap(
    task: Task | str,
    metric: str,
    y: Any,
    candidate: Predictions,
    champion: Predictions,
    samples: int,
    confidence: float,
    seed: int,
) -> PairedBootstrap:
    """Point difference and percentile interval of (candidate - champion), oriented so positive is better.

    Every resample draws n rows with replacement; both models are scored on the same draws and the metric
    is recomputed on each (exactly, from the weighted form: no per-resample loop). Resamples where the
    metric is undefined (AUC on one class, R² on a constant target) are dropped; the number kept is
    ``resamples``. With none kept the interval is NaN, which fails any bound.
    """
    task = parse_task(task)
    spec = _usable_spec(task, metric, (candidate, champion))
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    candidate_rows, champion_rows = encode_rows(task, y, candidate), encode_rows(task, y, champion)
    n = len(candidate_rows)
    if n == 0:
        raise ValueError("the paired bootstrap needs at least one row")
    candidate_resampled, champion_resampled = spec.resampler(candidate_rows), spec.resampler(champion_rows)
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_CELLS // n)
    deltas = np.empty(samples)
    for start in range(0, samples, chunk):
        weights = resample_weights(rng, n, min(chunk, samples - start))
        deltas[start : start + len(weights)] = spec.sign * (
            candidate_resampled(weights) - champion_resampled(weights)
        )
    deltas = deltas[~np.isnan(deltas)]
    alpha = (1 - confidence) / 2
    low, high = (
        (float(np.quantile(deltas, alpha)), float(np.quantile(deltas, 1 - alpha)))
        if len(deltas)
        else (math.nan, math.nan)
    )
    candidate_value, champion_value = spec.fn(candidate_rows), spec.fn(champion_rows)
    return PairedBootstrap(
        metric=spec.name,
        candidate=candidate_value,
        champion=champion_value,
        delta=spec.sign * (candidate_value - champion_value),
        ci_low=low,
        ci_high=high,
        resamples=len(deltas),
    )


# -- label checks ---------------------------------------------------------------------------------------


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(value != value)  # NaN is the one value unequal to itself
    except TypeError:  # pandas.NA refuses to be a truth value: it is a missing marker
        return True


def _label_kind(values: np.ndarray) -> tuple[str, np.ndarray]:
    """The labels' kind (boolean, integer, float, string, mixed, other) and the mask of missing ones."""
    kind = values.dtype.kind
    none_missing = np.zeros(len(values), dtype=bool)
    if kind == "b":
        return "boolean", none_missing
    if kind in "iu":
        return "integer", none_missing
    if kind == "f":
        return "float", np.isnan(values)
    if kind in "US":
        return "string", none_missing
    if kind != "O":
        return "other", none_missing
    missing = np.fromiter((_is_missing(v) for v in values), dtype=bool, count=len(values))
    kinds = {_scalar_kind(type(v)) for v in values[~missing]}
    if kinds <= {"integer", "float"} and "float" in kinds:
        return "float", missing
    if len(kinds) == 1:
        return kinds.pop(), missing
    return ("mixed" if kinds else "other"), missing


def _scalar_kind(kind: type) -> str:
    if issubclass(kind, bool | np.bool_):
        return "boolean"
    if issubclass(kind, numbers.Integral):
        return "integer"
    if issubclass(kind, numbers.Real):
        return "float"
    if issubclass(kind, str):
        return "string"
    return "other"


def _fractional(values: np.ndarray) -> np.ndarray:
    numbers_ = values.astype(np.float64)
    return np.isfinite(numbers_) & (numbers_ != np.floor(numbers_))


def _show(values: np.ndarray) -> str:
    """A few distinct values for a message: ``0.25, 0.5, 0.75 (and 9 more)``."""
    try:
        distinct = list(np.unique(values))
    except TypeError:
        distinct = list(dict.fromkeys(values.tolist()))
    shown = ", ".join(_format(_plain(v)) for v in distinct[:_SHOWN])
    return shown + (f" (and {len(distinct) - _SHOWN} more)" if len(distinct) > _SHOWN else "")


def _format(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def check_labels(task: Task | str, y: Any, column: str = "label") -> list[str]:
    """Every way the label column contradicts the task, one message each (empty when it fits).

    binary: only 0/1 (or booleans), both present. multiclass: integers or strings (floats only when
    whole), at least two classes. regression: finite numbers, more than one distinct value. No label may
    be missing. Each message names the task and the column and quotes a few offending values.
    """
    task = parse_task(task)
    values = np.asarray(y)
    where = f"task '{task}', label column '{column}'"
    if values.ndim != 1:
        return [f"{where}: labels must be one column, got shape {values.shape}"]
    if len(values) == 0:
        return [f"{where}: there are no labels"]
    kind, missing = _label_kind(values)
    problems = [f"{where}: {int(missing.sum())} label(s) are missing"] if missing.any() else []
    present = values[~missing]
    if len(present):
        problems += _LABEL_CHECKS[task](present, kind, where)
    return problems


def _binary_label_problems(values: np.ndarray, kind: str, where: str) -> list[str]:
    if kind not in ("boolean", "integer", "float"):
        return [f"{where}: labels must be 0/1 or booleans, found {kind} values {_show(values)}"]
    numbers_ = values.astype(np.float64)
    outside = ~np.isin(numbers_, (0.0, 1.0))
    if outside.any():
        hint = (
            "; fractional labels suggest task 'regression'"
            if _fractional(values).any()
            else "; more than two classes suggest task 'multiclass'"
        )
        return [
            f"{where}: labels must be 0/1 or booleans, found {_show(values[outside])} "
            f"in {int(outside.sum())} row(s){hint}"
        ]
    if len(np.unique(numbers_)) < 2:
        return [f"{where}: only one class ({_show(values[:1])}) is present; a binary task needs both 0 and 1"]
    return []


def _multiclass_label_problems(values: np.ndarray, kind: str, where: str) -> list[str]:
    if kind in ("mixed", "other"):
        return [f"{where}: labels must be integers or strings, found {kind} values {_show(values)}"]
    if kind == "float":
        numbers_ = values.astype(np.float64)
        bad = ~np.isfinite(numbers_) | _fractional(values)
        if bad.any():
            return [
                f"{where}: labels must be integers or strings, found fractional or infinite values "
                f"{_show(values[bad])} in {int(bad.sum())} row(s); a continuous target is task 'regression'"
            ]
    distinct = np.unique(values)
    if len(distinct) < 2:
        return [
            f"{where}: only one class ({_show(distinct)}) is present; a multiclass task needs at least two"
        ]
    return []


def _regression_label_problems(values: np.ndarray, kind: str, where: str) -> list[str]:
    if kind not in ("integer", "float"):
        hint = "; 0/1 labels are task 'binary'" if kind == "boolean" else ""
        return [f"{where}: labels must be numbers, found {kind} values {_show(values)}{hint}"]
    numbers_ = values.astype(np.float64)
    infinite = ~np.isfinite(numbers_)
    if infinite.any():
        return [
            f"{where}: labels must be finite, found {_show(values[infinite])} in {int(infinite.sum())} row(s)"
        ]
    if len(np.unique(numbers_)) < 2:
        return [
            f"{where}: the target is constant (every row is {_show(values[:1])}); "
            "a regression target needs more than one distinct value"
        ]
    return []


_LABEL_CHECKS: dict[Task, Callable[[np.ndarray, str, str], list[str]]] = {
    Task.binary: _binary_label_problems,
    Task.multiclass: _multiclass_label_problems,
    Task.regression: _regression_label_problems,
}


# -- divergence between two versions' outputs -------------------------------------------------------------


def mean_probability_shift(champion: np.ndarray, candidate: np.ndarray) -> float:
    """Binary: the candidate's mean P(positive) minus the champion's (signed; NaN when either is empty).

    The rows need not be the same (each version may have answered different requests).
    """
    champion, candidate = np.asarray(champion, dtype=np.float64), np.asarray(candidate, dtype=np.float64)
    if champion.size == 0 or candidate.size == 0:
        return math.nan
    return float(np.mean(candidate) - np.mean(champion))


def class_share_distance(champion: np.ndarray, candidate: np.ndarray) -> float:
    """Multiclass: total-variation distance between the two versions' shares of predicted classes.

    Half the sum over classes of |candidate share - champion share|: 0 when both predict each class
    equally often, 1 when they never predict the same class. Takes hard labels (``Predictions.labels``);
    the rows need not be the same. NaN when either is empty.
    """
    champion, candidate = np.asarray(champion), np.asarray(candidate)
    if champion.size == 0 or candidate.size == 0:
        return math.nan
    index: dict[Any, int] = {}
    champion_codes = _encode_labels(champion, index, extend=True, what="champion labels")
    candidate_codes = _encode_labels(candidate, index, extend=True, what="candidate labels")
    champion_share = np.bincount(champion_codes, minlength=len(index)) / champion.size
    candidate_share = np.bincount(candidate_codes, minlength=len(index)) / candidate.size
    return float(0.5 * np.abs(candidate_share - champion_share).sum())


def disagreement_rate(champion: np.ndarray, candidate: np.ndarray) -> float:
    """Multiclass (any hard labels): the share of rows where the two versions predict different labels.

    The two arrays must score the same rows (shadow traffic, the held-out set); NaN when empty.
    """
    champion, candidate = np.asarray(champion), np.asarray(candidate)
    if champion.shape != candidate.shape:
        raise ValueError(
            f"disagreement needs the same rows, got shapes {champion.shape} and {candidate.shape}"
        )
    return float(np.mean(champion != candidate)) if champion.size else math.nan


def standardised_mean_shift(champion: np.ndarray, candidate: np.ndarray) -> float:
    """Regression: (candidate mean - champion mean) / champion standard deviation, signed.

    Scale-free, so one bound serves any target. A constant champion gives 0 when the means are equal and
    an infinite shift otherwise; NaN when either is empty. The rows need not be the same.
    """
    champion, candidate = np.asarray(champion, dtype=np.float64), np.asarray(candidate, dtype=np.float64)
    if champion.size == 0 or candidate.size == 0:
        return math.nan
    difference = float(np.mean(candidate) - np.mean(champion))
    spread = float(np.std(champion))
    if spread == 0.0:
        return 0.0 if difference == 0.0 else math.copysign(math.inf, difference)
    return difference / spread
