"""The ``lockgate`` command: the local environment, pipeline files, runs and the end-to-end demo."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from lockgate.localenv import EnvironmentError_, LocalEnvironment, Ports, default_state_dir
from pipeline.config import ConfigError, json_schema, load_config

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
data_app = typer.Typer(
    no_args_is_help=True, help="Make the shipped data set, a shifted batch or a bad batch."
)
app.add_typer(data_app, name="data")
rollout_app = typer.Typer(no_args_is_help=True, help="Inspect and steer the candidate's traffic share.")
app.add_typer(rollout_app, name="rollout")

StateDir = Annotated[
    Path | None, typer.Option("--state-dir", help="state directory [default: $LOCKGATE_HOME or ./.lockgate]")
]
MlflowPort = Annotated[int, typer.Option("--mlflow-port", help="MLflow tracking server port")]
RayPort = Annotated[int, typer.Option("--ray-port", help="Ray GCS port (Ray's other ports follow it)")]
DashboardPort = Annotated[int, typer.Option("--dashboard-port", help="Ray dashboard / Jobs API port")]
ConfigFile = Annotated[Path, typer.Option("--config", "-c", help="pipeline definition")]
DEFAULTS = Ports()


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _environment(
    state_dir: Path | None,
    mlflow_port: int = DEFAULTS.mlflow,
    ray_port: int = DEFAULTS.ray_gcs,
    dashboard_port: int = DEFAULTS.ray_dashboard,
) -> LocalEnvironment:
    env = LocalEnvironment(
        state_dir or default_state_dir(), Ports.from_base(mlflow_port, ray_port, dashboard_port)
    )
    state = env.read_state()
    if state is not None:
        env.ports = state.ports
    return env


@app.command()
def up(
    state_dir: StateDir = None,
    mlflow_port: MlflowPort = DEFAULTS.mlflow,
    ray_port: RayPort = DEFAULTS.ray_gcs,
    dashboard_port: DashboardPort = DEFAULTS.ray_dashboard,
    num_cpus: Annotated[
        int | None, typer.Option(help="logical CPUs Ray schedules with [default: 2x cores, at least 4]")
    ] = None,
    serve_ingress: Annotated[
        str,
        typer.Option(
            help="Ray Serve ingress: 'proxy' (Serve's proxy, everything on 127.0.0.1) or 'haproxy' (HAProxy + "
            "throughput-optimised replicas, ~5x the throughput; Ray binds HAProxy's stats/metrics ports on all "
            "interfaces)"
        ),
    ] = "proxy",
) -> None:
    """Start (or reuse) the local Ray head and MLflow server on 127.0.0.1."""
    try:
        env = LocalEnvironment(
            state_dir or default_state_dir(),
            Ports.from_base(mlflow_port, ray_port, dashboard_port),
            num_cpus,
            serve_ingress,
        )
        if serve_ingress == "haproxy":
            stats = env.ingress_env()
            typer.echo(
                "warning: with the haproxy ingress, Ray binds HAProxy's stats (port "
                f"{stats['RAY_SERVE_HAPROXY_STATS_PORT']}) and metrics (port "
                f"{stats['RAY_SERVE_HAPROXY_METRICS_PORT']}) on all interfaces"
            )
        state, reused = env.up(log=typer.echo)
    except EnvironmentError_ as error:
        raise _fail(str(error)) from None
    typer.echo(
        f"{'reused' if reused else 'started'}: MLflow {state.mlflow.url} (pid {state.mlflow.pid}), "
        f"Ray dashboard {state.ray.url} (pid {state.ray.pid}); state in {env.state_dir}"
    )


@app.command()
def down(state_dir: StateDir = None) -> None:
    """Stop exactly the processes `up` recorded (data, credentials and logs are kept)."""
    try:
        _environment(state_dir).down(log=typer.echo)
    except EnvironmentError_ as error:
        raise _fail(str(error)) from None


@app.command()
def status(
    state_dir: StateDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Report each service's PID and health; exit 1 when anything is down."""
    env = _environment(state_dir)
    report = env.health()
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    elif not report:
        typer.echo(f"no environment recorded in {env.state_dir}: run `lockgate up`")
    else:
        for name, service in report.items():
            state = (
                "healthy"
                if service["alive"] and service["healthy"]
                else ("unhealthy (process alive)" if service["alive"] else "down")
            )
            typer.echo(f"{name:<7} {state:<26} pid={service['pid']:<8} {service['url']}")
    if not report or not all(s["alive"] and s["healthy"] for s in report.values()):
        raise typer.Exit(1)


