"""Task types core: predictions, metrics per task, label checks, the paired bootstrap, divergence."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as sk

from pipeline.tasks import (
    Predictions,
    Task,
    check_labels,
    class_share_distance,
    compute_metrics,
    disagreement_rate,
    encode_rows,
    mean_probability_shift,
    metric_names,
    metric_spec,
    metrics_for,
    paired_bootstrap,
    parse_task,
    resample_weights,
    row_losses,
    standardised_mean_shift,
)


def bootstrap_tuple(*args: object) -> tuple[float, float, float]:
    """(delta, ci_low, ci_high) of ``paired_bootstrap``: positive means the candidate is better."""
    result = paired_bootstrap(*args)  # type: ignore[arg-type]
    return result.delta, result.ci_low, result.ci_high


CLASSES = ("c", "a", "b")  # deliberately not sorted: columns follow this order, labels are strings


def make_labels(task: Task, n: int, seed: int) -> np.ndarray:
    """True labels of ``task``: 0/1 at a 30% base rate, three string classes, or a N(5, 2) target."""
    rng = np.random.default_rng(seed)
    if task == Task.binary:
        return (rng.random(n) < 0.3).astype(float)
    if task == Task.multiclass:
        return rng.choice(np.array(CLASSES), n)
    return rng.normal(5.0, 2.0, n)


def make_predictions(
    task: Task, y: np.ndarray, strength: float, seed: int, probabilities: bool = True
) -> Predictions:
    """A model whose quality grows with ``strength``; models of equal strength are exchangeable."""
    rng = np.random.default_rng(seed)
    n = len(y)
    if task == Task.binary:
        return Predictions(task, 1 / (1 + np.exp(-(strength * 4 * (y - 0.3) + rng.normal(0, 1, n)))))
    if task == Task.multiclass:
        onehot = (y[:, None] == np.array(CLASSES)[None, :]).astype(float)
        logits = strength * 2.5 * onehot + rng.normal(0, 1, (n, len(CLASSES)))
        matrix = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        scored = Predictions(task, matrix, CLASSES)
        return scored if probabilities else Predictions(task, scored.labels)
    return Predictions(task, y + rng.normal(0, 0.5 / strength, n))


# every (task, metric, model gives probabilities) combination a gate can use
CASES = [
    *[(Task.binary, name, True) for name in metric_names(Task.binary)],
    *[(Task.multiclass, name, True) for name in metric_names(Task.multiclass)],
    (Task.multiclass, "accuracy", False),
    (Task.multiclass, "macro_f1", False),
    *[(Task.regression, name, True) for name in metric_names(Task.regression)],
]
CASE_IDS = [f"{task}-{name}{'' if probabilities else '-labels'}" for task, name, probabilities in CASES]


# -- metrics --------------------------------------------------------------------------------------------


def test_binary_metrics_equal_the_numbers_the_evaluate_stage_gave_before_tasks() -> None:
    # Given the seeded case whose metrics the binary-only evaluate stage (ae70981) computed,
    rng = np.random.default_rng(7)
    y = (rng.random(1000) < 0.3).astype(float)
    p = np.clip(0.3 + 0.4 * (y - 0.3) + rng.normal(0, 0.2, 1000), 0, 1)
    p[:200] = np.round(p[:200], 1)
    # when the task core computes them,
    ours = compute_metrics(Task.binary, y, Predictions(Task.binary, p))
    # then every number is what it was, so gates and histories keep their meaning.
    before = {
        "auc": 0.9247101071205306,
        "accuracy": 0.862,
        "f1": 0.7553191489361702,
        "log_loss": 0.35659824563507675,
        "brier": 0.11258072348656162,
        "rows": 1000.0,
        "positive_rate": 0.307,
    }
    assert ours == pytest.approx(before, rel=1e-12), f"binary metrics changed: {ours} vs {before}"


def test_multiclass_metrics_on_a_hand_computed_case() -> None:
    # Given six rows over three classes, four predicted right,
    y = np.array(["a", "a", "b", "b", "c", "c"])
    matrix = np.array(
        [[0.7, 0.2, 0.1], [0.4, 0.5, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.1, 0.1, 0.8], [0.3, 0.1, 0.6]]
    )
    predictions = Predictions(Task.multiclass, matrix, ("a", "b", "c"))
    # when the metrics are computed,
    values = compute_metrics(Task.multiclass, y, predictions)
    # then they match the hand computation: F1 per class a 2/3, b 1/2, c 4/5.
    expected_log_loss = -np.mean(np.log([0.7, 0.4, 0.8, 0.2, 0.8, 0.6]))
    assert values["accuracy"] == pytest.approx(4 / 6), f"accuracy {values['accuracy']}, expected 4/6"
    assert values["macro_f1"] == pytest.approx(59 / 90), f"macro-F1 {values['macro_f1']}, expected 59/90"
    assert values["log_loss"] == pytest.approx(expected_log_loss), f"log loss {values['log_loss']}"
    assert values["rows"] == 6 and values["label_classes"] == 3, f"extras wrong: {values}"
    assert values["majority_rate"] == pytest.approx(1 / 3), f"majority rate {values['majority_rate']}"


def test_multiclass_metrics_match_scikit_learn() -> None:
    # Given string labels and probabilities whose columns are not in sorted label order,
    y = make_labels(Task.multiclass, 2_000, 3)
    predictions = make_predictions(Task.multiclass, y, 0.7, 4)
    order = [CLASSES.index(label) for label in sorted(CLASSES)]
    # when the metrics are computed from probabilities and from the hard labels alone,
    values = compute_metrics(Task.multiclass, y, predictions)
    hard = compute_metrics(Task.multiclass, y, Predictions(Task.multiclass, predictions.labels))
    # then they agree with scikit-learn, and log loss is absent without probabilities.
    labels = predictions.labels
    assert values["accuracy"] == pytest.approx(sk.accuracy_score(y, labels)), "accuracy differs from sklearn"
    assert values["macro_f1"] == pytest.approx(sk.f1_score(y, labels, average="macro")), "macro-F1 differs"
    oracle = sk.log_loss(y, predictions.values[:, order], labels=sorted(CLASSES))
    assert values["log_loss"] == pytest.approx(oracle, rel=1e-9), f"log loss {values['log_loss']} vs {oracle}"
    assert "log_loss" not in hard, f"log loss needs probabilities, yet labels-only metrics hold it: {hard}"
    assert hard["macro_f1"] == pytest.approx(values["macro_f1"]), (
        "hard labels give the same macro-F1 as their argmax"
    )


def test_macro_f1_counts_a_class_that_is_only_predicted() -> None:
    # Given labels-only predictions that invent a class absent from the truth,
    y = np.array([1, 1, 2, 2, 2])
    predicted = np.array([1, 3, 2, 2, 1])
    # when macro-F1 is computed,
    value = compute_metrics(Task.multiclass, y, Predictions(Task.multiclass, predicted))["macro_f1"]
    # then it averages over the labels present in either, as scikit-learn does.
    oracle = sk.f1_score(y, predicted, average="macro")
    assert value == pytest.approx(oracle), f"macro-F1 {value} vs sklearn {oracle}"


def test_regression_metrics_match_scikit_learn() -> None:
    # Given a numeric target and predictions,
    y = make_labels(Task.regression, 2_000, 5)
    predictions = make_predictions(Task.regression, y, 0.5, 6)
    # when the metrics are computed,
    values = compute_metrics(Task.regression, y, predictions)
    # then they agree with scikit-learn, with the label statistics alongside.
    yhat = predictions.values
    assert values["rmse"] == pytest.approx(np.sqrt(sk.mean_squared_error(y, yhat))), "rmse differs"
    assert values["mae"] == pytest.approx(sk.mean_absolute_error(y, yhat)), "mae differs"
    assert values["r2"] == pytest.approx(sk.r2_score(y, yhat)), "r2 differs"
    assert values["label_mean"] == pytest.approx(np.mean(y)), f"label mean {values['label_mean']}"
    assert values["label_std"] == pytest.approx(np.std(y)), f"label std {values['label_std']}"


def test_directions_and_registry_names() -> None:
    # Given the registry, when each task's metrics are listed,
    directions = {task: {spec.name: spec.higher_is_better for spec in metrics_for(task)} for task in Task}
    # then the names and directions are the issue's.
    assert directions == {
        Task.binary: {"auc": True, "accuracy": True, "f1": True, "log_loss": False, "brier": False},
        Task.multiclass: {"accuracy": True, "macro_f1": True, "log_loss": False},
        Task.regression: {"rmse": False, "mae": False, "r2": True},
    }, f"unexpected registry: {directions}"


def test_a_metric_the_task_does_not_have_is_refused_naming_the_valid_ones() -> None:
    # Given a regression task, when a classification metric is asked for, then the error lists its metrics.
    with pytest.raises(
        ValueError, match=r"task 'regression' has no metric 'auc'; its metrics are: rmse, mae, r2"
    ):
        metric_spec(Task.regression, "auc")
    y = make_labels(Task.regression, 50, 0)
    model = make_predictions(Task.regression, y, 1.0, 0)
    with pytest.raises(ValueError, match="its metrics are: rmse, mae, r2"):
        paired_bootstrap(Task.regression, "f1", y, model, model, 10, 0.9, 0)
    with pytest.raises(ValueError, match="tasks are: binary, multiclass, regression"):
        parse_task("ranking")


def test_log_loss_needs_probabilities() -> None:
    # Given a multiclass model that gives labels only,
    y = make_labels(Task.multiclass, 100, 0)
    labels_only = make_predictions(Task.multiclass, y, 1.0, 0, probabilities=False)
    # when its log loss is asked for row by row or in a bootstrap, then both say why not.
    with pytest.raises(ValueError, match="needs class probabilities"):
        row_losses(Task.multiclass, "log_loss", y, labels_only)
    with pytest.raises(ValueError, match="needs class probabilities"):
        paired_bootstrap(Task.multiclass, "log_loss", y, labels_only, labels_only, 10, 0.9, 0)


def test_labels_outside_the_probability_columns_are_named() -> None:
    # Given probabilities over classes a and b, when a label z is scored, then the error names z.
    predictions = Predictions(Task.multiclass, np.array([[0.5, 0.5], [0.9, 0.1]]), ("a", "b"))
    with pytest.raises(ValueError, match=r"'z' are not among the classes \['a', 'b'\]"):
        compute_metrics(Task.multiclass, np.array(["a", "z"]), predictions)
    with pytest.raises(ValueError, match="predictions are for task 'multiclass', not 'binary'"):
        compute_metrics(Task.binary, np.array([0, 1]), predictions)


def test_slices_and_empty_rows() -> None:
    # Given multiclass predictions, when a slice is taken and when no rows are left,
    y = make_labels(Task.multiclass, 300, 1)
    predictions = make_predictions(Task.multiclass, y, 1.0, 2)
    mask = np.arange(300) % 3 == 0
    sliced = compute_metrics(Task.multiclass, y[mask], predictions.subset(mask))
    direct = compute_metrics(
        Task.multiclass, y[mask], Predictions(Task.multiclass, predictions.values[mask], CLASSES)
    )
    empty = compute_metrics(Task.multiclass, y[:0], predictions.subset(np.arange(0)))
    # then a slice scores like its own rows, and no rows give NaN metrics with a zero count.
    assert sliced == direct, f"slice {sliced} differs from direct {direct}"
    assert empty["rows"] == 0 and all(math.isnan(empty[name]) for name in metric_names(Task.multiclass)), (
        empty
    )


# -- per-row values and the weighted (resampled) forms ----------------------------------------------------


@pytest.mark.parametrize(("task", "metric", "probabilities"), CASES, ids=CASE_IDS)
def test_row_losses_average_to_the_metric(task: Task, metric: str, probabilities: bool) -> None:
    # Given a model's predictions,
    y = make_labels(task, 700, 7)
    predictions = make_predictions(task, y, 0.7, 8, probabilities)
    # when its per-row values are taken,
    values = row_losses(task, metric, y, predictions)
    # then there is one per row and their mean is the metric.
    expected = compute_metrics(task, y, predictions)[metric]
    assert values.shape == (700,), f"one value per row expected, got shape {values.shape}"
    assert np.mean(values) == pytest.approx(expected, rel=1e-9), (
        f"mean {np.mean(values)} vs {metric} {expected}"
    )


@pytest.mark.parametrize(("task", "metric", "probabilities"), CASES, ids=CASE_IDS)
def test_the_weighted_form_recomputes_the_metric_on_a_resample(
    task: Task, metric: str, probabilities: bool
) -> None:
    # Given a model's predictions, some binary scores tied, and three bootstrap resamples,
    y = make_labels(task, 600, 9)
    predictions = make_predictions(task, y, 0.7, 10, probabilities)
    if task == Task.binary:
        predictions = Predictions(task, np.round(predictions.values, 1))
    rows = encode_rows(task, y, predictions)
    spec = metric_spec(task, metric)
    rng = np.random.default_rng(11)
    indexes = rng.integers(0, len(y), (3, len(y)))
    weights = np.stack([np.bincount(index, minlength=len(y)) for index in indexes]).astype(float)
    # when the metric is computed on the repeated rows and from the count matrix,
    direct = [spec.fn(rows.take(index)) for index in indexes]
    weighted = spec.resampler(rows)(weights)
    # then both agree on every resample.
    assert weighted == pytest.approx(direct, rel=1e-9, abs=1e-12), f"weighted {weighted} vs direct {direct}"


def test_resample_weights_count_every_draw() -> None:
    # Given a seeded generator, when a count matrix is drawn, then each resample holds exactly n draws.
    weights = resample_weights(np.random.default_rng(0), 50, 7)
    assert weights.shape == (7, 50), f"shape {weights.shape}"
    assert (weights.sum(axis=1) == 50).all(), f"row sums {weights.sum(axis=1)}"


# -- the paired bootstrap -------------------------------------------------------------------------------


@pytest.mark.parametrize(("task", "metric", "probabilities"), CASES, ids=CASE_IDS)
def test_direction_better_worse_and_identical(task: Task, metric: str, probabilities: bool) -> None:
    # Given a strong and a weak model on the same 2000 rows,
    y = make_labels(task, 2_000, 12)
    strong = make_predictions(task, y, 1.0, 13, probabilities)
    weak = make_predictions(task, y, 0.5, 14, probabilities)
    # when each is the candidate against the other, and against itself,
    better = bootstrap_tuple(task, metric, y, strong, weak, 400, 0.95, 0)
    worse = bootstrap_tuple(task, metric, y, weak, strong, 400, 0.95, 0)
    same = bootstrap_tuple(task, metric, y, strong, strong, 400, 0.95, 0)
    # then better is positive with its interval above 0, worse wholly below 0, and identical exactly 0
    # (on every resample: both models are scored on the same draws).
    assert better[0] > 0 and better[1] > 0, f"{metric}: better candidate gave (delta, low, high) = {better}"
    assert worse[0] < 0 and worse[2] < 0, f"{metric}: worse candidate gave (delta, low, high) = {worse}"
    assert same == (0.0, 0.0, 0.0), f"{metric}: identical models gave {same}"


COVERAGE_CASES = [
    (Task.binary, "auc"),
    (Task.binary, "log_loss"),
    (Task.binary, "f1"),
    (Task.multiclass, "macro_f1"),
    (Task.regression, "rmse"),
    (Task.regression, "r2"),
]


@pytest.mark.parametrize(("task", "metric"), COVERAGE_CASES, ids=[f"{t}-{m}" for t, m in COVERAGE_CASES])
def test_equal_models_are_covered_on_both_sides(task: Task, metric: str) -> None:
    # Given 250 data sets of 400 rows, each scored by two exchangeable models (true difference 0),
    confidence, replications = 0.9, 250
    lows, highs = [], []
    for replication in range(replications):
        y = make_labels(task, 400, 1_000 + replication)
        candidate = make_predictions(task, y, 1.0, 2_000 + replication)
        champion = make_predictions(task, y, 1.0, 3_000 + replication)
        # when the paired bootstrap compares them,
        _, low, high = bootstrap_tuple(task, metric, y, candidate, champion, 300, confidence, replication)
        lows.append(low)
        highs.append(high)
    # then each one-sided bound covers 0 about 1 - (1 - confidence) / 2 of the time, on each side alike
    # (loose bounds: 250 replications give a standard error of ~0.014; a percentile interval runs a bit narrow).
    target = 1 - (1 - confidence) / 2
    low_coverage = float(np.mean(np.array(lows) <= 0))
    high_coverage = float(np.mean(np.array(highs) >= 0))
    assert target - 0.08 <= low_coverage <= target + 0.04, f"{metric}: low bound <= 0 in {low_coverage:.3f}"
    assert target - 0.08 <= high_coverage <= target + 0.04, (
        f"{metric}: high bound >= 0 in {high_coverage:.3f}"
    )


@pytest.mark.parametrize("metric", metric_names(Task.binary))
def test_binary_bootstrap_reproduces_todays_gate(metric: str) -> None:
    # Given the regression gate's own bootstrap and the same seed on an even number of rows
    # (numpy then draws a (resamples, n) index matrix as the same numbers as n-row draws one by one),
    y = make_labels(Task.binary, 1_000, 15)
    candidate = make_predictions(Task.binary, y, 0.9, 16)
    champion = make_predictions(Task.binary, y, 1.0, 17)
    # when both compare the models,
    ours = paired_bootstrap(Task.binary, metric, y, candidate, champion, 300, 0.9, 4).to_dict()
    theirs = loop_bootstrap(y, candidate.values, champion.values, metric, 300, 0.9, 4)
    # then the numbers agree, so wiring the task core into the gate changes no binary decision.
    assert ours == pytest.approx(theirs, rel=1e-9, abs=1e-12), f"tasks {ours} vs the loop {theirs}"


def loop_bootstrap(
    y: np.ndarray,
    candidate: np.ndarray,
    champion: np.ndarray,
    metric: str,
    samples: int,
    confidence: float,
    seed: int,
) -> dict[str, float]:
    """The regression gate's bootstrap before the task core (ae70981): one resample at a time, in a loop."""

    def value(index: np.ndarray, p: np.ndarray) -> float:
        return compute_metrics(Task.binary, y[index], Predictions(Task.binary, p[index]))[metric]

    sign = -1.0 if metric in ("log_loss", "brier") else 1.0
    rng, n, everything = np.random.default_rng(seed), len(y), np.arange(len(y))
    deltas = np.array(
        [
            sign * (value(index, candidate) - value(index, champion))
            for index in (rng.integers(0, n, n) for _ in range(samples))
        ]
    )
    deltas = deltas[~np.isnan(deltas)]
    alpha = (1 - confidence) / 2
    return {
        "candidate": value(everything, candidate),
        "champion": value(everything, champion),
        "delta": sign * (value(everything, candidate) - value(everything, champion)),
        "ci_low": float(np.quantile(deltas, alpha)),
        "ci_high": float(np.quantile(deltas, 1 - alpha)),
        "resamples": float(len(deltas)),
    }


