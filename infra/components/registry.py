"""Registry: MLflow (tracking + model registry) with its Postgres backend, and the ECR image repository on aws.

Every credential is generated or read as a Pulumi secret and reaches pods only through Kubernetes Secrets.
"""

from __future__ import annotations

import json
import re
from typing import Any, TypedDict

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s
import pulumi_random as random

from contracts.settings import EnvVar
from infra import kube
from infra.components.artifact_store import GENERATION_ANNOTATION
from infra.workloads import MLFLOW_GRANTS, MlflowAccess

POSTGRES_PORT = 5432
POSTGRES_USER_ID = 999  # the postgres image's own user
MLFLOW_PORT = 5000
MLFLOW_USER_ID = 1000  # the code image's user (Ray's images run as uid 1000)
MLFLOW_WORKLOAD = "mlflow"
DATABASE_NAME = "mlflow"
DATABASE_USER = "mlflow"


class Database:
    """Connection facts of the MLflow backend store; the password is a Pulumi secret."""

    def __init__(
        self,
        host: pulumi.Input[str],
        port: pulumi.Input[int],
        password: pulumi.Output[str],
    ):
        self.host = pulumi.Output.from_input(host)
        self.port = pulumi.Output.from_input(port)
        self.password: pulumi.Output[str] = pulumi.Output.secret(password)  # type: ignore[arg-type]
        self.name = DATABASE_NAME
        self.username = DATABASE_USER

    def uri(self) -> pulumi.Output[str]:
        """The SQLAlchemy URI (secret: it carries the password)."""
        return pulumi.Output.secret(
            pulumi.Output.all(self.host, self.port, self.password).apply(
                lambda v: f"postgresql+psycopg2://{self.username}:{v[2]}@{v[0]}:{int(v[1])}/{self.name}"
            )
        )


class InClusterPostgresArgs(TypedDict):
    """Where Postgres runs and its volume size."""

    namespace: pulumi.Input[str]
    storage_gib: int
    image: str
    # Pods allowed to connect (MLflow's), by label.
    client_selector: dict[str, str]


