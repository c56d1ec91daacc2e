"""Rollout effects on a running environment: the live state store, Prometheus metrics, CAS alias moves.

Weights move by writing the live rollout state (serving/livestate.py), which the router follows without a
redeploy; the rollout holds the model's lease in that store from start to end, so a second rollout of the
same model is refused while one runs, and one whose controller died can be reclaimed.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from contracts.settings import ServingTarget, Settings, rollout_state_dir
from contracts.vocabulary import RolloutOutcome
from serving import promotion
from serving.desired import APPLIED_WAIT_S, load_serving_file, wait_live_applied
from serving.livestate import (
    DEFAULT_LEASE_TTL_S,
    ENDED,
    LiveState,
    LiveStateStore,
    LocalStateStore,
    acquire,
    heartbeat,
    held_lease,
    open_store,
    utc_now,
)
from serving.metrics import scrape_version_stats
from serving.rollout import RolloutController, RolloutEffects, RolloutResult
from serving.spec import RolloutPolicy

logger = logging.getLogger(__name__)


class PromotionRefused(RuntimeError):
    """The alias writer refused a move (aliases changed meanwhile, or the version is not eligible)."""


def live_state_store(target: ServingTarget, settings: Settings | None = None) -> LiveStateStore:
    """An environment's live state store: ``LOCKGATE_LIVE_STATE_URI`` when set, else the state directory's."""
    uri = (settings or Settings.from_environ()).live_state_uri
    return open_store(uri) if uri else LocalStateStore(rollout_state_dir(target.home))


def rollout_owner() -> str:
    """A lease owner id naming this process (host, PID) and this rollout (a random suffix)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def live_effects(
    metrics_url: str,
    serving_file: Path,
    store: LiveStateStore,
    versions: tuple[str, str],
    emit: Callable[[str, str, dict[str, Any]], None],
    owner: str,
    lease_ttl_s: float = DEFAULT_LEASE_TTL_S,
) -> RolloutEffects:
    """Effects on the live state, the router's metrics and the registry; ``versions`` is (champion, candidate)."""
    champion, candidate = versions

    def file() -> Any:
        return load_serving_file(serving_file)

    model = file().model_name

    def owned(change: Callable[[LiveState], LiveState]) -> Callable[[LiveState], LiveState]:
        """Only while this rollout holds the lease: one whose lease was reclaimed must not write."""

        def guarded(state: LiveState) -> LiveState:
            held_lease(state, model, owner)
            return change(state)

        return guarded

    def apply_weight(weight: float) -> None:
        written = store.update(model, owned(lambda s: s.model_copy(update={"candidate_weight": weight})))
        # Locally the router's health endpoint says when it serves the new weight; a step's hold starts then.
        wait_live_applied(file().serving, written.generation, APPLIED_WAIT_S)

    def end() -> None:
        store.update(model, owned(lambda s: s.model_copy(update=ENDED)))

    def promote() -> None:
        outcome = promotion.promote(model, candidate, champion)
        if not outcome.ok:
            raise PromotionRefused(outcome.reason)
        end()  # the champion alias now names the candidate: the router serves it alone

    def reject(reason: str) -> None:
        promotion.reject(model, candidate, reason)

    def renew() -> None:
        # A write only when half the lease is used up: the router reads every change, S3 bills every PUT.
        lease = held_lease(store.read(model)[0], model, owner)
        if lease.expires_at - utc_now() < timedelta(seconds=lease_ttl_s / 2):
            heartbeat(store, model, owner, lease_ttl_s)

    return RolloutEffects(
        apply_weight=apply_weight,
        scrape=lambda: scrape_version_stats(metrics_url),
        promote=promote,
        reject=reject,
        emit=emit,
        # A weight pinned in the serving file, or a paused rollout, stops automation.
        is_pinned=lambda: file().traffic.candidate_weight is not None or store.read(model)[0].paused,
        heartbeat=renew,
    )


class LeasedRolloutController(RolloutController):
    """A rollout that holds the model's lease in the live state store from start to end."""

    def __init__(
        self,
        policy: RolloutPolicy,
        versions: tuple[str, str],
        effects: RolloutEffects,
        store: LiveStateStore,
        model: str,
        owner: str,
        lease_ttl_s: float = DEFAULT_LEASE_TTL_S,
    ):
        super().__init__(policy, versions[0], versions[1], effects)
        self.store, self.model, self.owner, self.lease_ttl_s = store, model, owner, lease_ttl_s
        self.versions = versions

    def run(self) -> RolloutResult:
        """Acquire the lease (RolloutBusy naming the running candidate if another holds it), run, release.

        Promoted or rolled back: the rollout ends (no candidate, weight 0). Yielding to a pin or a pause keeps
        the candidate and its weight for a person to look at and a later run to resume; only the lease goes.
        """
        champion, candidate = self.versions
        acquire(self.store, self.model, self.owner, champion, candidate, self.lease_ttl_s)
        result: RolloutResult | None = None
        try:
            result = super().run()
            return result
        finally:
            ended = result is not None and result.outcome != RolloutOutcome.pinned
            self.store.update(self.model, self._release(ended))

    def _release(self, ended: bool) -> Callable[[LiveState], LiveState]:
        def change(state: LiveState) -> LiveState:
            if state.lease is None or state.lease.owner != self.owner:
                return state  # reclaimed meanwhile: the new holder decides
            return state.model_copy(update=ENDED if ended else {"lease": None})

        return change


def rollout_controller(
    policy: RolloutPolicy,
    target: ServingTarget,
    serving_file: Path,
    versions: tuple[str, str],
    emit: Callable[[str, str, dict[str, Any]], None],
    store: LiveStateStore | None = None,
) -> RolloutController:
    """The one way a rollout controller is built for a running environment (the pipeline's stage, the CLI).

    ``versions`` is (champion, candidate); the live state is the environment's store (``live_state_store``)
    unless ``store`` is given. Its ``run()`` refuses to start while another rollout of the model runs.
    """
    model_name = load_serving_file(serving_file).model_name
    store = store or live_state_store(target)
    owner = rollout_owner()
    effects = live_effects(target.metrics_url, serving_file, store, versions, emit, owner)
    return LeasedRolloutController(policy, versions, effects, store, model_name, owner)
