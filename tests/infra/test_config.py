"""Stack config: the shipped stack files validate; broken config fails naming the key path."""

from __future__ import annotations

import json

import pytest

from infra.config import (
    EksClusterConfig,
    ExistingClusterConfig,
    StackConfigError,
    json_schema,
    load_stack_config,
)
from tests.infra.conftest import ROOT, TEST_EGRESS_CIDR, aws_reachable
from tests.infra.driver import engine_config

EPHEMERAL_TEMPLATE = ROOT / "infra" / "stacks" / "ephemeral.yaml"


def shipped(stack: str) -> dict[str, str]:
    raw, _ = engine_config(ROOT / f"Pulumi.{stack}.yaml", [])
    return raw


def test_dev_stack_validates() -> None:
    config = load_stack_config(shipped("dev"))
    assert isinstance(config.cluster, ExistingClusterConfig) and not config.on_aws
    assert config.image.repository and config.models.champion is None, "a fresh stack pins no version"


def test_aws_stack_validates_once_its_user_names_how_pulumi_reaches_the_api() -> None:
    # Given the shipped aws stack, which cannot know its user's network,
    with pytest.raises(StackConfigError) as caught:
        load_stack_config(shipped("aws"))
    # then it refuses to run, naming the key and the way out;
    assert any(
        p.startswith("lockgate:cluster.eks") and "publicAccessCidrs" in p for p in caught.value.problems
    ), caught.value.problems
    # and with a routable egress network set, it validates.
    raw = shipped("aws")
    raw.update(dict(override.split("=", 1) for override in aws_reachable()))
    config = load_stack_config(raw)
    assert isinstance(config.cluster, EksClusterConfig) and config.on_aws
    assert config.cluster.public_access_cidrs == (TEST_EGRESS_CIDR,)
    assert config.mlflow.database.backup_retention_days == 14


def test_ephemeral_template_validates(tmp_path) -> None:
    stack_file = tmp_path / "Pulumi.ephemeral-abc.yaml"
    stack_file.write_text(EPHEMERAL_TEMPLATE.read_text().replace("{suffix}", "abc"))
    raw, _ = engine_config(stack_file, [])
    config = load_stack_config(raw)
    assert config.namespace == "lockgate-abc" and config.operators.install is False
    assert config.artifact_store.force_destroy is True, "ephemeral stacks clean up after themselves"


def with_key(stack: str, key: str, value: object) -> dict[str, str]:
    raw = shipped(stack)
    raw[f"lockgate:{key}"] = value if isinstance(value, str) else json.dumps(value)
    return raw


BROKEN = [
    ("canary weight over 100", with_key("dev", "canaryWeight", "140"), "lockgate:canaryWeight"),
    ("canary weight not a number", with_key("dev", "canaryWeight", "lots"), "lockgate:canaryWeight"),
    ("unknown nested key", with_key("dev", "mlflow", {"replica": 2}), "lockgate:mlflow.replica"),
    ("unknown top-level key", with_key("dev", "canaryWieght", "10"), "lockgate:canaryWieght"),
    (
        "misspelled serve traffic key",
        with_key(
            "dev",
            "serve",
            {"model_name": "m", "serving": {"http_host": "0.0.0.0"}, "traffic": {"candidate_wieght": 5}},
        ),
        "lockgate:serve.traffic.candidate_wieght",
    ),
    (
        "serve proxy on loopback",
        with_key("dev", "serve", {"model_name": "m", "serving": {"http_host": "127.0.0.1"}}),
        "serve.serving.http_host",
    ),
    ("bad model version", with_key("dev", "models", {"champion": "01"}), "lockgate:models.champion"),
    (
        "public endpoint without networks",
        with_key("aws", "cluster", {"kind": "eks", "endpointPublicAccess": True}),
        "lockgate:cluster.eks",
    ),
    (
        "endpoint open to the internet",
        with_key(
            "aws",
            "cluster",
            {"kind": "eks", "endpointPublicAccess": True, "publicAccessCidrs": ["0.0.0.0/0"]},
        ),
        "lockgate:cluster.eks.publicAccessCidrs",
    ),
    ("unknown cluster kind", with_key("dev", "cluster", {"kind": "gke"}), "lockgate:cluster"),
    (
        "node group sizes out of order",
        with_key("aws", "cluster", {"kind": "eks", "nodeGroup": {"minSize": 3, "desiredSize": 2}}),
        "lockgate:cluster.eks.nodeGroup",
    ),
    ("no image to run", with_key("dev", "image", {"build": False}), "lockgate:image"),
    ("plaintext password", with_key("dev", "mlflowAdminPassword", "hunter2"), "lockgate:mlflowAdminPassword"),
]


@pytest.mark.parametrize(("case", "raw", "path"), BROKEN, ids=[case for case, _, _ in BROKEN])
def test_broken_config_names_the_key_path(case, raw, path) -> None:
    with pytest.raises(StackConfigError) as caught:
        load_stack_config(raw)
    assert any(problem.startswith(path) or path in problem for problem in caught.value.problems), (
        f"{case}: expected a problem naming {path}, got {caught.value.problems}"
    )


def test_missing_required_keys_are_named() -> None:
    raw = shipped("dev")
    del raw["lockgate:serve"]
    del raw["lockgate:cluster"]
    with pytest.raises(StackConfigError) as caught:
        load_stack_config(raw)
    assert {p.split(":", 2)[1] for p in caught.value.problems} >= {"cluster", "serve"}


def test_a_candidate_needs_a_pinned_champion() -> None:
    raw = with_key("dev", "models", {"candidate": "2"})
    with pytest.raises(StackConfigError, match="a candidate needs models.champion pinned beside it"):
        load_stack_config(raw)


def test_password_set_as_secret_is_accepted() -> None:
    raw = with_key("dev", "mlflowAdminPassword", "hunter2-but-long")
    config = load_stack_config(raw, frozenset({"lockgate:mlflowAdminPassword"}))
    assert config.mlflow_admin_password is not None
    assert "hunter2" not in repr(config), "a secret never shows in the config's repr"


def test_other_namespaces_are_ignored_and_schema_is_exported() -> None:
    raw = {**shipped("dev"), "kubernetes:context": "kind-x", "aws:region": "eu-west-1"}
    assert load_stack_config(raw).namespace == "lockgate"
    assert {"canaryWeight", "serve", "models", "cluster"} <= set(json_schema()["properties"])
