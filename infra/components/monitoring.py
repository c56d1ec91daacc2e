"""Monitoring: kube-prometheus-stack, scraping of the Ray pods (head, workers, Serve), our rules and dashboards.

Rule files (``monitoring/rules/*.yaml``, Prometheus rule-file format) become PrometheusRules and dashboards
(``monitoring/dashboards/*.json``) ConfigMaps for Grafana's sidecar; both are globbed when the program runs,
so a new file needs no code change.
"""

from __future__ import annotations

import json
import re
from functools import partial
from pathlib import Path
from typing import Any, NotRequired, TypedDict

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random
import yaml

from infra import kube

DASHBOARD_LABEL = "grafana_dashboard"
RAY_METRICS_PORT_NAME = "metrics"
RAY_DASHBOARD_METRICS_PORT_NAME = "dash-metrics"
# The operator mounts each Secret listed in alertmanagerSpec.secrets at <this>/<secret name>/<key>
# (kube-prometheus-stack 88.0.0 values.yaml, alertmanager.alertmanagerSpec.secrets).
ALERTMANAGER_SECRETS_DIR = "/etc/alertmanager/secrets"
# A receiver whose secret the stack did not set fails loudly (a reserved name never resolves).
UNSET_SECRET = "https://unset.invalid/set-lockgate-alertmanagerSecrets"
# Control-plane components the chart scrapes by default (and alerts on when they are down): on EKS they are
# managed by AWS and not reachable, on kind they listen on the node's loopback. Disabling them removes both
# the scrape targets and their rules (kube-prometheus-stack 88.0.0, templates/prometheus/rules-1.14/*.yaml
# render only when `<component>.enabled`).
UNSCRAPABLE_CONTROL_PLANE = ("kubeScheduler", "kubeControllerManager", "kubeEtcd", "kubeProxy")
# The chart's Prometheus Service: `<fullname>-prometheus` on `prometheus.service.port` (9090), where fullname is
# the release name when it contains the chart's name (our release is named `kube-prometheus-stack`,
# kube.helm_release) (prometheus-community/helm-charts tag kube-prometheus-stack-88.0.0, commit b5a2d18:
# charts/kube-prometheus-stack/templates/prometheus/service.yaml, templates/_helpers.tpl
# "kube-prometheus-stack.fullname", values.yaml prometheus.service.port). Its HTTP API has no authentication.
PROMETHEUS_SERVICE = "kube-prometheus-stack-prometheus"
PROMETHEUS_PORT = 9090


def prometheus_url(monitoring_namespace: str) -> str:
    """The in-cluster URL of the stack's Prometheus HTTP API (what the rollout analysis queries)."""
    return f"http://{PROMETHEUS_SERVICE}.{monitoring_namespace}.svc:{PROMETHEUS_PORT}"


class MonitoringArgs(TypedDict):
    """What to install, where our objects go, what to scrape, and which files hold rules and dashboards."""

    install_stack: bool
    chart_version: str
    monitoring_namespace: str
    namespace: pulumi.Input[str]
    rules_dir: Path
    dashboards_dir: Path
    alertmanager_file: Path
    retention: str
    storage_gib: int
    # Labels every Ray pod of this stack carries (head and workers of the RayService and of training jobs).
    ray_pod_labels: dict[str, str]
    # The files the Alertmanager config reads (key → value, a Pulumi secret); a key left out gets UNSET_SECRET.
    alertmanager_secrets: pulumi.Input[dict[str, str]]
    # Each alert's runbook_url is this base + its runbook annotation (None: the rule files' own).
    runbook_base_url: NotRequired[str | None]


def resource_name(path: Path) -> str:
    """A DNS-1123 name from a file's stem (``serving_v2.yaml`` → ``serving-v2``)."""
    name = re.sub(r"[^a-z0-9-]+", "-", path.stem.lower()).strip("-")
    if not name:
        raise ValueError(f"{path}: cannot derive a resource name from the file name")
    return name


