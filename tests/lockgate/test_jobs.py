"""Submitting a run: what the Ray job is given (a recording client), and waiting for it (a real Ray job)."""

from __future__ import annotations

import shlex
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from contracts.settings import RESULT_MARKER, EnvVar
from lockgate import jobs
from pipeline.config import load_config
from pipeline.run import EXIT_BLOCKED, EXIT_FAILED
from tests.conftest import write_pipeline


class RecordingClient:
    """Records each submission; knows no job."""

    def __init__(self) -> None:
        self.submitted: list[dict[str, Any]] = []

    def submit_job(self, **kwargs: Any) -> str:
        self.submitted.append(kwargs)
        return str(kwargs["submission_id"])


def test_a_data_uri_travels_in_the_jobs_environment_not_on_its_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a pipeline and a data URI that carries a password,
    config = write_pipeline(tmp_path, {})
    client = RecordingClient()
    monkeypatch.setattr(jobs, "job_client", lambda env: client)
    secret_uri = "s3://analyst:hunter2@bucket/loans.parquet"
    # when a run on it is submitted,
    _, submission_id, config_used = jobs.start_pipeline(object(), config, data=secret_uri)  # type: ignore[arg-type]
    # then the job's command line does not hold the URI (every local user can read a process's arguments);
    (submitted,) = client.submitted
    assert "hunter2" not in submitted["entrypoint"] and "--data" not in submitted["entrypoint"], submitted
    # the run reads it from its environment, and the validated config is the one the run will use.
    assert submitted["runtime_env"]["env_vars"][EnvVar.data.value] == secret_uri, submitted["runtime_env"]
    assert config_used.data.uri == secret_uri and submitted["submission_id"] == submission_id


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (f'{RESULT_MARKER} {{"outcome": "blocked", "run_id": "r1"}}', {"outcome": "blocked", "run_id": "r1"}),
        (f"{RESULT_MARKER} not json", None),
        (f'{RESULT_MARKER} {{"outcome": "maybe"}}', None),
        (f'{RESULT_MARKER}{{"outcome": "registered"}}', None),
        ('(RayTrainWorker pid=1) {"outcome": "registered"}', None),
    ],
)
def test_only_a_well_formed_result_line_ends_the_wait(line: str, expected: dict[str, Any] | None) -> None:
    # Given a line of a job's log, when the submitter reads it, then only the run's own result line counts.
    assert jobs.result_of(line) == expected, f"{line!r} should read as {expected}"


def submit_script(env: Any, script: str) -> tuple[Any, str]:
    """Submit ``python -c <script>`` as a Ray job on the environment; (client, submission id)."""
    client = jobs.job_client(env)
    submission_id = f"test-jobs-{uuid.uuid4().hex[:8]}"
    client.submit_job(entrypoint=f"python -c {shlex.quote(script)}", submission_id=submission_id)
    return client, submission_id


def test_the_submitter_returns_at_the_result_line_not_when_the_job_ends(
    local_env: Any, tmp_path: Path
) -> None:
    # Given a real Ray job that prints some lines, then a run's result line, then lingers for 60 s,
    config = load_config(write_pipeline(tmp_path, {}))
    result = {"outcome": "blocked", "run_id": "run-42", "model_name": "m"}
    script = (
        "import json, sys, time\n"
        "print('stage prepare: started')\n"
        f"print({RESULT_MARKER!r} + ' ' + json.dumps({result!r}), flush=True)\n"
        "time.sleep(60)\n"
    )
    client, submission_id = submit_script(local_env, script)
    lines: list[str] = []
    try:
        # when the submitter waits for it,
        started = time.monotonic()
        outcome = jobs.wait_pipeline(
            client, submission_id, config, lines.append, timeout_s=120, env=local_env
        )
        waited = time.monotonic() - started
        # then it returns once the result line is read, long before the job ends,
        assert waited < 30, (
            f"waited {waited:.1f}s: expected to return at the result line, not after the 60 s sleep"
        )
        # with the outcome, run and exit code the line reports, and every line before it streamed.
        assert (outcome.outcome, outcome.run_id, outcome.exit_code) == ("blocked", "run-42", EXIT_BLOCKED), (
            outcome
        )
        assert "stage prepare: started" in lines and lines[-1].startswith(RESULT_MARKER), lines[-5:]
    finally:
        client.stop_job(submission_id)


def test_a_job_that_ends_without_a_result_line_is_a_failure_with_its_last_words(
    local_env: Any, tmp_path: Path
) -> None:
    # Given a real Ray job that writes a last line with no newline and exits 1 without a result line,
    config = load_config(write_pipeline(tmp_path, {}))
    script = "import sys\nprint('working')\nsys.stdout.write('error: the last words')\nsys.exit(1)\n"
    client, submission_id = submit_script(local_env, script)
    lines: list[str] = []
    # when the submitter waits for it,
    outcome = jobs.wait_pipeline(client, submission_id, config, lines.append, timeout_s=120, env=local_env)
    # then the job's end is the end of the wait: a failure, no run, and no line lost (the unterminated one too).
    assert (outcome.status, outcome.outcome, outcome.exit_code) == ("FAILED", "failed", EXIT_FAILED), outcome
    assert outcome.run_id is None, outcome
    assert lines[-1] == "error: the last words" and "working" in lines, lines[-5:]
