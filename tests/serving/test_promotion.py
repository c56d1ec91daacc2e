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
    model_tags: dict[str, str] = {}
    fail_on: str | None = None

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def get_registered_model(self, name: str) -> SimpleNamespace:
        return SimpleNamespace(aliases=dict(FlakyRegistry.aliases), tags=dict(FlakyRegistry.model_tags))

    def set_registered_model_tag(self, name: str, key: str, value: str) -> None:
        FlakyRegistry.model_tags[key] = value

    def delete_registered_model_tag(self, name: str, key: str) -> None:
        FlakyRegistry.model_tags.pop(key)

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
    FlakyRegistry.model_tags = {}
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


class Killed(BaseException):
    """The writer's process dying mid-call (its Ray head SIGKILLed): no ``except Exception`` runs."""


def test_a_writer_killed_halfway_through_a_promotion_is_undone_by_the_next_call(
    registry, monkeypatch
) -> None:
    # Given a promotion of v2 whose writer dies after moving champion, before the other moves,
    moves = [
        AliasMove("champion", "1", "2"),
        AliasMove("candidate", "2", None, required=False),
        AliasMove("previous", None, "1"),
    ]
    written: dict[tuple[str, str], str] = {}
    registry.set_model_version_tag = lambda self, n, v, k, value: written.__setitem__((v, k), value)  # type: ignore[method-assign]
    registry.delete_model_version_tag = lambda self, n, v, k: written.pop((v, k), None)  # type: ignore[attr-defined]
    original = FlakyRegistry.set_registered_model_alias

    def dies_after_champion(self, name: str, alias: str, version: str) -> None:
        original(self, name, alias, version)
        if alias == "champion":
            raise Killed

    monkeypatch.setattr(FlakyRegistry, "set_registered_model_alias", dies_after_champion)
    with pytest.raises(Killed):
        AliasWriter().apply("m", moves, {"2": {"lockgate.rollout": "promoted"}})
    assert registry.aliases == {"champion": "2", "candidate": "2"}, "the kill left the aliases half-moved"
    monkeypatch.setattr(FlakyRegistry, "set_registered_model_alias", original)
    # when the next call (a rollback's rejection of v2, as the caller still sees it) reaches the writer,
    change = AliasWriter().apply(
        "m", [AliasMove("candidate", "2", None)], {"2": {"lockgate.rollout": "rejected"}}
    )
    # then the unfinished promotion was put back first, untouched as its caller saw it, and the rejection landed.
    assert change.ok and registry.aliases == {"champion": "1"}, (change, registry.aliases)
    assert written == {("2", "lockgate.rollout"): "rejected"}, written
    assert registry.model_tags == {}, f"no intent is left behind: {registry.model_tags}"


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


def test_joining_a_cluster_whose_gcs_is_dead_fails_fast_naming_the_address(monkeypatch) -> None:
    import socket
    import time

    import ray

    from serving import promotion

    # Given this process outside any cluster and RAY_ADDRESS naming a GCS where nothing listens (a head
    # that died and is not back yet),
    ray.shutdown()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{probe.getsockname()[1]}"
    monkeypatch.setenv("RAY_ADDRESS", dead)
    # when the alias writer is asked for, then it refuses at once with an error a retry can wait out,
    started = time.monotonic()
    with pytest.raises(promotion.RayUnreachable, match=f"GCS at {dead} is not answering"):
        promotion.alias_writer()
    assert time.monotonic() - started < promotion.GCS_PROBE_TIMEOUT_S + 1, "no long wait inside ray.init"
    assert not ray.is_initialized(), "nothing was joined"


RECONNECT_SCRIPT = """
import json, sys, threading, ray
from contracts.settings import Settings
from serving import promotion
gcs, name, candidate = sys.argv[1:]
ray.init(address=gcs, logging_level="ERROR", log_to_driver=False)
promotion.connect()
ray.shutdown()
outcome = {"ray_address": Settings.from_environ().ray_address}
def reject():
    try:
        change = promotion.reject(name, candidate, "the head died mid-step")
        outcome.update(ok=change.ok, reason=change.reason, aliases=change.aliases)
    except Exception as error:
        outcome["error"] = type(error).__name__ + ": " + str(error)
thread = threading.Thread(target=reject)
thread.start()
thread.join(timeout=120)
outcome["connected"] = ray.is_initialized()
print(json.dumps(outcome))
"""


def test_the_alias_writer_joins_its_cluster_again_after_this_process_left_it(local_env) -> None:
    import json
    import os
    import subprocess
    import sys
    import uuid

    from mlflow.tracking import MlflowClient

    # Given a model whose v2 is the candidate under rollout (real MLflow),
    client, name = MlflowClient(), f"reconnect-{uuid.uuid4().hex[:6]}"
    client.create_registered_model(name)
    run = client.create_run(client.create_experiment(name))
    versions = [
        str(
            client.create_model_version(
                name, source=f"{run.info.artifact_uri}/model-{i}", run_id=run.info.run_id, tags=PASSED
            ).version
        )
        for i in (1, 2)
    ]
    client.set_registered_model_alias(name, "champion", versions[0])
    client.set_registered_model_alias(name, "candidate", versions[1])
    # when a driver that was connected to the real Ray head, then left it (as a driver must before its head
    # dies), with RAY_ADDRESS the dashboard's http:// URL (which Ray's implicit init refuses: "Invalid Ray
    # address"), writes a rollback's rejection from another thread (the controller runs in one),
    out = subprocess.run(
        [sys.executable, "-c", RECONNECT_SCRIPT, f"127.0.0.1:{local_env.ports.ray_gcs}", name, versions[1]],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **local_env.client_env()},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    outcome = json.loads(out.stdout.strip().splitlines()[-1])
    # then it joined the cluster again on its own and the candidate left rollout, tagged rejected.
    assert str(outcome["ray_address"]).startswith("http://"), f"the client environment's: {outcome}"
    assert "error" not in outcome and outcome["ok"], outcome
    assert outcome["aliases"] == {"champion": versions[0]} and outcome["connected"], outcome
    tags = client.get_model_version(name, versions[1]).tags
    assert tags.get("lockgate.rollout") == "rejected", tags
