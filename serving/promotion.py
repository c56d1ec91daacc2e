"""Alias moves as compare-and-set: MLflow aliases are last-writer-wins, so every move goes through one writer.

The writer is a named, detached Ray actor with ``max_concurrency=1``: calls are serialised cluster-wide,
each checks that the aliases are still what the caller saw before it moves anything, and a version that a
gate blocked or a rollout rejected is never made champion. A writer killed halfway (its Ray head died
mid-call, so no ``except`` runs) leaves its intent on the registered model: the next call first puts the
aliases and tags back as they were before it, so a call either lands whole or, as its caller saw, not at all.

Every call joins the cluster explicitly (:func:`connect`), never through Ray's implicit ``ray.init``: that
one reads ``RAY_ADDRESS``, which a local environment's clients set to the dashboard's ``http://`` URL (for
the Jobs API), and fails with "Invalid Ray address" once this process has left the cluster (a driver must
leave before its head dies, or Ray ends it). Joining again goes to the GCS address the environment names,
or the one this process was last connected to, so after a head restart the calls reach the new head.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from dataclasses import dataclass, field
from typing import Any

import ray

from contracts.settings import Settings
from contracts.vocabulary import Alias, GateStatus, RolloutVerdict, Tag
from serving.desired import aliases_of, registry_aliases

WRITER_NAME, WRITER_NAMESPACE = "lockgate-alias-writer", "lockgate"
BLOCKING_GATE_STATES = frozenset({GateStatus.blocked.value})
# A registered-model tag: what an unfinished call must put back. Writing it needs no right the writer lacks:
# MLflow 3's basic-auth checks Set/DeleteRegisteredModelTag as an update of the model, like setting an alias,
# and DeleteModelVersionTag as a delete, like deleting an alias (mlflow/server/auth/__init__.py validators).
INTENT_TAG = "lockgate.alias_intent"
GCS_PROBE_TIMEOUT_S = 2.0  # a dead head's port refuses at once; a slow one gets this long before a retry

_connection = threading.Lock()  # one join at a time: the controller thread and its caller may both call
_last_address: list[str] = []  # the GCS address this process was last connected to


class RayUnreachable(ConnectionError):
    """The GCS the alias writer needs is not answering (a head that died, not back yet): retry later."""


@dataclass(frozen=True)
class AliasChange:
    """What an alias writer call did: every move or none (``ok``), why not, and the aliases after it."""

    ok: bool
    reason: str = ""
    aliases: dict[str, str] = field(default_factory=dict)
    stale: bool = False  # refused only because an alias moved meanwhile: reading again and retrying may do


@dataclass(frozen=True)
class AliasMove:
    """Set ``alias`` to ``version`` (None deletes it), provided it currently points at ``expected``.

    A move that is not ``required`` is skipped, instead of failing the whole call, when its expectation fails.
    """

    alias: str
    expected: str | None
    version: str | None
    required: bool = True


def eligible_for_champion(tags: dict[str, str]) -> str | None:
    """Why a version may not become champion, or None when it may."""
    if tags.get(Tag.rollout) in (RolloutVerdict.rejected, RolloutVerdict.rolled_back):
        return f"it was {tags[Tag.rollout]} by a rollout"
    blocked = [k for k, v in tags.items() if k.startswith(Tag.gate_prefix) and v in BLOCKING_GATE_STATES]
    if blocked:
        return f"gates blocked it: {blocked}"
    if not any(k.startswith(Tag.gate_prefix) for k in tags):
        return "it carries no gate results"
    return None


class AliasWriter:
    """The single writer of a registry's aliases."""

    def apply(self, name: str, moves: list[AliasMove], tags: dict[str, dict[str, str]]) -> AliasChange:
        """All moves if every expectation holds, else none; then the version tags. Returns the outcome."""
        from mlflow.tracking import MlflowClient

        client = MlflowClient()
        _undo_unfinished(client, name)
        current = aliases_of(client, name)
        stale = [m.alias for m in moves if m.required and current.get(m.alias) != m.expected]
        if stale:
            return AliasChange(False, f"aliases changed meanwhile: {stale}", current, stale=True)
        for move in moves:
            if move.alias == Alias.champion and move.version is not None:
                why_not = eligible_for_champion(dict(client.get_model_version(name, move.version).tags))
                if why_not:
                    return AliasChange(False, f"v{move.version} cannot be champion: {why_not}", current)
        # Written ahead: if this process dies during the moves, the next call undoes them (_undo_unfinished).
        intent = {
            "aliases": {m.alias: current.get(m.alias) for m in moves},
            "tags": {
                version: {key: client.get_model_version(name, version).tags.get(key) for key in version_tags}
                for version, version_tags in tags.items()
            },
        }
        client.set_registered_model_tag(name, INTENT_TAG, json.dumps(intent))
        applied: list[AliasMove] = []
        try:
            for move in moves:
                if current.get(move.alias) != move.expected:
                    continue  # an optional move whose expectation no longer holds
                _point(client, name, move.alias, move.version)
                applied.append(move)
        except Exception as error:  # MLflow refused one move: put back the ones made, so none is half-done
            restored = _restore(client, name, applied, current)
            if restored:
                client.delete_registered_model_tag(name, INTENT_TAG)
            return AliasChange(
                False,
                f"MLflow refused moving '{move.alias}' ({type(error).__name__}: {error}); "
                + (
                    "the aliases were put back as they were"
                    if restored
                    else "putting the aliases back failed too"
                ),
                current,
            )
        for version, version_tags in tags.items():
            for key, value in version_tags.items():
                client.set_model_version_tag(name, version, key, value)
        client.delete_registered_model_tag(name, INTENT_TAG)
        aliases = aliases_of(client, name)
        return AliasChange(True, "", aliases)


