"""Cluster: the Kubernetes provider every in-cluster resource goes through, for an existing cluster or EKS."""

from __future__ import annotations

import json
from typing import TypedDict

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from infra import kms

EKS_NODE_POLICIES: tuple[str, ...] = (
    "arn:aws:iam::aws:policy/AmazonEKSWorkerNodePolicy",
    "arn:aws:iam::aws:policy/AmazonEKS_CNI_Policy",
)


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
    instance_types: list[str]
    min_size: int
    desired_size: int
    max_size: int
    disk_size_gib: int
    # The ECR repository the nodes pull from: node pull rights are scoped to it.
    image_repository_arn: pulumi.Input[str]


def kubeconfig_for(
    name: pulumi.Input[str], endpoint: pulumi.Input[str], ca_data: pulumi.Input[str]
) -> pulumi.Output[str]:
    """A kubeconfig that authenticates through `aws eks get-token` (no static credentials)."""

    def render(values: list[str]) -> str:
        cluster, server, authority = values
        return json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {"name": cluster, "cluster": {"server": server, "certificate-authority-data": authority}}
                ],
                "contexts": [{"name": cluster, "context": {"cluster": cluster, "user": cluster}}],
                "current-context": cluster,
                "users": [
                    {
                        "name": cluster,
                        "user": {
                            "exec": {
                                "apiVersion": "client.authentication.k8s.io/v1beta1",
                                "command": "aws",
                                "args": ["eks", "get-token", "--cluster-name", cluster, "--output", "json"],
                            }
                        },
                    }
                ],
            }
        )

    return pulumi.Output.all(name, endpoint, ca_data).apply(render)


def assume_role_policy(service: str) -> str:
    """A trust policy letting one AWS service assume the role."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}],
        }
    )


class EksCluster(pulumi.ComponentResource):
    """EKS with envelope-encrypted secrets, a private endpoint by default, managed nodes and IRSA."""

    provider: k8s.Provider
    cluster_name: pulumi.Output[str]
    kubeconfig: pulumi.Output[str]
    oidc_provider_arn: pulumi.Output[str]
    oidc_issuer: pulumi.Output[str]
    cluster_security_group_id: pulumi.Output[str]

    def __init__(self, name: str, args: EksClusterArgs, opts: pulumi.ResourceOptions | None = None):
        if args["endpoint_public_access"] and not args["public_access_cidrs"]:
            raise ValueError(
                "public_access_cidrs: a public endpoint must name the networks allowed to reach it"
            )
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
            opts=pulumi.ResourceOptions(parent=self, depends_on=[cluster_policy]),
        )
        node_role = aws.iam.Role(
            f"{name}-node-role", assume_role_policy=assume_role_policy("ec2.amazonaws.com"), opts=child
        )
        attachments = [
            aws.iam.RolePolicyAttachment(
                f"{name}-node-policy-{index}", role=node_role.name, policy_arn=arn, opts=child
            )
            for index, arn in enumerate(EKS_NODE_POLICIES)
        ]
        # Pull rights on our repository only, instead of the managed read-only policy on every repository.
        pull = aws.iam.RolePolicy(
            f"{name}-node-ecr-pull",
            role=node_role.id,
            policy=pulumi.Output.from_input(args["image_repository_arn"]).apply(ecr_pull_policy),
            opts=child,
        )
        aws.eks.NodeGroup(
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
            opts=pulumi.ResourceOptions(parent=self, depends_on=[*attachments, pull]),
        )
        issuer = cluster.identities.apply(lambda identities: identities[0].oidcs[0].issuer)
        oidc = aws.iam.OpenIdConnectProvider(
            f"{name}-oidc", url=issuer, client_id_lists=["sts.amazonaws.com"], opts=child
        )
        self.cluster_name = cluster.name
        self.kubeconfig = pulumi.Output.secret(
            kubeconfig_for(cluster.name, cluster.endpoint, cluster.certificate_authority.data)
        )
        self.provider = k8s.Provider(
            f"{name}-k8s", kubeconfig=self.kubeconfig, enable_server_side_apply=True, opts=child
        )
        self.oidc_provider_arn = oidc.arn
        self.oidc_issuer = issuer.apply(lambda url: url.removeprefix("https://"))
        self.cluster_security_group_id = cluster.vpc_config.cluster_security_group_id
        self.register_outputs(
            {
                "cluster_name": self.cluster_name,
                "kubeconfig": self.kubeconfig,
                "oidc_provider_arn": self.oidc_provider_arn,
                "oidc_issuer": self.oidc_issuer,
                "cluster_security_group_id": self.cluster_security_group_id,
            }
        )


def ecr_pull_policy(repository_arn: str) -> str:
    """Pull images from one repository (the token call cannot be scoped to a resource)."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Action": "ecr:GetAuthorizationToken", "Resource": "*"},
                {
                    "Effect": "Allow",
                    "Action": [
                        "ecr:BatchGetImage",
                        "ecr:GetDownloadUrlForLayer",
                        "ecr:BatchCheckLayerAvailability",
                    ],
                    "Resource": repository_arn,
                },
            ],
        }
    )
