"""The training RayJobs the stack renders, through KubeRay's submitter command, run the pipeline as the Ray job.

The submitter pod runs ``/bin/bash -ce -- "<words>"`` (tests/cluster/kuberay_command.py, ported from KubeRay
v1.7.0). Here bash itself runs that exact script, with ``ray`` and ``python`` on its PATH replaced by
recorders: what reaches ``ray job submit`` after ``--`` is the Ray job's entrypoint, and any other command the
script runs would run in the submitter pod.
"""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from lockgate.kuberay import TemplateError, load_template
from tests.cluster.kuberay_command import (
    GCS_HEALTH_PATH,
    K8S_JOB_MODE,
    PYTHON_HEALTH_COMMAND,
    SIDECAR_MODE,
    build_job_submit_command,
    go_quote,
    job_id,
    submitter_container_command,
)
from tests.cluster.stack import render_stack, stack_rayjobs

DASHBOARD_URL = "lockgate-train-x-head-svc.lockgate.svc.cluster.local:8265"  # as status.dashboardURL
PIPELINE_COMMAND = ["python", "-m", "pipeline.run", "--config", "/home/ray/lockgate/pipeline.yaml"]
RECORDER = """#!{python}
import json, os, sys
with open(os.environ["RECORD_FILE"], "a") as handle:
    handle.write(json.dumps([os.path.basename(sys.argv[0]), *sys.argv[1:]]) + "\\n")
# `ray job status <id>` fails: the id was not submitted yet, so the script submits it.
sys.exit(1 if sys.argv[1:3] == ["job", "status"] else 0)
"""


def test_port_builds_what_kuberay_job_test_expects() -> None:
    """The port against job_test.go@v1.7.0 (TestBuildJobSubmitCommandWithK8sJobMode / ...WithSidecarMode)."""
    rayjob = {
        "metadata": {"name": "unused"},
        "spec": {
            "runtimeEnvYAML": "test: test",
            "metadata": {"testKey": "testValue"},
            "rayClusterSpec": {
                "rayVersion": "2.6.0",
                "headGroupSpec": {
                    "template": {
                        "spec": {"containers": [{"ports": [{"name": "dashboard", "containerPort": 8265}]}]}
                    }
                },
            },
            "entrypoint": "echo no quote 'single quote' \"double quote\"",
            "entrypointNumCpus": 1,
            "entrypointNumGpus": 0.5,
            "entrypointResources": '{"Custom_1": 1, "Custom_2": 5.5}',
        },
    }
    address = "http://127.0.0.1:8265"
    wait = [
        "until",
        PYTHON_HEALTH_COMMAND.format(url=f"{address}/{GCS_HEALTH_PATH}", timeout=10),
        ">/dev/null", "2>&1", ";", "do", "echo",
        go_quote(f"Waiting for Ray Dashboard GCS to become healthy at {address} ..."),
        ";", "sleep", "2", ";", "done", ";",
    ]  # fmt: skip
    flags = [
        "--runtime-env-json", go_quote('{"test":"test"}'),
        "--metadata-json", go_quote('{"testKey":"testValue"}'),
        "--submission-id", "testJobId",
        "--entrypoint-num-cpus", "1.000000",
        "--entrypoint-num-gpus", "0.500000",
        "--entrypoint-resources", go_quote('{"Custom_1": 1, "Custom_2": 5.5}'),
        "--", "echo no quote 'single quote' \"double quote\"", ";",
    ]  # fmt: skip
    expected_k8s = [
        *wait,
        "if", "!", "ray", "job", "status", "--address", address, "testJobId", ">/dev/null", "2>&1", ";", "then",
        "ray", "job", "submit", "--address", address, "--no-wait", *flags,
        "fi", ";", "ray", "job", "logs", "--address", address, "--follow", "testJobId",
    ]  # fmt: skip
    assert build_job_submit_command(rayjob, address, "testJobId", K8S_JOB_MODE) == expected_k8s
    sidecar_wait = [*wait]
    sidecar_wait[1] = PYTHON_HEALTH_COMMAND.format(url=f"http://localhost:8265/{GCS_HEALTH_PATH}", timeout=10)
    expected_sidecar = [*sidecar_wait, "ray", "job", "submit", "--address", address, *flags]
    assert build_job_submit_command(rayjob, "", "testJobId", SIDECAR_MODE) == expected_sidecar
    assert go_quote('a "b" \\ c\n') == '"a \\"b\\" \\\\ c\\n"', "Go's strconv.Quote escapes"


