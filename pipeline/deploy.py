"""Deploy stage: serve what was registered and, for a candidate, run the progressive rollout to its end.

This is where the pipeline hands off to serving, through serving's own contracts (serving file, desired
state, rollout controller); the environment's settings say where serving lives:

- locally, ``LOCKGATE_DASHBOARD_URL`` and friends (set by ``lockgate up`` on the Ray head): the serving file
  is deployed through Serve, then the candidate rolled out;
- in a cluster ("cluster mode": the training RayJob, which has ``LOCKGATE_LIVE_STATE_URI`` and
  ``LOCKGATE_PROMETHEUS_URL`` but no dashboard), nothing is deployed (the RayService's shape is Pulumi's) and
  the candidate is rolled out by the same controller, writing the live state the router follows and judging
  on the in-cluster Prometheus;
- with neither, the stage is skipped and says so.

It runs inside the Ray job (in a cluster too), so it needs ``contracts`` and ``serving``, never ``lockgate``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contracts.settings import EnvVar, ServingTarget, Settings
from contracts.vocabulary import Alias, RolloutOutcome
from pipeline.config import PipelineConfig
from pipeline.events import RolloutSink

if TYPE_CHECKING:
    from serving.rollout import StepProgress

logger = logging.getLogger("lockgate.pipeline")


@dataclass(frozen=True)
class DeployResult:
    """How the rollout stage ended: its outcome, why, and each step's verdict when a rollout ran.

    ``steps`` is None when no progressive rollout ran (skipped, or a first champion deployed directly).
    """

    outcome: RolloutOutcome
    reason: str
    steps: list[dict[str, Any]] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The ``rollout.json`` artefact: outcome and reason, plus the steps of a progressive rollout."""
        record: dict[str, Any] = {"outcome": self.outcome.value, "reason": self.reason}
        if self.steps is not None:
            record["steps"] = self.steps
        return record


def deploy_and_roll_out(
    config: PipelineConfig,
    base_dir: Path,
    target: ServingTarget | None,
    registered_aliases: tuple[str, ...],
    version: str,
    emit: RolloutSink,
) -> DeployResult:
    """Serve the new version: a first champion directly, a candidate through the rollout policy.

    ``target`` is where serving lives (``Settings.serving_target``); None means cluster mode when the
    environment names a live state store and Prometheus (``RolloutTarget.cluster``), else the stage is skipped.
    """
    if not config.rollout.enabled:
        return DeployResult(RolloutOutcome.skipped, "rollout.enabled is false")
    if target is None:
        from serving.live import RolloutTarget

        cluster = RolloutTarget.cluster(Settings.from_environ())
        if cluster is None:
            return DeployResult(
                RolloutOutcome.skipped,
                f"no serving target in this environment ({EnvVar.dashboard_url.value} unset, and "
                f"{EnvVar.live_state_uri.value} with {EnvVar.prometheus_url.value} not both set)",
            )
        return roll_out_in_cluster(config, base_dir, cluster, registered_aliases, version, emit)
    from serving.desired import apply_desired, describe, load_serving_file, registry_aliases
    from serving.live import live_state_store, rollout_controller

    serving_file = base_dir / config.rollout.serving_file
    file = load_serving_file(serving_file)
    if file.model_name != config.registry.model_name:
        raise ValueError(
            f"rollout.serving_file serves '{file.model_name}', not '{config.registry.model_name}'"
        )
    headers = target.auth_headers()
    store = live_state_store(target)
    if Alias.candidate not in registered_aliases:
        router = apply_desired(target.dashboard_url, headers, file, (store, file.model_name))
        return DeployResult(RolloutOutcome.deployed, describe(file, router))
    champion = registry_aliases(file.model_name)[Alias.champion]
    apply_desired(target.dashboard_url, headers, file, (store, file.model_name))
    # The controller takes the model's lease: a new candidate starts at weight 0, a pause a person set stays
    # (the controller then yields at once), and a rollout already running is refused, naming its candidate.
    controller = rollout_controller(config.rollout, target, serving_file, (champion, version), emit, store)
    # The job's log is what `lockgate run` tails: a holding step's live numbers as log lines, never silent.
    controller.effects = replace(controller.effects, progress=_log_progress)
    result = controller.run()
    if result.outcome is None:
        raise RuntimeError("the rollout controller returned before the rollout ended")
    return DeployResult(RolloutOutcome(result.outcome), result.reason, result.steps)


def roll_out_in_cluster(
    config: PipelineConfig,
    base_dir: Path,
    target: Any,
    registered_aliases: tuple[str, ...],
    version: str,
    emit: RolloutSink,
) -> DeployResult:
    """Cluster mode: no Serve deploy; a candidate rolled out through the live state store and Prometheus.

    ``target`` is a ``serving.live.RolloutTarget`` (typed loosely: serving is imported only when used). A
    first champion needs nothing: the RayService's router follows the registry's ``champion`` alias.
    """
    from serving.desired import load_serving_file, registry_aliases
    from serving.live import rollout_controller

    serving_file = base_dir / config.rollout.serving_file
    file = load_serving_file(serving_file)
    if file.model_name != config.registry.model_name:
        raise ValueError(
            f"rollout.serving_file serves '{file.model_name}', not '{config.registry.model_name}'"
        )
    if Alias.candidate not in registered_aliases:
        return DeployResult(
            RolloutOutcome.deployed,
            f"v{version} is {Alias.champion}: the cluster's router follows the alias (nothing to deploy)",
        )
    champion = registry_aliases(file.model_name)[Alias.champion]
    controller = rollout_controller(config.rollout, target, serving_file, (champion, version), emit)
    controller.effects = replace(controller.effects, progress=_log_progress)
    result = controller.run()
    if result.outcome is None:
        raise RuntimeError("the rollout controller returned before the rollout ended")
    return DeployResult(RolloutOutcome(result.outcome), result.reason, result.steps)


def _log_progress(progress: StepProgress) -> None:
    """A holding step's live numbers as one log line (the controller throttles how often)."""
    from serving.rollout import describe_progress

    logger.info("rollout: %s", describe_progress(progress))