@app.command("env")
def env_command(state_dir: StateDir = None) -> None:
    """Print shell exports that point `ray job submit` and MLflow clients at the environment (no secrets)."""
    env = _environment(state_dir)
    for key, value in env.client_env(include_secrets=False).items():
        typer.echo(f"export {key}={value}")
    typer.echo(f"export MLFLOW_TRACKING_USERNAME={env.credentials()['mlflow_username']}")
    typer.echo(f"# MLflow password: {env.state_dir / 'credentials.json'} (mlflow_password)")


@app.command()
def validate(config: ConfigFile = Path("pipeline.yaml")) -> None:
    """Validate a pipeline file; print every problem with its field path."""
    try:
        parsed = load_config(config)
    except ConfigError as error:
        raise _fail(str(error), 2) from None
    typer.echo(
        f"{config}: valid (pipeline '{parsed.name}', model '{parsed.registry.model_name}', "
        f"config hash {parsed.config_hash()})"
    )


@app.command()
def schema() -> None:
    """Print the pipeline definition's JSON schema."""
    typer.echo(json.dumps(json_schema(), indent=2))


@app.command()
def run(
    config: ConfigFile = Path("pipeline.yaml"),
    state_dir: StateDir = None,
    data: Annotated[str | None, typer.Option(help="a new batch (path or URI) instead of data.uri")] = None,
) -> None:
    """Submit one pipeline run as a Ray job, stream its logs, exit non-zero unless a version was registered."""
    from lockgate.jobs import submit_pipeline

    try:
        outcome = submit_pipeline(_environment(state_dir), config, stream=typer.echo, data=data)
    except ConfigError as error:
        raise _fail(str(error), 2) from None
    except EnvironmentError_ as error:
        raise _fail(str(error)) from None
    typer.echo(
        f"job {outcome.submission_id}: {outcome.status}, outcome {outcome.outcome}, MLflow run {outcome.run_id}"
    )
    raise typer.Exit(outcome.exit_code)


@app.command()
def summary(config: ConfigFile = Path("pipeline.yaml"), state_dir: StateDir = None) -> None:
    """Show the registered versions of the pipeline's model: aliases, gates, lineage."""
    from lockgate.jobs import activate
    from lockgate.summary import format_summary, registry_summary

    try:
        parsed = load_config(config)
        env = _environment(state_dir)
        activate(env)
    except ConfigError as error:
        raise _fail(str(error), 2) from None
    except EnvironmentError_ as error:
        raise _fail(str(error)) from None
    typer.echo(format_summary(parsed.registry.model_name, registry_summary(parsed.registry.model_name)))


