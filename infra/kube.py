"""Kubernetes building blocks every component uses: labels, hardened containers, resource bounds, policies."""

from __future__ import annotations

from typing import Any

PART_OF = "lockgate"
# Annotation the program puts on a Service only when the stack asked for a public endpoint; the policy
# pack allows a public LoadBalancer only with it.
PUBLIC_ENDPOINT_ANNOTATION = "lockgate.dev/public-endpoint"
# Pod label granting access to MLflow and the artefact store through their NetworkPolicies.
CLIENT_LABEL = "lockgate.dev/mlflow-client"


def labels(instance: str, component: str) -> dict[str, str]:
    """Recommended labels; ``instance`` + ``component`` select one workload's pods."""
    return {
        "app.kubernetes.io/name": component,
        "app.kubernetes.io/instance": instance,
        "app.kubernetes.io/part-of": PART_OF,
        "app.kubernetes.io/managed-by": "pulumi",
    }


def selector(instance: str, component: str) -> dict[str, str]:
    """The subset of ``labels`` that selects one workload's pods (immutable in a Deployment)."""
    return {"app.kubernetes.io/name": component, "app.kubernetes.io/instance": instance}


def resources(
    cpu: str, memory: str, limit_cpu: str | None = None, limit_memory: str | None = None
) -> dict[str, Any]:
    """Requests and limits; memory limit equals the request unless given (no overcommit of memory)."""
    return {
        "requests": {"cpu": cpu, "memory": memory},
        "limits": {"cpu": limit_cpu or cpu, "memory": limit_memory or memory},
    }


def container_security(user: int) -> dict[str, Any]:
    """A container that runs as a fixed non-root user with no privilege escalation and no capabilities."""
    return {
        "runAsNonRoot": True,
        "runAsUser": user,
        "runAsGroup": user,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod_security(user: int) -> dict[str, Any]:
    """Pod-level security: non-root, volumes owned by the user's group, default seccomp."""
    return {
        "runAsNonRoot": True,
        "runAsUser": user,
        "runAsGroup": user,
        "fsGroup": user,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def secret_env(name: str, secret: Any, key: str) -> dict[str, Any]:
    """An env var read from a Kubernetes Secret key (the value never appears in a manifest)."""
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def ingress_rule(ports: list[int], peers: list[dict[str, Any]]) -> dict[str, Any]:
    """A NetworkPolicy ingress rule: these TCP ports from these peers."""
    return {"from": peers, "ports": [{"protocol": "TCP", "port": port} for port in ports]}


def same_namespace_pods(match_labels: dict[str, str] | None = None) -> dict[str, Any]:
    """A peer: pods of the policy's own namespace (all of them, or those with these labels)."""
    return {"podSelector": {"matchLabels": match_labels} if match_labels else {}}


def namespace_peer(namespace: str) -> dict[str, Any]:
    """A peer: every pod of another namespace (by its immutable name label)."""
    return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}
