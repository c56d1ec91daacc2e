"""Watching what is served: triggers check, watch, export, labels and the report."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

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
    show_json_line,
    stdout_is_tty,
)
from lockgate.runtime import (
    cluster_watcher,
    local_environment,
    rollout_context,
    serving_path,
    watching,
)
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


def _live_store(state_dir: Path | None, cluster: bool) -> Any:
    """The live rollout state store whose orphaned rollouts a check reclaims.

    ``LOCKGATE_LIVE_STATE_URI`` when set (the stack's ``s3://…/rollout``); else, locally, the local
    environment's store; in a cluster without it, None (nothing to reclaim, as before).
    """
    from serving.livestate import open_store

    uri = Settings.from_environ().live_state_uri
    if uri:
        return open_store(uri)
    return None if cluster else open_store(local_environment(state_dir).live_state_uri)


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
        watcher = cluster_watcher(config, job_template, namespace, state_uri, serving_file)
        # The CronJob runs this every few minutes: it is what reclaims a rollout whose controller pod died.
        watcher.live_store = _live_store(None, cluster=True)
        result = watcher.check()
    elif serving_file is not None:
        raise CommandError(
            "--serving-file goes with --job-template (locally the pipeline file names it)", USAGE
        )
    else:
        with watching(config, state_dir, data) as watcher:
            watcher.live_store = _live_store(state_dir, cluster=False)
            result = watcher.check()
    typer.echo(json.dumps(result.summary(), indent=2, default=str))


class _WatchDisplay:
    """Where ``watch`` reports: plain lines (one JSON summary per check) off a terminal and under ``--json``."""

    def __init__(self, as_json: bool):
        self.as_json = as_json

    def opening(self, line: str) -> None:
        """What is watched and where the metrics are (stderr under ``--json``: stdout holds summaries only)."""
        typer.echo(line, err=self.as_json)

    def checking(self) -> None:
        """A check starts (nothing to say in a pipe)."""

    def checked(self, summary: dict[str, Any], at: datetime) -> None:
        """A check's result: its summary as one JSON line, for a log or a program."""
        show_json_line(summary)

    def waiting(self, next_in_s: float) -> None:
        """Time until the next check (nothing to say in a pipe)."""


class _WatchStatus(_WatchDisplay):
    """On a terminal: a Rich status line (last check, its verdict, next check in N s), each check above it."""

    def __init__(self, console: Any, status: Any, pipeline: str, interval_s: float):
        super().__init__(as_json=False)
        self.console, self.status, self.pipeline, self.interval_s = console, status, pipeline, interval_s
        self.last: tuple[datetime, dict[str, Any]] | None = None

    def _show(self, next_in_s: float | None) -> None:
        from rich.text import Text

        from lockgate.watch import describe_watch

        # Text, not markup: a check's explanation may hold brackets Rich would read as style tags.
        self.status.update(Text(describe_watch(self.pipeline, self.interval_s, self.last, next_in_s)))

    def opening(self, line: str) -> None:
        """Printed once, above the status line."""
        self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def checking(self) -> None:
        """The status says a check is running."""
        self._show(None)

    def checked(self, summary: dict[str, Any], at: datetime) -> None:
        """The check as a line a person reads, above the status line; the status shows its verdict."""
        from lockgate.watch import describe_check

        self.last = (at, summary)
        self.console.print(describe_check(summary, at), markup=False, highlight=False, soft_wrap=True)

    def waiting(self, next_in_s: float) -> None:
        """The status counts down to the next check."""
        self._show(next_in_s)


@contextmanager
def _watch_display(pipeline: str, interval_s: float, as_json: bool) -> Iterator[_WatchDisplay]:
    """A Rich status on a terminal; plain JSON lines in a pipe, a log or under ``--json``."""
    if as_json or not stdout_is_tty():
        yield _WatchDisplay(as_json)
        return
    from rich.console import Console  # only on a terminal: the CLI's start-up stays light
    from rich.text import Text

    console = Console()
    with console.status(Text(f"watching {pipeline}"), spinner="dots") as status:
        yield _WatchStatus(console, status, pipeline, interval_s)


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
    as_json: Annotated[
        bool,
        typer.Option(
            "--json", help="one JSON summary per check on stdout, as in a pipe (other lines go to stderr)"
        ),
    ] = False,
) -> None:
    """Check the triggers every interval (drift, degradation, schedule) and export metrics until stopped.

    On a terminal a status line shows the last check's verdict and counts down to the next; elsewhere (and
    with ``--json``) each check prints its summary as one JSON line.
    """
    parsed = load_config(config)
    file = load_serving_file(serving_path(config, parsed))
    exporter = _exporter(config, parsed, file.model_name)
    stop = _stop_on_sigterm()
    try:
        with (
            watching(config, state_dir, data, exporter) as watcher,
            _watch_display(parsed.name, interval, as_json) as display,
        ):
            watcher.live_store = _live_store(state_dir, cluster=False)
            port = exporter.serve(metrics_port)
            display.opening(
                f"watching {parsed.name} every {interval:g}s; metrics at http://127.0.0.1:{port}/metrics"
            )
            checks = 0
            while not stop.is_set():
                display.checking()
                exporter.poll()
                result = watcher.check()
                exporter.poll()
                checks += 1
                display.checked(result.summary(), datetime.now(UTC))
                if max_checks and checks >= max_checks:
                    break
                _wait_for_next_check(stop, interval, display)
    except KeyboardInterrupt:
        pass
    finally:
        exporter.close()


def _wait_for_next_check(stop: threading.Event, interval_s: float, display: _WatchDisplay) -> None:
    """Wait ``interval_s`` (less if asked to stop), telling the display the time left about every second."""
    deadline = time.monotonic() + interval_s
    while not stop.is_set():
        left = deadline - time.monotonic()
        if left <= 0:
            return
        display.waiting(left)
        stop.wait(min(1.0, left))


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
