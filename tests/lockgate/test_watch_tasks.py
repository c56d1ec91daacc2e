"""The watcher on multiclass and regression models: prediction drift and live quality read each task's answers.

The examples' own pipeline files and data, a fake registry and real capture files: no Ray, no MLflow.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from contracts.settings import EnvVar
from contracts.vocabulary import Task
from lockgate.watch import Watcher
from pipeline.config import PipelineConfig, parse_config
from pipeline.drift import CategoricalProfile, NumericProfile, build_profile
from pipeline.history import QualityRow, read_rows
from serving.capture import CaptureBuffer, write_labels
from tests.conftest import ROOT, deep_merge
from tests.lockgate.test_watch import Clock, FakeExporter, FakeRegistry, FakeRuns

WINDOW = 120
CLASSES = ("cultivar_a", "cultivar_b", "cultivar_c")


@pytest.fixture(autouse=True)
def events_only_in_the_log(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(EnvVar.events_uri, raising=False)
    monkeypatch.delenv(EnvVar.events_file, raising=False)


def example_config(name: str, tmp_path: Path, triggers: dict[str, Any] | None = None) -> PipelineConfig:
    raw = yaml.safe_load((ROOT / "examples" / name / "pipeline.yaml").read_text())
    override = {
        "events": {"log_file": str(tmp_path / "events.jsonl")},
        "triggers": deep_merge({"drift": {"window_rows": WINDOW, "check": {"min_rows": 50}}}, triggers or {}),
    }
    return parse_config(deep_merge(raw, override))


def example_data(name: str) -> pd.DataFrame:
    return pd.read_parquet(ROOT / "examples" / name / "data" / f"{name}.parquet")


def watcher_for(config: PipelineConfig, tmp_path: Path, profile: Any) -> tuple[Watcher, FakeExporter, Clock]:
    exporter, clock, runs = FakeExporter(), Clock(), FakeRuns()
    watcher = Watcher(
        config,
        tmp_path,
        config.registry.model_name,
        str(tmp_path / "capture"),
        str(tmp_path / "state"),
        submit=runs.submit,
        running_runs=runs.running,
        exporter=exporter,
        clock=clock,
        registry=FakeRegistry("1", profile, baseline=None),
    )
    return watcher, exporter, clock


def capture(watcher: Watcher, frame: pd.DataFrame, answers: list[dict[str, Any]], clock: Clock) -> list[str]:
    """The answers as the router captures them (one request); the captured rows' ids."""
    buffer = CaptureBuffer(
        watcher.capture_uri, batch_rows=len(frame), flush_s=60.0, clock=lambda: clock().timestamp()
    )
    request = uuid.uuid4().hex
    rows = frame[list(watcher.config.features)].to_dict("records")
    buffer.add(rows, answers, request_id=request, model=watcher.model_name, version="1", role="champion")
    assert buffer.flush() is not None, "the batch is written"
    return [f"{request}:{index}" for index in range(len(frame))]


def class_answers(predicted: list[str], confidence: float = 0.8) -> list[dict[str, Any]]:
    """A classifier's answers: the label and its class probabilities (the rest shared by the others)."""
    rest = (1.0 - confidence) / (len(CLASSES) - 1)
    return [
        {"prediction": label, "probabilities": {c: confidence if c == label else rest for c in CLASSES}}
        for label in predicted
    ]


