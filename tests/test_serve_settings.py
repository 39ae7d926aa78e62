"""How ``serve --engine ray`` sets Ray up, checked without starting it: the threads of each forward pass, the
environment that puts the replica's own HTTP server on the served port, and a taken port refused up front."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from catalog_classifier.stages.serve_engine import forward_threads, proxy_port, ray_environment

REPO = Path(__file__).resolve().parents[1]


def test_forward_passes_share_the_cores_unless_configured() -> None:
    assert forward_threads(None, 2, 2) == 1
    assert forward_threads(None, 2, 8) == 4
    assert forward_threads(None, 3, 2) == 1  # never 0 threads
    assert forward_threads(3, 2, 2) == 3  # a configured count is taken as it is


def test_throughput_mode_puts_the_replica_on_the_served_port_and_the_proxy_beside_it() -> None:
    environment = ray_environment(True, 5001)
    assert environment["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    # Ray allocates direct-ingress ports from [min, max): exactly the served port.
    assert (environment["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"],
            environment["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"]) == ("5001", "5002")
    assert environment["RAY_USAGE_STATS_ENABLED"] == "0"
    assert environment["RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP"] == "1"  # the switch calls a handle from a thread
    other = proxy_port(True, "127.0.0.1", 5001)
    assert other != 5001 and 1024 < other < 65536
    plain = ray_environment(False, 5001)
    assert plain["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "0" and "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT" not in plain
    assert proxy_port(False, "127.0.0.1", 5001) == 5001


def test_a_taken_port_is_refused_in_one_line_before_ray_or_the_registry_is_touched(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "catalog_classifier", "serve", "--engine", "ray", "--port",
                                 str(port), "--params", str(REPO / "params.yaml")],
                                cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert f"port {port} on 127.0.0.1 is in use: choose another with --port" in result.stderr
    assert "Traceback" not in result.stderr and "Ray" not in result.stderr  # Ray never started
    assert not (tmp_path / "mlruns").exists()
