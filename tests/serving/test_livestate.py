"""The live rollout state store: compare-and-set on a local directory and on an S3 API (moto's server)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from serving.livestate import (
    LiveState,
    LiveStateError,
    LiveStateStore,
    LocalStateStore,
    RolloutBusy,
    S3StateStore,
    StateConflict,
    acquire,
    heartbeat,
    open_store,
    reclaim_orphan,
    release,
)

BUCKET = "lockgate-live"


@pytest.fixture(scope="module")
def s3_client() -> Iterator[object]:
    """A boto3 client of an S3 API on 127.0.0.1 (moto's server, the dev lock's 5.2.5) with one bucket."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        client = boto3.client(
            "s3",
            endpoint_url=f"http://{host}:{port}",
            region_name="us-east-1",
            aws_access_key_id="lockgate-test",
            aws_secret_access_key="lockgate-test-secret",  # noqa: S106 - moto's server accepts any key
        )
        client.create_bucket(Bucket=BUCKET)
        yield client
    finally:
        server.stop()


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> LiveStateStore:
    """Each test runs on both backends; the S3 one under a prefix of its own."""
    if request.param == "local":
        return LocalStateStore(tmp_path / "rollout")
    client = request.getfixturevalue("s3_client")
    return S3StateStore(f"s3://{BUCKET}/{tmp_path.name}/rollout", client=client)


