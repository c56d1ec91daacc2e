"""Desired serving state: a pinned weight wins; aliases decide who serves; bad files name the field."""

from __future__ import annotations

import pytest

from serving.desired import (
    RolloutState,
    ServingFile,
    ServingFileError,
    load_serving_file,
    read_rollout_state,
    resolve_router_config,
    write_rollout_state,
)
from serving.spec import CaptureSpec
from tests.conftest import ROOT


def test_shipped_serving_file_validates() -> None:
    file = load_serving_file(ROOT / "serving.yaml")
    assert file.model_name == "loan-default" and file.traffic.candidate_weight is None, (
        "not pinned by default"
    )


def test_pin_in_file_wins_over_rollout_state() -> None:
    aliases = {"champion": "3", "candidate": "4"}
    free = ServingFile.model_validate({"model_name": "m"})
    pinned = ServingFile.model_validate({"model_name": "m", "traffic": {"candidate_weight": 25}})
    state = RolloutState(candidate_weight=60)
    assert resolve_router_config(free, state, aliases).traffic.candidate_weight == 60
    assert resolve_router_config(pinned, state, aliases).traffic.candidate_weight == 25, "the config pin wins"
    config = resolve_router_config(pinned, state, aliases)
    assert (config.champion.uri, config.candidate.uri) == ("models:/m/3", "models:/m/4")


def test_no_candidate_or_no_champion() -> None:
    file = ServingFile.model_validate({"model_name": "m", "traffic": {"candidate_weight": 50}})
    alone = resolve_router_config(file, RolloutState(), {"champion": "1"})
    assert alone.candidate is None, "no candidate alias, none served"
    assert alone.weight_pinned and alone.traffic.candidate_weight == 50, "the pin holds for a later candidate"
    with pytest.raises(ServingFileError, match="no 'champion' alias"):
        resolve_router_config(file, RolloutState(), {"candidate": "2"})


def test_state_round_trip_and_bad_file(tmp_path) -> None:
    path = tmp_path / "rollout" / "m.json"
    assert read_rollout_state(path) == RolloutState(), "defaults before anything was written"
    write_rollout_state(path, RolloutState(candidate_weight=12.5, paused=True))
    assert read_rollout_state(path) == RolloutState(candidate_weight=12.5, paused=True, generation=1), (
        "what was written, as the first write"
    )
    bad = tmp_path / "serving.yaml"
    bad.write_text("model_name: m\ntraffic: {candidate_weight: 140, colour: red}\n")
    with pytest.raises(ServingFileError) as caught:
        load_serving_file(bad)
    assert "traffic.candidate_weight" in str(caught.value) and "traffic.colour" in str(caught.value)


def test_capture_uses_the_environment_store_unless_the_file_names_one() -> None:
    aliases = {"champion": "1"}
    sampled = ServingFile.model_validate({"model_name": "m", "capture": {"sample_percent": 10}})
    config = resolve_router_config(sampled, RolloutState(), aliases, capture_uri="/srv/capture")
    assert (config.capture.sample_percent, config.capture.uri) == (10, "/srv/capture")
    named = ServingFile.model_validate(
        {"model_name": "m", "capture": {"sample_percent": 5, "uri": "s3://b/c"}}
    )
    assert resolve_router_config(named, RolloutState(), aliases, capture_uri="/srv").capture.uri == "s3://b/c"
    off = resolve_router_config(
        ServingFile.model_validate({"model_name": "m"}), RolloutState(), aliases, "/srv"
    )
    assert off.capture.sample_percent == 0 and off.capture.uri is None, "capture off renders no location"
    with pytest.raises(ServingFileError, match=r"capture\.uri: capture\.sample_percent is 10"):
        resolve_router_config(sampled, RolloutState(), aliases, capture_uri=None)
    with pytest.raises(ValueError, match="capture.uri is required"):
        CaptureSpec(sample_percent=1)


