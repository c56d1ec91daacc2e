"""Submitting a run: what the Ray job is given (no Ray: a recording client)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from contracts.settings import EnvVar
from lockgate import jobs
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
