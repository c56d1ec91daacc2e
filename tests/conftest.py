"""Shared fixtures: one real local environment (Ray + MLflow) per test session, and pipeline-file builders."""

from __future__ import annotations

import copy
import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from lockgate.localenv import LocalEnvironment, Ports
from pipeline.data import make_loans, write_table


def pytest_configure(config: pytest.Config) -> None:
    """Before any test module imports Ray: this process's Ray node is 127.0.0.1, as every Lockgate client's is.

    Ray reads ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` once, when ``ray`` is first imported; a test that imports Ray
    before ``connected()`` sets it would otherwise join as the machine's routable address, which the
    loopback-only local environment has no raylet on (``ray.init`` retries for minutes, then fails).
    """
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


ROOT = Path(__file__).resolve().parents[1]
# Two suites on one machine (two checkouts, say) each need their own ports: this shifts every port the
# session listens on, Serve's HTTP port included (tests/serving/conftest.py). Tests only; 0 by default.
PORT_OFFSET = int(os.environ.get("LOCKGATE_TEST_PORT_OFFSET", "0"))
# Ports apart from the defaults, so a developer's own `lockgate up` is left alone.
SESSION_PORTS = Ports.from_base(
    mlflow=17055 + PORT_OFFSET, ray_gcs=17390 + PORT_OFFSET, ray_dashboard=17275 + PORT_OFFSET
)
# Serve's HTTP port is cluster-wide, fixed when Serve first starts: one per session environment. Outside the
# ranges the environment derives from Ray's port (workers +10..+409, replicas' direct ingress +410..+449):
# at 17800 a replica's direct-ingress server could take it first, and HAProxy's frontend then never bound.
SESSION_SERVE_PORT = 17850 + PORT_OFFSET


def shipped_config() -> dict[str, Any]:
    """The repository's pipeline.yaml as a mapping."""
    return yaml.safe_load((ROOT / "pipeline.yaml").read_text())


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursively overlay ``override`` on a copy of ``base``."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = (
            deep_merge(out[key], value)
            if isinstance(value, dict) and isinstance(out.get(key), dict)
            else value
        )
    return out


# A short progressive rollout for end-to-end tests: two steps, 3 s holds, a small minimum sample.
FAST_ROLLOUT: dict[str, Any] = {
    "enabled": True,
    "steps": [50, 100],
    "interval_s": 3,
    "max_step_wait_s": 90,
    "analysis": {"min_requests": 50, "p99_latency_floor_s": 0.1},
}


def write_pipeline(directory: Path, override: dict[str, Any], frame=None) -> Path:
    """A pipeline file plus its data in ``directory`` (the job's working directory), events logged there too."""
    directory.mkdir(parents=True, exist_ok=True)
    write_table(frame if frame is not None else make_loans(rows=8_000, seed=0), directory / "data.parquet")
    config = deep_merge(
        shipped_config(),
        {
            "data": {"uri": "data.parquet"},
            "training": {"epochs": 3},
            # Pipeline tests stop at registration; serving and rollout have their own tests.
            "rollout": {"enabled": False},
            # A smaller table and fewer epochs than the shipped run: thresholds scaled to match.
            "gates": {
                "thresholds": {
                    "rules": [
                        {"metric": "auc", "min": 0.66},
                        {"metric": "auc", "min": 0.55, "slices": ["region", "product"]},
                    ]
                }
            },
            "events": {"log_file": str(directory / "events.jsonl")},
        },
    )
    config = deep_merge(config, override)
    path = directory / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


_SESSION_ENV: dict[str, LocalEnvironment] = {}
"""The session's environment once a test has started it (module teardowns clean up after it)."""


@contextmanager
def running_environment(env: LocalEnvironment) -> Iterator[LocalEnvironment]:
    """Start ``env`` for a block, its clients' variables set in this process, then stop it by PID and restore."""
    # Ray's workers (Serve replicas, job drivers) import this checkout's packages, not whichever checkout
    # the virtualenv's editable install points at: the head passes its environment on to them.
    saved = {key: os.environ.get(key) for key in [*env.client_env(), "PYTHONPATH"]}
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    try:
        env.up(log=lambda _: None)
        os.environ.update(env.client_env())
        try:
            yield env
        finally:
            env.down(log=lambda _: None)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def local_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalEnvironment]:
    """A real Ray head and MLflow server for the whole session, stopped by PID at the end."""
    env = LocalEnvironment(tmp_path_factory.mktemp("lockgate-session") / "state", SESSION_PORTS, num_cpus=4)
    with running_environment(env):
        _SESSION_ENV["env"] = env
        try:
            yield env
        finally:
            _SESSION_ENV.clear()


@pytest.fixture(autouse=True, scope="module")
def serve_applications_removed_after_module() -> Iterator[None]:
    """Each module that used the session's Ray starts the next one with no Serve application deployed.

    Deploys keep the applications of other routes (as a user's several pipelines share one cluster), so
    without this one module's routers would hold CPUs the next module's jobs need.
    """
    yield
    env = _SESSION_ENV.get("env")
    if env is not None:
        remove_serve_applications(env)


def remove_serve_applications(env: LocalEnvironment) -> None:
    """Delete every Serve application but keep Serve running.

    Serve's DELETE shuts Serve down, which takes over 30 s to drain with the HAProxy ingress, and a deploy that
    arrives meanwhile is acknowledged and then ignored ("controller is shutting down"): an empty application
    list removes the applications instead, while Serve and its ingress stay up.
    """
    import requests

    from serving.deploy import APPLICATIONS_PATH

    url, headers = f"{env.dashboard_url}{APPLICATIONS_PATH}", env.ray_auth_header()
    current = requests.get(url, headers=headers, timeout=60).json()
    if not current.get("applications"):
        return
    http = {key: current["http_options"][key] for key in ("host", "port")}
    response = requests.put(url, json={"http_options": http, "applications": []}, headers=headers, timeout=60)
    response.raise_for_status()


class WebhookReceiver:
    """A real HTTP server on 127.0.0.1 that records every JSON body it receives."""

    def __init__(self) -> None:
        received: list[dict[str, Any]] = []
        self.received = received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> WebhookReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def webhook() -> Iterator[WebhookReceiver]:
    """A webhook receiver for one test."""
    with WebhookReceiver() as receiver:
        yield receiver
