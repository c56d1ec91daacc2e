"""The local Ray head's loopback patches: wildcard binds become 127.0.0.1, and a changed Ray fails closed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from lockgate.localenv import LOOPBACK_DIR, LocalEnvironment, Ports
from lockgate.loopback.sitecustomize import (
    LOOPBACK_ONLY_ENV,
    LoopbackPatchError,
    loopback_address,
    loopback_template,
)


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("[::]:0", "127.0.0.1:0"),
        ("[::]:9000", "127.0.0.1:9000"),
        ("0.0.0.0:8000", "127.0.0.1:8000"),
        ("*:8404", "127.0.0.1:8404"),
        (":9101", "127.0.0.1:9101"),
        ("127.0.0.1:0", "127.0.0.1:0"),
        ("10.0.0.5:8000", "10.0.0.5:8000"),
    ],
)
def test_a_wildcard_host_becomes_loopback_and_any_other_is_kept(address: str, expected: str) -> None:
    assert loopback_address(address) == expected, f"{address} must bind {expected}"


def test_a_template_without_the_expected_binds_is_refused() -> None:
    # Given an HAProxy template of a Ray release that renders its stats listener differently,
    changed = "listen stats\n  bind [::]:{{ config.stats_port }}\n"
    # then the patch refuses it rather than letting HAProxy listen on every interface.
    with pytest.raises(LoopbackPatchError, match="no 'bind :"):
        loopback_template(changed)


PROBE = """
import json
from ray._common import tls_utils
from ray.serve._private import default_impl, haproxy_templates
template = haproxy_templates.HAPROXY_CONFIG_TEMPLATE
print(json.dumps({
    "binds": [line.strip() for line in template.splitlines() if line.strip().startswith("bind ")],
    "grpc_wrapped": hasattr(tls_utils.add_port_to_grpc_server, "__wrapped__"),
    "grpc_address_wrapped": hasattr(default_impl.add_grpc_address, "__wrapped__"),
}))
"""


def probe_ray(enabled: bool) -> dict[str, object]:
    """Import Ray's modules in a fresh interpreter started the way the local Ray head starts its workers."""
    env = {**os.environ, **LocalEnvironment(ports=Ports()).loopback_env(os.environ.get("PYTHONPATH"))}
    if not enabled:
        env.pop(LOOPBACK_ONLY_ENV)
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(done.stdout.splitlines()[-1])


def test_the_head_s_python_processes_bind_rays_hard_coded_listeners_on_loopback() -> None:
    # Given a Python process started with the head's PYTHONPATH and LOCKGATE_LOOPBACK_ONLY=1,
    assert LOOPBACK_DIR.joinpath("sitecustomize.py").is_file()
    seen = probe_ray(enabled=True)
    # then HAProxy's binds are loopback or follow http_options.host (127.0.0.1 in the rendered config),
    binds = seen["binds"]
    assert isinstance(binds, list) and binds, seen
    for bind in binds:
        assert re.match(r"bind (127\.0\.0\.1:|\{\{ config\.(grpc_)?frontend_host \}\}:)", bind), (
            f"HAProxy listener not on loopback: {bind}"
        )
    # and the replicas' gRPC servers are bound through the loopback wrappers.
    assert seen["grpc_wrapped"] and seen["grpc_address_wrapped"], seen


def test_without_the_switch_ray_is_left_as_it_is() -> None:
    seen = probe_ray(enabled=False)
    assert not seen["grpc_wrapped"], "outside the local environment nothing is patched"
    assert any(bind.startswith("bind *:") for bind in seen["binds"]), seen  # type: ignore[union-attr]


def test_a_sitecustomize_it_shadows_still_runs(tmp_path) -> None:
    # Given an interpreter whose own sitecustomize sits later on the path,
    (tmp_path / "sitecustomize.py").write_text("import os\nos.environ['SHADOWED_RAN'] = '1'\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(LOOPBACK_DIR), str(tmp_path)])}
    # when a process starts with the loopback directory first,
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.environ.get('SHADOWED_RAN'))"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    # then the interpreter's own sitecustomize ran too.
    assert done.stdout.strip() == "1", f"the shadowed sitecustomize did not run: {done.stdout} {done.stderr}"
