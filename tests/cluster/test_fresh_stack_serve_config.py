"""A fresh stack's rendered serve config names no model version the registry cannot have yet."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from infra.config import StackConfig, load_stack_config
from infra.serve import stack_serve_config, stack_serve_yaml
from serving.spec import AliasRef, ModelRef, RouterConfig
from tests.cluster.stack import render_stack
from tests.conftest import ROOT
from tests.infra.driver import engine_config

CAPTURE = "s3://bucket/capture"


def dev_config() -> StackConfig:
    raw, secret_keys = engine_config(ROOT / "Pulumi.dev.yaml", [])
    return load_stack_config(raw, frozenset(secret_keys))


def versions_named(value: Any) -> list[str]:
    """Every ``version`` anywhere in a rendered config."""
    if isinstance(value, dict):
        return [str(v) for k, v in value.items() if k == "version"] + [
            found for item in value.values() for found in versions_named(item)
        ]
    if isinstance(value, list):
        return [found for item in value for found in versions_named(item)]
    return []


def test_a_stack_that_pins_no_champion_renders_a_router_following_the_champion_alias() -> None:
    # Given the dev stack's serve block and no pinned versions (nothing registered yet)
    config = dev_config()
    # When infra renders the RayService's serveConfigV2
    rendered = stack_serve_config(config.serve, config.canary_weight, None, None, CAPTURE)
    # Then it names no version, and the router follows the registry's champion alias of the stack's model
    assert versions_named(rendered) == [], "a fresh stack cannot know any version"
    router = rendered["applications"][0]["deployments"][0]["user_config"]
    assert router["champion"] == {"name": config.serve.model_name, "alias": "champion"}
    assert router["candidate"] is None and router["traffic"]["candidate_weight"] == 0
    text = stack_serve_yaml(config.serve, config.canary_weight, None, None, CAPTURE)
    assert yaml.safe_load(text) == rendered, "the YAML is the same config"
    with pytest.raises(ValueError, match="models.candidate"):
        stack_serve_config(config.serve, None, None, "2", CAPTURE)


def test_the_dev_stack_file_renders_no_version(tmp_path) -> None:
    service = next(
        r["inputs"]
        for r in render_stack(tmp_path)["resources"]
        if r["type"] == "kubernetes:ray.io/v1:RayService"
    )
    assert versions_named(yaml.safe_load(service["spec"]["serveConfigV2"])) == []


def test_router_config_takes_a_pinned_version_or_an_alias() -> None:
    pinned = RouterConfig.model_validate({"champion": {"name": "m", "version": "3"}})
    followed = RouterConfig.model_validate({"champion": {"name": "m", "alias": "champion"}})
    assert isinstance(pinned.champion, ModelRef) and isinstance(followed.champion, AliasRef)
    assert followed.champion.uri == "models:/m@champion"
    with pytest.raises(ValidationError, match="candidate needs a pinned champion"):
        RouterConfig.model_validate(
            {"champion": {"name": "m", "alias": "champion"}, "candidate": {"name": "m", "version": "2"}}
        )
    with pytest.raises(ValidationError):
        RouterConfig.model_validate({"champion": {"name": "m", "alias": "champion", "version": "1"}})
    with pytest.raises(ValidationError, match="registry_poll_s"):
        RouterConfig.model_validate({"champion": {"name": "m", "version": "1"}, "registry_poll_s": 0})
