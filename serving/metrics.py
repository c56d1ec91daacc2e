"""Read the router's per-version metrics back, as dashboards and rollout analysis do.

From one Prometheus endpoint (Ray's metrics export port, locally) or from the Prometheus HTTP API (the in-cluster
Prometheus, summing every router pod).
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

from contracts.vocabulary import ServingMetric

REQUESTS_METRIC = ServingMetric.requests.exported
LATENCY_METRIC = ServingMetric.latency.exported
PREDICTION_METRIC = ServingMetric.prediction.exported
MOMENTS_METRIC = ServingMetric.prediction_moments.exported
CLASS_METRIC = ServingMetric.predicted_class.exported


@dataclass
class VersionStats:
    """Counts and latency histogram for one (version, role) pair."""

    ok: float = 0.0
    errors: float = 0.0
    latency_buckets: dict[float, float] = field(default_factory=dict)
    prediction_sum: float = 0.0
    prediction_count: float = 0.0
    prediction_buckets: dict[float, float] = field(default_factory=dict)
    # A regression's values (exact moments) and a classifier's answers by predicted class.
    value_moments: dict[str, float] = field(default_factory=dict)
    class_counts: dict[str, float] = field(default_factory=dict)

    @property
    def value_count(self) -> float:
        """How many numeric (regression) predictions."""
        return self.value_moments.get("n", 0.0)

    @property
    def value_mean(self) -> float:
        """Mean of the numeric predictions (NaN before any)."""
        n = self.value_count
        return (
            (self.value_moments.get("sum_pos", 0.0) - self.value_moments.get("sum_neg", 0.0)) / n
            if n
            else math.nan
        )

    @property
    def value_variance(self) -> float:
        """Variance of the numeric predictions (NaN with fewer than two)."""
        n = self.value_count
        if n < 2:
            return math.nan
        mean = self.value_mean
        return max(self.value_moments.get("sum_sq", 0.0) / n - mean * mean, 0.0) * n / (n - 1)

    @property
    def mean_prediction(self) -> float:
        """Mean predicted probability (NaN before any prediction)."""
        return self.prediction_sum / self.prediction_count if self.prediction_count else float("nan")

    @property
    def prediction_variance(self) -> float:
        """Variance of the predictions, estimated from the histogram's bucket midpoints (NaN without buckets).

        Probabilities live in [0, 1], so the last (+Inf) bucket is closed at 1.
        """
        ordered = sorted(self.prediction_buckets.items())
        if len(ordered) < 2 or ordered[-1][1] <= 0:
            return float("nan")
        total, lower, below, moments = ordered[-1][1], 0.0, 0.0, [0.0, 0.0]
        for bound, cumulative in ordered:
            upper = min(bound, 1.0)
            count = cumulative - below
            midpoint = (lower + upper) / 2
            moments[0] += count * midpoint
            moments[1] += count * midpoint * midpoint
            lower, below = upper, cumulative
        mean = moments[0] / total
        return max(moments[1] / total - mean * mean, 0.0)

    def minus(self, earlier: VersionStats) -> VersionStats:
        """What happened between an earlier scrape and this one (the counters are cumulative)."""
        return VersionStats(
            ok=self.ok - earlier.ok,
            errors=self.errors - earlier.errors,
            latency_buckets={
                b: c - earlier.latency_buckets.get(b, 0.0) for b, c in self.latency_buckets.items()
            },
            prediction_sum=self.prediction_sum - earlier.prediction_sum,
            prediction_count=self.prediction_count - earlier.prediction_count,
            prediction_buckets={
                b: c - earlier.prediction_buckets.get(b, 0.0) for b, c in self.prediction_buckets.items()
            },
            value_moments={m: v - earlier.value_moments.get(m, 0.0) for m, v in self.value_moments.items()},
            class_counts={c: v - earlier.class_counts.get(c, 0.0) for c, v in self.class_counts.items()},
        )

    @property
    def total(self) -> float:
        """All answered requests."""
        return self.ok + self.errors

    @property
    def error_rate(self) -> float:
        """Errors over all requests (0 when there were none)."""
        return self.errors / self.total if self.total else 0.0

    def latency_quantile(self, q: float) -> float:
        """Upper bound of the histogram bucket holding quantile ``q`` (inf when beyond the last bucket)."""
        ordered = sorted(self.latency_buckets.items())
        if not ordered or ordered[-1][1] == 0:
            return float("nan")
        target = q * ordered[-1][1]
        return next(bound for bound, count in ordered if count >= target)


# Every series of the router's exposition the analysis reads (latency's _sum and _count it does not need).
ROUTER_SERIES = (
    f"{REQUESTS_METRIC}_total",
    f"{LATENCY_METRIC}_bucket",
    f"{PREDICTION_METRIC}_bucket",
    f"{PREDICTION_METRIC}_sum",
    f"{PREDICTION_METRIC}_count",
    f"{MOMENTS_METRIC}_total",
    f"{CLASS_METRIC}_total",
)


def add_sample(stats: VersionStats, name: str, labels: dict[str, str], value: float) -> None:
    """Add one series' value to the field of ``stats`` it feeds (the inverse of the router's exposition)."""
    if name == f"{REQUESTS_METRIC}_total":
        if labels.get("status") == "ok":
            stats.ok += value
        else:
            stats.errors += value
    elif name == f"{LATENCY_METRIC}_bucket":
        bound = float(labels["le"])
        stats.latency_buckets[bound] = stats.latency_buckets.get(bound, 0.0) + value
    elif name == f"{PREDICTION_METRIC}_bucket":
        bound = float(labels["le"])
        stats.prediction_buckets[bound] = stats.prediction_buckets.get(bound, 0.0) + value
    elif name == f"{PREDICTION_METRIC}_sum":
        stats.prediction_sum += value
    elif name == f"{PREDICTION_METRIC}_count":
        stats.prediction_count += value
    elif name == f"{MOMENTS_METRIC}_total":
        moment = labels.get("moment", "")
        stats.value_moments[moment] = stats.value_moments.get(moment, 0.0) + value
    elif name == f"{CLASS_METRIC}_total":
        label = labels.get("class", "")
        stats.class_counts[label] = stats.class_counts.get(label, 0.0) + value


def parse_version_stats(
    text: str, selector: dict[str, str] | None = None
) -> dict[tuple[str, str], VersionStats]:
    """Sum the router's counters and latency buckets over replicas, keyed by (version, role).

    ``selector``: exact label values a series must carry to count (for example the Serve ``application``, when
    several applications share one Ray cluster and so one metrics endpoint).
    """
    wanted = (selector or {}).items()
    stats: dict[tuple[str, str], VersionStats] = defaultdict(VersionStats)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in ROUTER_SERIES and all(sample.labels.get(k) == v for k, v in wanted):
                key = (sample.labels.get("version", ""), sample.labels.get("role", ""))
                add_sample(stats[key], sample.name, sample.labels, sample.value)
    return dict(stats)


def scrape_version_stats(
    metrics_url: str, timeout_s: float = 5.0, selector: dict[str, str] | None = None
) -> dict[tuple[str, str], VersionStats]:
    """Scrape a Prometheus endpoint (Ray's metrics export port) and parse the router's metrics."""
    response = requests.get(metrics_url, timeout=timeout_s)
    response.raise_for_status()
    return parse_version_stats(response.text, selector)


class MetricsUnavailable(RuntimeError):
    """Prometheus could not be asked, or its answer cannot be judged on (a scrape target is down).

    A plain ``RuntimeError``: the rollout controller retries any effect that raises and, when it keeps failing,
    ends the rollout as a rollback with ``EffectFailed`` carrying this message.
    """


def _matchers(selector: dict[str, str]) -> str:
    """A PromQL label-matcher list (``{a="x",b="y"}``, values escaped) from exact label values."""
    escaped = (
        f'{label}="{value.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for label, value in sorted(selector.items())
    )
    joined = ",".join(escaped)
    return "{" + joined + "}" if joined else ""


class PrometheusVersionStats:
    """The router's per-version stats as the in-cluster Prometheus sees them, summed over every pod.

    Call it for one reading (the same ``{(version, role): VersionStats}`` as ``scrape_version_stats``); the
    rollout controller subtracts two readings, so they must be cumulative and never go down. Summing the
    counters in PromQL (``sum by (version, role, ...)``) would not be: when a pod or a Serve replica restarts,
    its counters start again from 0 (or its series vanishes and a new one begins), the sum drops and a step's
    delta comes out negative or short. ``increase()`` over the step window would hide the reset but
    extrapolates to the window's edges, so its counts are not the counts served. This reader therefore asks
    for every router series as it is (one instant query per metric, no aggregation) and applies Prometheus'
    own counter-reset rule per series between its readings: a value lower than the last one means the counter
    restarted, and what it had counted is kept. A series that vanishes keeps its last value in the sum. Only
    requests counted after a series' last reading and before its reset are lost, as with ``increase()``.

    Before each reading it checks the health of every scrape target that has carried router series
    (``up``): a target down means its pod's requests are missing from the answer, and the reader raises
    ``MetricsUnavailable`` naming it rather than let the controller judge a step on partial data.

    ``selector``: exact label values every router series must carry (for example the Serve ``application``
    or the ``namespace``/``ray_cluster`` of one stack). The in-cluster kube-prometheus-stack Prometheus
    serves its HTTP API without authentication (reaching it is restricted by NetworkPolicy), so no headers are
    sent.
    """

    def __init__(
        self, prometheus_url: str, selector: dict[str, str] | None = None, timeout_s: float = 5.0
    ) -> None:
        self.query_url = prometheus_url.rstrip("/") + "/api/v1/query"
        self.matchers = _matchers(selector or {})
        self.timeout_s = timeout_s
        # series identity → (last raw value, what earlier incarnations of the counter had counted)
        self._series: dict[tuple[tuple[str, str], ...], tuple[float, float]] = {}
        self._targets: set[tuple[str, str]] = set()  # (job, instance) that have carried router series

    def query(self, promql: str) -> list[dict[str, Any]]:
        """One instant query's vector result; ``MetricsUnavailable`` naming the URL and query on any failure."""
        try:
            response = requests.get(self.query_url, params={"query": promql}, timeout=self.timeout_s)
            body = response.json()
        except (requests.RequestException, ValueError) as error:
            raise MetricsUnavailable(
                f"Prometheus at {self.query_url} did not answer the query {promql!r}: "
                f"{type(error).__name__}: {error}"
            ) from error
        if response.status_code != 200 or body.get("status") != "success":
            raise MetricsUnavailable(
                f"Prometheus at {self.query_url} refused the query {promql!r} (HTTP {response.status_code}): "
                f"{body.get('errorType', '')} {body.get('error', response.text[:300])}"
            )
        result = body.get("data", {})
        if result.get("resultType") != "vector":
            raise MetricsUnavailable(
                f"Prometheus at {self.query_url} answered {promql!r} with a {result.get('resultType')!r}, "
                "not an instant vector"
            )
        return list(result.get("result", []))

    def _check_targets(self, seen: set[tuple[str, str]]) -> None:
        """Raise if a target that carries (or carried) router series is down now."""
        self._targets |= seen
        if not self._targets:
            return
        # Every target that is down, filtered here: a job name (`<namespace>/<monitor>` in a cluster) would
        # need escaping twice (regex, then PromQL string) to be matched in the query.
        down = sorted(
            f"{sample['metric'].get('instance', '?')} (job {sample['metric'].get('job', '?')})"
            for sample in self.query("up == 0")
            if (sample["metric"].get("job", ""), sample["metric"].get("instance", "")) in self._targets
        )
        if down:
            raise MetricsUnavailable(
                f"Prometheus at {self.query_url} could not scrape {', '.join(down)} (up == 0): that pod's "
                "requests are missing, so this reading would judge the rollout on partial data"
            )

    def __call__(self) -> dict[tuple[str, str], VersionStats]:
        """One cumulative reading, keyed by (version, role), corrected for counter resets."""
        samples = [
            (name, sample["metric"], float(sample["value"][1]))
            for name in ROUTER_SERIES
            for sample in self.query(f"{name}{self.matchers}")
        ]
        self._check_targets({(labels.get("job", ""), labels.get("instance", "")) for _, labels, _ in samples})
        for _, labels, value in samples:
            identity = tuple(sorted(labels.items()))
            last, carried = self._series.get(identity, (0.0, 0.0))
            # Prometheus' counter rule (as in rate() and increase()): any decrease is a restart from 0.
            self._series[identity] = (value, carried + last if value < last else carried)
        stats: dict[tuple[str, str], VersionStats] = defaultdict(VersionStats)
        for identity, (value, carried) in self._series.items():
            labels = dict(identity)
            key = (labels.get("version", ""), labels.get("role", ""))
            add_sample(stats[key], labels["__name__"], labels, value + carried)
        return dict(stats)


def query_version_stats(
    prometheus_url: str, selector: dict[str, str] | None = None, timeout_s: float = 5.0
) -> PrometheusVersionStats:
    """A reader of the router's stats from Prometheus's HTTP API (``LOCKGATE_PROMETHEUS_URL``), for a rollout.

    Returns the callable the controller's ``scrape`` effect takes; keep one per rollout, since it carries the
    counter-reset correction between readings (see ``PrometheusVersionStats``).
    """
    return PrometheusVersionStats(prometheus_url, selector, timeout_s)


def parse_selector(text: str | None) -> dict[str, str]:
    """Exact label values from a JSON object (``LOCKGATE_PROMETHEUS_SELECTOR``); empty for None or ''."""
    if not text:
        return {}
    try:
        selector = json.loads(text)
    except ValueError as error:
        raise ValueError(f"prometheus selector: {text!r} is not JSON: {error}") from error
    if not isinstance(selector, dict) or not all(
        isinstance(k, str) and re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", k) and isinstance(v, str)
        for k, v in selector.items()
    ):
        raise ValueError(f"prometheus selector: {text!r} must be a JSON object of label name → string value")
    return selector


def version_stats_source(
    metrics_url: str, prometheus_url: str | None = None, selector: dict[str, str] | None = None
) -> Callable[[], dict[tuple[str, str], VersionStats]]:
    """Where a rollout reads its stats: the in-cluster Prometheus when its URL is set, else the metrics endpoint.

    One call per rollout: the Prometheus reader carries its counter-reset correction from reading to reading.
    """
    if prometheus_url:
        return query_version_stats(prometheus_url, selector)
    return partial(scrape_version_stats, metrics_url, selector=selector)


def query_weight_pinned(
    prometheus_url: str, selector: dict[str, str] | None = None, timeout_s: float = 5.0
) -> bool:
    """Whether any router replica reports obeying a pinned weight (``lockgate_weight_pinned`` is 1).

    The router sets the gauge on every apply (serving/app.py). ``max`` over the replicas: one replica that
    obeys a pin is enough for automation to yield. No series at all (a router that never reported) counts as
    no pin; ``MetricsUnavailable`` when Prometheus cannot be asked.
    """
    reader = PrometheusVersionStats(prometheus_url, selector, timeout_s)
    samples = reader.query(f"max({ServingMetric.weight_pinned.exported}{reader.matchers})")
    return any(float(sample["value"][1]) >= 1.0 for sample in samples)