@app.command()
def demo(
    config: ConfigFile = Path("pipeline.yaml"),
    state_dir: StateDir = None,
    mlflow_port: MlflowPort = DEFAULTS.mlflow,
    ray_port: RayPort = DEFAULTS.ray_gcs,
    dashboard_port: DashboardPort = DEFAULTS.ray_dashboard,
) -> None:
    """The main job: start the environment, three runs with rollouts, then the drift loop; summary and report."""
    from lockgate.jobs import submit_pipeline
    from lockgate.summary import format_summary, registry_summary
    from lockgate.traffic import TrafficSimulator
    from pipeline.data import make_loans, write_table
    from serving.desired import load_serving_file

    try:
        parsed = load_config(config)
    except ConfigError as error:
        raise _fail(str(error), 2) from None
    env = LocalEnvironment(
        state_dir or default_state_dir(), Ports.from_base(mlflow_port, ray_port, dashboard_port)
    )
    try:
        env.up(log=typer.echo)
        env = _environment(state_dir, mlflow_port, ray_port, dashboard_port)
        # Run 2 trains on next month's batch (same population, new rows), as a scheduled retrain would.
        # Run 3 trains on a batch after default risk rose across the board: it ranks as well offline, so
        # it passes its gates, but it predicts far higher than the champion on live traffic.
        data_dir = env.state_dir / "data"
        runs = [
            (None, "the shipped data set"),
            (
                str(write_table(make_loans(20_000, seed=1), data_dir / "loans-batch-2.parquet")),
                "next month's batch",
            ),
            (
                str(
                    write_table(
                        make_loans(20_000, seed=2, risk_shift=1.2), data_dir / "loans-batch-3.parquet"
                    )
                ),
                "a batch after default risk rose (concept drift)",
            ),
        ]
        serving = load_serving_file(_serving_path(config, parsed)).serving
        url = f"http://{serving.http_host}:{serving.http_port}{serving.route_prefix}"
        # Simulated users, so the rollout has live evidence to judge: rows of the shipped data, 4 clients.
        data_file = config.resolve().parent / parsed.data.uri
        users = TrafficSimulator(url, data_file, list(parsed.features)).start()
        outcomes = []
        try:
            for attempt, (data, story) in enumerate(runs, 1):
                typer.echo(f"\n=== pipeline run {attempt} of {len(runs)}: {story} ===")
                outcomes.append((story, submit_pipeline(env, config, stream=typer.echo, data=data)))
        finally:
            users.stop()
        # The loop closes: the population shifts; nobody starts the next run.
        shifted = write_table(make_loans(20_000, seed=4, shift=0.8), data_dir / "loans-batch-4.parquet")
        typer.echo(
            "\n=== the loop: the applicant population shifts; `lockgate watch` checks captured traffic ==="
        )
        shifted_users = TrafficSimulator(url, shifted, list(parsed.features)).start()
        try:
            triggered = _watch_until_triggered(config, state_dir, str(shifted), env, time.time())
            if triggered is not None:
                outcomes.append(("retraining started by the drift trigger", triggered))
        finally:
            shifted_users.stop()
        from pipeline.report import write_report

        report_path, _ = write_report(
            parsed,
            config.resolve().parent,
            parsed.registry.model_name,
            env.state_dir,
            env.state_dir / "report.html",
        )
    except _serving_errors() as error:
        raise _fail(str(error)) from None
    typer.echo("\n=== summary ===")
    for attempt, (story, outcome) in enumerate(outcomes, 1):
        typer.echo(
            f"run {attempt} ({story}): {outcome.outcome} "
            f"(job {outcome.submission_id}, MLflow run {outcome.run_id})"
        )
    typer.echo(format_summary(parsed.registry.model_name, registry_summary(parsed.registry.model_name)))
    answers = users.answers + shifted_users.answers
    typer.echo(
        f"simulated users: {dict(answers)} answers by version, {users.failed + shifted_users.failed} failed; "
        f"the router keeps serving at {url}"
    )
    typer.echo(f"report: {report_path} (also logged to MLflow)")
    creds = env.state_dir / "credentials.json"
    typer.echo(
        f"\nMLflow UI:     {env.mlflow_url}  (user {env.credentials()['mlflow_username']}, password in {creds})"
    )
    typer.echo(f"Ray dashboard: {env.dashboard_url}  (token in {env.ray_token_path})")
    typer.echo("The environment keeps running for you to look around; stop it with `lockgate down`.")
    if any(o.exit_code not in (0, 3) for _, o in outcomes) or len(outcomes) < len(runs) + 1:
        raise typer.Exit(1)


def _watch_until_triggered(
    config: Path, state_dir: Path | None, data: str, env: LocalEnvironment, shifted_at: float
) -> Any:
    """Run trigger checks every few seconds until one starts a run (bounded); follow that run to its end."""
    from lockgate.jobs import job_client, wait_pipeline
    from pipeline.run import with_data

    watcher = _watcher(config, state_dir, data)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        result = watcher.check()
        line = result.summary()
        typer.echo(
            f"check: champion v{line['champion']}, {line['window_rows']} new captured rows, "
            f"drifted={line['drifted']}: {line['explanation']}"
        )
        if result.submission_id is not None:
            fired = time.time()
            typer.echo(f"trigger fired ({line['reason']}): Ray job {result.submission_id}; following it")
            parsed = with_data(load_config(config), data)
            client = job_client(env)
            outcome = wait_pipeline(client, result.submission_id, parsed, stream=typer.echo)
            started_ms = client.get_job_info(result.submission_id).start_time or 0
            typer.echo(
                f"timing: population shift -> trigger fired {fired - shifted_at:.1f}s; "
                f"-> retraining job started {started_ms / 1000 - shifted_at:.1f}s"
            )
            return outcome
        time.sleep(5)
    typer.echo("no trigger fired within 300 s")
    return None


ServingFileOption = Annotated[Path, typer.Option("--file", "-f", help="serving file")]


