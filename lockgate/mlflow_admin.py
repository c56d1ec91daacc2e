"""The MLflow admin's password follows the environment's credentials, and each workload has its own user.

MLflow's basic-auth applies the configured admin password only when it first creates the admin user; a
password changed afterwards (a lost ``credentials.json``, a rotated Secret) would leave every client with a
401. The environment owns its auth database, so before the server starts the admin's password is set to
the current one when it differs. Locally a fingerprint of the password last applied skips that work on every
other start (MLflow's auth store is slow to import).

In a cluster the MLflow pod runs ``python -m lockgate.mlflow_admin`` as an init container: it does the same
for the admin and makes each workload's user (training, serving, triggers) exist with its current password,
admin flag and registered-model grants. Every input comes from the environment and a mounted file (the
server's Secret), never from the command line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contracts.settings import EnvVar

logger = logging.getLogger(__name__)

# The init container's inputs (infra/components/registry.py sets them from the server's Secret).
DATABASE_URI_ENV = EnvVar.mlflow_auth_database_uri.value
ADMIN_USERNAME_ENV = EnvVar.mlflow_admin_username.value
ADMIN_PASSWORD_ENV = EnvVar.mlflow_admin_password.value
USERS_FILE_ENV = EnvVar.mlflow_users_file.value
PERMISSIONS = ("READ", "USE", "EDIT", "MANAGE", "NO_PERMISSIONS")


@dataclass(frozen=True)
class WorkloadUser:
    """One workload's MLflow user: its password, whether it is an admin, its grants by registered model."""

    username: str
    password: str = field(repr=False)
    is_admin: bool = False
    registered_models: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WorkloadUser:
        """A user from its JSON form (``users.json`` in the server's Secret); refuses unknown permissions."""
        grants = dict(data.get("registered_models", {}))
        unknown = {p for p in grants.values() if p not in PERMISSIONS}
        if unknown:
            raise ValueError(f"{data.get('username')}: unknown permissions {sorted(unknown)}")
        return cls(str(data["username"]), str(data["password"]), bool(data.get("is_admin", False)), grants)


def _fingerprint(database_uri: str, username: str, password: str) -> str:
    return hashlib.sha256(f"{database_uri}\0{username}\0{password}".encode()).hexdigest()


def _auth_store(database_uri: str) -> Any:
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore()
    store.init_db(database_uri)
    return store


def ensure_admin_password(database_uri: str, username: str, password: str, applied_file: Path) -> bool:
    """Make ``username``'s password ``password`` in an existing auth database; whether it was changed.

    A database without that user is left alone: the server creates its admin from its config. The
    password itself is never logged.
    """
    fingerprint = _fingerprint(database_uri, username, password)
    if applied_file.exists() and applied_file.read_text().strip() == fingerprint:
        return False
    store = _auth_store(database_uri)
    changed = False
    if store.has_user(username):
        changes = _ensure_user(store, WorkloadUser(username, password, is_admin=True))
        if changes:
            logger.warning("MLflow admin %r: %s (the environment's current credentials)", username, changes)
            changed = True
    applied_file.parent.mkdir(parents=True, exist_ok=True)
    applied_file.write_text(fingerprint + "\n")
    applied_file.chmod(0o600)
    return changed


def _ensure_user(store: Any, user: WorkloadUser) -> list[str]:
    """Create ``user`` or bring its password and admin flag up to date; what changed."""
    from mlflow.exceptions import MlflowException

    if not store.has_user(user.username, use_primary=True):
        try:
            store.create_user(user.username, user.password, is_admin=user.is_admin)
            return ["created"]
        except MlflowException:  # another MLflow pod's init container created it meanwhile
            if not store.has_user(user.username, use_primary=True):
                raise
    changes = []
    if not store.authenticate_user(user.username, user.password, use_primary=True):
        store.update_user(user.username, password=user.password)
        changes.append("password")
    if store.get_user(user.username).is_admin != user.is_admin:
        store.update_user(user.username, is_admin=user.is_admin)
        changes.append("admin" if user.is_admin else "no longer admin")
    return changes


def _ensure_grant(store: Any, model: str, username: str, permission: str) -> str | None:
    """Give ``username`` exactly ``permission`` on the registered model ``model`` (which may not exist yet)."""
    from mlflow.exceptions import MlflowException

    try:
        current = store.get_registered_model_permission(model, username).permission
    except MlflowException:
        try:
            store.create_registered_model_permission(model, username, permission)
            return f"{permission} on {model}"
        except MlflowException:  # created by a concurrent init container: check what it holds
            current = store.get_registered_model_permission(model, username).permission
    if current != permission:
        store.update_registered_model_permission(model, username, permission)
        return f"{current} → {permission} on {model}"
    return None


def ensure_users(database_uri: str, admin: WorkloadUser, users: list[WorkloadUser]) -> dict[str, list[str]]:
    """Bring the admin and every workload user to the declared state; per user, what changed (no secrets).

    Idempotent and safe to run from several MLflow pods at once. Users the list does not name are left
    alone: a human may have made them through MLflow's own API.
    """
    names = [admin.username, *(u.username for u in users)]
    if len(set(names)) != len(names):
        raise ValueError(f"users: every username must be distinct, got {names}")
    store = _auth_store(database_uri)
    report: dict[str, list[str]] = {}
    for user in [admin, *users]:
        changes = _ensure_user(store, user)
        for model, permission in sorted(user.registered_models.items()):
            granted = _ensure_grant(store, model, user.username, permission)
            if granted:
                changes.append(granted)
        report[user.username] = changes
    return report


def _required(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        raise SystemExit(f"{name} is not set")
    return value


def main() -> int:
    """The init container's entry: users from ``$LOCKGATE_MLFLOW_USERS_FILE``, secrets from the environment."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    admin = WorkloadUser(_required(ADMIN_USERNAME_ENV), _required(ADMIN_PASSWORD_ENV), is_admin=True)
    users_file = os.environ.get(USERS_FILE_ENV)
    users = (
        [WorkloadUser.from_json(item) for item in json.loads(Path(users_file).read_text())]
        if users_file
        else []
    )
    report = ensure_users(_required(DATABASE_URI_ENV), admin, users)
    for username, changes in report.items():
        logger.info("MLflow user %r: %s", username, ", ".join(changes) or "unchanged")
    return 0


if __name__ == "__main__":
    sys.exit(main())
