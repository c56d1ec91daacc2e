"""Starting pipeline runs in a Kubernetes cluster: a RayJob made from the training template ``pulumi up`` wrote.

The trigger checker runs as a CronJob pod next to the RayService (infra/components/ray_platform.py). When a
trigger fires it creates a RayJob from the template mounted in the pod, carrying the trigger to the run, and
it counts the runs in flight from the RayJobs that carry the training label. The pod's service account may
create, list and get RayJobs in its own namespace, nothing else.
"""

from __future__ import annotations

import copy
import json
import secrets
import time
from pathlib import Path
from typing import Any

import yaml

from contracts.settings import EnvVar

GROUP, VERSION, PLURAL = "ray.io", "v1", "rayjobs"
# Label on every training RayJob: the template's own, and what the checker counts by.
ROLE_LABEL, TRAINING_ROLE = "lockgate.dev/role", "training"
PIPELINE_LABEL = "lockgate.dev/pipeline"
INSTANCE_LABEL = "app.kubernetes.io/instance"
# How a RayJob that holds no cluster any more reports itself (KubeRay's jobDeploymentStatus).
FINISHED = frozenset({"Complete", "Failed", "ValidationFailed", "Suspended"})
NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class TemplateError(ValueError):
    """The training RayJob template cannot be used."""


class LaunchError(RuntimeError):
    """The Kubernetes API refused or failed a call; the check made no change and can be run again."""


def _refused(action: str, namespace: str, error: Exception) -> LaunchError:
    status, reason = getattr(error, "status", None), getattr(error, "reason", None) or error
    return LaunchError(
        f"{action} RayJobs in namespace {namespace}: {status or ''} {reason}".replace("  ", " ")
    )


def load_template(path: Path) -> dict[str, Any]:
    """Read and check the training RayJob template (YAML, as the stack's ``trainingJobManifest`` output)."""
    try:
        manifest = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise TemplateError(f"{path}: cannot read the training job template: {error}") from None
    if not isinstance(manifest, dict) or manifest.get("kind") != "RayJob":
        raise TemplateError(f"{path}: kind: expected RayJob, got {manifest and manifest.get('kind')!r}")
    if manifest.get("apiVersion") != f"{GROUP}/{VERSION}":
        raise TemplateError(
            f"{path}: apiVersion: expected {GROUP}/{VERSION}, got {manifest.get('apiVersion')!r}"
        )
    if not manifest.get("spec", {}).get("entrypoint"):
        raise TemplateError(f"{path}: spec.entrypoint: the template runs nothing")
    if not manifest.get("metadata", {}).get("generateName"):
        raise TemplateError(f"{path}: metadata.generateName: needed to name each run")
    return manifest


def training_job(
    template: dict[str, Any], pipeline: str, trigger: dict[str, Any] | None, suffix: str | None = None
) -> dict[str, Any]:
    """A RayJob for one run: the template, a name of its own, the labels and the trigger as env vars.

    The name is chosen here (not by the API server) so it can be the run's submission id, recorded on the
    MLflow run and in the pipeline's events.
    """
    job = copy.deepcopy(template)
    metadata = job.setdefault("metadata", {})
    prefix = metadata.pop("generateName")
    key = (trigger or {}).get("run_key")
    # A triggered run is named by its event (one RayJob per event, however many checks decide it).
    name = (
        f"{prefix}{key}"
        if key
        else f"{prefix}{time.strftime('%Y%m%d%H%M%S')}-{suffix or secrets.token_hex(3)}"
    )
    metadata["name"] = name
    metadata["labels"] = {**metadata.get("labels", {}), ROLE_LABEL: TRAINING_ROLE, PIPELINE_LABEL: pipeline}
    spec = job["spec"]
    runtime_env = yaml.safe_load(spec.get("runtimeEnvYAML") or "{}") or {}
    env_vars = {**runtime_env.get("env_vars", {}), EnvVar.submission_id.value: name}
    if trigger:
        env_vars[EnvVar.trigger.value] = json.dumps(trigger, sort_keys=True)
    runtime_env["env_vars"] = env_vars
    spec["runtimeEnvYAML"] = yaml.safe_dump(runtime_env, sort_keys=True)
    return job


def _api(api: Any | None) -> Any:
    if api is not None:
        return api
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.CustomObjectsApi()


def current_namespace(explicit: str | None = None) -> str:
    """The namespace given, else the pod's own (from its service account)."""
    if explicit:
        return explicit
    if NAMESPACE_FILE.exists():
        return NAMESPACE_FILE.read_text().strip()
    raise TemplateError("no namespace: pass --namespace (not running in a pod)")


class KubeRayLauncher:
    """Creates training RayJobs and counts the ones in flight, in one namespace."""

    def __init__(self, template: dict[str, Any], namespace: str, pipeline: str, api: Any | None = None):
        self.template, self.namespace, self.pipeline = template, namespace, pipeline
        self.api = _api(api)

    def submit(self, trigger: dict[str, Any] | None) -> str:
        """Create the RayJob for one run; returns its name (the run's submission id)."""
        from kubernetes.client.exceptions import ApiException

        job = training_job(self.template, self.pipeline, trigger)
        try:
            created = self.api.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, job)
        except ApiException as error:
            if error.status == 409 and (trigger or {}).get("run_key"):
                return str(job["metadata"]["name"])  # this event's run was started already: not again
            raise _refused("creating", self.namespace, error) from None
        return str(created["metadata"]["name"])

    def selector(self) -> dict[str, str]:
        """The labels of this platform's training RayJobs: the template's instance and the training role.

        Runs started by hand from the same template (``kubectl create -f``) are counted too.
        """
        labels = self.template.get("metadata", {}).get("labels", {})
        instance = {key: labels[key] for key in (INSTANCE_LABEL,) if key in labels}
        return {**instance, ROLE_LABEL: TRAINING_ROLE}

    def running(self) -> int:
        """Training RayJobs of this platform that have not finished, whoever created them."""
        selector = ",".join(f"{key}={value}" for key, value in sorted(self.selector().items()))
        from kubernetes.client.exceptions import ApiException

        try:
            listed = self.api.list_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, label_selector=selector
            )
        except ApiException as error:
            raise _refused("listing", self.namespace, error) from None
        return sum(
            1
            for item in listed.get("items", [])
            if (item.get("status") or {}).get("jobDeploymentStatus") not in FINISHED
        )
