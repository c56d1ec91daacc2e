"""The MLflow admin's password follows the environment's credentials, also after it changed.

MLflow's basic-auth applies the configured admin password only when it first creates the admin user; a
password changed afterwards (a lost ``credentials.json``, a rotated Secret) would leave every client with a
401. The environment owns its auth database, so before the server starts the admin's password is set to
the current one when it differs. A fingerprint of the password last applied skips that work on every other
start (MLflow's auth store is slow to import).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def _fingerprint(database_uri: str, username: str, password: str) -> str:
    return hashlib.sha256(f"{database_uri}\0{username}\0{password}".encode()).hexdigest()


def ensure_admin_password(database_uri: str, username: str, password: str, applied_file: Path) -> bool:
    """Make ``username``'s password ``password`` in an existing auth database; whether it was changed.

    A database without that user is left alone: the server creates its admin from its config. The
    password itself is never logged.
    """
    fingerprint = _fingerprint(database_uri, username, password)
    if applied_file.exists() and applied_file.read_text().strip() == fingerprint:
        return False
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore()
    store.init_db(database_uri)
    changed = False
    if store.has_user(username) and not store.authenticate_user(username, password):
        store.update_user(username, password=password, is_admin=True)
        logger.warning("MLflow admin %r: password changed to the environment's current one", username)
        changed = True
    applied_file.parent.mkdir(parents=True, exist_ok=True)
    applied_file.write_text(fingerprint + "\n")
    applied_file.chmod(0o600)
    return changed
