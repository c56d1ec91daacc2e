"""The figures: each draws from tiny in-memory data, says what it shows, and reads its inputs right."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from contracts.vocabulary import Task
from pipeline import figures
from pipeline.config import DataSchema
from pipeline.drift import build_profile, check_drift, drift_histograms
from pipeline.tasks import Predictions
from tests.pipeline import report_fixture

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def titles(figure) -> list[str]:
    return [axes.get_title() for axes in figure.axes if axes.get_visible()]


def test_gate_figure_puts_worse_on_the_left_for_every_metric_direction() -> None:
    # Given a blocked run's records (overall and one slice fail, thresholds pass)
    records = next(e for e in report_fixture.events() if e.type.value == "gate_blocked").details["gates"]
    # When drawn
    figure = figures.gate_figure(records)
    # Then one panel per gate, the tolerance line at -tolerance, red for each failed interval
    assert figure is not None and len(figure.axes) == 2, "regression and threshold panels"
    regression = figure.axes[0]
    assert any(np.allclose(line.get_xdata(), [-0.01, -0.01]) for line in regression.lines), "-tolerance line"
    red = [
        line
        for line in regression.lines
        if line.get_color() == figures.FAIL_COLOUR and line.get_linewidth() == 4
    ]
    assert len(red) == 2, "the overall interval and region=south fail; region=north passes"
    assert "← worse | better →" in regression.get_xlabel(), "worse is always on the left"
    # And for a lower-is-better metric the axis says the improvement is champion − candidate
    rmse = [{**records[1], "details": {**records[1]["details"], "metric": "rmse"}}]
    assert "champion − candidate" in figures.gate_figure(rmse).axes[0].get_xlabel()
    assert figures.png(figure).startswith(PNG_MAGIC), "serialises as PNG"
    assert figures.gate_figure([{"gate": "regression", "details": {"skipped": True}, "checks": []}]) is None


def test_rollout_timelines_follow_the_step_events_to_their_end() -> None:
    # Given the fixture's event log with one promoted and one rolled-back rollout
    timelines = figures.rollout_timelines(report_fixture.events())
    # Then each is read with its steps and the numbers judged at each step's end
    assert [(t.model_version, t.outcome) for t in timelines] == [("2", "promotion"), ("3", "rollback")]
    promoted, rolled_back = timelines
    assert [s.weight for s in promoted.steps] == [10, 50, 100], "weights from the step events"
    assert rolled_back.breach_weight == 50 and rolled_back.steps[-1].numbers["prediction_divergence"] == 0.081
    assert all(s.ended is not None for t in timelines for s in t.steps), "every step has an end"
    figure = figures.rollout_figure(rolled_back)
    assert figure is not None and len(figure.axes) == 4, "weight, errors, p99, divergence"
    assert "rolled back" in figure.axes[0].get_title(loc="left")


def test_a_step_without_numbers_and_a_pinned_step_still_draw() -> None:
    # Given a rollout from older events: steps carry only weights, the rollback only its verdict
    events = [
        e
        for e in report_fixture.events()
        if e.run_id == "run-c" and e.type.value in ("rollout_step", "rollback")
    ]
    events[-1] = events[-1].model_copy(
        update={"details": {"weight": 50, "verdict": events[-1].details["verdict"]}}
    )
    (timeline,) = figures.rollout_timelines(events)
    assert timeline.steps[0].numbers == {} and timeline.steps[-1].numbers, "the breach step from the verdict"
    assert figures.rollout_figure(timeline) is not None


@pytest.mark.parametrize(
    ("task", "predictions", "y", "expected"),
    [
        (
            Task.binary,
            Predictions(Task.binary, np.linspace(0.05, 0.95, 40)),
            np.tile([0, 1], 20),
            {"roc_pr.png", "calibration.png"},
        ),
        (
            Task.multiclass,
            Predictions(
                Task.multiclass, np.tile([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]], (20, 1)), ("a", "b", "c")
            ),
            np.array(["a", "b", "c", "b"] * 10),
            {"confusion_matrix.png"},
        ),
        (
            Task.regression,
            Predictions(Task.regression, np.arange(40.0)),
            np.arange(40.0) + 1.5,
            {"residuals.png"},
        ),
    ],
    ids=["binary", "multiclass", "regression"],
)
def test_evaluation_figures_follow_the_task(task, predictions, y, expected) -> None:
    evaluation = {"overall": {"rows": 40.0}}
    drawn = figures.evaluation_figures(task, y, predictions, evaluation)
    assert set(drawn) == expected, f"{task}: expected {expected}, got {set(drawn)} (no slices declared)"
    sliced = {**evaluation, "region=north": {"rows": 20.0, "accuracy": 0.5, "rmse": 1.0, "auc": 0.6}}
    assert "slice_metrics.png" in figures.evaluation_figures(task, y, predictions, sliced), "slices drawn"


def test_roc_curve_of_a_perfect_ranker_reaches_the_corner() -> None:
    figure = figures.roc_pr_figure([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])
    assert "AUC 1.000" in figure.axes[0].get_legend().get_texts()[0].get_text()


def test_confusion_matrix_counts_by_true_then_predicted_class() -> None:
    figure = figures.confusion_figure(["a", "a", "b"], ["a", "b", "b"], ("a", "b"))
    cells = [text.get_text().split("\n")[0] for text in figure.axes[0].texts]
    assert cells == ["1", "1", "0", "1"], "row a: 1 right, 1 as b; row b: 1 right"


def test_validation_table_lists_every_column_and_problem() -> None:
    report = {
        "rows": 10,
        "columns": ["age", "income"],
        "ok": False,
        "problems": [{"column": "age", "problem": "out of range", "rows": 2, "examples": [-1, 200]}],
    }
    table = figures.validation_table(report)
    assert table["column"] == ["age", "income"] and table["status"] == ["problem", "ok"]
    assert table["rows"] == [2, 0] and table["examples"] == ["-1, 200", ""]


def test_drift_histograms_show_the_bins_psi_compared() -> None:
    # Given a reference and a batch whose income moved down
    rng = np.random.default_rng(0)
    reference = pd.DataFrame({"income": rng.normal(50, 10, 2000), "age": rng.normal(40, 5, 2000)})
    schema = DataSchema.model_validate(
        {
            "label": "y",
            "columns": {"income": {"type": "float"}, "age": {"type": "float"}, "y": {"type": "integer"}},
        }
    )
    profile = build_profile(reference, schema, ["income", "age"], None)
    batch = pd.DataFrame({"income": rng.normal(40, 10, 1000), "age": rng.normal(40, 5, 1000)})
    report = check_drift(profile, batch)
    # When the histograms are taken, then the most-drifted feature comes first with shares summing to 1
    histograms = drift_histograms(profile, batch, report, top=1)
    assert [h["column"] for h in histograms] == ["income"], "the highest PSI only"
    assert sum(histograms[0]["reference"]) == pytest.approx(1) and sum(
        histograms[0]["current"]
    ) == pytest.approx(1)
    assert histograms[0]["current"][0] > histograms[0]["reference"][0], "more rows in the lowest bin now"
    figure = figures.drift_figure(histograms)
    assert figure is not None and "PSI" in titles(figure)[0]


def test_version_metrics_leave_row_counts_out_and_give_each_metric_its_axis() -> None:
    figure = figures.version_metrics_figure(report_fixture.versions(), ["auc", "accuracy", "brier"])
    shown = titles(figure)
    assert shown == ["auc (higher is better)", "accuracy (higher is better)", "brier (lower is better)"]
    assert figure.axes[0].get_ylim()[1] < 1.0, "AUC on its own scale, not flattened by a row count"


def test_serving_figure_draws_every_version_that_served_with_markers() -> None:
    figure = figures.serving_figure(report_fixture.serving_samples(), report_fixture.events())
    labels = [line.get_label() for line in figure.axes[0].lines if not line.get_label().startswith("_")]
    assert labels == ["v1 (champion)", "v2 (candidate/champion)", "v3 (candidate)"], labels
    marks = [text.get_text() for text in figure.axes[0].texts]
    assert marks == ["rollout v2", "promotion v2", "rollout v3", "rollback v3"], marks


def test_log_figures_logs_pngs_and_never_fails_on_a_drawing() -> None:
    logged: dict[str, bytes] = {}

    class Tracker:
        def log_figure(self, png: bytes, artifact_file: str) -> None:
            logged[artifact_file] = png

    paths = figures.log_figures(
        Tracker(), lambda: {"roc.png": figures.roc_pr_figure([0, 1], [0.2, 0.7]), "x.png": None}
    )  # type: ignore[arg-type]
    assert paths == ["figures/roc.png"] and logged["figures/roc.png"].startswith(PNG_MAGIC)
    assert figures.log_figures(Tracker(), lambda: 1 / 0) == [], "a drawing that raises is skipped"  # type: ignore[arg-type]


def test_importing_the_figures_module_loads_no_matplotlib() -> None:
    code = "import sys, pipeline.figures; print('matplotlib' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[2],
        timeout=60,
    )
    assert done.stdout.strip() == "False", f"matplotlib is imported only to draw: {done.stdout}{done.stderr}"


def test_the_prepare_stage_logs_the_validation_report_as_a_table(tmp_path) -> None:
    # Given the shipped pipeline on its data, when the prepare stage runs
    from pipeline.stages import DATA_VALIDATION_TABLE, prepare
    from tests.conftest import ROOT
    from tests.pipeline.test_deploy import config
    from tests.pipeline.test_run import RecordingTracker

    tracker = RecordingTracker()
    prepare(config(), ROOT, tracker)  # type: ignore[arg-type]
    # Then the table lists every column of the data with its status
    table = tracker.artifacts[DATA_VALIDATION_TABLE]
    assert set(table) == {"column", "status", "problem", "rows", "examples"} and table["column"], table
