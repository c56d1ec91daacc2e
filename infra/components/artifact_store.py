"""ArtifactStore: where model artefacts and training checkpoints live — S3 on aws, MinIO in the cluster on dev.

Both expose the same outputs: the bucket, the URI MLflow writes artefacts under, the URI Ray Train keeps
checkpoints under, and per workload the environment its S3 client needs (empty on aws: IRSA; on dev the
workload's own MinIO access key, limited to its prefixes as its IAM role is on aws).
"""

from __future__ import annotations

import json
import re
from typing import Any, NotRequired, TypedDict

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s
import pulumi_random as random

from infra import kms, kube
from infra.components.iam import bucket_prefix_statements

MLFLOW_PREFIX = "mlflow"
TRAIN_PREFIX = "ray-train"
CAPTURE_PREFIX = "capture"  # the router's sampled answers and late labels (serving/capture.py)
STATE_PREFIX = "lockgate-state"  # the trigger checks' memory and history (pipeline/store.py)
EVENTS_PREFIX = "events"  # every pod's events, one object each (pipeline/events.py)
# The live rollout state, one object per model (serving/livestate.py): the rollout controller writes it with
# conditional writes, the routers poll it (README "Who decides what serves").
ROLLOUT_PREFIX = "rollout"
MINIO_PORT = 9000
MINIO_USER = 1000
# Pod-template annotation that changes when the credentials a pod applies change, so the pod runs again.
GENERATION_ANNOTATION = "lockgate.dev/credentials-generation"


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
    live_state_uri: pulumi.Output[str]
    # Per workload (infra/workloads.py), the environment its S3 client needs.
    client_envs: dict[str, list[dict[str, Any]]]

    def client_env(self, workload: str) -> list[dict[str, Any]]:
        """The environment ``workload``'s S3 client needs (empty where the pod's identity is enough)."""
        return self.client_envs.get(workload, [])

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
        self.live_state_uri = uri(ROLLOUT_PREFIX)
        return {
            "bucket": self.bucket,
            "mlflow_artifacts_uri": self.mlflow_artifacts_uri,
            "train_storage_uri": self.train_storage_uri,
            "capture_uri": self.capture_uri,
            "state_uri": self.state_uri,
            "events_uri": self.events_uri,
            "live_state_uri": self.live_state_uri,
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
        self.client_envs = {}
        self.register_outputs(
            {
                **locations,
                "bucket_arn": self.bucket_arn,
                "key_arn": self.key_arn,
                "client_envs": self.client_envs,
            }
        )


class StoreWorkloadArgs(TypedDict):
    """One workload's MinIO user: its prefixes by access (``get_put``: read and overwrite, never delete)."""

    workload: str
    read_write: list[str]
    read_only: list[str]
    get_put: NotRequired[list[str]]


class MinioArtifactStoreArgs(TypedDict):
    """Where MinIO runs, how much it stores, and one user per workload."""

    namespace: pulumi.Input[str]
    storage_gib: int
    image: str
    client_image: str
    workloads: list[StoreWorkloadArgs]


WORKLOAD_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")


def minio_policy(
    bucket: str, read_write: list[str], read_only: list[str], get_put: list[str] | None = None
) -> str:
    """A MinIO policy (IAM's grammar) for these prefixes of one bucket: the IAM role's statements, no KMS."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": bucket_prefix_statements(
                f"arn:aws:s3:::{bucket}", None, read_write, read_only, get_put or ()
            ),
        },
        sort_keys=True,
    )


def _env_name(workload: str) -> str:
    return f"SECRET_KEY_{workload.upper().replace('-', '_')}"


def users_script(alias_endpoint_env: str, bucket: str, users: list[tuple[str, str]], policy_dir: str) -> str:
    """The setup Job's shell: the bucket, then per workload its user, its policy, the policy attached.

    Idempotent: `mc admin user add` updates an existing user's secret key, `mc admin policy create`
    replaces a policy, and an attachment already in effect is not an error (mc exits 1 for it: minio/mc#4670).
    Secret keys come from the environment (the workloads' Secrets), never from the manifest.
    """
    lines = [
        f'mc alias set store "${alias_endpoint_env}" "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY"',
        f"mc mb --ignore-existing store/{bucket}",
        f"mc version enable store/{bucket}",
    ]
    for access_key, workload in users:
        lines += [
            f'mc admin user add store {access_key} "${_env_name(workload)}"',
            f"mc admin policy create store {access_key} {policy_dir}/{workload}.json",
            f'out=$(mc admin policy attach store {access_key} --user {access_key} 2>&1) || case "$out" in '
            f'*"already in effect"*) ;; *) echo "$out" >&2; exit 1 ;; esac',
        ]
    return "set -e\n" + "\n".join(lines) + "\n"


class MinioArtifactStore(ArtifactStore):
    """A single-node MinIO reachable only from client pods; each workload signs in as its own user.

    The generated root credential stays with MinIO and its setup Job; a workload's access key may touch
    only its own prefixes (the same statements as its IAM role on aws).
    """

    endpoint_url: pulumi.Output[str]
    credentials_secret: pulumi.Output[str]
    workload_secrets: dict[str, pulumi.Output[str]]

    def __init__(self, name: str, args: MinioArtifactStoreArgs, opts: pulumi.ResourceOptions | None = None):
        if args["storage_gib"] < 1:
            raise ValueError("storage_gib: must be at least 1")
        names = [w["workload"] for w in args["workloads"]]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"workloads: one entry per workload, at least one, got {names}")
        for entry in args["workloads"]:
            if not WORKLOAD_NAME.match(entry["workload"]):
                raise ValueError(f"workloads: {entry['workload']!r} is not a lowercase name")
            if not entry["read_write"] and not entry["read_only"] and not entry.get("get_put"):
                raise ValueError(f"workloads: {entry['workload']!r} is granted no prefix")
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
            [kube.ingress_rule([MINIO_PORT], [kube.same_namespace_pods({kube.STORE_CLIENT_LABEL: "true"})])],
            child,
        )
        self.endpoint_url = pulumi.Output.concat(
            "http://",
            service.metadata.name,
            ".",
            service.metadata.namespace,
            f".svc.cluster.local:{MINIO_PORT}",
        )
        # One user per workload: its access key is its name, its secret key generated, its policy its prefixes.
        policies: dict[str, str] = {}
        user_env: list[dict[str, Any]] = []
        users: list[tuple[str, str]] = []
        secret_keys: dict[str, pulumi.Output[str]] = {}
        self.workload_secrets = {}
        self.client_envs = {}
        for entry in args["workloads"]:
            workload = entry["workload"]
            access_key = f"{name}-{workload}"
            secret_key = random.RandomPassword(
                f"{name}-{workload}-secret-key", length=40, special=False, opts=child
            )
            workload_secret = k8s.core.v1.Secret(
                f"{name}-{workload}-credentials",
                metadata=kube.metadata(f"{name}-minio-{workload}", namespace, name, component),
                string_data={"AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key.result},
                opts=child,
            )
            policies[f"{workload}.json"] = minio_policy(
                bucket_name, entry["read_write"], entry["read_only"], entry.get("get_put")
            )
            users.append((access_key, workload))
            secret_keys[workload] = secret_key.result
            user_env.append(
                kube.secret_env(_env_name(workload), workload_secret.metadata.name, "AWS_SECRET_ACCESS_KEY")
            )
            self.workload_secrets[workload] = workload_secret.metadata.name
            self.client_envs[workload] = [
                kube.secret_env("AWS_ACCESS_KEY_ID", workload_secret.metadata.name, "AWS_ACCESS_KEY_ID"),
                kube.secret_env(
                    "AWS_SECRET_ACCESS_KEY", workload_secret.metadata.name, "AWS_SECRET_ACCESS_KEY"
                ),
                # MLflow's S3 client and pyarrow's (Ray Train storage) both read these.
                {"name": "MLFLOW_S3_ENDPOINT_URL", "value": self.endpoint_url},
                {"name": "AWS_ENDPOINT_URL_S3", "value": self.endpoint_url},
                {"name": "AWS_REGION", "value": "us-east-1"},
            ]
        policy_map = k8s.core.v1.ConfigMap(
            f"{name}-policies",
            metadata=kube.metadata(f"{name}-minio-policies", namespace, name, component),
            data=policies,
            opts=child,
        )
        # A Job runs once: a new generation (a secret key or a policy changed) replaces it, so it runs again.
        generation = random.RandomId(
            f"{name}-users-generation",
            byte_length=4,
            keepers={
                "policies": json.dumps(policies, sort_keys=True),
                **{w: pulumi.Output.secret(key) for w, key in secret_keys.items()},  # type: ignore[arg-type]
            },
            opts=child,
        )
        setup_labels = kube.labels(name, f"{component}-setup")
        policy_dir = "/etc/minio-policies"
        # Creates the bucket (versioning on) and the workloads' users once MinIO answers; safe to run again.
        k8s.batch.v1.Job(
            f"{name}-make-bucket",
            metadata={"namespace": namespace, "labels": setup_labels},
            spec={
                "backoffLimit": 10,
                "ttlSecondsAfterFinished": 3600,
                "template": {
                    "metadata": {
                        "labels": {**setup_labels, kube.STORE_CLIENT_LABEL: "true"},
                        "annotations": {GENERATION_ANNOTATION: generation.hex},
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
                                "args": [users_script("ENDPOINT", bucket_name, users, policy_dir)],
                                "env": [
                                    {"name": "ENDPOINT", "value": self.endpoint_url},
                                    {"name": "MC_CONFIG_DIR", "value": "/tmp/mc"},
                                    *user_env,
                                ],
                                "envFrom": [{"secretRef": {"name": secret.metadata.name}}],
                                "resources": kube.resources(
                                    "50m", "64Mi", limit_cpu="200m", limit_memory="128Mi"
                                ),
                                "securityContext": kube.container_security(MINIO_USER, read_only_root=True),
                                "volumeMounts": [
                                    {"name": "tmp", "mountPath": "/tmp"},
                                    {"name": "policies", "mountPath": policy_dir, "readOnly": True},
                                ],
                            }
                        ],
                        "volumes": [
                            {"name": "tmp", "emptyDir": {}},
                            {"name": "policies", "configMap": {"name": policy_map.metadata.name}},
                        ],
                    },
                },
            },
            opts=child,
        )
        locations = self._locate(bucket_name)
        self.credentials_secret = secret.metadata.name
        self.register_outputs(
            {
                **locations,
                "endpoint_url": self.endpoint_url,
                "credentials_secret": self.credentials_secret,
                "workload_secrets": self.workload_secrets,
                "client_envs": self.client_envs,
            }
        )