def test_bootstrap_is_reproducible_and_drops_undefined_resamples() -> None:
    # Given two binary models,
    y = make_labels(Task.binary, 500, 18)
    candidate, champion = make_predictions(Task.binary, y, 1.0, 19), make_predictions(Task.binary, y, 1.0, 20)
    # when the bootstrap runs twice with one seed and once with another,
    first = paired_bootstrap(Task.binary, "auc", y, candidate, champion, 200, 0.95, 1)
    again = paired_bootstrap(Task.binary, "auc", y, candidate, champion, 200, 0.95, 1)
    other = paired_bootstrap(Task.binary, "auc", y, candidate, champion, 200, 0.95, 2)
    # then one seed gives one answer and another seed another,
    assert first == again, f"same seed, different answers: {first} vs {again}"
    assert first.ci_low != other.ci_low, "a different seed should draw different resamples"
    # and on labels of one class AUC is undefined everywhere: no resample kept, a NaN interval.
    ones = np.ones(40)
    flat = paired_bootstrap(
        Task.binary, "auc", ones, candidate.subset(np.arange(40)), champion.subset(np.arange(40)), 50, 0.9, 0
    )
    assert flat.resamples == 0 and math.isnan(flat.ci_low), f"one-class AUC should give no interval: {flat}"


