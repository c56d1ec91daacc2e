"""Serve-config renderer: valid for Ray, strict on misspellings, deterministic, secret-free and Ray-free."""

from __future__ import annotations

import copy
import subprocess
import sys
from typing import Any

import pytest
import yaml
from pydantic import ValidationError
from ray.serve.schema import ServeDeploySchema

from serving.render import (
    ServeConfigError,
    render_serve_config,
    render_serve_yaml,
    validate_serve_config,
)
from serving.spec import ModelRef, RouterConfig, ServingSpec, TrafficMode, TrafficSpec
from tests.conftest import ROOT

CHAMPION = ModelRef(name="loan-default", version="3")
CANDIDATE = ModelRef(name="loan-default", version="4")


def canary_router(weight: float) -> RouterConfig:
    """A weighted canary of CANDIDATE against CHAMPION at ``weight`` percent."""
    return RouterConfig(
        champion=CHAMPION,
        candidate=CANDIDATE,
        traffic=TrafficSpec(mode=TrafficMode.weighted, candidate_weight=weight),
    )


def diff_paths(before: Any, after: Any, path: tuple[Any, ...] = ()) -> set[tuple[Any, ...]]:
    """Every leaf path at which two nested dict/list structures differ."""
    if isinstance(before, dict) and isinstance(after, dict):
        paths: set[tuple[Any, ...]] = set()
        for key in before.keys() | after.keys():
            if key not in before or key not in after:
                paths.add((*path, key))
            else:
                paths |= diff_paths(before[key], after[key], (*path, key))
        return paths
    if isinstance(before, list) and isinstance(after, list):
        if len(before) != len(after):
            return {path}
        paths = set()
        for index, (left, right) in enumerate(zip(before, after, strict=True)):
            paths |= diff_paths(left, right, (*path, index))
        return paths
    return set() if before == after and type(before) is type(after) else {path}


def test_rendered_config_passes_rays_serve_deploy_schema() -> None:
    # Given a spec with env vars and a canary router
    spec = ServingSpec(num_replicas=2, env_vars={"LOCKGATE_ENV": "local"})
    # When it is rendered
    config = render_serve_config(spec, canary_router(10))
    # Then Ray's own schema accepts it and reads back what we set
    parsed = ServeDeploySchema.model_validate(config)
    deployment = parsed.applications[0].deployments[0]
    assert deployment.name == "Router", "the only deployment is the router ingress"
    assert deployment.num_replicas == 2, "num_replicas comes from the spec"
    assert deployment.ray_actor_options.num_cpus == 0.5, "replicas reserve the spec's CPU share, not Ray's 1"
    assert deployment.user_config == canary_router(10).model_dump(mode="json"), (
        "user_config is the router config"
    )
    assert parsed.http_options.host == "127.0.0.1", "the proxy listens on loopback by default"
    assert parsed.applications[0].runtime_env["env_vars"] == {"LOCKGATE_ENV": "local"}, (
        "env_vars are merged into the application's runtime_env"
    )


def test_runtime_env_without_env_vars_is_passed_through_unchanged() -> None:
    # Given a runtime_env and no env_vars
    spec = ServingSpec(runtime_env={"working_dir": "local:///srv/lockgate"})
    # When rendered
    config = render_serve_config(spec, RouterConfig(champion=CHAMPION))
    # Then the runtime_env is exactly what was given, with no empty env_vars added
    assert config["applications"][0]["runtime_env"] == {"working_dir": "local:///srv/lockgate"}, (
        "runtime_env is passed through as given"
    )


def test_yaml_is_byte_identical_for_identical_input() -> None:
    # Given two equal but separately built inputs
    first_inputs = (ServingSpec(env_vars={"B": "2", "A": "1"}), canary_router(25))
    second_inputs = (ServingSpec(env_vars={"A": "1", "B": "2"}), canary_router(25))
    # When each is rendered to YAML
    first = render_serve_yaml(*first_inputs).encode()
    second = render_serve_yaml(*second_inputs).encode()
    # Then the bytes are identical and the YAML reads back as the rendered dict
    assert first == second, "identical input renders byte-identical YAML"
    assert yaml.safe_load(first) == render_serve_config(*first_inputs), "the YAML is the very same dict"


@pytest.mark.parametrize(
    ("correct", "misspelled"),
    [("user_config", "user_confg"), ("num_replicas", "num_replica")],
)
def test_misspelled_deployment_key_is_refused_though_ray_accepts_it(correct: str, misspelled: str) -> None:
    # Given a rendered config with one deployment key misspelled
    config = copy.deepcopy(render_serve_config(ServingSpec(), canary_router(10)))
    deployment = config["applications"][0]["deployments"][0]
    deployment[misspelled] = deployment.pop(correct)
    # When Ray's schema alone checks it, then it is accepted: this is why we keep strict models
    ServeDeploySchema.model_validate(config)
    # When our validator checks it
    with pytest.raises(ServeConfigError) as caught:
        validate_serve_config(config)
    # Then the error names the field path of the misspelled key
    message = str(caught.value)
    expected = f"applications.0.deployments.0.{misspelled}: Extra inputs are not permitted"
    assert expected in message, f"the error names the misspelled key's path, got: {message}"
    assert isinstance(caught.value, ValueError), "ServeConfigError is a ValueError"


