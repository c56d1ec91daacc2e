"""The end-to-end demo: the environment, three runs with rollouts under simulated users, then drift closes the loop."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from lockgate.cli.common import (
    BACKEND_CAUSES,
    FAILURE,
    PIPELINE_FILE,
    USAGE,
    CommandError,
    ConfigFile,
    DashboardPort,
    MlflowPort,
    RayPort,
    StateDir,
    exits_on_error,
)
from lockgate.localenv import CREDENTIALS_FILE, LocalEnvironment, Ports, default_state_dir
from lockgate.runtime import DEFAULT_PORTS, connected, local_environment, local_watcher, serving_path
from pipeline.config import PipelineConfig, load_config
from serving.desired import ServingFile, load_serving_file

if TYPE_CHECKING:
    import pandas as pd

    from lockgate.jobs import JobOutcome
    from lockgate.traffic import TrafficSimulator

commands = typer.Typer()

BATCH_ROWS = 20_000
WATCH_TIMEOUT_S, CHECK_INTERVAL_S = 300, 5
Story = tuple[str, "JobOutcome"]
"""What a run stood for in the demo, and how it ended."""


@commands.command()
@exits_on_error(causes=BACKEND_CAUSES)
def demo(
    config: ConfigFile = PIPELINE_FILE,
    state_dir: StateDir = None,
    mlflow_port: MlflowPort = DEFAULT_PORTS.mlflow,
    ray_port: RayPort = DEFAULT_PORTS.ray_gcs,
    dashboard_port: DashboardPort = DEFAULT_PORTS.ray_dashboard,
    example: Annotated[
        str | None,
        typer.Option(
            "--example",
            "-e",
            help="run a shipped example instead (a directory of examples/, e.g. wine or diabetes): "
            "deploy, a rollout to promotion, a planted regression blocked",
        ),
    ] = None,
) -> None:
    """The main job: start the environment, three runs with rollouts, then the drift loop; summary and report."""
    from lockgate.traffic import TrafficSimulator
    from pipeline.report import write_report
    from pipeline.run import EXIT_BLOCKED, EXIT_OK

    if example is not None:
        config = example_file(example)
    parsed = load_config(config)
    ports = Ports.from_base(mlflow_port, ray_port, dashboard_port)
    LocalEnvironment(state_dir or default_state_dir(), ports).up(log=typer.echo)
    env = local_environment(state_dir, mlflow_port, ray_port, dashboard_port)
    if example is not None:
        with connected(env):
            told = _example_stories(env, config, parsed)
        if any(o.exit_code not in (EXIT_OK, EXIT_BLOCKED) for _, o in told):
            raise typer.Exit(FAILURE)
        return
    with connected(env):
        data_dir = env.state_dir / "data"
        runs = _training_batches(data_dir)
        url = _router_url(load_serving_file(serving_path(config, parsed)))
        features = list(parsed.features)
        # Simulated users, so the rollout has live evidence to judge: rows of the shipped data, 4 clients.
        users = TrafficSimulator(url, config.resolve().parent / parsed.data.uri, features).start()
        stories = _tell(env, config, runs, users, "pipeline run")
        # The loop closes: the population shifts; nobody starts the next run.
        shifted = _write_batch(data_dir / "loans-batch-4.parquet", seed=4, shift=0.8)
        typer.echo(
            "\n=== the loop: the applicant population shifts; `lockgate watch` checks captured traffic ==="
        )
        shifted_users = TrafficSimulator(url, shifted, features).start()
        try:
            triggered = _watch_until_triggered(config, state_dir, str(shifted), env, time.time())
            if triggered is not None:
                stories.append(("retraining started by the drift trigger", triggered))
        finally:
            shifted_users.stop()
        report_path, _ = write_report(
            parsed,
            config.resolve().parent,
            parsed.registry.model_name,
            env.state_dir,
            env.state_dir / "report.html",
        )
        _print_summary(env, parsed, stories, [users, shifted_users], url, report_path)
    if any(o.exit_code not in (EXIT_OK, EXIT_BLOCKED) for _, o in stories) or len(stories) < len(runs) + 1:
        raise typer.Exit(FAILURE)


EXAMPLES_DIR = Path("examples")


def example_file(name: str) -> Path:
    """The pipeline file of the shipped example ``name``; a usage error listing the examples otherwise."""
    found = sorted(path.parent.name for path in EXAMPLES_DIR.glob("*/pipeline.yaml"))
    path = EXAMPLES_DIR / name / "pipeline.yaml"
    if name not in found:
        shown = ", ".join(found) if found else f"none under {EXAMPLES_DIR.resolve()} (run from the checkout)"
        raise CommandError(f"--example: no example '{name}'; examples: {shown}", USAGE)
    return path


def _example_stories(env: LocalEnvironment, config: Path, parsed: PipelineConfig) -> list[Story]:
    """An example's story under simulated users: deployed, a retrain promoted, a scrambled batch blocked."""
    from lockgate.traffic import TrafficSimulator
    from pipeline.data import write_table

    data_file = config.resolve().parent / parsed.data.uri
    url = _router_url(load_serving_file(serving_path(config, parsed)))
    # A batch whose labels were shuffled upstream: valid values, no signal. The gates must stop it.
    frame = _read_table(data_file)
    label = parsed.data_schema.label
    frame[label] = frame[label].sample(frac=1.0, random_state=7).to_numpy()
    scrambled = write_table(frame, env.state_dir / "data" / f"{parsed.name}-scrambled.parquet")
    runs: list[tuple[str | None, str]] = [
        (None, "the shipped data set: registered and deployed as champion"),
        (None, "the same code again: gated against the champion, then rolled out on live traffic"),
        (str(scrambled), "a batch whose labels were scrambled upstream: the gates must block it"),
    ]
    users = TrafficSimulator(url, data_file, list(parsed.features)).start()
    stories = _tell(env, config, runs, users, f"{parsed.name}, run")
    typer.echo("\n=== summary ===")
    for attempt, (story, outcome) in enumerate(stories, 1):
        typer.echo(f"run {attempt} ({story}): {outcome.outcome} (MLflow run {outcome.run_id})")
    from lockgate.summary import format_summary, registry_summary

    typer.echo(format_summary(parsed.registry.model_name, registry_summary(parsed.registry.model_name)))
    typer.echo(
        f"simulated users: {dict(users.answers)} answers by version, {users.failed} failed; "
        f"the router keeps serving at {url}"
    )
    typer.echo(f"MLflow UI: {env.mlflow_url}; stop everything with `lockgate down`.")
    return stories


