"""KubeRay v1.7.0's RayJob submitter command, ported to Python so tests can run what the submitter pod runs.

Ported (logic only, in our own words) from ray-project/kuberay at tag v1.7.0:

- ray-operator/controllers/ray/common/job.go: ``BuildJobSubmitCommand`` (the word list: the dashboard
  health wait loop, ``ray job status`` / ``submit --no-wait`` / ``logs --follow`` in K8sJobMode, the flags in
  their order, the entrypoint pasted after ``--``), ``getRuntimeEnvJson`` (runtimeEnvYAML as JSON) and
  ``getMetadataJSONForSubmitCommand`` (metadata as JSON);
- ray-operator/controllers/ray/rayjob_controller.go: ``configureSubmitterContainer`` (a submitter container
  without a ``command`` gets ``/bin/bash -ce --`` and the words joined by single spaces as its one argument)
  and the job id (``spec.jobId`` or ``<rayjob name>-<5 random characters>``, utils.GenerateRayJobId);
- ray-operator/controllers/ray/utils/util.go: ``GetContainerCommand``; utils/constant.go:
  ``BasePythonHealthCommand``, ``RayDashboardGCSHealthPath``, ``RayDashboardGCSHealthCheckTimeoutSeconds``.

Its expected word lists are those of job_test.go at the same tag (TestBuildJobSubmitCommandWithK8sJobMode,
...WithSidecarMode); tests/cluster/test_rayjob_command.py checks the port against them.
"""

from __future__ import annotations

import json
import secrets
import string
from typing import Any

import yaml

K8S_JOB_MODE, SIDECAR_MODE = "K8sJobMode", "SidecarMode"
DEFAULT_DASHBOARD_PORT = 8265
GCS_HEALTH_PATH = "api/gcs_healthz"
GCS_HEALTH_TIMEOUT_S = 10
PYTHON_HEALTH_COMMAND = (
    "python -c \"import urllib.request; r=urllib.request.urlopen('{url}', timeout={timeout}); "
    "exit(0 if b'success' in r.read() else 1)\""
)


def go_quote(text: str) -> str:
    """Go's ``strconv.Quote`` for the text KubeRay quotes (JSON and messages): a double-quoted Go literal.

    Printable characters stay (``"`` and ``\\`` are backslash-escaped); control characters become Go escapes.
    """
    escapes = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}
    out = []
    for char in text:
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif char in escapes:
            out.append(escapes[char])
        elif not char.isprintable():
            code = ord(char)
            out.append(
                f"\\x{code:02x}" if code < 0x80 else f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"
            )
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def job_id(rayjob: dict[str, Any]) -> str:
    """The Ray submission id KubeRay gives a RayJob: ``spec.jobId``, else its name and 5 random characters."""
    spec = rayjob.get("spec", {})
    if spec.get("jobId"):
        return str(spec["jobId"])
    alphabet = string.ascii_lowercase + string.digits
    return f"{rayjob['metadata']['name']}-{''.join(secrets.choice(alphabet) for _ in range(5))}"


def go_json(value: Any) -> str:
    """JSON as Go's ``json.Marshal`` writes it: compact, map keys sorted, UTF-8 kept, ``<>&`` escaped."""
    text = json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(char, escaped)  # these occur only inside JSON strings
    return text


def runtime_env_json(spec: dict[str, Any]) -> str:
    """``runtimeEnvYAML`` as JSON (sigs.k8s.io/yaml's YAMLToJSON), or "" when the RayJob sets none."""
    text = spec.get("runtimeEnvYAML") or ""
    if not text:
        return ""
    return go_json(yaml.safe_load(text))


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("-")[0].split(".")[:3])


def _go_float(value: float) -> str:
    return f"{float(value):f}"  # Go's %f: six decimals


