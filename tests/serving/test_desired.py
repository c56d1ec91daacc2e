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
    assert alone.candidate is None and alone.traffic.candidate_weight == 0, "no candidate gets no traffic"
    with pytest.raises(ServingFileError, match="no 'champion' alias"):
        resolve_router_config(file, RolloutState(), {"candidate": "2"})


def test_state_round_trip_and_bad_file(tmp_path) -> None:
    path = tmp_path / "rollout" / "m.json"
    assert read_rollout_state(path) == RolloutState(), "defaults before anything was written"
    write_rollout_state(path, RolloutState(candidate_weight=12.5, paused=True))
    assert read_rollout_state(path) == RolloutState(candidate_weight=12.5, paused=True)
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
