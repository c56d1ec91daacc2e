"""Starting runs in a cluster: one RayJob per trigger event, however many checks decide to start it."""

from __future__ import annotations

import re

from kubernetes.client.exceptions import ApiException

from lockgate.kuberay import KubeRayLauncher, training_job
from pipeline.triggers import event_slug

TEMPLATE = {
    "apiVersion": "ray.io/v1",
    "kind": "RayJob",
    "metadata": {"generateName": "lockgate-train-", "labels": {"app.kubernetes.io/instance": "lockgate"}},
    "spec": {"entrypoint": "python -m pipeline.run --config pipeline.yaml", "runtimeEnvYAML": "{}"},
}


class FakeApi:
    """The custom-objects API of a stand-in cluster: names are unique, as the API server enforces."""

    def __init__(self) -> None:
        self.created: dict[str, dict] = {}

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):  # noqa: ANN001
        name = body["metadata"]["name"]
        if name in self.created:
            raise ApiException(status=409, reason="AlreadyExists")
        self.created[name] = body
        return body


def test_event_names_are_stable_short_and_valid_kubernetes_names() -> None:
    ids = [
        "drift-20260101T120000Z-w000042",
        "drift-20260101T120000Z-w000043",
        "schedule-2026-11-30T03:00:00+00:00",
    ]
    slugs = [event_slug(event_id) for event_id in ids]
    assert slugs == [event_slug(event_id) for event_id in ids], "the same event always gives the same name"
    assert len(set(slugs)) == len(slugs), f"different events give different names: {slugs}"
    for slug in slugs:
        assert re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?", slug) and len(slug) <= 32, slug


def test_two_checks_deciding_the_same_event_create_one_rayjob() -> None:
    # Given a cluster and a trigger decided by two checks (a retried pod, or two overlapping ones),
    api = FakeApi()
    launcher = KubeRayLauncher(TEMPLATE, "lockgate", "loan-default", api=api)
    trigger = {"reason": "drift", "event_id": "drift-20260101T120000Z-w000042", "run_key": event_slug("x")}
    # when both start the run,
    first, second = launcher.submit(trigger), launcher.submit(dict(trigger))
    # then there is one RayJob, and both name it.
    assert first == second == f"lockgate-train-{trigger['run_key']}", (first, second)
    assert list(api.created) == [first], f"one RayJob, got {list(api.created)}"


def test_a_run_started_by_hand_still_gets_a_name_of_its_own() -> None:
    names = {training_job(TEMPLATE, "loan-default", None)["metadata"]["name"] for _ in range(3)}
    assert len(names) == 3, f"untriggered runs never share a name: {names}"
