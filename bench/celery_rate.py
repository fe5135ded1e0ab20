"""The comparison side of ``bench/limits.py``: plain Celery ``rate_limit='120/m'``.

A Celery app of one task that only submits to the simulator (sync httpx), limited the way
Celery offers: ``rate_limit`` is a token bucket per worker instance, so N workers start up to
N times the limit. Run as ``celery -A celery_rate worker`` from ``bench/``, configured by
``BENCH_BROKER_URL``, ``BENCH_SIM_URL`` and ``BENCH_API_KEY``.
"""

from __future__ import annotations

import os

import httpx
from celery import Celery

app = Celery("celery_rate", broker=os.environ.get("BENCH_BROKER_URL", "redis://localhost:6379/0"))
app.conf.update(task_serializer="json", accept_content=["json"], task_ignore_result=True,
                task_default_queue="celery-rate", worker_hijack_root_logger=False)
_client: httpx.Client | None = None


def client() -> httpx.Client:
    global _client
    if _client is None:
        _client = httpx.Client(base_url=os.environ["BENCH_SIM_URL"], timeout=30,
                               headers={"Authorization": f"Bearer {os.environ['BENCH_API_KEY']}"})
    return _client


@app.task(name="bench.submit", rate_limit="120/m")
def submit(endpoint: str, payload: dict, run_key: str) -> int:
    return client().post(endpoint, json=payload, headers={"X-Editpipe-Run-Key": run_key}).status_code