def _tell(
    env: LocalEnvironment,
    config: Path,
    runs: list[tuple[str | None, str]],
    users: TrafficSimulator,
    heading: str,
) -> list[Story]:
    """Submit each run in turn (its data: None for the file's own) under ``users``, who stop at the end."""
    from lockgate.jobs import submit_pipeline

    stories: list[Story] = []
    try:
        for attempt, (data, story) in enumerate(runs, 1):
            typer.echo(f"\n=== {heading} {attempt} of {len(runs)}: {story} ===")
            stories.append((story, submit_pipeline(env, config, stream=typer.echo, data=data)))
    finally:
        users.stop()
    return stories


def _read_table(path: Path) -> pd.DataFrame:
    import pandas as pd

    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


def _training_batches(data_dir: Path) -> list[tuple[str | None, str]]:
    """What the three runs train on (None: the pipeline file's data) and what each stands for."""
    # Run 2 trains on next month's batch (same population, new rows), as a scheduled retrain would.
    # Run 3 trains on a batch after default risk rose across the board: it ranks as well offline, so
    # it passes its gates, but it predicts far higher than the champion on live traffic.
    next_month = _write_batch(data_dir / "loans-batch-2.parquet", seed=1)
    riskier = _write_batch(data_dir / "loans-batch-3.parquet", seed=2, risk_shift=1.2)
    return [
        (None, "the shipped data set"),
        (str(next_month), "next month's batch"),
        (str(riskier), "a batch after default risk rose (concept drift)"),
    ]


