"""The router on real Ray Serve, over real HTTP: split under load while weights move, sticky keys, bad input."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter, defaultdict

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lockgate.traffic import LoadClient
from pipeline.data import make_loans
from serving.app import SPLIT_HEADER, VERSION_HEADER
from serving.capture import read_captured, read_labels
from serving.deploy import application_status
from serving.metrics import VersionStats, scrape_version_stats
from serving.spec import CaptureSpec, TrafficMode, TrafficSpec

pytestmark = pytest.mark.e2e

ROW = {
    k: (v.item() if hasattr(v, "item") else v)
    for k, v in make_loans(1, seed=9).drop(columns="default").iloc[0].items()
}


def body(**changes) -> dict:
    return {"rows": [{**ROW, **changes}]}


def closed_loop(url: str, clients: int) -> LoadClient:
    """Closed-loop clients posting the test row (2 s timeout); answers counted by version under their split."""
    return LoadClient(
        url, [ROW], clients=clients, timeout_s=2, version_header=VERSION_HEADER, split_header=SPLIT_HEADER
    )


def tally(url: str, count: int) -> Counter:
    """Versions answering ``count`` sequential requests."""
    with requests.Session() as session:
        return Counter(
            session.post(url, json=body(), timeout=5).headers[VERSION_HEADER] for _ in range(count)
        )


def test_split_follows_weight_changes_under_load_without_failures(deployed) -> None:
    # Enough answers that +-5 points is at least 5 standard deviations of the observed share at each weight.
    settings = [(0, 400), (10, 1000), (50, 2500), (100, 400), (0, 0)]
    candidate = deployed.candidate.version
    with closed_loop(deployed.url, clients=10) as load:
        for weight, needed in settings:
            deployed.apply(TrafficSpec(candidate_weight=weight))
            split = f"weighted:{weight}"
            deadline = time.monotonic() + 240
            while sum(load.answers_in(split).values()) < max(needed, 1) and time.monotonic() < deadline:
                time.sleep(0.1)
        settle = load.responses + 300
        while load.responses < settle:
            time.sleep(0.1)
    assert load.failed == 0, f"{load.failed} failed of {load.responses}: {load.failures.most_common(5)}"
    assert load.responses >= 1500, f"at least 1,500 requests under load, got {load.responses}"
    for weight, needed in settings[1:4]:
        seen = load.answers_in(f"weighted:{weight}")
        share = 100 * seen[candidate] / sum(seen.values())
        assert sum(seen.values()) >= needed, f"weight {weight}: {sum(seen.values())} answers"
        assert abs(share - weight) <= 5, f"weight {weight}: candidate answered {share:.1f}% of {seen}"
    assert load.answers_in("weighted:0")[candidate] == 0, "weight 0 sends nothing to the candidate"


def test_sticky_keys_keep_their_version_and_only_move_to_the_candidate(deployed) -> None:
    keys = [f"user-{i}" for i in range(100)]

    def assignment(weight: float) -> dict[str, str]:
        deployed.apply(TrafficSpec(mode=TrafficMode.sticky, candidate_weight=weight))
        seen: dict[str, set[str]] = defaultdict(set)
        with requests.Session() as session:
            for _ in range(3):
                for key in keys:
                    response = session.post(
                        deployed.url, json=body(), headers={"x-lockgate-key": key}, timeout=5
                    )
                    assert response.status_code == 200, response.text
                    seen[key].add(response.headers[VERSION_HEADER])
        assert all(len(v) == 1 for v in seen.values()), "every key is answered by one version, every time"
        return {key: next(iter(v)) for key, v in seen.items()}

    at_20, at_60 = assignment(20), assignment(60)
    candidate = deployed.candidate.version
    moved_back = [k for k in keys if at_20[k] == candidate and at_60[k] != candidate]
    assert moved_back == [], f"raising the weight moved keys back to the champion: {moved_back}"
    assert 5 <= sum(v == candidate for v in at_20.values()) <= 40, "about a fifth of keys on the candidate"
    assert sum(v == candidate for v in at_60.values()) > sum(v == candidate for v in at_20.values())


MALFORMED = [
    (b"{not json", 400, "malformed JSON"),
    (b"NaN", 400, "malformed JSON"),
    (b"[]", 422, '"rows"'),
    (b'{"rows": []}', 422, "non-empty"),
    (b'{"rows": {}}', 422, "non-empty list"),
    (b'{"rows": [1]}', 422, "rows[0] must be an object"),
    (b'{"rows": [{}]}', 422, "missing column"),
    (b'{"rows": [], "extra": 1}', 422, '"rows"'),
]


def _bad_row_cases() -> list[tuple[dict, int, str]]:
    cases = [
        (body(age="forty"), 422, "rows[0].age must be an integer"),
        (body(age=41.5), 422, "rows[0].age must be an integer"),
        (body(age=True), 422, "rows[0].age must be an integer"),
        (body(income="high"), 422, "rows[0].income must be a number"),
        (body(income=None), 422, "rows[0].income is null"),
        (body(region=7), 422, "rows[0].region must be a string"),
        (body(surprise=1), 422, "unknown column(s) ['surprise']"),
        ({"rows": [{k: v for k, v in ROW.items() if k != "credit_score"}]}, 422, "['credit_score']"),
        ({"rows": [ROW] * 1001}, 413, "more than the limit of 1000"),
    ]
    return cases


def test_malformed_requests_get_clear_client_errors_and_service_keeps_serving(deployed) -> None:
    deployed.apply(TrafficSpec())
    with requests.Session() as session:
        for raw, status, fragment in MALFORMED:
            response = session.post(
                deployed.url, data=raw, headers={"content-type": "application/json"}, timeout=5
            )
            assert response.status_code == status, f"{raw!r}: {response.status_code} {response.text}"
            assert fragment in response.json()["error"], f"{raw!r}: {response.json()}"
        for payload, status, fragment in _bad_row_cases():
            response = session.post(deployed.url, json=payload, timeout=5)
            assert response.status_code == status, f"{fragment}: {response.status_code} {response.text}"
            assert fragment in response.json()["error"], response.json()
        as_json = {"content-type": "application/json"}
        nan_row = b'{"rows": [{"income": NaN}]}'
        response = session.post(deployed.url, data=nan_row, headers=as_json, timeout=5)
        assert response.status_code == 400 and "NaN" in response.json()["error"], response.text
        huge = b'{"rows": [' + b" " * 1_100_000 + b"]}"
        response = session.post(deployed.url, data=huge, headers=as_json, timeout=10)
        assert response.status_code == 413, response.status_code
        # What any web page may send to 127.0.0.1 without a CORS preflight is refused: text/plain, a form.
        for kind in ("text/plain", "application/x-www-form-urlencoded", None):
            response = session.post(
                deployed.url, data=json.dumps(body()), headers={"content-type": kind or ""}, timeout=5
            )
            assert response.status_code == 415 and "application/json" in response.json()["error"], kind
        assert session.get(deployed.url, timeout=5).status_code == 405
        ok = session.post(deployed.url, json=body(), timeout=5)
    assert ok.status_code == 200, "the service keeps serving after bad input"
    answer = ok.json()
    assert answer["version"] == ok.headers[VERSION_HEADER] == deployed.champion.version
    assert answer["request_id"] == ok.headers["x-request-id"] and len(answer["predictions"]) == 1
    assert 0 < answer["predictions"][0]["probability"] < 1


def test_shadow_answers_from_champion_and_mirrors_to_candidate(deployed, local_env) -> None:
    before = scrape_version_stats(local_env.metrics_url).get(
        (deployed.candidate.version, "shadow"), VersionStats()
    )
    deployed.apply(TrafficSpec(mode=TrafficMode.shadow, shadow_percent=50))
    with requests.Session() as session:
        versions = Counter(
            session.post(deployed.url, json=body(), timeout=5).headers[VERSION_HEADER] for _ in range(400)
        )
    assert versions == {deployed.champion.version: 400}, f"every answer comes from the champion: {versions}"
    mirrored = 0.0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        stats = scrape_version_stats(local_env.metrics_url).get((deployed.candidate.version, "shadow"))
        mirrored = (stats.total if stats else 0.0) - before.total
        if mirrored >= 140:
            break
        time.sleep(1)
    assert 140 <= mirrored <= 260, f"about half of 400 requests mirrored to the candidate, saw {mirrored}"


def test_sampled_answers_are_captured_and_late_labels_attach(deployed, tmp_path) -> None:
    store = str(tmp_path / "store")
    deployed.apply(
        TrafficSpec(), capture=CaptureSpec(sample_percent=100, uri=store, batch_rows=10, flush_interval_s=1)
    )
    answers = {}
    with requests.Session() as session:
        for index in range(25):
            response = session.post(
                deployed.url, json=body(), headers={"x-request-id": f"cap-{index}"}, timeout=5
            )
            assert response.status_code == 200, response.text
            answers[f"cap-{index}"] = response.json()["predictions"][0]["probability"]
    deadline, captured = time.monotonic() + 40, None
    while (
        time.monotonic() < deadline
    ):  # two full batches at once; the last 5 rows when the health check flushes
        captured = read_captured(store)
        if len(captured) >= 25:
            break
        time.sleep(1)
    assert captured is not None and sorted(captured["request_id"]) == sorted(answers), (
        "every sampled answer stored"
    )
    assert dict(zip(captured["request_id"], captured["probability"], strict=True)) == pytest.approx(answers)
    assert set(captured["version"]) == {deployed.champion.version} and set(captured["role"]) == {"champion"}
    labels_url = deployed.url + "labels"
    token = deployed.env.labels_auth_header()
    good = {"labels": [{"request_id": rid, "label": i % 2} for i, rid in enumerate(sorted(answers))]}
    # Labels drive the degradation trigger: nobody without the environment's token may post them.
    for header in ({}, {"Authorization": "Bearer guessed"}):
        response = requests.post(labels_url, json=good, headers=header, timeout=5)
        assert response.status_code == 401 and "Bearer" in response.json()["error"], response.text
    assert read_labels(store).empty, "refused labels wrote nothing"
    response = requests.post(labels_url, json=good, headers=token, timeout=5)
    assert response.status_code == 200 and response.json()["recorded"] == 25, response.text
    assert len(read_labels(store)) == 25
    for bad, message in [
        ({"labels": [{"request_id": "x", "label": True}]}, "must be a number or a class name"),
        ({"labels": [{"request_id": "x"}]}, "labels[0] must have exactly the keys"),
        ({"rows": []}, "body must be"),
    ]:
        response = requests.post(labels_url, json=bad, headers=token, timeout=5)
        assert response.status_code == 400 and message in response.json()["error"], response.text
    deployed.apply(TrafficSpec())
    response = requests.post(labels_url, json=good, headers=token, timeout=5)
    assert response.status_code == 409 and "capture is off" in response.json()["error"]


def test_request_id_is_echoed(deployed) -> None:
    deployed.apply(TrafficSpec())
    response = requests.post(
        deployed.url,
        data=b"{oops",
        headers={"x-request-id": "trace-42", "content-type": "application/json"},
        timeout=5,
    )
    assert response.status_code == 400
    assert response.json()["request_id"] == "trace-42" == response.headers["x-request-id"]


JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**60), max_value=2**60),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
VALID_VALUES = {
    k: (
        st.integers(0, 120)
        if isinstance(v, int)
        else st.floats(0, 1e6)
        if isinstance(v, float)
        else st.sampled_from(["north", "south", "mars", ""])
    )
    for k, v in ROW.items()
}


@st.composite
def request_bodies(draw) -> bytes:
    """Mostly well-shaped rows with some columns dropped, added or replaced by arbitrary JSON; sometimes junk."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=200))
    rows = []
    for _ in range(draw(st.integers(0, 4))):
        row = {k: draw(strategy) for k, strategy in VALID_VALUES.items()}
        for key in draw(st.lists(st.sampled_from(sorted(ROW)), max_size=2)):
            if draw(st.booleans()):
                row.pop(key, None)
            else:
                row[key] = draw(JSON_VALUES)
        if draw(st.integers(0, 5)) == 0:
            row[draw(st.text(min_size=1, max_size=10))] = draw(JSON_SCALARS)
        rows.append(row)
    payload = {"rows": rows} if draw(st.integers(0, 7)) else {"rows": rows, "x": 1}
    return json.dumps(payload, allow_nan=True).encode()


