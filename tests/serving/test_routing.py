"""Routing core: weighted draws, sticky buckets monotone in the weight, shadow, and body validation."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from contracts.vocabulary import Role
from serving.routing import (
    ColumnRule,
    RequestError,
    choose_version,
    parse_invocation,
    parse_rows,
    read_bounded,
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


SECOND = {"age": 51, "income": 3, "region": "south"}
COLUMNS = ["region", "age", "income"]  # any order, as a client may send them


def invoke(payload: object, max_rows: int = 10, max_body_bytes: int = 10_000) -> list[dict]:
    return parse_invocation(json.dumps(payload).encode(), RULES, max_rows, max_body_bytes)


@pytest.mark.parametrize(
    "payload",
    [
        {"dataframe_split": {"columns": COLUMNS, "data": [[r[c] for c in COLUMNS] for r in (ROW, SECOND)]}},
        {
            "dataframe_split": {
                "index": [7, 8],
                "columns": COLUMNS,
                "data": [[r[c] for c in COLUMNS] for r in (ROW, SECOND)],
            }
        },
        {"dataframe_records": [ROW, SECOND]},
        {"instances": [ROW, SECOND]},
        {"instances": {c: [ROW[c], SECOND[c]] for c in COLUMNS}},
        {"inputs": [ROW, SECOND]},
        {"inputs": {c: [ROW[c], SECOND[c]] for c in COLUMNS}},
        {"inputs": [ROW, SECOND], "params": {}},
    ],
    ids=[
        "split",
        "split-index",
        "records",
        "instances",
        "instances-columns",
        "inputs",
        "inputs-columns",
        "params",
    ],
)
def test_every_mlflow_format_gives_the_same_rows(payload: dict) -> None:
    # Given the same two rows in one of MLflow's scoring formats, when parsed,
    rows = invoke(payload)
    # then they are the rows {"rows": ...} would give.
    assert rows == [ROW, SECOND], f"{sorted(payload)}: {rows}"


def test_an_object_of_single_values_is_one_row() -> None:
    assert invoke({"inputs": dict(ROW)}) == [ROW], "as MLflow reads a dict of scalars: one row"


def test_a_plain_list_fills_a_one_column_signature() -> None:
    rows = parse_invocation(
        json.dumps({"instances": [1.5, 2]}).encode(), (ColumnRule("x", "number"),), 10, 1000
    )
    assert rows == [{"x": 1.5}, {"x": 2}], "a one-column model takes a plain list, as MLflow maps it"


@pytest.mark.parametrize(
    ("payload", "status", "fragment"),
    [
        ([ROW], 422, "exactly one of"),
        ({"rows": [ROW]}, 422, "exactly one of"),
        ({"inputs": [ROW], "instances": [ROW]}, 422, "found ['instances', 'inputs']"),
        ({"inputs": [ROW], "extra": 1}, 422, "unknown key(s) ['extra']"),
        ({"inputs": [ROW], "params": {"temperature": 1}}, 422, '"params" are not supported'),
        ({"dataframe_split": [ROW]}, 422, '"dataframe_split" must be an object'),
        ({"dataframe_split": {"data": [[1]]}}, 422, "dataframe_split.columns must be a list of column names"),
        (
            {"dataframe_split": {"columns": COLUMNS, "data": [], "orient": 1}},
            422,
            "unknown key(s) ['orient']",
        ),
        (
            {"dataframe_split": {"columns": ["age", "income"], "data": [[1, 2]]}},
            422,
            "missing column(s) ['region']",
        ),
        (
            {"dataframe_split": {"columns": [*COLUMNS, "age"], "data": [[1, 2, 3, 4]]}},
            422,
            "names a column more than once",
        ),
        (
            {"dataframe_split": {"columns": COLUMNS, "data": []}},
            422,
            "dataframe_split.data must be a non-empty",
        ),
        (
            {"dataframe_split": {"columns": COLUMNS, "data": [["x", 1]]}},
            422,
            "data[0] must be a list of 3 values",
        ),
        (
            {"dataframe_split": {"columns": COLUMNS, "data": [["x", 1, 2.0]], "index": [1, 2]}},
            422,
            "index must be a list with one entry per row",
        ),
        (
            {"dataframe_split": {"columns": COLUMNS, "data": [["x", 1, 2.0], ["y", 1.5, 2.0]]}},
            422,
            "dataframe_split.data[1].age must be an integer",
        ),
        ({"dataframe_records": {"age": [1]}}, 422, '"dataframe_records" must be a non-empty list'),
        ({"dataframe_records": [ROW, [1, 2, 3]]}, 422, "dataframe_records[1] must be an object, got list"),
        ({"dataframe_records": [{**ROW, "x": 1}]}, 422, "dataframe_records[0] has unknown column(s) ['x']"),
        ({"instances": [ROW, {**ROW, "income": "high"}]}, 422, "instances[1].income must be a number"),
        ({"instances": []}, 422, '"instances" must be a non-empty list'),
        ({"inputs": {"age": [1], "income": [2.0]}}, 422, "inputs is missing column(s) ['region']"),
        ({"inputs": {"age": [1, 2], "income": [2.0], "region": ["a", "b"]}}, 422, "one value per row each"),
        ({"inputs": {"age": [1], "income": 2.0, "region": ["a"]}}, 422, "['income'] are not lists"),
        ({"inputs": {"age": [], "income": [], "region": []}}, 422, "at least one value"),
        (
            {"inputs": {"age": [1, None], "income": [2.0, 3.0], "region": ["a", "b"]}},
            422,
            "inputs.age[1] is null",
        ),
        ({"inputs": {**ROW, "age": "old"}}, 422, "inputs.age must be an integer"),
        ({"inputs": [ROW] * 11}, 413, "11 rows, more than the limit of 10"),
        ({"inputs": {c: [ROW[c]] * 11 for c in COLUMNS}}, 413, "11 rows, more than the limit of 10"),
        ({"dataframe_split": {"columns": COLUMNS, "data": [["x", 1, 2.0]] * 11}}, 413, "11 rows"),
    ],
)
def test_malformed_invocations_are_named(payload: object, status: int, fragment: str) -> None:
    with pytest.raises(RequestError) as caught:
        invoke(payload)
    assert caught.value.status == status, caught.value.message
    assert fragment in caught.value.message, caught.value.message


@pytest.mark.parametrize(
    ("raw", "status", "fragment"),
    [
        (b"{", 400, "malformed JSON"),
        (b'{"inputs": [{"age": 1, "income": NaN, "region": "x"}]}', 400, "NaN"),
        (b"x" * 600, 413, "more than the limit of 500"),
    ],
)
def test_malformed_invocation_bodies_are_named(raw: bytes, status: int, fragment: str) -> None:
    with pytest.raises(RequestError) as caught:
        parse_invocation(raw, RULES, 10, 500)
    assert caught.value.status == status and fragment in caught.value.message, caught.value.message


ONE_NUMBER = (ColumnRule("x", "number"),)
ONE_STRING = (ColumnRule("s", "string"),)


@pytest.mark.parametrize(
    ("body", "rules", "status", "fragment"),
    [
        (b'{"rows": [{"x": ' + b"9" * 400 + b"}]}", ONE_NUMBER, 422, "rows[0].x is out of range"),
        (b'{"rows": [{"x": 1e300}]}', ONE_NUMBER, 422, "overflows a float32 model"),
        (b'{"rows": [{"x": -1e39}]}', ONE_NUMBER, 422, "overflows a float32 model"),
        (
            b'{"rows": [{"s": "\\ud800"}]}',
            ONE_STRING,
            422,
            "rows[0].s is not valid Unicode (a lone surrogate)",
        ),
        (b'{"rows": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", ONE_NUMBER, 400, "nested too deeply"),
    ],
)
def test_hostile_values_are_refused_at_the_door_with_a_client_error(
    body: bytes, rules: tuple[ColumnRule, ...], status: int, fragment: str
) -> None:
    # Given a body that once passed validation and broke the router later (a 500, a NaN answer, capture
    # that never flushed again), when it is parsed, then it is a 4xx naming the field.
    with pytest.raises(RequestError) as caught:
        parse_rows(body, rules, max_rows=10, max_body_bytes=10_000_000)
    assert caught.value.status == status and fragment in caught.value.message, caught.value.message


def test_numbers_within_range_still_pass() -> None:
    rows = parse_rows(b'{"rows": [{"x": 3.4e38}, {"x": 9007199254740992}]}', ONE_NUMBER, 10, 1000)
    assert [row["x"] for row in rows] == [3.4e38, 9007199254740992], "the edges of the range are accepted"


async def chunks_of(total: int, size: int = 1000) -> AsyncIterator[bytes]:
    """A chunked body of ``total`` bytes that counts how much of it was read."""
    sent = 0
    while sent < total:
        chunks_of.read = sent + size  # type: ignore[attr-defined]
        yield b"x" * size
        sent += size


def test_a_chunked_body_is_cut_off_at_the_limit_not_read_whole() -> None:
    # Given a body with no Content-Length, far beyond the limit,
    # when the router reads it,
    with pytest.raises(RequestError) as caught:
        asyncio.run(read_bounded(chunks_of(100_000_000), None, limit=5_000))
    # then it stops with 413 having read just past the limit, not 100 MB.
    assert caught.value.status == 413, caught.value.message
    assert chunks_of.read <= 6_000, f"read {chunks_of.read} bytes of a 100 MB body"  # type: ignore[attr-defined]


def test_a_declared_length_over_the_limit_is_refused_before_reading_and_a_bad_one_is_a_400() -> None:
    with pytest.raises(RequestError) as over:
        asyncio.run(read_bounded(chunks_of(10), "999999", limit=5_000))
    with pytest.raises(RequestError) as bad:
        asyncio.run(read_bounded(chunks_of(10), "lots", limit=5_000))
    assert over.value.status == 413 and bad.value.status == 400, (over.value.message, bad.value.message)
    assert asyncio.run(read_bounded(chunks_of(3_000), "3000", limit=5_000)) == b"x" * 3_000
