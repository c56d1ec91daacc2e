"""The Ray Serve application: one ingress replica holds champion and candidate and splits traffic in-process.

One hop by design: each extra deployment hop costs about as much CPU as the HTTP proxy (RUNTIME_NOTES),
so the router scores with whichever version it picks instead of forwarding to a model deployment. The
split lives in ``user_config``; ``reconfigure()`` applies it in place and swaps models only after the new
ones have loaded, so requests never see a half-applied change.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import sys
import time
import uuid
from typing import Any

from ray import serve
from ray.serve.context import _get_serve_request_context
from ray.serve.metrics import Counter, Histogram
from starlette.requests import Request
from starlette.responses import JSONResponse

from contracts.vocabulary import Header, Role, ServingMetric
from serving.answers import binary_probability, class_label, numeric_prediction
from serving.capture import CaptureBuffer, write_labels
from serving.routing import (
    RequestError,
    choose_version,
    parse_invocation,
    parse_rows,
    read_bounded,
    should_shadow,
)
from serving.scoring import LoadedModel, OutputError, Scored
from serving.spec import RouterConfig

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
        self.config: RouterConfig | None = None
        self.models: dict[str, LoadedModel] = {}
        self.capture: CaptureBuffer | None = None
        self._flushing = False
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

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply a new split and model set; load new versions first, then swap everything at once."""
        config = RouterConfig.model_validate(user_config)
        wanted = {Role.champion: config.champion, Role.candidate: config.candidate}
        loaded: dict[str, LoadedModel] = {}
        for role, ref in wanted.items():
            if ref is None:
                continue
            reuse = [m for m in self.models.values() if m.ref == ref]
            loaded[role] = reuse[0] if reuse else await asyncio.to_thread(LoadedModel.load, ref)
        _limit_torch_threads()
        previous = self.config.capture if self.config is not None else None
        self.models, self.config = loaded, config
        if config.capture != previous:
            old, spec = self.capture, config.capture
            self.capture = (
                CaptureBuffer(spec.uri, spec.batch_rows, spec.flush_interval_s)
                if spec.sample_percent > 0 and spec.uri
                else None
            )
            if old is not None:
                await asyncio.to_thread(self._flush_quietly, old)
        logger.info(
            "router config applied: champion=%s candidate=%s traffic=%s",
            config.champion.uri,
            config.candidate.uri if config.candidate else None,
            config.traffic.model_dump(),
        )

    async def __call__(self, request: Request) -> JSONResponse:
        """Answer one request: ``{"rows": ...}`` at the route, MLflow's scoring protocol at ``/invocations``."""
        # Serve's proxy owns x-request-id: it takes the client's or makes one, and echoes it on the response.
        request_id = _get_serve_request_context().request_id or uuid.uuid4().hex
        config, models = self.config, self.models
        if config is None or Role.champion not in models:
            return _error(503, "router has no model configured yet", request_id)
        endpoint = request.url.path.rstrip("/").rsplit("/", 1)[-1]
        if request.method == "GET" and endpoint in HEALTH_ENDPOINTS:
            return JSONResponse({"status": "ok", "request_id": request_id})
        if request.method != "POST":
            return _error(405, "use POST with a JSON body", request_id)
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
            scored = chosen.predict(rows) if chosen.fast else await asyncio.to_thread(chosen.predict, rows)
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
            self._flush_quietly(capture)

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


def _error(status: int, message: str, request_id: str, version: str | None = None) -> JSONResponse:
    headers = {}
    if version:
        headers[VERSION_HEADER] = version
    return JSONResponse({"error": message, "request_id": request_id}, status_code=status, headers=headers)


app = Router.bind()  # type: ignore[attr-defined]  # added by @serve.deployment