def _apply(env: LocalEnvironment, serving_file: Path) -> str:
    """Deploy the desired serving state in place; returns what is now served."""
    from lockgate.jobs import activate
    from serving.desired import apply_desired, describe, load_serving_file

    file = load_serving_file(serving_file)
    activate(env)
    router = apply_desired(
        env.dashboard_url, env.ray_auth_header(), file, _rollout_path(env, file.model_name)
    )
    return describe(file, router)


def _rollout_path(env: LocalEnvironment, model_name: str) -> Path:
    return env.state_dir / "rollout" / f"{model_name}.json"


def _serving_errors() -> tuple[type[Exception], ...]:
    from serving.deploy import DeployError
    from serving.desired import ServingFileError

    return (ServingFileError, DeployError, EnvironmentError_)


@app.command()
def apply(serving_file: ServingFileOption = Path("serving.yaml"), state_dir: StateDir = None) -> None:
    """Render the desired serving state (file + rollout state + registry aliases) and deploy it in place."""
    try:
        typer.echo(_apply(_environment(state_dir), serving_file))
    except _serving_errors() as error:
        raise _fail(str(error)) from None


@rollout_app.command("status")
def rollout_status(
    serving_file: ServingFileOption = Path("serving.yaml"), state_dir: StateDir = None
) -> None:
    """Show the rollout state and whether the serving file pins the weight."""
    from serving.desired import load_serving_file, read_rollout_state

    try:
        file = load_serving_file(serving_file)
    except _serving_errors() as error:
        raise _fail(str(error)) from None
    env = _environment(state_dir)
    state = read_rollout_state(_rollout_path(env, file.model_name))
    pinned = file.traffic.candidate_weight
    typer.echo(
        f"model {file.model_name}: rollout weight {state.candidate_weight:g}%"
        f"{' (paused)' if state.paused else ''}; "
        + (f"pinned to {pinned:g}% by {serving_file}" if pinned is not None else "not pinned")
    )


@rollout_app.command("set-weight")
def rollout_set_weight(
    weight: Annotated[float, typer.Argument(min=0, max=100, help="candidate share in percent")],
    serving_file: ServingFileOption = Path("serving.yaml"),
    state_dir: StateDir = None,
) -> None:
    """Write the candidate's share to the rollout state and apply it (a pin in the serving file still wins)."""
    from serving.desired import load_serving_file, read_rollout_state, write_rollout_state

    env = _environment(state_dir)
    try:
        file = load_serving_file(serving_file)
        path = _rollout_path(env, file.model_name)
        write_rollout_state(path, read_rollout_state(path).model_copy(update={"candidate_weight": weight}))
        typer.echo(_apply(env, serving_file))
    except _serving_errors() as error:
        raise _fail(str(error)) from None


def _serving_path(config: Path, parsed: Any, override: Path | None = None) -> Path:
    """The serving file a pipeline file names (relative to it), unless another one is given."""
    return override or config.resolve().parent / parsed.rollout.serving_file


def _rollout_context(config: Path, state_dir: Path | None) -> tuple[Any, Path, LocalEnvironment, Any]:
    """Pipeline config, serving file path, the active environment, and the parsed serving file."""
    from lockgate.jobs import activate
    from serving.desired import load_serving_file

    parsed = load_config(config)
    serving_file = _serving_path(config, parsed)
    env = _environment(state_dir)
    activate(env)
    return parsed, serving_file, env, load_serving_file(serving_file)


def _connect_ray(env: LocalEnvironment) -> None:
    import ray  # imported only now: activate() has set the token and loopback settings it reads

    ray.init(address=f"127.0.0.1:{env.ports.ray_gcs}", logging_level=logging.ERROR, log_to_driver=False)


