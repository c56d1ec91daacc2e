"""The alias writer's moves are all or nothing, even when MLflow refuses one of them halfway."""

from __future__ import annotations

from types import SimpleNamespace

import mlflow.tracking
import pytest

from serving.promotion import AliasMove, AliasWriter

PASSED = {"lockgate.gate.regression": "passed"}


class FlakyRegistry:
    """A registry whose aliases live in a dict; setting ``fail_on`` raises, as a refusing MLflow would."""

    aliases: dict[str, str] = {}
    fail_on: str | None = None

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def get_registered_model(self, name: str) -> SimpleNamespace:
        return SimpleNamespace(aliases=dict(FlakyRegistry.aliases))

    def get_model_version(self, name: str, version: str) -> SimpleNamespace:
        return SimpleNamespace(tags=PASSED)

    def set_registered_model_alias(self, name: str, alias: str, version: str) -> None:
        if alias == FlakyRegistry.fail_on:
            raise ConnectionError("MLflow went away")
        FlakyRegistry.aliases[alias] = version

    def delete_registered_model_alias(self, name: str, alias: str) -> None:
        FlakyRegistry.aliases.pop(alias, None)

    def set_model_version_tag(self, *args: object) -> None:
        raise AssertionError("no tag is written when the moves failed")


@pytest.fixture
def registry(monkeypatch):
    monkeypatch.setattr(mlflow.tracking, "MlflowClient", FlakyRegistry)
    FlakyRegistry.aliases = {"champion": "1", "candidate": "2"}
    FlakyRegistry.fail_on = None
    return FlakyRegistry


def test_a_promotion_refused_halfway_leaves_every_alias_as_it_was(registry) -> None:
    # Given a promotion of v2 (champion, then candidate removed, then previous) and an MLflow that refuses
    # the third move,
    registry.fail_on = "previous"
    moves = [
        AliasMove("champion", "1", "2"),
        AliasMove("candidate", "2", None, required=False),
        AliasMove("previous", None, "1"),
    ]
    # when the writer applies them,
    change = AliasWriter().apply("m", moves, {"2": {"lockgate.rollout": "promoted"}})
    # then it reports the refusal and the aliases are exactly as before: never half-moved.
    assert not change.ok and "put back as they were" in change.reason, change
    assert registry.aliases == {"champion": "1", "candidate": "2"}, registry.aliases


def test_a_promotion_that_succeeds_moves_all_aliases(registry) -> None:
    moves = [
        AliasMove("champion", "1", "2"),
        AliasMove("candidate", "2", None),
        AliasMove("previous", None, "1"),
    ]
    registry.set_model_version_tag = lambda self, *args: None  # type: ignore[method-assign]
    change = AliasWriter().apply("m", moves, {})
    assert change.ok and registry.aliases == {"champion": "2", "previous": "1"}, (change, registry.aliases)


def test_registration_points_its_alias_by_compare_and_set_and_never_over_a_move_made_meanwhile(
    registry, monkeypatch
) -> None:
    from pipeline import register
    from serving import promotion

    # Given the writer in this process, and a registry whose aliases another writer moves between this
    # registration's read and its move (a promotion of v2 lands just then),
    writer = AliasWriter()
    reads = iter([{"champion": "1", "candidate": "2"}, {"champion": "2", "previous": "1"}])
    moved = {"done": False}

    def apply_moves(name, moves, tags=None):
        if not moved["done"]:
            moved["done"] = True
            registry.aliases = {"champion": "2", "previous": "1"}  # the promotion wins the race
        return writer.apply(name, moves, tags or {})

    monkeypatch.setattr(promotion, "current_aliases", lambda name: next(reads))
    monkeypatch.setattr(promotion, "apply_moves", apply_moves)
    # when v3 is registered,
    alias = register.point_new_version("m", "3", "champion")
    # then its first move was refused (candidate had moved), and the second, on fresh aliases, took effect:
    # the promotion is intact and v3 is the candidate.
    assert alias == "candidate", alias
    assert registry.aliases == {"champion": "2", "previous": "1", "candidate": "3"}, registry.aliases


def test_a_registration_the_registry_refuses_is_an_error_not_a_retry(registry, monkeypatch) -> None:
    from pipeline import register
    from serving import promotion

    registry.fail_on = "candidate"
    monkeypatch.setattr(promotion, "current_aliases", lambda name: dict(registry.aliases))
    monkeypatch.setattr(promotion, "apply_moves", lambda n, m, t=None: AliasWriter().apply(n, m, t or {}))
    with pytest.raises(RuntimeError, match="pointing 'candidate' at v3 failed: MLflow refused"):
        register.point_new_version("m", "3", "champion")
    assert registry.aliases == {"champion": "1", "candidate": "2"}, registry.aliases
