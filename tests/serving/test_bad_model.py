"""Serving never goes down for a bad model: a version that cannot load leaves the last good one serving."""

from __future__ import annotations

import uuid

import mlflow
import pytest
import requests
from mlflow.tracking import MlflowClient

from pipeline.model import TabularClassifier
from serving.deploy import DeployError
from serving.desired import ServingFile, apply_desired, update_rollout_state
from serving.spec import ServingSpec
from tests.conftest import remove_serve_applications
from tests.serving.conftest import SERVE_PORT, register_version
from tests.serving.test_router import body

pytestmark = pytest.mark.e2e


def register_unloadable(name: str, good_uri: str, tmp_path) -> str:
    """A version of ``name`` whose weights file is garbage: it registers fine and fails to load."""
    local = mlflow.artifacts.download_artifacts(good_uri, dst_path=str(tmp_path / "good"))
    garbage = tmp_path / "weights.pt"
    garbage.write_bytes(b"not a torch file")
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=TabularClassifier(),
            artifacts={"encoder": f"{local}/artifacts/encoder.json", "weights": str(garbage)},
            signature=mlflow.models.get_model_info(good_uri).signature,
        )
    return str(mlflow.register_model(info.model_uri, name).version)


def test_a_candidate_that_cannot_load_is_refused_and_the_champion_keeps_serving(local_env, tmp_path) -> None:
    # Given a champion served through the desired state,
    name = f"bad-{uuid.uuid4().hex[:6]}"
    champion = register_version(name, 1)
    client = MlflowClient()
    client.set_registered_model_alias(name, "champion", champion.version)
    file = ServingFile(
        model_name=name,
        serving=ServingSpec(app_name="lockgate-bad", http_port=SERVE_PORT, replica_num_cpus=0.25),
    )
    state = tmp_path / "rollout.json"
    headers = local_env.ray_auth_header()
    url = f"http://127.0.0.1:{SERVE_PORT}/"
    try:
        apply_desired(local_env.dashboard_url, headers, file, state, capture_uri=str(tmp_path / "capture"))
        assert requests.post(url, json=body(), timeout=30).status_code == 200, "the champion serves"
        # when a candidate whose weights are corrupt takes half the traffic,
        broken = register_unloadable(name, f"models:/{name}/{champion.version}", tmp_path)
        client.set_registered_model_alias(name, "candidate", broken)
        update_rollout_state(state, candidate_weight=50.0)
        with pytest.raises(DeployError) as caught:
            apply_desired(
                local_env.dashboard_url, headers, file, state, capture_uri=str(tmp_path / "capture")
            )
        # then the error names the version and why, nothing was deployed, and the champion answers everything.
        message = str(caught.value)
        assert f"models:/{name}/{broken} cannot be served: it does not load" in message, message
        answers = [requests.post(url, json=body(), timeout=30) for _ in range(20)]
        assert [a.status_code for a in answers] == [200] * 20, [
            a.text for a in answers if a.status_code != 200
        ]
        assert {a.headers["x-lockgate-version"] for a in answers} == {champion.version}, "only the champion"
    finally:
        remove_serve_applications(local_env)
