"""Rollout effects on a running environment: the live state store, Prometheus metrics, CAS alias moves.

Weights move by writing the live rollout state (serving/livestate.py), which the router follows without a
redeploy; the rollout holds the model's lease in that store from start to end, so a second rollout of the
same model is refused while one runs, and one whose controller died can be reclaimed.

Two places run a rollout, through one code path (:class:`RolloutTarget`): the local environment (a router
whose health endpoint says when a weight is served, a metrics endpoint or Prometheus) and a cluster's
training RayJob ("cluster mode": no local router, the in-cluster Prometheus, the live state in S3).
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from contracts.settings import EnvVar, ServingTarget, Settings, rollout_state_dir
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
from serving.metrics import VersionStats, query_weight_pinned, version_stats_source
from serving.rollout import RolloutController, RolloutEffects, RolloutResult
from serving.spec import RolloutPolicy

logger = logging.getLogger(__name__)


class PromotionRefused(RuntimeError):
    """The alias writer refused a move (aliases changed meanwhile, or the version is not eligible)."""


class YieldToPin(BaseException):  # noqa: N818 - a signal to stop, like KeyboardInterrupt, not an error
    """A pin (or a pause) appeared while a step held or just before the promotion: automation stops now.

    A ``BaseException`` on purpose: ``RolloutController`` turns every ``Exception`` into a rollback (weight 0,
    rejected, a ``rollback`` event), and a person's pin is not a verdict on the candidate. It passes through
    the controller untouched and :class:`LeasedRolloutController` ends the rollout as ``pinned``. Without it a
    pin set mid-step (the router then gives the candidate the pinned weight, often 0) would starve the step
    until it stalls and rolls back, and a pin set during the last step would not stop the promotion.
    """


def live_state_store(target: ServingTarget, settings: Settings | None = None) -> LiveStateStore:
    """An environment's live state store: ``LOCKGATE_LIVE_STATE_URI`` when set, else the state directory's."""
    uri = (settings or Settings.from_environ()).live_state_uri
    return open_store(uri) if uri else LocalStateStore(rollout_state_dir(target.home))


def rollout_owner() -> str:
    """A lease owner id naming this process (host, PID) and this rollout (a random suffix)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


CLUSTER_APPLIED_BOUND_S = 2.0
"""Cluster mode: how long after a weight is written the router is taken to serve it (no health endpoint to ask).

Measured (README "Who decides what serves", ``benchmarks/bench_live_state.py``): write → new split observed,
S3 max 1.58 s, local max 1.26 s, with ``live_poll_s`` 1 s; 2 s is the issue's bound and covers both.
"""


@dataclass(frozen=True)
class RolloutTarget:
    """Where a rollout acts and looks, locally and in a cluster.

    ``metrics_url``: the router's metrics endpoint (local); ``prometheus_url`` (+ ``selector``): the Prometheus
    HTTP API, which wins when set (the in-cluster Prometheus, or a local one). ``local_router``: whether a
    router whose health endpoint reports the applied live state generation is reachable at the serving
    file's address. In the cluster it is not asked, and the controller waits the measured bound
    ``applied_bound_s`` after each write instead: the RayJob pod may not reach the serve Service (its
    NetworkPolicy), and one health answer would speak for one replica of several; each replica polls on its
    own, so the bound, not one answer, is what holds for all of them.
    """

    metrics_url: str | None = None
    prometheus_url: str | None = None
    selector: dict[str, str] = field(default_factory=dict)
    local_router: bool = True
    applied_bound_s: float = CLUSTER_APPLIED_BOUND_S

    @classmethod
    def local(cls, target: ServingTarget, settings: Settings | None = None) -> RolloutTarget:
        """The local environment's router; its stats from ``LOCKGATE_PROMETHEUS_URL`` when that is set."""
        from serving.metrics import parse_selector

        settings = settings or Settings.from_environ()
        return cls(
            metrics_url=target.metrics_url,
            prometheus_url=settings.prometheus_url,
            selector=parse_selector(settings.prometheus_selector),
        )

    @classmethod
    def cluster(cls, settings: Settings) -> RolloutTarget | None:
        """Cluster mode (the training RayJob): the live state store and Prometheus are named; None otherwise."""
        from serving.metrics import parse_selector

        if not (settings.live_state_uri and settings.prometheus_url):
            return None
        return cls(
            prometheus_url=settings.prometheus_url,
            selector=parse_selector(settings.prometheus_selector),
            local_router=False,
        )

    def stats_source(self) -> Callable[[], dict[tuple[str, str], VersionStats]]:
        """A fresh reader of per-version stats: call once per rollout (it carries counter-reset state)."""
        if not (self.prometheus_url or self.metrics_url):
            raise ValueError("a rollout target needs a metrics_url or a prometheus_url to judge a rollout")
        return version_stats_source(self.metrics_url or "", self.prometheus_url, self.selector)

    def router_pinned(self) -> bool:
        """Whether the router obeys a pinned weight, as its ``lockgate_weight_pinned`` gauge says in Prometheus.

        False when no Prometheus is named (locally the serving file says it). Raises MetricsUnavailable when
        Prometheus cannot say: the caller decides what an unknown pin means.
        """
        if not self.prometheus_url:
            return False
        return query_weight_pinned(self.prometheus_url, self.selector)