def test_a_multiclass_champion_drifts_on_its_predicted_classes_and_is_measured_on_class_labels(
    tmp_path: Path,
) -> None:
    # Given the wine example's champion, whose reference predicted the three cultivars in their data shares,
    config = example_config("wine", tmp_path, {"degradation": {"min_labelled_rows": 100}})
    data = example_data("wine")
    profile = build_profile(
        data, config.data_schema, list(config.features), data["target"].to_numpy(), prediction_classes=CLASSES
    )
    assert isinstance(profile.prediction, CategoricalProfile), "a multiclass prediction is counted per class"
    watcher, exporter, clock = watcher_for(config, tmp_path, profile)
    frame = data.sample(WINDOW, replace=True, random_state=1).reset_index(drop=True)
    # when it answers the same rows, but says "cultivar_c" for every one of them,
    ids = capture(watcher, frame, class_answers(["cultivar_c"] * WINDOW), clock)
    # and labels arrive: the true cultivars, plus one label no wine model can predict,
    truth = frame["target"].astype(str).tolist()
    write_labels(watcher.capture_uri, [*zip(ids, truth, strict=True), (ids[0], "merlot")][1:])
    result = watcher.check()
    # then the prediction drifted (its class shares moved), though the features did not,
    assert result.drift is not None and result.drift.prediction is not None, result.notes
    assert result.drift.prediction.kind == "categorical" and result.drift.prediction.drifted, result.drift
    assert not result.drift.drifted_features, result.drift.explanation
    # and quality is the multiclass metrics on the class labels, the impossible label set aside with a note.
    assert result.quality is not None, result.notes
    expected_accuracy = float(np.mean(np.asarray(truth[1:]) == "cultivar_c"))
    assert result.quality["rows"] == WINDOW - 1, result.quality
    assert result.quality["accuracy"] == pytest.approx(expected_accuracy), result.quality
    assert {"macro_f1", "log_loss"} <= set(result.quality), result.quality
    assert any("1 labelled answers set aside" in note for note in result.notes), result.notes
    rows = read_rows(watcher.store, QualityRow).rows
    assert [row.metrics["accuracy"] for row in rows] == [pytest.approx(expected_accuracy)], rows
    assert exporter.quality and exporter.quality[-1][0] == "1", exporter.quality


def test_a_regression_champion_drifts_on_its_value_and_is_measured_on_numbers(tmp_path: Path) -> None:
    # Given the diabetes example's champion, whose reference predictions were the true progression,
    config = example_config("diabetes", tmp_path, {"degradation": {"min_labelled_rows": 100}})
    assert config.triggers.degradation.metric == "rmse", (
        "a regression's degradation metric is its own default"
    )
    data = example_data("diabetes")
    profile = build_profile(
        data, config.data_schema, list(config.features), data["target"].to_numpy(), probabilities=False
    )
    assert isinstance(profile.prediction, NumericProfile) and not profile.prediction_is_probability
    watcher, _, clock = watcher_for(config, tmp_path, profile)
    frame = data.sample(WINDOW, replace=True, random_state=2).reset_index(drop=True)
    # when it answers each row with the truth plus 200 (far above anything in the reference),
    answers = [{"prediction": float(value) + 200.0} for value in frame["target"]]
    ids = capture(watcher, frame, answers, clock)
    write_labels(watcher.capture_uri, zip(ids, frame["target"].astype(float).tolist(), strict=True))
    result = watcher.check()
    # then the predicted value drifted, and quality is RMSE 200, MAE 200 on the numeric labels.
    assert result.drift is not None and result.drift.prediction is not None, result.notes
    assert result.drift.prediction.kind == "numeric" and result.drift.prediction.drifted, result.drift
    assert result.quality is not None, result.notes
    assert result.quality["rmse"] == pytest.approx(200.0) and result.quality["mae"] == pytest.approx(200.0)
    assert result.quality["rows"] == WINDOW and "r2" in result.quality, result.quality


def test_the_degradation_metric_defaults_to_the_tasks_own(tmp_path: Path) -> None:
    # Given each example's file, which names no degradation metric, then each gets its task's default.
    assert example_config("wine", tmp_path).triggers.degradation.metric == "macro_f1"
    assert example_config("diabetes", tmp_path).triggers.degradation.metric == "rmse"
    # and a named one is kept, and judged against the task.
    wine = example_config("wine", tmp_path, {"degradation": {"metric": "log_loss"}})
    assert wine.task == Task.multiclass and wine.triggers.degradation.metric == "log_loss"
