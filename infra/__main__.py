"""The composition root: read the stack config once, build the environment from components, export.

Reads top to bottom like the architecture: cluster → KubeRay operator → namespace → artefact store → registry
(MLflow + Postgres, ECR) → code image → Ray platform → monitoring.
"""

from __future__ import annotations

import json
import platform as host
from functools import partial
from pathlib import Path
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_random as random
import yaml

from infra import exports, workloads
from infra.components.artifact_store import MinioArtifactStore, S3ArtifactStore
from infra.components.cluster import EksCluster, ExistingCluster
from infra.components.exporter import MetricsExporter
from infra.components.iam import WorkloadRole, bucket_prefix_statements
from infra.components.image import CodeImage, RegistryLogin
from infra.components.kuberay import KubeRayOperator
from infra.components.monitoring import Monitoring, prometheus_url
from infra.components.namespace import Namespace
from infra.components.network import Network
from infra.components.ray_platform import RayPlatform, WorkloadIdentityArgs, ray_pod_labels
from infra.components.registry import (
    ImageRepository,
    InClusterPostgres,
    ModelRegistry,
    RdsPostgres,
    mlflow_selector,
    snapshot_prefix,
)
from infra.config import EksClusterConfig, StackConfig, load_stack_config, read_engine_config
from infra.serve import stack_serve_yaml

ROOT = Path(__file__).resolve().parents[1]
NAME = "lockgate"
IRSA_ANNOTATION = "eks.amazonaws.com/role-arn"
VALIDATION_CAPTURE = "s3://validation/capture"  # stands in for the store's location in the early render


def _statements(
    arns: list[str], read_write: list[str], read_only: list[str], get_put: list[str]
) -> list[dict[str, Any]]:
    bucket_arn, key_arn = arns
    return bucket_prefix_statements(bucket_arn, key_arn, read_write, read_only, get_put)


def host_platform() -> str:
    """The Docker platform of the machine running Pulumi: what a local cluster (kind, k3d, minikube) runs."""
    return "linux/arm64" if host.machine().lower() in ("arm64", "aarch64") else "linux/amd64"