@pytest.fixture(scope="module")
def dev_stack(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The dev stack's program run under mocks (tests/infra/driver.py): what it declares and exports."""
    return render_stack(tmp_path_factory.mktemp("dev-stack"))


def run_submitter(command: list[str], tmp_path: Path) -> list[list[str]]:
    """Run the submitter container's command with recording `ray` and `python`; every command they got."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir(exist_ok=True)
    for name in ("ray", "python"):
        path = fake_bin / name
        path.write_text(RECORDER.format(python=sys.executable))
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    record = tmp_path / "record.jsonl"
    record.unlink(missing_ok=True)
    env = {"PATH": f"{fake_bin}{os.pathsep}/usr/bin:/bin", "RECORD_FILE": str(record)}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"the submitter script failed: {result.stderr[-2000:]}"
    return [json.loads(line) for line in record.read_text().splitlines()]


def submit_flags(submit: list[str]) -> dict[str, Any]:
    """The options of one recorded `ray job submit` call, up to `--` (``--no-wait`` takes no value)."""
    options, flags = submit[3 : submit.index("--")], {}
    while options:
        name = options.pop(0)
        flags[name] = True if name == "--no-wait" else options.pop(0)
    return flags


@pytest.mark.parametrize("which", ["kubectl-create", "trigger"])
def test_each_stack_rayjob_submits_the_whole_pipeline_command_as_the_ray_job(
    dev_stack: dict[str, Any], tmp_path: Path, which: str
) -> None:
    # Given a training RayJob as the stack renders it, and KubeRay's submitter command for it
    rayjob = stack_rayjobs(dev_stack, tmp_path)[which]
    submission_id = job_id(rayjob)
    words = build_job_submit_command(rayjob, DASHBOARD_URL, submission_id, K8S_JOB_MODE)
    command = submitter_container_command(rayjob, words)
    # When bash runs it as the submitter pod would
    calls = run_submitter(command, tmp_path)
    # Then the only commands are the health wait, the status check, one submit and the log follower...
    assert f"{DASHBOARD_URL}/api/gcs_healthz" in calls[0][2], "the wait loop probes the dashboard"
    assert [call[:3] for call in calls] == [
        ["python", "-c", calls[0][2]],
        ["ray", "job", "status"],
        ["ray", "job", "submit"],
        ["ray", "job", "logs"],
    ], f"the submitter pod runs only ray commands, nothing of the pipeline: {calls}"
    submit = calls[2]
    # ...and everything after `--` is the Ray job's entrypoint: the whole pipeline command.
    entrypoint = submit[submit.index("--") + 1 :]
    assert entrypoint == PIPELINE_COMMAND, f"the Ray job runs {shlex.join(entrypoint)!r}"
    flags = submit_flags(submit)
    assert flags["--submission-id"] == submission_id and flags["--no-wait"] is True
    # The runtime env reaches Ray intact through bash's double quotes (the trigger travels in it as JSON).
    runtime_env = yaml.safe_load(rayjob["spec"].get("runtimeEnvYAML") or "{}")
    if runtime_env:
        assert json.loads(flags["--runtime-env-json"]) == runtime_env, "runtime env changed on its way"
    if which == "trigger":
        env_vars = json.loads(flags["--runtime-env-json"])["env_vars"]
        assert json.loads(env_vars["LOCKGATE_TRIGGER"])["reason"] == "drift"
        assert env_vars["LOCKGATE_SUBMISSION_ID"] == rayjob["metadata"]["name"]


def test_a_template_whose_entrypoint_chains_commands_is_refused(tmp_path: Path) -> None:
    # Given a template written by the old stack: `cd <dir> && python -m pipeline.run ...`
    old = {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"generateName": "lockgate-train-"},
        "spec": {"entrypoint": "cd /home/ray/lockgate && python -m pipeline.run --config pipeline.yaml"},
    }
    path = tmp_path / "rayjob.yaml"
    path.write_text(yaml.safe_dump(old))
    # When the trigger checks load it, then they refuse it, naming the operator, instead of starting a run
    # whose Ray job would be `cd` alone.
    with pytest.raises(TemplateError, match="spec.entrypoint: &&"):
        load_template(path)
