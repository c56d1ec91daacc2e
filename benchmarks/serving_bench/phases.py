"""One phase of the router benchmark: each spec variant measured on each path, weight changes under load."""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

from lockgate.localenv import LocalEnvironment
from lockgate.traffic import LoadClient, Outcome

from .probes import check_split
from .processes import non_loopback_listeners, progress
from .router import RouterUnderTest, replica_code_paths
from .settings import (
    APP_NAME,
    CANDIDATE_WEIGHT,
    CHANGE_CLIENTS,
    CHANGE_TIMEOUT_S,
    LEVER_NAMES,
    SERVE_PORT,
    WEIGHT_CHANGES,
)
from .wrk import Measurement, measure


def outcome_label(outcome: Outcome) -> str:
    """The split label that answered, or ``FAIL:<kind>`` (the form the results file records)."""
    return (outcome.split or "?") if outcome.ok else f"FAIL:{outcome.failure}"


def records(load: LoadClient) -> list[tuple[float, float, str]]:
    """Every finished request so far as (sent, done, split label or "FAIL:...")."""
    return [(o.sent_s, o.done_s, outcome_label(o)) for o in load.outcomes()]


def weight_change_test(router: RouterUnderTest, spec: Any, url: str) -> dict[str, Any]:
    """Deploy weight changes under closed-loop load; time to the new split, stragglers, failures."""
    from serving.app import SPLIT_HEADER, VERSION_HEADER

    changes: list[dict[str, Any]] = []
    current = CANDIDATE_WEIGHT
    load = LoadClient(
        url,
        [router.row],
        clients=CHANGE_CLIENTS,
        timeout_s=CHANGE_TIMEOUT_S,
        keep_outcomes=True,
        version_header=VERSION_HEADER,
        split_header=SPLIT_HEADER,
    )
    with load:
        time.sleep(2.0)
        for weight in WEIGHT_CHANGES:
            old, new = f"weighted:{current:g}", f"weighted:{weight:g}"
            t0 = time.monotonic()
            router.put(spec, weight)
            put_s = time.monotonic() - t0
            deadline = t0 + 120
            first_new = None
            while first_new is None and time.monotonic() < deadline:
                done = [d for s, d, o in records(load) if o == new and d >= t0]
                first_new = min(done) if done else None
                time.sleep(0.05)
            time.sleep(3.0)  # keep watching: another replica, or a request in flight, may still answer old
            window = [(s, d, o) for s, d, o in records(load) if d >= t0]
            stragglers = [d for s, d, o in window if o == old]
            failures = [o for s, d, o in window if o.startswith("FAIL")]
            changes.append(
                {
                    "from": old,
                    "to": new,
                    "put_s": round(put_s, 3),
                    "first_new_s": round(first_new - t0, 3) if first_new is not None else None,
                    "last_old_s": round(max(stragglers) - t0, 3) if stragglers else 0.0,
                    "old_after_first_new": sum(
                        1 for d in stragglers if first_new is not None and d > first_new
                    ),
                    "requests": len(window),
                    "failures": len(failures),
                    "failure_examples": sorted(set(failures))[:5],
                }
            )
            progress(
                f"  weight {old} -> {new}: PUT {put_s:.2f}s, first new {changes[-1]['first_new_s']}s, "
                f"last old {changes[-1]['last_old_s']}s, failures {len(failures)}/{len(window)}"
            )
            current = weight
        time.sleep(1.0)
    finished = records(load)
    failures = [o for _, _, o in finished if o.startswith("FAIL")]
    return {
        "url": url,
        "clients": CHANGE_CLIENTS,
        "timeout_s": CHANGE_TIMEOUT_S,
        "changes": changes,
        "total_requests": len(finished),
        "total_failures": len(failures),
        "failure_kinds": dict(Counter(failures)),
        "median_first_new_s": _median([c["first_new_s"] for c in changes]),
        "max_last_old_s": max((c["last_old_s"] for c in changes), default=None),
    }


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 3) if present else None


def bench_phase(
    phase: str,
    env: LocalEnvironment,
    router: RouterUnderTest,
    lua: Path,
    args: argparse.Namespace,
) -> tuple[list[Measurement], list[dict[str, Any]], dict[str, Any]]:
    from serving.spec import ServingSpec

    base: dict[str, Any] = {"app_name": APP_NAME, "http_port": SERVE_PORT}
    variants: list[tuple[str, dict[str, Any], bool]] = [("default", {}, True)]
    if phase == "base":
        variants.append(("max_ongoing_requests=5 (Ray's default)", {"max_ongoing_requests": 5}, False))
    variants.append(("max_ongoing_requests=256", {"max_ongoing_requests": 256}, False))
    variants.append(("2 replicas x 0.5 CPU", {"num_replicas": 2, "replica_num_cpus": 0.5}, True))
    measurements: list[Measurement] = []
    changes: list[dict[str, Any]] = []
    info: dict[str, Any] = {"deploys": {}, "checks": {}}
    for name, overrides, with_change in variants:
        spec = ServingSpec(**base, **overrides)
        settings = {
            "num_replicas": spec.num_replicas,
            "replica_num_cpus": spec.replica_num_cpus,
            "max_ongoing_requests": spec.max_ongoing_requests,
            "serve_ingress": env.serve_ingress,
            "levers": {k: {**os.environ, **env.ingress_env()}.get(k, "0") for k in LEVER_NAMES},
        }
        progress(f"[{phase}] deploying router: {name}")
        deploy = router.deploy(spec, CANDIDATE_WEIGHT)
        info["deploys"][name] = deploy
        progress(
            f"  in force after {deploy['spec_in_force_s']}s "
            f"(status right after PUT: {deploy['status_right_after_put']})"
        )
        paths = [("proxy", [router.proxy_url])]
        direct = router.direct_urls()
        if direct:
            paths.append((f"direct x{len(direct)}" if len(direct) > 1 else "direct", direct))
        for path, urls in paths:
            check = check_split(urls[0], router.row, router.candidate.version)
            info["checks"][f"{name} / {path}"] = check
            notes = [f"candidate share {check['candidate_share_pct']}% of {sum(check['statuses'].values())}"]
            if check["request_id_echoed_pct"] < 100:
                notes.append(f"x-request-id echoed on {check['request_id_echoed_pct']}% only")
            progress(f"[{phase}] {name} via {path} {urls}: {notes}")
            wrk, foreign = measure(urls, lua, args, env.metrics_url)
            measurements.append(
                Measurement("lockgate", phase, name, path, {**settings, "urls": urls}, wrk, foreign, notes)
            )
        if with_change and not args.skip_weight_change:
            progress(f"[{phase}] weight changes under load: {name}")
            result = weight_change_test(router, spec, router.proxy_url)
            changes.append({"phase": phase, "config": name, **result})
    info["replica_code"] = replica_code_paths(router)
    info["non_loopback_listeners"] = non_loopback_listeners()
    if info["non_loopback_listeners"]:
        progress(f"[{phase}] listeners not on 127.0.0.1: {info['non_loopback_listeners']}")
    return measurements, changes, info
