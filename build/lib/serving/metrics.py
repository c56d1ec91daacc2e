"""Read the router's per-version metrics back from Prometheus text, as dashboards and rollout analysis do."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

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


def parse_version_stats(text: str) -> dict[tuple[str, str], VersionStats]:
    """Sum the router's counters and latency buckets over replicas, keyed by (version, role)."""
    stats: dict[tuple[str, str], VersionStats] = defaultdict(VersionStats)
    for family in text_string_to_metric_families(text):
        if family.name not in (
            REQUESTS_METRIC,
            LATENCY_METRIC,
            PREDICTION_METRIC,
            MOMENTS_METRIC,
            CLASS_METRIC,
        ):
            continue
        for sample in family.samples:
            key = (sample.labels.get("version", ""), sample.labels.get("role", ""))
            if family.name == REQUESTS_METRIC and sample.name.endswith("_total"):
                if sample.labels.get("status") == "ok":
                    stats[key].ok += sample.value
                else:
                    stats[key].errors += sample.value
            elif family.name == LATENCY_METRIC and sample.name.endswith("_bucket"):
                bound = float(sample.labels["le"])
                stats[key].latency_buckets[bound] = stats[key].latency_buckets.get(bound, 0.0) + sample.value
            elif family.name == PREDICTION_METRIC and sample.name.endswith("_bucket"):
                bound = float(sample.labels["le"])
                buckets = stats[key].prediction_buckets
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
            elif family.name == PREDICTION_METRIC and sample.name.endswith("_sum"):
                stats[key].prediction_sum += sample.value
            elif family.name == PREDICTION_METRIC and sample.name.endswith("_count"):
                stats[key].prediction_count += sample.value
            elif family.name == MOMENTS_METRIC and sample.name.endswith("_total"):
                moments, moment = stats[key].value_moments, sample.labels.get("moment", "")
                moments[moment] = moments.get(moment, 0.0) + sample.value
            elif family.name == CLASS_METRIC and sample.name.endswith("_total"):
                counts, label = stats[key].class_counts, sample.labels.get("class", "")
                counts[label] = counts.get(label, 0.0) + sample.value
    return dict(stats)


def scrape_version_stats(metrics_url: str, timeout_s: float = 5.0) -> dict[tuple[str, str], VersionStats]:
    """Scrape a Prometheus endpoint (Ray's metrics export port) and parse the router's metrics."""
    response = requests.get(metrics_url, timeout=timeout_s)
    response.raise_for_status()
    return parse_version_stats(response.text)
