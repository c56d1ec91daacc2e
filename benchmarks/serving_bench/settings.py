"""The serving benchmark's ports, phases and fixed settings (its own ports: others' environments run alongside)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ENTRY_POINT = REPO / "benchmarks" / "bench_serving.py"

# -- this benchmark's own ports (other developers' environments use others at the same time) -----------
MLFLOW_PORT, RAY_GCS_PORT, RAY_DASHBOARD_PORT = 37055, 37390, 37275
SERVE_PORT = 37800
MODELS_SERVE_PORTS = (37900, 37901)
# In HAProxy / direct-ingress mode Serve opens more listeners, by default on machine-wide fixed ports
# (HAProxy stats 8404 and metrics 9101 on every interface, fallback proxy 8500, replica ports from 30000)
# and files under /tmp/haproxy-serve: pinned here so two developers' clusters cannot collide.
SERVE_PORT_PINS = {
    "RAY_SERVE_HAPROXY_STATS_PORT": "37811",
    "RAY_SERVE_HAPROXY_METRICS_PORT": "37812",
    "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": "37813",
    "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": "37814",
    "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": "37820",
    "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": "37839",
    "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": "37840",
    "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": "37859",
}
# Checked free before starting; the direct-ingress ranges are not: Serve skips a taken port there itself.
OWN_PORTS = [
    MLFLOW_PORT,
    RAY_GCS_PORT,
    RAY_DASHBOARD_PORT,
    SERVE_PORT,
    *MODELS_SERVE_PORTS,
    *(int(v) for k, v in SERVE_PORT_PINS.items() if "DIRECT_INGRESS" not in k),
]
PHASES: dict[str, dict[str, str]] = {
    "base": {},
    "haproxy": {"RAY_SERVE_ENABLE_HA_PROXY": "1"},
    "throughput": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"},
    "haproxy+throughput": {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"},
}
# The local environment's ingress per phase: ``haproxy+throughput`` is what ``lockgate up`` runs by default (its
# ports, files and loopback-only listeners: LocalEnvironment.ingress_env); the others are Serve's Python proxy
# with the phase's levers added. Every phase runs with the loopback patches (LocalEnvironment.loopback_env).
PHASE_INGRESS = {"base": "proxy", "haproxy": "proxy", "throughput": "proxy", "haproxy+throughput": "haproxy"}
LEVER_NAMES = ("RAY_SERVE_ENABLE_HA_PROXY", "RAY_SERVE_THROUGHPUT_OPTIMIZED")
NUM_CPUS = 2
APP_NAME = "lockgate-bench"
CANDIDATE_WEIGHT = 10.0
WEIGHT_CHANGES = (50.0, 10.0, 50.0, 10.0)
CHANGE_CLIENTS, CHANGE_TIMEOUT_S = 8, 2.0
RESULTS_DIR = REPO / "benchmarks" / "results"
REGISTERED_PREFIX = "REGISTERED "
METRICS_SETTLE_S = 4.5  # the Ray head pushes metrics every 2 s (RAY_metrics_report_interval_ms)
CONTENDED_CORES = 0.3  # foreign CPU above this during a run marks it contended (retried, flagged "*")