@rollout_app.command("run")
def rollout_run(config: ConfigFile = Path("pipeline.yaml"), state_dir: StateDir = None) -> None:
    """Roll the current candidate out step by step: promote at 100%, roll back on the first breach."""
    from pipeline.events import Event, EventType, emit
    from serving.desired import registry_aliases
    from serving.live import live_effects
    from serving.rollout import RolloutController

    try:
        parsed, serving_file, env, file = _rollout_context(config, state_dir)
        aliases = registry_aliases(file.model_name)
    except ConfigError as error:
        raise _fail(str(error), 2) from None
    except _serving_errors() as error:
        raise _fail(str(error)) from None
    if "candidate" not in aliases or "champion" not in aliases:
        raise _fail(f"model {file.model_name} needs a champion and a candidate to roll out, has {aliases}")
    champion, candidate = aliases["champion"], aliases["candidate"]
    base_dir = config.resolve().parent

    def send(kind: str, message: str, details: dict[str, Any]) -> None:
        typer.echo(f"[{kind}] {message}")
        event = Event(
            type=EventType(kind),
            pipeline=parsed.name,
            model_name=file.model_name,
            model_version=candidate,
            message=message,
            details=details,
        )
        emit(event, parsed.events, base_dir)

    _connect_ray(env)
    effects = live_effects(
        env.dashboard_url,
        env.ray_auth_header(),
        env.metrics_url,
        serving_file,
        _rollout_path(env, file.model_name),
        (champion, candidate),
        send,
    )
    result = RolloutController(parsed.rollout, champion, candidate, effects).run()
    typer.echo(
        "ROLLOUT_RESULT "
        + json.dumps({"outcome": result.outcome, "reason": result.reason, "steps": result.steps}, default=str)
    )
    raise typer.Exit(0 if result.outcome in ("promoted", "pinned", "paused") else 3)


@rollout_app.command("promote")
def rollout_promote(config: ConfigFile = Path("pipeline.yaml"), state_dir: StateDir = None) -> None:
    """Promote the candidate now (compare-and-set on the aliases), then serve it as champion."""
    from serving import promotion
    from serving.desired import RolloutState, registry_aliases, write_rollout_state

    parsed, serving_file, env, file = _rollout_context(config, state_dir)
    aliases = registry_aliases(file.model_name)
    if "candidate" not in aliases:
        raise _fail(f"model {file.model_name} has no candidate to promote")
    _connect_ray(env)
    outcome = promotion.promote(file.model_name, aliases["candidate"], aliases.get("champion"))
    if not outcome["ok"]:
        raise _fail(f"promotion refused: {outcome['reason']}")
    write_rollout_state(_rollout_path(env, file.model_name), RolloutState())
    typer.echo(_apply(env, serving_file))


@rollout_app.command("rollback")
def rollout_rollback(config: ConfigFile = Path("pipeline.yaml"), state_dir: StateDir = None) -> None:
    """Restore the previous champion (compare-and-set), then serve it."""
    from serving import promotion

    parsed, serving_file, env, file = _rollout_context(config, state_dir)
    _connect_ray(env)
    outcome = promotion.restore_previous(file.model_name)
    if not outcome["ok"]:
        raise _fail(f"rollback refused: {outcome['reason']}")
    typer.echo(_apply(env, serving_file))


@rollout_app.command("pause")
def rollout_pause(serving_file: ServingFileOption = Path("serving.yaml"), state_dir: StateDir = None) -> None:
    """Stop automation at its next step; the current weight stays."""
    _set_paused(serving_file, state_dir, True)


@rollout_app.command("resume")
def rollout_resume(
    serving_file: ServingFileOption = Path("serving.yaml"), state_dir: StateDir = None
) -> None:
    """Allow automation again (start it with `lockgate rollout run`)."""
    _set_paused(serving_file, state_dir, False)


def _set_paused(serving_file: Path, state_dir: Path | None, paused: bool) -> None:
    from serving.desired import load_serving_file, read_rollout_state, write_rollout_state

    try:
        file = load_serving_file(serving_file)
    except _serving_errors() as error:
        raise _fail(str(error)) from None
    path = _rollout_path(_environment(state_dir), file.model_name)
    write_rollout_state(path, read_rollout_state(path).model_copy(update={"paused": paused}))
    typer.echo(f"rollout of {file.model_name} {'paused' if paused else 'resumed'}")


@data_app.command("generate")
def data_generate(
    out: Annotated[Path, typer.Option("--out", "-o", help="target file (.parquet or .csv)")],
    rows: Annotated[int, typer.Option(help="number of rows")] = 20_000,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    shift: Annotated[float, typer.Option(help="population shift in [0, 1] (drift)")] = 0.0,
    bad_fraction: Annotated[float, typer.Option(help="share of corrupted rows in [0, 1]")] = 0.0,
    risk_shift: Annotated[float, typer.Option(help="added log-odds of default (concept drift)")] = 0.0,
) -> None:
    """Write a loan-default batch: the shipped set, a shifted batch, or a bad batch."""
    from pipeline.data import make_loans, write_table

    try:
        path = write_table(make_loans(rows, seed, shift, bad_fraction, risk_shift), out)
    except ValueError as error:
        raise _fail(str(error), 2) from None
    typer.echo(f"wrote {rows} rows to {path}")


