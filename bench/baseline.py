"""The baseline editpipe is measured against: one bare asyncio + httpx + boto3 process.

For each run: submit, poll until terminal, download the output, put the output and a JSON
sidecar to storage (S3 through boto3 in a thread pool, since boto3 blocks; or a local
directory). Nothing is durable: no Redis, no claim, no ledger, no retries; a crash loses
everything in flight. It is what one would write in an afternoon, written carefully:

- the account's limits held locally (a smooth rate with the same 1% headroom as editpipe,
  and a semaphore of ``max_concurrent`` predictions), which one process can do exactly;
- at most ``requests_at_once`` HTTP requests at a time, so thousands of waiting predictions
  never queue inside httpx's pool (encode/httpx#3215);
- polls on editpipe's schedule (``pipeline/dispatch.py``: the first just after the latency
  seen so far, then growing, never under 2 s; while none is known, spaced by how long the
  oldest prediction has run, at most 30 s apart), so both make the same requests. With
  ``learn_latency=False`` it polls on the provider's plain guidance instead, as a loop
  without that idea would: the first poll 2 s after the submit, then 1.5 times longer each
  time (2, 3, 4.5 s, ...).

``run_baseline`` returns what it did; the caller reads the simulator's own figures.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx

RUN_KEY_HEADER = "X-Editpipe-Run-Key"
HEADROOM = 0.01
FIRST_POLL_AFTER = 1.05  # as editpipe's first poll (``dispatch.FIRST_POLL_AFTER``)


@dataclass(frozen=True)
class Work:
    """One run as the baseline sees it."""

    run_key: str
    payload: dict
    output_key: str


@dataclass
class Outcome:
    succeeded: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0


class Store:
    """Where outputs go: ``s3://bucket/prefix`` (boto3) or a local directory."""

    def __init__(self, root: str, s3_endpoint: str | None = None, threads: int = 16):
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="put")
        if root.startswith("s3://"):
            import boto3

            bucket, _, prefix = root[5:].partition("/")
            self.bucket, self.prefix = bucket, prefix.strip("/")
            self.s3 = boto3.client("s3", endpoint_url=s3_endpoint)
            self.dir = None
        else:
            self.s3 = None
            self.dir = Path(root)

    def _put(self, key: str, data: bytes, content_type: str) -> None:
        if self.s3 is not None:
            full = f"{self.prefix}/{key}" if self.prefix else key
            self.s3.put_object(Bucket=self.bucket, Key=full, Body=data, ContentType=content_type)
            return
        target = self.dir / key
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, target)

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        await asyncio.get_running_loop().run_in_executor(self.pool, self._put, key, data, content_type)

    def close(self) -> None:
        self.pool.shutdown()


class _Rate:
    """A smooth rate for one process: one start every ``interval`` seconds."""

    def __init__(self, per_minute: int):
        self.interval = 60.0 / (per_minute * (1 - HEADROOM))
        self.next_at = time.monotonic()

    async def take(self) -> None:
        now = time.monotonic()
        if self.next_at > now:
            await asyncio.sleep(self.next_at - now)
        self.next_at = max(self.next_at, now) + self.interval


