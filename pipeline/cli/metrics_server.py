"""``editpipe metrics-server``: the fleet's Prometheus metrics over HTTP (``pipeline.metrics``).

Any number of them may run, anywhere that reaches the workers' Redis: each scrape reads the
shared state, so every server gives the same figures. Stops on Ctrl-C or SIGTERM (exit 0).
"""

from __future__ import annotations

import signal
import threading

import click
from prometheus_client import start_http_server

from ..metrics import fleet_registry
from ..settings import Settings
from .output import console

DEFAULT_PORT = 9780


@click.command("metrics-server")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface, as in compose).")
@click.option("--port", default=DEFAULT_PORT, show_default=True, help="Port (0: any free one, printed).")
def metrics_server(host: str, port: int) -> None:
    """Serve the fleet's Prometheus metrics at /metrics (read from REDIS_URL at each scrape:
    runs, failures by kind, limits, 429s, spend and budgets, queue depth, latency)."""
    registry = fleet_registry(Settings.from_env())
    server, thread = start_http_server(port, addr=host, registry=registry)
    console.print(f"serving the fleet's metrics at http://{host}:{server.server_port}/metrics", markup=False)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.shutdown()
    thread.join(timeout=5)
