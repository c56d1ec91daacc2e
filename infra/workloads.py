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
    ROLLOUT_PREFIX,
    STATE_PREFIX,
    TRAIN_PREFIX,
)

MLFLOW, SERVING, TRAINING, TRIGGERS, EXPORTER = "mlflow", "serving", "training", "triggers", "exporter"
# What a workload's MLflow user may do. None is an MLflow admin: the human admin is the only one there is.
# "trainer" (the training RayJob): no admin; MANAGE on the served registered model. Experiments need no grant:
# any signed-in user may create one and MLflow gives its creator MANAGE (mlflow/server/auth/__init__.py,
# set_can_manage_experiment_permission / set_can_manage_registered_model_permission, run after CreateExperiment
# and CreateRegisteredModel); every other experiment it reads under the server's default_permission, READ. An
# experiment someone else made first refuses its runs, and the run fails saying which grant it needs
# (pipeline/tracking.py). tests/e2e/test_cluster_checks.py runs the RayJob's whole run, rollout included, as this
# user against a real MLflow server.
# The rollout controller (the training RayJob's deploy stage) moves aliases and tags versions as the trainer:
# MLflow 3.17's basic-auth checks SetRegisteredModelAlias and SetModelVersionTag against `can_update` (EDIT or
# MANAGE) and DeleteRegisteredModelAlias against `can_delete` (MANAGE only), and serving/promotion.py deletes
# the `candidate` alias on promotion: the rollout needs MANAGE on its model; READ (the router) has neither
# (mlflow/server/auth/__init__.py BEFORE_REQUEST_VALIDATORS, mlflow/server/auth/permissions.py;
# tests/infra/test_cluster_rollout.py checks it against the installed MLflow).
ROLLOUT_MLFLOW_PERMISSION = "MANAGE"
# "reader" (the router): no admin; READ on the served registered model (experiments: default_permission, READ).
# "reclaimer" (the trigger checks): no admin; MANAGE on the served registered model only. They end a rollout
# whose controller died (serving/live.py reclaim_rollout: tag the orphaned candidate rejected, drop its alias),
# which needs exactly the rollout's rights on that one model, and they read its champion's profile with the same
# grant.
MlflowAccess = Literal["trainer", "reader", "reclaimer"]
# What each access holds on the served registered model; no workload user is an MLflow admin.
MLFLOW_GRANTS: dict[str, str] = {
    "trainer": ROLLOUT_MLFLOW_PERMISSION,
    "reader": "READ",
    "reclaimer": ROLLOUT_MLFLOW_PERMISSION,
}


@dataclass(frozen=True)
class Workload:
    """One workload: the prefixes it writes and reads, and its MLflow access (None: it never calls MLflow).

    ``get_put``: prefixes it reads and overwrites but may not delete from.
    """

    name: str
    read_write: tuple[str, ...]
    read_only: tuple[str, ...]
    mlflow: MlflowAccess | None
    get_put: tuple[str, ...] = ()


WORKLOADS: tuple[Workload, ...] = (
    # MLflow's server stores model artefacts (it proxies them to every client).
    Workload(MLFLOW, (MLFLOW_PREFIX,), (), None),
    # The router writes captured traffic and follows the live rollout state (it never writes it); models reach
    # it through MLflow's artefact proxy.
    Workload(SERVING, (CAPTURE_PREFIX,), (ROLLOUT_PREFIX,), "reader"),
    # A training run keeps checkpoints and writes its events; it registers models and moves aliases. Its
    # deploy stage is the rollout controller: it reads and writes the live rollout state with conditional PUTs
    # (serving/livestate.py) and never deletes it.
    Workload(TRAINING, (TRAIN_PREFIX, EVENTS_PREFIX), (), "trainer", get_put=(ROLLOUT_PREFIX,)),
    # The checks keep their state and events and read captured traffic; MLflow: the champion's profile. Every
    # check first reclaims a rollout whose controller died (its lease expired): a conditional PUT of the live
    # state (weight 0), the candidate tagged rejected and its alias dropped.
    Workload(
        TRIGGERS, (STATE_PREFIX, EVENTS_PREFIX), (CAPTURE_PREFIX,), "reclaimer", get_put=(ROLLOUT_PREFIX,)
    ),
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
