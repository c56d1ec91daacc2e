"""KubeRay's submitter command for the stack's triggered RayJob, run for real against a local Ray: the
pipeline runs as the Ray job, not in the submitter.

Real: the local environment's Ray head (token auth) and MLflow, the `ray` CLI, bash, and the exact
``/bin/bash -ce -- "<script>"`` KubeRay v1.7.0 would give the submitter container
(tests/cluster/kuberay_command.py). Adapted, and only these: ``status.dashboardURL`` is the local dashboard
(the head Service's address in a cluster), and the pipeline file's path in the entrypoint
(``/home/ray/lockgate/pipeline.yaml`` in the image) is a small pipeline file in a temporary directory. Ray
and MLflow credentials reach the submitter through its environment, as KubeRay's token env vars and the
pod's Secret do.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from ray.job_submission import JobStatus, JobSubmissionClient

from contracts.vocabulary import Tag
from pipeline.data import make_loans
from tests.cluster.kuberay_command import (
    K8S_JOB_MODE,
    build_job_submit_command,
    job_id,
    submitter_container_command,
)
from tests.cluster.stack import TRIGGER, render_stack, stack_rayjobs
from tests.conftest import write_pipeline

pytestmark = pytest.mark.e2e
IMAGE_PIPELINE_FILE = "/home/ray/lockgate/pipeline.yaml"


def test_triggered_rayjob_runs_the_pipeline_as_the_ray_job(local_env, tmp_path: Path) -> None:
    # Given the RayJob the trigger checks create from the dev stack's template...
    rayjob = stack_rayjobs(render_stack(tmp_path), tmp_path)["trigger"]
    spec = rayjob["spec"]
    assert IMAGE_PIPELINE_FILE in spec["entrypoint"], spec["entrypoint"]
    # ...pointed at a small pipeline (its own model name, fewer rows, one epoch on one worker)
    name = f"rayjob-{uuid.uuid4().hex[:6]}"
    config = write_pipeline(
        tmp_path / "job",
        {
            "registry": {"model_name": name},
            "training": {"epochs": 1, "scaling": {"num_workers": 1, "cpus_per_worker": 1}},
            "gates": {"regression": {"mode": "disabled"}, "thresholds": {"mode": "disabled"}},
        },
        frame=make_loans(rows=2_000, seed=0),
    )
    spec["entrypoint"] = spec["entrypoint"].replace(IMAGE_PIPELINE_FILE, str(config))
    submission_id = job_id(rayjob)
    words = build_job_submit_command(rayjob, local_env.dashboard_url, submission_id, K8S_JOB_MODE)
    command = submitter_container_command(rayjob, words)
    submitter_env = {
        **os.environ,
        **local_env.client_env(include_secrets=True),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    # When the submitter runs it (bash -ce; `ray job logs --follow` returns once the job has ended)
    started = time.monotonic()
    result = subprocess.run(command, env=submitter_env, capture_output=True, text=True, timeout=240)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, f"submitter failed: {result.stdout[-2000:]} {result.stderr[-2000:]}"
    # Then Ray ran the whole pipeline command as the job, and it succeeded
    client = JobSubmissionClient(local_env.dashboard_url, headers=local_env.ray_auth_header())
    info = client.get_job_info(submission_id)
    assert info.entrypoint == shlex.join(["python", "-m", "pipeline.run", "--config", str(config)]), (
        f"the Ray job's entrypoint is the pipeline command, got {info.entrypoint!r}"
    )
    assert info.status == JobStatus.SUCCEEDED, f"{info.status}: {info.message}"
    # ...with the RayJob's runtime env (only the Ray job has it, the submitter's shell does not): the model
    # was registered by a run that carries the RayJob's name and its trigger.
    versions = MlflowClient().search_model_versions(f"name='{name}'")
    assert len(versions) == 1, f"one registered version, got {len(versions)}"
    run = mlflow.get_run(versions[0].run_id)
    assert run.data.tags.get(Tag.submission_id.value) == rayjob["metadata"]["name"], run.data.tags
    assert TRIGGER["event_id"] in str(run.data.tags) + str(run.data.params), "the run records its trigger"
    print(f"submitter script to registered model: {elapsed:.1f}s")  # noqa: T201 - the measured figure
