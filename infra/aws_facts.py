"""Upstream AWS facts the program and the policy pack check against, each with its source; no Pulumi import.

Kept in one place so that a version bump or a new instance type is one edit here (and a test run). The policy
pack (policy/rules.py) imports this module too: the checks and the program agree by construction, and the
checks still catch a stack that strays from them.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass

# Amazon EKS Kubernetes release calendar: version -> (end of standard support, end of extended support).
# From the EKS user guide's "Amazon EKS Kubernetes release calendar" (page kubernetes-versions on
# docs.aws.amazon.com; source file latest/ug/versioning/kubernetes-versions.adoc in awsdocs/amazon-eks-user-guide),
# 1.35's dates as endoflife.date/amazon-eks lists them from that calendar. Add a row when AWS releases one.
EKS_SUPPORT_CALENDAR: dict[str, tuple[dt.date, dt.date]] = {
    "1.30": (dt.date(2025, 7, 23), dt.date(2026, 7, 23)),
    "1.31": (dt.date(2025, 11, 26), dt.date(2026, 11, 26)),
    "1.32": (dt.date(2026, 3, 23), dt.date(2027, 3, 23)),
    "1.33": (dt.date(2026, 7, 29), dt.date(2027, 7, 29)),
    "1.34": (dt.date(2026, 12, 2), dt.date(2027, 12, 2)),
    "1.35": (dt.date(2027, 3, 27), dt.date(2028, 3, 27)),
}

# AWS managed policies an EKS managed node group's role needs: join the cluster, run the VPC CNI, pull the
# add-on images (VPC CNI, kube-proxy, CoreDNS, EBS CSI) from AWS's own ECR registries and ours.
# Source: docs.aws.amazon.com/eks/latest/userguide/create-node-role.html ("the built-in add-ons for networking
# run pods that use container images from Amazon ECR": AmazonEC2ContainerRegistryPullOnly).
EKS_NODE_POLICIES: tuple[str, ...] = (
    "arn:aws:iam::aws:policy/AmazonEKSWorkerNodePolicy",
    "arn:aws:iam::aws:policy/AmazonEKS_CNI_Policy",
    "arn:aws:iam::aws:policy/AmazonEC2ContainerRegistryPullOnly",
)
# The EBS CSI driver's controller: its IRSA role and the managed policy it needs.
# Source: docs.aws.amazon.com/eks/latest/userguide/ebs-csi.html (service account ebs-csi-controller-sa in
# kube-system, policy AmazonEBSCSIDriverPolicy).
EBS_CSI_ADDON = "aws-ebs-csi-driver"
EBS_CSI_POLICY = "arn:aws:iam::aws:policy/service-role/AmazonEBSCSIDriverPolicy"
EBS_CSI_NAMESPACE, EBS_CSI_SERVICE_ACCOUNT = "kube-system", "ebs-csi-controller-sa"
EBS_CSI_PROVISIONER = "ebs.csi.aws.com"
# The VPC CNI add-on enforces NetworkPolicies only with this configuration value.
# See the EKS user guide page cni-network-policy-configure on docs.aws.amazon.com.
VPC_CNI_ADDON = "vpc-cni"
VPC_CNI_NETWORK_POLICY = {"enableNetworkPolicy": "true"}
DEFAULT_STORAGE_CLASS_ANNOTATION = "storageclass.kubernetes.io/is-default-class"
# Tag on an EKS cluster whose stack deploys from inside the VPC: the policy pack then accepts a private-only
# endpoint (infra/components/cluster.py sets it, policy/rules.py reads it).
API_ACCESS_TAG, INSIDE_VPC = "lockgate.dev/api-access", "inside-vpc"


@dataclass(frozen=True)
class InstanceType:
    """What the EC2 API reports for an instance type, plus the pods its ENIs allow."""

    vcpus: int
    memory_mib: int
    max_pods: int
    architecture: str  # a Docker platform: linux/amd64 or linux/arm64


# vCPUs and memory: aws ec2 describe-instance-types; max pods: amazon-vpc-cni-k8s misc/eni-max-pods.txt.
INSTANCE_TYPES: dict[str, InstanceType] = {
    "m6i.large": InstanceType(2, 8192, 29, "linux/amd64"),
    "m6i.xlarge": InstanceType(4, 16384, 58, "linux/amd64"),
    "m6i.2xlarge": InstanceType(8, 32768, 58, "linux/amd64"),
    "m7i.large": InstanceType(2, 8192, 29, "linux/amd64"),
    "m7i.xlarge": InstanceType(4, 16384, 58, "linux/amd64"),
    "m7i.2xlarge": InstanceType(8, 32768, 58, "linux/amd64"),
    "m7g.large": InstanceType(2, 8192, 29, "linux/arm64"),
    "m7g.xlarge": InstanceType(4, 16384, 58, "linux/arm64"),
    "m7g.2xlarge": InstanceType(8, 32768, 58, "linux/arm64"),
}
# Graviton families carry a "g" after the generation digit (m7g, c7gn, r8g).
GRAVITON = re.compile(r"^[a-z]+[0-9]+g[a-z]*\.")
# What the node's own pods take before ours: aws-node (with the network policy agent), kube-proxy, the EBS
# CSI node plugin and Prometheus' node-exporter. Their requests, rounded up (EKS add-on defaults).
DAEMONSET_CPU_MILLI, DAEMONSET_MEMORY_MIB = 300, 600
# The kernel and firmware keep part of the nominal memory: kubelet's capacity is about 4% below it.
KERNEL_MEMORY_FRACTION = 0.04
EVICTION_HARD_MEMORY_MIB = 100


def architecture(instance_type: str) -> str:
    """The Docker platform an instance type runs (Graviton families are arm64)."""
    known = INSTANCE_TYPES.get(instance_type)
    if known is not None:
        return known.architecture
    return "linux/arm64" if GRAVITON.match(instance_type) else "linux/amd64"


def kube_reserved_cpu_milli(vcpus: int) -> int:
    """CPU the EKS AMIs reserve for the kubelet, in millicores.

    6% of the first core, 1% of the second, 0.5% of the next two, 0.25% of the rest (awslabs/amazon-eks-ami,
    nodeadm's kube-reserved defaults).
    """
    shares = [60, 10, 5, 5]
    return sum(shares[:vcpus]) + math.ceil(max(0, vcpus - 4) * 2.5)


def allocatable(instance_type: str) -> tuple[int, int] | None:
    """(millicores, MiB) left for our pods on one node of this type; None for a type this table lacks.

    Capacity minus kube-reserved, the eviction threshold, the kernel's share and the node's daemon sets.
    """
    known = INSTANCE_TYPES.get(instance_type)
    if known is None:
        return None
    cpu = known.vcpus * 1000 - kube_reserved_cpu_milli(known.vcpus) - DAEMONSET_CPU_MILLI
    reserved_memory = 11 * known.max_pods + 255  # MiB, the EKS AMIs' kube-reserved memory
    memory = (
        known.memory_mib * (1 - KERNEL_MEMORY_FRACTION)
        - reserved_memory
        - EVICTION_HARD_MEMORY_MIB
        - DAEMONSET_MEMORY_MIB
    )
    return int(cpu), math.floor(memory)


def cpu_milli(quantity: str) -> int:
    """A Kubernetes CPU quantity in millicores ("2" → 2000, "500m" → 500)."""
    return int(quantity[:-1]) if quantity.endswith("m") else int(float(quantity) * 1000)


def memory_mib(quantity: str) -> int:
    """A Kubernetes memory quantity in MiB ("16Gi" → 16384, "512Mi" → 512, "1G" → 953)."""
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "Ti": 1024 * 1024, "k": 1e3 / 2**20, "M": 1e6 / 2**20}
    units["G"] = 1e9 / 2**20
    for suffix in sorted(units, key=len, reverse=True):
        if quantity.endswith(suffix):
            return math.ceil(float(quantity[: -len(suffix)]) * units[suffix])
    return math.ceil(int(quantity) / 2**20)


def eks_version_problem(version: str, today: dt.date) -> str | None:
    """Why a Kubernetes version cannot be used for a new EKS cluster today (None: it can)."""
    dates = EKS_SUPPORT_CALENDAR.get(version)
    if dates is None:
        return f"{version} is not in the EKS release calendar (known: {', '.join(EKS_SUPPORT_CALENDAR)})"
    if today > dates[0]:
        return f"{version} left EKS standard support on {dates[0].isoformat()}: choose a newer version"
    return None


def is_routable_public_network(cidr: str) -> bool:
    """Whether a CIDR names real internet addresses (not private, documentation, shared or reserved)."""
    import ipaddress

    network = ipaddress.ip_network(cidr, strict=False)
    return network.prefixlen > 0 and network.is_global
