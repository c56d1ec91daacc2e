"""The CLI against a stack: no local environment up, MLflow named by MLFLOW_TRACKING_* as the mlflow CLI reads it.

A real MLflow server with basic auth, started here (not by `lockgate up`), stands in for a stack's MLflow
over a port-forward; the project is the one `lockgate init` writes.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import PORT_OFFSET, ROOT

pytestmark = pytest.mark.e2e

PORT = 17058 + PORT_OFFSET
ADMIN = "stack-admin"
MODEL = "churn"  # what `lockgate init` names its model


@pytest.fixture(scope="module")
def stack_mlflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """An MLflow server with basic auth on 127.0.0.1; yields the client variables that reach it."""
    home = tmp_path_factory.mktemp("stack-mlflow")
    password = secrets.token_urlsafe(16)
    auth = home / "auth.ini"
    auth.write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{home / 'auth.db'}\nadmin_username = {ADMIN}\nadmin_password = {password}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    server_env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("MLFLOW_", "RAY_", "LOCKGATE_"))
    }
    server_env |= {
        "MLFLOW_AUTH_CONFIG_PATH": str(auth),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        *("server", "--app-name", "basic-auth", "--host", "127.0.0.1", "--port", str(PORT), "--workers", "1"),
        *(
            "--backend-store-uri",
            f"sqlite:///{home / 'mlflow.db'}",
            "--artifacts-destination",
            str(home / "art"),
        ),
    ]
    with (home / "server.log").open("wb") as log:
        server = subprocess.Popen(command, env=server_env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{PORT}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, f"MLflow exited: {(home / 'server.log').read_text()[-2000:]}"
            assert time.monotonic() < deadline, "MLflow did not answer within 120 s"
            try:
                if requests.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.5)
        yield {
            "MLFLOW_TRACKING_URI": url,
            "MLFLOW_TRACKING_USERNAME": ADMIN,
            "MLFLOW_TRACKING_PASSWORD": password,
            # A failing call should fail now, not after MLflow's minutes of retries.
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        }
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, stack_mlflow: dict[str, str]) -> Path:
    """A `lockgate init` project whose model has a champion (v1) and a candidate (v2) in the stack's registry."""
    directory = tmp_path_factory.mktemp("project")
    done = lockgate(["init", str(directory)], {}, directory)
    assert done.returncode == 0, f"init failed: {done.stderr}"
    # Nothing of this session's own MLflow (an earlier test's MLFLOW_EXPERIMENT_ID, say) reaches the client.
    client_env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_", "LOCKGATE_"))}
    client_env |= stack_mlflow
    script = (
        "import mlflow\n"
        "from mlflow import MlflowClient\n"
        "client = MlflowClient()\n"
        f"client.create_registered_model('{MODEL}')\n"
        "for alias in ('champion', 'candidate'):\n"
        "    with mlflow.start_run() as run:\n"
        "        mlflow.log_text('stand-in', 'model/MLmodel')\n"
        f"    version = client.create_model_version('{MODEL}', run.info.artifact_uri + '/model', run.info.run_id)\n"
        f"    client.set_registered_model_alias('{MODEL}', alias, version.version)\n"
    )
    made = subprocess.run(
        [sys.executable, "-c", script], env=client_env, capture_output=True, text=True, timeout=120
    )
    assert made.returncode == 0, f"could not register the versions: {made.stderr[-2000:]}"
    return directory


