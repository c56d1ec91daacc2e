"""The MLflow users a cluster's init container keeps: created, rotated, granted, idempotent (real auth store)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lockgate.mlflow_admin import (
    ADMIN_PASSWORD_ENV,
    ADMIN_USERNAME_ENV,
    DATABASE_URI_ENV,
    USERS_FILE_ENV,
    WorkloadUser,
    ensure_users,
)

ADMIN = WorkloadUser("lockgate-admin", "admin-password-1", is_admin=True)
TRAINING = WorkloadUser("lockgate-training", "training-password-1", is_admin=True)
SERVING = WorkloadUser("lockgate-serving", "serving-password-1", registered_models={"lockgate": "READ"})


def store(uri: str):
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    found = SqlAlchemyStore()
    found.init_db(uri)
    return found


def test_users_are_created_then_left_alone_then_rotated(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'auth.db'}"
    # Given an empty auth database, when the users are ensured, then each exists with its role and grants.
    first = ensure_users(uri, ADMIN, [TRAINING, SERVING])
    assert first == {
        "lockgate-admin": ["created"],
        "lockgate-training": ["created"],
        "lockgate-serving": ["created", "READ on lockgate"],
    }, first
    auth = store(uri)
    assert auth.get_user("lockgate-admin").is_admin and auth.get_user("lockgate-training").is_admin
    assert not auth.get_user("lockgate-serving").is_admin, "serving is not an admin"
    assert auth.get_registered_model_permission("lockgate", "lockgate-serving").permission == "READ"
    # When nothing changed, then a second run changes nothing (every MLflow pod start runs it).
    assert ensure_users(uri, ADMIN, [TRAINING, SERVING]) == {u: [] for u in first}
    # When the stack rotates the admin's password and someone made serving an editor, both are put back.
    auth.update_user("lockgate-serving", is_admin=True)
    auth.update_registered_model_permission("lockgate", "lockgate-serving", "EDIT")
    rotated = WorkloadUser("lockgate-admin", "admin-password-2", is_admin=True)
    again = ensure_users(uri, rotated, [TRAINING, SERVING])
    assert again["lockgate-admin"] == ["password"]
    assert again["lockgate-serving"] == ["no longer admin", "EDIT → READ on lockgate"]
    auth = store(uri)
    assert auth.authenticate_user("lockgate-admin", "admin-password-2"), "the new password works"
    assert not auth.authenticate_user("lockgate-admin", "admin-password-1"), "the old one does not"
    assert not auth.get_user("lockgate-serving").is_admin


def test_duplicate_usernames_and_unknown_permissions_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="distinct"):
        ensure_users(f"sqlite:///{tmp_path / 'auth.db'}", ADMIN, [WorkloadUser("lockgate-admin", "x" * 12)])
    with pytest.raises(ValueError, match="unknown permissions"):
        WorkloadUser.from_json({"username": "u", "password": "p" * 12, "registered_models": {"m": "OWN"}})


def test_the_init_container_command_takes_secrets_from_env_and_file_only(tmp_path: Path) -> None:
    # Given the inputs the MLflow pod's init container gets (env from the Secret, users.json mounted),
    users_file = tmp_path / "users.json"
    users_file.write_text(
        json.dumps(
            [
                {
                    "username": "lockgate-serving",
                    "password": "serving-password-1",
                    "is_admin": False,
                    "registered_models": {"lockgate": "READ"},
                }
            ]
        )
    )
    uri = f"sqlite:///{tmp_path / 'auth.db'}"
    env = {
        **os.environ,
        DATABASE_URI_ENV: uri,
        ADMIN_USERNAME_ENV: "lockgate-admin",
        ADMIN_PASSWORD_ENV: "admin-password-1",
        USERS_FILE_ENV: str(users_file),
    }
    # when the exact command runs, then both users exist and no password reached its output.
    done = subprocess.run(
        [sys.executable, "-m", "lockgate.mlflow_admin"], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "password-1" not in done.stdout + done.stderr, "no password is logged"
    auth = store(uri)
    assert auth.authenticate_user("lockgate-serving", "serving-password-1")
    assert auth.get_user("lockgate-admin").is_admin
