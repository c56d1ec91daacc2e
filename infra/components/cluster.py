"""Cluster: the Kubernetes provider every in-cluster resource goes through, for an existing cluster or EKS.

On EKS the provider waits for the node group and the add-ons (VPC CNI with NetworkPolicy enforcement, the EBS
CSI driver) and a default gp3 StorageClass exists: Helm releases and volume claims never race empty nodes,
and on `pulumi destroy` every in-cluster object is deleted before the nodes that run their operators.
"""

from __future__ import annotations

import json
from typing import TypedDict

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from infra import aws_facts, kms
from infra.aws_facts import API_ACCESS_TAG, EKS_NODE_POLICIES, INSIDE_VPC
from infra.components.iam import irsa_trust_policy

DEFAULT_STORAGE_CLASS = "gp3"


class ExistingClusterArgs(TypedDict):
    """A cluster reached through a kubeconfig file (None: the default loading rules) and context."""

    kubeconfig: str | None
    context: str | None


class ExistingCluster(pulumi.ComponentResource):
    """A provider for a cluster that already exists (kind, k3d, minikube, a company cluster)."""

    provider: k8s.Provider
    kubeconfig_source: pulumi.Output[str]

    def __init__(self, name: str, args: ExistingClusterArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("lockgate:cluster:ExistingCluster", name, None, opts)
        self.provider = k8s.Provider(
            f"{name}-k8s",
            kubeconfig=args["kubeconfig"],
            context=args["context"],
            # Server-side apply: field ownership is explicit, so Pulumi and the operators do not fight.
            enable_server_side_apply=True,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.kubeconfig_source = pulumi.Output.from_input(args["kubeconfig"] or "default loading rules")
        self.register_outputs({"kubeconfig_source": self.kubeconfig_source})


class EksClusterArgs(TypedDict):
    """An EKS control plane and one managed node group in the given private subnets."""

    # The cluster's AWS name; the VPC's subnets are tagged with it for load balancer discovery.
    cluster_name: str
    kubernetes_version: str
    vpc_id: pulumi.Input[str]
    private_subnet_ids: pulumi.Input[list[str]]
    endpoint_public_access: bool
    public_access_cidrs: list[str]
    # Pulumi runs inside the VPC (the only way a private-only endpoint is reachable).
    deploy_from_inside_vpc: bool
    instance_types: list[str]
    min_size: int
    desired_size: int
    max_size: int
    disk_size_gib: int
    # Where the cluster is and which credentials reach it: written into the kubeconfig's `aws eks get-token`,
    # so the token comes from the account and region that created the cluster, whatever the shell's defaults.
    region: pulumi.Input[str]
    aws_profile: str | None


def kubeconfig_for(
    name: pulumi.Input[str],
    endpoint: pulumi.Input[str],
    ca_data: pulumi.Input[str],
    region: pulumi.Input[str],
    aws_profile: str | None = None,
) -> pulumi.Output[str]:
    """A kubeconfig that authenticates through `aws eks get-token` (no static credentials).

    The region and profile are explicit: without them the token is requested wherever the caller's
    environment points (another region's cluster of the same name, or no credentials at all).
    """

    def render(values: list[str]) -> str:
        cluster, server, authority, where = values
        command = ["eks", "get-token", "--cluster-name", cluster, "--region", where, "--output", "json"]
        credentials: dict[str, object] = {
            "apiVersion": "client.authentication.k8s.io/v1beta1",
            "command": "aws",
            "args": command,
        }
        if aws_profile:
            credentials["env"] = [{"name": "AWS_PROFILE", "value": aws_profile}]
        return json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {"name": cluster, "cluster": {"server": server, "certificate-authority-data": authority}}
                ],
                "contexts": [{"name": cluster, "context": {"cluster": cluster, "user": cluster}}],
                "current-context": cluster,
                "users": [{"name": cluster, "user": {"exec": credentials}}],
            }
        )

    return pulumi.Output.all(name, endpoint, ca_data, region).apply(render)


