"""The stack's rendered serve config on a real local Serve before any model exists: 503, then answers.

Real: the local environment's Ray (Serve, deployed declaratively through the dashboard's REST API, as
KubeRay applies ``serveConfigV2``) and MLflow. The serve config is the dev stack's ``lockgate:serve`` rendered
by ``infra/serve.py`` (the builder the program uses). Adapted, and only these: ``http_options`` (127.0.0.1
and this session's Serve port instead of 0.0.0.0:8000 in a pod), the capture location (a local directory
instead of the artefact store's ``s3://…/capture``) and the registered model's name (one of this test's
own, so no other test's model is there already). The registry poll interval is the stack's default. The
router signs in to MLflow as the stack's serving user (infra's users.json entry: no admin, READ on the served
model), as the RayService's pods do; the experiment its versions' runs live in is readable to it, as every
experiment is under a stack's ``default_permission = READ`` (the local server's default is NO_PERMISSIONS).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import mlflow
import pytest
import requests
from mlflow.tracking import MlflowClient

from infra.config import StackConfig, load_stack_config
from infra.serve import stack_serve_config
from pipeline.config import load_config
from pipeline.data import make_loans
from serving.deploy import application_status, deploy_config, wait_running
from serving.spec import DEFAULT_REGISTRY_POLL_S
from tests.conftest import ROOT, remove_serve_applications
from tests.e2e.mlflow_users import grant_experiment, stack_mlflow_user
from tests.infra.driver import engine_config
from tests.serving.conftest import SERVE_PORT, SERVING_EXPERIMENT, register_version

pytestmark = pytest.mark.e2e
# One poll interval, then loading the version in the replica (its first model brings in MLflow and torch:
# 3-10 s on a busy 2-core machine). Measured: 8-15 s with the stack's 5 s poll.
WAIT_LIMIT_S = DEFAULT_REGISTRY_POLL_S + 40


def dev_stack_config(model_name: str) -> StackConfig:
    """The dev stack file's config as the engine passes it, with this test's model name."""
    raw, secret_keys = engine_config(ROOT / "Pulumi.dev.yaml", [])
    config = load_stack_config(raw, frozenset(secret_keys))
    return config.model_copy(update={"serve": config.serve.model_copy(update={"model_name": model_name})})


def local_serve_config(config: StackConfig, champion: str | None, capture_dir: Path) -> dict[str, Any]:
    """The stack's rendered serve config with only its address and capture location made local."""
    rendered = stack_serve_config(config.serve, config.canary_weight, champion, None, str(capture_dir))
    rendered["http_options"] = {"host": "127.0.0.1", "port": SERVE_PORT}
    return rendered


def ask(rows: list[dict[str, Any]]) -> requests.Response:
    return requests.post(f"http://127.0.0.1:{SERVE_PORT}/", json={"rows": rows}, timeout=10)


@pytest.mark.parametrize(
    "champion",
    [
        pytest.param(None, id="fresh-stack-follows-the-champion-alias"),
        pytest.param("1", id="stack-pinning-a-version-not-registered-yet"),
    ],
)
def test_router_starts_without_a_model_and_serves_the_champion_once_registered(
    local_env, tmp_path: Path, champion: str | None
) -> None:
    # Given the stack's serve config, deployed before any version of its model exists
    name = f"fresh-{uuid.uuid4().hex[:6]}"
    config = dev_stack_config(name)
    rendered = local_serve_config(config, champion, tmp_path / "capture")
    reader = stack_mlflow_user(local_env, "serving", name)
    rendered["applications"][0]["runtime_env"].setdefault("env_vars", {}).update(reader)
    experiment = mlflow.set_experiment(SERVING_EXPERIMENT)  # made if no earlier test made it
    grant_experiment(local_env, experiment.experiment_id, reader["MLFLOW_TRACKING_USERNAME"], "READ")
    app = rendered["applications"][0]["name"]
    router = rendered["applications"][0]["deployments"][0]["user_config"]
    assert router["registry_poll_s"] == DEFAULT_REGISTRY_POLL_S, "the stack's own poll interval"
    headers = local_env.ray_auth_header()
    rows = make_loans(3, seed=5)[list(load_config(ROOT / "pipeline.yaml").features)].to_dict("records")
    try:
        deploy_config(local_env.dashboard_url, headers, rendered)
        # Then the application runs (no DEPLOY_FAILED), is healthy, and says what it waits for
        wait_running(local_env.dashboard_url, headers, app, timeout_s=120)
        health = requests.get(f"http://127.0.0.1:{SERVE_PORT}/health", timeout=10)
        assert health.status_code == 200 and health.json()["serving"] is False, health.text
        proxy = requests.get(f"http://127.0.0.1:{SERVE_PORT}/-/healthz", timeout=10)
        assert proxy.status_code == 200, f"Serve's proxy health: {proxy.status_code}"
        waiting = ask(rows)
        assert waiting.status_code == 503, waiting.text
        body = waiting.json()
        assert body["model"] == name and name in body["error"], body
        assert body.get("alias") == "champion" if champion is None else body.get("version") == champion, body
        deployed = application_status(local_env.dashboard_url, headers, app)["deployed_app_config"]

        # When a first version is registered and made champion (as the pipeline's first run does)
        version = register_version(name, seed=1)
        assert version.version == "1"
        MlflowClient().set_registered_model_alias(name, "champion", version.version)
        registered = time.monotonic()
        # Then answers come from it, with no redeploy, within about one poll interval plus loading
        answer = ask(rows)
        while answer.status_code == 503 and time.monotonic() - registered < WAIT_LIMIT_S:
            time.sleep(0.1)
            answer = ask(rows)
        first_answer_s = time.monotonic() - registered
        assert answer.status_code == 200, answer.text
        assert answer.json()["version"] == "1" and len(answer.json()["predictions"]) == 3, answer.json()
        assert first_answer_s < WAIT_LIMIT_S, f"took {first_answer_s:.1f}s"
        status = application_status(local_env.dashboard_url, headers, app)
        assert status["status"] == "RUNNING" and status["deployed_app_config"] == deployed, "no redeploy"
        if champion is None:
            # And a later champion (the alias moved, as a promotion does) is followed the same way
            MlflowClient().set_registered_model_alias(
                name, "champion", register_version(name, seed=2).version
            )
            moved = time.monotonic()
            while ask(rows).json().get("version") != "2" and time.monotonic() - moved < WAIT_LIMIT_S:
                time.sleep(0.1)
            assert ask(rows).json()["version"] == "2", "the router follows the alias to the new version"
            print(f"alias moved -> answers from v2: {time.monotonic() - moved:.2f}s")  # noqa: T201
        print(f"registered champion -> first answer: {first_answer_s:.2f}s (poll {DEFAULT_REGISTRY_POLL_S}s)")  # noqa: T201
    finally:
        remove_serve_applications(local_env)