def _undo_unfinished(client: Any, name: str) -> None:
    """Put back what a call that died halfway had moved (its intent tag says how things were before it).

    Only the single writer calls this, one call at a time, so nothing else moves the aliases meanwhile.
    """
    from mlflow.exceptions import MlflowException

    try:
        raw = client.get_registered_model(name).tags.get(INTENT_TAG)
    except MlflowException:  # no such model yet: nothing can be unfinished
        return
    if not raw:
        return
    intent = json.loads(raw)
    current = aliases_of(client, name)
    for alias, version in intent["aliases"].items():
        if current.get(alias) != version:
            _point(client, name, alias, version)
    for version, version_tags in intent["tags"].items():
        for key, value in version_tags.items():
            if value is None:
                try:
                    client.delete_model_version_tag(name, version, key)
                except MlflowException:  # never written: nothing to take back
                    pass
            else:
                client.set_model_version_tag(name, version, key, value)
    client.delete_registered_model_tag(name, INTENT_TAG)


def _point(client: Any, name: str, alias: str, version: str | None) -> None:
    """Point ``alias`` at ``version`` (None: remove it)."""
    if version is None:
        client.delete_registered_model_alias(name, alias)
    else:
        client.set_registered_model_alias(name, alias, version)


def _restore(client: Any, name: str, applied: list[AliasMove], before: dict[str, str]) -> bool:
    """Undo the moves made, newest first; whether every alias is back where it was."""
    ok = True
    for move in reversed(applied):
        try:
            _point(client, name, move.alias, before.get(move.alias))
        except Exception:  # keep restoring the others; the caller says the restore was incomplete
            ok = False
    return ok


def _gcs_address() -> str:
    """The GCS address to join: ``RAY_ADDRESS`` when it names one, else the one last connected to."""
    named = Settings.from_environ().ray_address or ""
    if named and not named.startswith(("http://", "https://")):
        return named
    if _last_address:
        return _last_address[-1]
    raise RayUnreachable(
        f"RAY_ADDRESS is {named or 'not set'} and this process was never connected to a Ray cluster: the "
        "alias writer needs the GCS address (host:port, or ray://host:10001) of the cluster it lives in"
    )


