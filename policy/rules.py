"""The policy pack's rules as plain functions over resource type + engine properties (camelCase).

Each returns a list of violation messages (empty: compliant). policy/__main__.py wraps them as mandatory
pulumi-policy rules; tests call them directly on good and bad fixtures and on every resource the shipped
stacks declare.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

# The AWS facts (EKS calendar, node policies, add-on names), each with its source; a plain module.
from infra import aws_facts

PUBLIC_ENDPOINT_ANNOTATION = "lockgate.dev/public-endpoint"
INTERNAL_LB_ANNOTATIONS: dict[str, str] = {
    "service.beta.kubernetes.io/aws-load-balancer-scheme": "internal",
    "service.beta.kubernetes.io/aws-load-balancer-internal": "true",
    "networking.gke.io/load-balancer-type": "Internal",
    "service.beta.kubernetes.io/azure-load-balancer-internal": "true",
}
BUCKET = "aws:s3/bucket:Bucket"
PUBLIC_ACCESS_BLOCK = "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock"
BUCKET_ENCRYPTION = "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"
BUCKET_POLICY = "aws:s3/bucketPolicy:BucketPolicy"
ECR_REPOSITORY = "aws:ecr/repository:Repository"
RDS_INSTANCE = "aws:rds/instance:Instance"
EKS_CLUSTER = "aws:eks/cluster:Cluster"
K8S_SERVICE = "kubernetes:core/v1:Service"
NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"
EKS_ADDON = "aws:eks/addon:Addon"
ROLE_POLICY_ATTACHMENT = "aws:iam/rolePolicyAttachment:RolePolicyAttachment"
STORAGE_CLASS = "kubernetes:storage.k8s.io/v1:StorageClass"
NETWORK_POLICY = "kubernetes:networking.k8s.io/v1:NetworkPolicy"
HELM_RELEASE = "kubernetes:helm.sh/v3:Release"
# Pulumi's Kubernetes provider awaits a custom resource only with this annotation (provider v4.18.0+,
# pulumi/pulumi-kubernetes#3134); without it `pulumi up` reports success for a RayService that never runs.
WAIT_FOR_ANNOTATION = "pulumi.com/waitFor"
AWAITED_KINDS = (
    "kubernetes:ray.io/v1:RayService",
    "kubernetes:ray.io/v1:RayCluster",
    "kubernetes:ray.io/v1:RayJob",
)
PUBLIC_ACLS = frozenset({"public-read", "public-read-write", "authenticated-read"})
BLOCK_SETTINGS = ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")


@dataclass(frozen=True)
class StackResource:
    """One resource of a stack as a stack rule sees it."""

    type: str
    name: str
    props: Mapping[str, Any]
    # The parent resource's URN ("" at the stack's root).
    parent: str = ""


ResourceRule = Callable[[str, Mapping[str, Any]], list[str]]
StackRule = Callable[[list[StackResource]], list[str]]


def no_public_buckets(resource_type: str, props: Mapping[str, Any]) -> list[str]:
    """A bucket is never public: no public ACL, a full public access block, no Allow to everyone."""
    problems = []
    if resource_type == BUCKET and props.get("acl") in PUBLIC_ACLS:
        problems.append(f"bucket ACL {props['acl']!r} makes it public")
    if resource_type == PUBLIC_ACCESS_BLOCK:
        problems.extend(
            f"public access block must set {key}: true"
            for key in BLOCK_SETTINGS
            if props.get(key) is not True
        )
    if resource_type == BUCKET_POLICY:
        policy = props.get("policy")
        document = json.loads(policy) if isinstance(policy, str) else policy or {}
        statements = document.get("Statement", [])
        for statement in statements if isinstance(statements, list) else [statements]:
            principal = statement.get("Principal")
            everyone = principal == "*" or (isinstance(principal, dict) and principal.get("AWS") == "*")
            if statement.get("Effect") == "Allow" and everyone:
                problems.append("bucket policy allows access to everyone (Principal '*')")
    return problems


def encryption_at_rest(resource_type: str, props: Mapping[str, Any]) -> list[str]:
    """Databases, Kubernetes secrets, images and bucket defaults are encrypted at rest."""
    if resource_type == RDS_INSTANCE and props.get("storageEncrypted") is not True:
        return ["RDS storage must be encrypted (storageEncrypted: true)"]
    if resource_type == EKS_CLUSTER:
        config = props.get("encryptionConfig") or {}
        if "secrets" not in (config.get("resources") or []) or not (config.get("provider") or {}).get(
            "keyArn"
        ):
            return ["EKS must encrypt Kubernetes secrets with a KMS key (encryptionConfig)"]
    if resource_type == BUCKET_ENCRYPTION:
        rules = props.get("rules") or []
        algorithms = [
            (rule.get("applyServerSideEncryptionByDefault") or {}).get("sseAlgorithm") for rule in rules
        ]
        if not algorithms or any(a not in ("aws:kms", "aws:kms:dsse", "AES256") for a in algorithms):
            return ["bucket default encryption must be aws:kms or AES256"]
    return []


def ecr_scan_and_immutable(resource_type: str, props: Mapping[str, Any]) -> list[str]:
    """ECR repositories scan every push and never let a tag move."""
    if resource_type != ECR_REPOSITORY:
        return []
    problems = []
    if props.get("imageTagMutability") != "IMMUTABLE":
        problems.append("ECR tags must be immutable (imageTagMutability: IMMUTABLE)")
    if (props.get("imageScanningConfiguration") or {}).get("scanOnPush") is not True:
        problems.append("ECR must scan on push (imageScanningConfiguration.scanOnPush: true)")
    return problems


def rds_private_and_backed_up(resource_type: str, props: Mapping[str, Any]) -> list[str]:
    """RDS instances are private and keep automated backups."""
    if resource_type != RDS_INSTANCE:
        return []
    problems = []
    if props.get("publiclyAccessible") is True:
        problems.append("RDS must not be publicly accessible")
    if int(props.get("backupRetentionPeriod") or 0) < 1:
        problems.append("RDS must keep automated backups (backupRetentionPeriod >= 1)")
    return problems


def eks_endpoint_not_public(resource_type: str, props: Mapping[str, Any]) -> list[str]:
    """The EKS API endpoint is private, or public only to named networks (never 0.0.0.0/0)."""
    if resource_type != EKS_CLUSTER:
        return []
    vpc = props.get("vpcConfig") or {}
    # The provider's default for endpointPublicAccess is true: unset is public.
    if vpc.get("endpointPublicAccess", True) is False:
        return []
    cidrs = vpc.get("publicAccessCidrs") or []
    if not cidrs:
        return [
            "EKS endpoint is public to everyone: set endpointPublicAccess false or name publicAccessCidrs"
        ]
    if any(ipaddress.ip_network(cidr).prefixlen == 0 for cidr in cidrs):
        return ["EKS endpoint is open to 0.0.0.0/0: name the networks allowed to reach it"]
    return []


def eks_version_supported(resource_type: str, props: Mapping[str, Any]) -> list[str]:
    """EKS runs a Kubernetes version in standard support today (the release calendar in infra/aws_facts.py)."""
    if resource_type != EKS_CLUSTER:
        return []
    version = props.get("version")
    if not isinstance(version, str):
        return ["EKS version must be set explicitly (the provider's default moves)"]
    problem = aws_facts.eks_version_problem(version, dt.date.today())
    return [problem] if problem else []


def eks_endpoint_reachable(resource_type: str, props: Mapping[str, Any]) -> list[str]:
    """The program can reach the API it creates: a public endpoint for routable networks, or inside the VPC."""
    if resource_type != EKS_CLUSTER:
        return []
    vpc = props.get("vpcConfig") or {}
    tags = props.get("tags") or {}
    if vpc.get("endpointPublicAccess", True) is False:
        if tags.get(aws_facts.API_ACCESS_TAG) != aws_facts.INSIDE_VPC:
            return [
                "a private-only EKS endpoint is unreachable from outside the VPC: open it to your networks, "
                f"or tag the cluster {aws_facts.API_ACCESS_TAG}={aws_facts.INSIDE_VPC} when deploying from inside"
            ]
        return []
    unroutable = [
        cidr
        for cidr in vpc.get("publicAccessCidrs") or []
        if isinstance(cidr, str) and not aws_facts.is_routable_public_network(cidr)
    ]
    if unroutable:
        return [
            f"publicAccessCidrs {unroutable} are not routable public networks: nobody can reach the endpoint"
        ]
    return []


def custom_resources_awaited(resource_type: str, props: Mapping[str, Any]) -> list[str]:
    """Ray custom resources carry Pulumi's waitFor annotation, so a broken one fails `pulumi up`."""
    if resource_type not in AWAITED_KINDS:
        return []
    annotations = (props.get("metadata") or {}).get("annotations") or {}
    if not annotations.get(WAIT_FOR_ANNOTATION):
        kind = resource_type.rsplit(":", 1)[-1]
        return [f"{kind} needs the {WAIT_FOR_ANNOTATION} annotation (else Pulumi never awaits it)"]
    return []


