"""Kubernetes building blocks every component uses: labels, hardened containers, resource bounds, policies.

Also the metadata, Services, NetworkPolicies and workload specs several components declare the same way.
"""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_kubernetes as k8s

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


def metadata(
    name: str,
    namespace: pulumi.Input[str],
    instance: str,
    component: str,
    extra_labels: dict[str, str] | None = None,
    annotations: pulumi.Input[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """Object metadata: a name in a namespace with the recommended labels (plus any extra labels, annotations)."""
    meta: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "labels": {**labels(instance, component), **(extra_labels or {})},
    }
    if annotations is not None:
        meta["annotations"] = annotations
    return meta


def resources(
    cpu: str, memory: str, limit_cpu: str | None = None, limit_memory: str | None = None
) -> dict[str, Any]:
    """Requests and limits; memory limit equals the request unless given (no overcommit of memory)."""
    return {
        "requests": {"cpu": cpu, "memory": memory},
        "limits": {"cpu": limit_cpu or cpu, "memory": limit_memory or memory},
    }


def container_security(user: int, read_only_root: bool = False) -> dict[str, Any]:
    """A container that runs as a fixed non-root user with no privilege escalation and no capabilities."""
    security = {
        "runAsNonRoot": True,
        "runAsUser": user,
        "runAsGroup": user,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    return {**security, "readOnlyRootFilesystem": True} if read_only_root else security


def pod_security(user: int) -> dict[str, Any]:
    """Pod-level security: non-root, volumes owned by the user's group, default seccomp."""
    return {
        "runAsNonRoot": True,
        "runAsUser": user,
        "runAsGroup": user,
        "fsGroup": user,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def volume_claim_spec(storage_gib: int) -> dict[str, Any]:
    """A PersistentVolumeClaim spec: one node reads and writes ``storage_gib`` GiB."""
    return {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": f"{storage_gib}Gi"}}}


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


def cluster_service(
    resource_name: str,
    meta: dict[str, Any],
    selector: dict[str, str],
    ports: dict[str, int],
    opts: pulumi.ResourceOptions,
    headless: bool = False,
) -> k8s.core.v1.Service:
    """A ClusterIP Service (headless: no virtual IP) forwarding each named port to the same port of the pods."""
    spec = {
        "type": "ClusterIP",
        **({"clusterIP": "None"} if headless else {}),
        "selector": selector,
        "ports": [{"name": name, "port": port, "targetPort": port} for name, port in ports.items()],
    }
    return k8s.core.v1.Service(resource_name, metadata=meta, spec=spec, opts=opts)


def network_policy(
    resource_name: str,
    meta: dict[str, Any],
    pod_selector: dict[str, str] | None,
    rules: list[dict[str, Any]] | None,
    opts: pulumi.ResourceOptions,
) -> k8s.networking.v1.NetworkPolicy:
    """An ingress NetworkPolicy for the selected pods (None: all of the namespace); no rules: deny all ingress."""
    spec: dict[str, Any] = {
        "podSelector": {"matchLabels": pod_selector} if pod_selector else {},
        "policyTypes": ["Ingress"],
    }
    if rules is not None:
        spec["ingress"] = rules
    return k8s.networking.v1.NetworkPolicy(resource_name, metadata=meta, spec=spec, opts=opts)


def workload_spec(
    replicas: int, selector: dict[str, str], pod_labels: dict[str, str], pod_spec: dict[str, Any]
) -> dict[str, Any]:
    """What a Deployment's and a StatefulSet's spec share: ``replicas`` pods of one template, by ``selector``."""
    return {
        "replicas": replicas,
        "selector": {"matchLabels": selector},
        "template": {"metadata": {"labels": pod_labels}, "spec": pod_spec},
    }


def helm_release(
    resource_name: str,
    chart: str,
    version: str,
    repository: str,
    namespace: pulumi.Input[str],
    values: dict[str, Any],
    opts: pulumi.ResourceOptions,
) -> k8s.helm.v3.Release:
    """A Helm release of ``chart``, named after it so that the objects it makes are named predictably."""
    return k8s.helm.v3.Release(
        resource_name,
        name=chart,
        chart=chart,
        version=version,
        repository_opts={"repo": repository},
        namespace=namespace,
        values=values,
        opts=opts,
    )


def service_account(
    resource_name: str, meta: dict[str, Any], opts: pulumi.ResourceOptions, mount_token: bool = True
) -> k8s.core.v1.ServiceAccount:
    """A workload's own service account; ``mount_token=False`` for pods that never call the Kubernetes API."""
    return k8s.core.v1.ServiceAccount(
        resource_name,
        metadata=meta,
        **({} if mount_token else {"automount_service_account_token": False}),
        opts=opts,
    )


def role_for(
    resource_name: str,
    meta: dict[str, Any],
    rules: list[dict[str, Any]],
    account: k8s.core.v1.ServiceAccount,
    namespace: pulumi.Input[str],
    opts: pulumi.ResourceOptions,
) -> k8s.rbac.v1.Role:
    """A namespaced Role with these rules, bound to one service account only."""
    role = k8s.rbac.v1.Role(resource_name, metadata=meta, rules=rules, opts=opts)
    role_ref: Any = {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role.metadata.name}
    subjects: Any = [{"kind": "ServiceAccount", "name": account.metadata.name, "namespace": namespace}]
    k8s.rbac.v1.RoleBinding(resource_name, metadata=meta, role_ref=role_ref, subjects=subjects, opts=opts)
    return role