class Baseline:
    def __init__(self, client: httpx.AsyncClient, store: Store, endpoint: str, *, requests_at_once: int,
                 poll_initial_s: float, poll_max_s: float, learn_latency: bool = True):
        self.client = client
        self.store = store
        self.endpoint = endpoint
        self.http_slots = asyncio.Semaphore(requests_at_once)
        self.poll_initial_s = poll_initial_s
        self.poll_max_s = poll_max_s
        self.expected: float | None = None
        self.first_submit: float | None = None  # while the latency is unknown
        self.learn_latency = learn_latency
        self.outcome = Outcome()

    async def _request(self, method: str, url: str, **kwargs) -> httpx.Response:
        async with self.http_slots:
            return await self.client.request(method, url, **kwargs)

    def _floor(self) -> float:
        """While no prediction has completed: how long the oldest has run (editpipe's
        ``Dispatch.latency_floor``); 0 on the plain schedule."""
        if not self.learn_latency or self.expected is not None or self.first_submit is None:
            return 0.0
        return min(self.poll_max_s, time.monotonic() - self.first_submit)

    def _first_poll(self) -> float:
        if self.expected is None:
            return max(self.poll_initial_s, self._floor())
        return max(self.poll_initial_s, FIRST_POLL_AFTER * self.expected)

    def _next_poll(self, attempt: int) -> float:
        base = max(self.poll_initial_s, 0.15 * (self.expected or 0.0))
        return max(min(self.poll_max_s, base * 1.5**attempt), self._floor())

    async def run_one(self, work: Work, slot: asyncio.Semaphore) -> None:
        try:
            await self._run(work)
        except Exception as exc:  # noqa: BLE001 - counted, not raised: the loop goes on
            self.outcome.failed += 1
            if len(self.outcome.errors) < 5:
                self.outcome.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            slot.release()

    async def _run(self, work: Work) -> None:
        submitted = time.monotonic()
        if self.first_submit is None:
            self.first_submit = submitted
        answer = await self._request("POST", self.endpoint, json=work.payload,
                                     headers={RUN_KEY_HEADER: work.run_key})
        answer.raise_for_status()
        prediction = answer.json()["data"]
        await asyncio.sleep(self._first_poll())
        attempt = 0
        while True:
            polled = await self._request("GET", f"/api/v3/predictions/{prediction['id']}/result")
            polled.raise_for_status()
            data = polled.json()["data"]
            if data["status"] in ("completed", "failed"):
                break
            await asyncio.sleep(self._next_poll(attempt))
            attempt += 1
        seen = time.monotonic() - submitted
        if self.learn_latency:
            self.expected = seen if self.expected is None else 0.8 * self.expected + 0.2 * seen
        if data["status"] != "completed":
            raise RuntimeError(f"prediction failed: {data.get('error')}")
        image = await self._request("GET", data["outputs"][0])
        image.raise_for_status()
        await self.store.put(work.output_key, image.content, "image/png")
        sidecar = {"run_key": work.run_key, "prompt": work.payload["prompt"], "inputs": work.payload["images"],
                   "prediction_id": prediction["id"], "output": work.output_key}
        await self.store.put(work.output_key.rsplit(".", 1)[0] + ".json",
                             json.dumps(sidecar, indent=2).encode(), "application/json")
        self.outcome.succeeded += 1


async def _main(works: list[Work], base_url: str, api_key: str, endpoint: str, store: Store, *,
                per_minute: int, max_concurrent: int, requests_at_once: int, poll_initial_s: float,
                poll_max_s: float, learn_latency: bool) -> Outcome:
    limits = httpx.Limits(max_connections=requests_at_once, max_keepalive_connections=requests_at_once)
    async with httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {api_key}"},
                                 limits=limits, timeout=60) as client:
        baseline = Baseline(client, store, endpoint, requests_at_once=requests_at_once,
                            poll_initial_s=poll_initial_s, poll_max_s=poll_max_s, learn_latency=learn_latency)
        rate = _Rate(per_minute)
        in_flight = asyncio.Semaphore(max_concurrent)
        tasks = set()
        started = time.perf_counter()
        for work in works:
            await in_flight.acquire()
            await rate.take()
            task = asyncio.create_task(baseline.run_one(work, in_flight))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*list(tasks))
        baseline.outcome.wall_s = time.perf_counter() - started
        return baseline.outcome


def run_baseline(works: list[Work], *, base_url: str, api_key: str, endpoint: str, output: str,
                 s3_endpoint: str | None = None, per_minute: int, max_concurrent: int,
                 requests_at_once: int = 64, poll_initial_s: float = 2.0, poll_max_s: float = 30.0,
                 learn_latency: bool = True) -> Outcome:
    """Run ``works`` to the end; the outcome with the wall time from first submit to last put."""
    store = Store(output, s3_endpoint)
    try:
        return asyncio.run(_main(works, base_url, api_key, endpoint, store, per_minute=per_minute,
                                 max_concurrent=max_concurrent, requests_at_once=requests_at_once,
                                 poll_initial_s=poll_initial_s, poll_max_s=poll_max_s,
                                 learn_latency=learn_latency))
    finally:
        store.close()
