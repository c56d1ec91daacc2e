"""ArtifactStore: where model artefacts and training checkpoints live — S3 on aws, MinIO in the cluster on dev.

Both expose the same outputs: the bucket, the URI MLflow writes artefacts under, the URI Ray Train keeps
checkpoints under, and the environment an S3 client in the namespace needs (empty on aws: IRSA).
"""

from __future__ import annotations

import json
from typing import Any, TypedDict

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s
import pulumi_random as random

from infra import kms, kube

MLFLOW_PREFIX = "mlflow"
TRAIN_PREFIX = "ray-train"
CAPTURE_PREFIX = "capture"  # the router's sampled answers and late labels (serving/capture.py)
STATE_PREFIX = "lockgate-state"  # the trigger checks' memory and history (pipeline/store.py)
EVENTS_PREFIX = "events"  # every pod's events, one object each (pipeline/events.py)
MINIO_PORT = 9000
MINIO_USER = 1000


class S3ArtifactStoreArgs(TypedDict):
    """Lifecycle settings of the bucket."""

    noncurrent_version_expiration_days: int
    force_destroy: bool


def deny_insecure_transport(bucket_arn: str) -> str:
    """A bucket policy refusing every request not made over TLS."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "DenyInsecureTransport",
                    "Effect": "Deny",
                    "Principal": "*",
                    "Action": "s3:*",
                    "Resource": [bucket_arn, f"{bucket_arn}/*"],
                    "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                }
            ],
        }
    )


class ArtifactStore(pulumi.ComponentResource):
    """What every artefact store offers: one bucket, an S3 URI per prefix, and the env its clients need."""

    bucket: pulumi.Output[str]
    mlflow_artifacts_uri: pulumi.Output[str]
    train_storage_uri: pulumi.Output[str]
    capture_uri: pulumi.Output[str]
    state_uri: pulumi.Output[str]
    events_uri: pulumi.Output[str]
    client_env: list[dict[str, Any]]

    def _locate(self, bucket: pulumi.Input[str]) -> dict[str, pulumi.Output[str]]:
        """Set the bucket and each prefix's URI; returns them for ``register_outputs``."""
        self.bucket = pulumi.Output.from_input(bucket)

        def uri(prefix: str) -> pulumi.Output[str]:
            return pulumi.Output.concat("s3://", self.bucket, f"/{prefix}")

        self.mlflow_artifacts_uri = uri(MLFLOW_PREFIX)
        self.train_storage_uri = uri(TRAIN_PREFIX)
        self.capture_uri = uri(CAPTURE_PREFIX)
        self.state_uri = uri(STATE_PREFIX)
        self.events_uri = uri(EVENTS_PREFIX)
        return {
            "bucket": self.bucket,
            "mlflow_artifacts_uri": self.mlflow_artifacts_uri,
            "train_storage_uri": self.train_storage_uri,
            "capture_uri": self.capture_uri,
            "state_uri": self.state_uri,
            "events_uri": self.events_uri,
        }


