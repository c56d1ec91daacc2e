"""The run's stages as functions: plain data in, a typed result out, MLflow only through the tracker.

prepare → :class:`Prepared`, train → :class:`Trained`, package → :class:`Packaged`, evaluate →
:class:`Evaluated`, gate → :class:`GateOutcome`, register → ``Registration``, rollout → ``DeployResult``.
The wiring (order, timing, events, the run's outcome) is in ``pipeline.run``; :class:`StageFunctions`
is what it calls, so a test can swap any stage for a fake.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from contracts.settings import ServingTarget, Settings, redact_uri
from contracts.vocabulary import Alias, ModelMetadata, Tag, Task
from pipeline.config import PipelineConfig
from pipeline.deploy import DeployResult, deploy_and_roll_out
from pipeline.drift import PROFILE_ARTIFACT, ReferenceProfile, build_profile
from pipeline.evaluate import evaluate_predictions, flatten_metrics, label_values, slice_masks
from pipeline.events import Event, EventType, RolloutSink
from pipeline.figures import (
    evaluation_figures,
    gate_figure,
    log_figures,
    rollout_figure,
    rollout_timelines,
    validation_table,
)
from pipeline.gates import GateDecision, evaluate_regression, evaluate_thresholds
from pipeline.prepare import DataError, PreparedData, load_table, prepare_frame
from pipeline.tasks import Predictions
from pipeline.tracking import Tracker
from pipeline.trainer import CustomTrained, load_trainer, run_custom_training

if TYPE_CHECKING:  # training and registration import torch, Ray and MLflow: loaded when their stage runs
    from pipeline.register import Lineage, Registration
    from pipeline.train import TrainingData, TrainingResult

DATA_VALIDATION_ARTIFACT = "data_validation.json"
EVALUATION_ARTIFACT = "evaluation.json"
GATES_ARTIFACT = "gates.json"
ROLLOUT_ARTIFACT = "rollout.json"
DATA_VALIDATION_TABLE = "data_validation_table.json"


@dataclass(frozen=True)
class Prepared:
    """The prepare stage's result: the table as read, where it came from, and its validated split."""

    frame: pd.DataFrame
    location: str
    data: PreparedData


@dataclass(frozen=True)
class Trained:
    """The train stage's result: the built-in model's encoded data and weights, or a team trainer's model."""

    data: TrainingData | None = None
    result: TrainingResult | None = None
    custom: CustomTrained | None = None


@dataclass(frozen=True)
class Packaged:
    """The package stage's result: the logged model."""

    model_uri: str


@dataclass(frozen=True)
class Evaluated:
    """The evaluate stage's result: metrics (overall and per slice), held-out predictions, drift reference."""

    evaluation: dict[str, dict[str, float]]
    predictions: Predictions
    profile: ReferenceProfile


@dataclass(frozen=True)
class GateOutcome:
    """The gate stage's result: every gate's decision and the tags that record them."""

    decisions: tuple[GateDecision, ...]
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def blocking(self) -> list[GateDecision]:
        """The decisions that stop the candidate."""
        return [decision for decision in self.decisions if decision.blocks]

    @property
    def reason(self) -> str:
        """Why the candidate was blocked ('' when it was not)."""
        return "; ".join(f"{d.gate}: {d.reason}" for d in self.blocking)

    @property
    def records(self) -> list[dict[str, Any]]:
        """Every decision as plain data, for artefacts, events and the run's result."""
        return [decision.to_dict() for decision in self.decisions]


def score(model: Any, frame: pd.DataFrame, task: Task = Task.binary) -> Predictions:
    """A pyfunc model's predictions as the task reads them, fed exactly the columns its signature declares.

    Lockgate's own model answers a ``probability`` column; a classifier logged from a team's trainer answers
    ``predict_proba``'s matrix (its class labels are in the model's metadata, ``lockgate.classes``); a
    regressor, or a classifier without probabilities, answers one value per row.
    """
    columns = model.metadata.get_input_schema().input_names()
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"model {model.metadata.model_uuid} needs columns {missing} that the data lacks")
    output = model.predict(frame[columns])
    if isinstance(output, pd.DataFrame) and "probability" in output.columns:
        return Predictions(task, output["probability"].to_numpy(dtype="float64"))
    values = np.asarray(output)
    classes = tuple((model.metadata.metadata or {}).get(ModelMetadata.classes, ()))
    if task == Task.binary and values.ndim == 2 and values.shape[1] == 2:
        return Predictions(task, values[:, 1].astype("float64"))
    if task == Task.multiclass and values.ndim == 2:
        return Predictions(task, values.astype("float64"), classes)
    return Predictions(task, values.ravel() if values.ndim == 2 and values.shape[1] == 1 else values)


