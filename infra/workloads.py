"""Who each workload is and what it may do: its service account, its MLflow user, its artefact-store prefixes.

One table, read by the composition root (IRSA roles on aws, MinIO users on dev, MLflow users, MLflow's
NetworkPolicy) and by the tests that check each grant. A workload never borrows another's identity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from infra.components.artifact_store import (
    CAPTURE_PREFIX,
    EVENTS_PREFIX,
    MLFLOW_PREFIX,
    STATE_PREFIX,
    TRAIN_PREFIX,
)

MLFLOW, SERVING, TRAINING, TRIGGERS, EXPORTER = "mlflow", "serving", "training", "triggers", "exporter"
# What a workload's MLflow user may do: "writer" is an MLflow admin separate from the human admin (it creates
# experiments and runs, registers versions and moves aliases on a model any earlier user may have made);
# "reader" is no admin and holds READ on the served registered model (experiments: the server's
# default_permission, READ).
MlflowAccess = Literal["writer", "reader"]


@dataclass(frozen=True)
class Workload:
    """One workload: the prefixes it writes and reads, and its MLflow access (None: it never calls MLflow)."""

    name: str
    read_write: tuple[str, ...]
    read_only: tuple[str, ...]
    mlflow: MlflowAccess | None


WORKLOADS: tuple[Workload, ...] = (
    # MLflow's server stores model artefacts (it proxies them to every client).
    Workload(MLFLOW, (MLFLOW_PREFIX,), (), None),
    # The router writes captured traffic; models reach it through MLflow's artefact proxy.
    Workload(SERVING, (CAPTURE_PREFIX,), (), "reader"),
    # A training run keeps checkpoints and writes its events; it registers models and moves aliases.
    Workload(TRAINING, (TRAIN_PREFIX, EVENTS_PREFIX), (), "writer"),
    # The checks keep their state and events and read captured traffic; MLflow: the champion's profile.
    Workload(TRIGGERS, (STATE_PREFIX, EVENTS_PREFIX), (CAPTURE_PREFIX,), "reader"),
    # The exporter reads events and the checks' state; it never calls MLflow.
    Workload(EXPORTER, (), (EVENTS_PREFIX, STATE_PREFIX), None),
)
BY_NAME = {workload.name: workload for workload in WORKLOADS}


def service_account(instance: str, workload: str) -> str:
    """The Kubernetes service account a workload's pods run as (an IRSA role trusts it by name)."""
    if workload not in BY_NAME:
        raise ValueError(f"workload: {workload!r} is not one of {sorted(BY_NAME)}")
    return f"{instance}-{workload}"


def mlflow_username(instance: str, workload: str) -> str:
    """The MLflow user a workload's pods sign in as."""
    if BY_NAME.get(workload) is None or BY_NAME[workload].mlflow is None:
        raise ValueError(f"workload: {workload!r} has no MLflow user")
    return f"{instance}-{workload}"


def mlflow_clients() -> tuple[str, ...]:
    """The workloads that call MLflow (its NetworkPolicy admits their pods only)."""
    return tuple(w.name for w in WORKLOADS if w.mlflow is not None)