def assume_role_policy(service: str) -> str:
    """A trust policy letting one AWS service assume the role."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}],
        }
    )


class EksCluster(pulumi.ComponentResource):
    """EKS with envelope-encrypted secrets, a reachable endpoint, managed nodes, IRSA, NetworkPolicy and EBS."""

    provider: k8s.Provider
    cluster_name: pulumi.Output[str]
    kubeconfig: pulumi.Output[str]
    oidc_provider_arn: pulumi.Output[str]
    oidc_issuer: pulumi.Output[str]
    cluster_security_group_id: pulumi.Output[str]
    storage_class: pulumi.Output[str]

    def __init__(self, name: str, args: EksClusterArgs, opts: pulumi.ResourceOptions | None = None):
        if args["endpoint_public_access"] and not args["public_access_cidrs"]:
            raise ValueError(
                "public_access_cidrs: a public endpoint must name the networks allowed to reach it"
            )
        if not args["endpoint_public_access"] and not args["deploy_from_inside_vpc"]:
            raise ValueError(
                "deploy_from_inside_vpc: a private-only endpoint is reachable only from inside the VPC"
            )
        unroutable = [c for c in args["public_access_cidrs"] if not aws_facts.is_routable_public_network(c)]
        if unroutable:
            raise ValueError(f"public_access_cidrs: not routable public networks: {unroutable}")
        if not args["min_size"] <= args["desired_size"] <= args["max_size"]:
            raise ValueError("desired_size: must lie between min_size and max_size")
        super().__init__("lockgate:cluster:EksCluster", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        key = kms.rotating_key(
            f"{name}-secrets-key", f"{name}: envelope encryption of Kubernetes secrets", child
        )
        cluster_role = aws.iam.Role(
            f"{name}-cluster-role", assume_role_policy=assume_role_policy("eks.amazonaws.com"), opts=child
        )
        cluster_policy = aws.iam.RolePolicyAttachment(
            f"{name}-cluster-policy",
            role=cluster_role.name,
            policy_arn="arn:aws:iam::aws:policy/AmazonEKSClusterPolicy",
            opts=child,
        )
        cluster = aws.eks.Cluster(
            f"{name}-eks",
            name=args["cluster_name"],
            role_arn=cluster_role.arn,
            version=args["kubernetes_version"],
            vpc_config={
                "subnet_ids": args["private_subnet_ids"],
                "endpoint_private_access": True,
                "endpoint_public_access": args["endpoint_public_access"],
                "public_access_cidrs": args["public_access_cidrs"]
                if args["endpoint_public_access"]
                else None,
            },
            encryption_config={"provider": {"key_arn": key.arn}, "resources": ["secrets"]},
            access_config={"authentication_mode": "API", "bootstrap_cluster_creator_admin_permissions": True},
            enabled_cluster_log_types=["api", "audit", "authenticator"],
            tags={API_ACCESS_TAG: INSIDE_VPC} if args["deploy_from_inside_vpc"] else None,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[cluster_policy]),
        )
        node_role = aws.iam.Role(
            f"{name}-node-role", assume_role_policy=assume_role_policy("ec2.amazonaws.com"), opts=child
        )
        # AWS's managed minimum (aws_facts.EKS_NODE_POLICIES): the add-on images (VPC CNI, kube-proxy,
        # CoreDNS, EBS CSI) come from AWS's own ECR registries, which a policy scoped to our repository misses.
        attachments = [
            aws.iam.RolePolicyAttachment(
                f"{name}-node-policy-{index}", role=node_role.name, policy_arn=arn, opts=child
            )
            for index, arn in enumerate(EKS_NODE_POLICIES)
        ]
        # The VPC CNI as a managed add-on, before the nodes: its network policy agent enforces NetworkPolicies
        # (without it EKS accepts them and enforces nothing).
        vpc_cni = aws.eks.Addon(
            f"{name}-vpc-cni",
            cluster_name=cluster.name,
            addon_name=aws_facts.VPC_CNI_ADDON,
            configuration_values=json.dumps(aws_facts.VPC_CNI_NETWORK_POLICY),
            resolve_conflicts_on_create="OVERWRITE",
            resolve_conflicts_on_update="OVERWRITE",
            opts=child,
        )
        nodes = aws.eks.NodeGroup(
            f"{name}-nodes",
            cluster_name=cluster.name,
            node_role_arn=node_role.arn,
            subnet_ids=args["private_subnet_ids"],
            instance_types=args["instance_types"],
            disk_size=args["disk_size_gib"],
            scaling_config={
                "min_size": args["min_size"],
                "desired_size": args["desired_size"],
                "max_size": args["max_size"],
            },
            update_config={"max_unavailable": 1},
            opts=pulumi.ResourceOptions(parent=self, depends_on=[*attachments, vpc_cni]),
        )
        issuer = cluster.identities.apply(lambda identities: identities[0].oidcs[0].issuer)
        oidc = aws.iam.OpenIdConnectProvider(
            f"{name}-oidc", url=issuer, client_id_lists=["sts.amazonaws.com"], opts=child
        )
        self.oidc_provider_arn = oidc.arn
        self.oidc_issuer = issuer.apply(lambda url: url.removeprefix("https://"))
        ebs_csi = self._ebs_csi_driver(name, cluster.name, nodes)
        self.cluster_name = cluster.name
        self.kubeconfig = pulumi.Output.secret(
            kubeconfig_for(
                cluster.name,
                cluster.endpoint,
                cluster.certificate_authority.data,
                args["region"],
                args["aws_profile"],
            )
        )
        # Everything in the cluster goes through this provider: it waits for nodes and add-ons (Helm releases
        # need somewhere to run), and `pulumi destroy` removes every in-cluster object before the nodes go.
        self.provider = k8s.Provider(
            f"{name}-k8s",
            kubeconfig=self.kubeconfig,
            enable_server_side_apply=True,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[nodes, vpc_cni, ebs_csi]),
        )
        storage_class = k8s.storage.v1.StorageClass(
            f"{name}-{DEFAULT_STORAGE_CLASS}",
            metadata={
                "name": DEFAULT_STORAGE_CLASS,
                "annotations": {aws_facts.DEFAULT_STORAGE_CLASS_ANNOTATION: "true"},
            },
            provisioner=aws_facts.EBS_CSI_PROVISIONER,
            parameters={"type": "gp3", "encrypted": "true"},
            reclaim_policy="Delete",
            volume_binding_mode="WaitForFirstConsumer",
            allow_volume_expansion=True,
            opts=pulumi.ResourceOptions(parent=self, provider=self.provider),
        )
        self.storage_class = storage_class.metadata.name
        self.cluster_security_group_id = cluster.vpc_config.cluster_security_group_id
        self.register_outputs(
            {
                "cluster_name": self.cluster_name,
                "kubeconfig": self.kubeconfig,
                "oidc_provider_arn": self.oidc_provider_arn,
                "oidc_issuer": self.oidc_issuer,
                "cluster_security_group_id": self.cluster_security_group_id,
                "storage_class": self.storage_class,
            }
        )

    def _ebs_csi_driver(
        self, name: str, cluster_name: pulumi.Input[str], nodes: aws.eks.NodeGroup
    ) -> aws.eks.Addon:
        """The EBS CSI driver add-on, its controller on an IRSA role with AWS's managed EBS policy.

        After the nodes: the add-on's controller is a Deployment, which is not healthy without a node.
        """
        child = pulumi.ResourceOptions(parent=self)
        trust = pulumi.Output.all(self.oidc_provider_arn, self.oidc_issuer).apply(
            lambda values: irsa_trust_policy(
                values[0], values[1], aws_facts.EBS_CSI_NAMESPACE, aws_facts.EBS_CSI_SERVICE_ACCOUNT
            )
        )
        role = aws.iam.Role(f"{name}-ebs-csi-role", assume_role_policy=trust, opts=child)
        attachment = aws.iam.RolePolicyAttachment(
            f"{name}-ebs-csi-policy", role=role.name, policy_arn=aws_facts.EBS_CSI_POLICY, opts=child
        )
        return aws.eks.Addon(
            f"{name}-ebs-csi",
            cluster_name=cluster_name,
            addon_name=aws_facts.EBS_CSI_ADDON,
            service_account_role_arn=role.arn,
            resolve_conflicts_on_create="OVERWRITE",
            resolve_conflicts_on_update="OVERWRITE",
            opts=pulumi.ResourceOptions(parent=self, depends_on=[nodes, attachment]),
        )
