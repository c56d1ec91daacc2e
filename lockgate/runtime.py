"""The CLI's wiring to a running environment: the local environment, the served file, watchers and Ray.

The commands call these; nothing here runs at import time, and the heavy modules (Ray, the job client, the
watcher, KubeRay) are imported by the function that needs them, because the CLI imports this at start-up.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contracts.settings import EnvVar, Settings
from lockgate.localenv import LocalEnvironment, Ports, connected, default_state_dir, require_healthy
from pipeline.config import PipelineConfig, load_config
from serving.desired import ServingFile, load_serving_file

if TYPE_CHECKING:
    from lockgate.exporter import Exporter
    from lockgate.watch import Watcher

DEFAULT_PORTS = Ports()


class MissingSettingError(ValueError):
    """A cluster watcher lacks a location it needs (capture, state): the command's input is incomplete."""


class RemoteUnsupportedError(ValueError):
    """A command that works on the local environment only was asked to work on a stack (MLFLOW_TRACKING_URI)."""


@dataclass(frozen=True)
class RolloutContext:
    """A pipeline file's model as served by the active environment: the local one, or a stack (``remote``).

    On a stack (no local environment up, ``MLFLOW_TRACKING_URI`` set) ``env`` still names the local state
    directory, but nothing of it runs: MLflow and Ray are the ones the client variables point at.
    """

    config: PipelineConfig
    serving_file: Path
    env: LocalEnvironment
    serving: ServingFile
    remote: bool = False


def local_environment(
    state_dir: Path | None,
    mlflow_port: int = DEFAULT_PORTS.mlflow,
    ray_port: int = DEFAULT_PORTS.ray_gcs,
    dashboard_port: int = DEFAULT_PORTS.ray_dashboard,
) -> LocalEnvironment:
    """The local environment in ``state_dir``, on the ports it recorded when it was started (else these)."""
    env = LocalEnvironment(
        state_dir or default_state_dir(), Ports.from_base(mlflow_port, ray_port, dashboard_port)
    )
    state = env.read_state()
    if state is not None:
        env.ports = state.ports
    return env


def serving_path(config: Path, parsed: PipelineConfig, override: Path | None = None) -> Path:
    """The serving file a pipeline file names (relative to it), unless another one is given."""
    return override or config.resolve().parent / parsed.rollout.serving_file


@contextmanager
def backend(state_dir: Path | None) -> Iterator[LocalEnvironment | None]:
    """The local environment, connected while the block runs, when one is up; else None: a stack.

    With no local environment up and ``MLFLOW_TRACKING_URI`` set, the command works on what the client
    variables name, as the mlflow and ray CLIs do: ``MLFLOW_TRACKING_URI``, ``MLFLOW_TRACKING_USERNAME``,
    ``MLFLOW_TRACKING_PASSWORD`` (read by MLflow's client itself) and ``RAY_ADDRESS`` (by Ray's), for example a
    stack's services over ``kubectl port-forward``. A local environment that is up wins.
    """
    env = local_environment(state_dir)
    if (env.read_state() is None or not env.is_healthy()) and Settings.from_environ().mlflow_tracking_uri:
        yield None
        return
    with connected(env):
        yield env


@contextmanager
def rollout_context(config: Path, state_dir: Path | None) -> Iterator[RolloutContext]:
    """Pipeline config, serving file path, the environment and the parsed serving file, connected meanwhile."""
    parsed = load_config(config)
    path = serving_path(config, parsed)
    with backend(state_dir) as env:
        yield RolloutContext(
            parsed, path, env or local_environment(state_dir), load_serving_file(path), remote=env is None
        )


def connect_ray(env: LocalEnvironment | None) -> None:
    """Join the environment's Ray cluster as a driver (for the alias writer and the rollout's scrapes).

    ``None``: the stack's, at ``RAY_ADDRESS`` (a GCS ``host:port`` or a Ray client ``ray://host:10001``).
    """
    import ray  # imported only now: connected() has set the token and loopback settings it reads

    if env is not None:
        address = f"127.0.0.1:{env.ports.ray_gcs}"
    else:
        address = Settings.from_environ().ray_address or ""
        if not address or address.startswith(("http://", "https://")):
            raise RemoteUnsupportedError(
                f"{EnvVar.ray_address.value}: {address or 'not set'}; this command joins the stack's Ray cluster "
                "as a driver: set it to the head's Ray client address (ray://127.0.0.1:10001 over "
                "`kubectl port-forward svc/<head-svc> 10001`) or its GCS host:port"
            )
    ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)


def local_watcher(
    config: Path, state_dir: Path | None, data: str | None, exporter: Exporter | None = None
) -> Watcher:
    """A watcher for the pipeline file's model, wired to the local environment (capture, jobs, metrics).

    Its checks ask MLflow for the champion: run them while connected (:func:`watching` does both).
    """
    return _local_watcher(config, local_environment(state_dir), data, exporter)


@contextmanager
def watching(
    config: Path, state_dir: Path | None, data: str | None, exporter: Exporter | None = None
) -> Iterator[Watcher]:
    """A local watcher, with this process connected to its environment while the block runs."""
    env = local_environment(state_dir)
    watcher = _local_watcher(config, env, data, exporter)
    with connected(env):
        yield watcher


def _local_watcher(
    config: Path, env: LocalEnvironment, data: str | None, exporter: Exporter | None
) -> Watcher:
    from lockgate.jobs import running_pipeline_jobs, start_pipeline
    from lockgate.watch import Watcher

    parsed = load_config(config)
    path = serving_path(config, parsed)
    require_healthy(env)
    file = load_serving_file(path)

    def submit(trigger: dict[str, Any]) -> str:
        _, submission_id, _ = start_pipeline(env, config, data=data, trigger=trigger)
        return str(submission_id)

    return Watcher(
        parsed,
        config.resolve().parent,
        file.model_name,
        file.capture.uri or str(env.capture_dir),
        str(env.state_dir),
        submit=submit,
        running_runs=lambda: running_pipeline_jobs(env, parsed.name),
        metrics_url=env.metrics_url,
        exporter=exporter,
    )


def cluster_watcher(
    config: Path, job_template: Path, namespace: str | None, state_uri: str | None, serving_file: Path | None
) -> Watcher:
    """A watcher in a Kubernetes cluster: state and capture in the artefact store, runs started as RayJobs.

    MLflow is reached through MLFLOW_TRACKING_URI and its credentials in the pod's environment.
    """
    from lockgate.kuberay import KubeRayLauncher, current_namespace, load_template
    from lockgate.watch import Watcher

    parsed = load_config(config)
    file = load_serving_file(serving_path(config, parsed, serving_file))
    capture_uri = file.capture.uri or Settings.from_environ().capture_uri
    if not capture_uri:
        raise MissingSettingError(
            f"capture.uri: not set in the serving file and {EnvVar.capture_uri.value} is not set"
        )
    if not state_uri:
        raise MissingSettingError(
            f"--state-uri (or {EnvVar.state_uri.value}): where the checks keep their memory, e.g. s3://…"
        )
    launcher = KubeRayLauncher(load_template(job_template), current_namespace(namespace), parsed.name)
    return Watcher(
        parsed,
        config.resolve().parent,
        file.model_name,
        capture_uri,
        state_uri,
        submit=launcher.submit,
        running_runs=launcher.running,
    )