def test_a_deploy_that_fails_puts_the_previous_router_config_back(tmp_path, monkeypatch) -> None:
    from serving import deploy, desired
    from serving.deploy import DeployError
    from serving.desired import ServingFile, apply_desired, update_rollout_state

    # Given a router serving v1, and a registry whose aliases now name v2 as champion,
    previous = {"champion": {"name": "m", "version": "1"}, "candidate": None}
    puts: list[dict] = []
    statuses = iter(["DEPLOY_FAILED", "RUNNING"])
    monkeypatch.setattr(desired, "registry_aliases", lambda name: {"champion": "2"})
    monkeypatch.setattr(desired, "preflight", lambda router, before: None)
    monkeypatch.setattr(deploy, "router_user_config", lambda url, headers, app: previous)
    monkeypatch.setattr(deploy, "deploy_config", lambda url, headers, config: puts.append(config))

    def wait(url, headers, app):
        if next(statuses) != "RUNNING":
            raise DeployError(f"application {app} is DEPLOY_FAILED: replica failed to start")

    monkeypatch.setattr(deploy, "wait_running", wait)
    update_rollout_state(tmp_path / "state.json", candidate_weight=0.0)
    # when the new config fails to deploy,
    with pytest.raises(DeployError) as caught:
        apply_desired("http://127.0.0.1:1", {}, ServingFile(model_name="m"), tmp_path / "state.json")
    # then the previous user_config was deployed again, and the error says v1 keeps serving.
    user_configs = [c["applications"][0]["deployments"][0]["user_config"] for c in puts]
    assert [u["champion"] for u in user_configs] == [
        {"name": "m", "alias": "champion"},
        {"name": "m", "version": "1"},
    ], f"the shape (the alias followed), then what served before: {user_configs}"
    assert "champion v1) was deployed again and keeps serving" in str(caught.value), caught.value


def test_concurrent_writers_of_the_rollout_state_lose_nothing(tmp_path) -> None:
    import threading

    from serving.desired import read_rollout_state, update_rollout_state

    # Given a pause and a stream of weight changes written at once from several threads,
    path = tmp_path / "state.json"
    update_rollout_state(path, candidate_weight=0.0)
    workers = [
        threading.Thread(
            target=lambda w=w: [update_rollout_state(path, candidate_weight=w) for _ in range(20)]
        )
        for w in (10.0, 50.0)
    ]
    pauser = threading.Thread(target=lambda: update_rollout_state(path, paused=True))
    for thread in (*workers, pauser):
        thread.start()
    for thread in (*workers, pauser):
        thread.join()
    # then the pause survived every read-modify-write, and no staging file is left behind.
    assert read_rollout_state(path).paused, "a concurrent weight change lost the pause"
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".tmp") == [], "no temp file left"


class SmokeModel:
    """A loaded version whose predict fails its first ``failures`` calls, then answers."""

    def __init__(self, failures: int) -> None:
        self.failures, self.calls = failures, 0
        self.model = type("Pyfunc", (), {"input_example": [{"x": 1.0}]})()

    def predict(self, rows: list) -> list:
        self.calls += 1
        if self.calls <= self.failures:
            raise RuntimeError("injected model failure")
        return [{"prediction": 1.0}]


@pytest.mark.parametrize(("failures", "refused"), [(10_000, True), (3, False)])
def test_preflight_refuses_a_version_that_never_answers_and_leaves_intermittent_errors_to_the_rollout(
    monkeypatch, failures: int, refused: bool
) -> None:
    from serving import scoring
    from serving.deploy import DeployError
    from serving.desired import SMOKE_ATTEMPTS, preflight
    from serving.spec import ModelRef, RouterConfig

    model = SmokeModel(failures)
    monkeypatch.setattr(scoring.LoadedModel, "load", classmethod(lambda cls, ref: model))
    router = RouterConfig(champion=ModelRef(name="m", version="2"))
    if refused:
        with pytest.raises(DeployError, match=f"models:/m/2 cannot be served.*{SMOKE_ATTEMPTS} attempts"):
            preflight(router, None)
        assert model.calls == SMOKE_ATTEMPTS, f"tried {model.calls} times"
    else:
        preflight(router, None)
        assert model.calls == 4, "it stops at the first answer"


def fake_serve(monkeypatch, aliases: dict[str, str]) -> list[dict]:
    """Serve's REST calls and the registry replaced: returns the list every deployed config is appended to."""
    from serving import deploy, desired

    puts: list[dict] = []
    monkeypatch.setattr(desired, "registry_aliases", lambda name: dict(aliases))
    monkeypatch.setattr(desired, "preflight", lambda router, before, skip_champion=False: None)
    monkeypatch.setattr(deploy, "router_user_config", lambda url, headers, app: None)
    monkeypatch.setattr(deploy, "deploy_config", lambda url, headers, config: puts.append(config))
    monkeypatch.setattr(deploy, "wait_running", lambda url, headers, app: None)
    return puts