def load_rule_groups(path: Path, runbook_base_url: str | None = None) -> list[dict[str, Any]]:
    """The ``groups`` of a Prometheus rule file; refuses a file that has none.

    ``runbook_base_url``: each alert's ``runbook_url`` becomes this base + its ``runbook`` annotation (the
    stack's own copy of monitoring/README.md), instead of the rule file's.
    """
    content = yaml.safe_load(path.read_text())
    if not isinstance(content, dict) or not isinstance(content.get("groups"), list) or not content["groups"]:
        raise ValueError(f"{path}: a rule file needs a non-empty 'groups' list")
    if runbook_base_url is not None:
        for group in content["groups"]:
            for rule in group.get("rules", ()):
                annotations = rule.get("annotations") or {}
                if "runbook" in annotations:
                    annotations["runbook_url"] = runbook_base_url + annotations["runbook"]
    return content["groups"]


def load_dashboard(path: Path) -> str:
    """A dashboard's JSON text, checked to parse as a JSON object."""
    text = path.read_text()
    if not isinstance(json.loads(text), dict):
        raise ValueError(f"{path}: a dashboard must be a JSON object")
    return text


def alertmanager_secret_files(config: Any, found: dict[str, set[str]] | None = None) -> dict[str, set[str]]:
    """Secret name → keys, for every ``*_file`` setting of an Alertmanager config under the secrets directory.

    Raises ValueError for a file there that is not ``<dir>/<secret>/<key>`` (nothing would mount it).
    """
    found = {} if found is None else found
    items = (
        config.items() if isinstance(config, dict) else enumerate(config) if isinstance(config, list) else []
    )
    for key, value in items:
        if isinstance(value, dict | list):
            alertmanager_secret_files(value, found)
        elif (
            str(key).endswith("_file")
            and isinstance(value, str)
            and value.startswith(ALERTMANAGER_SECRETS_DIR)
        ):
            parts = value.removeprefix(ALERTMANAGER_SECRETS_DIR + "/").split("/")
            if len(parts) != 2 or not all(parts):
                raise ValueError(
                    f"alertmanager_file: {value} is not {ALERTMANAGER_SECRETS_DIR}/<secret>/<key>, "
                    "where the operator mounts a Secret's keys"
                )
            found.setdefault(parts[0], set()).add(parts[1])
    return found


def secret_data(keys: list[str], given: dict[str, str]) -> dict[str, str]:
    """A Secret's keys, each from ``given`` or ``UNSET_SECRET`` when the stack left it out."""
    return {key: given.get(key, UNSET_SECRET) for key in keys}


