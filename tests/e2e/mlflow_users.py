"""The MLflow users a stack gives its workloads, made on the local environment's real MLflow server.

The local environment's MLflow runs everything as its admin; these helpers make a workload's user exactly as
a stack's MLflow init container does (infra's ``users.json`` entry, ``lockgate.mlflow_admin.ensure_users``), so
that a test can run a workload as that user and prove its grants suffice.
"""

from __future__ import annotations

from typing import Any

import pytest


def stack_mlflow_user(local_env: Any, workload: str, model: str) -> dict[str, str]:
    """The MLflow user a stack gives ``workload`` (infra's exact users.json entry), made in the local server.

    Made as the MLflow pod's init container makes it (``lockgate.mlflow_admin.ensure_users`` on the auth
    database); returns the client variables the workload's pods get from its Secret.
    """
    import secrets

    from infra.components.registry import user_entry
    from infra.workloads import BY_NAME
    from lockgate.mlflow_admin import WorkloadUser, ensure_users

    access = BY_NAME[workload].mlflow
    assert access is not None, f"{workload} has no MLflow user in a stack"
    entry = user_entry(
        {"workload": workload, "username": f"{model}-{workload}", "access": access},
        secrets.token_hex(16),
        model,
    )
    creds = local_env.credentials()
    admin = WorkloadUser(creds["mlflow_username"], creds["mlflow_password"], is_admin=True)
    ensure_users(
        f"sqlite:///{local_env.state_dir / 'mlflow' / 'auth.db'}", admin, [WorkloadUser.from_json(entry)]
    )
    return {"MLFLOW_TRACKING_USERNAME": entry["username"], "MLFLOW_TRACKING_PASSWORD": entry["password"]}


def grant_experiment(local_env: Any, experiment_id: str, username: str, permission: str) -> None:
    """An MLflow admin's grant on one experiment, made as the refused run's error tells a person to."""
    from mlflow.server import get_app_client

    creds = local_env.credentials()
    admin = {
        "MLFLOW_TRACKING_USERNAME": creds["mlflow_username"],
        "MLFLOW_TRACKING_PASSWORD": creds["mlflow_password"],
    }
    with pytest.MonkeyPatch.context() as patch:
        sign_in(patch, admin)
        client = get_app_client("basic-auth", tracking_uri=local_env.mlflow_url)
        client.grant_user_permission(username, "experiment", experiment_id, permission)


def sign_in(patch: pytest.MonkeyPatch, user: dict[str, str]) -> None:
    """This process's MLflow calls go as ``user`` (its client variables, as ``stack_mlflow_user`` returns them)."""
    for variable, value in user.items():
        patch.setenv(variable, value)