class InClusterPostgres(pulumi.ComponentResource):
    """A single Postgres StatefulSet on a persistent volume, reachable only from MLflow's pods."""

    host: pulumi.Output[str]
    port: pulumi.Output[int]
    password: pulumi.Output[str]
    database: Database

    def __init__(self, name: str, args: InClusterPostgresArgs, opts: pulumi.ResourceOptions | None = None):
        if not args["client_selector"]:
            raise ValueError("client_selector: must name the pods allowed to connect")
        super().__init__("lockgate:registry:InClusterPostgres", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        namespace = args["namespace"]
        component = f"{name}-postgres"
        # The Secret, Service, StatefulSet and NetworkPolicy all bear Postgres's name.
        meta = kube.metadata(component, namespace, name, component)
        password = random.RandomPassword(f"{name}-password", length=32, special=False, opts=child)
        secret = k8s.core.v1.Secret(
            f"{name}-credentials",
            metadata=meta,
            string_data={
                "POSTGRES_USER": DATABASE_USER,
                "POSTGRES_PASSWORD": password.result,
                "POSTGRES_DB": DATABASE_NAME,
            },
            opts=child,
        )
        selector = kube.selector(name, component)
        service = kube.cluster_service(f"{name}-service", meta, selector, {"postgres": POSTGRES_PORT}, child)
        k8s.apps.v1.StatefulSet(
            f"{name}-postgres",
            metadata=meta,
            spec={
                "serviceName": service.metadata.name,
                **kube.workload_spec(
                    1,
                    selector,
                    kube.labels(name, component),
                    {
                        "automountServiceAccountToken": False,
                        "securityContext": kube.pod_security(POSTGRES_USER_ID),
                        "containers": [
                            {
                                "name": "postgres",
                                "image": args["image"],
                                "envFrom": [{"secretRef": {"name": secret.metadata.name}}],
                                # A subdirectory: the volume's root holds lost+found on most provisioners.
                                "env": [{"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"}],
                                "ports": [{"name": "postgres", "containerPort": POSTGRES_PORT}],
                                "readinessProbe": {
                                    "exec": {
                                        "command": ["pg_isready", "-U", DATABASE_USER, "-d", DATABASE_NAME]
                                    },
                                    "periodSeconds": 10,
                                },
                                # Restarts a server that stopped answering; generous enough for a first initdb.
                                "livenessProbe": {
                                    "exec": {"command": ["pg_isready", "-U", DATABASE_USER]},
                                    "initialDelaySeconds": 30,
                                    "periodSeconds": 20,
                                    "failureThreshold": 6,
                                },
                                "resources": kube.resources(
                                    "250m", "512Mi", limit_cpu="1", limit_memory="1Gi"
                                ),
                                "securityContext": kube.container_security(POSTGRES_USER_ID),
                                "volumeMounts": [
                                    {"name": "data", "mountPath": "/var/lib/postgresql/data"},
                                    {"name": "run", "mountPath": "/var/run/postgresql"},
                                ],
                            }
                        ],
                        "volumes": [{"name": "run", "emptyDir": {}}],
                    },
                ),
                "volumeClaimTemplates": [
                    {"metadata": {"name": "data"}, "spec": kube.volume_claim_spec(args["storage_gib"])}
                ],
            },
            opts=child,
        )
        kube.network_policy(
            f"{name}-ingress",
            meta,
            selector,
            [kube.ingress_rule([POSTGRES_PORT], [kube.same_namespace_pods(args["client_selector"])])],
            child,
        )
        self.host = pulumi.Output.concat(
            service.metadata.name, ".", service.metadata.namespace, ".svc.cluster.local"
        )
        self.port = pulumi.Output.from_input(POSTGRES_PORT)
        self.password = pulumi.Output.secret(password.result)
        self.database = Database(self.host, self.port, self.password)
        self.register_outputs({"host": self.host, "port": self.port, "password": self.password})


class RdsPostgresArgs(TypedDict):
    """An RDS instance in the cluster's private subnets, reachable from the cluster's security group."""

    vpc_id: pulumi.Input[str]
    subnet_ids: pulumi.Input[list[str]]
    client_security_group_id: pulumi.Input[str]
    instance_class: str
    engine_version: str
    storage_gib: int
    backup_retention_days: int
    multi_az: bool
    deletion_protection: bool
    # Starts the final snapshot's name; unique per stack (two stacks' instances share the component name).
    snapshot_prefix: str


SNAPSHOT_PREFIX_PATTERN = re.compile(r"^[a-zA-Z][a-zA-Z0-9-]{0,200}$")


def snapshot_prefix(project: str, stack: str) -> str:
    """A final-snapshot name prefix from the project and stack (RDS: a letter, then letters, digits, hyphens)."""
    cleaned = re.sub(r"-+", "-", re.sub(r"[^a-zA-Z0-9]", "-", f"{project}-{stack}")).strip("-")
    return cleaned if cleaned[:1].isalpha() else f"s-{cleaned}"


class RdsPostgres(pulumi.ComponentResource):
    """RDS Postgres: private, KMS-encrypted, backed up, TLS required, deletion-protected by default."""

    host: pulumi.Output[str]
    port: pulumi.Output[int]
    password: pulumi.Output[str]
    database: Database

    def __init__(self, name: str, args: RdsPostgresArgs, opts: pulumi.ResourceOptions | None = None):
        if args["backup_retention_days"] < 1:
            raise ValueError("backup_retention_days: backups must be kept at least one day")
        if not SNAPSHOT_PREFIX_PATTERN.match(args["snapshot_prefix"]):
            raise ValueError(
                f"snapshot_prefix: {args['snapshot_prefix']!r} must start with a letter and hold only letters, "
                "digits and hyphens (see snapshot_prefix())"
            )
        super().__init__("lockgate:registry:RdsPostgres", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        key = aws.kms.Key(
            f"{name}-key", description=f"{name}: database encryption", enable_key_rotation=True, opts=child
        )
        subnets = aws.rds.SubnetGroup(f"{name}-subnets", subnet_ids=args["subnet_ids"], opts=child)
        group = aws.ec2.SecurityGroup(
            f"{name}-sg",
            vpc_id=args["vpc_id"],
            description="Postgres from the EKS cluster only",
            ingress=[
                {
                    "protocol": "tcp",
                    "from_port": POSTGRES_PORT,
                    "to_port": POSTGRES_PORT,
                    "security_groups": [args["client_security_group_id"]],
                }
            ],
            opts=child,
        )
        parameters = aws.rds.ParameterGroup(
            f"{name}-params",
            family=f"postgres{args['engine_version'].split('.')[0]}",
            parameters=[{"name": "rds.force_ssl", "value": "1"}],
            opts=child,
        )
        password = random.RandomPassword(f"{name}-password", length=32, special=False, opts=child)
        suffix = random.RandomId(f"{name}-snapshot-suffix", byte_length=4, opts=child)
        instance = aws.rds.Instance(
            f"{name}-db",
            engine="postgres",
            engine_version=args["engine_version"],
            instance_class=args["instance_class"],
            allocated_storage=args["storage_gib"],
            max_allocated_storage=args["storage_gib"] * 5,
            storage_type="gp3",
            storage_encrypted=True,
            kms_key_id=key.arn,
            db_name=DATABASE_NAME,
            username=DATABASE_USER,
            password=password.result,
            db_subnet_group_name=subnets.name,
            vpc_security_group_ids=[group.id],
            parameter_group_name=parameters.name,
            publicly_accessible=False,
            multi_az=args["multi_az"],
            backup_retention_period=args["backup_retention_days"],
            copy_tags_to_snapshot=True,
            deletion_protection=args["deletion_protection"],
            skip_final_snapshot=False,
            # Per stack, plus a suffix fixed at creation: a second stack (or a recreated instance) never finds
            # the name taken by an earlier final snapshot.
            final_snapshot_identifier=pulumi.Output.concat(args["snapshot_prefix"], "-final-", suffix.hex),
            auto_minor_version_upgrade=True,
            performance_insights_enabled=True,
            performance_insights_kms_key_id=key.arn,
            opts=child,
        )
        self.host = instance.address
        self.port = instance.port
        self.password = pulumi.Output.secret(password.result)
        self.database = Database(self.host, self.port, self.password)
        self.register_outputs({"host": self.host, "port": self.port, "password": self.password})


class ImageRepositoryArgs(TypedDict):
    """How many untagged images to keep."""

    keep_images: int
    force_delete: bool


def lifecycle_policy(keep: int) -> str:
    """Expire all but the newest ``keep`` images."""
    return json.dumps(
        {
            "rules": [
                {
                    "rulePriority": 1,
                    "description": f"keep the newest {keep} images",
                    "selection": {"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": keep},
                    "action": {"type": "expire"},
                }
            ]
        }
    )


class ImageRepository(pulumi.ComponentResource):
    """An ECR repository: immutable tags, scan on push, KMS encryption, old images expired."""

    repository_url: pulumi.Output[str]
    repository_arn: pulumi.Output[str]

    def __init__(self, name: str, args: ImageRepositoryArgs, opts: pulumi.ResourceOptions | None = None):
        if args["keep_images"] < 1:
            raise ValueError("keep_images: must keep at least one image")
        super().__init__("lockgate:registry:ImageRepository", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        repository = aws.ecr.Repository(
            f"{name}-repo",
            image_tag_mutability="IMMUTABLE",
            image_scanning_configuration={"scan_on_push": True},
            encryption_configurations=[{"encryption_type": "KMS"}],
            force_delete=args["force_delete"],
            opts=child,
        )
        aws.ecr.LifecyclePolicy(
            f"{name}-lifecycle",
            repository=repository.name,
            policy=lifecycle_policy(args["keep_images"]),
            opts=child,
        )
        self.repository_url = repository.repository_url
        self.repository_arn = repository.arn
        self.register_outputs({"repository_url": self.repository_url, "repository_arn": self.repository_arn})


class MlflowUserArgs(TypedDict):
    """One workload's MLflow user and its access (infra/workloads.py: what each holds; none is an admin)."""

    workload: str
    username: str
    access: MlflowAccess


class ModelRegistryArgs(TypedDict):
    """Everything the MLflow server needs: image, database, artefact store, identity, admin and workload users."""

    namespace: pulumi.Input[str]
    image: pulumi.Input[str]
    replicas: int
    database: Database
    artifacts_destination: pulumi.Input[str]
    # Environment an S3 client needs for the artefact store (MinIO credentials; nothing with IRSA).
    store_env: list[dict[str, Any]]
    # Annotations of MLflow's service account (the IRSA role on aws).
    service_account_annotations: pulumi.Input[dict[str, str]]
    admin_username: str
    admin_password: pulumi.Input[str]
    # The registered model every workload user holds its grant on (the one the stack serves).
    registered_model: str
    # One user per workload that calls MLflow; only their pods (by workload label) reach MLflow.
    users: list[MlflowUserArgs]


USERS_FILE = "users.json"
AUTH_DIR = "/etc/mlflow-auth"


def user_entry(user: MlflowUserArgs, password: str, registered_model: str) -> dict[str, Any]:
    """A user as ``python -m lockgate.mlflow_admin`` reads it: no admin, its access's grant on one model."""
    return {
        "username": user["username"],
        "password": password,
        "is_admin": False,
        "registered_models": {registered_model: MLFLOW_GRANTS[user["access"]]},
    }


def validate_users(admin_username: str, users: list[MlflowUserArgs]) -> None:
    """Raise ValueError naming the field when users repeat, reuse the admin's name or ask for unknown access."""
    names = [admin_username, *(u["username"] for u in users)]
    if len(set(names)) != len(names):
        raise ValueError(
            f"users: every username differs from the others and from admin_username, got {names}"
        )
    workloads = [u["workload"] for u in users]
    if len(set(workloads)) != len(workloads):
        raise ValueError(f"users: one user per workload, got {workloads}")
    for user in users:
        if user["access"] not in MLFLOW_GRANTS:
            raise ValueError(
                f"users: {user['workload']}'s access must be one of {sorted(MLFLOW_GRANTS)}, "
                f"got {user['access']!r}"
            )


def mlflow_service_account(name: str) -> str:
    """The service account a ModelRegistry's MLflow pods run as (an IRSA role trusts it by name)."""
    return f"{name}-mlflow"


def workload_labels(workload: str) -> dict[str, str]:
    """Labels naming a pod's workload, and letting it reach the artefact store."""
    return {kube.WORKLOAD_LABEL: workload, kube.STORE_CLIENT_LABEL: "true"}


def mlflow_peer(workload: str) -> dict[str, Any]:
    """A NetworkPolicy peer: this namespace's pods of one workload."""
    return kube.same_namespace_pods({kube.WORKLOAD_LABEL: workload})


def mlflow_selector(name: str) -> dict[str, str]:
    """Labels selecting a ModelRegistry's MLflow pods (known before the component exists, for its database)."""
    return kube.selector(name, f"{name}-mlflow")


def auth_config(database_uri: str) -> str:
    """MLflow's basic-auth config: users in the backend database, read-only by default."""
    return (
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = {database_uri}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        "grant_default_workspace_access = false\n"
    )


def allowed_hosts(service: str, namespace: str) -> str:
    """The Host headers MLflow answers: its Service's in-cluster names (DNS-rebinding protection)."""
    names = [
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
    ]
    return ",".join(
        [*names, *(f"{host}:{MLFLOW_PORT}" for host in names), "localhost", f"localhost:{MLFLOW_PORT}"]
    )


class ModelRegistry(pulumi.ComponentResource):
    """The MLflow server (auth on, Postgres backend, proxied artefacts) behind a namespace-only Service."""

    tracking_uri: pulumi.Output[str]
    # Per workload, the name of the Secret holding its MLflow user (MLFLOW_TRACKING_USERNAME / _PASSWORD).
    client_secrets: dict[str, pulumi.Output[str]]
    service_name: pulumi.Output[str]
    admin_password: pulumi.Output[str]

    def __init__(self, name: str, args: ModelRegistryArgs, opts: pulumi.ResourceOptions | None = None):
        if args["replicas"] < 1:
            raise ValueError("replicas: at least one MLflow server")
        if not args["registered_model"]:
            raise ValueError("registered_model: the workload users' grants need the model the stack serves")
        validate_users(args["admin_username"], args["users"])
        super().__init__("lockgate:registry:ModelRegistry", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        namespace = args["namespace"]
        component = f"{name}-mlflow"
        selector = mlflow_selector(name)
        admin_password = pulumi.Output.secret(args["admin_password"])
        flask_key = random.RandomPassword(f"{name}-mlflow-flask-key", length=48, special=False, opts=child)
        database_uri = args["database"].uri()
        users = args["users"]
        passwords = {
            user["workload"]: random.RandomPassword(
                f"{name}-mlflow-{user['workload']}-password", length=32, special=False, opts=child
            ).result
            for user in users
        }
        users_json: pulumi.Output[str] = pulumi.Output.secret(  # type: ignore[arg-type]
            pulumi.Output.all(*(passwords[u["workload"]] for u in users)).apply(
                lambda values: json.dumps(
                    [user_entry(u, v, args["registered_model"]) for u, v in zip(users, values, strict=True)],
                    sort_keys=True,
                )
            )
        )
        server_secret = k8s.core.v1.Secret(
            f"{name}-mlflow-server",
            metadata=kube.metadata(f"{name}-mlflow-server", namespace, name, component),
            string_data={
                "backend-store-uri": database_uri,
                "auth.ini": database_uri.apply(auth_config),
                "flask-secret-key": flask_key.result,
                "admin-password": admin_password,
                USERS_FILE: users_json,
            },
            opts=child,
        )
        # Each workload's pods mount their own user's Secret; the admin's stays with the server.
        self.client_secrets = {}
        for user in users:
            workload = user["workload"]
            client_secret = k8s.core.v1.Secret(
                f"{name}-mlflow-{workload}",
                metadata=kube.metadata(f"{name}-mlflow-{workload}", namespace, name, component),
                string_data={
                    EnvVar.mlflow_username.value: user["username"],
                    EnvVar.mlflow_password.value: passwords[workload],
                },
                opts=child,
            )
            self.client_secrets[workload] = client_secret.metadata.name
        # A changed password changes the pod template, so the pods restart and the init container applies it.
        generation = random.RandomId(
            f"{name}-mlflow-credentials-generation",
            byte_length=4,
            keepers={"admin": admin_password, "users": users_json},
            opts=child,
        )
        annotations = args["service_account_annotations"]
        account = kube.service_account(
            f"{name}-mlflow-account",
            kube.metadata(mlflow_service_account(name), namespace, name, component, annotations=annotations),
            child,
            mount_token=False,
        )
        service_name = f"{name}-mlflow"
        # The Deployment, Service and NetworkPolicy all bear MLflow's name.
        meta = kube.metadata(service_name, namespace, name, component)
        hosts = pulumi.Output.from_input(namespace).apply(lambda ns: allowed_hosts(service_name, ns))
        secret_name = server_secret.metadata.name
        k8s.apps.v1.Deployment(
            f"{name}-mlflow",
            metadata=meta,
            spec=kube.workload_spec(
                args["replicas"],
                selector,
                {**kube.labels(name, component), **workload_labels(MLFLOW_WORKLOAD)},
                {
                    "serviceAccountName": account.metadata.name,
                    # MLflow never calls the Kubernetes API (IRSA's web identity token is a volume of its own).
                    "automountServiceAccountToken": False,
                    "securityContext": kube.pod_security(MLFLOW_USER_ID),
                    # Before the server: the admin's password follows the Secret (a rotation) and every
                    # workload's user exists with its own password and grants. Inputs: env and the mounted
                    # users.json, both from the server's Secret; nothing secret in the command.
                    "initContainers": [
                        {
                            "name": "mlflow-users",
                            "image": args["image"],
                            "command": ["python", "-m", "lockgate.mlflow_admin"],
                            "env": [
                                kube.secret_env(
                                    EnvVar.mlflow_auth_database_uri.value, secret_name, "backend-store-uri"
                                ),
                                {"name": EnvVar.mlflow_admin_username.value, "value": args["admin_username"]},
                                kube.secret_env(
                                    EnvVar.mlflow_admin_password.value, secret_name, "admin-password"
                                ),
                                {"name": EnvVar.mlflow_users_file.value, "value": f"{AUTH_DIR}/{USERS_FILE}"},
                                {"name": "HOME", "value": "/tmp"},
                            ],
                            "resources": kube.resources(
                                "100m", "256Mi", limit_cpu="500m", limit_memory="512Mi"
                            ),
                            "securityContext": kube.container_security(MLFLOW_USER_ID, read_only_root=True),
                            "volumeMounts": [
                                {"name": "users", "mountPath": AUTH_DIR, "readOnly": True},
                                {"name": "tmp", "mountPath": "/tmp"},
                            ],
                        }
                    ],
                    "containers": [
                        {
                            "name": "mlflow",
                            "image": args["image"],
                            "command": ["mlflow", "server"],
                            "args": [
                                "--app-name",
                                "basic-auth",
                                "--host",
                                "0.0.0.0",  # the pod's address, behind a NetworkPolicy
                                "--port",
                                str(MLFLOW_PORT),
                                "--workers",
                                "2",
                                "--serve-artifacts",
                                "--artifacts-destination",
                                args["artifacts_destination"],
                                "--allowed-hosts",
                                hosts,
                            ],
                            "env": [
                                kube.secret_env("MLFLOW_BACKEND_STORE_URI", secret_name, "backend-store-uri"),
                                kube.secret_env(
                                    "MLFLOW_FLASK_SERVER_SECRET_KEY", secret_name, "flask-secret-key"
                                ),
                                {"name": "MLFLOW_AUTH_CONFIG_PATH", "value": "/etc/mlflow-auth/auth.ini"},
                                {"name": "MLFLOW_AUTH_ADMIN_USERNAME", "value": args["admin_username"]},
                                kube.secret_env("MLFLOW_AUTH_ADMIN_PASSWORD", secret_name, "admin-password"),
                                {"name": "HOME", "value": "/tmp"},
                                *args["store_env"],
                            ],
                            "ports": [{"name": "http", "containerPort": MLFLOW_PORT}],
                            "readinessProbe": {
                                "httpGet": {"path": "/health", "port": MLFLOW_PORT},
                                "periodSeconds": 10,
                            },
                            "livenessProbe": {
                                "httpGet": {"path": "/health", "port": MLFLOW_PORT},
                                "periodSeconds": 20,
                                "initialDelaySeconds": 30,
                            },
                            "resources": kube.resources("500m", "1Gi", limit_cpu="2", limit_memory="2Gi"),
                            "securityContext": kube.container_security(MLFLOW_USER_ID, read_only_root=True),
                            "volumeMounts": [
                                {"name": "auth", "mountPath": "/etc/mlflow-auth", "readOnly": True},
                                {"name": "tmp", "mountPath": "/tmp"},
                            ],
                        }
                    ],
                    "volumes": [
                        {
                            "name": "auth",
                            "secret": {
                                "secretName": secret_name,
                                "items": [{"key": "auth.ini", "path": "auth.ini"}],
                            },
                        },
                        {
                            "name": "users",
                            "secret": {
                                "secretName": secret_name,
                                "items": [{"key": USERS_FILE, "path": USERS_FILE}],
                            },
                        },
                        {"name": "tmp", "emptyDir": {}},
                    ],
                },
                {GENERATION_ANNOTATION: generation.hex},
            ),
            opts=child,
        )
        service = kube.cluster_service(f"{name}-mlflow-service", meta, selector, {"http": MLFLOW_PORT}, child)
        kube.network_policy(
            f"{name}-mlflow-ingress",
            meta,
            selector,
            [kube.ingress_rule([MLFLOW_PORT], [mlflow_peer(u["workload"]) for u in users])],
            child,
        )
        self.service_name = service.metadata.name
        self.tracking_uri = pulumi.Output.concat(
            "http://",
            service.metadata.name,
            ".",
            service.metadata.namespace,
            f".svc.cluster.local:{MLFLOW_PORT}",
        )
        self.admin_password = admin_password
        self.register_outputs(
            {
                "tracking_uri": self.tracking_uri,
                "client_secrets": self.client_secrets,
                "service_name": self.service_name,
                "admin_password": self.admin_password,
            }
        )
