"""Simulated users for the local demo: closed-loop clients replaying rows of a data set against the router."""

from __future__ import annotations

import random
import threading
from collections import Counter
from pathlib import Path

import pandas as pd
import requests


class TrafficSimulator:
    """Background clients posting one real row per request; counts answers by version. Stop it with ``stop()``."""

    def __init__(self, url: str, data_file: Path, features: list[str], clients: int = 4, seed: int = 0):
        frame = (
            pd.read_parquet(data_file, columns=features)
            if str(data_file).endswith(".parquet")
            else (pd.read_csv(data_file, usecols=features))
        )
        self.rows = frame.head(5_000).to_dict("records")
        self.url, self.clients = url, clients
        self.answers: Counter = Counter()
        self.failed = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._random = random.Random(seed)
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def _client(self) -> None:
        session = requests.Session()
        while not self._stop.is_set():
            row = self.rows[self._random.randrange(len(self.rows))]
            try:
                response = session.post(self.url, json={"rows": [row]}, timeout=5)
            except requests.RequestException:
                self._stop.wait(0.5)  # the router is not up yet (or is restarting): back off
                continue
            with self._lock:
                if response.status_code == 200:
                    self.answers[response.headers.get("x-lockgate-version", "?")] += 1
                elif response.status_code == 404:
                    self._stop.wait(0.5)  # no application deployed yet
                else:
                    self.failed += 1

    def start(self) -> TrafficSimulator:
        """Start the clients."""
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        """Stop the clients and wait for them."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
