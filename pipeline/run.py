"""One pipeline run, start to hand-off: prepare → train → package → evaluate → gate → register → rollout.

This is the Ray job entrypoint (``python -m pipeline.run --config pipeline.yaml``): ``lockgate run``,
plain ``ray job submit`` and a KubeRay RayJob all start it the same way. Exit codes: 0 registered,
3 blocked by a gate or rolled back by the rollout, 1 a stage failed, 2 the pipeline file is invalid.
The stages are in ``pipeline.stages``; this module wires them, records the run's outcome and reports it.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from contracts.settings import RESULT_MARKER, EnvVar, Settings, redact_uri
from contracts.vocabulary import RunOutcome, Tag
from pipeline.config import ConfigError, PipelineConfig, load_config, parse_config
from pipeline.delivery import estimate_cost, outcome_after_rollout
from pipeline.events import Emitter, EventType
from pipeline.register import Lineage
from pipeline.stages import GateOutcome, StageFunctions
from pipeline.tracking import MlflowTracker, StageTimer, Tracker

logger = logging.getLogger("lockgate.pipeline")

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_BLOCKED = 0, 1, 2, 3
ERROR_LIMIT = 4000
"""How much of an error message goes into the run's tag and the failure event."""


class ServiceUnavailable(Exception):
    """A service the pipeline needs (MLflow, Ray) is not reachable."""


class StageFailed(Exception):
    """A stage raised; carries the stage name and the MLflow run id."""

    def __init__(self, stage: str, run_id: str | None, cause: BaseException):
        self.stage, self.run_id, self.cause = stage, run_id, cause
        super().__init__(f"stage '{stage}' failed: {type(cause).__name__}: {cause}")


@dataclass
class RunResult:
    """What a run produced, for the job's last log line and for callers."""

    run_id: str
    outcome: RunOutcome
    model_name: str
    version: str | None = None
    aliases: tuple[str, ...] = ()
    gates: list[dict[str, Any]] = field(default_factory=list)
    durations: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        return {
            "run_id": self.run_id,
            "outcome": self.outcome.value,
            "model_name": self.model_name,
            "version": self.version,
            "aliases": [str(alias) for alias in self.aliases],
            "gates": self.gates,
            "durations": self.durations,
        }


def exit_code(outcome: RunOutcome) -> int:
    """The exit code of a run that reported its result: 3 when a gate blocked it or rollout rolled it back."""
    return EXIT_BLOCKED if outcome in (RunOutcome.blocked, RunOutcome.rolled_back) else EXIT_OK


def check_mlflow(settings: Settings) -> str:
    """Fail fast, with the fix in the message, when no tracking server answers."""
    uri = settings.mlflow_tracking_uri or ""
    if not uri.startswith("http"):
        raise ServiceUnavailable(
            f"{EnvVar.mlflow_tracking_uri.value} is not set to an MLflow server: start the local environment "
            "with `lockgate up` and submit with `lockgate run` (or export the variables `lockgate env` prints)"
        )
    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=5).raise_for_status()
    except requests.RequestException as error:
        raise ServiceUnavailable(
            f"MLflow at {uri} is not reachable ({type(error).__name__}): run `lockgate up`"
        ) from None
    return uri


