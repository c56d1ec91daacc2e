"""Watching what is served: triggers check, watch, export, labels and the report."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from contracts.settings import EnvVar, Settings
from lockgate.cli.common import (
    BACKEND_CAUSES,
    PIPELINE_FILE,
    SERVING_ERRORS,
    USAGE,
    CommandError,
    ConfigFile,
    DataOption,
    JsonOption,
    ServingFileOverride,
    StateDir,
    exits_on_error,
    show,
)
from lockgate.runtime import cluster_watcher, rollout_context, serving_path, watching
from pipeline.config import PipelineConfig, load_config
from serving.desired import load_serving_file

if TYPE_CHECKING:
    from lockgate.exporter import Exporter

commands = typer.Typer()
triggers_app = typer.Typer(no_args_is_help=True, help="Retraining triggers: drift, degradation, schedule.")


def _exporter(
    config: Path, parsed: PipelineConfig, model_name: str, events_uri: str | None = None
) -> Exporter:
    """Lockgate's metrics for the pipeline and its model, fed from the event store or the pipeline's log file."""
    from lockgate.exporter import Exporter
    from pipeline.events import log_path

    return Exporter(parsed.name, model_name, events_uri or log_path(parsed.events, config.resolve().parent))


def _stop_on_sigterm() -> threading.Event:
    """An event set when the process is asked to stop (SIGTERM), so a serving loop can end cleanly."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    return stop


@triggers_app.command("check")
@exits_on_error(causes=BACKEND_CAUSES)
def triggers_check(
    config: ConfigFile = PIPELINE_FILE,
    state_dir: StateDir = None,
    data: DataOption = None,
    job_template: Annotated[
        Path | None,
        typer.Option(
            envvar=EnvVar.job_template.value,
            help="in a Kubernetes cluster: start runs as RayJobs from this template (the stack's "
            "trainingJobManifest) instead of on the local environment",
        ),
    ] = None,
    namespace: Annotated[
        str | None,
        typer.Option(envvar=EnvVar.namespace.value, help="with --job-template: default, the pod's"),
    ] = None,
    state_uri: Annotated[
        str | None,
        typer.Option(
            envvar=EnvVar.state_uri.value,
            help="with --job-template: where checks keep state (path or s3://…)",
        ),
    ] = None,
    serving_file: ServingFileOverride = None,
) -> None:
    """Run the trigger checks once: judge new traffic and labels, start a run if a trigger fires."""
    if job_template is not None:
        if data:
            raise CommandError("--data: a cluster run trains on the pipeline file's data.uri", USAGE)
        result = cluster_watcher(config, job_template, namespace, state_uri, serving_file).check()
    elif serving_file is not None:
        raise CommandError(
            "--serving-file goes with --job-template (locally the pipeline file names it)", USAGE
        )
    else:
        with watching(config, state_dir, data) as watcher:
            result = watcher.check()
    typer.echo(json.dumps(result.summary(), indent=2, default=str))


@commands.command()
@exits_on_error(causes=BACKEND_CAUSES)
def watch(
    config: ConfigFile = PIPELINE_FILE,
    state_dir: StateDir = None,
    data: DataOption = None,
    interval: Annotated[float, typer.Option(min=1, help="seconds between checks")] = 30.0,
    metrics_port: Annotated[
        int, typer.Option(help="serve Lockgate's metrics on 127.0.0.1 (0: any free port)")
    ] = 9464,
    max_checks: Annotated[
        int, typer.Option(min=0, help="stop after this many checks (0: until stopped)")
    ] = 0,
) -> None:
    """Check the triggers every interval (drift, degradation, schedule) and export metrics until stopped."""
    parsed = load_config(config)
    file = load_serving_file(serving_path(config, parsed))
    exporter = _exporter(config, parsed, file.model_name)
    stop = _stop_on_sigterm()
    try:
        with watching(config, state_dir, data, exporter) as watcher:
            port = exporter.serve(metrics_port)
            typer.echo(
                f"watching {parsed.name} every {interval:g}s; metrics at http://127.0.0.1:{port}/metrics"
            )
            checks = 0
            while not stop.is_set():
                exporter.poll()
                result = watcher.check()
                exporter.poll()
                checks += 1
                typer.echo(json.dumps(result.summary(), default=str))
                if max_checks and checks >= max_checks:
                    break
                stop.wait(interval)
    except KeyboardInterrupt:
        pass
    finally:
        exporter.close()