def main() -> None:
    """Console-script entry point."""
    sys.exit(app())


triggers_app = typer.Typer(no_args_is_help=True, help="Retraining triggers: drift, degradation, schedule.")
app.add_typer(triggers_app, name="triggers")


def _watcher(config: Path, state_dir: Path | None, data: str | None, exporter: Any = None) -> Any:
    """A watcher for the pipeline file's model, wired to the environment (capture, jobs, metrics)."""
    from lockgate.jobs import running_pipeline_jobs, start_pipeline
    from lockgate.watch import Watcher

    parsed, serving_file, env, file = _rollout_context(config, state_dir)
    capture_uri = file.capture.uri or str(env.capture_dir)

    def submit(trigger: dict[str, Any]) -> str:
        _, submission_id, _ = start_pipeline(env, config, data=data, trigger=trigger)
        return str(submission_id)

    return Watcher(
        parsed,
        config.resolve().parent,
        file.model_name,
        capture_uri,
        str(env.state_dir),
        submit=submit,
        running_runs=lambda: running_pipeline_jobs(env, parsed.name),
        metrics_url=env.metrics_url,
        exporter=exporter,
    )


DataOption = Annotated[
    str | None, typer.Option(help="what a triggered run trains on (path or URI) instead of data.uri")
]


def _cluster_watcher(
    config: Path, job_template: Path, namespace: str | None, state_uri: str | None, serving_file: Path | None
) -> Any:
    """A watcher in a Kubernetes cluster: state and capture in the artefact store, runs started as RayJobs.

    MLflow is reached through MLFLOW_TRACKING_URI and its credentials in the pod's environment.
    """
    from lockgate.kuberay import KubeRayLauncher, current_namespace, load_template
    from lockgate.watch import Watcher
    from serving.desired import CAPTURE_URI_ENV, load_serving_file

    parsed = load_config(config)
    file = load_serving_file(_serving_path(config, parsed, serving_file))
    capture_uri = file.capture.uri or os.environ.get(CAPTURE_URI_ENV)
    if not capture_uri:
        raise _fail(f"capture.uri: not set in the serving file and {CAPTURE_URI_ENV} is not set", 2)
    if not state_uri:
        raise _fail(f"--state-uri (or {STATE_URI_ENV}): where the checks keep their memory, e.g. s3://…", 2)
    launcher = KubeRayLauncher(load_template(job_template), current_namespace(namespace), parsed.name)
    return Watcher(
        parsed,
        config.resolve().parent,
        file.model_name,
        capture_uri,
        state_uri,
        submit=launcher.submit,
        running_runs=launcher.running,
    )


STATE_URI_ENV = "LOCKGATE_STATE_URI"
ServingFileOverride = Annotated[
    Path | None,
    typer.Option(
        "--serving-file",
        envvar="LOCKGATE_SERVING_FILE",
        help="what is served, instead of the pipeline file's rollout.serving_file (a cluster: the stack's)",
    ),
]


@triggers_app.command("check")
def triggers_check(
    config: ConfigFile = Path("pipeline.yaml"),
    state_dir: StateDir = None,
    data: DataOption = None,
    job_template: Annotated[
        Path | None,
        typer.Option(
            envvar="LOCKGATE_JOB_TEMPLATE",
            help="in a Kubernetes cluster: start runs as RayJobs from this template (the stack's "
            "trainingJobManifest) instead of on the local environment",
        ),
    ] = None,
    namespace: Annotated[
        str | None, typer.Option(envvar="LOCKGATE_NAMESPACE", help="with --job-template: default, the pod's")
    ] = None,
    state_uri: Annotated[
        str | None,
        typer.Option(
            envvar=STATE_URI_ENV, help="with --job-template: where checks keep state (path or s3://…)"
        ),
    ] = None,
    serving_file: ServingFileOverride = None,
) -> None:
    """Run the trigger checks once: judge new traffic and labels, start a run if a trigger fires."""
    from lockgate.kuberay import LaunchError, TemplateError

    try:
        if job_template is not None:
            if data:
                raise _fail("--data: a cluster run trains on the pipeline file's data.uri", 2)
            watcher = _cluster_watcher(config, job_template, namespace, state_uri, serving_file)
        elif serving_file is not None:
            raise _fail("--serving-file goes with --job-template (locally the pipeline file names it)", 2)
        else:
            watcher = _watcher(config, state_dir, data)
        result = watcher.check()
    except (ConfigError, TemplateError) as error:
        raise _fail(str(error), 2) from None
    except _serving_errors() + (LaunchError,) as error:
        raise _fail(str(error)) from None
    typer.echo(json.dumps(result.summary(), indent=2, default=str))