def test_bootstrap_refuses_bad_arguments() -> None:
    # Given a model, when the bootstrap is asked nonsense, then it says what is wrong.
    y = make_labels(Task.regression, 20, 0)
    model = make_predictions(Task.regression, y, 1.0, 0)
    with pytest.raises(ValueError, match="samples must be at least 1"):
        paired_bootstrap(Task.regression, "mae", y, model, model, 0, 0.9, 0)
    with pytest.raises(ValueError, match="confidence must be between 0 and 1"):
        paired_bootstrap(Task.regression, "mae", y, model, model, 10, 1.5, 0)
    with pytest.raises(ValueError, match="give one label per row"):
        paired_bootstrap(Task.regression, "mae", y[:10], model, model, 10, 0.9, 0)


# -- label checks ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "labels", "fragments"),
    [
        (
            Task.binary,
            [0.2, 0.7, 0.5, 0.9],
            ["task 'binary'", "0.2, 0.5, 0.7, 0.9", "suggest task 'regression'"],
        ),
        (Task.binary, [1, 1, 1], ["task 'binary'", "only one class (1)"]),
        (Task.binary, ["yes", "no"], ["task 'binary'", "0/1 or booleans", "'no', 'yes'"]),
        (Task.binary, [0, 1, 2, 3], ["task 'binary'", "2, 3", "suggest task 'multiclass'"]),
        (
            Task.multiclass,
            [0, 1, 1.5, 2.25],
            ["task 'multiclass'", "fractional", "1.5, 2.25", "'regression'"],
        ),
        (Task.multiclass, ["a", "a"], ["task 'multiclass'", "only one class ('a')", "at least two"]),
        (Task.multiclass, np.array([1, "a"], dtype=object), ["task 'multiclass'", "mixed"]),
        (
            Task.multiclass,
            np.array(["a", None, "b"], dtype=object),
            ["task 'multiclass'", "1 label(s) are missing"],
        ),
        (Task.regression, [3.5, 3.5, 3.5], ["task 'regression'", "constant", "every row is 3.5"]),
        (Task.regression, ["1.0", "2.0"], ["task 'regression'", "must be numbers", "'1.0'"]),
        (Task.regression, [1.0, np.inf], ["task 'regression'", "finite", "inf"]),
        (Task.regression, [True, False], ["task 'regression'", "boolean", "task 'binary'"]),
    ],
    ids=[
        "binary-floats",
        "binary-one-class",
        "binary-strings",
        "binary-many-classes",
        "multiclass-fractions",
        "multiclass-one-class",
        "multiclass-mixed",
        "multiclass-missing",
        "regression-constant",
        "regression-strings",
        "regression-infinite",
        "regression-booleans",
    ],
)
def test_labels_that_contradict_the_task_are_named(task: Task, labels: list, fragments: list[str]) -> None:
    # Given labels that do not fit the task, when they are checked against the column 'target',
    problems = check_labels(task, labels, column="target")
    # then one message names the task and the column and quotes the offending values.
    assert problems, f"{task}: {labels} should be refused"
    message = " | ".join(problems)
    assert "label column 'target'" in message, f"the column is not named: {message}"
    for fragment in fragments:
        assert fragment in message, f"expected {fragment!r} in: {message}"


