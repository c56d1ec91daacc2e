"""Deploy stage: serve what was registered and, for a candidate, run the progressive rollout to its end.

This is where the pipeline hands off to serving, through serving's own contracts (serving file, desired
state, rollout controller); the environment says where serving lives (``LOCKGATE_DASHBOARD_URL`` and
friends, set by ``lockgate up`` on the Ray head). Without them the stage is skipped and says so.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.config import PipelineConfig

DASHBOARD_ENV, METRICS_ENV, HOME_ENV = "LOCKGATE_DASHBOARD_URL", "LOCKGATE_METRICS_URL", "LOCKGATE_HOME"


def serving_target() -> tuple[str, str, Path] | None:
    """(dashboard URL, metrics URL, state dir) of the environment this job runs in, if it has serving."""
    values = [os.environ.get(name) for name in (DASHBOARD_ENV, METRICS_ENV, HOME_ENV)]
    if not all(values):
        return None
    dashboard, metrics, home = values
    return str(dashboard), str(metrics), Path(str(home))


def deploy_and_roll_out(
    config: PipelineConfig,
    base_dir: Path,
    registered_aliases: tuple[str, ...],
    version: str,
    emit: Callable[[str, str, dict[str, Any]], None],
) -> dict[str, Any]:
    """Serve the new version: a first champion directly, a candidate through the rollout policy."""
    from serving.desired import (
        RolloutState,
        apply_desired,
        describe,
        load_serving_file,
        registry_aliases,
        write_rollout_state,
    )
    from serving.live import live_effects
    from serving.rollout import RolloutController

    target = serving_target()
    if not config.rollout.enabled:
        return {"outcome": "skipped", "reason": "rollout.enabled is false"}
    if target is None:
        return {
            "outcome": "skipped",
            "reason": f"no serving target in this environment ({DASHBOARD_ENV} unset)",
        }
    dashboard, metrics, home = target
    file = load_serving_file(base_dir / config.rollout.serving_file)
    if file.model_name != config.registry.model_name:
        raise ValueError(
            f"rollout.serving_file serves '{file.model_name}', not '{config.registry.model_name}'"
        )
    token = Path(os.environ["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
    headers = {"Authorization": f"Bearer {token}"}
    state_path = home / "rollout" / f"{file.model_name}.json"
    if "candidate" not in registered_aliases:
        router = apply_desired(dashboard, headers, file, state_path)
        return {"outcome": "deployed", "reason": describe(file, router)}
    champion = registry_aliases(file.model_name)["champion"]
    write_rollout_state(state_path, RolloutState())
    apply_desired(dashboard, headers, file, state_path)
    effects = live_effects(
        dashboard,
        headers,
        metrics,
        base_dir / config.rollout.serving_file,
        state_path,
        (champion, version),
        emit,
    )
    result = RolloutController(config.rollout, champion, version, effects).run()
    return {"outcome": result.outcome, "reason": result.reason, "steps": result.steps}