@app.command()
def watch(
    config: ConfigFile = Path("pipeline.yaml"),
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
    import signal
    import threading

    from lockgate.exporter import Exporter

    try:
        parsed = load_config(config)
    except ConfigError as error:
        raise _fail(str(error), 2) from None
    from pipeline.events import log_path
    from serving.desired import load_serving_file

    events_file = log_path(parsed.events, config.resolve().parent)

    file = load_serving_file(_serving_path(config, parsed))
    exporter = Exporter(parsed.name, file.model_name, events_file)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        watcher = _watcher(config, state_dir, data, exporter)
        port = exporter.serve(metrics_port)
        typer.echo(f"watching {parsed.name} every {interval:g}s; metrics at http://127.0.0.1:{port}/metrics")
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
    except _serving_errors() as error:
        raise _fail(str(error)) from None
    finally:
        exporter.close()


@app.command()
def export(
    config: ConfigFile = Path("pipeline.yaml"),
    events_uri: Annotated[
        str | None,
        typer.Option(
            envvar="LOCKGATE_EVENTS_URI", help="the event store (s3://…); unset: the pipeline's log file"
        ),
    ] = None,
    state_uri: Annotated[
        str | None,
        typer.Option(envvar=STATE_URI_ENV, help="the trigger checks' state, for drift and quality (s3://…)"),
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
    import signal
    import threading

    from lockgate.exporter import Exporter
    from pipeline.events import log_path
    from pipeline.report import history_store
    from serving.desired import load_serving_file

    try:
        parsed = load_config(config)
        file = load_serving_file(_serving_path(config, parsed, serving_file))
    except ConfigError as error:
        raise _fail(str(error), 2) from None
    except _serving_errors() as error:
        raise _fail(str(error), 2) from None
    exporter = Exporter(
        parsed.name, file.model_name, events_uri or log_path(parsed.events, config.resolve().parent)
    )
    history = history_store(state_uri, file.model_name) if state_uri else None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
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


@app.command()
def labels(
    file: Annotated[Path, typer.Argument(help="CSV or Parquet with columns request_id and label (0/1)")],
    config: ConfigFile = Path("pipeline.yaml"),
    state_dir: StateDir = None,
) -> None:
    """Attach labels that arrived after the answers (joined to captured requests by request id)."""
    import pandas as pd

    from serving.capture import write_labels

    _, _, env, serving = _rollout_context(config, state_dir)
    try:
        frame = pd.read_parquet(file) if file.suffix == ".parquet" else pd.read_csv(file)
    except (OSError, ValueError) as error:
        raise _fail(f"{file}: cannot read: {error}") from None
    missing = {"request_id", "label"} - set(frame.columns)
    if missing:
        raise _fail(f"{file}: missing column(s) {sorted(missing)}; need request_id and label", 2)
    try:
        path, count = write_labels(
            serving.capture.uri or str(env.capture_dir),
            zip(frame["request_id"].astype(str), frame["label"].tolist(), strict=True),
        )
    except ValueError as error:
        raise _fail(f"{file}: {error}", 2) from None
    typer.echo(f"recorded {count} labels in {path}")


@app.command()
def report(
    config: ConfigFile = Path("pipeline.yaml"),
    state_dir: StateDir = None,
    out: Annotated[Path, typer.Option(help="where to write the HTML report")] = Path("lockgate-report.html"),
) -> None:
    """Write the HTML report (runs, durations and cost, model metrics, serving, drift, delivery) and log it."""
    from pipeline.report import write_report

    try:
        parsed, _, env, serving = _rollout_context(config, state_dir)
    except ConfigError as error:
        raise _fail(str(error), 2) from None
    except _serving_errors() as error:
        raise _fail(str(error)) from None
    path, run_id = write_report(parsed, config.resolve().parent, serving.model_name, env.state_dir, out)
    typer.echo(f"report written to {path} and logged to MLflow run {run_id}")
