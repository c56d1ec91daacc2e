"""Lockgate's router on the benchmark's environment: deploy a spec and a weight, find its endpoints."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import requests

from lockgate.localenv import LocalEnvironment

from .probes import wait_split
from .settings import APP_NAME, SERVE_PORT


class RouterUnderTest:
    """The router on the current environment: deploy a spec + weight declaratively, find its endpoints.

    ``row`` is the one row every probe and load posts.
    """

    def __init__(self, env: LocalEnvironment, champion: Any, candidate: Any, row: dict[str, Any]):
        self.env, self.champion, self.candidate, self.row = env, champion, candidate, row
        self.proxy_url = f"http://127.0.0.1:{SERVE_PORT}/"

    def config(self, spec: Any, weight: float) -> dict[str, Any]:
        from serving.render import render_serve_config
        from serving.spec import RouterConfig, TrafficSpec

        router = RouterConfig(
            champion=self.champion, candidate=self.candidate, traffic=TrafficSpec(candidate_weight=weight)
        )
        return render_serve_config(spec, router)

    def put(self, spec: Any, weight: float) -> None:
        from serving.deploy import deploy_config

        deploy_config(self.env.dashboard_url, self.env.ray_auth_header(), self.config(spec, weight))

    def details(self) -> dict[str, Any]:
        from serving.deploy import APPLICATIONS_PATH

        response = requests.get(
            f"{self.env.dashboard_url}{APPLICATIONS_PATH}", headers=self.env.ray_auth_header(), timeout=10
        )
        response.raise_for_status()
        return dict(response.json())

    def _applied(self, spec: Any) -> tuple[bool, str]:
        app = self.details().get("applications", {}).get(APP_NAME, {})
        deployment = app.get("deployments", {}).get("Router", {})
        config = deployment.get("deployment_config", {})
        replicas = deployment.get("replicas", [])
        running = [r for r in replicas if r.get("state") == "RUNNING"]
        seen = (
            f"app={app.get('status')} deployment={deployment.get('status')} "
            f"max_ongoing={config.get('max_ongoing_requests')} replicas={[r.get('state') for r in replicas]}"
        )
        ok = (
            app.get("status") == "RUNNING"
            and deployment.get("status") == "HEALTHY"
            and config.get("max_ongoing_requests") == spec.max_ongoing_requests
            and len(running) == spec.num_replicas == len(replicas)
        )
        return ok, seen

    def deploy(self, spec: Any, weight: float) -> dict[str, Any]:
        """PUT, then wait_running (timed), then wait until the spec is really in force and answering."""
        from serving.deploy import application_status, wait_running

        headers = self.env.ray_auth_header()
        start = time.monotonic()
        self.put(spec, weight)
        status_after_put = application_status(self.env.dashboard_url, headers, APP_NAME).get("status")
        wait_running(self.env.dashboard_url, headers, APP_NAME, timeout_s=300)
        wait_running_s = time.monotonic() - start
        applied_then, seen_then = self._applied(spec)
        deadline = time.monotonic() + 300
        ok, seen = applied_then, seen_then
        while not ok and time.monotonic() < deadline:
            time.sleep(0.5)
            ok, seen = self._applied(spec)
        if not ok:
            raise RuntimeError(f"spec not in force after 300 s: {seen}")
        applied_s = time.monotonic() - start
        label = f"weighted:{weight:g}"
        for url in self.endpoints(spec):
            wait_split(url, self.row, label, 180)
        return {
            "status_right_after_put": status_after_put,
            "wait_running_s": round(wait_running_s, 2),
            "spec_in_force_when_wait_running_returned": applied_then,
            "seen_when_wait_running_returned": seen_then,
            "spec_in_force_s": round(applied_s, 2),
            "answering_s": round(time.monotonic() - start, 2),
        }

    def direct_urls(self) -> list[str]:
        """The replicas' own HTTP ports from Serve's target groups, when they are not the proxy's."""
        urls = []
        for group in self.details().get("target_groups", []):
            if str(group.get("protocol", "")).upper() != "HTTP" or group.get("app_name") not in (
                APP_NAME,
                "",
            ):
                continue
            for target in group.get("targets", []):
                if int(target.get("port", 0)) != SERVE_PORT:
                    urls.append(f"http://127.0.0.1:{int(target['port'])}/")
        return sorted(set(urls))

    def endpoints(self, spec: Any) -> list[str]:
        return [self.proxy_url, *self.direct_urls()]


def replica_code_paths(router: RouterUnderTest) -> list[str]:
    """Where each running replica imports ``serving`` from: the first PYTHONPATH entry in its environment."""
    app = router.details().get("applications", {}).get(APP_NAME, {})
    found = []
    for replica in app.get("deployments", {}).get("Router", {}).get("replicas", []):
        pid = replica.get("pid")
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except (OSError, TypeError):
            found.append(f"pid {pid}: unreadable")
            continue
        paths = [e[len(b"PYTHONPATH=") :].decode() for e in environ if e.startswith(b"PYTHONPATH=")]
        found.append(f"pid {pid}: PYTHONPATH={paths[0] if paths else '(unset)'}")
    return found