def test_fuzzed_requests_never_cause_server_errors(deployed) -> None:
    deployed.apply(TrafficSpec(candidate_weight=50))
    session = requests.Session()
    statuses: Counter = Counter()

    @settings(
        max_examples=1000,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(request_bodies())
    def check(raw: bytes) -> None:
        response = session.post(
            deployed.url, data=raw, headers={"content-type": "application/json"}, timeout=10
        )
        statuses[response.status_code] += 1
        assert response.status_code < 500, f"{raw[:300]!r} -> {response.status_code} {response.text[:300]}"
        if response.status_code >= 400:
            assert response.json()["error"], "every refusal says why"

    check()
    assert sum(statuses.values()) >= 1000, statuses
    assert statuses[200] > 20 and sum(v for k, v in statuses.items() if 400 <= k < 500) > 300, statuses


def test_burst_beyond_capacity_is_shed_with_503_not_500(deployed) -> None:
    tight = deployed.spec.model_copy(update={"max_ongoing_requests": 2, "max_queued_requests": 4})
    deployed.apply(TrafficSpec(), spec=tight)
    statuses: Counter = Counter()
    bad_bodies: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(150)

    def client() -> None:
        with requests.Session() as session:
            start.wait()
            for _ in range(3):
                try:
                    response = session.post(deployed.url, json=body(), timeout=30)
                except requests.RequestException as error:
                    with lock:
                        statuses[type(error).__name__] += 1
                    continue
                with lock:
                    statuses[response.status_code] += 1
                    if response.status_code == 200 and len(response.json()["predictions"]) != 1:
                        bad_bodies.append(response.text[:200])

    threads = [threading.Thread(target=client) for _ in range(150)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    finally:
        deployed.apply(TrafficSpec())
    assert set(statuses) <= {200, 503, 429}, f"only success or load shedding, never 500: {statuses}"
    assert statuses[503] + statuses[429] > 0, f"a burst far beyond capacity is shed: {statuses}"
    assert statuses[200] > 0 and not bad_bodies, f"accepted requests still succeed: {statuses}"


def test_replica_killed_under_load_recovers(deployed, local_env) -> None:
    two = deployed.spec.model_copy(update={"num_replicas": 2})
    deployed.apply(TrafficSpec(), spec=two)
    headers = local_env.ray_auth_header()
    try:
        with closed_loop(deployed.url, clients=6) as load:
            time.sleep(3)
            replicas = application_status(local_env.dashboard_url, headers, two.app_name)["deployments"][
                "Router"
            ]["replicas"]
            victim = replicas[0]["pid"]
            before, killed_at = load.responses, time.monotonic()
            os.kill(victim, signal.SIGKILL)
            recovered_at = None
            while time.monotonic() - killed_at < 120:
                status = application_status(local_env.dashboard_url, headers, two.app_name)
                running = [r for r in status["deployments"]["Router"]["replicas"] if r["state"] == "RUNNING"]
                if len(running) == 2 and victim not in {r["pid"] for r in running}:
                    recovered_at = time.monotonic()
                    break
                time.sleep(0.5)
            time.sleep(2)
            during = load.responses - before
    finally:
        deployed.apply(TrafficSpec())
    assert recovered_at is not None, "Serve replaced the killed replica"
    recovery_s = recovered_at - killed_at
    failed = load.failed
    print(
        f"replica kill: {failed} failed of {during} requests after the kill; recovered in {recovery_s:.1f}s"
    )
    assert recovery_s < 60, f"a new replica ran within 60 s, took {recovery_s:.1f}s"
    assert failed <= max(10, 0.02 * during), f"{failed} failed of {during}: {load.failures.most_common(5)}"


def deploy_shape(deployed) -> None:
    """Deploy the router as local mode and a cluster now do: the champion only, nothing pinned, no candidate."""
    from serving.deploy import deploy_config, wait_running
    from serving.render import render_serve_config
    from serving.spec import RouterConfig

    headers = deployed.env.ray_auth_header()
    config = render_serve_config(deployed.spec, RouterConfig(champion=deployed.champion))
    deploy_config(deployed.env.dashboard_url, headers, config)
    wait_running(deployed.env.dashboard_url, headers, deployed.spec.app_name)


def live_report(url: str) -> dict:
    """The router's ``live_state`` on its health endpoint."""
    report = requests.get(url + "health", timeout=5).json().get("live_state")
    assert isinstance(report, dict), (
        "the router follows a live state in this environment (LOCKGATE_LIVE_STATE_URI)"
    )
    return report


def wait_report(url: str, check, timeout_s: float = 20.0) -> dict:
    """Poll the health endpoint until ``check(report)`` holds; the last report otherwise."""
    deadline = time.monotonic() + timeout_s
    report = live_report(url)
    while not check(report) and time.monotonic() < deadline:
        time.sleep(0.05)
        report = live_report(url)
    return report


@pytest.fixture()
def live_store(deployed):
    """The environment's live state store, with the served model's document removed afterwards."""
    from contracts.settings import rollout_state_dir
    from serving.livestate import LocalStateStore

    store = LocalStateStore(rollout_state_dir(deployed.env.state_dir))
    deploy_shape(deployed)
    try:
        yield store
    finally:
        store.path(deployed.champion.name).unlink(missing_ok=True)
        deployed.apply(TrafficSpec())


def test_weights_written_to_the_live_state_are_served_within_two_seconds_without_failures(
    deployed, live_store
) -> None:
    # Given the router deployed with the shape only, under load,
    model, champion, candidate = deployed.champion.name, deployed.champion.version, deployed.candidate.version
    settings = [(50, 1200), (100, 300), (10, 600), (0, 300)]
    delays = []
    with closed_loop(deployed.url, clients=8) as load:
        for weight, needed in settings:
            # when a weight is written to the live state (as the rollout controller and the CLI do),
            written = live_store.update(
                model,
                lambda s, w=weight: s.model_copy(
                    update={"champion": champion, "candidate": candidate, "candidate_weight": float(w)}
                ),
            )
            started = time.monotonic()
            report = wait_report(deployed.url, lambda r, g=written.generation: (r["generation"] or 0) >= g)
            delays.append(time.monotonic() - started)
            assert report["candidate_weight"] == weight, f"weight {weight} applied, got {report}"
            deadline = time.monotonic() + 120
            while (
                sum(load.answers_in(f"weighted:{weight}").values()) < needed and time.monotonic() < deadline
            ):
                time.sleep(0.1)
    # then each was served within 2 s, with the split it names, and no request failed.
    assert max(delays) <= 2.0, f"write to applied took {max(delays):.2f} s at most (want <= 2 s): {delays}"
    assert load.failed == 0, f"{load.failed} failed of {load.responses}: {load.failures.most_common(5)}"
    for weight, needed in settings:
        seen = load.answers_in(f"weighted:{weight}")
        share = 100 * seen[candidate] / max(sum(seen.values()), 1)
        assert sum(seen.values()) >= needed, f"weight {weight}: {sum(seen.values())} answers, wanted {needed}"
        assert abs(share - weight) <= 6, f"weight {weight}: candidate answered {share:.1f}% of {seen}"


def test_a_live_candidate_that_cannot_load_is_not_served_and_says_so(deployed, live_store, tmp_path) -> None:
    from tests.serving.test_bad_model import register_unloadable

    model, champion = deployed.champion.name, deployed.champion.version
    broken = register_unloadable(model, deployed.champion.uri, tmp_path)
    # When the live state names a candidate whose weights are corrupt, at half the traffic,
    live_store.update(
        model,
        lambda s: s.model_copy(update={"champion": champion, "candidate": broken, "candidate_weight": 50.0}),
    )
    report = wait_report(deployed.url, lambda r: r["candidate_problem"] is not None, timeout_s=60)
    # then it is not served, the health endpoint says why, and the champion answers everything.
    assert f"models:/{model}/{broken}" in (report["candidate_problem"] or ""), report
    assert report["serving_candidate"] is None, f"the broken candidate takes no traffic: {report}"
    answers = [requests.post(deployed.url, json=body(), timeout=10) for _ in range(30)]
    assert [a.status_code for a in answers] == [200] * 30, [a.text for a in answers if a.status_code != 200]
    assert {a.headers[VERSION_HEADER] for a in answers} == {champion}, "only the champion answers"
    # And a good candidate named next is served again.
    live_store.update(model, lambda s: s.model_copy(update={"candidate": deployed.candidate.version}))
    report = wait_report(deployed.url, lambda r: r["serving_candidate"] == deployed.candidate.version)
    assert report["serving_candidate"] == deployed.candidate.version, f"the next candidate serves: {report}"
    assert report["candidate_problem"] is None, f"the problem cleared with it: {report}"


def test_an_unreadable_live_state_keeps_the_last_split_and_every_request(deployed, live_store) -> None:
    model, champion, candidate = deployed.champion.name, deployed.champion.version, deployed.candidate.version
    written = live_store.update(
        model,
        lambda s: s.model_copy(
            update={"champion": champion, "candidate": candidate, "candidate_weight": 100.0}
        ),
    )
    wait_report(deployed.url, lambda r: (r["generation"] or 0) >= written.generation)
    # When the document becomes unreadable (not JSON),
    live_store.path(model).write_text("{not json")
    report = wait_report(deployed.url, lambda r: r["unreadable"] is not None)
    # then the router says so, keeps the last split, and answers every request.
    assert live_store.location(model) in (report["unreadable"] or ""), report
    assert report["candidate_weight"] == 100.0, f"the last weight kept: {report}"
    answers = [requests.post(deployed.url, json=body(), timeout=10) for _ in range(20)]
    assert [a.status_code for a in answers] == [200] * 20, [a.text for a in answers if a.status_code != 200]
    assert {a.headers[VERSION_HEADER] for a in answers} == {candidate}, "the last split (100%) still serves"
    # And a readable state again is followed again.
    live_store.path(model).unlink()
    live_store.update(model, lambda s: s.model_copy(update={"candidate_weight": 0.0}))
    report = wait_report(deployed.url, lambda r: r["unreadable"] is None and r["candidate_weight"] == 0.0)
    assert report["unreadable"] is None and report["candidate_weight"] == 0.0, report
