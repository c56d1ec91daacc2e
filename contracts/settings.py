"""The environment a Lockgate process runs in, read once into a typed object.

Every ``LOCKGATE_*`` variable is named here once (:class:`EnvVar`); writers (the local environment, the
Pulumi components, the job submitter) and readers (the pipeline, the trigger checks, the exporter) use
these names. :meth:`Settings.from_environ` is called at each process's edge; the code below it receives
the object, never ``os.environ``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any


class EnvVar(StrEnum):
    """Environment variables Lockgate writes and reads (``LOCKGATE_*``) and the client ones it relies on."""

    # The local environment (set by `lockgate up` on the Ray head; the CLI's default state directory).
    home = "LOCKGATE_HOME"
    dashboard_url = "LOCKGATE_DASHBOARD_URL"
    metrics_url = "LOCKGATE_METRICS_URL"
    train_storage = "LOCKGATE_TRAIN_STORAGE"
    # Where shared data lives (local paths or s3://… in a cluster).
    capture_uri = "LOCKGATE_CAPTURE_URI"
    state_uri = "LOCKGATE_STATE_URI"
    events_uri = "LOCKGATE_EVENTS_URI"
    events_file = "LOCKGATE_EVENTS_FILE"
    # One run, as its submitter describes it.
    submission_id = "LOCKGATE_SUBMISSION_ID"
    git_commit = "LOCKGATE_GIT_COMMIT"
    trigger = "LOCKGATE_TRIGGER"
    # The data set a run trains on instead of its file's data.uri: in the environment, not on the command
    # line, where every local user can read it (a URI may carry a password or a signature).
    data = "LOCKGATE_DATA"
    # The trigger checks in a cluster (the CronJob's pod).
    job_template = "LOCKGATE_JOB_TEMPLATE"
    namespace = "LOCKGATE_NAMESPACE"
    serving_file = "LOCKGATE_SERVING_FILE"
    # Ray processes of the local environment bind Serve's hard-coded wildcard listeners to 127.0.0.1
    # (lockgate/loopback/sitecustomize.py).
    loopback_only = "LOCKGATE_LOOPBACK_ONLY"
    # The live rollout state (candidate, weight, paused, the rollout's lease): a directory URI, a local path or
    # s3://bucket/prefix, holding `<model name>.json` per model. Written by the rollout controller and the CLI,
    # followed by the router without a Serve redeploy (README "Who decides what serves").
    live_state_uri = "LOCKGATE_LIVE_STATE_URI"
    # The Prometheus HTTP API the rollout analysis queries in a cluster (the in-cluster Prometheus).
    prometheus_url = "LOCKGATE_PROMETHEUS_URL"
    # Which router series there are this stack's: a JSON object of exact label values (for example namespace
    # and Serve application), since one in-cluster Prometheus scrapes every stack (serving/metrics.py).
    prometheus_selector = "LOCKGATE_PROMETHEUS_SELECTOR"
    # The router: the file holding the bearer token `POST <route>/labels` requires (none: labels are off).
    labels_token_file = "LOCKGATE_LABELS_TOKEN_FILE"
    # MLflow's users, made and repaired before its server starts (`python -m lockgate.mlflow_admin`).
    mlflow_auth_database_uri = "LOCKGATE_MLFLOW_AUTH_DATABASE_URI"
    mlflow_users_file = "LOCKGATE_MLFLOW_USERS_FILE"
    mlflow_admin_username = "MLFLOW_AUTH_ADMIN_USERNAME"
    mlflow_admin_password = "MLFLOW_AUTH_ADMIN_PASSWORD"  # noqa: S105 - the variable's name, not a password
    # Clients of Ray and MLflow, named as their own CLIs name them.
    ray_address = "RAY_ADDRESS"
    ray_auth_mode = "RAY_AUTH_MODE"
    ray_auth_token_path = "RAY_AUTH_TOKEN_PATH"
    ray_job_submission_id = "RAY_JOB_SUBMISSION_ID"
    mlflow_tracking_uri = "MLFLOW_TRACKING_URI"
    mlflow_username = "MLFLOW_TRACKING_USERNAME"
    mlflow_password = "MLFLOW_TRACKING_PASSWORD"


RESULT_MARKER = "LOCKGATE_RESULT"
"""The prefix of a run's last stdout line (its outcome as JSON), read back by the submitter."""


@dataclass(frozen=True)
class ServingTarget:
    """Where serving lives, for the pipeline's rollout stage: set on the Ray head by ``lockgate up``."""

    dashboard_url: str
    metrics_url: str
    home: Path
    ray_token_path: Path

    def auth_headers(self) -> dict[str, str]:
        """The bearer header for the dashboard's REST API (Serve deploys)."""
        return {"Authorization": f"Bearer {self.ray_token_path.read_text().strip()}"}

    def rollout_state_path(self, model_name: str) -> Path:
        """The live rollout state of one model (candidate weight, paused), shared with the CLI."""
        return rollout_state_path(self.home, model_name)


