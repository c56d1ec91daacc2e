"""Rollout effects on a running environment: desired-state weights, Prometheus metrics, CAS alias moves."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from contracts.settings import ServingTarget
from serving import promotion
from serving.desired import apply_desired, load_serving_file, read_rollout_state, update_rollout_state
from serving.metrics import scrape_version_stats
from serving.rollout import RolloutController, RolloutEffects
from serving.spec import RolloutPolicy


class PromotionRefused(RuntimeError):
    """The alias writer refused a move (aliases changed meanwhile, or the version is not eligible)."""


def live_effects(
    dashboard_url: str,
    headers: dict[str, str],
    metrics_url: str,
    serving_file: Path,
    state_path: Path,
    versions: tuple[str, str],
    emit: Callable[[str, str, dict[str, Any]], None],
) -> RolloutEffects:
    """Effects that act on the real router and registry. ``versions`` is (champion, candidate)."""
    champion, candidate = versions

    def file() -> Any:
        return load_serving_file(serving_file)

    def redeploy() -> None:
        apply_desired(dashboard_url, headers, file(), state_path)

    def set_weight(weight: float) -> None:
        update_rollout_state(state_path, candidate_weight=weight)

    def apply_weight(weight: float) -> None:
        set_weight(weight)
        redeploy()

    def promote() -> None:
        outcome = promotion.promote(file().model_name, candidate, champion)
        if not outcome.ok:
            raise PromotionRefused(outcome.reason)
        set_weight(0.0)  # the next candidate starts from nothing
        redeploy()

    def reject(reason: str) -> None:
        promotion.reject(file().model_name, candidate, reason)
        redeploy()

    return RolloutEffects(
        apply_weight=apply_weight,
        scrape=lambda: scrape_version_stats(metrics_url),
        promote=promote,
        reject=reject,
        emit=emit,
        # A weight pinned in the serving file, or a paused rollout, stops automation.
        is_pinned=lambda: (
            file().traffic.candidate_weight is not None or read_rollout_state(state_path).paused
        ),
    )


def rollout_controller(
    policy: RolloutPolicy,
    target: ServingTarget,
    serving_file: Path,
    versions: tuple[str, str],
    emit: Callable[[str, str, dict[str, Any]], None],
) -> RolloutController:
    """The one way a rollout controller is built for a running environment (the pipeline's stage, the CLI).

    ``versions`` is (champion, candidate); the live rollout state is the target's, for the served model.
    """
    model_name = load_serving_file(serving_file).model_name
    effects = live_effects(
        target.dashboard_url,
        target.auth_headers(),
        target.metrics_url,
        serving_file,
        target.rollout_state_path(model_name),
        versions,
        emit,
    )
    return RolloutController(policy, versions[0], versions[1], effects)
