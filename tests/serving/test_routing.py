"""Routing core: weighted draws, sticky buckets monotone in the weight, shadow, and body validation."""

from __future__ import annotations

import json

import pytest

from contracts.vocabulary import Role
from serving.routing import (
    ColumnRule,
    RequestError,
    choose_version,
    parse_rows,
    should_shadow,
    sticky_bucket,
)
from serving.spec import TrafficMode, TrafficSpec

RULES = (ColumnRule("age", "integer"), ColumnRule("income", "number"), ColumnRule("region", "string"))
ROW = {"age": 40, "income": 50_000.0, "region": "north"}


def test_weighted_choice_follows_the_draw() -> None:
    traffic = TrafficSpec(candidate_weight=30)
    assert choose_version(traffic, True, None, 29.9) == Role.candidate
    assert choose_version(traffic, True, None, 30.0) == Role.champion
    assert choose_version(traffic, False, None, 0.0) == Role.champion, "no candidate, no candidate traffic"


def test_sticky_assignment_is_stable_and_monotone() -> None:
    keys = [f"user-{i}" for i in range(2_000)]
    assert all(sticky_bucket(k) == sticky_bucket(k) for k in keys[:50]), "same key, same bucket"
    previous: set[str] = set()
    for weight in (0, 5, 10, 25, 50, 75, 100):
        traffic = TrafficSpec(mode=TrafficMode.sticky, candidate_weight=weight)
        on_candidate = {k for k in keys if choose_version(traffic, True, k, 99.9) == Role.candidate}
        assert previous <= on_candidate, f"raising to {weight} moved keys back to the champion"
        assert abs(len(on_candidate) / len(keys) * 100 - weight) < 4, f"{weight}: {len(on_candidate)}"
        previous = on_candidate


def test_shadow_answers_from_champion() -> None:
    traffic = TrafficSpec(mode=TrafficMode.shadow, shadow_percent=40)
    assert choose_version(traffic, True, "k", 0.0) == Role.champion
    assert should_shadow(traffic, True, 39.0) and not should_shadow(traffic, True, 41.0)
    assert not should_shadow(TrafficSpec(candidate_weight=50), True, 0.0), "only shadow mode mirrors"


@pytest.mark.parametrize(
    ("payload", "status", "fragment"),
    [
        (b"{", 400, "malformed JSON"),
        (b'{"rows": [{"age": 1, "income": Infinity, "region": "x"}]}', 400, "Infinity"),
        (b'{"rows": "x"}', 422, "non-empty list"),
        (json.dumps({"rows": [ROW] * 3}).encode(), 413, "3 rows, more than the limit of 2"),
        (json.dumps({"rows": [{**ROW, "age": "1"}]}).encode(), 422, "rows[0].age must be an integer"),
        (
            json.dumps({"rows": [ROW, {**ROW, "income": [1]}]}).encode(),
            422,
            "rows[1].income must be a number",
        ),
        (json.dumps({"rows": [{**ROW, "region": None}]}).encode(), 422, "rows[0].region is null"),
        (b"x" * 600, 413, "more than the limit of 500"),
    ],
)
def test_bad_bodies_are_named(payload: bytes, status: int, fragment: str) -> None:
    with pytest.raises(RequestError) as caught:
        parse_rows(payload, RULES, max_rows=2, max_body_bytes=500)
    assert caught.value.status == status, caught.value.message
    assert fragment in caught.value.message, caught.value.message


def test_valid_rows_pass() -> None:
    rows = parse_rows(json.dumps({"rows": [ROW, {**ROW, "income": 3}]}).encode(), RULES, 10, 10_000)
    assert len(rows) == 2, "ints are accepted where numbers are declared"