def live_effects(
    target: RolloutTarget,
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
        if target.local_router:
            # Locally the router's health endpoint says when it serves the new weight; a step's hold starts then.
            wait_live_applied(file().serving, written.generation, APPLIED_WAIT_S)
        else:
            # In the cluster the measured bound stands in for the answer (RolloutTarget's docstring says why):
            # the step's hold, and its baseline reading, start once every replica has followed the write.
            time.sleep(target.applied_bound_s)

    def pinned() -> bool:
        """A pin in the serving file (local), the router's pin gauge (Prometheus), or a person's pause.

        In a cluster the pin is Pulumi's (``lockgate:canaryWeight`` → ``weight_pinned`` in ``serveConfigV2``),
        which this pod cannot read without Kubernetes API rights; the router reports what it obeys as a gauge
        and the controller reads it through the same Prometheus it judges the rollout on. A gauge that cannot
        be read counts as no pin here: the router obeys a pin whatever the controller knows, and the stats
        reader's outage policy (hold, then roll back) already covers a Prometheus that is down.
        """
        if file().traffic.candidate_weight is not None or store.read(model)[0].paused:
            return True
        try:
            return target.router_pinned()
        except Exception as error:  # unknown: the outage policy decides, the router obeys a pin anyway
            logger.warning("the router's pin could not be read: %s", error)
            return False

    def end() -> None:
        store.update(model, owned(lambda s: s.model_copy(update=ENDED)))

    def promote() -> None:
        # A pin set during the last step must stop the promotion too (the controller checks only between
        # steps). Here a pin that cannot be read refuses (MetricsUnavailable → a rollback): a promotion is
        # the one step a later pin cannot undo.
        if (
            file().traffic.candidate_weight is not None
            or store.read(model)[0].paused
            or target.router_pinned()
        ):
            raise YieldToPin("a pin or a pause was set before the promotion")
        outcome = promotion.promote(model, candidate, champion)
        if not outcome.ok:
            raise PromotionRefused(outcome.reason)
        end()  # the champion alias now names the candidate: the router serves it alone

    def reject(reason: str) -> None:
        change = promotion.reject(model, candidate, reason)
        # Stale: the candidate alias already names another version, nothing of ours to remove. Any other
        # refusal (MLflow said no) is raised, so the rollback's cleanup retries it within its budget.
        if not change.ok and not change.stale:
            raise PromotionRefused(f"rejecting v{candidate} of {model}: {change.reason}")

    def renew() -> None:
        # A write only when half the lease is used up: the router reads every change, S3 bills every PUT.
        lease = held_lease(store.read(model)[0], model, owner)
        if lease.expires_at - utc_now() < timedelta(seconds=lease_ttl_s / 2):
            heartbeat(store, model, owner, lease_ttl_s)

    return RolloutEffects(
        apply_weight=apply_weight,
        scrape=target.stats_source(),  # one reader per rollout (Prometheus' counter-reset state)
        promote=promote,
        reject=reject,
        emit=emit,
        # A pinned weight (file or router), or a paused rollout, stops automation.
        is_pinned=pinned,
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
        # The controller checks a pin only between steps; every wait of a hold checks it too (once a second).
        self.effects = replace(effects, sleep=self._sleep_unless_pinned(effects.sleep))

    def _sleep_unless_pinned(self, sleep: Callable[[float], None]) -> Callable[[float], None]:
        def checked(seconds: float) -> None:
            if self.effects.is_pinned():
                raise YieldToPin("a pin or a pause was set while a step held")
            sleep(seconds)

        return checked

    def run(self) -> RolloutResult:
        """Acquire the lease (RolloutBusy naming the running candidate if another holds it), run, release.

        Promoted or rolled back: the rollout ends (no candidate, weight 0). Yielding to a pin or a pause keeps
        the candidate and its weight for a person to look at and a later run to resume; only the lease goes.
        """
        champion, candidate = self.versions
        acquire(self.store, self.model, self.owner, champion, candidate, self.lease_ttl_s)
        result: RolloutResult | None = None
        try:
            try:
                result = super().run()
            except YieldToPin as pinned:
                result = RolloutResult(
                    RolloutOutcome.pinned, reason=f"{pinned}: the router obeys the pin; automation yields"
                )
                self.effects.emit("rollout_step", result.reason, {"weight": None})
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
    target: ServingTarget | RolloutTarget,
    serving_file: Path,
    versions: tuple[str, str],
    emit: Callable[[str, str, dict[str, Any]], None],
    store: LiveStateStore | None = None,
) -> RolloutController:
    """The one way a rollout controller is built for a running environment (the pipeline's stage, the CLI).

    ``versions`` is (champion, candidate); ``target`` a local environment (``ServingTarget``) or a
    ``RolloutTarget`` (cluster mode). The live state is the environment's store (``live_state_store``; in
    cluster mode ``LOCKGATE_LIVE_STATE_URI``) unless ``store`` is given. Its ``run()`` refuses to start while
    another rollout of the model runs.
    """
    model_name = load_serving_file(serving_file).model_name
    if isinstance(target, ServingTarget):
        store = store or live_state_store(target)
        target = RolloutTarget.local(target)
    elif store is None:
        uri = Settings.from_environ().live_state_uri
        if not uri:
            raise ValueError(f"cluster mode needs {EnvVar.live_state_uri.value}: where the live state lives")
        store = open_store(uri)
    owner = rollout_owner()
    effects = live_effects(target, serving_file, store, versions, emit, owner)
    return LeasedRolloutController(policy, versions, effects, store, model_name, owner)


@dataclass(frozen=True)
class Reclaimed:
    """A rollout whose controller died, taken over: what it was doing and how it was ended."""

    candidate: str
    champion: str | None
    weight: float
    owner: str
    promoted: bool  # the controller died after moving the aliases: the candidate is champion already
    tagged: bool  # the candidate carries the rejected tag (False for a promotion, or when MLflow refused)
    reason: str


def reclaim_rollout(store: LiveStateStore, model: str) -> Reclaimed | None:
    """End a rollout whose lease expired: weight 0 in the store, the candidate tagged rejected; None if none.

    The store's compare-and-set decides who reclaims (``reclaim_orphan``): of several checkers running at
    once, exactly one gets a result here, so exactly one of them reports it (one ``rollback`` event). The
    orphaned state is the one read just before, checked by its generation (the reclaiming write is the next);
    if another write slipped in between, the candidate read is still the one reclaimed (a later acquire would
    have renewed the lease and left nothing to reclaim).
    A controller that died after the promotion moved the aliases left the candidate as champion: it is not
    rejected (the router already follows the champion alias), and the result says ``promoted``.
    """
    from contracts.vocabulary import Alias
    from serving.livestate import reclaim_orphan

    before, _ = store.read(model)
    written = reclaim_orphan(store, model)
    if written is None or before.candidate is None or before.lease is None:
        return None
    champion_now = promotion.current_aliases(model).get(Alias.champion)
    if champion_now == before.candidate:
        return Reclaimed(
            before.candidate,
            before.champion,
            before.candidate_weight,
            before.lease.owner,
            True,
            False,
            "the controller died after promoting it",
        )
    reason = (
        f"its rollout controller {before.lease.owner} stopped heartbeating (lease expired "
        f"{before.lease.expires_at.isoformat()}) at {before.candidate_weight:g}%: reclaimed, weight 0"
    )
    tagged = _reject_orphan(model, before.candidate, reason)
    return Reclaimed(
        before.candidate, before.champion, before.candidate_weight, before.lease.owner, False, tagged, reason
    )


def _reject_orphan(model: str, candidate: str, reason: str) -> bool:
    """Tag the orphan rejected and drop its candidate alias if it still has it; whether MLflow took it.

    Through the cluster's alias writer when this process is connected to Ray, else the same writer in-process
    (a trigger check's pod runs no Ray): the alias move is conditional either way, the tag is the verdict.
    """
    import ray

    from contracts.vocabulary import Alias, RolloutVerdict, Tag

    moves = [promotion.AliasMove(Alias.candidate, candidate, None, required=False)]
    tags = {candidate: {Tag.rollout.value: RolloutVerdict.rejected.value, Tag.rollout_reason.value: reason}}
    try:
        if ray.is_initialized():
            return promotion.apply_moves(model, moves, tags).ok
        return promotion.AliasWriter().apply(model, moves, tags).ok
    except Exception as error:  # the store is safe already; the tag is retried by nobody, so say so loudly
        logger.error("model %s: tagging orphaned candidate v%s rejected failed: %s", model, candidate, error)
        return False
