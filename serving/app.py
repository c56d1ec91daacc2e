"""The Ray Serve application: one ingress replica holds champion and candidate and splits traffic in-process.

One hop by design: each extra deployment hop costs about as much CPU as the HTTP proxy (RUNTIME_NOTES),
so the router scores with whichever version it picks instead of forwarding to a model deployment. The
split lives in ``user_config``; ``reconfigure()`` applies it in place and swaps models only after the new
ones have loaded, so requests never see a half-applied change.

A champion the registry does not have yet (a fresh cluster: no version, or no version with the alias the
config follows) does not fail the deployment: the router starts, answers 503 saying what it waits for, and
asks the registry again every ``registry_poll_s`` until it can serve, with no redeploy. A failed deployment
would stay failed in a cluster: KubeRay v1.7.0 calls a RayService ready only when every application is
RUNNING and does not submit an unchanged ``serveConfigV2`` again (ray-operator/controllers/ray/
rayservice_controller.go: getAndCheckServeStatus, checkIfNeedSubmitServeApplications).

The deployed ``user_config`` is the *shape* (and any pin); the rollout's *live state* (candidate, weight,
paused) lives in a store the environment names (``LOCKGATE_LIVE_STATE_URI``, serving/livestate.py). The
router reads it every ``live_poll_s`` (a conditional GET on S3) and applies a change as ``reconfigure`` does,
in place: no Serve redeploy, no replica restart, and ``serveConfigV2`` never changes during a rollout. A live
candidate is loaded and smoke-scored before it takes traffic; one that fails is not served and the failure is
shown on the health endpoint and counted. An unreadable store keeps the last state and never fails a request.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import random
import sys
import time
import uuid
import weakref
from typing import Any

from ray import serve
from ray.serve.context import _get_serve_request_context
from ray.serve.metrics import Counter, Gauge, Histogram
from starlette.requests import Request
from starlette.responses import JSONResponse

from contracts.settings import EnvVar, Settings
from contracts.vocabulary import Header, Role, ServingMetric
from serving.answers import binary_probability, class_label, numeric_prediction
from serving.batching import Batcher
from serving.capture import CaptureBuffer, write_labels
from serving.desired import smoke_score
from serving.livestate import LiveState, LiveStateStore, Token, follow_live_state, open_store
from serving.routing import (
    RequestError,
    choose_version,
    parse_invocation,
    parse_rows,
    read_bounded,
    should_shadow,
)
from serving.scoring import LoadedModel, OutputError, Scored, registry_version
from serving.spec import AliasRef, ModelRef, RouterConfig

logger = logging.getLogger("ray.serve")
VERSION_HEADER, SPLIT_HEADER = Header.version.value, Header.traffic_split.value
LATENCY_BOUNDARIES = [
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
]
MAX_CLASSES = 100  # distinct class labels a replica counts (each is a metric series)
PREDICTION_BOUNDARIES = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
INVOCATIONS_ENDPOINT = "invocations"  # MLflow's scoring path, under the route prefix
HEALTH_ENDPOINTS = ("ping", "health")  # as `mlflow models serve` answers them


@serve.deployment(name="Router")
class Router:
    """The ingress: validates, routes, scores, and measures per version and mode."""

    def __init__(self) -> None:
        self.config: RouterConfig | None = None  # what serves: the shape with the live state applied
        self.shape: RouterConfig | None = None  # the deployed user_config
        self.models: dict[str, LoadedModel] = {}
        live_state_uri = Settings.from_environ().live_state_uri
        self._live_store: LiveStateStore | None = open_store(live_state_uri) if live_state_uri else None
        self.live: LiveState | None = None  # the live state last applied, and the token it was read with
        self._live_token: Token = None
        self._live_unreadable: str | None = None  # why the store could not be read (the last state serves)
        self._unservable: str | None = None  # a live candidate that failed to load or score: not retried
        self._candidate_problem: str | None = None
        self._apply_lock = asyncio.Lock()
        # Bumped by every reconfigure: a registry poll that finished loading after one drops its result.
        self._generation = 0
        self._poll: asyncio.Task | None = None
        self._waiting = ""  # why there is no champion yet, for the 503 answer
        self._unloadable: str | None = None  # a followed version that failed to load: not retried
        self.capture: CaptureBuffer | None = None
        self._flushing = False
        self._labels_token = _labels_token()
        # One batcher per loaded version object: a reconfigure that loads new versions gets new ones, and a
        # version no longer served takes its batcher with it (its worker ends once its queue is empty).
        self._batchers: weakref.WeakKeyDictionary[LoadedModel, Batcher] = weakref.WeakKeyDictionary()
        # Ray annotates tag_keys as tuple[str] though it takes any number of keys.
        tags: Any = ("version", "role", "mode")
        self.requests = Counter(
            ServingMetric.requests.value,
            "Requests answered, by version",
            tag_keys=(*tags, "status"),  # type: ignore[arg-type]
        )
        self.latency = Histogram(
            ServingMetric.latency.value,
            "Time to answer, by version",
            boundaries=LATENCY_BOUNDARIES,
            tag_keys=tags,
        )
        self.predictions = Histogram(
            ServingMetric.prediction.value,
            "Predicted probabilities, by version",
            boundaries=PREDICTION_BOUNDARIES,
            tag_keys=tags,
        )
        self.shadow_divergence = Histogram(
            ServingMetric.shadow_divergence.value,
            "|candidate - champion| in shadow",
            boundaries=[0.01, 0.02, 0.05, 0.1, 0.2, 0.5],
            tag_keys=("version",),
        )
        self.rejected = Counter(
            ServingMetric.rejected.value, "Client errors, by status", tag_keys=("status",)
        )
        # Outputs that are not one probability: a regression's value (its moments give mean and variance
        # exactly) and a classifier's predicted class; rollout analysis compares them between versions.
        self.moments = Counter(
            ServingMetric.prediction_moments.value,
            "Numeric predictions: count (n), sum (sum_pos - sum_neg) and sum of squares, by version",
            tag_keys=(*tags, "moment"),  # type: ignore[arg-type]
        )
        self.classes = Counter(
            ServingMetric.predicted_class.value,
            "Answers by predicted class, by version",
            tag_keys=(*tags, "class"),  # type: ignore[arg-type]
        )
        self.class_labels: set[str] = set()
        self.live_failures = Counter(
            ServingMetric.live_state_failures.value,
            "Live rollout state reads that failed (the last state kept serving) or candidates it named that "
            "could not be served",
            tag_keys=("reason",),  # type: ignore[arg-type]
        )
        self.live_generation = Gauge(
            ServingMetric.live_state_generation.value,
            "The live rollout state generation this replica applies",
        )
        # What this replica obeys: 1 while the deployed config pins the weight. The rollout controller in a
        # cluster reads it through Prometheus (serving/live.py), needing no Kubernetes API rights to see a pin
        # Pulumi wrote into serveConfigV2; the router writes nothing to the store, so it stays read-only there.
        self.weight_pinned = Gauge(
            ServingMetric.weight_pinned.value,
            "1 while the deployed serve config pins the candidate's weight (automation yields), else 0",
        )

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply a new shape (the deployed user_config) with the live state; load new versions first, then swap."""
        shape = RouterConfig.model_validate(user_config)
        async with self._apply_lock:
            live, token = self.live, self._live_token
            if self._live_store is not None:
                read = await self._read_live(shape.champion.name, token)
                if read is not None:
                    live, token = read
            await self._apply(shape, live)
            self._live_applied(live, token)

    async def _read_live(self, model: str, token: Token) -> tuple[LiveState, Token] | None:
        """The live state when it changed since ``token``; None when unchanged or unreadable (logged, counted)."""
        store = self._live_store
        assert store is not None  # noqa: S101 - only called when the environment names a store
        try:
            read = await asyncio.to_thread(store.read_if_changed, model, token)
        except Exception as error:
            # Unreadable or invalid: the last state keeps serving, the next poll retries.
            reason = f"live rollout state {store.location(model)} unreadable, last state kept: {error}"[:500]
            if reason != self._live_unreadable:
                logger.warning("%s", reason)
            self._live_unreadable = reason
            self.live_failures.inc(tags={"reason": "unreadable"})
            return None
        if self._live_unreadable is not None:
            logger.info("live rollout state %s readable again", store.location(model))
            self._live_unreadable = None
        return read

    def _live_applied(self, live: LiveState | None, token: Token) -> None:
        if live is not None and (self.live is None or live.candidate != self.live.candidate):
            self._unservable = None  # a new candidate gets its own chance
        self.live, self._live_token = live, token
        if live is not None:
            self.live_generation.set(live.generation)

    def _effective(self, shape: RouterConfig, live: LiveState | None) -> RouterConfig:
        """The shape with the live state applied, minus a live candidate already found unservable."""
        config = follow_live_state(shape, live)
        if live is not None and config.candidate is not None and config.candidate.uri == self._unservable:
            config = follow_live_state(shape, live.model_copy(update={"candidate": None}))
        return config

    async def _apply(self, shape: RouterConfig, live: LiveState | None) -> None:
        """Serve ``shape`` with ``live`` applied: load (and smoke-score a live candidate) first, then swap.

        A candidate the shape pins that fails to load fails this call, as a deploy should; one the live state
        names is left out instead (the champion serves alone) and the failure is shown and counted.
        """
        config = self._effective(shape, live)
        self._generation += 1
        self._unloadable = None
        loaded: dict[str, LoadedModel] = {}
        champion = await self._champion_version(config.champion)
        if champion is not None:
            loaded[Role.champion] = await self._load(champion)
        if config.candidate is not None:
            from_live = config.candidate != shape.candidate
            try:
                loaded[Role.candidate] = await self._load(config.candidate, smoke=from_live)
            except Exception as error:
                if not from_live:
                    raise
                self._unservable = config.candidate.uri
                self._candidate_problem = f"candidate {config.candidate.uri} is not served: {error}"[:1000]
                logger.error("%s (from the live rollout state)", self._candidate_problem)
                self.live_failures.inc(tags={"reason": "candidate"})
                config = self._effective(shape, live)
            else:
                if from_live:
                    self._candidate_problem = None
        _limit_torch_threads()
        previous = self.config.capture if self.config is not None else None
        self.models, self.config, self.shape = loaded, config, shape
        self._report_pin()
        # Keep polling while there is a live state to follow, no champion, or a champion that is an alias.
        if self._live_store is not None or champion is None or isinstance(config.champion, AliasRef):
            if self._poll is None or self._poll.done():
                self._poll = asyncio.get_running_loop().create_task(self._poll_registry())
        elif self._poll is not None:
            self._poll.cancel()
            self._poll = None
        if config.capture != previous:
            old, spec = self.capture, config.capture
            self.capture = (
                CaptureBuffer(spec.uri, spec.batch_rows, spec.flush_interval_s)
                if spec.sample_percent > 0 and spec.uri
                else None
            )
            if old is not None:  # its last batches written, its spool released (left to recovery if not)
                await asyncio.to_thread(old.close)
        logger.info(
            "router config applied: champion=%s (%s) candidate=%s traffic=%s",
            config.champion.uri,
            loaded[Role.champion].ref.uri if Role.champion in loaded else self._waiting,
            config.candidate.uri if config.candidate else None,
            config.traffic.model_dump(),
        )

    async def _load(self, ref: ModelRef, smoke: bool = False) -> LoadedModel:
        reuse = [m for m in self.models.values() if m.ref == ref]
        if reuse:
            return reuse[0]
        model = await asyncio.to_thread(LoadedModel.load, ref)
        if smoke:  # scored on its input example (or a served version's) before it takes any traffic
            await asyncio.to_thread(smoke_score, {ref.uri: model}, list(self.models.values()))
        return model

    async def _champion_version(self, ref: ModelRef | AliasRef) -> ModelRef | None:
        """The champion version to serve now, or None (and why, in ``_waiting``) when there is none yet.

        A pinned version is loaded as given when the registry cannot be asked; a version that exists but
        does not load still fails the reconfigure, as before.
        """
        try:
            version = await asyncio.to_thread(registry_version, ref)
        except Exception as error:  # the registry is unreachable or refused: say so, ask again later
            if isinstance(ref, ModelRef):
                return ref
            self._waiting = f"the model registry could not be asked for {ref.uri}: {error}"[:500]
            logger.warning("%s; asking again in a while", self._waiting)
            return None
        if version is None:
            what = (
                f"no version of model '{ref.name}' has the alias '{ref.alias.value}' yet"
                if isinstance(ref, AliasRef)
                else f"model '{ref.name}' has no version {ref.version} yet"
            )
            self._waiting = f"{what} ({ref.uri}): nothing to serve"
            return None
        self._waiting = ""
        return ModelRef(name=ref.name, version=version)

    def _report_pin(self) -> None:
        """Set the pin gauge from the deployed shape, every poll round as well as on each apply.

        Ray evicts a gauge value that is not recorded again within two metric export intervals
        (ray/_private/telemetry/open_telemetry_metric_recorder.py, ``_resolve_gauge_ttl_seconds``): set once,
        the series vanishes from Prometheus and the controller would never see a pin.
        """
        if self.shape is not None:
            self.weight_pinned.set(1.0 if self.shape.weight_pinned else 0.0)

    async def _poll_registry(self) -> None:
        """The one poll loop: the live state and the registry's champion, each on its own period.

        Every ``live_poll_s`` the live state (when a store is named); every ``registry_poll_s`` the champion
        the registry names, once it names one (or a new one).
        """
        asked = time.monotonic()
        while self.config is not None:
            config = self.config
            following = self._live_store is not None
            await asyncio.sleep(config.live_poll_s if following else config.registry_poll_s)
            self._report_pin()
            if following:
                try:
                    await self._refresh_live()
                except (
                    Exception
                ):  # a failed round is logged; what serves keeps serving, the next round retries
                    logger.exception("applying the live rollout state failed; the last state keeps serving")
            if self.config is not config:
                continue  # reconfigured meanwhile: its own settings apply from the next round
            if Role.champion in self.models and not isinstance(config.champion, AliasRef):
                if not following:
                    return  # a pinned version that appeared is served: nothing left to wait for
                continue
            if following and time.monotonic() - asked < config.registry_poll_s:
                continue
            asked = time.monotonic()
            try:
                await self._refresh_champion(config)
            except Exception:  # a failed round is logged; what serves keeps serving, the next round retries
                logger.exception("asking the registry for %s failed", config.champion.uri)

    async def _refresh_live(self) -> None:
        """Apply the live state when it changed since the last read (a conditional GET on S3)."""
        shape = self.shape
        if shape is None:
            return
        read = await self._read_live(shape.champion.name, self._live_token)
        if read is None:
            return
        live, token = read
        async with self._apply_lock:
            if self.shape is not shape:
                return  # a reconfigure read the live state itself meanwhile
            ended = self.live is not None and self.live.candidate is not None and live.candidate is None
            # A finished rollout hands the champion back to the alias: ask the registry now, not a poll later.
            if self._effective(shape, live) != self.config or (
                ended and isinstance(shape.champion, AliasRef)
            ):
                await self._apply(shape, live)
            self._live_applied(live, token)

    async def _refresh_champion(self, config: RouterConfig) -> None:
        generation = self._generation
        wanted = await self._champion_version(config.champion)
        current = self.models.get(Role.champion)
        if (
            wanted is None
            or (current is not None and current.ref == wanted)
            or wanted.uri == self._unloadable
        ):
            return
        try:
            model = await self._load(wanted)
        except Exception:
            self._unloadable = wanted.uri  # not loaded again until the registry names another version
            raise
        _limit_torch_threads()
        if generation != self._generation:
            return  # a reconfigure came in while this loaded: it decides what serves
        self.models = {**self.models, Role.champion: model}
        logger.info("champion %s (%s) now serves", model.ref.uri, config.champion.uri)

    def _live_report(self) -> dict[str, Any]:
        """What the live state says and what of it serves: the health endpoint's ``live_state``."""
        live, config = self.live, self.config
        return {
            "generation": live.generation if live is not None else None,
            "candidate": live.candidate if live is not None else None,
            "paused": live.paused if live is not None else None,
            "serving_candidate": config.candidate.version if config and config.candidate else None,
            "candidate_weight": config.traffic.candidate_weight if config is not None else None,
            "weight_pinned": config.weight_pinned if config is not None else None,
            "unreadable": self._live_unreadable,
            "candidate_problem": self._candidate_problem,
        }

    def _batcher(self, model: LoadedModel, config: RouterConfig) -> Batcher:
        batcher = self._batchers.get(model)
        if batcher is None or batcher.max_rows != config.batch_max_rows:
            batcher = self._batchers[model] = Batcher(model.predict, config.batch_max_rows)
        return batcher

    def _no_model(self, request_id: str) -> JSONResponse:
        """503 naming what the router waits for: the champion it is configured with is not in the registry."""
        config = self.config
        body: dict[str, Any] = {"error": "router has no model configured yet", "request_id": request_id}
        headers = {}
        if config is not None:
            ref = config.champion
            body.update(error=self._waiting or f"{ref.uri} is not loaded yet", model=ref.name)
            body.update({"alias": ref.alias.value} if isinstance(ref, AliasRef) else {"version": ref.version})
            headers["Retry-After"] = str(math.ceil(config.registry_poll_s))
        return JSONResponse(body, status_code=503, headers=headers)

    async def __call__(self, request: Request) -> JSONResponse:
        """Answer one request: ``{"rows": ...}`` at the route, MLflow's scoring protocol at ``/invocations``."""
        # Serve's proxy owns x-request-id: it takes the client's or makes one, and echoes it on the response.
        request_id = _get_serve_request_context().request_id or uuid.uuid4().hex
        config, models = self.config, self.models
        endpoint = request.url.path.rstrip("/").rsplit("/", 1)[-1]
        if request.method == "GET" and endpoint in HEALTH_ENDPOINTS:
            # The router is up even while it waits for a champion: `serving` says whether it can answer.
            serving = config is not None and Role.champion in models
            health: dict[str, Any] = {"status": "ok", "serving": serving, "request_id": request_id}
            if self._live_store is not None:
                health["live_state"] = self._live_report()
            return JSONResponse(health)
        if config is None or Role.champion not in models:
            return self._no_model(request_id)
        if request.method != "POST":
            return _error(405, "use POST with a JSON body", request_id)
        if not _is_json(request.headers.get("content-type")):
            # A web page may send text/plain or a form anywhere without asking; JSON needs a CORS preflight.
            return _error(
                415,
                f"Content-Type must be application/json, got {request.headers.get('content-type')!r:.80}",
                request_id,
            )
        if endpoint == "labels":
            return await self._labels(request, config, request_id)
        invocation = endpoint == INVOCATIONS_ENDPOINT
        champion = models[Role.champion]
        try:
            body = await read_bounded(
                request.stream(), request.headers.get("content-length"), config.max_body_bytes
            )
            parse = parse_invocation if invocation else parse_rows
            rows = parse(body, champion.rules, config.max_rows, config.max_body_bytes)
        except RequestError as error:
            self.rejected.inc(tags={"status": str(error.status)})
            return _error(error.status, error.message, request_id)
        traffic = config.traffic
        has_candidate = Role.candidate in models
        role = choose_version(
            traffic, has_candidate, request.headers.get(traffic.sticky_header), random.random() * 100
        )
        chosen = models[role]
        tags = {"version": chosen.ref.version, "role": role, "mode": traffic.mode.value}
        start = time.perf_counter()
        try:
            # Our record-level path takes well under a millisecond: run it inline. Any other model's
            # predict is arbitrary code: run it off the event loop, so a slow version cannot stall the other.
            # Any other model's concurrent requests are scored together (serving/batching.py).
            scored = (
                chosen.predict(rows) if chosen.fast else await self._batcher(chosen, config).predict(rows)
            )
        except Exception as error:
            logger.exception("model %s failed on request %s", chosen.ref.uri, request_id)
            self.requests.inc(tags={**tags, "status": "error"})
            # An unreturnable answer (NaN, wrong length) says what was wrong; other failures stay in the logs.
            reason = (
                f"gave an answer the router cannot return: {error}"
                if isinstance(error, OutputError)
                else "failed"
            )
            return _error(
                500,
                f"model {chosen.ref.uri} {reason}; see server logs for request {request_id}"[:1000],
                request_id,
                chosen.ref.version,
            )
        self.latency.observe(time.perf_counter() - start, tags=tags)
        self.requests.inc(tags={**tags, "status": "ok"})
        self._observe_predictions(scored.answers, tags)
        capture = self.capture
        if capture is not None and random.random() * 100 < config.capture.sample_percent:
            capture.add(
                rows,
                scored.answers,
                request_id=request_id,
                model=chosen.ref.name,
                version=chosen.ref.version,
                role=role,
            )
            if not self._flushing and capture.due():
                self._flushing = True
                asyncio.get_running_loop().create_task(self._flush(capture))
        if should_shadow(traffic, has_candidate, random.random() * 100):
            asyncio.get_running_loop().create_task(
                self._shadow(models[Role.candidate], rows, scored, traffic.mode.value)
            )
        headers = {VERSION_HEADER: chosen.ref.version, SPLIT_HEADER: split_label(config)}
        if invocation:
            # Exactly what `mlflow models serve` answers; who answered travels in the headers.
            return JSONResponse({"predictions": scored.predictions}, headers=headers)
        answer = {
            "request_id": request_id,
            "model": chosen.ref.name,
            "version": chosen.ref.version,
            "role": role,
            "predictions": scored.answers,
        }
        return JSONResponse(answer, headers=headers)

    def _observe_predictions(self, answers: list[dict[str, Any]], tags: dict[str, str]) -> None:
        """Record each answer's prediction in the metric that fits its kind (probability, value, class)."""
        values = []
        for answer in answers:
            probability = binary_probability(answer)
            if probability is not None:
                self.predictions.observe(probability, tags=tags)
                continue
            value = numeric_prediction(answer)
            if value is not None:
                values.append(value)
                continue
            label = class_label(answer)
            if label is not None and (label in self.class_labels or len(self.class_labels) < MAX_CLASSES):
                self.class_labels.add(label)
                self.classes.inc(tags={**tags, "class": label})
        if values:
            # A counter only grows: the sum is kept as its positive and negative parts.
            moments = {
                "n": float(len(values)),
                "sum_pos": sum(v for v in values if v > 0),
                "sum_neg": -sum(v for v in values if v < 0),
                "sum_sq": sum(v * v for v in values),
            }
            for moment, amount in moments.items():
                if amount > 0:
                    self.moments.inc(amount, tags={**tags, "moment": moment})

    async def _labels(self, request: Request, config: RouterConfig, request_id: str) -> JSONResponse:
        """Record labels that arrived after the answers: ``{"labels": [{"request_id": ..., "label": ...}]}``.

        A label is what the model predicts: 0/1 (binary), a class name (multiclass), a number (regression).
        """
        if self._labels_token is None:
            return _error(
                403,
                f"labels are off on this router: no token is configured ({EnvVar.labels_token_file.value})",
                request_id,
            )
        offered = request.headers.get("authorization", "")
        if not hmac.compare_digest(offered.encode(), f"Bearer {self._labels_token}".encode()):
            return _error(401, "labels need 'Authorization: Bearer <the labels token>'", request_id)
        uri = config.capture.uri
        if config.capture.sample_percent <= 0 or not uri:
            return _error(
                409, "capture is off (capture.sample_percent is 0): labels have nowhere to go", request_id
            )
        try:
            body = await read_bounded(
                request.stream(), request.headers.get("content-length"), config.max_body_bytes
            )
        except RequestError as error:
            return _error(error.status, error.message, request_id)
        try:
            payload = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
            return _error(400, f"body is not valid JSON: {error}", request_id)
        items = payload.get("labels") if isinstance(payload, dict) else None
        if not isinstance(items, list) or not items:
            return _error(
                400,
                'body must be {"labels": [{"request_id": "...", "label": <0/1, class or number>}, ...]}',
                request_id,
            )
        if len(items) > config.max_rows:
            return _error(413, f"{len(items)} labels, more than the limit of {config.max_rows}", request_id)
        pairs = []
        for index, item in enumerate(items):
            if not isinstance(item, dict) or set(item) != {"request_id", "label"}:
                return _error(
                    400, f"labels[{index}] must have exactly the keys request_id and label", request_id
                )
            pairs.append((item["request_id"], item["label"]))
        try:
            _, recorded = await asyncio.to_thread(write_labels, uri, pairs)
        except ValueError as error:
            return _error(400, f"labels: {error}", request_id)
        return JSONResponse({"recorded": recorded, "request_id": request_id})

    async def _flush(self, capture: CaptureBuffer) -> None:
        try:
            await asyncio.to_thread(self._flush_quietly, capture)
        finally:
            self._flushing = False

    @staticmethod
    def _flush_quietly(capture: CaptureBuffer) -> None:
        """Write buffered captures; a failed write keeps the rows for the next try and is logged."""
        try:
            capture.flush()
        except Exception:
            logger.exception("capture batch not written to %s; kept for the next flush", capture.uri)

    def check_health(self) -> None:
        """Serve calls this every few seconds: a quiet router still flushes what it captured."""
        capture = self.capture
        if capture is not None and not self._flushing and capture.due():
            self._flush_quietly(capture)

    def __del__(self) -> None:
        """On shutdown, write what is still buffered."""
        capture = getattr(self, "capture", None)
        if capture is not None:
            capture.close()

    async def _shadow(self, candidate: LoadedModel, rows: list[dict], answered: Scored, mode: str) -> None:
        """Score the mirrored request with the candidate; record, never return."""
        tags = {"version": candidate.ref.version, "role": Role.shadow, "mode": mode}
        start = time.perf_counter()
        try:
            shadow = await asyncio.to_thread(candidate.predict, rows)
        except Exception:
            logger.exception("shadow model %s failed", candidate.ref.uri)
            self.requests.inc(tags={**tags, "status": "error"})
            return
        self.latency.observe(time.perf_counter() - start, tags=tags)
        self.requests.inc(tags={**tags, "status": "ok"})
        # Divergence is measured between binary probabilities; other answers are counted, not compared.
        for mirrored, returned in zip(shadow.answers, answered.answers, strict=True):
            mirrored_p, returned_p = binary_probability(mirrored), binary_probability(returned)
            if mirrored_p is not None and returned_p is not None:
                self.shadow_divergence.observe(
                    abs(mirrored_p - returned_p), tags={"version": candidate.ref.version}
                )


def _limit_torch_threads() -> None:
    """One intra-op thread for torch, when a loaded model brought it in: replicas share few cores."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


def split_label(config: RouterConfig) -> str:
    """A short name for the split in force: mode and candidate share."""
    traffic = config.traffic
    share = traffic.shadow_percent if traffic.mode.value == "shadow" else traffic.candidate_weight
    return f"{traffic.mode.value}:{share:g}"


def _is_json(content_type: str | None) -> bool:
    return (content_type or "").split(";", 1)[0].strip().lower() == "application/json"


def _labels_token() -> str | None:
    """The labels token from the file the environment names (None: no file, or it cannot be read)."""
    path = Settings.from_environ().labels_token_file
    if path is None:
        return None
    try:
        token = path.read_text().strip()
    except OSError:
        logger.warning("labels token file %s cannot be read: labels are off", path)
        return None
    return token or None


def _error(status: int, message: str, request_id: str, version: str | None = None) -> JSONResponse:
    headers = {}
    if version:
        headers[VERSION_HEADER] = version
    return JSONResponse({"error": message, "request_id": request_id}, status_code=status, headers=headers)


app = Router.bind()  # type: ignore[attr-defined]  # added by @serve.deployment