@commands.command()
@exits_on_error(dict.fromkeys(SERVING_ERRORS, USAGE), causes=BACKEND_CAUSES)
def export(
    config: ConfigFile = PIPELINE_FILE,
    events_uri: Annotated[
        str | None,
        typer.Option(
            envvar=EnvVar.events_uri.value, help="the event store (s3://…); unset: the pipeline's log file"
        ),
    ] = None,
    state_uri: Annotated[
        str | None,
        typer.Option(
            envvar=EnvVar.state_uri.value, help="the trigger checks' state, for drift and quality (s3://…)"
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="address to serve /metrics on (a pod's: 0.0.0.0)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port for /metrics (0: any free port)")] = 9464,
    interval: Annotated[float, typer.Option(min=1, help="seconds between reads of the events")] = 15.0,
    serving_file: ServingFileOverride = None,
) -> None:
    """Serve Lockgate's metrics (runs, stages, cost, rollouts, triggers, drift, quality) until stopped.

    The cluster's exporter: runs, trigger checks and rollouts each write events from their own pods; this
    reads them (and the checks' drift and quality history) for Prometheus. Locally, `lockgate watch` does it.
    """
    from pipeline.history import history_store

    parsed = load_config(config)
    file = load_serving_file(serving_path(config, parsed, serving_file))
    exporter = _exporter(config, parsed, file.model_name, events_uri)
    history = history_store(state_uri, file.model_name) if state_uri else None
    stop = _stop_on_sigterm()
    bound = exporter.serve(port, host)
    typer.echo(f"serving {parsed.name}'s metrics at http://{host}:{bound}/metrics")
    try:
        while not stop.is_set():
            try:
                exporter.poll()
                if history is not None:
                    exporter.read_history(history)
            except OSError as error:  # the store may be briefly unreachable: keep serving, try again
                typer.echo(f"events not read: {error}", err=True)
            stop.wait(interval)
    except KeyboardInterrupt:
        pass
    finally:
        exporter.close()


@commands.command()
@exits_on_error(causes=BACKEND_CAUSES)
def labels(
    file: Annotated[
        Path,
        typer.Argument(help="CSV or Parquet with columns request_id and label (0/1, a class or a number)"),
    ],
    config: ConfigFile = PIPELINE_FILE,
    state_dir: StateDir = None,
    as_json: JsonOption = False,
) -> None:
    """Attach labels that arrived after the answers (joined to captured requests by request id).

    With no local environment up: the capture location of the serving file (capture.uri) or LOCKGATE_CAPTURE_URI.
    """
    import pandas as pd

    from serving.capture import write_labels

    with rollout_context(config, state_dir) as context:
        capture_uri = context.serving.capture.uri or (
            Settings.from_environ().capture_uri if context.remote else str(context.env.capture_dir)
        )
        if not capture_uri:
            raise CommandError(
                f"capture.uri: not set in the serving file and {EnvVar.capture_uri.value} is not set "
                "(where the stack's router captures, e.g. s3://<bucket>/capture)",
                USAGE,
            )
        try:
            frame = pd.read_parquet(file) if file.suffix == ".parquet" else pd.read_csv(file)
        except (OSError, ValueError) as error:
            raise CommandError(f"{file}: cannot read: {error}") from None
        missing = {"request_id", "label"} - set(frame.columns)
        if missing:
            raise CommandError(
                f"{file}: missing column(s) {sorted(missing)}; need request_id and label", USAGE
            )
        try:
            path, count = write_labels(
                capture_uri,
                zip(frame["request_id"].astype(str), frame["label"].tolist(), strict=True),
            )
        except ValueError as error:
            raise CommandError(f"{file}: {error}", USAGE) from None
    show({"path": str(path), "labels": count}, f"recorded {count} labels in {path}", as_json)


@commands.command()
@exits_on_error(causes=BACKEND_CAUSES)
def report(
    config: ConfigFile = PIPELINE_FILE,
    state_dir: StateDir = None,
    out: Annotated[Path, typer.Option(help="where to write the HTML report")] = Path("lockgate-report.html"),
    as_json: JsonOption = False,
) -> None:
    """Write the HTML report (runs, durations and cost, model metrics, serving, drift, delivery) and log it.

    With no local environment up: logged to the MLflow MLFLOW_TRACKING_URI names, with the trigger checks'
    history from LOCKGATE_STATE_URI when set.
    """
    from pipeline.report import write_report

    with rollout_context(config, state_dir) as context:
        state: str | Path = context.env.state_dir
        if context.remote:
            state = Settings.from_environ().state_uri or state
        path, run_id = write_report(
            context.config, config.resolve().parent, context.serving.model_name, state, out
        )
    show(
        {"path": str(path), "mlflow_run_id": run_id},
        f"report written to {path} and logged to MLflow run {run_id}",
        as_json,
    )