def test_misspelled_key_inside_user_config_is_refused() -> None:
    # Given a rendered config whose router user_config has a misspelled traffic key
    config = copy.deepcopy(render_serve_config(ServingSpec(), canary_router(10)))
    traffic = config["applications"][0]["deployments"][0]["user_config"]["traffic"]
    traffic["candidate_weigth"] = traffic.pop("candidate_weight")
    # When validated, then the nested path is named
    with pytest.raises(ServeConfigError) as caught:
        validate_serve_config(config)
    path = "applications.0.deployments.0.user_config.traffic.candidate_weigth"
    assert path in str(caught.value), f"the nested misspelling is named, got: {caught.value}"


def test_ray_schema_problems_are_reported_with_field_path() -> None:
    # Given a config our mirror accepts but Ray refuses (an import path with two colons)
    config = copy.deepcopy(render_serve_config(ServingSpec(), canary_router(10)))
    config["applications"][0]["import_path"] = "serving.app:app:extra"
    # When validated, then Ray's refusal is reported with its path
    with pytest.raises(ServeConfigError) as caught:
        validate_serve_config(config)
    assert caught.value.source == "ray ServeDeploySchema", "the refusal came from Ray's own schema"
    assert "applications.0.import_path" in str(caught.value), f"the path is named, got: {caught.value}"


def test_secret_env_var_in_hand_written_config_is_refused() -> None:
    # Given a hand-edited config that smuggles a token into runtime_env.env_vars
    config = copy.deepcopy(render_serve_config(ServingSpec(), canary_router(10)))
    config["applications"][0]["runtime_env"]["env_vars"] = {"RAY_AUTH_TOKEN": "abc"}
    # When validated, then it is refused naming the key
    with pytest.raises(ServeConfigError) as caught:
        validate_serve_config(config)
    assert "RAY_AUTH_TOKEN" in str(caught.value), f"the secret-looking key is named, got: {caught.value}"


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: canary_router(150), "candidate_weight"),
        (
            lambda: RouterConfig(
                champion=CHAMPION,
                candidate=CANDIDATE,
                traffic=TrafficSpec(mode=TrafficMode.shadow, candidate_weight=5, shadow_percent=50),
            ),
            "candidate_weight",
        ),
        (
            lambda: RouterConfig(champion=CHAMPION, traffic=TrafficSpec(candidate_weight=10)),
            "candidate_weight",
        ),
        (lambda: RouterConfig(champion=CHAMPION, traffic=TrafficSpec(shadow_percent=10)), "shadow_percent"),
        (lambda: RouterConfig(champion=CHAMPION, candidate=CHAMPION), "candidate"),
        (lambda: ModelRef(name="loan-default", version="latest"), "version"),
        (lambda: TrafficSpec(sticky_header="X-Lockgate-Key"), "sticky_header"),
        (lambda: ServingSpec(env_vars={"MLFLOW_TRACKING_PASSWORD": "hunter2"}), "MLFLOW_TRACKING_PASSWORD"),
        (lambda: ServingSpec(env_vars={"ray_auth_token": "t"}), "ray_auth_token"),
        (
            lambda: ServingSpec(runtime_env={"env_vars": {"AWS_SECRET_ACCESS_KEY": "k"}}),
            "AWS_SECRET_ACCESS_KEY",
        ),
        (lambda: ServingSpec(route_prefix="api"), "route_prefix"),
        (lambda: ServingSpec(route_prefix="/api/"), "route_prefix"),
        (lambda: ServingSpec(num_replicas=0), "num_replicas"),
        (lambda: ServingSpec(unexpected=True), "unexpected"),
    ],
    ids=[
        "weight-150",
        "shadow-with-weight",
        "no-candidate-with-weight",
        "no-candidate-with-shadow",
        "candidate-is-champion",
        "version-not-digits",
        "header-uppercase",
        "password-env-var",
        "token-env-var-lowercase",
        "secret-in-runtime-env",
        "route-prefix-without-slash",
        "route-prefix-trailing-slash",
        "zero-replicas",
        "unknown-key",
    ],
)
def test_invalid_spec_is_refused_naming_the_field(build: Any, field: str) -> None:
    # Given an invalid spec, when it is built, then validation fails and names the field
    with pytest.raises(ValidationError) as caught:
        build()
    assert field in str(caught.value), f"the error names {field!r}, got: {caught.value}"


def test_model_ref_uri() -> None:
    # Given a model version, when its URI is asked for, then it is the MLflow registry URI
    assert CANDIDATE.uri == "models:/loan-default/4", "uri is models:/<name>/<version>"


def test_specs_are_frozen() -> None:
    # Given a built spec, when a field is assigned, then it is refused
    spec = ServingSpec()
    with pytest.raises(ValidationError):
        spec.num_replicas = 3  # type: ignore[misc]
    assert spec.num_replicas == 1, "the spec is unchanged after a refused assignment"


def test_rendering_imports_no_ray() -> None:
    # Given a fresh interpreter, when it imports the renderer and the spec
    result = subprocess.run(
        [sys.executable, "-c", "import sys, serving.render, serving.spec; assert 'ray' not in sys.modules"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Then Ray was not imported (infra imports these modules)
    assert result.returncode == 0, f"importing serving.render/spec must not import ray: {result.stderr}"


def test_changing_only_the_canary_weight_changes_only_that_field() -> None:
    # Given the same spec and two routers differing only in canary weight
    spec = ServingSpec(env_vars={"LOCKGATE_ENV": "local"})
    # When both are rendered
    before = render_serve_config(spec, canary_router(10))
    after = render_serve_config(spec, canary_router(20))
    # Then the only differing path is the router's candidate_weight (so `serve deploy` only reconfigures)
    expected = {("applications", 0, "deployments", 0, "user_config", "traffic", "candidate_weight")}
    assert diff_paths(before, after) == expected, (
        f"only candidate_weight differs, got {diff_paths(before, after)}"
    )
