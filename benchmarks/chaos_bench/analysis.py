"""What the chaos run measured, computed from plain data: per-phase failures and recovery, captures, events."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from lockgate.traffic import Outcome


@dataclass(frozen=True)
class Phase:
    """One fault's window of the run (``time.monotonic``): from ``start`` to ``end``, the fault at ``fault``."""

    name: str
    start: float
    fault: float
    end: float
    note: str = ""


def unavailable_times(samples: Sequence[tuple[float, int]]) -> list[float]:
    """When the load client's tolerated-unavailable count rose (it keeps no outcome for those attempts)."""
    return [t for (t, count), (_, before) in zip(samples[1:], samples, strict=False) if count > before]


def unavailable_between(samples: Sequence[tuple[float, int]], start: float, end: float) -> int:
    """How many attempts found no router (no connection, or a 404) within [start, end)."""
    inside = [count for t, count in samples if start <= t < end]
    before = [count for t, count in samples if t < start]
    if not inside:
        return 0
    return inside[-1] - (before[-1] if before else inside[0])


def phase_figures(
    phase: Phase, outcomes: Sequence[Outcome], samples: Sequence[tuple[float, int]]
) -> dict[str, Any]:
    """Requests, failures (by kind), unanswered attempts and the time to recover within one phase.

    Recovery: from the fault to the first answer after the last failure of the phase (0 when nothing
    failed). The longest stretch without any answer says whether the router kept serving.
    """
    inside = [o for o in outcomes if phase.start <= o.done_s < phase.end]
    answered = [o for o in inside if o.ok]
    failed = [o for o in inside if not o.ok]
    unavailable = unavailable_between(samples, phase.start, phase.end)
    bad_times = [o.done_s for o in failed] + [
        t for t in unavailable_times(samples) if phase.start <= t < phase.end
    ]
    recovery: float | None = 0.0
    if bad_times:
        last_bad = max(bad_times)
        after = [o.done_s for o in answered if o.done_s > last_bad]
        recovery = round(min(after) - phase.fault, 2) if after else None
    answer_times = sorted(o.done_s for o in answered)
    edges = [phase.fault, *[t for t in answer_times if t >= phase.fault]]
    gaps = [b - a for a, b in zip(edges, edges[1:], strict=False)]
    return {
        "phase": phase.name,
        "note": phase.note,
        "window_s": round(phase.end - phase.start, 1),
        "requests": len(inside) + unavailable,
        "answered": len(answered),
        "failed": len(failed) + unavailable,
        "failed_with_status": len(failed),
        "no_router": unavailable,
        "failure_kinds": dict(Counter(o.failure or "?" for o in failed).most_common(5)),
        "recovery_s": recovery,
        "longest_without_answer_s": round(max(gaps), 2) if gaps else None,
        "answers_by_version": dict(Counter(o.version or "?" for o in answered)),
    }


def capture_check(
    outcomes: Sequence[Outcome], captured_ids: Iterable[str], phases: Sequence[Phase]
) -> dict[str, Any]:
    """Every answered request (all are sampled at 100%) against the captured request ids, per phase.

    ``captured_twice``: ids that appear in more than one captured row (a spool converted twice would).
    """
    ids = list(captured_ids)
    captured = set(ids)
    answered = [o for o in outcomes if o.ok]
    lost = [o for o in answered if o.request_id not in captured]
    answered_ids = {o.request_id for o in answered}
    per_phase = {phase.name: sum(1 for o in lost if phase.start <= o.done_s < phase.end) for phase in phases}
    return {
        "answered": len(answered),
        "captured_rows": len(ids),
        "captured_twice": sum(1 for n in Counter(ids).values() if n > 1),
        "lost": len(lost),
        "lost_by_phase": per_phase,
        "lost_outside_phases": len(lost) - sum(per_phase.values()),
        "captured_not_answered": len(captured - answered_ids),
        # How long before a kill the lost rows were answered (a replica that buffered rows in memory lost
        # up to flush_interval_s of them).
        "lost_seconds_before_a_kill": sorted(
            {
                round(min((p.fault - o.done_s for p in phases if p.fault >= o.done_s), default=-1.0), 1)
                for o in lost
            }
        )[-3:],
        "lost_examples": [
            {"request_id": o.request_id, "done_s": round(o.done_s, 2), "version": o.version} for o in lost[:5]
        ],
    }


def events_check(emitted: Sequence[dict[str, Any]], logged: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Events the controller emitted against the ones in the event log: none lost, none doubled, one ending."""
    emitted_ids = [e["event_id"] for e in emitted]
    logged_ids = [e["event_id"] for e in logged]
    endings = [e["type"] for e in logged if e["type"] in ("promotion", "rollback")]
    return {
        "emitted": len(emitted_ids),
        "logged": len(logged_ids),
        "lost": sorted(set(emitted_ids) - set(logged_ids)),
        "duplicated": sorted(i for i, n in Counter(logged_ids).items() if n > 1),
        "types": [e["type"] for e in logged],
        "endings": endings,
        "ending_messages": [e["message"][:600] for e in logged if e["type"] in ("promotion", "rollback")],
        "one_ending": len(endings) == 1,
    }


def rollout_consistency(
    outcome: str | None,
    aliases: dict[str, str],
    champion: str,
    candidate: str,
    weight: float,
    candidate_tag: str | None,
) -> dict[str, Any]:
    """Whether a rollout's end left aliases and weight consistent.

    Promoted: champion = candidate, previous = the old champion, no candidate alias, weight 0. Otherwise:
    the old champion still champion, the candidate at weight 0 and not champion (``consistent``); and, for a
    clean rollback, its candidate alias removed and its version tagged rejected (``cleaned_up``).
    """
    seen = {"outcome": outcome, "aliases": aliases, "weight": weight, "candidate_tag": candidate_tag}
    if outcome == "promoted":
        ok = aliases.get("champion") == candidate and aliases.get("previous") == champion
        ok = ok and aliases.get("candidate") is None and weight == 0.0
        return {**seen, "consistent": ok, "cleaned_up": ok and candidate_tag == "promoted"}
    ok = aliases.get("champion") == champion and weight == 0.0
    cleaned = ok and aliases.get("candidate") != candidate and candidate_tag == "rejected"
    return {**seen, "consistent": ok, "cleaned_up": cleaned}
