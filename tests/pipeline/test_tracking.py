"""The tracker: stage timing through any tracker, and the MLflow tracker against a throwaway local store."""

from __future__ import annotations

import mlflow
import mlflow.tracking._tracking_service.utils as tracking_uri_state
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from contracts.vocabulary import RunOutcome, Tag
from pipeline.tracking import SETUP_STAGE, MlflowTracker, StageTimer


class MetricLog:
    """Just enough of a tracker for the timer: the metrics it logs."""

    def __init__(self) -> None:
        self.metrics: dict[str, float] = {}

    def log_metric(self, key: str, value: float) -> None:
        self.metrics[key] = value


def test_the_timer_logs_each_stage_and_names_the_one_that_failed() -> None:
    # Given a timer over a metric log
    tracker = MetricLog()
    timer = StageTimer(tracker)  # type: ignore[arg-type]
    assert timer.current == SETUP_STAGE, "before any stage, the run is in setup"
    # When one stage passes and the next raises
    with timer.stage("prepare"):
        pass
    with pytest.raises(ValueError), timer.stage("train"):
        raise ValueError("no data")
    # Then both durations are logged and the failed stage is the current one
    assert set(tracker.metrics) == {"duration_s.prepare", "duration_s.train"}, (
        "a duration per stage, even failed"
    )
    assert timer.durations == {
        "prepare": tracker.metrics["duration_s.prepare"],
        "train": tracker.metrics["duration_s.train"],
    }, "the timer keeps what it logged"
    assert timer.current == "train", "the stage that failed is named"


@pytest.fixture
def local_mlflow(tmp_path, monkeypatch):
    """MLflow on a SQLite file in tmp_path, artefacts there too; no server, nothing left behind."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)  # the default artefact root is ./mlruns
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setattr(tracking_uri_state, "_tracking_uri", uri)
    yield uri
    while mlflow.active_run() is not None:
        mlflow.end_run("KILLED")


def test_the_mlflow_tracker_records_a_run(local_mlflow) -> None:
    # Given the MLflow tracker on a local store
    tracker = MlflowTracker()
    frame = pd.DataFrame({"age": [30, 40], "default": [0, 1]})
    # When a run is recorded through it, with vocabulary enums as keys and values
    run_id = tracker.start_run("tracking-test", "run-a")
    tracker.set_tags({Tag.outcome: RunOutcome.blocked, Tag.git_commit: "abc"})
    tracker.log_params({"model.hidden_units": [8, 4]})
    tracker.log_metrics({"test.auc": 0.8})
    tracker.log_dict({"outcome": "skipped", "reason": "none"}, "rollout.json")
    tracker.log_text("{}", "drift/reference_profile.json")
    tracker.log_dataset(frame, source="/data/loans.parquet", name="loans", target="default", digest="fp-1")
    tracker.end_run("FINISHED")
    # Then MLflow holds exactly that, under plain string keys
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FINISHED", "the run ended as told"
    assert run.data.tags["lockgate.outcome"] == "blocked", "an enum tag is stored as its value"
    assert run.data.params == {"model.hidden_units": "[8, 4]"}, "params as MLflow stringifies them"
    assert run.data.metrics == {"test.auc": 0.8}, "the metric"
    assert mlflow.artifacts.load_dict(f"runs:/{run_id}/rollout.json") == {
        "outcome": "skipped",
        "reason": "none",
    }, "the dict artefact"
    dataset = run.inputs.dataset_inputs[0]
    assert (dataset.dataset.name, dataset.dataset.digest) == ("loans", "fp-1"), (
        "the data set is the run's input"
    )
    assert [tag.value for tag in dataset.tags] == ["training"], "logged in the training context"


def test_the_mlflow_tracker_finds_no_alias_on_an_unknown_model(local_mlflow) -> None:
    # Given a registry without the model, when its champion is asked for, then there is none
    assert MlflowTracker().alias_version("no-such-model", "champion") is None, "no model, no champion"


def test_ending_without_a_run_is_a_no_op(local_mlflow) -> None:
    # Given no active run, when the tracker ends one, then nothing happens
    MlflowTracker().end_run("FAILED")
    assert mlflow.active_run() is None, "still no active run"


def test_the_mlflow_tracker_logs_figures_and_tables(local_mlflow) -> None:
    # Given a run, when a PNG and a table are logged through the tracker
    tracker = MlflowTracker()
    run_id = tracker.start_run("tracking-test", "run-figures")
    tracker.log_figure(b"\x89PNG\r\n\x1a\nnot-really", "figures/gates.png")
    tracker.log_table(
        {"column": ["age", "income"], "status": ["ok", "problem"]}, "data_validation_table.json"
    )
    tracker.end_run("FINISHED")
    # Then the picture is an artefact under figures/, and the table is one MLflow reads back as a table
    listed = {item.path for item in MlflowClient().list_artifacts(run_id, "figures")}
    assert listed == {"figures/gates.png"}, "the figure under figures/"
    table = mlflow.load_table("data_validation_table.json", run_ids=[run_id])
    assert list(table["column"]) == ["age", "income"], "the table, row by row"