def _probe(address: str) -> None:
    """Fail fast when nothing listens at ``address``: ``ray.init`` on a dead GCS waits a long time first."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host:  # "auto" and the like: Ray resolves those itself
        return
    try:
        with socket.create_connection((host, int(port)), timeout=GCS_PROBE_TIMEOUT_S):
            pass
    except (OSError, ValueError) as error:
        raise RayUnreachable(
            f"Ray's GCS at {address} is not answering ({type(error).__name__}: {error}); its head may be "
            "restarting"
        ) from error


def connect() -> None:
    """Join the Ray cluster explicitly (again after this process left it, or its head restarted).

    Already connected: remember where, for a later reconnect. Raises :class:`RayUnreachable` when the GCS
    does not answer, so a caller's retry can wait for a head that is coming back.
    """
    with _connection:
        if not ray.is_initialized():
            address = _gcs_address()
            _probe(address)
            ray.init(
                address=address,
                logging_level=logging.ERROR,
                log_to_driver=False,
                ignore_reinit_error=True,
            )
        gcs = ray.get_runtime_context().gcs_address
        if gcs and gcs not in _last_address[-1:]:
            _last_address.append(gcs)


def alias_writer() -> Any:
    """The cluster's one writer, created on first use (on a restarted head: created there again)."""
    connect()
    actor_class: Any = ray.remote(AliasWriter)
    # max_concurrency=1 is the compare-and-set: one call at a time, cluster-wide.
    return actor_class.options(
        name=WRITER_NAME,
        namespace=WRITER_NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        num_cpus=0,
        max_concurrency=1,
    ).remote()


def promote(name: str, candidate: str, expected_champion: str | None) -> AliasChange:
    """Candidate → champion, old champion → previous, candidate alias removed; only if nothing moved meanwhile."""
    moves = [
        AliasMove(Alias.champion, expected_champion, candidate),
        # a version may be promoted without a rollout
        AliasMove(Alias.candidate, candidate, None, required=False),
    ]
    if expected_champion is not None:
        moves.append(AliasMove(Alias.previous, _current(name, Alias.previous), expected_champion))
    tags = {candidate: {Tag.rollout.value: RolloutVerdict.promoted.value}}
    return ray.get(alias_writer().apply.remote(name, moves, tags))


def reject(name: str, candidate: str, reason: str) -> AliasChange:
    """Take the candidate out of rollout: remove its alias (if still its own) and tag it rejected.

    The alias move is optional: a candidate alias that already names another version (registered meanwhile)
    stays, and the rejected version is still tagged.
    """
    moves = [AliasMove(Alias.candidate, candidate, None, required=False)]
    tags = {
        candidate: {Tag.rollout.value: RolloutVerdict.rejected.value, Tag.rollout_reason.value: reason[:4000]}
    }
    return ray.get(alias_writer().apply.remote(name, moves, tags))


def restore_previous(name: str) -> AliasChange:
    """Previous → champion; the demoted champion is tagged rolled_back and keeps no alias."""
    champion, previous = _current(name, Alias.champion), _current(name, Alias.previous)
    if previous is None:
        return AliasChange(False, f"model {name} has no '{Alias.previous}' version to restore")
    moves = [AliasMove(Alias.champion, champion, previous), AliasMove(Alias.previous, previous, None)]
    tags = {champion: {Tag.rollout.value: RolloutVerdict.rolled_back.value}} if champion else {}
    return ray.get(alias_writer().apply.remote(name, moves, tags))


def apply_moves(
    name: str, moves: list[AliasMove], tags: dict[str, dict[str, str]] | None = None
) -> AliasChange:
    """Any set of moves through the single writer (all or none)."""
    return ray.get(alias_writer().apply.remote(name, moves, tags or {}))


def current_aliases(name: str) -> dict[str, str]:
    """The model's aliases now (none when the model does not exist yet)."""
    from mlflow.exceptions import MlflowException

    try:
        return registry_aliases(name)
    except MlflowException:
        return {}


def _current(name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        return str(MlflowClient().get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None