def no_public_load_balancer(resource_type: str, props: Mapping[str, Any]) -> list[str]:
    """No internet-facing LoadBalancer Service, unless the stack asked for one (and marked it)."""
    services: list[Mapping[str, Any]] = []
    if resource_type == K8S_SERVICE:
        services.append(props)
    elif resource_type == "kubernetes:ray.io/v1:RayService":
        serve_service = (props.get("spec") or {}).get("serveService")
        if serve_service:
            services.append(serve_service)
    problems = []
    for service in services:
        if (service.get("spec") or {}).get("type") != "LoadBalancer":
            continue
        annotations = (service.get("metadata") or {}).get("annotations") or {}
        internal = any(annotations.get(key) == value for key, value in INTERNAL_LB_ANNOTATIONS.items())
        if not internal and annotations.get(PUBLIC_ENDPOINT_ANNOTATION) != "true":
            name = (service.get("metadata") or {}).get("name", "<unnamed>")
            problems.append(f"Service {name} is a public LoadBalancer the stack did not ask for")
    return problems


def pod_specs(resource_type: str, props: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every pod spec a Kubernetes workload declares, with where it sits (including KubeRay's)."""
    if not resource_type.startswith("kubernetes:"):
        return
    spec = props.get("spec") or {}
    kind = resource_type.rsplit(":", 1)[-1]
    if kind == "Pod":
        yield "spec", spec
    elif kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        yield "spec.template.spec", (spec.get("template") or {}).get("spec") or {}
    elif kind == "CronJob":
        job = (spec.get("jobTemplate") or {}).get("spec") or {}
        yield "spec.jobTemplate.spec.template.spec", (job.get("template") or {}).get("spec") or {}
    elif kind == "RayService":
        yield from ray_cluster_pods("spec.rayClusterConfig", spec.get("rayClusterConfig") or {})
    elif kind == "RayCluster":
        yield from ray_cluster_pods("spec", spec)
    elif kind in ("RayJob", "RayCronJob"):
        job = spec.get("jobTemplate") or {} if kind == "RayCronJob" else spec
        prefix = "spec.jobTemplate" if kind == "RayCronJob" else "spec"
        yield from ray_cluster_pods(f"{prefix}.rayClusterSpec", job.get("rayClusterSpec") or {})
        if job.get("submitterPodTemplate"):
            yield f"{prefix}.submitterPodTemplate.spec", job["submitterPodTemplate"].get("spec") or {}


def ray_cluster_pods(prefix: str, cluster: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """The head's and each worker group's pod spec of a RayCluster spec."""
    head = cluster.get("headGroupSpec") or {}
    yield f"{prefix}.headGroupSpec.template.spec", (head.get("template") or {}).get("spec") or {}
    for index, group in enumerate(cluster.get("workerGroupSpecs") or []):
        yield (
            f"{prefix}.workerGroupSpecs.{index}.template.spec",
            (group.get("template") or {}).get("spec") or {},
        )


def containers_bounded_and_non_root(resource_type: str, props: Mapping[str, Any]) -> list[str]:
    """Every container has CPU and memory requests and limits and cannot run as root."""
    problems = []
    for where, pod in pod_specs(resource_type, props):
        pod_non_root = (pod.get("securityContext") or {}).get("runAsNonRoot") is True
        for field in ("initContainers", "containers"):
            for container in pod.get(field) or []:
                name = f"{where}.{field}[{container.get('name', '?')}]"
                resources = container.get("resources") or {}
                for bound in ("requests", "limits"):
                    missing = [r for r in ("cpu", "memory") if r not in (resources.get(bound) or {})]
                    if missing:
                        problems.append(f"{name}: no {bound} for {', '.join(missing)}")
                security = container.get("securityContext") or {}
                if security.get("runAsNonRoot") is False or not (
                    pod_non_root or security.get("runAsNonRoot") is True
                ):
                    problems.append(f"{name}: must run as non-root (runAsNonRoot: true)")
                if security.get("runAsUser") == 0:
                    problems.append(f"{name}: runAsUser 0 is root")
                if (
                    security.get("privileged") is True
                    or security.get("allowPrivilegeEscalation") is not False
                ):
                    problems.append(f"{name}: must set allowPrivilegeEscalation: false and not be privileged")
    return problems


def protects(setting: StackResource, bucket: StackResource) -> bool:
    """Whether a bucket-level setting applies to this bucket.

    By bucket id once known; during a preview of a new stack the id is not known yet, and a setting declared
    beside the bucket (same parent component) counts.
    """
    target = setting.props.get("bucket")
    if isinstance(target, str) and target:
        return target in {bucket.props.get("bucket"), bucket.props.get("id"), bucket.name}
    return bool(bucket.parent) and setting.parent == bucket.parent


def buckets_fully_protected(resources: list[StackResource]) -> list[str]:
    """Every bucket has a public access block and default encryption of its own."""
    buckets = [r for r in resources if r.type == BUCKET]
    problems = []
    for bucket in buckets:
        for kind, label in (
            (PUBLIC_ACCESS_BLOCK, "a public access block"),
            (BUCKET_ENCRYPTION, "default encryption"),
        ):
            if not any(r.type == kind and protects(r, bucket) for r in resources):
                problems.append(f"bucket {bucket.name} has no {label}")
    return problems


def attached_to(attachment: StackResource, node_group: StackResource) -> bool:
    """Whether a role policy attachment is on the node group's role (by name once known, else by parent)."""
    role, arn = attachment.props.get("role"), node_group.props.get("nodeRoleArn")
    if isinstance(role, str) and role and isinstance(arn, str) and arn:
        return arn.endswith((f"/{role}", f":{role}"))
    return bool(node_group.parent) and attachment.parent == node_group.parent


def node_roles_have_required_policies(resources: list[StackResource]) -> list[str]:
    """Every EKS node group's role has AWS's required managed policies (aws_facts.EKS_NODE_POLICIES)."""
    problems = []
    for group in (r for r in resources if r.type == NODE_GROUP):
        attached = {
            r.props.get("policyArn")
            for r in resources
            if r.type == ROLE_POLICY_ATTACHMENT and attached_to(r, group)
        }
        missing = [arn for arn in aws_facts.EKS_NODE_POLICIES if arn not in attached]
        if missing:
            names = ", ".join(arn.rsplit("/", 1)[-1] for arn in missing)
            problems.append(f"node group {group.name}: its role lacks {names}")
    return problems


def claims_volume(resource: StackResource) -> bool:
    """Whether a resource asks for a persistent volume (a claim, a claim template, a chart's storageSpec)."""
    if resource.type == "kubernetes:core/v1:PersistentVolumeClaim":
        return True
    if resource.type == "kubernetes:apps/v1:StatefulSet":
        return bool((resource.props.get("spec") or {}).get("volumeClaimTemplates"))
    if resource.type == HELM_RELEASE:
        return "volumeClaimTemplate" in json.dumps(resource.props.get("values") or {}, default=str)
    return False


def volumes_have_storage(resources: list[StackResource]) -> list[str]:
    """On EKS, a stack that claims volumes installs the EBS CSI driver and a default StorageClass for it."""
    if not any(r.type == EKS_CLUSTER for r in resources):
        return []  # an existing cluster brings its own storage
    claimants = [r.name for r in resources if claims_volume(r)]
    if not claimants:
        return []
    problems = []
    if not any(
        r.type == EKS_ADDON and r.props.get("addonName") == aws_facts.EBS_CSI_ADDON for r in resources
    ):
        problems.append(
            f"{', '.join(claimants)} claim volumes but no {aws_facts.EBS_CSI_ADDON} add-on provides them"
        )
    default_classes = [
        r
        for r in resources
        if r.type == STORAGE_CLASS
        and ((r.props.get("metadata") or {}).get("annotations") or {}).get(
            aws_facts.DEFAULT_STORAGE_CLASS_ANNOTATION
        )
        == "true"
        and r.props.get("provisioner") == aws_facts.EBS_CSI_PROVISIONER
    ]
    if not default_classes:
        problems.append(f"{', '.join(claimants)} claim volumes but no default EBS CSI StorageClass exists")
    return problems


def network_policies_enforced(resources: list[StackResource]) -> list[str]:
    """On EKS, NetworkPolicies take effect only with the VPC CNI add-on's network policy agent enabled."""
    if not any(r.type == EKS_CLUSTER for r in resources) or not any(
        r.type == NETWORK_POLICY for r in resources
    ):
        return []
    for addon in (
        r for r in resources if r.type == EKS_ADDON and r.props.get("addonName") == aws_facts.VPC_CNI_ADDON
    ):
        values = addon.props.get("configurationValues")
        settings = json.loads(values) if isinstance(values, str) and values else {}
        if settings.get("enableNetworkPolicy") == "true":
            return []
    return [
        f"NetworkPolicies are declared but the {aws_facts.VPC_CNI_ADDON} add-on does not enable network policy "
        '(configurationValues enableNetworkPolicy: "true"): EKS would accept them and enforce nothing'
    ]


RESOURCE_RULES: dict[str, tuple[str, ResourceRule]] = {
    "no-public-buckets": ("S3 buckets are never public.", no_public_buckets),
    "encryption-at-rest": ("Data at rest is encrypted (RDS, EKS secrets, S3 defaults).", encryption_at_rest),
    "ecr-scan-and-immutable-tags": ("ECR scans on push and tags are immutable.", ecr_scan_and_immutable),
    "rds-private-and-backed-up": ("RDS is private and backed up.", rds_private_and_backed_up),
    "eks-endpoint-not-public": (
        "The EKS endpoint is private unless limited to named networks.",
        eks_endpoint_not_public,
    ),
    "eks-version-supported": (
        "EKS runs a Kubernetes version in standard support (release calendar in infra/aws_facts.py).",
        eks_version_supported,
    ),
    "eks-endpoint-reachable": (
        "The EKS endpoint is reachable by the program: routable public networks, or deployed from the VPC.",
        eks_endpoint_reachable,
    ),
    "custom-resources-awaited": (
        "Ray custom resources carry pulumi.com/waitFor so that `pulumi up` awaits them.",
        custom_resources_awaited,
    ),
    "no-public-load-balancer": (
        "No public LoadBalancer Service unless the stack asked for one.",
        no_public_load_balancer,
    ),
    "containers-bounded-and-non-root": (
        "Every container has requests and limits and runs as non-root.",
        containers_bounded_and_non_root,
    ),
}
STACK_RULES: dict[str, tuple[str, StackRule]] = {
    "buckets-fully-protected": (
        "Every bucket has a public access block and default encryption.",
        buckets_fully_protected,
    ),
    "node-roles-have-required-policies": (
        "EKS node roles have AWS's required managed policies (including ECR pull for the add-on images).",
        node_roles_have_required_policies,
    ),
    "volumes-have-storage": (
        "On EKS, volume claims have the EBS CSI driver and a default StorageClass.",
        volumes_have_storage,
    ),
    "network-policies-enforced": (
        "On EKS, NetworkPolicies are enforced (VPC CNI network policy enabled).",
        network_policies_enforced,
    ),
}


def check_stack(resources: list[StackResource]) -> dict[str, list[str]]:
    """Run every rule over a stack's resources: rule name → violations (only rules that found any)."""
    found: dict[str, list[str]] = {}
    for rule_name, (_, rule) in RESOURCE_RULES.items():
        for resource in resources:
            for problem in rule(resource.type, resource.props):
                found.setdefault(rule_name, []).append(f"{resource.type} {resource.name}: {problem}")
    for rule_name, (_, stack_rule) in STACK_RULES.items():
        problems = stack_rule(resources)
        if problems:
            found[rule_name] = problems
    return found
