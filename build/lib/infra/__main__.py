"""The composition root: read the stack config once, build the environment from components, export.

Reads top to bottom like the architecture: cluster → namespace → artefact store → registry (MLflow +
Postgres, ECR) → code image → Ray platform → monitoring.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_random as random
import yaml

from infra import exports
from infra.components.artifact_store import (
    CAPTURE_PREFIX,
    EVENTS_PREFIX,
    MLFLOW_PREFIX,
    STATE_PREFIX,
    TRAIN_PREFIX,
    MinioArtifactStore,
    S3ArtifactStore,
)
from infra.components.cluster import EksCluster, ExistingCluster
from infra.components.exporter import MetricsExporter, exporter_service_account
from infra.components.iam import WorkloadRole, bucket_prefix_statements
from infra.components.image import CodeImage, RegistryLogin
from infra.components.monitoring import Monitoring
from infra.components.namespace import Namespace
from infra.components.network import Network
from infra.components.ray_platform import (
    RayPlatform,
    ray_pod_labels,
    ray_service_account,
    triggers_service_account,
)
from infra.components.registry import (
    ImageRepository,
    InClusterPostgres,
    ModelRegistry,
    RdsPostgres,
    mlflow_selector,
    mlflow_service_account,
)
from infra.config import EksClusterConfig, StackConfig, load_stack_config, read_engine_config
from infra.serve import stack_serve_yaml

ROOT = Path(__file__).resolve().parents[1]
NAME = "lockgate"
IRSA_ANNOTATION = "eks.amazonaws.com/role-arn"
VALIDATION_CAPTURE = "s3://validation/capture"  # stands in for the store's location in the early render


def _statements(arns: list[str], read_write: list[str], read_only: list[str]) -> list[dict[str, Any]]:
    bucket_arn, key_arn = arns
    return bucket_prefix_statements(bucket_arn, key_arn, read_write, read_only)


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
                "instance_types": list(nodes.instance_types),
                "min_size": nodes.min_size,
                "desired_size": nodes.desired_size,
                "max_size": nodes.max_size,
                "disk_size_gib": nodes.disk_size_gib,
                "image_repository_arn": repository.repository_arn,
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
    namespace = Namespace(NAME, {"namespace": config.namespace}, k8s_opts)
    ns = namespace.name

    annotations: dict[str, pulumi.Input[dict[str, str]]] = {
        "mlflow": {},
        "ray": {},
        "triggers": {},
        "exporter": {},
    }
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
        # Least privilege: MLflow reads and writes model artefacts; Ray pods training checkpoints, captured
        # traffic (the router writes it) and events; the trigger checks their own state and events, and read
        # captured traffic; the exporter only reads events and the checks' state.
        grants: list[tuple[str, str, list[str], list[str]]] = [
            ("mlflow", mlflow_service_account(NAME), [MLFLOW_PREFIX], []),
            ("ray", ray_service_account(NAME), [TRAIN_PREFIX, CAPTURE_PREFIX, EVENTS_PREFIX], []),
            ("triggers", triggers_service_account(NAME), [STATE_PREFIX, EVENTS_PREFIX], [CAPTURE_PREFIX]),
            ("exporter", exporter_service_account(NAME), [], [EVENTS_PREFIX, STATE_PREFIX]),
        ]
        for workload, account, read_write, read_only in grants:
            role = WorkloadRole(
                f"{NAME}-{workload}-irsa",
                {
                    "oidc_provider_arn": eks.oidc_provider_arn,
                    "oidc_issuer": eks.oidc_issuer,
                    "namespace": ns,
                    "service_account": account,
                    "statements": pulumi.Output.all(s3_store.bucket_arn, s3_store.key_arn).apply(
                        partial(_statements, read_write=read_write, read_only=read_only)
                    ),
                },
            )
            annotations[workload] = role.role_arn.apply(lambda arn: {IRSA_ANNOTATION: arn})
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
                "platform": config.image.platform,
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
            "store_env": store.client_env,
            "service_account_annotations": annotations["mlflow"],
            "admin_username": config.mlflow.admin_username,
            "admin_password": admin_password,
        },
        k8s_opts,
    )
    operators = config.operators
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
    platform = RayPlatform(
        NAME,
        {
            "namespace": ns,
            "install_operator": operators.install,
            "operator_chart_version": operators.kuberay_chart_version,
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
            "mlflow_client_secret": registry.client_secret,
            "store_env": store.client_env,
            "train_storage_uri": store.train_storage_uri,
            "service_account_annotations": annotations["ray"],
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
            "serving_file_yaml": serving_file_yaml,
            "serve_ingress": ray.serve_ingress,
            "triggers_service_account_annotations": annotations["triggers"],
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
            "ray_pod_labels": ray_pod_labels(NAME),
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
            "store_env": store.client_env,
            "service_account_annotations": annotations["exporter"],
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
