"""Policy rules called directly on good and bad fixtures (a PolicyPack is never constructed in a test)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from infra import aws_facts
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
    # Supported versions: the EKS release calendar (docs.aws.amazon.com, EKS user guide, "Amazon EKS
    # Kubernetes release calendar"). 1.35 is in standard support until 2027-03-27: when this case fails, bump
    # the calendar, infra/config.py's default and this fixture (the point of the rule).
    ("eks-version-supported", rules.EKS_CLUSTER, {"version": "1.35"}, {"version": "1.30"}),
    ("eks-version-supported", rules.EKS_CLUSTER, {"version": "1.35"}, {"version": "1.99"}),
    (
        "eks-endpoint-reachable",
        rules.EKS_CLUSTER,
        {"vpcConfig": {"endpointPublicAccess": True, "publicAccessCidrs": ["81.2.69.0/24"]}},
        # 203.0.113.0/24 is TEST-NET-3 (RFC 5737): no real client ever comes from it.
        {"vpcConfig": {"endpointPublicAccess": True, "publicAccessCidrs": ["203.0.113.0/24"]}},
    ),
    (
        "eks-endpoint-reachable",
        rules.EKS_CLUSTER,
        {
            "vpcConfig": {"endpointPublicAccess": False},
            "tags": {aws_facts.API_ACCESS_TAG: aws_facts.INSIDE_VPC},
        },
        {"vpcConfig": {"endpointPublicAccess": False}},
    ),
    (
        "eks-endpoint-reachable",
        rules.EKS_CLUSTER,
        {"vpcConfig": {"endpointPublicAccess": True, "publicAccessCidrs": ["81.2.69.0/24"]}},
        {"vpcConfig": {"endpointPublicAccess": True, "publicAccessCidrs": ["10.0.0.0/8"]}},
    ),
    (
        "custom-resources-awaited",
        "kubernetes:ray.io/v1:RayService",
        {"metadata": {"annotations": {rules.WAIT_FOR_ANNOTATION: "condition=Ready"}}},
        {"metadata": {"name": "serve"}},
    ),
    (
        "custom-resources-awaited",
        "kubernetes:ray.io/v1:RayCluster",
        {"metadata": {"annotations": {rules.WAIT_FOR_ANNOTATION: "condition=HeadPodReady"}}},
        {"metadata": {"annotations": {"unrelated": "x"}}},
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
    assert set(STACK_RULES) == {
        "buckets-fully-protected",
        "node-roles-have-required-policies",
        "volumes-have-storage",
        "network-policies-enforced",
    }


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


EKS = StackResource(
    rules.EKS_CLUSTER,
    "c-eks",
    {
        "version": "1.35",
        "encryptionConfig": {"resources": ["secrets"], "provider": {"keyArn": "arn:key"}},
        "vpcConfig": {"endpointPublicAccess": True, "publicAccessCidrs": ["81.2.69.0/24"]},
    },
    "urn:c",
)


def node_stack(policies: tuple[str, ...]) -> list[StackResource]:
    """An EKS node group and its role's attachments, matched by role name as after a deployment."""
    group = StackResource(
        rules.NODE_GROUP, "c-nodes", {"nodeRoleArn": "arn:aws:iam::1:role/c-node-role"}, "urn:c"
    )
    attachments = [
        StackResource(
            rules.ROLE_POLICY_ATTACHMENT, f"c-node-policy-{i}", {"role": "c-node-role", "policyArn": a}
        )
        for i, a in enumerate(policies)
    ]
    other = StackResource(
        rules.ROLE_POLICY_ATTACHMENT,
        "c-other",
        {"role": "c-cluster-role", "policyArn": aws_facts.EKS_NODE_POLICIES[2]},
        "urn:c",
    )
    return [group, *attachments, other]


def test_node_role_needs_ecr_pull_for_the_add_on_images() -> None:
    """EKS user guide, "Amazon EKS node IAM role": AmazonEKSWorkerNodePolicy, AmazonEC2ContainerRegistryPullOnly
    (the networking add-ons' images come from ECR) and the CNI policy when the CNI has no IRSA role."""
    assert check_stack(node_stack(aws_facts.EKS_NODE_POLICIES)) == {}
    old = check_stack(node_stack(aws_facts.EKS_NODE_POLICIES[:2]))  # the node role before issue #10
    assert "AmazonEC2ContainerRegistryPullOnly" in old["node-roles-have-required-policies"][0], (
        "an attachment to another role does not count"
    )


PVC = StackResource("kubernetes:core/v1:PersistentVolumeClaim", "data", {"spec": {}})
EBS_ADDON = StackResource(rules.EKS_ADDON, "c-ebs-csi", {"addonName": aws_facts.EBS_CSI_ADDON})
GP3 = StackResource(
    rules.STORAGE_CLASS,
    "c-gp3",
    {
        "metadata": {"annotations": {aws_facts.DEFAULT_STORAGE_CLASS_ANNOTATION: "true"}},
        "provisioner": aws_facts.EBS_CSI_PROVISIONER,
    },
)


def test_volume_claims_on_eks_need_the_ebs_driver_and_a_default_class() -> None:
    assert check_stack([EKS, PVC, EBS_ADDON, GP3]) == {}
    assert check_stack([PVC]) == {}, "an existing cluster brings its own storage"
    missing = check_stack([EKS, PVC])["volumes-have-storage"]
    assert len(missing) == 2 and "aws-ebs-csi-driver" in missing[0] and "StorageClass" in missing[1]
    prometheus = StackResource(
        rules.HELM_RELEASE,
        "kps",
        {"values": {"prometheus": {"prometheusSpec": {"storageSpec": {"volumeClaimTemplate": {}}}}}},
    )
    assert "volumes-have-storage" in check_stack([EKS, prometheus, EBS_ADDON]), "the chart's claim counts"


def test_network_policies_on_eks_need_the_vpc_cni_network_policy_agent() -> None:
    policy = StackResource(rules.NETWORK_POLICY, "deny", {"spec": {}})
    cni = StackResource(
        rules.EKS_ADDON,
        "c-vpc-cni",
        {"addonName": aws_facts.VPC_CNI_ADDON, "configurationValues": '{"enableNetworkPolicy": "true"}'},
    )
    assert check_stack([EKS, policy, cni]) == {}
    assert "network-policies-enforced" in check_stack([EKS, policy])
    plain_cni = StackResource(rules.EKS_ADDON, "c-vpc-cni", {"addonName": aws_facts.VPC_CNI_ADDON})
    assert "network-policies-enforced" in check_stack([EKS, policy, plain_cni])
    assert check_stack([policy]) == {}, "an existing cluster's CNI is its own"