class Clock:
    """A settable clock for leases."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def test_an_old_local_file_with_only_weight_and_paused_still_parses(tmp_path: Path) -> None:
    # Given the file desired.py wrote before the live state had candidates and leases
    (tmp_path / "m.json").write_text('{"candidate_weight": 12.5, "paused": true}')
    # When it is read through the store
    state, token = LocalStateStore(tmp_path).read("m")
    # Then its two fields are kept and the rest defaults
    assert (state.candidate_weight, state.paused) == (12.5, True), f"old fields kept, got {state}"
    assert (state.candidate, state.lease, state.generation) == (None, None, 0), f"defaults, got {state}"
    assert token is not None, "an existing file has a token"


def test_a_bad_document_is_refused_naming_the_file_and_field(tmp_path: Path) -> None:
    (tmp_path / "m.json").write_text('{"candidate_weight": 140}')
    with pytest.raises(LiveStateError, match=r"m\.json: candidate_weight"):
        LocalStateStore(tmp_path).read("m")


def test_a_write_from_a_stale_read_is_refused(store: LiveStateStore) -> None:
    # Given two writers that read the same (absent, then existing) document
    state, token = store.read("m")
    assert token is None, f"no document yet, got token {token}"
    store.write("m", state.model_copy(update={"candidate_weight": 10.0}), token)
    with pytest.raises(StateConflict):  # If-None-Match: * on S3, the missing file's token locally
        store.write("m", state.model_copy(update={"candidate_weight": 20.0}), token)
    first, seen = store.read("m")
    second, same = store.read("m")
    # When one writes, then the other writes from its now stale read
    store.write("m", first.model_copy(update={"paused": True}), seen)
    with pytest.raises(StateConflict):
        store.write("m", second.model_copy(update={"candidate_weight": 50.0}), same)
    # Then the first write stands whole
    final, _ = store.read("m")
    assert (final.candidate_weight, final.paused) == (10.0, True), f"the winner's state, got {final}"


def test_read_if_changed_answers_none_until_a_write(store: LiveStateStore) -> None:
    store.update("m", lambda s: s.model_copy(update={"candidate_weight": 5.0}))
    state, token = store.read("m")
    assert store.read_if_changed("m", token) is None, "unchanged since the token: nothing new"
    store.update("m", lambda s: s.model_copy(update={"candidate_weight": 6.0}))
    changed = store.read_if_changed("m", token)
    assert changed is not None and changed[0].candidate_weight == 6.0, f"the new state, got {changed}"
    assert changed[0].generation == state.generation + 1, "every write bumps the generation"


def test_concurrent_updates_lose_nothing(store: LiveStateStore) -> None:
    # Given writers changing different fields at the same time
    store.update("m", lambda s: s)

    def bump(field: str) -> None:
        for _ in range(8):
            store.update("m", lambda s: s.model_copy(update={field: getattr(s, field) + 1.0}))

    workers = [threading.Thread(target=bump, args=("candidate_weight",)) for _ in range(3)]
    workers.append(
        threading.Thread(target=lambda: store.update("m", lambda s: s.model_copy(update={"paused": True})))
    )
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    # Then every increment and the pause are there
    state, _ = store.read("m")
    assert state.candidate_weight == 24.0, f"3 writers x 8 increments, got {state.candidate_weight}"
    assert state.paused, "a concurrent weight change lost the pause"


def test_one_rollout_at_a_time_per_model(store: LiveStateStore) -> None:
    clock = Clock()
    store.update("m", lambda s: s.model_copy(update={"paused": True, "candidate_weight": 30.0}))
    # Given a rollout of v3 against v2 holding the lease
    started = acquire(store, "m", "run-a", "2", "3", ttl_s=60, now=clock)
    assert (started.candidate, started.champion, started.candidate_weight) == ("3", "2", 0.0), started
    assert started.paused, "a person's pause outlives the start of a rollout"
    # When a second rollout of the same model starts while it runs
    clock.now += timedelta(seconds=30)
    with pytest.raises(RolloutBusy, match=r"model m: a rollout of candidate version 3 .*run-a"):
        acquire(store, "m", "run-b", "2", "4", ttl_s=60, now=clock)
    # Then only after the lease expired (no heartbeat) can another owner take it
    heartbeat(store, "m", "run-a", ttl_s=60, now=clock)
    clock.now += timedelta(seconds=59)
    with pytest.raises(RolloutBusy):
        acquire(store, "m", "run-b", "2", "4", ttl_s=60, now=clock)
    clock.now += timedelta(seconds=2)
    taken = acquire(store, "m", "run-b", "2", "4", ttl_s=60, now=clock)
    assert taken.lease is not None and taken.lease.owner == "run-b", f"run-b holds it, got {taken.lease}"
    # And the first controller's heartbeat now fails instead of silently stealing it back
    with pytest.raises(LiveStateError, match="lease of run-a is gone"):
        heartbeat(store, "m", "run-a", now=clock)


def test_release_ends_the_rollout_and_keeps_the_pause(store: LiveStateStore) -> None:
    clock = Clock()
    acquire(store, "m", "run-a", "2", "3", now=clock)
    store.update("m", lambda s: s.model_copy(update={"candidate_weight": 50.0, "paused": True}))
    ended = release(store, "m", "run-a")
    assert (ended.lease, ended.candidate, ended.candidate_weight) == (None, None, 0.0), ended
    assert (ended.champion, ended.paused) == (None, True), (
        f"the pause is kept, the champion is the alias, got {ended}"
    )
    assert release(store, "m", "run-a") == ended, "releasing a lease that is gone changes nothing"


def test_reclaim_orphan_returns_a_dead_controllers_rollout_to_weight_zero(store: LiveStateStore) -> None:
    clock = Clock()
    acquire(store, "m", "run-a", "2", "3", ttl_s=10, now=clock)
    store.update("m", lambda s: s.model_copy(update={"candidate_weight": 50.0}))
    # A live lease is not touched
    assert reclaim_orphan(store, "m", now=clock) is None, "a rollout still heartbeating is not an orphan"
    assert store.read("m")[0].candidate_weight == 50.0, "the live rollout's weight is untouched"
    # An expired one is taken back to the champion alone
    clock.now += timedelta(seconds=11)
    safe = reclaim_orphan(store, "m", now=clock)
    assert safe is not None, "an expired lease is reclaimed"
    assert (safe.candidate_weight, safe.candidate, safe.lease, safe.champion) == (0.0, None, None, None), safe
    assert reclaim_orphan(store, "m", now=clock) is None, "nothing left to reclaim"
    # And a new rollout may start at once
    assert acquire(store, "m", "run-b", "2", "4", now=clock).candidate == "4", "the model is free again"


def test_open_store_picks_the_backend_from_the_uri(tmp_path: Path) -> None:
    assert isinstance(open_store(str(tmp_path)), LocalStateStore), "a path is a local directory"
    assert isinstance(open_store(f"file://{tmp_path}"), LocalStateStore), "file:// is a local directory"
    s3 = open_store("s3://bucket/some/prefix")
    assert isinstance(s3, S3StateStore) and s3.key("m") == "some/prefix/m.json", "s3://bucket/prefix"
    with pytest.raises(ValueError, match="gs://b"):
        open_store("gs://b")
    with pytest.raises(ValueError, match="does not match"):
        LocalStateStore(tmp_path).path("../etc")


def test_the_local_layout_is_the_environments_rollout_state_path(tmp_path: Path) -> None:
    from contracts.settings import rollout_state_path

    store = LocalStateStore(rollout_state_path(tmp_path, "m").parent)
    store.update("m", lambda s: s.model_copy(update={"candidate_weight": 7.0}))
    assert rollout_state_path(tmp_path, "m").exists(), "the same file the environment always used"


def test_an_unreachable_s3_store_is_an_error_naming_the_object() -> None:
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3",
        endpoint_url="http://127.0.0.1:9",  # discard port: nothing listens
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="y",  # noqa: S106 - never sent anywhere
        config=Config(connect_timeout=1, retries={"max_attempts": 1}),
    )
    with pytest.raises(LiveStateError, match=r"s3://b/p/m\.json: cannot read"):
        S3StateStore("s3://b/p", client=client).read("m")


def test_live_state_refuses_a_candidate_equal_to_its_champion() -> None:
    with pytest.raises(ValueError, match="candidate must differ from champion"):
        LiveState(candidate="2", champion="2")


def test_the_router_follows_the_live_state_and_a_pin_always_wins() -> None:
    from serving.livestate import follow_live_state
    from serving.spec import AliasRef, ModelRef, RouterConfig, TrafficMode, TrafficSpec

    shape = RouterConfig(champion=AliasRef(name="m"))
    rollout = LiveState(champion="1", candidate="2", candidate_weight=30.0)
    # The live state names the champion judged against, the candidate and its weight
    served = follow_live_state(shape, rollout)
    assert (served.champion, served.candidate) == (
        ModelRef(name="m", version="1"),
        ModelRef(name="m", version="2"),
    )
    assert served.traffic.candidate_weight == 30.0, f"the live weight, got {served.traffic}"
    # No rollout: the shape as deployed (the alias followed)
    assert follow_live_state(shape, LiveState(candidate_weight=0.0)) == shape, (
        "nothing live, the shape serves"
    )
    # A weight pinned in the shape wins, for the live candidate too
    pinned = RouterConfig(
        champion=AliasRef(name="m"), traffic=TrafficSpec(candidate_weight=0.0), weight_pinned=True
    )
    assert follow_live_state(pinned, rollout).traffic.candidate_weight == 0.0, "the pin (0) stops the rollout"
    # A pinned champion other than the one judged against keeps the live candidate out
    other = RouterConfig(champion=ModelRef(name="m", version="7"))
    assert follow_live_state(other, rollout).candidate is None, "a candidate judged against v1 never meets v7"
    # Shadow mode mirrors to the live candidate and never gives it a weight
    shadow = RouterConfig(
        champion=AliasRef(name="m"), traffic=TrafficSpec(mode=TrafficMode.shadow, shadow_percent=40.0)
    )
    mirrored = follow_live_state(shadow, rollout)
    assert mirrored.candidate is not None and mirrored.traffic.candidate_weight == 0.0, mirrored.traffic
    assert mirrored.traffic.shadow_percent == 40.0, "the shape's shadow share applies"


def test_rollout_commands_work_on_a_stacks_store_named_in_the_shell(s3_client, tmp_path, monkeypatch) -> None:
    """Stack mode: no local environment up, LOCKGATE_LIVE_STATE_URI (an S3 prefix) set in the user's shell."""
    import json

    from typer.testing import CliRunner

    from contracts.settings import EnvVar
    from lockgate.cli import app
    from tests.conftest import ROOT

    uri = f"s3://{BUCKET}/{tmp_path.name}/stack"
    for key, value in {
        EnvVar.live_state_uri.value: uri,
        "AWS_ENDPOINT_URL_S3": s3_client.meta.endpoint_url,
        "AWS_ACCESS_KEY_ID": "lockgate-test",
        "AWS_SECRET_ACCESS_KEY": "lockgate-test-secret",
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(key, value)
    serving = tmp_path / "serving.yaml"
    serving.write_text((ROOT / "serving.yaml").read_text())
    model = "loan-default"
    store = S3StateStore(uri, client=s3_client)
    # Given a rollout of v2 against v1 running in the cluster (its controller holds the lease),
    acquire(store, model, "cluster-controller", "1", "2")
    runner = CliRunner()
    common = ["--file", str(serving), "--state-dir", str(tmp_path / "no-env"), "--json"]
    # when a person asks for its status, pauses it and sets a weight from their shell,
    status = runner.invoke(app, ["rollout", "status", *common])
    paused = runner.invoke(app, ["rollout", "pause", *common])
    weighted = runner.invoke(app, ["rollout", "set-weight", "30", *common])
    # then each command read or wrote the stack's store.
    assert status.exit_code == 0, status.output
    shown = json.loads(status.stdout)
    assert (shown["candidate"], shown["champion"], shown["lease"]["owner"]) == (
        "2",
        "1",
        "cluster-controller",
    ), shown
    assert shown["store"] == f"{uri}/{model}.json", f"the stack's document, got {shown['store']}"
    assert paused.exit_code == 0 and weighted.exit_code == 0, (paused.output, weighted.output)
    state = store.read(model)[0]
    assert (state.paused, state.candidate_weight) == (True, 30.0), f"pause and weight in the store: {state}"
    assert state.lease is not None and state.lease.owner == "cluster-controller", (
        "the controller keeps its lease"
    )


def test_a_second_rollout_of_a_model_is_refused_naming_the_running_candidate(tmp_path: Path) -> None:
    from contracts.settings import ServingTarget
    from serving.live import rollout_controller
    from serving.spec import RolloutPolicy

    serving = tmp_path / "serving.yaml"
    serving.write_text("model_name: m\n")
    store = LocalStateStore(tmp_path / "rollout")
    target = ServingTarget("http://127.0.0.1:1", "http://127.0.0.1:1/metrics", tmp_path, tmp_path / "token")
    # Given a rollout of v2 against v1 that a controller (the pipeline's, say) is running,
    acquire(store, "m", "pipeline-run-1", "1", "2")
    # when a second one is started for the next candidate,
    second = rollout_controller(RolloutPolicy(), target, serving, ("1", "3"), lambda *event: None, store)
    with pytest.raises(
        RolloutBusy, match=r"model m: a rollout of candidate version 2 .* refusing .* version 3"
    ):
        second.run()
    # then nothing of the running one changed.
    state, _ = store.read("m")
    assert (state.candidate, state.lease.owner if state.lease else None) == ("2", "pipeline-run-1"), state


@pytest.mark.parametrize("how", ["weight pinned in the serving file", "rollout paused in the store"])
def test_a_pin_set_after_the_last_steps_final_look_yields_instead_of_promoting(
    tmp_path: Path, how: str
) -> None:
    from dataclasses import replace

    from serving.live import LeasedRolloutController, RolloutTarget, live_effects
    from tests.serving.test_rollout_analysis import POLICY, World

    serving = tmp_path / "serving.yaml"
    serving.write_text("model_name: m\n")
    store = LocalStateStore(tmp_path / "rollout")
    # Given a healthy candidate's rollout whose metrics pass every step (the controller's own looks see no pin),
    world = World(candidate_errors_per_tick=0)
    target = RolloutTarget(metrics_url="http://127.0.0.1:1/metrics", local_router=False)
    live = live_effects(target, serving, store, ("1", "2"), lambda *event: None, "controller-1")

    def person_pins_then_promote() -> None:
        # when a person pins the weight (or pauses) between the last step's final look and the promotion,
        if how.startswith("weight"):
            serving.write_text("model_name: m\ntraffic:\n  candidate_weight: 0\n")
        else:
            store.update("m", lambda state: state.model_copy(update={"paused": True}))
        live.promote()  # the real promotion: it looks for a pin first; an alias move would need Ray here

    effects = replace(world.effects(), promote=person_pins_then_promote)
    result = LeasedRolloutController(POLICY, ("1", "2"), effects, store, "m", "controller-1").run()
    # then automation yields to the pin (outcome pinned, no alias moved), the candidate keeps its weight for the
    # person to look at, and the lease is released for a later run to resume.
    assert result.outcome == "pinned", f"expected the rollout to yield, got {result}"
    assert ("event", "promotion") not in world.actions, world.actions
    state = store.read("m")[0]
    assert (state.candidate, state.lease) == ("2", None), state
