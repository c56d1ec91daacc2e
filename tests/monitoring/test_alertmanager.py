"""Alertmanager routing: the shipped config is valid, routes by severity, and delivers through a real server."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.monitoring.conftest import ALERTMANAGER_CONFIG, require_tool, run_tool
from tests.monitoring.test_rules import ALERTS

PAGER_TOKEN = "test-pager-token"


@dataclass
class Notification:
    """One request Alertmanager made to a receiver."""

    path: str
    authorization: str | None
    body: dict[str, Any]


@dataclass
class Receiver:
    """A real HTTP server on 127.0.0.1 recording every notification, for all three receivers by path."""

    url: str
    received: list[Notification] = field(default_factory=list)

    def at(self, path: str) -> list[Notification]:
        """Notifications posted to ``path``."""
        return [notification for notification in self.received if notification.path == path]


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    received: list[Notification] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            received.append(Notification(self.path, self.headers.get("Authorization"), json.loads(body)))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")  # what a Slack incoming webhook answers

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Receiver(f"http://127.0.0.1:{server.server_address[1]}", received)
    finally:
        server.shutdown()
        server.server_close()


def render_config(receiver_url: str, directory: Path) -> Path:
    """The shipped config with its secret files and pager URL pointed at the local receiver.

    Only what a deployment fills in changes, plus group_wait (1s) so the test does not wait 10s-5m.
    """
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    files = {
        "pager-token": PAGER_TOKEN,
        "team-chat-url": f"{receiver_url}/team",
        "low-noise-chat-url": f"{receiver_url}/low-noise",
    }
    for name, content in files.items():
        (directory / name).write_text(content + "\n")
    for receiver in config["receivers"]:
        for webhook in receiver.get("webhook_configs", []):
            webhook["url"] = f"{receiver_url}/{receiver['name']}"
            authorization = webhook["http_config"]["authorization"]
            authorization["credentials_file"] = str(directory / Path(authorization["credentials_file"]).name)
        for slack in receiver.get("slack_configs", []):
            slack["api_url_file"] = str(directory / Path(slack["api_url_file"]).name)
    for route in [config["route"], *config["route"]["routes"]]:
        route["group_wait"] = "1s"
    path = directory / "alertmanager.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@dataclass
class RunningAlertmanager:
    """A started Alertmanager: its base URL and process."""

    url: str
    process: subprocess.Popen[bytes]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(condition: Any, process: subprocess.Popen[bytes], timeout: float, what: str) -> None:
    """Poll ``condition`` every 0.1s for at most ``timeout`` seconds, failing early if ``process`` died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, (
            f"alertmanager exited with {process.returncode} while waiting for {what}"
        )
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture()
def alertmanager(tmp_path: Path, receiver: Receiver) -> Iterator[RunningAlertmanager]:
    """A real Alertmanager on 127.0.0.1 (no clustering) with the rendered config; stopped by its PID."""
    binary = require_tool("prometheus-alertmanager", "alertmanager")
    config = render_config(receiver.url, tmp_path)
    url = f"http://127.0.0.1:{free_port()}"
    log = (tmp_path / "alertmanager.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.path={tmp_path / 'data'}",
            f"--web.listen-address={url.removeprefix('http://')}",
            "--cluster.listen-address=",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:

        def ready() -> bool:
            try:
                return requests.get(f"{url}/-/ready", timeout=1).status_code == 200
            except requests.ConnectionError:
                return False

        wait_until(ready, process, timeout=10, what="/-/ready")
        yield RunningAlertmanager(url, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        log.close()


def test_shipped_config_passes_amtool() -> None:
    amtool = require_tool("amtool")
    result = run_tool(amtool, "check-config", ALERTMANAGER_CONFIG)
    assert result.returncode == 0, f"amtool check-config failed:\n{result.stdout}"


@pytest.mark.parametrize(
    ("severity", "receiver_name"),
    [("critical", "pager"), ("warning", "team-chat"), ("info", "low-noise"), ("", "team-chat")],
)
def test_severity_picks_the_receiver(severity: str, receiver_name: str) -> None:
    amtool = require_tool("amtool")
    labels = ["alertname=LockgateAnything", "model=loan-default"] + (
        [f"severity={severity}"] if severity else []
    )
    result = run_tool(amtool, "config", "routes", "test", f"--config.file={ALERTMANAGER_CONFIG}", *labels)
    assert result.returncode == 0, result.stdout
    routed = [line for line in result.stdout.splitlines() if not line.startswith("Warning:")]
    assert routed == [receiver_name], (
        f"severity {severity!r}: expected {receiver_name}, got {result.stdout!r}"
    )


def test_every_rule_severity_reaches_a_distinct_receiver() -> None:
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    routed = {
        matcher.split("=", 1)[1].strip('"')
        for route in config["route"]["routes"]
        for matcher in route["matchers"]
        if matcher.startswith("severity=")
    }
    used = {rule["labels"]["severity"] for rule in ALERTS.values()}
    assert used <= routed, f"expected a route for every severity the rules use, missing {used - routed}"


def test_inhibition_rules_name_existing_alerts() -> None:
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    named = {
        matcher.split("=", 1)[1].strip('"')
        for rule in config["inhibit_rules"]
        for key in ("source_matchers", "target_matchers")
        for matcher in rule[key]
        if matcher.startswith("alertname=")
    }
    assert named, "expected inhibition rules naming alerts"
    assert named <= set(ALERTS), f"inhibition names alerts no rule defines: {named - set(ALERTS)}"


def test_alerts_reach_receivers_through_a_real_alertmanager(
    alertmanager: RunningAlertmanager, receiver: Receiver
) -> None:
    # Given a critical serving alert, a failed pipeline with a training regression it inhibits, and a trigger
    critical = {
        "alertname": "LockgateServingErrorRateHigh",
        "severity": "critical",
        "team": "ml-platform",
        "version": "7",
        "role": "candidate",
    }
    failed = {"alertname": "LockgatePipelineFailed", "severity": "warning", "pipeline": "loan-default"}
    regression = {
        "alertname": "LockgateTrainingDurationRegression",
        "severity": "warning",
        "pipeline": "loan-default",
        "stage": "train",
    }
    trigger = {"alertname": "LockgateTriggerFired", "severity": "info", "pipeline": "loan-default"}
    alerts = [
        {"labels": labels, "annotations": {"summary": f"summary of {labels['alertname']}"}}
        for labels in (critical, failed, regression, trigger)
    ]
    # When they are posted to the v2 API
    response = requests.post(f"{alertmanager.url}/api/v2/alerts", json=alerts, timeout=5)
    assert response.status_code == 200, response.text

    # Then each receiver gets exactly one notification
    wait_until(
        lambda: all(receiver.at(path) for path in ("/pager", "/team", "/low-noise")),
        alertmanager.process,
        timeout=10,
        what="a notification on every receiver",
    )
    time.sleep(1.5)  # a duplicate would arrive within group_wait
    pager, team, low_noise = receiver.at("/pager"), receiver.at("/team"), receiver.at("/low-noise")
    assert [len(pager), len(team), len(low_noise)] == [1, 1, 1], f"expected one each, got {receiver.received}"

    # The pager gets the webhook payload with the alert's labels, authenticated with the token from its file
    assert pager[0].authorization == f"Bearer {PAGER_TOKEN}"
    assert pager[0].body["receiver"] == "pager"
    assert [alert["labels"] for alert in pager[0].body["alerts"]] == [critical]
    assert pager[0].body["alerts"][0]["status"] == "firing"
    # The team chat gets a Slack-compatible message for the failure only: the regression is inhibited
    team_text = json.dumps(team[0].body)
    assert "attachments" in team[0].body, f"expected a Slack payload, got {team[0].body}"
    assert "summary of LockgatePipelineFailed" in team_text
    assert "LockgateTrainingDurationRegression" not in json.dumps([n.body for n in receiver.received])
    assert "summary of LockgateTriggerFired" in json.dumps(low_noise[0].body)
