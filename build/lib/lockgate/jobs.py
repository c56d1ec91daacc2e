"""Submit a pipeline run to the running Ray cluster as a Ray job, stream its logs, and read its outcome."""

from __future__ import annotations

import asyncio
import json
import secrets
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import contracts
import pipeline
import serving
from contracts.settings import EnvVar, Settings
from contracts.vocabulary import RunOutcome, Tag
from lockgate.localenv import LocalEnvironment, connected, require_healthy
from pipeline.config import load_config
from pipeline.events import log_path
from pipeline.run import EXIT_BLOCKED, EXIT_FAILED, EXIT_OK, git_commit, with_data

# Never shipped with a job: the environment's own state, virtualenvs, VCS data, caches.
UPLOAD_EXCLUDES = [
    ".lockgate",
    ".venv",
    "venv",
    ".git",
    "**/__pycache__",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    "*.egg-info",
]


RUNTIME_ENV_FAILURE = "runtime_env setup failed"


@dataclass(frozen=True)
class JobOutcome:
    """How a submitted run ended."""

    submission_id: str
    status: str
    outcome: str
    run_id: str | None
    exit_code: int
    message: str


def job_runtime_env(config_path: Path, submission_id: str) -> dict[str, Any]:
    """The pipeline file's directory is the job's working directory; the code the job runs ships as modules.

    The job imports ``pipeline`` (the run), ``serving`` (its rollout stage) and ``contracts`` (the shared
    vocabulary): all three ship, so a pipeline file outside this checkout runs the submitter's code.
    """
    return {
        "working_dir": str(config_path.parent),
        "py_modules": [str(Path(str(package.__file__)).parent) for package in (contracts, pipeline, serving)],
        "excludes": UPLOAD_EXCLUDES,
        "env_vars": {
            EnvVar.git_commit.value: git_commit(config_path.parent, Settings.from_environ().git_commit),
            EnvVar.submission_id.value: submission_id,
        },
    }


def job_client(env: LocalEnvironment) -> Any:
    """A job submission client for the environment.

    The auth header is explicit: it works even when ray was imported before RAY_AUTH_MODE was set here.
    """
    from ray.job_submission import JobSubmissionClient

    require_healthy(env)
    return JobSubmissionClient(env.dashboard_url, headers=env.ray_auth_header())


def start_pipeline(
    env: LocalEnvironment,
    config_file: str | Path,
    data: str | None = None,
    trigger: dict[str, Any] | None = None,
) -> tuple[Any, str, Any]:
    """Validate and submit a run without waiting; returns the client, the submission id and the config.

    ``trigger`` (reason, event_id, fired_at) reaches the run as LOCKGATE_TRIGGER: it is recorded on the run.
    """
    config_path = Path(config_file).resolve()
    config = load_config(config_path)
    entrypoint = f"python -m pipeline.run --config {shlex.quote(config_path.name)}"
    if data:
        config = with_data(config, data)
        entrypoint += f" --data {shlex.quote(data)}"
    client = job_client(env)
    key = (trigger or {}).get("run_key")
    if key:
        # A triggered run is named by its event: a second check deciding the same event finds it started.
        submission_id = f"lockgate-{config.name}-{key}"
        if _job_exists(client, submission_id):
            return client, submission_id, config
    else:
        submission_id = f"lockgate-{config.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    runtime_env = job_runtime_env(config_path, submission_id)
    if not Path(config.events.log_file).is_absolute():
        runtime_env["env_vars"][EnvVar.events_file.value] = str(log_path(config.events, config_path.parent))
    metadata = {"lockgate.pipeline": config.name}
    if trigger:
        runtime_env["env_vars"][EnvVar.trigger.value] = json.dumps(trigger, sort_keys=True)
        metadata["lockgate.trigger"] = str(trigger.get("reason", ""))
    client.submit_job(
        entrypoint=entrypoint, submission_id=submission_id, runtime_env=runtime_env, metadata=metadata
    )
    return client, submission_id, config


def _job_exists(client: Any, submission_id: str) -> bool:
    """Whether the cluster knows a job by this submission id (in any state)."""
    try:
        client.get_job_info(submission_id)
    except RuntimeError as error:  # Ray's SDK raises RuntimeError for a 404 and for a failed request alike
        if "status code 404" in str(error):
            return False
        raise
    return True


