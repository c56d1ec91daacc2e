"""Requests that check a server answers: until it does, with which split, and what it answers."""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import requests


def first_probability(predictions: Any) -> float | None:
    if isinstance(predictions, list) and predictions and isinstance(predictions[0], dict):
        value = predictions[0].get("probability")
        return float(value) if value is not None else None
    return None


def wait_answering(
    url: str, body: dict, process: subprocess.Popen | None, timeout_s: float, log_path: Path | None = None
) -> dict[str, Any]:
    """Bounded wait until POST url answers 200; checks the server process stays alive."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:] if log_path else ""
            raise RuntimeError(f"server exited ({process.returncode}) before answering {url}:\n{tail}")
        try:
            response = requests.post(url, json=body, timeout=5)
            if response.status_code == 200:
                return dict(response.json())
            last = f"{response.status_code} {response.text[:200]}"
        except requests.RequestException as error:
            last = type(error).__name__
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer 200 within {timeout_s:.0f}s (last: {last})")


def wait_split(url: str, row: dict[str, Any], label: str, timeout_s: float) -> None:
    """Bounded wait until url answers ``row`` with 200 and the given split label."""
    from serving.app import SPLIT_HEADER

    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        try:
            response = requests.post(url, json={"rows": [row]}, timeout=5)
            if response.status_code == 200 and response.headers.get(SPLIT_HEADER) == label:
                return
            last = f"{response.status_code} {response.headers.get(SPLIT_HEADER)} {response.text[:200]}"
        except requests.RequestException as error:
            last = type(error).__name__
        time.sleep(0.25)
    raise RuntimeError(f"{url} not answering with split {label} within {timeout_s:.0f}s (last: {last})")


def check_split(
    url: str, row: dict[str, Any], candidate_version: str, requests_n: int = 400
) -> dict[str, Any]:
    """Sequential requests of ``row``: status codes, candidate share, request-id echo, champion's answer."""
    from serving.app import VERSION_HEADER

    versions: Counter = Counter()
    statuses: Counter = Counter()
    echoed = 0
    champion_probability = None
    with requests.Session() as session:
        for _ in range(requests_n):
            response = session.post(url, json={"rows": [row]}, timeout=5)
            statuses[response.status_code] += 1
            if response.status_code != 200:
                continue
            answer = response.json()
            versions[response.headers.get(VERSION_HEADER)] += 1
            echoed += int(response.headers.get("x-request-id") == answer.get("request_id"))
            if answer.get("role") == "champion":
                champion_probability = first_probability(answer.get("predictions"))
    ok = statuses.get(200, 0)
    return {
        "statuses": dict(statuses),
        "candidate_share_pct": round(100 * versions[candidate_version] / max(ok, 1), 1),
        "request_id_echoed_pct": round(100 * echoed / max(ok, 1), 1),
        "champion_probability": champion_probability,
    }