@pytest.mark.parametrize(
    ("task", "labels"),
    [
        (Task.binary, [0, 1, 1]),
        (Task.binary, [True, False]),
        (Task.binary, [0.0, 1.0]),
        (Task.multiclass, ["cat", "dog", "fox"]),
        (Task.multiclass, [0.0, 1.0, 2.0]),
        (Task.multiclass, [True, False]),
        (Task.regression, [1, 2, 2]),
        (Task.regression, [0.5, -1.25]),
    ],
)
def test_labels_that_fit_the_task_pass(task: Task, labels: list) -> None:
    # Given labels that fit, when they are checked, then there is no problem.
    assert check_labels(task, labels) == [], f"{task}: {labels} should pass"


# -- predictions ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "values", "classes", "fragment"),
    [
        (Task.binary, np.full((3, 2), 0.5), (), "got shape (3, 2)"),
        (Task.binary, [0.2, np.nan, 0.4], (), "must be finite; 1 row(s) hold NaN"),
        (Task.binary, [0.2, 1.2], (), "probabilities in [0, 1]; 1 value(s) are not, such as 1.2"),
        (Task.binary, [0.2, 0.8], ("no", "yes"), "take no 'classes'"),
        (Task.multiclass, [[0.5, 0.4, 0.0], [0.2, 0.3, 0.5]], ("a", "b", "c"), "first row 0 sums to 0.9"),
        (Task.multiclass, [[0.5, 0.5], [0.2, 0.8]], ("a", "b", "c"), "2 columns but 'classes' names 3"),
        (Task.multiclass, [[0.5, 0.5], [np.nan, 0.8]], ("a", "b"), "must be finite"),
        (Task.multiclass, np.full((2, 2, 2), 0.5), ("a", "b"), "probabilities (n, k) or labels (n,)"),
        (Task.multiclass, ["a", "z"], ("a", "b"), "'z' are not among the classes"),
        (Task.multiclass, [[0.5, 0.5]], ("a", "a"), "must not repeat a label"),
        (Task.multiclass, [1.0, 1.5], (), "fractional values 1.5"),
        (Task.regression, [1.0, np.inf], (), "must be finite"),
        (Task.regression, [[1.0], [2.0]], (), "must have shape (n,), got shape (2, 1)"),
        (Task.regression, ["1", "2"], (), "must be numbers"),
    ],
)
def test_invalid_predictions_are_refused(task: Task, values: object, classes: tuple, fragment: str) -> None:
    # Given predictions that do not fit the task, when they are built, then the error says what is wrong.
    with pytest.raises(ValueError) as raised:
        Predictions(task, np.asarray(values) if not isinstance(values, list) else values, classes)
    assert fragment in str(raised.value), f"expected {fragment!r} in: {raised.value}"