def test_a_rollout_moves_the_weight_of_the_version_it_judges_whatever_the_aliases_say(
    tmp_path, monkeypatch
) -> None:
    from serving.desired import ServingFile, apply_desired
    from serving.livestate import LocalStateStore, acquire

    # Given a rollout judging v2 against v1 in the live state, and a run that meanwhile registered v3,
    puts = fake_serve(monkeypatch, {"champion": "1", "candidate": "3"})
    store = LocalStateStore(tmp_path)
    acquire(store, "m", "run-a", "1", "2")
    store.update("m", lambda s: s.model_copy(update={"candidate_weight": 50.0}))
    # when the desired state is applied,
    router = apply_desired("http://127.0.0.1:1", {}, ServingFile(model_name="m"), (store, "m"))
    # then the split served is between the versions the rollout judges, and the deployed config names neither.
    assert router.candidate is not None and router.candidate.version == "2", router
    assert router.traffic.candidate_weight == 50.0, router.traffic
    deployed = puts[-1]["applications"][0]["deployments"][0]["user_config"]
    assert deployed["candidate"] is None and deployed["traffic"]["candidate_weight"] == 0, deployed
    assert deployed["champion"] == {"name": "m", "alias": "champion"}, deployed
    # and without a rollout the registry's candidate is named live, at the live weight.
    other = LocalStateStore(tmp_path / "other")
    other.update("m", lambda s: s.model_copy(update={"candidate_weight": 20.0}))
    unpinned = apply_desired("http://127.0.0.1:1", {}, ServingFile(model_name="m"), (other, "m"))
    assert unpinned.candidate is not None and unpinned.candidate.version == "3", unpinned
    assert other.read("m")[0].candidate == "3", "the registry's candidate is now the live state's"


def test_the_deployed_config_is_byte_identical_before_and_after_a_rollout(tmp_path, monkeypatch) -> None:
    """The rendered serveConfigV2 carries shape and pin only: a finished rollout leaves no diff for Pulumi."""
    import dataclasses

    import yaml

    from serving import live
    from serving.desired import ServingFile, apply_desired
    from serving.livestate import LocalStateStore
    from serving.spec import AnalysisSpec, RolloutPolicy
    from tests.serving.test_rollout_analysis import stats

    # Given a champion v1 and a registered candidate v2, served through the desired state,
    aliases = {"champion": "1", "candidate": "2"}
    puts = fake_serve(monkeypatch, aliases)
    serving_file = tmp_path / "serving.yaml"
    serving_file.write_text("model_name: m\ncapture: {sample_percent: 5, uri: s3://lockgate/capture}\n")
    file = ServingFile(model_name="m")
    file = ServingFile.model_validate(yaml.safe_load(serving_file.read_text()))
    store = LocalStateStore(tmp_path / "rollout")
    apply_desired("http://127.0.0.1:1", {}, file, (store, "m"))
    before = yaml.safe_dump(puts[-1], sort_keys=True, default_flow_style=False)  # as infra/serve.py dumps it

    # when a rollout runs to promotion through the store (metrics that pass, an alias writer that agrees),
    def promote(name: str, candidate: str, champion: str | None) -> object:
        aliases.update(champion=candidate, previous=str(champion))
        aliases.pop("candidate")
        return type("Change", (), {"ok": True, "reason": ""})()

    monkeypatch.setattr(live.promotion, "promote", promote)
    weights: list[float] = []
    policy = RolloutPolicy(steps=(50.0, 100.0), interval_s=1, analysis=AnalysisSpec(min_requests=10))
    controller = live.rollout_controller(
        policy, _target(tmp_path), serving_file, ("1", "2"), lambda *event: None, store
    )
    counts = iter(range(1, 10_000))

    def scrape() -> dict:
        n = 100.0 * next(counts)
        weights.append(store.read("m")[0].candidate_weight)
        return {("1", "champion"): stats(n), ("2", "candidate"): stats(n)}

    controller.effects = dataclasses.replace(
        controller.effects, scrape=scrape, sleep=lambda s: None, clock=_ticking_clock()
    )
    monkeypatch.setattr(live, "wait_live_applied", lambda spec, generation, timeout: True)
    result = controller.run()
    apply_desired("http://127.0.0.1:1", {}, file, (store, "m"))
    after = yaml.safe_dump(puts[-1], sort_keys=True, default_flow_style=False)
    # then it was promoted, its weights moved in the store, and the deployed bytes did not change.
    assert result.outcome == "promoted", result
    assert {50.0, 100.0} <= set(weights), f"the live weights the steps wrote, got {sorted(set(weights))}"
    final = store.read("m")[0]
    assert (final.candidate, final.lease, final.candidate_weight) == (None, None, 0.0), final
    assert after == before, "the rendered serve config changed during a rollout"


def _target(tmp_path):
    from contracts.settings import ServingTarget

    return ServingTarget("http://127.0.0.1:1", "http://127.0.0.1:1/metrics", tmp_path, tmp_path / "token")


def _ticking_clock():
    """A clock that advances one second per reading (the controller's holds end without real waiting)."""
    ticks = iter(range(1_000_000))
    return lambda: float(next(ticks))