def build(config: StackConfig, root: Path) -> dict[str, Any]:
    """Declare the whole environment for one validated stack config; returns the stack outputs."""
    outputs: dict[str, Any] = {}
    # The serve config is rendered (and validated twice) before anything is declared: a bad one fails fast.
    # It is rendered again below with the artefact store's capture location, known once the store exists.
    stack_serve_yaml(
        config.serve,
        config.canary_weight,
        config.models.champion,
        config.models.candidate,
        VALIDATION_CAPTURE,
    )
    repository: ImageRepository | None = None
    network: Network | None = None
    eks: EksCluster | None = None
    cluster_config = config.cluster
    if isinstance(cluster_config, EksClusterConfig):
        eks_name = f"{NAME}-{pulumi.get_stack()}"
        repository = ImageRepository(
            f"{NAME}-images", {"keep_images": 50, "force_delete": config.artifact_store.force_destroy}
        )
        network = Network(
            f"{NAME}-network",
            {
                "cidr": cluster_config.vpc_cidr,
                "availability_zones": cluster_config.availability_zones,
                "cluster_name": eks_name,
            },
        )
        nodes = cluster_config.node_group
        eks = EksCluster(
            f"{NAME}-cluster",
            {
                "cluster_name": eks_name,
                "kubernetes_version": cluster_config.kubernetes_version,
                "vpc_id": network.vpc_id,
                "private_subnet_ids": network.private_subnet_ids,
                "endpoint_public_access": cluster_config.endpoint_public_access,
                "public_access_cidrs": list(cluster_config.public_access_cidrs),
                "deploy_from_inside_vpc": cluster_config.deploy_from_inside_vpc,
                "instance_types": list(nodes.instance_types),
                "min_size": nodes.min_size,
                "desired_size": nodes.desired_size,
                "max_size": nodes.max_size,
                "disk_size_gib": nodes.disk_size_gib,
                # The provider's own region and profile (aws:region, aws:profile), as the program used them.
                "region": aws.get_region_output().region,
                "aws_profile": pulumi.Config("aws").get("profile"),
            },
        )
        provider = eks.provider
        outputs[exports.KUBECONFIG] = eks.kubeconfig
        outputs[exports.CLUSTER_NAME] = eks.cluster_name
        outputs[exports.IMAGE_REPOSITORY] = repository.repository_url
    else:
        existing = ExistingCluster(
            f"{NAME}-cluster", {"kubeconfig": cluster_config.kubeconfig, "context": cluster_config.context}
        )
        provider = existing.provider
    k8s_opts = pulumi.ResourceOptions(providers={"kubernetes": provider})
    operators = config.operators
    # The operator (and its CRDs) before the namespace that holds its custom resources: on destroy the
    # namespace and every RayJob/RayService in it go while the operator can still remove their finalizers.
    operator_ready: list[pulumi.Resource] = []
    if operators.install:
        operator_ready.append(
            KubeRayOperator(
                f"{NAME}-kuberay",
                {"chart_version": operators.kuberay_chart_version, "namespace": operators.kuberay_namespace},
                k8s_opts,
            )
        )
    namespace = Namespace(
        NAME,
        {"namespace": config.namespace},
        pulumi.ResourceOptions.merge(k8s_opts, pulumi.ResourceOptions(depends_on=operator_ready)),
    )
    ns = namespace.name

    annotations: dict[str, pulumi.Input[dict[str, str]]] = {w.name: {} for w in workloads.WORKLOADS}
    store: S3ArtifactStore | MinioArtifactStore
    database: RdsPostgres | InClusterPostgres
    db_config = config.mlflow.database
    if eks is not None and network is not None:
        store = S3ArtifactStore(
            f"{NAME}-artifacts",
            {
                "noncurrent_version_expiration_days": config.artifact_store.noncurrent_version_expiration_days,
                "force_destroy": config.artifact_store.force_destroy,
            },
        )
        s3_store = store
        # Least privilege, one IAM role per workload's service account, its prefixes only (infra/workloads.py).
        for workload in workloads.WORKLOADS:
            role = WorkloadRole(
                f"{NAME}-{workload.name}-irsa",
                {
                    "oidc_provider_arn": eks.oidc_provider_arn,
                    "oidc_issuer": eks.oidc_issuer,
                    "namespace": ns,
                    "service_account": workloads.service_account(NAME, workload.name),
                    "statements": pulumi.Output.all(s3_store.bucket_arn, s3_store.key_arn).apply(
                        partial(
                            _statements,
                            read_write=list(workload.read_write),
                            read_only=list(workload.read_only),
                            get_put=list(workload.get_put),
                        )
                    ),
                },
            )
            annotations[workload.name] = role.role_arn.apply(lambda arn: {IRSA_ANNOTATION: arn})
        database = RdsPostgres(
            f"{NAME}-db",
            {
                "vpc_id": network.vpc_id,
                "subnet_ids": network.private_subnet_ids,
                "client_security_group_id": eks.cluster_security_group_id,
                "instance_class": db_config.instance_class,
                "engine_version": db_config.engine_version,
                "storage_gib": db_config.storage_gib,
                "backup_retention_days": db_config.backup_retention_days,
                "multi_az": db_config.multi_az,
                "deletion_protection": db_config.deletion_protection,
                "snapshot_prefix": snapshot_prefix(NAME, pulumi.get_stack()),
            },
        )
    else:
        store = MinioArtifactStore(
            f"{NAME}-artifacts",
            {
                "namespace": ns,
                "storage_gib": config.artifact_store.minio_storage_gib,
                "image": config.artifact_store.minio_image,
                "client_image": config.artifact_store.minio_client_image,
                # The same prefixes per workload as the IAM roles on aws, as MinIO users.
                "workloads": [
                    {
                        "workload": w.name,
                        "read_write": list(w.read_write),
                        "read_only": list(w.read_only),
                        "get_put": list(w.get_put),
                    }
                    for w in workloads.WORKLOADS
                ],
            },
            k8s_opts,
        )
        database = InClusterPostgres(
            f"{NAME}-db",
            {
                "namespace": ns,
                "storage_gib": db_config.storage_gib,
                "image": db_config.image,
                "client_selector": mlflow_selector(NAME),
            },
            k8s_opts,
        )

    image_ref: pulumi.Input[str]
    if config.image.build:
        login: RegistryLogin | None = None
        target: pulumi.Input[str]
        if repository is not None:
            token = aws.ecr.get_authorization_token_output()
            login = {
                "address": repository.repository_url.apply(lambda url: url.split("/")[0]),
                "username": token.user_name,
                "password": pulumi.Output.secret(token.password),
            }
            target = repository.repository_url
        else:
            target = str(config.image.repository)
        image = CodeImage(
            f"{NAME}-code",
            {
                "root": root,
                "repository": target,
                "login": login,
                "platforms": list(config.image_platforms(host_platform())),
                "ray_version": config.image.ray_version,
            },
        )
        image_ref = image.ref
    else:
        image_ref = str(config.image.ref)

    admin_password: pulumi.Input[str]
    if config.mlflow_admin_password is not None:
        admin_password = pulumi.Output.secret(config.mlflow_admin_password.get_secret_value())
    else:
        admin_password = random.RandomPassword(
            f"{NAME}-mlflow-admin-password", length=32, special=False
        ).result
    registry = ModelRegistry(
        NAME,
        {
            "namespace": ns,
            "image": image_ref,
            "replicas": config.mlflow.replicas,
            "database": database.database,
            "artifacts_destination": store.mlflow_artifacts_uri,
            "store_env": store.client_env(workloads.MLFLOW),
            "service_account_annotations": annotations[workloads.MLFLOW],
            "admin_username": config.mlflow.admin_username,
            "admin_password": admin_password,
            "registered_model": config.serve.model_name,
            "users": [
                {"workload": w.name, "username": workloads.mlflow_username(NAME, w.name), "access": w.mlflow}
                for w in workloads.WORKLOADS
                if w.mlflow is not None
            ],
        },
        k8s_opts,
    )
    ray = config.ray
    # The served model's file for the pods that judge and report on it (not the image's serving.yaml).
    serving_file_yaml = yaml.safe_dump(
        config.serve.model_dump(mode="json", exclude_none=True), sort_keys=True
    )
    # Local mode's capture default is the state directory; a cluster's is the artefact store.
    serve_config = store.capture_uri.apply(
        lambda uri: stack_serve_yaml(
            config.serve, config.canary_weight, config.models.champion, config.models.candidate, uri
        )
    )

    def identity(workload: str) -> WorkloadIdentityArgs:
        return {
            "mlflow_secret": registry.client_secrets[workload],
            "store_env": store.client_env(workload),
            "service_account_annotations": annotations[workload],
        }

    platform = RayPlatform(
        NAME,
        {
            "namespace": ns,
            "operator_ready": operator_ready,
            "operator_namespace": operators.kuberay_namespace,
            "monitoring_namespace": operators.monitoring_namespace,
            "ray_version": config.image.ray_version,
            "image": image_ref,
            "serve_config": serve_config,
            "head_cpu": ray.head_cpu,
            "head_memory": ray.head_memory,
            "workers": {
                "replicas": ray.workers.replicas,
                "min_replicas": ray.workers.min_replicas,
                "max_replicas": ray.workers.max_replicas,
                "cpu": ray.workers.cpu,
                "memory": ray.workers.memory,
            },
            "mlflow_tracking_uri": registry.tracking_uri,
            "train_storage_uri": store.train_storage_uri,
            "serving": identity(workloads.SERVING),
            "training": identity(workloads.TRAINING),
            "triggers": identity(workloads.TRIGGERS),
            "pipeline_file": ray.pipeline_file,
            "trigger_checks": {
                "schedule": ray.trigger_checks.schedule,
                "suspended": ray.trigger_checks.suspended,
                "cpu": ray.trigger_checks.cpu,
                "memory": ray.trigger_checks.memory,
            },
            "capture_uri": store.capture_uri,
            "state_uri": store.state_uri,
            "events_uri": store.events_uri,
            "live_state_uri": store.live_state_uri,
            "prometheus_url": config.monitoring.prometheus_url
            or prometheus_url(operators.monitoring_namespace),
            # The namespace label comes from the workers' PodMonitor (infra/components/monitoring.py), the
            # application label from Ray Serve (ray/serve/metrics.py adds it to every custom metric).
            "prometheus_selector": pulumi.Output.from_input(ns).apply(
                lambda namespace: json.dumps(
                    {"namespace": namespace, "application": config.serve.serving.app_name}, sort_keys=True
                )
            ),
            "serving_file_yaml": serving_file_yaml,
            "serve_ingress": ray.serve_ingress,
            "public_serve": config.public_serve,
        },
        k8s_opts,
    )
    monitoring = Monitoring(
        NAME,
        {
            "install_stack": operators.install,
            "chart_version": operators.kube_prometheus_stack_chart_version,
            "monitoring_namespace": operators.monitoring_namespace,
            "namespace": ns,
            "rules_dir": root / "monitoring" / "rules",
            "dashboards_dir": root / "monitoring" / "dashboards",
            "alertmanager_file": root / "monitoring" / "alertmanager.yaml",
            "retention": config.monitoring.retention,
            "storage_gib": config.monitoring.storage_gib,
            "runbook_base_url": config.monitoring.runbook_base_url,
            "ray_pod_labels": ray_pod_labels(NAME),
            "alertmanager_secrets": pulumi.Output.secret(
                {key: value.get_secret_value() for key, value in (config.alertmanager_secrets or {}).items()}
            ),
        },
        k8s_opts,
    )
    MetricsExporter(
        NAME,
        {
            "namespace": ns,
            "image": image_ref,
            "pipeline_file": ray.pipeline_file,
            "serving_file_yaml": serving_file_yaml,
            "events_uri": store.events_uri,
            "state_uri": store.state_uri,
            "store_env": store.client_env(workloads.EXPORTER),
            "service_account_annotations": annotations[workloads.EXPORTER],
            "monitoring_namespace": operators.monitoring_namespace,
        },
        # Its PodMonitor needs the monitoring stack's CRDs.
        pulumi.ResourceOptions.merge(k8s_opts, pulumi.ResourceOptions(depends_on=[monitoring])),
    )
    outputs.update(
        {
            exports.NAMESPACE: ns,
            exports.IMAGE_REF: image_ref,
            exports.MLFLOW_TRACKING_URI: registry.tracking_uri,
            exports.MLFLOW_ADMIN_USERNAME: config.mlflow.admin_username,
            exports.MLFLOW_ADMIN_PASSWORD: registry.admin_password,
            exports.ARTIFACTS_URI: store.mlflow_artifacts_uri,
            exports.SERVE_URL: platform.serve_url,
            exports.LABELS_TOKEN: platform.labels_token,
            exports.SERVE_CONFIG: serve_config,
            exports.RAY_SERVICE: platform.service_name,
            exports.TRAINING_JOB_MANIFEST: platform.training_job_manifest,
            exports.GRAFANA_ADMIN_PASSWORD: monitoring.grafana_admin_password,
            exports.PROMETHEUS_RULES: monitoring.rule_names,
            exports.DASHBOARDS: monitoring.dashboard_names,
        }
    )
    return outputs


def main() -> None:
    """Validate the stack config (naming every broken key) and declare the environment."""
    raw, secret_keys = read_engine_config()
    config = load_stack_config(raw, secret_keys)
    for key, value in build(config, ROOT).items():
        pulumi.export(key, value)


if __name__ == "__main__":
    main()
