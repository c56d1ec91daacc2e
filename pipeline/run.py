"""One pipeline run, start to hand-off: prepare → train → package → evaluate → gate → register → rollout.

This is the Ray job entrypoint (``python -m pipeline.run --config pipeline.yaml``): ``lockgate run``,
plain ``ray job submit`` and a KubeRay RayJob all start it the same way. Exit codes: 0 registered,
3 blocked by a gate or rolled back by the rollout, 1 a stage failed, 2 the pipeline file is invalid.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from pipeline.config import ConfigError, PipelineConfig, load_config, parse_config
from pipeline.delivery import estimate_cost, outcome_after_rollout
from pipeline.deploy import deploy_and_roll_out
from pipeline.drift import PROFILE_ARTIFACT, build_profile
from pipeline.events import Event, EventType, emit

logger = logging.getLogger("lockgate.pipeline")

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_BLOCKED = 0, 1, 2, 3
OUTCOME_TAG = "lockgate.outcome"
SUBMISSION_TAG = "lockgate.submission_id"
GIT_COMMIT_ENV = "LOCKGATE_GIT_COMMIT"
SUBMISSION_ENV = "LOCKGATE_SUBMISSION_ID"


class ServiceUnavailable(Exception):
    """A service the pipeline needs (MLflow, Ray) is not reachable."""


class StageFailed(Exception):
    """A stage raised; carries the stage name and the MLflow run id."""

    def __init__(self, stage: str, run_id: str | None, cause: BaseException):
        self.stage, self.run_id, self.cause = stage, run_id, cause
        super().__init__(f"stage '{stage}' failed: {type(cause).__name__}: {cause}")


@dataclass
class RunOutcome:
    """What a run produced, for the job's last log line and for callers."""

    run_id: str
    outcome: str
    model_name: str
    version: str | None = None
    aliases: tuple[str, ...] = ()
    gates: list[dict[str, Any]] = field(default_factory=list)
    durations: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        return {**self.__dict__, "aliases": list(self.aliases)}


def check_mlflow() -> str:
    """Fail fast, with the fix in the message, when no tracking server answers."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri.startswith("http"):
        raise ServiceUnavailable(
            "MLFLOW_TRACKING_URI is not set to an MLflow server: start the local environment with `lockgate up` "
            "and submit with `lockgate run` (or export the variables `lockgate env` prints)"
        )
    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=5).raise_for_status()
    except requests.RequestException as error:
        raise ServiceUnavailable(
            f"MLflow at {uri} is not reachable ({type(error).__name__}): run `lockgate up`"
        ) from None
    return uri


def git_commit(directory: Path) -> str:
    """The commit that produced this run: from the submitter (env) or the working tree, else 'unknown'."""
    if os.environ.get(GIT_COMMIT_ENV):
        return os.environ[GIT_COMMIT_ENV]

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=directory, capture_output=True, text=True, timeout=10, check=True
        )
        return done.stdout.strip()

    try:
        return git("rev-parse", "HEAD") + ("-dirty" if git("status", "--porcelain") else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class Stages:
    """Times each stage, logs its duration to MLflow, and names the stage that failed."""

    def __init__(self) -> None:
        self.current = "setup"
        self.durations: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Run one stage; record ``duration_s.<name>`` even when it fails."""
        import mlflow

        self.current = name
        logger.info("stage %s: started", name)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.durations[name] = time.perf_counter() - start
            mlflow.log_metric(f"duration_s.{name}", self.durations[name])
            logger.info("stage %s: %.2fs", name, self.durations[name])


def score(model: Any, frame: Any) -> Any:
    """Positive-class probabilities from a pyfunc model, fed exactly the columns its signature declares."""
    columns = model.metadata.get_input_schema().input_names()
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"model {model.metadata.model_uuid} needs columns {missing} that the data lacks")
    return model.predict(frame[columns])["probability"].to_numpy()


