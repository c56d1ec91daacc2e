"""Namespace: where the workloads live, with the restricted Pod Security profile and ingress denied by default."""

from __future__ import annotations

from typing import TypedDict

import pulumi
import pulumi_kubernetes as k8s

from infra import kube


class NamespaceArgs(TypedDict):
    """The namespace's name (unique per stack on a shared cluster)."""

    namespace: str


class Namespace(pulumi.ComponentResource):
    """A namespace that refuses privileged pods and accepts no traffic no NetworkPolicy allows."""

    name: pulumi.Output[str]

    def __init__(self, name: str, args: NamespaceArgs, opts: pulumi.ResourceOptions | None = None):
        if not args["namespace"]:
            raise ValueError("namespace: must not be empty")
        super().__init__("lockgate:platform:Namespace", name, None, opts)
        namespace = k8s.core.v1.Namespace(
            f"{name}-namespace",
            metadata={
                "name": args["namespace"],
                "labels": {
                    **kube.labels(args["namespace"], "namespace"),
                    "pod-security.kubernetes.io/enforce": "restricted",
                    "pod-security.kubernetes.io/enforce-version": "latest",
                    "pod-security.kubernetes.io/warn": "restricted",
                },
            },
            opts=pulumi.ResourceOptions(parent=self),
        )
        kube.network_policy(
            f"{name}-default-deny",
            {"name": "default-deny-ingress", "namespace": namespace.metadata.name},
            pod_selector=None,
            rules=None,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.name = namespace.metadata.name
        self.register_outputs({"name": self.name})