def build_job_submit_command(
    rayjob: dict[str, Any], dashboard_url: str, submission_id: str, mode: str = K8S_JOB_MODE
) -> list[str]:
    """The submitter's shell words for ``rayjob``, as KubeRay v1.7.0 builds them.

    ``dashboard_url`` is what the operator puts in ``status.dashboardURL`` (K8sJobMode) and ``submission_id``
    its ``status.jobId``. SidecarMode uses the head container's dashboard port on 127.0.0.1 and submits once.
    """
    spec = rayjob["spec"]
    if mode == SIDECAR_MODE:
        head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
        ports = [p["containerPort"] for p in head.get("ports", []) if p.get("name") == "dashboard"]
        port = ports[0] if ports else DEFAULT_DASHBOARD_PORT
        address = f"http://127.0.0.1:{port}"
        health_url = f"http://localhost:{port}/{GCS_HEALTH_PATH}"
    elif mode == K8S_JOB_MODE:
        address = dashboard_url if dashboard_url.startswith("http://") else f"http://{dashboard_url}"
        health_url = f"{address}/{GCS_HEALTH_PATH}"
    else:
        raise ValueError(f"unsupported submission mode for job submit command: {mode}")
    health = PYTHON_HEALTH_COMMAND.format(url=health_url, timeout=GCS_HEALTH_TIMEOUT_S)
    message = go_quote(f"Waiting for Ray Dashboard GCS to become healthy at {address} ...")
    words = [
        "until",
        health,
        ">/dev/null",
        "2>&1",
        ";",
        "do",
        "echo",
        message,
        ";",
        "sleep",
        "2",
        ";",
        "done",
        ";",
    ]
    # K8sJobMode: the submitter Job may be retried, so a submitted id is followed instead of submitted again.
    check_first = mode == K8S_JOB_MODE
    if check_first:
        words += [
            "if",
            "!",
            "ray",
            "job",
            "status",
            "--address",
            address,
            submission_id,
            ">/dev/null",
            "2>&1",
        ]
        words += [";", "then"]
    words += ["ray", "job", "submit", "--address", address]
    if check_first:
        words.append("--no-wait")
    runtime_env = runtime_env_json(spec)
    if runtime_env:
        words += ["--runtime-env-json", go_quote(runtime_env)]
    metadata = spec.get("metadata") or {}
    if metadata:
        # `ray job submit --metadata-json` exists since Ray 2.6.0: KubeRay refuses an older rayVersion.
        ray_version = (spec.get("rayClusterSpec") or {}).get("rayVersion")
        if ray_version and _version(ray_version) < (2, 6, 0):
            raise ValueError("the Ray version must be at least 2.6.0 to use the metadata field")
        words += ["--metadata-json", go_quote(go_json(metadata))]
    if submission_id:
        words += ["--submission-id", submission_id]
    if spec.get("entrypointNumCpus", 0) > 0:
        words += ["--entrypoint-num-cpus", _go_float(spec["entrypointNumCpus"])]
    if spec.get("entrypointNumGpus", 0) > 0:
        words += ["--entrypoint-num-gpus", _go_float(spec["entrypointNumGpus"])]
    if spec.get("entrypointResources"):
        words += ["--entrypoint-resources", go_quote(spec["entrypointResources"])]
    # The entrypoint goes in as it is, trimmed, unquoted: the shell parses it.
    words += ["--", spec["entrypoint"].strip(), ";"]
    if check_first:
        words += ["fi", ";", "ray", "job", "logs", "--address", address, "--follow", submission_id]
    return words


def submitter_container_command(rayjob: dict[str, Any], words: list[str]) -> list[str]:
    """The submitter container's command + args: ``bash -ce`` over the words joined by spaces.

    KubeRay fills them in only when the RayJob's submitter container declares no ``command`` of its own
    (K8sJobMode); this raises when it does, since the port then no longer describes what runs.
    """
    template = rayjob["spec"].get("submitterPodTemplate") or {}
    containers = template.get("spec", {}).get("containers") or [{}]
    if containers[0].get("command"):
        raise ValueError("the submitter container sets its own command: KubeRay does not build one")
    return ["/bin/bash", "-ce", "--", " ".join(words)]
