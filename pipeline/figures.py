"""Every picture Lockgate draws: plain data in, a matplotlib ``Figure`` out (``png``/``svg`` serialise it).

Pure functions, no pyplot and no global state: a ``Figure`` is built directly (Agg canvas), so drawing is
safe in a Ray worker, a thread or a test. matplotlib is imported only when a figure is drawn, which keeps
``lockgate validate`` and the other light commands free of it.

Conventions every figure follows, so that a picture reads the same wherever it appears:

- the title says what is shown; one metric per axis (small multiples when there are several);
- candidate is orange, champion blue; a pass is green, a failure red;
- time axes are wall-clock UTC.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from contracts.vocabulary import LOWER_IS_BETTER, TASK_METRICS, Role, Task

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from pipeline.events import Event
    from pipeline.history import DriftRow, ServingSample
    from pipeline.tasks import Predictions
    from pipeline.tracking import Tracker

logger = logging.getLogger(__name__)
FIGURES_FOLDER = "figures"

CANDIDATE_COLOUR = "#ff7f0e"
CHAMPION_COLOUR = "#1f77b4"
PASS_COLOUR = "#2ca02c"
FAIL_COLOUR = "#d62728"
NEUTRAL_COLOUR = "#7f7f7f"
# Distinct hues for series without a role (versions, features); colour-blind-safe order (Okabe-Ito first).
PALETTE = (
    "#0072b2",
    "#e69f00",
    "#009e73",
    "#cc79a7",
    "#d55e00",
    "#56b4e9",
    "#000000",
    "#f0e442",
    "#8c564b",
    "#9467bd",
)
MARKER_COLOURS = {"rollout_step": "#9467bd", "promotion": PASS_COLOUR, "rollback": FAIL_COLOUR}


def new_figure(width: float, height: float, rows: int = 1, columns: int = 1, **grid: Any) -> Figure:
    """An empty figure with a grid of axes, drawn with the Agg canvas (no display, no pyplot)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    figure.subplots(rows, columns, squeeze=False, **grid)
    return figure


