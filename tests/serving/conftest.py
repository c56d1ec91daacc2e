"""Serving fixtures: registered model versions (no training needed) and a deployed router on the session env."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
import torch

from lockgate.localenv import LocalEnvironment
from pipeline.config import load_config
from pipeline.data import make_loans
from pipeline.model import build_mlp
from pipeline.register import log_model
from pipeline.train import encode_training_data
from serving.deploy import deploy_config, wait_running
from serving.render import render_serve_config
from serving.spec import CaptureSpec, ModelRef, RouterConfig, ServingSpec, TrafficSpec
from tests.conftest import ROOT, SESSION_SERVE_PORT, remove_serve_applications

SERVE_PORT = SESSION_SERVE_PORT


SERVING_EXPERIMENT = "serving-tests"  # where register_version logs its runs


def register_version(
    name: str, seed: int, fail_rate: float = 0.0, delay_s: float = 0.0, tags: dict[str, str] | None = None
) -> ModelRef:
    """Log and register a model with seeded weights: a real pyfunc with signature, in seconds.

    A ``fail_rate`` or ``delay_s`` logs the same classifier through tests/serving/faulty_model.py.
    """
    config = load_config(ROOT / "pipeline.yaml")
    frame = make_loans(2_000, seed=seed)
    data = encode_training_data(frame, config)
    torch.manual_seed(seed)
    network = build_mlp(data.encoder.width, config.model.hidden_units, config.model.dropout)
    mlflow.set_experiment(SERVING_EXPERIMENT)
    example = frame[list(config.features)].head(5)
    with mlflow.start_run():
        info = log_model(data.encoder, network.state_dict(), example)
        if fail_rate or delay_s:
            local = mlflow.artifacts.download_artifacts(info.model_uri)
            info = mlflow.pyfunc.log_model(
                name="faulty",
                python_model=str(Path(__file__).with_name("faulty_model.py")),
                artifacts={
                    "encoder": f"{local}/artifacts/encoder.json",
                    "weights": f"{local}/artifacts/weights.pt",
                },
                model_config={"fail_rate": fail_rate, "delay_s": delay_s},
                signature=mlflow.models.get_model_info(info.model_uri).signature,
            )
    version = mlflow.register_model(info.model_uri, name, tags=tags or {})
    return ModelRef(name=name, version=str(version.version))


@dataclass
class Deployed:
    """A running router and how to change it."""

    env: LocalEnvironment
    spec: ServingSpec
    champion: ModelRef
    candidate: ModelRef | None
    url: str

    def apply(
        self, traffic: TrafficSpec, spec: ServingSpec | None = None, capture: CaptureSpec | None = None
    ) -> None:
        """Render and deploy a new split (and optionally new deployment settings) declaratively."""
        router = RouterConfig(
            champion=self.champion,
            candidate=self.candidate,
            traffic=traffic,
            capture=capture or CaptureSpec(),
        )
        headers = self.env.ray_auth_header()
        deploy_config(self.env.dashboard_url, headers, render_serve_config(spec or self.spec, router))
        wait_running(self.env.dashboard_url, headers, self.spec.app_name)


@pytest.fixture(scope="module")
def deployed(local_env: LocalEnvironment) -> Iterator[Deployed]:
    name = f"serve-{uuid.uuid4().hex[:6]}"
    champion, candidate = register_version(name, 1), register_version(name, 2)
    spec = ServingSpec(
        app_name="lockgate-test", http_port=SERVE_PORT, replica_num_cpus=0.25, max_ongoing_requests=64
    )
    target = Deployed(local_env, spec, champion, candidate, f"http://127.0.0.1:{SERVE_PORT}/")
    target.apply(TrafficSpec())
    try:
        yield target
    finally:
        remove_serve_applications(local_env)