def git_commit(directory: Path, recorded: str | None = None) -> str:
    """The commit that produced this run: ``recorded`` by the submitter, else the working tree's, else 'unknown'."""
    if recorded:
        return recorded

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=directory, capture_output=True, text=True, timeout=10, check=True
        )
        return done.stdout.strip()

    try:
        return git("rev-parse", "HEAD") + ("-dirty" if git("status", "--porcelain") else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_cost(config: PipelineConfig, durations: dict[str, float]) -> float:
    """The run's estimated cost: training holds its workers' CPUs plus the driver's, other stages one CPU."""
    scaling = config.training.scaling
    cpus = {"train": scaling.num_workers * scaling.cpus_per_worker + 1.0}
    return estimate_cost(durations, cpus, config.cost.price_per_cpu_hour)


def trigger_event_details(trigger: dict[str, Any]) -> dict[str, Any]:
    """The trigger as the started event carries it: ``trigger`` (the reason) and ``trigger_<key>`` for the rest."""
    return {f"trigger_{key}" if key != "reason" else "trigger": value for key, value in trigger.items()}


def loggable_config(config: PipelineConfig) -> dict[str, Any]:
    """The validated config as an artefact, with webhook URLs (secrets) and data-URI credentials redacted."""
    raw = config.model_dump(mode="json", by_alias=True)
    raw["data"]["uri"] = redact_uri(raw["data"]["uri"])
    for sink in raw.get("events", {}).get("webhooks", []):
        if sink.get("url"):
            sink["url"] = "***"
    return raw


def with_data(config: PipelineConfig, uri: str) -> PipelineConfig:
    """The same pipeline on another data set (a new batch): only ``data.uri`` changes, and is re-validated."""
    raw = config.model_dump(mode="json", by_alias=True)
    raw["data"]["uri"] = uri
    return parse_config(raw, "--data")


@dataclass(frozen=True)
class ActiveRun:
    """The MLflow run a pipeline run records into, with what every later stage needs from its start."""

    run_id: str
    git_commit: str
    submission_id: str
    events: Emitter
    timer: StageTimer


def run_pipeline(
    config: PipelineConfig,
    base_dir: Path,
    settings: Settings,
    tracker: Tracker | None = None,
    stages: StageFunctions | None = None,
) -> RunResult:
    """Execute every stage under one MLflow run; raise StageFailed (run marked FAILED, event sent) on error."""
    tracker = tracker if tracker is not None else MlflowTracker()
    run = start_run(config, base_dir, settings, tracker)
    try:
        result = run_stages(config, base_dir, settings, tracker, stages or StageFunctions(), run)
    except BaseException as error:
        report_failure(error, run.timer.current, tracker, run.events)
        raise StageFailed(run.timer.current, run.run_id, error) from error
    tracker.end_run("FINISHED")
    return result


def start_run(config: PipelineConfig, base_dir: Path, settings: Settings, tracker: Tracker) -> ActiveRun:
    """Open the MLflow run, tag it with where it came from, and send ``pipeline_started``."""
    run_id = tracker.start_run(
        config.registry.experiment or config.name, f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    events = Emitter(
        config.events, base_dir, settings, pipeline=config.name, model_name=config.registry.model_name
    ).for_run(run_id)
    run = ActiveRun(
        run_id,
        git_commit(base_dir, settings.git_commit),
        settings.submission_id or "",
        events,
        StageTimer(tracker),
    )
    tracker.set_tags(
        {
            Tag.pipeline: config.name,
            Tag.config_hash: config.config_hash(),
            Tag.git_commit: run.git_commit,
            Tag.submission_id: run.submission_id,
            Tag.outcome: RunOutcome.running,
        }
    )
    tracker.log_dict(loggable_config(config), "pipeline_config.json")
    trigger = settings.trigger_details()
    if trigger:
        tracker.set_tags({f"{Tag.trigger_prefix}{key}": value for key, value in trigger.items()})
    events.emit(EventType.pipeline_started, details=trigger_event_details(trigger))
    return run


def run_stages(
    config: PipelineConfig,
    base_dir: Path,
    settings: Settings,
    tracker: Tracker,
    stages: StageFunctions,
    run: ActiveRun,
) -> RunResult:
    """The stages in order, each timed; a blocking gate ends the run before anything is registered."""
    timer = run.timer
    with timer.stage("prepare"):
        prepared = stages.prepare(config, base_dir, tracker)
    with timer.stage("train"):
        trained = stages.train(config, prepared, tracker, run.run_id, settings)
    with timer.stage("package"):
        packaged = stages.package(config, prepared, trained, tracker)
    with timer.stage("evaluate"):
        evaluated = stages.evaluate(config, prepared, packaged, tracker)
    with timer.stage("gate"):
        gated = stages.gate(config, prepared, evaluated, tracker)
        report_gate(config, gated, timer, tracker, run.events)
    if gated.blocking:
        name = config.registry.model_name
        return RunResult(run.run_id, RunOutcome.blocked, name, gates=gated.records, durations=timer.durations)
    with timer.stage("register"):
        lineage = Lineage(
            git_commit=run.git_commit,
            data_fingerprint=prepared.data.fingerprint,
            data_uri=prepared.location,
            config_hash=config.config_hash(),
            pipeline_run_id=run.run_id,
            submission_id=run.submission_id,
        )
        registration = stages.register(config, packaged, lineage, gated, tracker)
    events = run.events.for_version(registration.version)
    events.emit(EventType.model_registered, stage="register", details={"aliases": list(registration.aliases)})
    with timer.stage("rollout"):
        sink = events.sink("rollout")
        rollout = stages.rollout(config, base_dir, settings.serving_target, registration, sink, tracker)
        logger.info("rollout: %s %s", rollout.outcome, rollout.reason)
    outcome = outcome_after_rollout(rollout.outcome)
    tracker.set_tags({Tag.outcome: outcome, Tag.rollout_outcome: rollout.outcome})
    events.emit(
        EventType.pipeline_succeeded,
        details={
            "durations_s": timer.durations,
            "cost_estimate": log_cost(config, timer, tracker),
            "rollout": rollout.outcome.value,
        },
    )
    return RunResult(
        run.run_id,
        outcome,
        config.registry.model_name,
        registration.version,
        registration.aliases,
        gated.records,
        timer.durations,
    )


def report_gate(
    config: PipelineConfig, gated: GateOutcome, timer: StageTimer, tracker: Tracker, events: Emitter
) -> None:
    """Send ``gate_passed``, or tag the run blocked and send ``gate_blocked`` with the run's numbers so far."""
    if not gated.blocking:
        events.emit(EventType.gate_passed, stage="gate", details={"gates": gated.records})
        return
    tracker.set_tags({Tag.outcome: RunOutcome.blocked})
    events.emit(
        EventType.gate_blocked,
        stage="gate",
        message=gated.reason,
        details={
            "gates": gated.records,
            "durations_s": timer.durations,
            "cost_estimate": log_cost(config, timer, tracker),
        },
    )
    logger.warning("gate blocked the candidate: %s", gated.reason)


def log_cost(config: PipelineConfig, timer: StageTimer, tracker: Tracker) -> float:
    """The run's estimated cost so far, logged as the run's ``cost_estimate`` metric."""
    cost = run_cost(config, timer.durations)
    tracker.log_metric("cost_estimate", cost)
    return cost


def report_failure(error: BaseException, stage: str, tracker: Tracker, events: Emitter) -> None:
    """A stage failed: send ``pipeline_failed`` first, then mark the run failed.

    The event goes first and each MLflow call is guarded: when MLflow is what failed, tagging the run
    fails too, and that must not cost the event that alerts people.
    """
    message = f"{type(error).__name__}: {error}"[:ERROR_LIMIT]
    events.emit(EventType.pipeline_failed, stage=stage, error=message, message=f"stage '{stage}' failed")
    try:
        tracker.set_tags({Tag.outcome: RunOutcome.failed, Tag.failed_stage: stage, Tag.error: message})
    except Exception as tagging:  # noqa: BLE001 - the stage's error is what the caller gets
        logger.error("could not tag the failed run: %s: %s", type(tagging).__name__, tagging)
    try:
        tracker.end_run("FAILED")
    except Exception as ending:  # noqa: BLE001 - as above
        logger.error("could not end the failed run: %s: %s", type(ending).__name__, ending)


def main(argv: list[str] | None = None) -> int:
    """Entrypoint: validate the file, run, print one JSON result line, map the outcome to an exit code."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.run", description=__doc__)
    parser.add_argument("--config", default="pipeline.yaml", help="pipeline definition (YAML)")
    parser.add_argument(
        "--data",
        help="run on this data set (path or URI) instead of the file's data.uri "
        f"(or {EnvVar.data.value}, which keeps a URI's credentials off the command line)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_environ()
    data = args.data or settings.data
    try:
        config = load_config(args.config)
        if data:
            config = with_data(config, data)
    except ConfigError as error:
        print(f"invalid pipeline definition: {error}", file=sys.stderr)
        return EXIT_CONFIG
    base_dir = Path(args.config).resolve().parent
    try:
        check_mlflow(settings)
        result = run_pipeline(config, base_dir, settings)
    except ServiceUnavailable as error:
        events = Emitter(
            config.events, base_dir, settings, pipeline=config.name, model_name=config.registry.model_name
        )
        events.emit(
            EventType.pipeline_failed,
            stage="setup",
            error=str(error),
            message="a required service is not reachable",
        )
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    except StageFailed as error:
        print(f"error: {error} (MLflow run {error.run_id})", file=sys.stderr)
        return EXIT_FAILED
    print(f"{RESULT_MARKER} " + json.dumps(result.to_dict(), sort_keys=True, default=str), flush=True)
    return exit_code(result.outcome)


if __name__ == "__main__":
    sys.exit(main())
