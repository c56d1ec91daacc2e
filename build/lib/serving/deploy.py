"""Deploy a rendered serve config declaratively (Serve REST API) and wait for it to run.

Declarative deploys matter: a changed ``user_config`` alone reaches running replicas through
``reconfigure()`` without a restart, whereas a Python ``serve.run`` restarts every replica.
"""

from __future__ import annotations

import time
from typing import Any

import requests

APPLICATIONS_PATH = "/api/serve/applications/"


class DeployError(Exception):
    """The Serve API refused the config, or the application did not reach RUNNING in time."""


def deploy_config(
    dashboard_url: str, headers: dict[str, str], config: dict[str, Any], timeout_s: float = 30
) -> None:
    """Deploy the config's applications, keeping every other application that runs; only what differs changes.

    Serve's declarative API replaces the whole set of applications with the one it is given (an
    application not named is deleted), so the applications of other models served on the same cluster, for
    example another pipeline's router on its own route, are sent again as Serve reports them deployed.
    """
    names = {application["name"] for application in config.get("applications", ())}
    routes = {application.get("route_prefix") for application in config.get("applications", ())}
    response = requests.get(f"{dashboard_url}{APPLICATIONS_PATH}", headers=headers, timeout=timeout_s)
    response.raise_for_status()
    # An application on a route the new config claims is replaced, as a second router on one route cannot be.
    others = [
        deployed
        for name, status in (response.json().get("applications") or {}).items()
        if name not in names
        and isinstance(deployed := status.get("deployed_app_config"), dict)
        and deployed.get("route_prefix") not in routes
    ]
    merged = {**config, "applications": [*others, *config.get("applications", ())]}
    response = requests.put(
        f"{dashboard_url}{APPLICATIONS_PATH}", json=merged, headers=headers, timeout=timeout_s
    )
    if response.status_code != 200:
        raise DeployError(f"Serve refused the config ({response.status_code}): {response.text[:2000]}")


def application_status(dashboard_url: str, headers: dict[str, str], app_name: str) -> dict[str, Any]:
    """The application's status block, or an empty dict when it is not deployed."""
    response = requests.get(f"{dashboard_url}{APPLICATIONS_PATH}", headers=headers, timeout=10)
    response.raise_for_status()
    return dict(response.json().get("applications", {}).get(app_name, {}))


def router_user_config(dashboard_url: str, headers: dict[str, str], app_name: str) -> dict[str, Any] | None:
    """The router's ``user_config`` as deployed now (what serves), or None when the app is not deployed."""
    from serving.render import ROUTER_DEPLOYMENT_NAME

    deployed = application_status(dashboard_url, headers, app_name).get("deployed_app_config") or {}
    for deployment in deployed.get("deployments") or ():
        if deployment.get("name") == ROUTER_DEPLOYMENT_NAME and isinstance(
            deployment.get("user_config"), dict
        ):
            return dict(deployment["user_config"])
    return None


def wait_running(dashboard_url: str, headers: dict[str, str], app_name: str, timeout_s: float = 180) -> None:
    """Poll until the application is RUNNING; fail with Serve's own message when it is DEPLOY_FAILED."""
    deadline = time.monotonic() + timeout_s
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = application_status(dashboard_url, headers, app_name)
        state = status.get("status")
        if state == "RUNNING":
            return
        if state in ("DEPLOY_FAILED", "UNHEALTHY"):
            raise DeployError(f"application {app_name} is {state}: {status.get('message', '')[:2000]}")
        time.sleep(0.25)
    raise DeployError(
        f"application {app_name} not RUNNING after {timeout_s:.0f}s (last: {status.get('status')})"
    )