def rollout_state_dir(home: Path) -> Path:
    """The local environment's live rollout state store (its ``LOCKGATE_LIVE_STATE_URI``)."""
    return home / "rollout"


def rollout_state_path(home: Path, model_name: str) -> Path:
    """Where an environment keeps a model's live rollout state."""
    return rollout_state_dir(home) / f"{model_name}.json"


@dataclass(frozen=True)
class Settings:
    """Everything a Lockgate process reads from its environment; ``None`` where a variable is unset."""

    home: Path | None = None
    dashboard_url: str | None = None
    metrics_url: str | None = None
    train_storage: str | None = None
    capture_uri: str | None = None
    state_uri: str | None = None
    events_uri: str | None = None
    events_file: str | None = None
    submission_id: str | None = None
    git_commit: str | None = None
    trigger: str | None = None
    data: str | None = None
    job_template: Path | None = None
    namespace: str | None = None
    serving_file: Path | None = None
    labels_token_file: Path | None = None
    live_state_uri: str | None = None
    prometheus_url: str | None = None
    prometheus_selector: str | None = None
    ray_address: str | None = None
    ray_auth_token_path: Path | None = None
    mlflow_tracking_uri: str | None = None
    mlflow_username: str | None = None  # a name, not a secret: the password is never read into Settings

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read every variable once (empty counts as unset)."""
        source = os.environ if environ is None else environ

        def get(var: EnvVar) -> str | None:
            return source.get(var.value) or None

        def path(var: EnvVar) -> Path | None:
            value = get(var)
            return Path(value) if value else None

        return cls(
            home=path(EnvVar.home),
            dashboard_url=get(EnvVar.dashboard_url),
            metrics_url=get(EnvVar.metrics_url),
            train_storage=get(EnvVar.train_storage),
            capture_uri=get(EnvVar.capture_uri),
            state_uri=get(EnvVar.state_uri),
            events_uri=get(EnvVar.events_uri),
            events_file=get(EnvVar.events_file),
            submission_id=get(EnvVar.submission_id) or get(EnvVar.ray_job_submission_id),
            git_commit=get(EnvVar.git_commit),
            trigger=get(EnvVar.trigger),
            data=get(EnvVar.data),
            job_template=path(EnvVar.job_template),
            namespace=get(EnvVar.namespace),
            serving_file=path(EnvVar.serving_file),
            labels_token_file=path(EnvVar.labels_token_file),
            live_state_uri=get(EnvVar.live_state_uri),
            prometheus_url=get(EnvVar.prometheus_url),
            prometheus_selector=get(EnvVar.prometheus_selector),
            ray_address=get(EnvVar.ray_address),
            ray_auth_token_path=path(EnvVar.ray_auth_token_path),
            mlflow_tracking_uri=get(EnvVar.mlflow_tracking_uri),
            mlflow_username=get(EnvVar.mlflow_username),
        )

    @property
    def serving_target(self) -> ServingTarget | None:
        """Where serving lives, when this process runs inside an environment that serves; else None."""
        if not (self.dashboard_url and self.metrics_url and self.home and self.ray_auth_token_path):
            return None
        return ServingTarget(self.dashboard_url, self.metrics_url, self.home, self.ray_auth_token_path)

    def trigger_details(self) -> dict[str, Any]:
        """Why this run started, when a trigger started it (reason, event_id, fired_at); {} otherwise.

        Anything but a JSON object is ignored: the run still runs, it just is not attributed to a trigger.
        """
        try:
            value = json.loads(self.trigger) if self.trigger else {}
        except json.JSONDecodeError:
            return {}
        return value if isinstance(value, dict) else {}


SECRET_QUERY_MARKERS = ("sig", "signature", "token", "key", "secret", "password", "credential", "auth")


def redact_uri(uri: str) -> str:
    """A URI safe to log, tag or show: its password and secret-looking query values become ``***``.

    Secret-looking: a parameter name with ``sig``, ``token``, ``key``… (``X-Amz-Signature``); the rest stays.
    """
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    if "://" not in uri:
        return uri
    parts = urlsplit(uri)
    netloc = parts.netloc
    if "@" in netloc:
        credentials, host = netloc.rsplit("@", 1)
        user = credentials.split(":", 1)[0]
        netloc = f"{user}:***@{host}" if ":" in credentials else f"***@{host}"
    query = urlencode(
        [
            (name, "***" if any(marker in name.lower() for marker in SECRET_QUERY_MARKERS) else value)
            for name, value in parse_qsl(parts.query, keep_blank_values=True)
        ],
        safe="*",
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
