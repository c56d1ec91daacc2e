"""Submit a pipeline run to the running Ray cluster as a Ray job, stream its logs, and read its outcome."""

from __future__ import annotations

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
from contracts.settings import RESULT_MARKER, EnvVar, Settings
from contracts.vocabulary import RunOutcome, Tag
from lockgate.localenv import LocalEnvironment, connected, require_healthy
from pipeline.config import load_config
from pipeline.events import log_path
from pipeline.run import EXIT_BLOCKED, EXIT_FAILED, EXIT_OK, exit_code, git_commit, with_data

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


FINISHING = "FINISHING"
"""A job's status once its run's result line was read while its driver was still exiting."""


@dataclass(frozen=True)
class JobOutcome:
    """How a submitted run ended (``status``: Ray's job status, or FINISHING when the result came first)."""

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
    if data:
        # Not on the command line: `ps` shows every user a process's arguments, and a URI may carry a secret.
        runtime_env["env_vars"][EnvVar.data.value] = data
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
    """Stream a submitted run's logs until it reports its result (or ends without one); map it to an exit code.

    The run's last act is its result line (``RESULT_MARKER`` + JSON, printed after the MLflow run has ended
    and every event was sent): once it is read the outcome is known and nothing the job does later (its
    interpreter and Ray client shutting down, 1 to 2 s) can change it, so this returns without waiting for
    the job to end; ``status`` is then the job's status at that moment. A job that ends without the line
    (a failed stage, a runtime environment that could not be set up) is mapped from its status and the
    outcome tag of its MLflow run: the local environment's when ``env`` is given, else the one this
    process's ``MLFLOW_TRACKING_*`` variables name.
    """
    from ray.job_submission import JobStatus

    result, status = follow_job(client, submission_id, stream, timeout_s)
    if result is not None:
        outcome = RunOutcome(result["outcome"])
        # The result line is the run's last act: a driver still exiting says so rather than RUNNING.
        shown = str(status.value) if status.is_terminal() else FINISHING
        return JobOutcome(submission_id, shown, outcome, result.get("run_id"), exit_code(outcome), "")
    if not status.is_terminal():
        client.stop_job(submission_id)
        stream(f"job {submission_id} exceeded {timeout_s:.0f}s: stopped")
        status = client.get_job_status(submission_id)
    info = client.get_job_info(submission_id)
    experiment = config.registry.experiment or config.name
    if env is None:
        run_id, found = find_run(experiment, submission_id)
    else:
        with connected(env):
            run_id, found = find_run(experiment, submission_id)
    if status == JobStatus.SUCCEEDED:
        code = EXIT_OK
    elif found in (RunOutcome.blocked, RunOutcome.rolled_back):
        code = EXIT_BLOCKED
    else:
        code = EXIT_FAILED
    return JobOutcome(
        submission_id, str(status.value), found or RunOutcome.failed, run_id, code, info.message or ""
    )


LOG_POLL_S = 0.25
"""How often the submitter reads the job's log. Ray's own log stream (``tail_job_logs``) sleeps 1 s at every
end of file in the reader and 1 s more in the job manager, and closes only after one more such round once
the job has ended: lines arrived in 3 s bursts and the stream closed about 5 s after a 1 s job ended
(ray/dashboard/modules/job/utils.py ``file_tail_iterator``, job_manager.py ``LOG_TAIL_SLEEP_S``)."""
LONG_LOG_CHARS, LONG_LOG_POLL_S = 1_000_000, 2.0
"""Each read returns the whole log (job_log_storage_client.py ``get_logs``): past a megabyte, read less often."""
POLL_ERRORS_TOLERATED = 20
"""Consecutive failed reads (a dashboard restart, a dropped connection) before the error is raised."""


def follow_job(
    client: Any, submission_id: str, stream: Callable[[str], None], timeout_s: float
) -> tuple[dict[str, Any] | None, Any]:
    """Stream the job's log lines until its result line, its end, or ``timeout_s``; (result, status).

    ``result`` is the JSON of the result line, None when the job ended (or ran out of time) without one.
    The status is read before the log each round, so a terminal status means the log read after it is
    complete: no line is lost at the end.
    """
    deadline = time.monotonic() + timeout_s
    shown, partial, failures = 0, "", 0
    while True:
        try:
            status = client.get_job_status(submission_id)
            text = client.get_job_logs(submission_id)
        except (RuntimeError, OSError) as error:  # requests' ConnectionError is an OSError
            failures += 1
            if failures > POLL_ERRORS_TOLERATED:
                raise
            stream(f"job {submission_id}: reading its state failed ({type(error).__name__}); retrying")
            time.sleep(LOG_POLL_S)
            continue
        failures = 0
        lines = (partial + text[shown:]).split("\n")
        shown, partial = len(text), lines.pop()
        if status.is_terminal() and partial:
            lines.append(partial)  # the job has ended: its last line will not be completed
        for line in lines:
            stream(line)
            result = result_of(line)
            if result is not None:
                return result, status
        if status.is_terminal() or time.monotonic() > deadline:
            return None, status
        time.sleep(LOG_POLL_S if shown < LONG_LOG_CHARS else LONG_LOG_POLL_S)


def result_of(line: str) -> dict[str, Any] | None:
    """The run's result from its result line (``pipeline.run`` prints it last), None for any other line."""
    if not line.startswith(f"{RESULT_MARKER} "):
        return None
    try:
        result = json.loads(line.removeprefix(f"{RESULT_MARKER} "))
    except ValueError:
        return None  # a line that only looks like it (the team's code printed it): keep following the job
    return (
        result
        if isinstance(result, dict) and result.get("outcome") in {o.value for o in RunOutcome}
        else None
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