def lockgate(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`lockgate ARGS` in a fresh process with no local environment (an empty state directory)."""
    clean = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("MLFLOW_", "RAY_", "LOCKGATE_"))
    }
    clean |= {"PYTHONPATH": str(ROOT), "LOCKGATE_HOME": str(cwd / ".lockgate-none"), **env}
    return subprocess.run(
        [sys.executable, "-m", "lockgate", *args],
        env=clean,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
    )


def as_json(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"
    return json.loads(done.stdout)


def test_summary_reads_the_registry_the_client_variables_name(
    project: Path, stack_mlflow: dict[str, str]
) -> None:
    # Given no local environment and MLFLOW_TRACKING_* naming the stack's MLflow,
    # when the summary is asked for as JSON,
    result = as_json(lockgate(["summary", "--json"], stack_mlflow, project))
    # then it lists the stack's versions with their aliases.
    aliases = {v["version"]: v["aliases"] for v in result["versions"]}
    assert aliases == {"1": ["champion"], "2": ["candidate"]}, (
        f"expected the stack's two versions, got {aliases}"
    )


def test_a_wrong_password_is_one_error_line_not_an_empty_registry(
    project: Path, stack_mlflow: dict[str, str]
) -> None:
    # Given the stack's address with a wrong password,
    done = lockgate(["summary"], {**stack_mlflow, "MLFLOW_TRACKING_PASSWORD": "wrong"}, project)
    # then the command fails with one line naming MLflow's error, no traceback and no "no versions".
    assert done.returncode == 1, f"expected exit 1, got {done.returncode}: {done.stdout}{done.stderr}"
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: MlflowException"), (
        f"expected one line: {done.stderr}"
    )


def test_without_a_stack_or_an_environment_the_error_says_what_to_set(project: Path) -> None:
    done = lockgate(["summary"], {}, project)
    assert done.returncode == 1, f"expected exit 1, got {done.returncode}"
    assert "MLFLOW_TRACKING_URI" in done.stderr and "lockgate up" in done.stderr, f"got {done.stderr}"
    assert "Traceback" not in done.stderr, f"a traceback: {done.stderr}"


def test_labels_go_to_the_stacks_capture_location(
    project: Path, stack_mlflow: dict[str, str], tmp_path: Path
) -> None:
    # Given late labels and the stack's capture location in LOCKGATE_CAPTURE_URI,
    labels = tmp_path / "labels.csv"
    labels.write_text("request_id,label\nr-1,1\nr-2,0\n")
    capture = tmp_path / "capture"
    env = {**stack_mlflow, "LOCKGATE_CAPTURE_URI": str(capture)}
    # when they are attached,
    result = as_json(lockgate(["labels", str(labels), "--json"], env, project))
    # then both are recorded there.
    assert result["labels"] == 2, f"expected 2 labels, got {result}"
    assert Path(result["path"]).is_relative_to(capture), (
        f"expected them under {capture}, got {result['path']}"
    )


def test_the_report_is_logged_to_the_stacks_mlflow(project: Path, stack_mlflow: dict[str, str]) -> None:
    result = as_json(lockgate(["report", "--json", "--out", "report.html"], stack_mlflow, project))
    assert (project / "report.html").is_file(), "the report file is written"
    run = requests.get(
        f"{stack_mlflow['MLFLOW_TRACKING_URI']}/api/2.0/mlflow/runs/get",
        params={"run_id": result["mlflow_run_id"]},
        auth=(stack_mlflow["MLFLOW_TRACKING_USERNAME"], stack_mlflow["MLFLOW_TRACKING_PASSWORD"]),
        timeout=10,
    )
    assert run.status_code == 200, f"the report's run should be on the stack's MLflow: {run.status_code}"


def test_promote_on_a_stack_without_ray_address_names_it(project: Path, stack_mlflow: dict[str, str]) -> None:
    # Given a candidate in the stack's registry but no RAY_ADDRESS (the alias writer runs on the stack's Ray),
    done = lockgate(["rollout", "promote"], stack_mlflow, project)
    # then it is a usage error naming the variable, in one line, and nothing moved.
    assert done.returncode == 2, f"expected exit 2, got {done.returncode}: {done.stderr}"
    assert done.stderr.startswith("error: RAY_ADDRESS: not set"), f"got {done.stderr}"
    after = as_json(lockgate(["summary", "--json"], stack_mlflow, project))
    aliases = {v["version"]: v["aliases"] for v in after["versions"]}
    assert aliases == {"1": ["champion"], "2": ["candidate"]}, f"nothing should have moved: {aliases}"


def test_rollback_on_the_local_environment_answers_instead_of_hanging(local_env, tmp_path: Path) -> None:
    # Given the local environment and a model with no previous champion (Ray must be joined with token auth:
    # the alias writer runs there, and Ray reads its auth settings when first imported),
    done = lockgate(["init", str(tmp_path)], {}, tmp_path)
    assert done.returncode == 0, done.stderr
    started = time.monotonic()
    rollback = lockgate(["rollout", "rollback", "--state-dir", str(local_env.state_dir)], {}, tmp_path)
    # then the rollback is refused in one line, promptly: no hang joining the cluster, no traceback.
    assert rollback.returncode == 1, f"expected exit 1, got {rollback.returncode}: {rollback.stderr[-2000:]}"
    assert rollback.stderr.startswith("error: "), f"expected one error line: {rollback.stderr[-2000:]}"
    assert "Traceback" not in rollback.stderr, rollback.stderr[-2000:]
    assert time.monotonic() - started < 90, "joining the local Ray cluster should take seconds"
