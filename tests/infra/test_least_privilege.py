"""Issue #12 item 18 (cluster least privilege), with the cluster halves of items 16 and 5, under mocks.

Each workload (serving RayService, training RayJobs, trigger CronJob, exporter, MLflow) runs as its own
service account with its own store credentials; each MLflow client signs in as its own user and no pod but
MLflow's own mounts the admin's; MLflow admits only the pods that call it. MLflow's init container brings the
admin's password and the workload users to what the Secret says before the server starts (item 16); the
router's /labels token is a generated Secret mounted into the RayService (item 5).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from infra import exports, workloads
from infra.components.iam import bucket_prefix_statements
from lockgate import mlflow_admin
from tests.infra.conftest import ProgramRun, program

SECRET = "kubernetes:core/v1:Secret"
MLFLOW_SERVER_SECRET = "lockgate-mlflow-server"
MINIO_ROOT_SECRET = "lockgate-artifacts-minio-credentials"
WORKLOAD_LABEL = "lockgate.dev/workload"


def pod_templates(run: ProgramRun) -> dict[str, list[dict[str, Any]]]:
    """Every pod template the stack declares, by the workload that runs it (the RayJob from the template)."""
    found: dict[str, list[dict[str, Any]]] = {}

    def add(key: str, template: dict[str, Any]) -> None:
        found.setdefault(key, []).append(template)

    for resource in run.resources:
        inputs = resource["inputs"]
        kind = inputs.get("kind")
        if kind in ("Deployment", "StatefulSet"):
            add(inputs["metadata"]["name"], inputs["spec"]["template"])
        elif kind == "CronJob":
            add(inputs["metadata"]["name"], inputs["spec"]["jobTemplate"]["spec"]["template"])
        elif kind == "Job":
            add(inputs["metadata"]["labels"]["app.kubernetes.io/name"], inputs["spec"]["template"])
        elif kind == "RayService":
            cluster = inputs["spec"]["rayClusterConfig"]
            for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
                add("serving", group["template"])
    job = yaml.safe_load(run.exports[exports.TRAINING_JOB_MANIFEST])
    cluster = job["spec"]["rayClusterSpec"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        add("training", group["template"])
    add("training-submitter", job["spec"]["submitterPodTemplate"])
    return found


def secrets_of(template: dict[str, Any]) -> set[str]:
    """Every Secret a pod reads: env, envFrom and volumes, of every container and init container."""
    spec = template["spec"]
    names = {v["secret"]["secretName"] for v in spec.get("volumes", []) if "secret" in v}
    for container in [*spec.get("initContainers", []), *spec["containers"]]:
        names |= {e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e}
        names |= {
            e["valueFrom"]["secretKeyRef"]["name"]
            for e in container.get("env", [])
            if "secretKeyRef" in e.get("valueFrom", {})
        }
    return names


def secret_data(run: ProgramRun, name: str) -> dict[str, str]:
    (found,) = [s for s in run.of_type(SECRET) if s["inputs"]["metadata"]["name"] == name]
    return found["inputs"]["stringData"]


@pytest.mark.parametrize("stack", ["dev", "aws"])
def test_each_workload_mounts_only_its_own_mlflow_user(program_runs, stack) -> None:
    run = program(program_runs, stack)
    pods = pod_templates(run)
    mlflow_secrets = {f"lockgate-mlflow-{w}" for w in ("serving", "training", "triggers")}
    expected = {
        "serving": "lockgate-mlflow-serving",
        "training": "lockgate-mlflow-training",
        "lockgate-triggers": "lockgate-mlflow-triggers",
    }
    for workload, secret in expected.items():
        for template in pods[workload]:
            used = secrets_of(template)
            assert used & (mlflow_secrets | {MLFLOW_SERVER_SECRET}) == {secret}, f"{workload} mounts {used}"
            assert MINIO_ROOT_SECRET not in used, f"{workload} never gets MinIO's root credentials"
    # Only MLflow's own pods read the server Secret (admin password, database URI, users.json).
    readers = sorted(
        key
        for key, templates in pods.items()
        if any(MLFLOW_SERVER_SECRET in secrets_of(t) for t in templates)
    )
    assert readers == ["lockgate-mlflow"], readers
    assert not secrets_of(pods["lockgate-exporter"][0]) & mlflow_secrets, "the exporter never calls MLflow"
    assert not secrets_of(pods["training-submitter"][0]), "the submitter pod holds no credential"
    assert "lockgate-mlflow-client" not in {s["inputs"]["metadata"]["name"] for s in run.of_type(SECRET)}, (
        "the shared admin client Secret is gone"
    )


def test_workload_users_are_distinct_and_serving_only_reads(dev) -> None:
    server = secret_data(dev, MLFLOW_SERVER_SECRET)
    users = {u["username"]: u for u in json.loads(server["users.json"])}
    admin = dev.exports[exports.MLFLOW_ADMIN_USERNAME]
    assert admin not in users and len(users) == 3, sorted(users)
    (template,) = [
        c for c in dev.of_type("kubernetes:core/v1:ConfigMap") if c["name"] == "lockgate-training-job"
    ]
    model = yaml.safe_load(template["inputs"]["data"]["serving.yaml"])["model_name"]  # the served model
    serving = users["lockgate-serving"]
    assert serving["is_admin"] is False and serving["registered_models"] == {model: "READ"}, serving
    assert users["lockgate-triggers"]["is_admin"] is False, "the checks are no admin"
    # MANAGE on the served model alone: they reclaim an orphaned rollout (tag rejected, drop its alias).
    assert users["lockgate-triggers"]["registered_models"] == {model: "MANAGE"}
    # The training RayJob (training, registration, its rollout): no admin either, MANAGE on the served model.
    assert users["lockgate-training"]["is_admin"] is False, "no workload user is an MLflow admin"
    assert users["lockgate-training"]["registered_models"] == {model: "MANAGE"}, users["lockgate-training"]
    for workload in ("serving", "training", "triggers"):
        client = secret_data(dev, f"lockgate-mlflow-{workload}")
        entry = users[client["MLFLOW_TRACKING_USERNAME"]]
        assert (
            entry["username"] == f"lockgate-{workload}"
            and client["MLFLOW_TRACKING_PASSWORD"] == entry["password"]
        )
    passwords = [u["password"] for u in users.values()] + [server["admin-password"]]
    assert len(set(passwords)) == len(passwords), "no two users share a password"
    # The exact file the init container reads parses as `python -m lockgate.mlflow_admin` expects.
    parsed = [mlflow_admin.WorkloadUser.from_json(u) for u in users.values()]
    assert {u.username for u in parsed if not u.is_admin} == {
        "lockgate-serving",
        "lockgate-triggers",
        "lockgate-training",
    }, "the init container makes no workload user an admin"


@pytest.mark.parametrize("stack", ["dev", "aws"])
def test_mlflow_admits_only_the_workloads_that_call_it(program_runs, stack) -> None:
    run = program(program_runs, stack)
    policies = {
        p["inputs"]["metadata"]["name"]: p["inputs"]["spec"]
        for p in run.of_type("kubernetes:networking.k8s.io/v1:NetworkPolicy")
    }
    (rule,) = policies["lockgate-mlflow"]["ingress"]
    peers = [peer["podSelector"]["matchLabels"] for peer in rule["from"]]
    assert peers == [{WORKLOAD_LABEL: w} for w in ("serving", "training", "triggers")], peers
    assert [p["port"] for p in rule["ports"]] == [5000]
    pods = pod_templates(run)
    for key, workload in (
        ("serving", "serving"),
        ("training", "training"),
        ("lockgate-triggers", "triggers"),
    ):
        assert all(t["metadata"]["labels"][WORKLOAD_LABEL] == workload for t in pods[key]), key
    for key in ("lockgate-exporter", "training-submitter"):
        labels = pods[key][0]["metadata"]["labels"]
        assert labels.get(WORKLOAD_LABEL) not in workloads.mlflow_clients(), f"{key} does not reach MLflow"
    # No Prometheus rule is needed: nothing scrapes MLflow (no ServiceMonitor/PodMonitor selects it).
    monitors = [
        *run.of_type("kubernetes:monitoring.coreos.com/v1:ServiceMonitor"),
        *run.of_type("kubernetes:monitoring.coreos.com/v1:PodMonitor"),
    ]
    assert not any("mlflow" in json.dumps(m["inputs"]["spec"]) for m in monitors)


@pytest.mark.parametrize("stack", ["dev", "aws"])
def test_every_workload_runs_as_its_own_service_account(program_runs, stack) -> None:
    run = program(program_runs, stack)
    pods = pod_templates(run)
    accounts = {
        key: {t["spec"]["serviceAccountName"] for t in pods[key]}
        for key in ("serving", "training", "lockgate-triggers", "lockgate-exporter", "lockgate-mlflow")
    }
    assert accounts == {
        "serving": {"lockgate-serving"},
        "training": {"lockgate-training"},
        "lockgate-triggers": {"lockgate-triggers"},
        "lockgate-exporter": {"lockgate-exporter"},
        "lockgate-mlflow": {"lockgate-mlflow"},
    }, accounts
    declared = {
        a["inputs"]["metadata"]["name"]: a["inputs"] for a in run.of_type("kubernetes:core/v1:ServiceAccount")
    }
    assert declared["lockgate-training"].get("automountServiceAccountToken") is False, (
        "training never calls the API"
    )
    bindings = run.of_type("kubernetes:rbac.authorization.k8s.io/v1:RoleBinding")
    subjects = {s["name"] for b in bindings for s in b["inputs"]["subjects"]}
    assert subjects == {"lockgate-serving", "lockgate-triggers"}, (
        "the autoscaler's and the checks' rights only"
    )
    if stack == "aws":
        roles = {a: declared[a]["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] for a in declared}
        assert len(set(roles.values())) == len(roles), f"one IAM role per account: {roles}"
        trusted = {
            value.rsplit(":", 1)[-1]
            for r in run.of_type("aws:iam/role:Role")
            if "irsa" in r["name"]
            for key, value in json.loads(r["inputs"]["assumeRolePolicy"])["Statement"][0]["Condition"][
                "StringEquals"
            ].items()
            if key.endswith(":sub")
        }
        assert trusted == set(declared), trusted


def test_dev_store_users_have_the_iam_roles_prefixes_and_no_root_credentials(dev) -> None:
    (config_map,) = [
        c for c in dev.of_type("kubernetes:core/v1:ConfigMap") if c["name"] == "lockgate-artifacts-policies"
    ]
    for workload in workloads.WORKLOADS:
        policy = json.loads(config_map["inputs"]["data"][f"{workload.name}.json"])
        expected = bucket_prefix_statements(
            "arn:aws:s3:::lockgate", None, workload.read_write, workload.read_only, workload.get_put
        )
        assert policy["Statement"] == expected, f"{workload.name}: the aws role's statements, without KMS"
    pods = pod_templates(dev)
    own = {
        "serving": "serving",
        "training": "training",
        "lockgate-triggers": "triggers",
        "lockgate-exporter": "exporter",
        "lockgate-mlflow": "mlflow",
    }
    for key, owner in own.items():
        for template in pods[key]:
            env = {e["name"]: e for c in template["spec"]["containers"] for e in c.get("env", [])}
            ref = env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"]
            assert ref == f"lockgate-artifacts-minio-{owner}", f"{key} signs in to MinIO as itself, got {ref}"
    root_readers = sorted(k for k, ts in pods.items() if any(MINIO_ROOT_SECRET in secrets_of(t) for t in ts))
    assert root_readers == ["lockgate-artifacts-minio", "lockgate-artifacts-minio-setup"], root_readers
    (setup,) = pods["lockgate-artifacts-minio-setup"]
    script = setup["spec"]["containers"][0]["args"][0]
    assert 'mc admin user add store lockgate-artifacts-serving "$SECRET_KEY_SERVING"' in script
    assert "already in effect" in script, "re-running the Job is not an error (minio/mc#4670)"
    secret_keys = {
        secret_data(dev, f"lockgate-artifacts-minio-{n}")["AWS_SECRET_ACCESS_KEY"] for n in own.values()
    }
    assert not any(key in json.dumps(setup) for key in secret_keys), "no secret key in the manifest"


def test_mlflow_init_container_applies_the_admin_password_from_the_secret(dev) -> None:
    (template,) = pod_templates(dev)["lockgate-mlflow"]
    (init,) = template["spec"]["initContainers"]
    assert init["command"] == ["python", "-m", "lockgate.mlflow_admin"] and "args" not in init
    env = {e["name"]: e for e in init["env"]}
    assert env[mlflow_admin.ADMIN_PASSWORD_ENV]["valueFrom"]["secretKeyRef"] == {
        "name": MLFLOW_SERVER_SECRET,
        "key": "admin-password",
    }, "the password only from the Secret"
    assert env[mlflow_admin.DATABASE_URI_ENV]["valueFrom"]["secretKeyRef"]["key"] == "backend-store-uri"
    assert env[mlflow_admin.USERS_FILE_ENV]["value"] == "/etc/mlflow-auth/users.json"
    server = secret_data(dev, MLFLOW_SERVER_SECRET)
    assert "database_uri = " + server["backend-store-uri"] in server["auth.ini"], (
        "the server's own auth database"
    )
    assert not any(v in json.dumps(template) for v in (server["admin-password"], server["backend-store-uri"]))
    # A changed password is a new generation: the pod template changes, the pods restart, the init runs.
    (generation,) = [
        r
        for r in dev.of_type("random:index/randomId:RandomId")
        if r["name"] == "lockgate-mlflow-credentials-generation"
    ]
    assert generation["inputs"]["keepers"]["admin"] == server["admin-password"]
    assert generation["inputs"]["keepers"]["users"] == server["users.json"]
    assert "keepers" in generation["secret_paths"], "the keepers stay secret in the state"
    assert template["metadata"]["annotations"]["lockgate.dev/credentials-generation"] == "0a1b2c3d"


def test_a_stack_admin_password_reaches_only_the_mlflow_server(program_runs) -> None:
    run = program(program_runs, "admin-password")
    server = secret_data(run, MLFLOW_SERVER_SECRET)
    assert server["admin-password"] == "rotated-admin-password"
    (generation,) = [
        r
        for r in run.of_type("random:index/randomId:RandomId")
        if r["name"] == "lockgate-mlflow-credentials-generation"
    ]
    assert generation["inputs"]["keepers"]["admin"] == "rotated-admin-password", (
        "a new password is a new generation"
    )
    holders = [
        s["inputs"]["metadata"]["name"]
        for s in run.of_type(SECRET)
        if "rotated-admin-password" in json.dumps(s["inputs"])
    ]
    assert holders == [MLFLOW_SERVER_SECRET], holders


@pytest.mark.parametrize("stack", ["dev", "aws"])
def test_labels_token_is_a_secret_file_in_the_serving_pods_only(program_runs, stack) -> None:
    run = program(program_runs, stack)
    token = secret_data(run, "lockgate-labels-token")["token"]
    assert exports.LABELS_TOKEN in run.secret_exports and run.exports[exports.LABELS_TOKEN] == token
    (secret,) = [s for s in run.of_type(SECRET) if s["inputs"]["metadata"]["name"] == "lockgate-labels-token"]
    assert "stringData.token" in secret["secret_paths"] or "stringData" in secret["secret_paths"]
    pods = pod_templates(run)
    for template in pods["serving"]:
        (container,) = template["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        path = env["LOCKGATE_LABELS_TOKEN_FILE"]
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        assert path == mounts["labels-token"]["mountPath"] + "/token" and mounts["labels-token"]["readOnly"]
        assert volumes["labels-token"]["secret"] == {
            "secretName": "lockgate-labels-token",
            "defaultMode": 0o440,
        }
        assert token not in json.dumps(template), "the token only in the Secret"
    readers = sorted(k for k, ts in pods.items() if any("lockgate-labels-token" in secrets_of(t) for t in ts))
    assert readers == ["serving"], readers
