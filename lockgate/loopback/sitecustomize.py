"""Bind Ray Serve's hard-coded all-interface listeners to 127.0.0.1 in the local environment's Ray processes.

Python imports ``sitecustomize`` at start-up from its path; the local environment puts this directory first on
the Ray head's ``PYTHONPATH`` and sets ``LOCKGATE_LOOPBACK_ONLY=1`` there, so every Ray worker (Serve's
controller, proxies, HAProxy manager, replicas) loads it. Anywhere else it does nothing.

Ray 2.60 offers no setting for these three listeners (paths under ``ray/``):

* ``serve/_private/replica.py:1835``: every replica's inter-deployment gRPC server on ``[::]:0``, in every
  ingress mode (``add_port_to_grpc_server`` from ``_common/tls_utils.py:70``);
* ``serve/_private/grpc_util.py:204``: a gRPC proxy's or a replica's direct-ingress gRPC server on
  ``[::]:<port>`` (through ``serve/_private/default_impl.py:222`` ``add_grpc_address``), when an app
  declares gRPC servicers;
* ``serve/_private/haproxy_templates.py:137`` and ``:440``: HAProxy's Prometheus frontend
  (``bind :<port>``) and stats listener (``bind *:<port>``).

The rest already follows a setting: HAProxy's HTTP frontend, the fallback proxy and the replicas'
direct-ingress HTTP servers bind ``http_options.host`` (``haproxy.py:741``, ``proxy_state.py:941``,
``replica.py:2400``), which the rendered serve config sets to 127.0.0.1. (In HAProxy mode Ray only
defaults that host to all interfaces, ``constants.py:1126-1139``, and warns, ``controller.py:220``: an explicit
host is kept.)

Each patch fails closed: if Ray's code no longer has what it replaces, the import raises, and Serve reports
the component as failed instead of listening on every interface.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import runpy
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

try:  # the name is Lockgate's shared vocabulary (a standard-library-only module)
    from contracts.settings import EnvVar

    LOOPBACK_ONLY_ENV = EnvVar.loopback_only.value
except ImportError:  # not a Lockgate environment's Python: nothing here applies
    LOOPBACK_ONLY_ENV = ""
LOOPBACK = "127.0.0.1"
WILDCARD_HOSTS = ("[::]", "0.0.0.0", "*", "")

# HAProxy's two listeners that Ray renders without a host, and their loopback form.
HAPROXY_BINDS = {
    "bind :{{ config.metrics_port }}": f"bind {LOOPBACK}:{{{{ config.metrics_port }}}}",
    "bind *:{{ config.stats_port }}": f"bind {LOOPBACK}:{{{{ config.stats_port }}}}",
}


class LoopbackPatchError(ImportError):
    """Ray's code no longer has what the patch replaces: refuse to run rather than listen everywhere."""


def loopback_address(address: str) -> str:
    """``[::]:0`` -> ``127.0.0.1:0``: a wildcard host becomes loopback; any other address is kept."""
    host, separator, port = address.rpartition(":")
    if separator and host in WILDCARD_HOSTS:
        return f"{LOOPBACK}:{port}"
    return address


def loopback_template(template: str) -> str:
    """HAProxy's config template with its host-less binds on 127.0.0.1."""
    for wildcard, loopback in HAPROXY_BINDS.items():
        if wildcard not in template:
            raise LoopbackPatchError(f"HAProxy's config template has no {wildcard!r} any more")
        template = template.replace(wildcard, loopback)
    return template


def _binding_on_loopback(bind: Callable[..., Any]) -> Callable[..., Any]:
    def bind_on_loopback(server: Any, address: str) -> Any:
        return bind(server, loopback_address(address))

    bind_on_loopback.__wrapped__ = bind  # type: ignore[attr-defined]
    return bind_on_loopback


def _patch_attribute(module: ModuleType, name: str) -> None:
    bind = getattr(module, name, None)
    if not callable(bind):
        raise LoopbackPatchError(f"{module.__name__}.{name} is gone: cannot keep its listener on loopback")
    setattr(module, name, _binding_on_loopback(bind))


def _patch_haproxy_templates(module: ModuleType) -> None:
    template = getattr(module, "HAPROXY_CONFIG_TEMPLATE", None)
    if not isinstance(template, str):
        raise LoopbackPatchError(f"{module.__name__}.HAPROXY_CONFIG_TEMPLATE is gone")
    module.HAPROXY_CONFIG_TEMPLATE = loopback_template(template)  # type: ignore[attr-defined]


# Patched when first imported: before any module that copies the name (replica.py imports
# add_port_to_grpc_server, haproxy.py the template) can see the original.
PATCHES: dict[str, Callable[[ModuleType], None]] = {
    "ray._common.tls_utils": lambda module: _patch_attribute(module, "add_port_to_grpc_server"),
    "ray.serve._private.default_impl": lambda module: _patch_attribute(module, "add_grpc_address"),
    "ray.serve._private.haproxy_templates": _patch_haproxy_templates,
}


class _PatchingLoader(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader, patch: Callable[[ModuleType], None]):
        self.loader, self.patch = loader, patch

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        self.patch(module)


class LoopbackFinder(importlib.abc.MetaPathFinder):
    """Finds the patched modules through the other finders and patches each right after it executes."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        """The module's spec from the finders after this one, its loader wrapped to patch; None for others."""
        patch = PATCHES.get(fullname)
        if patch is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _PatchingLoader(spec.loader, patch)  # type: ignore[arg-type]
                return spec
        return None


def run_shadowed_sitecustomize() -> None:
    """Run the ``sitecustomize`` this one hides (the interpreter's own, if any): it must still run."""
    here = os.path.dirname(os.path.abspath(__file__))
    for entry in sys.path:
        candidate = os.path.join(os.path.abspath(entry or os.curdir), "sitecustomize.py")
        if os.path.dirname(candidate) != here and os.path.isfile(candidate):
            runpy.run_path(candidate, run_name="sitecustomize")
            return


def install() -> None:
    """Patch the modules on import in this process (once), when the local environment asked for it."""
    if (
        LOOPBACK_ONLY_ENV
        and os.environ.get(LOOPBACK_ONLY_ENV) == "1"
        and not any(isinstance(f, LoopbackFinder) for f in sys.meta_path)
    ):
        sys.meta_path.insert(0, LoopbackFinder())


install()
run_shadowed_sitecustomize()