def png(figure: Figure, dpi: int = 100) -> bytes:
    """The figure as PNG bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def svg(figure: Figure) -> str:
    """The figure as an inline ``<svg>`` element (no XML prologue), for HTML."""
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg")
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def log_figures(tracker: Tracker, draw: Callable[[], Mapping[str, Figure | None]]) -> list[str]:
    """Draw figures and log each as a PNG artefact under ``figures/``; returns the artefact paths logged.

    A drawing that raises is reported and skipped: every number a figure shows is already logged as a
    metric or a JSON artefact, so a picture must never be what fails a run or blocks a model. A tracker
    that fails (MLflow gone) still raises, as for any other artefact.
    """
    try:
        figures = {name: figure for name, figure in draw().items() if figure is not None}
        pictures = {name: png(figure) for name, figure in figures.items()}
    except Exception as error:  # noqa: BLE001 - see the docstring: a picture is never fatal
        logger.warning("figures not drawn: %s: %s", type(error).__name__, error)
        return []
    logged = []
    for name, picture in pictures.items():
        path = f"{FIGURES_FOLDER}/{name}"
        tracker.log_figure(picture, path)
        logged.append(path)
    return logged


def validation_table(report: Mapping[str, Any]) -> dict[str, list[Any]]:
    """The data-validation report (``DataReport.to_dict()``) as a table: one row per column and problem.

    A column without problems has one row saying ``ok``, so the table lists every column the data has.
    """
    table: dict[str, list[Any]] = {"column": [], "status": [], "problem": [], "rows": [], "examples": []}
    problems: dict[str, list[Mapping[str, Any]]] = {}
    for problem in report.get("problems", []):
        problems.setdefault(str(problem["column"]), []).append(problem)
    columns = list(report.get("columns", []))
    columns += [column for column in problems if column not in columns]
    for column in columns:
        for problem in problems.get(column, [None]):  # type: ignore[list-item]
            table["column"].append(column)
            table["status"].append("ok" if problem is None else "problem")
            table["problem"].append("" if problem is None else str(problem["problem"]))
            table["rows"].append(0 if problem is None else int(problem["rows"]))
            table["examples"].append("" if problem is None else ", ".join(map(str, problem["examples"])))
    return table


def _axes(figure: Figure) -> list[Axes]:
    return list(figure.axes)


def _utc(seconds: Iterable[float]) -> list[Any]:  # datetimes: matplotlib plots them, its stubs say float
    return [datetime.fromtimestamp(value, UTC) for value in seconds]


def _time_axis(axes: Axes) -> None:
    import matplotlib.dates as mdates

    low, high = axes.get_xlim()  # in days: one sample would give a zero-width axis the locator cannot tick
    if high - low < 2 / 1440:
        axes.set_xlim(low - 1 / 1440, high + 1 / 1440)
    locator = mdates.AutoDateLocator(minticks=3, maxticks=8)
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=UTC))
    axes.set_xlabel("time (UTC)")


def _finite(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number if math.isfinite(number) else math.nan


# -- the gate decision ----------------------------------------------------------------------------------


def gate_figure(records: Sequence[Mapping[str, Any]]) -> Figure | None:
    """The gate decision: each bootstrap interval of the improvement against ``-tolerance``, and thresholds.

    ``records`` are ``GateDecision.to_dict()`` of one run. The regression gate's intervals are oriented so
    that positive means "candidate better" whatever the metric's direction (an RMSE that rises is a negative
    improvement), so "worse" is always to the left of the dashed ``-tolerance`` line. An interval whose low
    end clears the line passes (green), otherwise it fails (red). Threshold checks are drawn beside it as
    each value against its bound. None when no gate checked anything.
    """
    regression = [r for r in records if r.get("gate") == "regression" and "delta" in r.get("details", {})]
    thresholds = [c for r in records if r.get("gate") == "thresholds" for c in r.get("checks", [])]
    panels = int(bool(regression)) + int(bool(thresholds))
    if panels == 0:
        return None
    rows_needed = sum(1 + len(r["details"].get("slices", {})) for r in regression) + len(thresholds)
    figure = new_figure(8.0, 1.6 + 0.35 * rows_needed, panels, 1)
    panel_axes = iter(_axes(figure))
    for record in regression:
        _draw_intervals(next(panel_axes), record)
    if thresholds:
        _draw_thresholds(next(panel_axes), thresholds, records)
    return figure


def _draw_intervals(axes: Axes, record: Mapping[str, Any]) -> None:
    details = record["details"]
    metric, tolerance = str(details["metric"]), float(details["tolerance"])
    scopes = {"overall": details, **details.get("slices", {})}
    passed = {check["scope"]: bool(check["passed"]) for check in record.get("checks", [])}
    names = list(scopes)
    for index, scope in enumerate(names):
        stats = scopes[scope]
        low, high, delta = _finite(stats["ci_low"]), _finite(stats["ci_high"]), _finite(stats["delta"])
        ok = passed.get(scope, low >= -tolerance)
        colour = PASS_COLOUR if ok else FAIL_COLOUR
        y = len(names) - 1 - index
        axes.plot([low, high], [y, y], color=colour, linewidth=4, solid_capstyle="butt")
        axes.plot([delta], [y], marker="o", color="black", markersize=5)
        axes.annotate(
            f"{'pass' if ok else 'FAIL'}  [{low:+.4f}, {high:+.4f}]",
            (high, y),
            xytext=(6, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
            color=colour,
        )
    axes.axvline(
        -tolerance, color=FAIL_COLOUR, linestyle="--", linewidth=1.2, label=f"-tolerance ({-tolerance:g})"
    )
    axes.axvline(0.0, color=NEUTRAL_COLOUR, linewidth=0.8, label="no change")
    axes.set_yticks(range(len(names)), list(reversed(names)), fontsize=8)
    axes.set_ylim(-0.7, len(names) - 0.3)
    direction = (
        "lower is better: champion − candidate" if metric in LOWER_IS_BETTER else "candidate − champion"
    )
    level = f"{float(details.get('confidence', 0.95)):.0%}"
    axes.set_xlabel(f"improvement in {metric} ({direction}); ← worse | better →")
    champion = details.get("champion_version")
    axes.set_title(
        f"Regression gate ({record.get('mode')}, {record.get('status')}): {level} interval of the improvement "
        f"over champion v{champion}",
        fontsize=9,
        loc="left",
    )
    axes.margins(x=0.35)
    axes.legend(fontsize=7, loc="lower left")


def _draw_thresholds(
    axes: Axes, checks: Sequence[Mapping[str, Any]], records: Sequence[Mapping[str, Any]]
) -> None:
    names = [f"{c['scope']} {c['metric']}" for c in checks]
    for index, check in enumerate(checks):
        y = len(checks) - 1 - index
        colour = PASS_COLOUR if check["passed"] else FAIL_COLOUR
        value = _finite(check["value"])
        axes.plot([value], [y], marker="D", color=colour, markersize=7)
        axes.annotate(
            f"{value:.4f} {'meets' if check['passed'] else 'FAILS'} {check['bound']}",
            (value, y),
            xytext=(8, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
            color=colour,
        )
    axes.set_yticks(range(len(names)), list(reversed(names)), fontsize=8)
    axes.set_ylim(-0.7, len(names) - 0.3)
    axes.margins(x=0.6)
    axes.set_xlabel("metric value")
    record = next(r for r in records if r.get("gate") == "thresholds")
    axes.set_title(f"Threshold gate ({record.get('mode')}, {record.get('status')})", fontsize=9, loc="left")


# -- the rollout timeline -------------------------------------------------------------------------------


@dataclass
class RolloutStep:
    """One weight the candidate held: when it started and ended, and the analysis numbers at its end."""

    weight: float
    started: float
    ended: float | None = None
    numbers: dict[str, float] = field(default_factory=dict)


@dataclass
class RolloutTimeline:
    """One rollout as its events tell it: the candidate, each step, and how it ended (None: still running)."""

    key: str
    model_version: str | None
    steps: list[RolloutStep] = field(default_factory=list)
    outcome: str | None = None
    ended: float | None = None
    reason: str = ""
    breach_weight: float | None = None


def _event_time(event: Event) -> float:
    return datetime.fromisoformat(event.time).timestamp()


def rollout_timelines(events: Iterable[Event]) -> list[RolloutTimeline]:
    """Every rollout in an event stream, from its ``rollout_step`` events to its promotion or rollback.

    A step event holds the weight applied; each step's analysis numbers come from the ending event
    (``steps`` of a promotion or rollback, or a rollback's ``verdict`` for its last step). Events of one
    rollout share the run id (or, from the CLI, the model version).
    """
    open_rollouts: dict[str, RolloutTimeline] = {}
    done: list[RolloutTimeline] = []
    for event in sorted(events, key=_event_time):
        kind = event.type.value
        if kind not in ("rollout_step", "promotion", "rollback"):
            continue
        key = event.run_id or f"v{event.model_version}"
        at = _event_time(event)
        timeline = open_rollouts.get(key)
        if kind == "rollout_step":
            weight = event.details.get("weight")
            if weight is None:  # a pinned weight: automation yielded, nothing was applied
                continue
            if timeline is None:
                timeline = open_rollouts[key] = RolloutTimeline(key, event.model_version)
            if timeline.steps:
                timeline.steps[-1].ended = at
            timeline.steps.append(RolloutStep(float(weight), at))
            continue
        if timeline is None:
            continue
        del open_rollouts[key]
        timeline.outcome, timeline.ended = kind, at
        timeline.model_version = timeline.model_version or event.model_version
        timeline.reason = event.message
        if timeline.steps:
            timeline.steps[-1].ended = at
        recorded = event.details.get("steps") or []
        for step, numbers in zip(timeline.steps, recorded, strict=False):
            step.numbers = {k: _finite(v) for k, v in numbers.items() if not isinstance(v, (list, str))}
        verdict = event.details.get("verdict")
        if kind == "rollback":
            timeline.breach_weight = _finite(event.details.get("weight"))
            if verdict and timeline.steps:
                timeline.steps[-1].numbers = {k: _finite(v) for k, v in verdict.items()}
        done.append(timeline)
    return done + list(open_rollouts.values())


def rollout_figure(timeline: RolloutTimeline) -> Figure | None:
    """The rollout on one time axis: weight steps, then candidate vs champion error rate, p99, divergence.

    Each step's analysis numbers are plotted at the step's end (when they were judged); divergence carries
    its confidence interval and its bound. A rollback is a red vertical line on every panel, labelled with
    the weight it happened at; a promotion a green one.
    """
    if not timeline.steps:
        return None
    figure = new_figure(8.0, 7.5, 4, 1, sharex=True)
    weight_axes, error_axes, latency_axes, divergence_axes = _axes(figure)
    end = timeline.ended or max(s.ended or s.started for s in timeline.steps)
    times = [s.started for s in timeline.steps] + [end]
    weights = [s.weight for s in timeline.steps]
    weight_axes.step(_utc(times), weights + [weights[-1]], where="post", color=CANDIDATE_COLOUR, linewidth=2)
    weight_axes.set_ylabel("candidate\nweight (%)")
    weight_axes.set_ylim(-5, 105)
    version = f"v{timeline.model_version}" if timeline.model_version else timeline.key
    outcome = {"promotion": "promoted", "rollback": "rolled back"}.get(timeline.outcome or "", "running")
    weight_axes.set_title(f"Rollout of candidate {version}: {outcome}", fontsize=10, loc="left")
    judged = [s for s in timeline.steps if s.numbers]
    at = _utc(s.ended or s.started for s in judged)

    def pair(axes: Axes, name: str, label: str, scale: float = 1.0) -> None:
        # The champion wide and hollow underneath, the candidate dashed on top: equal values (both 0% errors)
        # still show both series.
        wide: dict[str, Any] = {"linewidth": 3.0, "markersize": 9, "markerfacecolor": "none"}
        dashed: dict[str, Any] = {"linestyle": "--", "markersize": 4}
        for role, colour, style in (
            (Role.champion.value, CHAMPION_COLOUR, wide),
            (Role.candidate.value, CANDIDATE_COLOUR, dashed),
        ):
            values = [s.numbers.get(f"{role}_{name}", math.nan) * scale for s in judged]
            axes.plot(at, values, marker="o", color=colour, label=role, **style)
        axes.set_ylabel(label)

    pair(error_axes, "error_rate", "error rate (%)", 100.0)
    error_axes.set_ylim(bottom=0.0)  # a rate is never negative, even when every value is 0
    pair(latency_axes, "p99_s", "p99 latency (s)")
    divergence = [s.numbers.get("prediction_divergence", math.nan) for s in judged]
    low = [s.numbers.get("prediction_divergence_low", math.nan) for s in judged]
    high = [s.numbers.get("prediction_divergence_high", math.nan) for s in judged]
    errors = np.array(
        [
            [
                max(d - lo, 0.0) if math.isfinite(d - lo) else 0.0
                for d, lo in zip(divergence, low, strict=True)
            ],
            [
                max(hi - d, 0.0) if math.isfinite(hi - d) else 0.0
                for d, hi in zip(divergence, high, strict=True)
            ],
        ]
    )
    divergence_axes.errorbar(
        at, divergence, yerr=errors, marker="o", color=CANDIDATE_COLOUR, capsize=4, label="divergence (CI)"
    )
    bounds = {s.numbers.get("prediction_divergence_bound", math.nan) for s in judged}
    bounds = {b for b in bounds if math.isfinite(b)}
    for bound in bounds:
        divergence_axes.axhline(
            bound, color=FAIL_COLOUR, linestyle="--", linewidth=1, label=f"bound {bound:g}"
        )
    if timeline.outcome == "rollback" and judged:
        breached = judged[-1]
        when = _utc([breached.ended or breached.started])
        for axes, name, scale in (
            (error_axes, "candidate_error_rate", 100.0),
            (latency_axes, "candidate_p99_s", 1.0),
            (divergence_axes, "prediction_divergence", 1.0),
        ):
            axes.plot(
                when,
                [breached.numbers.get(name, math.nan) * scale],
                marker="X",
                markersize=11,
                color=FAIL_COLOUR,
                linestyle="none",
                label="breached step",
            )
    divergence_axes.set_ylabel("prediction\ndivergence")
    for axes in (error_axes, latency_axes, divergence_axes):
        axes.legend(fontsize=7, loc="upper left")
    if timeline.outcome in ("promotion", "rollback") and timeline.ended is not None:
        colour = MARKER_COLOURS[timeline.outcome]
        for axes in (weight_axes, error_axes, latency_axes, divergence_axes):
            axes.axvline(_utc([timeline.ended])[0], color=colour, linewidth=1.5)
        label = (
            f"breach at {timeline.breach_weight:g}%: rolled back"
            if timeline.outcome == "rollback"
            and timeline.breach_weight is not None
            and math.isfinite(timeline.breach_weight)
            else "promoted"
            if timeline.outcome == "promotion"
            else "rolled back"
        )
        weight_axes.annotate(
            label,
            (_utc([timeline.ended])[0], 95),
            xytext=(-4, 0),
            textcoords="offset points",
            ha="right",
            va="top",
            color=colour,
            fontsize=8,
        )
    _time_axis(divergence_axes)
    return figure


# -- per-run evaluation figures -------------------------------------------------------------------------


def _roc_points(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(false-positive rate, true-positive rate, recall, precision) at every distinct threshold."""
    order = np.argsort(-p, kind="mergesort")
    y, p = y[order], p[order]
    distinct = np.r_[np.flatnonzero(np.diff(p)), len(p) - 1]
    true_positives = np.cumsum(y)[distinct]
    false_positives = (distinct + 1) - true_positives
    positives, negatives = max(y.sum(), 1), max(len(y) - y.sum(), 1)
    tpr = np.r_[0.0, true_positives / positives]
    fpr = np.r_[0.0, false_positives / negatives]
    precision = true_positives / (true_positives + false_positives)
    recall = true_positives / positives
    return fpr, tpr, np.r_[0.0, recall], np.r_[1.0, precision]


def roc_pr_figure(y: Any, probability: Any) -> Figure:
    """Binary: the ROC curve (with AUC) and the precision-recall curve (with average precision)."""
    y, p = np.asarray(y, dtype="float64"), np.asarray(probability, dtype="float64")
    fpr, tpr, recall, precision = _roc_points(y, p)
    auc = float(np.trapezoid(tpr, fpr))
    average_precision = float(np.sum(np.diff(recall) * precision[1:]))
    figure = new_figure(8.0, 3.6, 1, 2)
    roc, pr = _axes(figure)
    roc.plot(fpr, tpr, color=CANDIDATE_COLOUR, label=f"model (AUC {auc:.3f})")
    roc.plot([0, 1], [0, 1], color=NEUTRAL_COLOUR, linestyle="--", label="chance")
    roc.set(xlabel="false-positive rate", ylabel="true-positive rate", title="ROC")
    roc.legend(fontsize=7, loc="lower right")
    pr.plot(recall, precision, color=CHAMPION_COLOUR, label=f"model (AP {average_precision:.3f})")
    pr.axhline(float(y.mean()) if len(y) else 0.0, color=NEUTRAL_COLOUR, linestyle="--", label="base rate")
    pr.set(xlabel="recall", ylabel="precision", title="Precision-recall", ylim=(0, 1.02))
    pr.legend(fontsize=7, loc="upper right")
    return figure


def calibration_figure(y: Any, probability: Any, bins: int = 10) -> Figure:
    """Binary: observed positive rate against mean predicted probability per bin, with the bins' sizes."""
    y, p = np.asarray(y, dtype="float64"), np.asarray(probability, dtype="float64")
    index = np.clip((p * bins).astype(int), 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    used = counts > 0
    predicted = np.bincount(index, weights=p, minlength=bins)[used] / counts[used]
    observed = np.bincount(index, weights=y, minlength=bins)[used] / counts[used]
    figure = new_figure(5.5, 5.0, 2, 1, height_ratios=(3, 1), sharex=True)
    curve, sizes = _axes(figure)
    curve.plot([0, 1], [0, 1], color=NEUTRAL_COLOUR, linestyle="--", label="perfectly calibrated")
    curve.plot(predicted, observed, marker="o", color=CANDIDATE_COLOUR, label="model")
    curve.set(ylabel="observed positive rate", title="Calibration", xlim=(0, 1), ylim=(0, 1))
    curve.legend(fontsize=7, loc="upper left")
    sizes.bar((np.arange(bins) + 0.5) / bins, counts, width=0.9 / bins, color=CHAMPION_COLOUR)
    sizes.set(xlabel="mean predicted probability", ylabel="rows")
    return figure


def confusion_figure(y: Any, predicted: Any, classes: Sequence[Any] = ()) -> Figure:
    """Multiclass: the confusion matrix, counts and row-normalised shares (true class per row)."""
    y, predicted = np.asarray(y), np.asarray(predicted)
    labels = list(classes) or sorted(set(y.tolist()) | set(predicted.tolist()), key=str)
    position = {label: i for i, label in enumerate(labels)}
    matrix = np.zeros((len(labels), len(labels)), dtype=int)
    for truth, guess in zip(y.tolist(), predicted.tolist(), strict=True):
        if truth in position and guess in position:
            matrix[position[truth], position[guess]] += 1
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = 2.5 + 0.5 * len(labels)
    figure = new_figure(size + 1, size)
    (axes,) = _axes(figure)
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for (row, column), count in np.ndenumerate(matrix):
        axes.text(
            column,
            row,
            f"{count}\n{shares[row, column]:.0%}",
            ha="center",
            va="center",
            fontsize=8,
            color="white" if shares[row, column] > 0.6 else "black",
        )
    names = [str(label) for label in labels]
    axes.set_xticks(range(len(names)), names, rotation=45, ha="right")
    axes.set_yticks(range(len(names)), names)
    axes.set(
        xlabel="predicted class", ylabel="true class", title="Confusion matrix (share of each true class)"
    )
    figure.colorbar(image, ax=axes, shrink=0.8)
    return figure


def residuals_figure(y: Any, predicted: Any) -> Figure:
    """Regression: residual (actual − predicted) against prediction, and the residuals' distribution."""
    y, predicted = np.asarray(y, dtype="float64"), np.asarray(predicted, dtype="float64")
    residual = y - predicted
    figure = new_figure(8.0, 3.6, 1, 2)
    scatter, histogram = _axes(figure)
    scatter.scatter(predicted, residual, s=8, alpha=0.6, color=CANDIDATE_COLOUR)
    scatter.axhline(0.0, color=NEUTRAL_COLOUR, linestyle="--")
    scatter.set(xlabel="predicted", ylabel="residual (actual − predicted)", title="Residuals vs prediction")
    histogram.hist(residual, bins=30, color=CHAMPION_COLOUR)
    histogram.axvline(0.0, color=NEUTRAL_COLOUR, linestyle="--")
    rmse = float(np.sqrt(np.mean(residual**2))) if len(residual) else math.nan
    histogram.set(xlabel="residual", ylabel="rows", title=f"Residual distribution (RMSE {rmse:.3g})")
    return figure


def slice_metrics_figure(evaluation: Mapping[str, Mapping[str, float]], task: Task) -> Figure | None:
    """The task's metrics per slice, one small panel per metric, the overall value as a dashed line.

    Slices are ``column=value`` scopes of the evaluation; their row counts label the bars. None when the
    pipeline declares no slices.
    """
    scopes = [scope for scope in evaluation if scope != "overall"]
    if not scopes:
        return None
    metrics = [
        m for m in TASK_METRICS[task] if any(math.isfinite(_finite(evaluation[s].get(m))) for s in scopes)
    ]
    if not metrics:
        return None
    figure = new_figure(3.0 * len(metrics) + 1.5, 1.2 + 0.3 * len(scopes), 1, len(metrics), sharey=True)
    labels = [f"{scope} (n={int(evaluation[scope].get('rows', 0))})" for scope in scopes]
    for axes, metric in zip(_axes(figure), metrics, strict=True):
        values = [_finite(evaluation[scope].get(metric)) for scope in scopes]
        axes.barh(range(len(scopes)), values, color=PALETTE[0])
        overall = _finite(evaluation.get("overall", {}).get(metric))
        if math.isfinite(overall):
            axes.axvline(
                overall, color=FAIL_COLOUR, linestyle="--", linewidth=1, label=f"overall {overall:.3g}"
            )
            axes.legend(fontsize=7, loc="lower right")
        better = "lower is better" if metric in LOWER_IS_BETTER else "higher is better"
        axes.set_title(f"{metric} ({better})", fontsize=9)
    first = _axes(figure)[0]
    first.set_yticks(range(len(scopes)), labels, fontsize=8)
    first.invert_yaxis()
    return figure


def evaluation_figures(
    task: Task, y: Any, predictions: Predictions, evaluation: Mapping[str, Mapping[str, float]]
) -> dict[str, Figure]:
    """The run's evaluation pictures for its task, by artefact file name.

    binary: ROC/PR and calibration; multiclass: the confusion matrix; regression: residuals; every task:
    metrics per slice (when slices are declared).
    """
    figures: dict[str, Figure | None] = {}
    if task == Task.binary:
        figures["roc_pr.png"] = roc_pr_figure(y, predictions.values)
        figures["calibration.png"] = calibration_figure(y, predictions.values)
    elif task == Task.multiclass:
        figures["confusion_matrix.png"] = confusion_figure(y, predictions.labels, predictions.classes)
    else:
        figures["residuals.png"] = residuals_figure(y, predictions.values)
    figures["slice_metrics.png"] = slice_metrics_figure(evaluation, task)
    return {name: figure for name, figure in figures.items() if figure is not None}


# -- drift ----------------------------------------------------------------------------------------------


def drift_figure(histograms: Sequence[Mapping[str, Any]], title: str = "") -> Figure | None:
    """Reference vs current share per bin for the most-drifted features, one panel each, PSI in the title.

    ``histograms`` are :func:`pipeline.drift.drift_histograms` rows: ``column``, ``score``, ``threshold``,
    ``labels`` (the bins), ``reference`` and ``current`` (shares of rows).
    """
    if not histograms:
        return None
    columns = min(2, len(histograms))
    rows = math.ceil(len(histograms) / columns)
    figure = new_figure(8.0, 2.9 * rows + 0.4, rows, columns)
    panels = _axes(figure)
    for axes, histogram in zip(panels, histograms, strict=False):
        labels = list(histogram["labels"])
        positions = np.arange(len(labels))
        axes.bar(
            positions - 0.2,
            histogram["reference"],
            width=0.4,
            color=CHAMPION_COLOUR,
            label="reference (training)",
        )
        axes.bar(
            positions + 0.2,
            histogram["current"],
            width=0.4,
            color=CANDIDATE_COLOUR,
            label="current (traffic)",
        )
        axes.set_xticks(positions, labels, rotation=45, ha="right", fontsize=6)
        drifted = histogram["score"] >= histogram["threshold"]
        axes.set_title(
            f"{histogram['column']}: PSI {histogram['score']:.3f} (bound {histogram['threshold']:g})",
            fontsize=9,
            color=FAIL_COLOUR if drifted else "black",
        )
        axes.set_ylabel("share of rows")
        axes.legend(fontsize=6)
    for unused in panels[len(histograms) :]:
        unused.set_visible(False)
    if title:
        figure.suptitle(title, fontsize=10)
    return figure


def drift_scores_figure(drift: Sequence[DriftRow], top: int = 6) -> Figure | None:
    """PSI per feature over wall-clock time: the ``top`` features with the highest latest score."""
    if not drift:
        return None
    latest = drift[-1].scores
    features = sorted({f for row in drift for f in row.scores}, key=lambda f: -_finite(latest.get(f, 0.0)))[
        :top
    ]
    figure = new_figure(8.0, 3.4)
    (axes,) = _axes(figure)
    times = _utc(row.time for row in drift)
    for index, feature in enumerate(features):
        axes.plot(
            times,
            [_finite(row.scores.get(feature)) for row in drift],
            marker="o",
            markersize=3,
            color=PALETTE[index % len(PALETTE)],
            label=feature,
        )
    for row, at in zip(drift, times, strict=True):
        if row.drifted:
            axes.axvline(at, color=FAIL_COLOUR, linestyle=":", linewidth=1)
    axes.set_ylabel("PSI")
    axes.legend(fontsize=7, ncol=3)
    _time_axis(axes)
    return figure


# -- the report's time series ---------------------------------------------------------------------------


def version_metrics_figure(versions: Sequence[Mapping[str, Any]], metrics: Sequence[str]) -> Figure | None:
    """Each test metric per registered version, one small panel per metric (each with its own scale)."""
    ordered = sorted(versions, key=lambda row: row["created"])
    shown = [m for m in metrics if any(math.isfinite(_finite(row.get(f"test.{m}"))) for row in ordered)]
    if not ordered or not shown:
        return None
    columns = min(3, len(shown))
    rows = math.ceil(len(shown) / columns)
    figure = new_figure(8.0, 2.3 * rows + 0.3, rows, columns, sharex=True)
    panels = _axes(figure)
    labels = [f"v{row['version']}" for row in ordered]
    for index, (axes, metric) in enumerate(zip(panels, shown, strict=False)):
        axes.plot(
            labels,
            [_finite(row.get(f"test.{metric}")) for row in ordered],
            marker="o",
            color=PALETTE[index % len(PALETTE)],
        )
        better = "lower is better" if metric in LOWER_IS_BETTER else "higher is better"
        axes.set_title(f"{metric} ({better})", fontsize=9)
        axes.tick_params(labelsize=7)
    for unused in panels[len(shown) :]:
        unused.set_visible(False)
    return figure


def lifecycle_markers(events: Iterable[Event]) -> list[tuple[float, str, str]]:
    """(time, kind, label) of every rollout start, promotion and rollback, for time-axis markers.

    A rollout is marked once, at its first step; a promotion or rollback is labelled with its version.
    """
    markers: list[tuple[float, str, str]] = []
    started: set[str] = set()
    for event in sorted(events, key=_event_time):
        kind = event.type.value
        version = f"v{event.model_version}" if event.model_version else ""
        if kind == "rollout_step":
            key = event.run_id or version
            if key in started or event.details.get("weight") is None:
                continue
            started.add(key)
            markers.append((_event_time(event), kind, f"rollout {version}".strip()))
        elif kind in ("promotion", "rollback"):
            started.discard(event.run_id or version)
            markers.append((_event_time(event), kind, f"{kind} {version}".strip()))
    return markers


def serving_figure(
    samples: Sequence[ServingSample],
    events: Iterable[Event] = (),
) -> Figure | None:
    """Throughput, error rate and p99 per version over wall-clock time, with lifecycle markers.

    One line per version that served (markers on every sample, so a version seen once still shows), its
    role in the legend; rollout starts, promotions and rollbacks are vertical lines on every panel.
    """
    if not samples:
        return None
    figure = new_figure(8.0, 7.0, 3, 1, sharex=True)
    throughput, errors, latency = _axes(figure)
    versions = sorted({s.version for s in samples}, key=lambda v: (len(v), v))
    for index, version in enumerate(versions):
        rows = sorted((s for s in samples if s.version == version), key=lambda s: s.time)
        roles = "/".join(dict.fromkeys(s.role for s in rows))
        colour = PALETTE[index % len(PALETTE)]
        times = _utc(s.time for s in rows)
        style: dict[str, Any] = {
            "marker": "o",
            "markersize": 3,
            "color": colour,
            "label": f"v{version} ({roles})",
        }
        throughput.plot(times, [s.requests_per_s for s in rows], **style)
        errors.plot(times, [100.0 * s.error_rate for s in rows], **style)
        latency.plot(times, [_finite(s.p99_s) for s in rows], **style)
    throughput.set_ylabel("requests/s")
    errors.set_ylabel("error rate (%)")
    errors.set_ylim(bottom=0.0)  # a rate is never negative, even when every value is 0
    latency.set_ylabel("p99 latency (s)")
    figure.legend(
        *throughput.get_legend_handles_labels(),
        fontsize=7,
        ncol=min(len(versions), 5),
        loc="outside upper left",
    )
    first, last = min(s.time for s in samples), max(s.time for s in samples)
    for at, kind, label in lifecycle_markers(events):
        if not first - 60 <= at <= last + 60:
            continue
        when = _utc([at])[0]
        for axes in (throughput, errors, latency):
            axes.axvline(when, color=MARKER_COLOURS[kind], linestyle=":", linewidth=1.2)
        throughput.annotate(
            label,
            (when, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(0, 2),
            textcoords="offset points",
            rotation=30,
            va="bottom",
            ha="left",
            fontsize=7,
            color=MARKER_COLOURS[kind],
        )
    _time_axis(latency)
    return figure