def running_pipeline_jobs(env: LocalEnvironment, pipeline_name: str) -> int:
    """Runs of this pipeline pending or running on the cluster now, whoever started them."""
    from ray.job_submission import JobStatus

    active = (JobStatus.PENDING, JobStatus.RUNNING)
    return sum(
        1
        for job in job_client(env).list_jobs()
        if (job.metadata or {}).get("lockgate.pipeline") == pipeline_name and job.status in active
    )


def submit_pipeline(
    env: LocalEnvironment,
    config_file: str | Path,
    stream: Callable[[str], None] = print,
    timeout_s: float = 3600.0,
    data: str | None = None,
) -> JobOutcome:
    """Validate, submit, stream logs until the job ends, then map the run's outcome to an exit code.

    A job whose runtime environment could not be set up never started the pipeline (no MLflow run): that
    infrastructure failure is retried once, saying so, before it is reported.
    """
    for attempt in (1, 2):
        client, submission_id, config = start_pipeline(env, config_file, data)
        stream(f"submitted Ray job {submission_id} to {env.dashboard_url}")
        outcome = wait_pipeline(client, submission_id, config, stream, timeout_s, env)
        never_started = outcome.run_id is None and RUNTIME_ENV_FAILURE in outcome.message
        if not (never_started and attempt == 1):
            return outcome
        stream(f"job {submission_id}: Ray could not set up its runtime environment; submitting once more")
    return outcome


def wait_pipeline(
    client: Any,
    submission_id: str,
    config: Any,
    stream: Callable[[str], None] = print,
    timeout_s: float = 3600.0,
    env: LocalEnvironment | None = None,
) -> JobOutcome:
    """Stream a submitted run's logs until it ends, then map its outcome to an exit code.

    The run's outcome is read from MLflow: the local environment's when ``env`` is given, else the one this
    process's ``MLFLOW_TRACKING_*`` variables name.
    """
    from ray.job_submission import JobStatus

    async def follow() -> None:
        async for chunk in client.tail_job_logs(submission_id):
            for line in chunk.rstrip("\n").splitlines():
                stream(line)

    started = time.monotonic()
    try:
        asyncio.run(asyncio.wait_for(follow(), timeout=timeout_s))
    except TimeoutError:
        pass
    status = client.get_job_status(submission_id)
    if not status.is_terminal() and time.monotonic() < started + timeout_s:
        # The log stream can end before the job does (a dropped connection): wait for the job itself.
        stream(f"job {submission_id}: log stream ended while {status.value}; waiting for the job to finish")
    deadline = started + timeout_s
    while not status.is_terminal() and time.monotonic() < deadline:
        time.sleep(1)
        status = client.get_job_status(submission_id)
    if not status.is_terminal():
        client.stop_job(submission_id)
        stream(f"job {submission_id} exceeded {timeout_s:.0f}s: stopped")
        status = client.get_job_status(submission_id)
    info = client.get_job_info(submission_id)
    experiment = config.registry.experiment or config.name
    if env is None:
        run_id, outcome = find_run(experiment, submission_id)
    else:
        with connected(env):
            run_id, outcome = find_run(experiment, submission_id)
    if status == JobStatus.SUCCEEDED:
        code = EXIT_OK
    elif outcome in (RunOutcome.blocked, RunOutcome.rolled_back):
        code = EXIT_BLOCKED
    else:
        code = EXIT_FAILED
    return JobOutcome(
        submission_id, str(status.value), outcome or RunOutcome.failed, run_id, code, info.message or ""
    )


def find_run(experiment: str, submission_id: str) -> tuple[str | None, str | None]:
    """The MLflow run a submission produced, and its outcome tag."""
    import mlflow

    runs = mlflow.search_runs(
        experiment_names=[experiment],
        filter_string=f"tags.`{Tag.submission_id}` = '{submission_id}'",
        output_format="list",
    )
    if not runs:
        return None, None
    run = runs[0]
    return run.info.run_id, run.data.tags.get(Tag.outcome)