def prediction_values(predictions: Predictions) -> np.ndarray:
    """What prediction drift profiles per row: P(positive), the value, or the predicted class."""
    if predictions.task == Task.multiclass:
        return np.asarray(predictions.labels, dtype=object)
    return np.asarray(predictions.values, dtype="float64")


def prediction_classes(config: PipelineConfig, predictions: Predictions) -> list[str] | None:
    """The classes a multiclass model's predicted label is counted over (None: a numeric prediction)."""
    if predictions.task != Task.multiclass:
        return None
    from pipeline.drift import class_key

    declared = config.data_schema.columns[config.data_schema.label].categories or ()
    return [class_key(label) for label in (predictions.classes or declared)]


def prepare(config: PipelineConfig, base_dir: Path, tracker: Tracker) -> Prepared:
    """Read, validate and split the data; log the validation report, the data set and its size."""
    frame, location = load_table(config.data, base_dir)
    location = redact_uri(location)  # what is logged, tagged and shown: never a password or a signature
    try:
        data = prepare_frame(frame, config.data_schema, config.split, config.task)
    except DataError as error:
        if error.report is not None:
            tracker.log_dict(error.report.to_dict(), DATA_VALIDATION_ARTIFACT)
            tracker.log_table(validation_table(error.report.to_dict()), DATA_VALIDATION_TABLE)
        raise
    tracker.log_dict(data.report.to_dict(), DATA_VALIDATION_ARTIFACT)
    tracker.log_table(validation_table(data.report.to_dict()), DATA_VALIDATION_TABLE)
    tracker.log_dataset(
        frame,
        source=location,
        name=config.data.name,
        target=config.data_schema.label,
        digest=data.fingerprint,
    )
    tracker.set_tags({Tag.data_fingerprint: data.fingerprint})
    tracker.log_params(
        {
            "data.rows": len(frame),
            "data.train_rows": len(data.train),
            "data.test_rows": len(data.test),
            "data.uri": location,
        }
    )
    return Prepared(frame, location, data)


def train(
    config: PipelineConfig, prepared: Prepared, tracker: Tracker, run_id: str, settings: Settings
) -> Trained:
    """Fit the model with Ray Train on the cluster this job runs in; log its parameters and checkpoint."""
    import ray

    from pipeline.train import encode_training_data, run_training

    if config.training.trainer is not None:
        load_trainer(config.training.trainer)  # a trainer that does not import fails here, before Ray starts
        if not ray.is_initialized():
            ray.init(address=settings.ray_address or "auto", log_to_driver=True)
        tracker.log_params(
            {
                "train.trainer": config.training.trainer,
                "train.num_workers": config.training.scaling.num_workers,
                **{f"param.{name}": value for name, value in config.training.params.items()},
            }
        )
        custom = run_custom_training(
            config, prepared.data.train, run_name=f"{config.name}-{run_id}", storage=settings.train_storage
        )
        tracker.set_tags({Tag.train_checkpoint: custom.checkpoint_path})
        return Trained(custom=custom)
    data = encode_training_data(prepared.data.train, config)
    if not ray.is_initialized():
        ray.init(address=settings.ray_address or "auto", log_to_driver=True)
    tracker.log_params(
        {
            "train.epochs": config.training.epochs,
            "train.batch_size": config.training.batch_size,
            "train.learning_rate": config.training.learning_rate,
            "train.num_workers": config.training.scaling.num_workers,
            "model.hidden_units": list(config.model.hidden_units),
        }
    )
    result = run_training(
        data,
        config,
        run_name=f"{config.name}-{run_id}",
        mlflow_run_id=run_id,
        storage=settings.train_storage,
    )
    tracker.log_metric("train.resumed_from_epoch_final", result.resumed_from_epoch)
    tracker.set_tags({Tag.train_checkpoint: result.checkpoint_path})
    return Trained(data, result)


def package(config: PipelineConfig, prepared: Prepared, trained: Trained, tracker: Tracker) -> Packaged:
    """Log the servable model (encoder + weights), with a few held-out rows as its input example."""
    example = prepared.data.test[list(config.features)].head(5)
    if trained.custom is not None:
        return Packaged(
            tracker.log_trained_model(trained.custom.model, trained.custom.flavour, example, config)
        )
    if trained.data is None or trained.result is None:
        raise ValueError("the train stage produced no model")
    return Packaged(tracker.log_model(trained.data.encoder, trained.result.state_dict, example))


