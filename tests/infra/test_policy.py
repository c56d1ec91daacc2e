"""Policy rules called directly on good and bad fixtures (a PolicyPack is never constructed in a test)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from policy import rules
from policy.rules import RESOURCE_RULES, STACK_RULES, StackResource, check_stack

BUCKET_POLICY_PUBLIC = json.dumps(
    {
        "Statement": [
            {"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::b/*"}
        ]
    }
)
BUCKET_POLICY_TLS = json.dumps(
    {
        "Statement": [
            {
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:*",
                "Resource": "arn:aws:s3:::b/*",
                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
            }
        ]
    }
)
GOOD_CONTAINER = {
    "name": "app",
    "image": "app:1",
    "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "200m", "memory": "64Mi"}},
    "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False},
}


def deployment(container: dict[str, Any], pod_security: dict[str, Any] | None = None) -> dict[str, Any]:
    pod: dict[str, Any] = {"containers": [container]}
    if pod_security is not None:
        pod["securityContext"] = pod_security
    return {"spec": {"template": {"spec": pod}}}


def ray_cluster(container: dict[str, Any]) -> dict[str, Any]:
    """A RayCluster spec whose head is good and whose worker runs ``container``."""
    return {
        "headGroupSpec": {"template": {"spec": {"containers": [GOOD_CONTAINER]}}},
        "workerGroupSpecs": [{"groupName": "w", "template": {"spec": {"containers": [container]}}}],
    }


ROOT_CONTAINER = {**GOOD_CONTAINER, "securityContext": {"runAsUser": 0, "allowPrivilegeEscalation": False}}


def without(mapping: dict[str, Any], *path: str) -> dict[str, Any]:
    out = copy.deepcopy(mapping)
    target = out
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return out


# (rule, resource type, props that pass, props that fail)
CASES: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = [
    ("no-public-buckets", rules.BUCKET, {"acl": "private"}, {"acl": "public-read"}),
    (
        "no-public-buckets",
        rules.PUBLIC_ACCESS_BLOCK,
        dict.fromkeys(rules.BLOCK_SETTINGS, True),
        {**dict.fromkeys(rules.BLOCK_SETTINGS, True), "restrictPublicBuckets": False},
    ),
    (
        "no-public-buckets",
        rules.BUCKET_POLICY,
        {"policy": BUCKET_POLICY_TLS},
        {"policy": BUCKET_POLICY_PUBLIC},
    ),
    ("encryption-at-rest", rules.RDS_INSTANCE, {"storageEncrypted": True}, {"storageEncrypted": False}),
    (
        "encryption-at-rest",
        rules.EKS_CLUSTER,
        {"encryptionConfig": {"resources": ["secrets"], "provider": {"keyArn": "arn:key"}}},
        {},
    ),
    (
        "encryption-at-rest",
        rules.BUCKET_ENCRYPTION,
        {"rules": [{"applyServerSideEncryptionByDefault": {"sseAlgorithm": "aws:kms"}}]},
        {"rules": []},
    ),
    (
        "ecr-scan-and-immutable-tags",
        rules.ECR_REPOSITORY,
        {"imageTagMutability": "IMMUTABLE", "imageScanningConfiguration": {"scanOnPush": True}},
        {"imageTagMutability": "MUTABLE", "imageScanningConfiguration": {"scanOnPush": True}},
    ),
    (
        "ecr-scan-and-immutable-tags",
        rules.ECR_REPOSITORY,
        {"imageTagMutability": "IMMUTABLE", "imageScanningConfiguration": {"scanOnPush": True}},
        {"imageTagMutability": "IMMUTABLE"},
    ),
    (
        "rds-private-and-backed-up",
        rules.RDS_INSTANCE,
        {"publiclyAccessible": False, "backupRetentionPeriod": 7},
        {"publiclyAccessible": True, "backupRetentionPeriod": 7},
    ),
    (
        "rds-private-and-backed-up",
        rules.RDS_INSTANCE,
        {"publiclyAccessible": False, "backupRetentionPeriod": 1},
        {"publiclyAccessible": False, "backupRetentionPeriod": 0},
    ),
    (
        "eks-endpoint-not-public",
        rules.EKS_CLUSTER,
        {"vpcConfig": {"endpointPublicAccess": False}},
        {"vpcConfig": {}},
    ),
    (
        "eks-endpoint-not-public",
        rules.EKS_CLUSTER,
        {"vpcConfig": {"endpointPublicAccess": True, "publicAccessCidrs": ["203.0.113.0/24"]}},
        {"vpcConfig": {"endpointPublicAccess": True, "publicAccessCidrs": ["0.0.0.0/0"]}},
    ),
    (
        "no-public-load-balancer",
        rules.K8S_SERVICE,
        {"spec": {"type": "ClusterIP"}},
        {"metadata": {"name": "web"}, "spec": {"type": "LoadBalancer"}},
    ),
    (
        "no-public-load-balancer",
        rules.K8S_SERVICE,
        {
            "metadata": {"annotations": {"service.beta.kubernetes.io/aws-load-balancer-scheme": "internal"}},
            "spec": {"type": "LoadBalancer"},
        },
        {"metadata": {"annotations": {"unrelated": "true"}}, "spec": {"type": "LoadBalancer"}},
    ),
    (
        "no-public-load-balancer",
        "kubernetes:ray.io/v1:RayService",
        {
            "spec": {
                "serveService": {
                    "metadata": {"annotations": {rules.PUBLIC_ENDPOINT_ANNOTATION: "true"}},
                    "spec": {"type": "LoadBalancer"},
                }
            }
        },
        {"spec": {"serveService": {"spec": {"type": "LoadBalancer"}}}},
    ),
    (
        "containers-bounded-and-non-root",
        "kubernetes:apps/v1:Deployment",
        deployment(GOOD_CONTAINER),
        deployment(without(GOOD_CONTAINER, "resources", "limits")),
    ),
    (
        "containers-bounded-and-non-root",
        "kubernetes:apps/v1:Deployment",
        deployment(without(GOOD_CONTAINER, "securityContext", "runAsNonRoot"), {"runAsNonRoot": True}),
        deployment(without(GOOD_CONTAINER, "securityContext", "runAsNonRoot")),
    ),
    (
        "containers-bounded-and-non-root",
        "kubernetes:apps/v1:StatefulSet",
        deployment(GOOD_CONTAINER),
        deployment(
            {**GOOD_CONTAINER, "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": True}}
        ),
    ),
    (
        "containers-bounded-and-non-root",
        "kubernetes:ray.io/v1:RayService",
        {"spec": {"rayClusterConfig": ray_cluster(GOOD_CONTAINER)}},
        {"spec": {"rayClusterConfig": ray_cluster(without(GOOD_CONTAINER, "resources", "requests"))}},
    ),
    (
        "containers-bounded-and-non-root",
        "kubernetes:ray.io/v1:RayCronJob",
        {"spec": {"jobTemplate": {"rayClusterSpec": ray_cluster(GOOD_CONTAINER)}}},
        {"spec": {"jobTemplate": {"rayClusterSpec": ray_cluster(ROOT_CONTAINER)}}},
    ),
]


@pytest.mark.parametrize(("rule_name", "resource_type", "good", "bad"), CASES)
def test_rule_passes_good_and_flags_bad(rule_name, resource_type, good, bad) -> None:
    _, rule = RESOURCE_RULES[rule_name]
    assert rule(resource_type, good) == [], f"{rule_name} accepts the good fixture"
    assert rule(resource_type, bad) != [], f"{rule_name} flags the bad fixture"


def test_every_rule_has_a_bad_fixture() -> None:
    covered = {case[0] for case in CASES}
    assert covered == set(RESOURCE_RULES), f"rules without fixtures: {set(RESOURCE_RULES) - covered}"
    assert set(STACK_RULES) == {"buckets-fully-protected"}


def test_rules_ignore_unrelated_types() -> None:
    for name, (_, rule) in RESOURCE_RULES.items():
        assert rule("random:index/randomPassword:RandomPassword", {"length": 32}) == [], name


def test_bucket_without_access_block_or_encryption_is_flagged() -> None:
    bucket = StackResource(rules.BUCKET, "b", {"id": "b-id"})
    block = StackResource(
        rules.PUBLIC_ACCESS_BLOCK, "b-pab", {"bucket": "b-id", **dict.fromkeys(rules.BLOCK_SETTINGS, True)}
    )
    encryption = StackResource(
        rules.BUCKET_ENCRYPTION,
        "b-sse",
        {"bucket": "b-id", "rules": [{"applyServerSideEncryptionByDefault": {"sseAlgorithm": "AES256"}}]},
    )
    assert check_stack([bucket, block, encryption]) == {}
    missing = check_stack([bucket, encryption])
    assert (
        list(missing) == ["buckets-fully-protected"]
        and "public access block" in missing["buckets-fully-protected"][0]
    )
    assert "default encryption" in check_stack([bucket, block])["buckets-fully-protected"][0]


def test_bucket_settings_match_by_parent_while_the_id_is_unknown() -> None:
    # A preview of a new stack: the bucket id is not known yet; the settings sit beside the bucket.
    store = "urn:pulumi:dev::lockgate::lockgate:storage:S3ArtifactStore::a"
    bucket = StackResource(rules.BUCKET, "a-bucket", {}, store)
    block = StackResource(
        rules.PUBLIC_ACCESS_BLOCK, "a-pab", dict.fromkeys(rules.BLOCK_SETTINGS, True), store
    )
    encryption = StackResource(rules.BUCKET_ENCRYPTION, "a-sse", {"rules": []}, store)
    assert "buckets-fully-protected" not in check_stack([bucket, block, encryption])
    elsewhere = StackResource(
        rules.PUBLIC_ACCESS_BLOCK, "b-pab", dict.fromkeys(rules.BLOCK_SETTINGS, True), "urn:other"
    )
    assert "public access block" in check_stack([bucket, elsewhere, encryption])["buckets-fully-protected"][0]