def _write_batch(path: Path, seed: int, shift: float = 0.0, risk_shift: float = 0.0) -> Path:
    """A batch of loan applications, written where the demo keeps its data."""
    from pipeline.data import make_loans, write_table

    return write_table(make_loans(BATCH_ROWS, seed=seed, shift=shift, risk_shift=risk_shift), path)


def _router_url(file: ServingFile) -> str:
    serving = file.serving
    return f"http://{serving.http_host}:{serving.http_port}{serving.route_prefix}"


def _watch_until_triggered(
    config: Path, state_dir: Path | None, data: str, env: LocalEnvironment, shifted_at: float
) -> JobOutcome | None:
    """Run trigger checks every few seconds until one starts a run (bounded); follow that run to its end."""
    watcher = local_watcher(config, state_dir, data)
    deadline = time.monotonic() + WATCH_TIMEOUT_S
    while time.monotonic() < deadline:
        result = watcher.check()
        line = result.summary()
        typer.echo(
            f"check: champion v{line['champion']}, {line['window_rows']} new captured rows, "
            f"drifted={line['drifted']}: {line['explanation']}"
        )
        if result.submission_id is not None:
            fired_at = time.time()
            typer.echo(f"trigger fired ({line['reason']}): Ray job {result.submission_id}; following it")
            return _follow_triggered_run(config, data, env, result.submission_id, shifted_at, fired_at)
        time.sleep(CHECK_INTERVAL_S)
    typer.echo(f"no trigger fired within {WATCH_TIMEOUT_S} s")
    return None


def _follow_triggered_run(
    config: Path, data: str, env: LocalEnvironment, submission_id: str, shifted_at: float, fired_at: float
) -> JobOutcome:
    """Stream the run a trigger started until it ends; say how long the loop took to react."""
    from lockgate.jobs import job_client, wait_pipeline
    from pipeline.run import with_data

    client = job_client(env)
    outcome = wait_pipeline(
        client, submission_id, with_data(load_config(config), data), stream=typer.echo, env=env
    )
    started_ms = client.get_job_info(submission_id).start_time or 0
    typer.echo(
        f"timing: population shift -> trigger fired {fired_at - shifted_at:.1f}s; "
        f"-> retraining job started {started_ms / 1000 - shifted_at:.1f}s"
    )
    return outcome


def _print_summary(
    env: LocalEnvironment,
    parsed: PipelineConfig,
    stories: list[Story],
    users: list[TrafficSimulator],
    url: str,
    report_path: Path,
) -> None:
    """The runs' outcomes, the registry, what the simulated users saw, and where to look next."""
    from lockgate.summary import format_summary, registry_summary

    typer.echo("\n=== summary ===")
    for attempt, (story, outcome) in enumerate(stories, 1):
        typer.echo(
            f"run {attempt} ({story}): {outcome.outcome} "
            f"(job {outcome.submission_id}, MLflow run {outcome.run_id})"
        )
    typer.echo(format_summary(parsed.registry.model_name, registry_summary(parsed.registry.model_name)))
    answers = sum((simulator.answers for simulator in users), Counter[str]())
    typer.echo(
        f"simulated users: {dict(answers)} answers by version, {sum(u.failed for u in users)} failed; "
        f"the router keeps serving at {url}"
    )
    typer.echo(f"report: {report_path} (also logged to MLflow)")
    creds = env.state_dir / CREDENTIALS_FILE
    typer.echo(
        f"\nMLflow UI:     {env.mlflow_url}  (user {env.credentials()['mlflow_username']}, password in {creds})"
    )
    typer.echo(f"Ray dashboard: {env.dashboard_url}  (token in {env.ray_token_path})")
    typer.echo("The environment keeps running for you to look around; stop it with `lockgate down`.")