def evaluate(config: PipelineConfig, prepared: Prepared, packaged: Packaged, tracker: Tracker) -> Evaluated:
    """Score the held-out rows with the packaged model; log metrics, the evaluation and the drift reference."""
    test = prepared.data.test
    predictions = score(tracker.load_model(packaged.model_uri), test, config.task)
    evaluation = evaluate_predictions(test, config.data_schema.label, predictions, config.slices, config.task)
    tracker.log_metrics(flatten_metrics(evaluation))
    tracker.log_dict(evaluation, EVALUATION_ARTIFACT)
    # The training reference the serving model's traffic is judged against for drift (lockgate watch):
    # the training rows' features and this model's predictions on held-out rows.
    profile = build_profile(
        prepared.data.train,
        config.data_schema,
        list(config.features),
        prediction_values(predictions),
        probabilities=config.task == Task.binary,
        prediction_classes=prediction_classes(config, predictions),
    )
    tracker.log_text(profile.to_json(), PROFILE_ARTIFACT)
    y = label_values(test, config.data_schema.label, config.task)
    log_figures(tracker, lambda: evaluation_figures(config.task, y, predictions, evaluation))
    return Evaluated(evaluation, predictions, profile)


def gate(config: PipelineConfig, prepared: Prepared, evaluated: Evaluated, tracker: Tracker) -> GateOutcome:
    """Judge the candidate: absolute thresholds, and no regression against the current champion."""
    from pipeline.register import gate_tags

    name = config.registry.model_name
    test = prepared.data.test
    champion_version = tracker.alias_version(name, Alias.champion.value)
    champion_predictions = None
    if champion_version is not None and config.gates.regression.mode != "disabled":
        champion_predictions = score(
            tracker.load_model(f"models:/{name}/{champion_version}"), test, config.task
        )
    decisions = (
        evaluate_thresholds(evaluated.evaluation, config.gates.thresholds),
        evaluate_regression(
            label_values(test, config.data_schema.label, config.task),
            evaluated.predictions,
            champion_predictions,
            champion_version,
            config.gates.regression,
            config.task,
            slice_masks(test, config.slices),
        ),
    )
    outcome = GateOutcome(decisions, gate_tags(list(decisions)))
    tracker.log_dict({"gates": outcome.records}, GATES_ARTIFACT)
    log_figures(tracker, lambda: {"gates.png": gate_figure(outcome.records)})
    tracker.set_tags(outcome.tags)
    for decision in decisions:
        if "delta" in decision.details:
            tracker.log_metrics(
                {
                    f"gate.{decision.gate}.delta": decision.details["delta"],
                    f"gate.{decision.gate}.ci_low": decision.details["ci_low"],
                    f"gate.{decision.gate}.ci_high": decision.details["ci_high"],
                }
            )
    return outcome


def register(
    config: PipelineConfig, packaged: Packaged, lineage: Lineage, gated: GateOutcome, tracker: Tracker
) -> Registration:
    """Register the packaged model with its lineage and gate tags; record the version on the run."""
    registration = tracker.register(
        config.registry.model_name,
        packaged.model_uri,
        {**lineage.tags(), **gated.tags},
        config.registry.first_model_alias,
    )
    tracker.set_tags(
        {
            Tag.registered_version: registration.version,
            Tag.registered_aliases: ",".join(registration.aliases),
        }
    )
    return registration


def rollout(
    config: PipelineConfig,
    base_dir: Path,
    target: ServingTarget | None,
    registration: Registration,
    emit: RolloutSink,
    tracker: Tracker,
) -> DeployResult:
    """Hand the registered version to serving (see ``pipeline.deploy``); log how that ended, and its timeline."""
    seen: list[Event] = []

    def record(kind: str, message: str, details: dict[str, Any]) -> None:
        seen.append(
            Event(
                type=EventType(kind),
                pipeline=config.name,
                model_version=registration.version,
                message=message,
                details=details,
            )
        )
        emit(kind, message, details)

    result = deploy_and_roll_out(config, base_dir, target, registration.aliases, registration.version, record)
    tracker.log_dict(result.to_dict(), ROLLOUT_ARTIFACT)
    log_figures(tracker, lambda: {"rollout.png": next(map(rollout_figure, rollout_timelines(seen)), None)})
    return result


@dataclass(frozen=True)
class StageFunctions:
    """The stages a run calls, in order; each may be replaced (tests pass fakes)."""

    prepare: Callable[[PipelineConfig, Path, Tracker], Prepared] = prepare
    train: Callable[[PipelineConfig, Prepared, Tracker, str, Settings], Trained] = train
    package: Callable[[PipelineConfig, Prepared, Trained, Tracker], Packaged] = package
    evaluate: Callable[[PipelineConfig, Prepared, Packaged, Tracker], Evaluated] = evaluate
    gate: Callable[[PipelineConfig, Prepared, Evaluated, Tracker], GateOutcome] = gate
    register: Callable[[PipelineConfig, Packaged, Lineage, GateOutcome, Tracker], Registration] = register
    rollout: Callable[
        [PipelineConfig, Path, ServingTarget | None, Registration, RolloutSink, Tracker], DeployResult
    ] = rollout
