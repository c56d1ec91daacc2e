"""MetricsExporter: Lockgate's own metrics in the cluster, for the alert rules and dashboards.

Runs, trigger checks and rollouts write their events from their own short-lived pods into the artefact store
(``LOCKGATE_EVENTS_URI``); one small Deployment reads them, with the checks' drift and quality history, and
serves ``lockgate_*`` metrics (``lockgate export``) that a PodMonitor hands to Prometheus. Without it the
pipeline, rollout, trigger and drift rules in monitoring/rules would have nothing to fire on in a cluster.
"""

from __future__ import annotations

from typing import Any, TypedDict

import pulumi
import pulumi_kubernetes as k8s

from contracts.settings import EnvVar
from infra import kube

EXPORTER_USER_ID = 1000  # the code image's user
METRICS_PORT = 9464
CONFIG_DIR, SERVING_FILE = "/etc/lockgate", "serving.yaml"


def exporter_service_account(name: str) -> str:
    """The exporter's service account (an IRSA role trusts it by name): it reads events and state only."""
    return f"{name}-exporter"


class MetricsExporterArgs(TypedDict):
    """The image, what it reads (events, the checks' state, the served model's file) and who scrapes it."""

    namespace: pulumi.Input[str]
    image: pulumi.Input[str]
    pipeline_file: str
    serving_file_yaml: str
    events_uri: pulumi.Input[str]
    state_uri: pulumi.Input[str]
    store_env: list[dict[str, Any]]
    service_account_annotations: pulumi.Input[dict[str, str]]
    monitoring_namespace: str


class MetricsExporter(pulumi.ComponentResource):
    """A one-replica Deployment serving ``lockgate_*`` metrics, its PodMonitor, and ingress for Prometheus only."""

    pod_labels: dict[str, str]

    def __init__(self, name: str, args: MetricsExporterArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("lockgate:monitoring:MetricsExporter", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        namespace = args["namespace"]
        component = f"{name}-exporter"
        annotations = args["service_account_annotations"]
        account = kube.service_account(
            f"{name}-exporter-account",
            kube.metadata(
                exporter_service_account(name), namespace, name, component, annotations=annotations
            ),
            child,
            mount_token=False,  # it never calls the Kubernetes API
        )
        config = k8s.core.v1.ConfigMap(
            f"{name}-exporter-config",
            metadata=kube.metadata(f"{name}-exporter-config", namespace, name, component),
            data={SERVING_FILE: args["serving_file_yaml"]},
            opts=child,
        )
        selector = kube.selector(name, component)
        # The client label lets it reach the artefact store (MinIO's NetworkPolicy on dev).
        self.pod_labels = {**kube.labels(name, component), kube.CLIENT_LABEL: "true"}
        container = {
            "name": "exporter",
            "image": args["image"],
            "workingDir": "/home/ray/lockgate",
            "command": ["lockgate", "export", "--config", args["pipeline_file"]],
            "args": ["--host", "0.0.0.0", "--port", str(METRICS_PORT)],
            "env": [
                {"name": EnvVar.events_uri.value, "value": args["events_uri"]},
                {"name": EnvVar.state_uri.value, "value": args["state_uri"]},
                {"name": EnvVar.serving_file.value, "value": f"{CONFIG_DIR}/{SERVING_FILE}"},
                {"name": "HOME", "value": "/tmp"},
                *args["store_env"],
            ],
            "ports": [{"name": "metrics", "containerPort": METRICS_PORT}],
            "readinessProbe": {
                "httpGet": {"path": "/metrics", "port": "metrics"},
                "periodSeconds": 15,
            },
            "resources": kube.resources("100m", "512Mi", limit_cpu="500m"),
            "securityContext": kube.container_security(EXPORTER_USER_ID, read_only_root=True),
            "volumeMounts": [
                {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
                {"name": "tmp", "mountPath": "/tmp"},
            ],
        }
        pod_spec = {
            "serviceAccountName": account.metadata.name,
            "automountServiceAccountToken": False,
            "securityContext": kube.pod_security(EXPORTER_USER_ID),
            "containers": [container],
            "volumes": [
                {"name": "config", "configMap": {"name": config.metadata.name}},
                {"name": "tmp", "emptyDir": {}},
            ],
        }
        meta = kube.metadata(component, namespace, name, component)
        k8s.apps.v1.Deployment(
            f"{name}-exporter",
            metadata=meta,
            spec=kube.workload_spec(1, selector, self.pod_labels, pod_spec),
            opts=child,
        )
        k8s.apiextensions.CustomResource(
            f"{name}-exporter-monitor",
            api_version="monitoring.coreos.com/v1",
            kind="PodMonitor",
            metadata=meta,
            spec={
                "selector": {"matchLabels": selector},
                "namespaceSelector": {"matchNames": [namespace]},
                "podMetricsEndpoints": [{"port": "metrics", "interval": "30s", "path": "/metrics"}],
            },
            opts=child,
        )
        kube.network_policy(
            f"{name}-exporter-ingress",
            meta,
            selector,
            [kube.ingress_rule([METRICS_PORT], [kube.namespace_peer(args["monitoring_namespace"])])],
            child,
        )
        self.register_outputs({"pod_labels": self.pod_labels})