def run_pipeline(config: PipelineConfig, base_dir: Path) -> RunOutcome:
    """Execute every stage under one MLflow run; raise StageFailed (run marked FAILED, event sent) on error."""
    import mlflow
    import ray
    from mlflow.tracking import MlflowClient

    from pipeline.evaluate import evaluate_predictions, flatten_metrics
    from pipeline.gates import evaluate_regression, evaluate_thresholds
    from pipeline.prepare import DataError, load_table, prepare_frame
    from pipeline.register import (
        CHAMPION,
        Lineage,
        current_alias_version,
        gate_tags,
        log_model,
        register_version,
    )
    from pipeline.train import encode_training_data, run_training

    check_mlflow()
    # Our integer columns are declared non-nullable, so MLflow's integer-with-missing-values hint does not apply.
    warnings.filterwarnings(
        "ignore", message="Hint: Inferred schema contains integer column", category=UserWarning
    )
    client = MlflowClient()
    mlflow.set_experiment(config.registry.experiment or config.name)
    submission_id = os.environ.get(SUBMISSION_ENV) or os.environ.get("RAY_JOB_SUBMISSION_ID", "")
    stages = Stages()
    name = config.registry.model_name
    run = mlflow.start_run(run_name=f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    run_id = run.info.run_id
    event_base = {"pipeline": config.name, "run_id": run_id, "model_name": name}
    mlflow.set_tags(
        {
            "lockgate.pipeline": config.name,
            "lockgate.config_hash": config.config_hash(),
            "lockgate.git_commit": git_commit(base_dir),
            SUBMISSION_TAG: submission_id,
            OUTCOME_TAG: "running",
        }
    )
    mlflow.log_dict(config.model_dump(mode="json", by_alias=True), "pipeline_config.json")
    trigger = read_trigger()
    if trigger:
        mlflow.set_tags({f"lockgate.trigger.{k}": str(v) for k, v in trigger.items()})
    emit(
        Event(
            type=EventType.pipeline_started,
            details={f"trigger_{k}" if k != "reason" else "trigger": v for k, v in trigger.items()},
            **event_base,
        ),
        config.events,
        base_dir,
    )
    try:
        with stages.stage("prepare"):
            frame, location = load_table(config.data, base_dir)
            try:
                prepared = prepare_frame(frame, config.data_schema, config.split)
            except DataError as error:
                if error.report is not None:
                    mlflow.log_dict(error.report.to_dict(), "data_validation.json")
                raise
            mlflow.log_dict(prepared.report.to_dict(), "data_validation.json")
            dataset = mlflow.data.from_pandas(  # type: ignore[attr-defined]
                frame,
                source=location,
                name=config.data.name,
                targets=config.data_schema.label,
                digest=prepared.fingerprint,
            )
            mlflow.log_input(dataset, context="training")
            mlflow.set_tag("lockgate.data_fingerprint", prepared.fingerprint)
            mlflow.log_params(
                {
                    "data.rows": len(frame),
                    "data.train_rows": len(prepared.train),
                    "data.test_rows": len(prepared.test),
                    "data.uri": location,
                }
            )

        with stages.stage("train"):
            data = encode_training_data(prepared.train, config)
            if not ray.is_initialized():
                ray.init(address=os.environ.get("RAY_ADDRESS", "auto"), log_to_driver=True)
            mlflow.log_params(
                {
                    "train.epochs": config.training.epochs,
                    "train.batch_size": config.training.batch_size,
                    "train.learning_rate": config.training.learning_rate,
                    "train.num_workers": config.training.scaling.num_workers,
                    "model.hidden_units": list(config.model.hidden_units),
                }
            )
            trained = run_training(data, config, run_name=f"{config.name}-{run_id}", mlflow_run_id=run_id)
            mlflow.log_metric("train.resumed_from_epoch_final", trained.resumed_from_epoch)
            mlflow.set_tag("lockgate.train_checkpoint", trained.checkpoint_path)

        with stages.stage("package"):
            features = list(config.features)
            model_info = log_model(data.encoder, trained.state_dict, prepared.test[features].head(5))

        with stages.stage("evaluate"):
            candidate_model = mlflow.pyfunc.load_model(model_info.model_uri)
            probability = score(candidate_model, prepared.test)
            label = config.data_schema.label
            evaluation = evaluate_predictions(prepared.test, label, probability, config.slices)
            mlflow.log_metrics(flatten_metrics(evaluation))
            mlflow.log_dict(evaluation, "evaluation.json")
            # The training reference the serving model's traffic is judged against for drift (lockgate watch):
            # the training rows' features and this model's predictions on held-out rows.
            profile = build_profile(prepared.train, config.data_schema, features, probability)
            mlflow.log_text(profile.to_json(), PROFILE_ARTIFACT)

        with stages.stage("gate"):
            champion_version = current_alias_version(client, name, CHAMPION)
            champion_probability = None
            if champion_version is not None and config.gates.regression.mode != "disabled":
                champion_model = mlflow.pyfunc.load_model(f"models:/{name}/{champion_version}")
                champion_probability = score(champion_model, prepared.test)
            y_test = prepared.test[label].to_numpy(dtype="float64")
            decisions = [
                evaluate_thresholds(evaluation, config.gates.thresholds),
                evaluate_regression(
                    y_test, probability, champion_probability, champion_version, config.gates.regression
                ),
            ]
            mlflow.log_dict({"gates": [d.to_dict() for d in decisions]}, "gates.json")
            tags = gate_tags(decisions)
            mlflow.set_tags(tags)
            for decision in decisions:
                if "delta" in decision.details:
                    mlflow.log_metrics(
                        {
                            f"gate.{decision.gate}.delta": decision.details["delta"],
                            f"gate.{decision.gate}.ci_low": decision.details["ci_low"],
                            f"gate.{decision.gate}.ci_high": decision.details["ci_high"],
                        }
                    )
            blocking = [d for d in decisions if d.blocks]
            gate_records = [d.to_dict() for d in decisions]
            if blocking:
                reason = "; ".join(f"{d.gate}: {d.reason}" for d in blocking)
                mlflow.set_tag(OUTCOME_TAG, "blocked")
                emit(
                    Event(
                        type=EventType.gate_blocked,
                        stage="gate",
                        message=reason,
                        details={
                            "gates": gate_records,
                            "durations_s": stages.durations,
                            "cost_estimate": run_cost(config, stages.durations),
                        },
                        **event_base,
                    ),
                    config.events,
                    base_dir,
                )
                logger.warning("gate blocked the candidate: %s", reason)
                return RunOutcome(run_id, "blocked", name, gates=gate_records, durations=stages.durations)
            emit(
                Event(
                    type=EventType.gate_passed, stage="gate", details={"gates": gate_records}, **event_base
                ),
                config.events,
                base_dir,
            )

        with stages.stage("register"):
            lineage = Lineage(
                git_commit=git_commit(base_dir),
                data_fingerprint=prepared.fingerprint,
                data_uri=location,
                config_hash=config.config_hash(),
                pipeline_run_id=run_id,
                submission_id=submission_id,
            )
            registration = register_version(
                client,
                name,
                model_info.model_uri,
                {**lineage.tags(), **tags},
                config.registry.first_model_alias,
            )
            mlflow.set_tags(
                {
                    "lockgate.registered_version": registration.version,
                    "lockgate.registered_aliases": ",".join(registration.aliases),
                }
            )
        emit(
            Event(
                type=EventType.model_registered,
                stage="register",
                model_version=registration.version,
                details={"aliases": list(registration.aliases)},
                **event_base,
            ),
            config.events,
            base_dir,
        )

        def send(kind: str, message: str, details: dict[str, Any]) -> None:
            emit(
                Event(
                    type=EventType(kind),
                    stage="rollout",
                    model_version=registration.version,
                    message=message,
                    details=details,
                    **event_base,
                ),
                config.events,
                base_dir,
            )

        with stages.stage("rollout"):
            rollout = deploy_and_roll_out(config, base_dir, registration.aliases, registration.version, send)
            mlflow.log_dict(rollout, "rollout.json")
            logger.info("rollout: %s %s", rollout["outcome"], rollout.get("reason", ""))
        final = outcome_after_rollout(rollout["outcome"])
        mlflow.set_tags({OUTCOME_TAG: final, "lockgate.rollout_outcome": rollout["outcome"]})
        emit(
            Event(
                type=EventType.pipeline_succeeded,
                model_version=registration.version,
                details={
                    "durations_s": stages.durations,
                    "cost_estimate": run_cost(config, stages.durations),
                    "rollout": rollout["outcome"],
                },
                **event_base,
            ),
            config.events,
            base_dir,
        )
        return RunOutcome(
            run_id,
            final,
            name,
            registration.version,
            registration.aliases,
            gate_records,
            stages.durations,
        )
    except BaseException as error:
        message = f"{type(error).__name__}: {error}"
        mlflow.set_tags(
            {OUTCOME_TAG: "failed", "lockgate.failed_stage": stages.current, "lockgate.error": message[:4000]}
        )
        emit(
            Event(
                type=EventType.pipeline_failed,
                stage=stages.current,
                error=message[:4000],
                message=f"stage '{stages.current}' failed",
                **event_base,
            ),
            config.events,
            base_dir,
        )
        mlflow.end_run("FAILED")
        raise StageFailed(stages.current, run_id, error) from error
    finally:
        if mlflow.active_run() is not None:
            mlflow.end_run("FINISHED")


TRIGGER_ENV = "LOCKGATE_TRIGGER"


def read_trigger() -> dict[str, Any]:
    """Why this run started, when a trigger started it: JSON in LOCKGATE_TRIGGER (reason, event_id, fired_at)."""
    raw = os.environ.get(TRIGGER_ENV, "")
    try:
        value = json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        logger.warning("ignoring %s: not JSON", TRIGGER_ENV)
        return {}
    return value if isinstance(value, dict) else {}


def run_cost(config: PipelineConfig, durations: dict[str, float]) -> float:
    """The run's estimated cost: training holds its workers' CPUs plus the driver's, other stages one CPU."""
    import mlflow

    scaling = config.training.scaling
    cpus = {"train": scaling.num_workers * scaling.cpus_per_worker + 1.0}
    cost = estimate_cost(durations, cpus, config.cost.price_per_cpu_hour)
    if mlflow.active_run() is not None:
        mlflow.log_metric("cost_estimate", cost)
    return cost


def with_data(config: PipelineConfig, uri: str) -> PipelineConfig:
    """The same pipeline on another data set (a new batch): only ``data.uri`` changes, and is re-validated."""
    raw = config.model_dump(mode="json", by_alias=True)
    raw["data"]["uri"] = uri
    return parse_config(raw, "--data")


def main(argv: list[str] | None = None) -> int:
    """Entrypoint: validate the file, run, print one JSON result line, map the outcome to an exit code."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.run", description=__doc__)
    parser.add_argument("--config", default="pipeline.yaml", help="pipeline definition (YAML)")
    parser.add_argument("--data", help="run on this data set (path or URI) instead of the file's data.uri")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config)
        if args.data:
            config = with_data(config, args.data)
    except ConfigError as error:
        print(f"invalid pipeline definition: {error}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        outcome = run_pipeline(config, Path(args.config).resolve().parent)
    except ServiceUnavailable as error:
        emit(
            Event(
                type=EventType.pipeline_failed,
                pipeline=config.name,
                stage="setup",
                error=str(error),
                model_name=config.registry.model_name,
                message="a required service is not reachable",
            ),
            config.events,
            Path(args.config).resolve().parent,
        )
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    except StageFailed as error:
        print(f"error: {error} (MLflow run {error.run_id})", file=sys.stderr)
        return EXIT_FAILED
    print("LOCKGATE_RESULT " + json.dumps(outcome.to_dict(), sort_keys=True, default=str), flush=True)
    return EXIT_BLOCKED if outcome.outcome in ("blocked", "rolled_back") else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