class S3ArtifactStore(ArtifactStore):
    """A private, versioned, KMS-encrypted bucket with lifecycle rules and TLS-only access."""

    bucket_arn: pulumi.Output[str]
    key_arn: pulumi.Output[str]

    def __init__(self, name: str, args: S3ArtifactStoreArgs, opts: pulumi.ResourceOptions | None = None):
        if args["noncurrent_version_expiration_days"] < 1:
            raise ValueError("noncurrent_version_expiration_days: must be at least 1")
        super().__init__("lockgate:storage:S3ArtifactStore", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        key = kms.rotating_key(f"{name}-key", f"{name}: artefact store encryption", child)
        bucket = aws.s3.Bucket(f"{name}-bucket", force_destroy=args["force_destroy"], opts=child)
        aws.s3.BucketOwnershipControls(
            f"{name}-ownership",
            bucket=bucket.id,
            rule={"object_ownership": "BucketOwnerEnforced"},
            opts=child,
        )
        access_block = aws.s3.BucketPublicAccessBlock(
            f"{name}-public-access",
            bucket=bucket.id,
            block_public_acls=True,
            block_public_policy=True,
            ignore_public_acls=True,
            restrict_public_buckets=True,
            opts=child,
        )
        aws.s3.BucketVersioning(
            f"{name}-versioning", bucket=bucket.id, versioning_configuration={"status": "Enabled"}, opts=child
        )
        aws.s3.BucketServerSideEncryptionConfiguration(
            f"{name}-encryption",
            bucket=bucket.id,
            rules=[
                {
                    "apply_server_side_encryption_by_default": {
                        "sse_algorithm": "aws:kms",
                        "kms_master_key_id": key.arn,
                    },
                    "bucket_key_enabled": True,
                }
            ],
            opts=child,
        )
        aws.s3.BucketLifecycleConfiguration(
            f"{name}-lifecycle",
            bucket=bucket.id,
            rules=[
                {
                    "id": "expire-noncurrent-versions",
                    "status": "Enabled",
                    "filter": {},
                    "noncurrent_version_expiration": {
                        "noncurrent_days": args["noncurrent_version_expiration_days"]
                    },
                },
                {
                    "id": "abort-incomplete-uploads",
                    "status": "Enabled",
                    "filter": {},
                    "abort_incomplete_multipart_upload": {"days_after_initiation": 7},
                },
            ],
            opts=child,
        )
        aws.s3.BucketPolicy(
            f"{name}-tls-only",
            bucket=bucket.id,
            policy=bucket.arn.apply(deny_insecure_transport),
            # A bucket policy set before the access block could briefly be judged public.
            opts=pulumi.ResourceOptions(parent=self, depends_on=[access_block]),
        )
        locations = self._locate(bucket.bucket)
        self.bucket_arn = bucket.arn
        self.key_arn = key.arn
        # Credentials come from IRSA and the region from the EKS pod identity webhook.
        self.client_env = []
        self.register_outputs(
            {
                **locations,
                "bucket_arn": self.bucket_arn,
                "key_arn": self.key_arn,
                "client_env": self.client_env,
            }
        )


class MinioArtifactStoreArgs(TypedDict):
    """Where MinIO runs and how much it stores."""

    namespace: pulumi.Input[str]
    storage_gib: int
    image: str
    client_image: str


class MinioArtifactStore(ArtifactStore):
    """A single-node MinIO with a generated root credential, reachable only from client pods."""

    endpoint_url: pulumi.Output[str]
    credentials_secret: pulumi.Output[str]

    def __init__(self, name: str, args: MinioArtifactStoreArgs, opts: pulumi.ResourceOptions | None = None):
        if args["storage_gib"] < 1:
            raise ValueError("storage_gib: must be at least 1")
        super().__init__("lockgate:storage:MinioArtifactStore", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        namespace = args["namespace"]
        component = f"{name}-minio"
        bucket_name = "lockgate"
        password = random.RandomPassword(f"{name}-root-password", length=32, special=False, opts=child)
        secret = k8s.core.v1.Secret(
            f"{name}-credentials",
            metadata=kube.metadata(f"{name}-minio-credentials", namespace, name, component),
            string_data={
                "MINIO_ROOT_USER": "lockgate",
                "MINIO_ROOT_PASSWORD": password.result,
                "AWS_ACCESS_KEY_ID": "lockgate",
                "AWS_SECRET_ACCESS_KEY": password.result,
            },
            opts=child,
        )
        claim = k8s.core.v1.PersistentVolumeClaim(
            f"{name}-data",
            metadata=kube.metadata(f"{name}-minio-data", namespace, name, component),
            spec=kube.volume_claim_spec(args["storage_gib"]),
            opts=child,
        )
        selector = kube.selector(name, component)
        # The Deployment, Service and NetworkPolicy all bear MinIO's name.
        meta = kube.metadata(component, namespace, name, component)
        k8s.apps.v1.Deployment(
            f"{name}-minio",
            metadata=meta,
            spec={
                **kube.workload_spec(
                    1,
                    selector,
                    kube.labels(name, component),
                    {
                        "automountServiceAccountToken": False,
                        "securityContext": kube.pod_security(MINIO_USER),
                        "containers": [
                            {
                                "name": "minio",
                                "image": args["image"],
                                # The root filesystem is read-only: certificates (none) are looked up in a scratch dir.
                                "args": [
                                    "server",
                                    "/data",
                                    "--address",
                                    f":{MINIO_PORT}",
                                    "--certs-dir",
                                    "/tmp/certs",
                                ],
                                "envFrom": [{"secretRef": {"name": secret.metadata.name}}],
                                "ports": [{"name": "s3", "containerPort": MINIO_PORT}],
                                "readinessProbe": {
                                    "httpGet": {"path": "/minio/health/ready", "port": MINIO_PORT},
                                    "periodSeconds": 10,
                                },
                                "livenessProbe": {
                                    "httpGet": {"path": "/minio/health/live", "port": MINIO_PORT},
                                    "periodSeconds": 20,
                                },
                                "resources": kube.resources(
                                    "250m", "512Mi", limit_cpu="1", limit_memory="1Gi"
                                ),
                                "securityContext": kube.container_security(MINIO_USER, read_only_root=True),
                                "volumeMounts": [
                                    {"name": "data", "mountPath": "/data"},
                                    {"name": "tmp", "mountPath": "/tmp"},
                                ],
                            }
                        ],
                        "volumes": [
                            {"name": "data", "persistentVolumeClaim": {"claimName": claim.metadata.name}},
                            {"name": "tmp", "emptyDir": {}},
                        ],
                    },
                ),
                # One writer on a ReadWriteOnce volume: never two pods at once.
                "strategy": {"type": "Recreate"},
            },
            opts=child,
        )
        service = kube.cluster_service(f"{name}-service", meta, selector, {"s3": MINIO_PORT}, child)
        kube.network_policy(
            f"{name}-ingress",
            meta,
            selector,
            [kube.ingress_rule([MINIO_PORT], [kube.same_namespace_pods({kube.CLIENT_LABEL: "true"})])],
            child,
        )
        self.endpoint_url = pulumi.Output.concat(
            "http://",
            service.metadata.name,
            ".",
            service.metadata.namespace,
            f".svc.cluster.local:{MINIO_PORT}",
        )
        # Creates the bucket (and turns versioning on) once MinIO answers; safe to run again.
        k8s.batch.v1.Job(
            f"{name}-make-bucket",
            metadata={"namespace": namespace, "labels": kube.labels(name, f"{component}-setup")},
            spec={
                "backoffLimit": 10,
                "ttlSecondsAfterFinished": 3600,
                "template": {
                    "metadata": {
                        "labels": {**kube.labels(name, f"{component}-setup"), kube.CLIENT_LABEL: "true"}
                    },
                    "spec": {
                        "restartPolicy": "OnFailure",
                        "automountServiceAccountToken": False,
                        "securityContext": kube.pod_security(MINIO_USER),
                        "containers": [
                            {
                                "name": "make-bucket",
                                "image": args["client_image"],
                                "command": ["/bin/sh", "-c"],
                                "args": [
                                    'mc alias set store "$ENDPOINT" "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" '
                                    f"&& mc mb --ignore-existing store/{bucket_name} "
                                    f"&& mc version enable store/{bucket_name}"
                                ],
                                "env": [
                                    {"name": "ENDPOINT", "value": self.endpoint_url},
                                    {"name": "MC_CONFIG_DIR", "value": "/tmp/mc"},
                                ],
                                "envFrom": [{"secretRef": {"name": secret.metadata.name}}],
                                "resources": kube.resources(
                                    "50m", "64Mi", limit_cpu="200m", limit_memory="128Mi"
                                ),
                                "securityContext": kube.container_security(MINIO_USER, read_only_root=True),
                                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                            }
                        ],
                        "volumes": [{"name": "tmp", "emptyDir": {}}],
                    },
                },
            },
            opts=child,
        )
        locations = self._locate(bucket_name)
        self.credentials_secret = secret.metadata.name
        self.client_env = [
            kube.secret_env("AWS_ACCESS_KEY_ID", secret.metadata.name, "AWS_ACCESS_KEY_ID"),
            kube.secret_env("AWS_SECRET_ACCESS_KEY", secret.metadata.name, "AWS_SECRET_ACCESS_KEY"),
            # MLflow's S3 client and pyarrow's (Ray Train storage) both read these.
            {"name": "MLFLOW_S3_ENDPOINT_URL", "value": self.endpoint_url},
            {"name": "AWS_ENDPOINT_URL_S3", "value": self.endpoint_url},
            {"name": "AWS_REGION", "value": "us-east-1"},
        ]
        self.register_outputs(
            {
                **locations,
                "endpoint_url": self.endpoint_url,
                "credentials_secret": self.credentials_secret,
                "client_env": self.client_env,
            }
        )