def stack_values(
    args: MonitoringArgs, grafana_secret: pulumi.Input[str], alertmanager_secrets: list[str]
) -> dict[str, Any]:
    """kube-prometheus-stack values: pick up every monitor/rule, private services, bounded resources.

    ``alertmanager_secrets``: the Secrets the Alertmanager config reads files from, mounted by the operator.
    """
    alertmanager_config = (
        yaml.safe_load(args["alertmanager_file"].read_text()) if args["alertmanager_file"].is_file() else None
    )
    non_root = {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "runAsGroup": 2000,
        "fsGroup": 2000,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    return {
        "prometheus": {
            "service": {"type": "ClusterIP"},
            "prometheusSpec": {
                # Select monitors and rules from every namespace, not only the chart's own release label.
                "serviceMonitorSelectorNilUsesHelmValues": False,
                "podMonitorSelectorNilUsesHelmValues": False,
                "ruleSelectorNilUsesHelmValues": False,
                "retention": args["retention"],
                "securityContext": non_root,
                "resources": kube.resources("500m", "2Gi", limit_cpu="2", limit_memory="4Gi"),
                "storageSpec": {
                    "volumeClaimTemplate": {
                        "spec": {
                            "accessModes": ["ReadWriteOnce"],
                            "resources": {"requests": {"storage": f"{args['storage_gib']}Gi"}},
                        }
                    }
                },
            },
        },
        "alertmanager": {
            "service": {"type": "ClusterIP"},
            "alertmanagerSpec": {
                "securityContext": non_root,
                "resources": kube.resources("50m", "128Mi", limit_cpu="200m", limit_memory="256Mi"),
                "secrets": alertmanager_secrets,
            },
            **({"config": alertmanager_config} if alertmanager_config else {}),
        },
        "grafana": {
            "service": {"type": "ClusterIP"},
            "admin": {
                "existingSecret": grafana_secret,
                "userKey": "admin-user",
                "passwordKey": "admin-password",
            },
            "resources": kube.resources("100m", "256Mi", limit_cpu="500m", limit_memory="512Mi"),
            "sidecar": {
                "dashboards": {
                    "enabled": True,
                    "label": DASHBOARD_LABEL,
                    "labelValue": "1",
                    "searchNamespace": "ALL",
                }
            },
        },
        "prometheusOperator": {
            "resources": kube.resources("100m", "128Mi", limit_cpu="500m", limit_memory="256Mi"),
            "securityContext": non_root,
        },
        # Helm never upgrades a chart's CRDs: the chart's documented pre-install/pre-upgrade job applies the
        # prometheus-operator CRDs of the chart's own version (values.yaml, crds.upgradeJob).
        "crds": {
            "enabled": True,
            "upgradeJob": {
                "enabled": True,
                "forceConflicts": True,
                "image": {"busybox": {"tag": "1.37.0"}},
                "resources": kube.resources("50m", "128Mi", limit_cpu="500m", limit_memory="256Mi"),
            },
        },
        **{component: {"enabled": False} for component in UNSCRAPABLE_CONTROL_PLANE},
    }


class Monitoring(pulumi.ComponentResource):
    """The monitoring stack (optional: a shared cluster may have it) and this stack's monitors, rules, dashboards."""

    rule_names: pulumi.Output[list[str]]
    dashboard_names: pulumi.Output[list[str]]
    grafana_admin_password: pulumi.Output[str]

    def __init__(self, name: str, args: MonitoringArgs, opts: pulumi.ResourceOptions | None = None):
        if not args["ray_pod_labels"]:
            raise ValueError("ray_pod_labels: must select this stack's Ray pods")
        super().__init__("lockgate:monitoring:Monitoring", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        namespace = args["namespace"]
        component = f"{name}-monitoring"
        password = random.RandomPassword(f"{name}-grafana-password", length=24, special=False, opts=child)
        self.grafana_admin_password = pulumi.Output.secret(password.result)
        dependencies: list[pulumi.Resource] = []
        if args["install_stack"]:
            # node-exporter needs the host's network and PID namespace: this namespace cannot be restricted.
            monitoring_namespace = k8s.core.v1.Namespace(
                f"{name}-monitoring-namespace",
                metadata={"name": args["monitoring_namespace"], "labels": kube.labels(name, component)},
                opts=child,
            )
            grafana_secret = k8s.core.v1.Secret(
                f"{name}-grafana-admin",
                metadata=kube.metadata(
                    f"{name}-grafana-admin", monitoring_namespace.metadata.name, name, component
                ),
                string_data={"admin-user": "admin", "admin-password": password.result},
                opts=child,
            )
            mounted = self._alertmanager_secrets(name, args, monitoring_namespace.metadata.name, component)
            # Named after the chart: the charts' Services are then named predictably (see the README).
            release = kube.helm_release(
                f"{name}-kube-prometheus-stack",
                "kube-prometheus-stack",
                args["chart_version"],
                "https://prometheus-community.github.io/helm-charts",
                monitoring_namespace.metadata.name,
                stack_values(args, grafana_secret.metadata.name, sorted(mounted)),
                pulumi.ResourceOptions(parent=self, depends_on=[grafana_secret, *mounted.values()]),
            )
            dependencies.append(release)
        # Our objects need the operator's CRDs: wait for the release when this stack installs it.
        crd_opts = pulumi.ResourceOptions(parent=self, depends_on=dependencies)
        ray_labels = args["ray_pod_labels"]
        # Ray head: a Service over the head pods' metrics ports, scraped through a ServiceMonitor.
        head_selector = {**ray_labels, "ray.io/node-type": "head"}
        head_service = f"{name}-ray-head-metrics"
        head_service_labels = kube.labels(name, head_service)
        kube.cluster_service(
            head_service,
            kube.metadata(head_service, namespace, name, head_service),
            head_selector,
            {RAY_METRICS_PORT_NAME: 8080, RAY_DASHBOARD_METRICS_PORT_NAME: 44227},
            child,
            headless=True,
        )
        k8s.apiextensions.CustomResource(
            f"{name}-ray-head",
            api_version="monitoring.coreos.com/v1",
            kind="ServiceMonitor",
            metadata=kube.metadata(f"{name}-ray-head", namespace, name, component),
            spec={
                "selector": {"matchLabels": head_service_labels},
                "namespaceSelector": {"matchNames": [namespace]},
                "endpoints": [
                    {"port": RAY_METRICS_PORT_NAME, "interval": "15s", "path": "/metrics"},
                    {"port": RAY_DASHBOARD_METRICS_PORT_NAME, "interval": "15s", "path": "/metrics"},
                ],
            },
            opts=crd_opts,
        )
        # Ray workers: Serve replicas and the router's ray_lockgate_* metrics come from each worker's agent.
        k8s.apiextensions.CustomResource(
            f"{name}-ray-workers",
            api_version="monitoring.coreos.com/v1",
            kind="PodMonitor",
            metadata=kube.metadata(f"{name}-ray-workers", namespace, name, component),
            spec={
                "selector": {"matchLabels": {**ray_labels, "ray.io/node-type": "worker"}},
                "namespaceSelector": {"matchNames": [namespace]},
                "podMetricsEndpoints": [
                    {
                        "port": RAY_METRICS_PORT_NAME,
                        "interval": "15s",
                        "path": "/metrics",
                        "relabelings": [
                            {
                                "sourceLabels": ["__meta_kubernetes_pod_label_ray_io_cluster"],
                                "targetLabel": "ray_cluster",
                            },
                            # The stack's namespace on every series, set here rather than assumed from the
                            # operator's defaults: the rollout analysis selects its router's series by it
                            # (Prometheus kubernetes_sd_config, role pod: __meta_kubernetes_namespace).
                            {"sourceLabels": ["__meta_kubernetes_namespace"], "targetLabel": "namespace"},
                        ],
                    }
                ],
            },
            opts=crd_opts,
        )
        rule_names = []
        for path in sorted(args["rules_dir"].glob("*.yaml")):
            k8s.apiextensions.CustomResource(
                f"{name}-rules-{resource_name(path)}",
                api_version="monitoring.coreos.com/v1",
                kind="PrometheusRule",
                metadata=kube.metadata(
                    f"{name}-{resource_name(path)}",
                    namespace,
                    name,
                    component,
                    annotations={"lockgate.dev/source": path.name},
                ),
                spec={"groups": load_rule_groups(path, args.get("runbook_base_url"))},
                opts=crd_opts,
            )
            rule_names.append(f"{name}-{resource_name(path)}")
        dashboard_names = []
        for path in sorted(args["dashboards_dir"].glob("*.json")):
            k8s.core.v1.ConfigMap(
                f"{name}-dashboard-{resource_name(path)}",
                metadata=kube.metadata(
                    f"{name}-dashboard-{resource_name(path)}",
                    namespace,
                    name,
                    component,
                    extra_labels={DASHBOARD_LABEL: "1"},
                ),
                data={path.name: load_dashboard(path)},
                opts=child,
            )
            dashboard_names.append(f"{name}-dashboard-{resource_name(path)}")
        self.rule_names = pulumi.Output.from_input(rule_names)
        self.dashboard_names = pulumi.Output.from_input(dashboard_names)
        self.register_outputs(
            {
                "rule_names": self.rule_names,
                "dashboard_names": self.dashboard_names,
                "grafana_admin_password": self.grafana_admin_password,
            }
        )

    def _alertmanager_secrets(
        self, name: str, args: MonitoringArgs, namespace: pulumi.Input[str], component: str
    ) -> dict[str, k8s.core.v1.Secret]:
        """One Secret per directory the Alertmanager config reads files from, holding exactly its keys."""
        if not args["alertmanager_file"].is_file():
            return {}
        wanted = alertmanager_secret_files(yaml.safe_load(args["alertmanager_file"].read_text()))
        given: pulumi.Output[dict[str, str]] = pulumi.Output.from_input(args["alertmanager_secrets"])
        secrets = {}
        for secret_name, keys in sorted(wanted.items()):
            data: pulumi.Output[dict[str, str]] = pulumi.Output.secret(
                given.apply(partial(secret_data, sorted(keys)))
            )
            secrets[secret_name] = k8s.core.v1.Secret(
                f"{name}-alertmanager-{secret_name}",
                metadata=kube.metadata(secret_name, namespace, name, component),
                string_data=data,
                opts=pulumi.ResourceOptions(parent=self),
            )
        return secrets
