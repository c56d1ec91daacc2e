"""Alias moves as compare-and-set: MLflow aliases are last-writer-wins, so every move goes through one writer.

The writer is a named, detached Ray actor with ``max_concurrency=1``: calls are serialised cluster-wide,
each checks that the aliases are still what the caller saw before it moves anything, and a version that a
gate blocked or a rollout rejected is never made champion.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import ray

from contracts.vocabulary import Alias, GateStatus, RolloutVerdict, Tag
from serving.desired import aliases_of, registry_aliases

WRITER_NAME, WRITER_NAMESPACE = "lockgate-alias-writer", "lockgate"
BLOCKING_GATE_STATES = frozenset({GateStatus.blocked.value})


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
        current = aliases_of(client, name)
        stale = [m.alias for m in moves if m.required and current.get(m.alias) != m.expected]
        if stale:
            return AliasChange(False, f"aliases changed meanwhile: {stale}", current, stale=True)
        for move in moves:
            if move.alias == Alias.champion and move.version is not None:
                why_not = eligible_for_champion(dict(client.get_model_version(name, move.version).tags))
                if why_not:
                    return AliasChange(False, f"v{move.version} cannot be champion: {why_not}", current)
        applied: list[AliasMove] = []
        try:
            for move in moves:
                if current.get(move.alias) != move.expected:
                    continue  # an optional move whose expectation no longer holds
                _point(client, name, move.alias, move.version)
                applied.append(move)
        except Exception as error:  # MLflow refused one move: put back the ones made, so none is half-done
            restored = _restore(client, name, applied, current)
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
        aliases = aliases_of(client, name)
        return AliasChange(True, "", aliases)


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


def alias_writer() -> Any:
    """The cluster's one writer, created on first use."""
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
    """Take the candidate out of rollout: remove its alias (if still its own) and tag it rejected."""
    moves = [AliasMove(Alias.candidate, candidate, None)]
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