def test_predictions_own_their_values() -> None:
    # Given an array of probabilities, when predictions are built from it and the array then changes,
    source = np.array([0.2, 0.8])
    predictions = Predictions(Task.binary, source)
    source[0] = 0.9
    # then the predictions keep the values they were given and cannot be written.
    assert predictions.values[0] == 0.2, "predictions should copy their input"
    assert not predictions.values.flags.writeable, "predictions should be read-only"
    assert list(predictions.labels) == [0, 1], f"hard labels at 0.5: {predictions.labels}"


# -- divergence -----------------------------------------------------------------------------------------


def test_divergence_per_task() -> None:
    # Given two versions' outputs, when their divergence is measured, then it is the documented number.
    assert mean_probability_shift(np.array([0.2, 0.4]), np.array([0.5, 0.5])) == pytest.approx(0.2)
    champion_labels, candidate_labels = ["a", "a", "b", "b"], ["a", "b", "b", "b"]
    assert class_share_distance(champion_labels, candidate_labels) == pytest.approx(0.25), (
        "TV of (.5,.5)/(.25,.75)"
    )
    assert class_share_distance(["a"], ["b", "b"]) == 1.0, "no class in common is the largest distance"
    assert disagreement_rate(["a", "b", "c", "a"], ["a", "c", "c", "b"]) == 0.5, "two of four rows differ"
    assert standardised_mean_shift(np.array([1.0, 3.0]), np.array([4.0, 4.0])) == pytest.approx(2.0)
    assert standardised_mean_shift(np.array([2.0, 2.0]), np.array([3.0])) == math.inf, "constant champion"
    assert math.isnan(mean_probability_shift(np.array([]), np.array([0.5]))), "no rows: undefined"
    with pytest.raises(ValueError, match="the same rows"):
        disagreement_rate(["a", "b"], ["a"])


@pytest.mark.parametrize("task", list(Task))
def test_the_registry_matches_the_shared_vocabulary(task: Task) -> None:
    from contracts.vocabulary import DEFAULT_METRIC, LOWER_IS_BETTER, TASK_METRICS

    # Given the metrics the config validates against and the ones this module computes,
    names = metric_names(task)
    # then they are the same, in the same order, with the same directions, and the default is one of them.
    assert names == TASK_METRICS[task], f"{task}: computed {names}, declared {TASK_METRICS[task]}"
    for spec in metrics_for(task):
        assert spec.higher_is_better == (spec.name not in LOWER_IS_BETTER), f"{task}.{spec.name}: direction"
    assert DEFAULT_METRIC[task] in names, f"{task}: default metric {DEFAULT_METRIC[task]} is not the task's"
