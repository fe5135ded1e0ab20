"""The Redis client and the Lua scripts, loaded once per client.

Scripts live in ``lua/`` next to this module. A script that uses shared helpers names their
libraries when it is loaded; their text goes first, so a helper is written once and every
script that calls it runs it inside its own atomic step.

A Redis that goes away (restarted, failed over, or unreachable for a while) is ridden out:
a command that meets a connection error or a timeout is sent again, with a growing pause
(0.1 s doubling to 2 s, jittered), for up to ``RIDE_OUT_S`` from its first failure; only
then is the error raised. The process says once, in plain words, that Redis is not
answering, and once that it answers again (``Outage``). A script the restarted server no
longer knows (NOSCRIPT) is loaded again by redis-py's ``Script`` on its next call.

Why 90 s: longer than the outages a deployment should ride out (a restart takes seconds;
60 s is the promise), and short enough that a task stuck on a Redis that is really gone
fails and leaves its work to the leases and redeliveries that exist for dead workers. The
long-lived loops (``submission.follow``) wait past it on their own.

What a retry may repeat: a command whose reply was lost with the connection may have run
already. Every script here is written to be run twice (claims carry their holder's token,
charges are keyed by prediction id, a finished run stays finished), so the worst a repeat
does is delay a run; it never submits or charges one twice. A submit on the wire when Redis
goes away has its prediction id written once Redis answers again; if Redis stays away past
the bound, the run's open submit is found by the next delivery and looked for among the
provider's recent predictions before anything is submitted again (``adoption``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from importlib import resources
from typing import Any, TypeVar
from urllib.parse import urlsplit

import redis
from redis.backoff import EqualJitterBackoff
from redis.commands.core import Script
from redis.retry import Retry

from ..errors import EditpipeError

LUA = resources.files("pipeline.state").joinpath("lua")
RIDE_OUT_S = 90.0
# A connection idle this long is checked with a PING before it is used again; a connection
# that stops answering (a half-open socket) fails after ``SOCKET_TIMEOUT_S`` and is retried.
HEALTH_CHECK_S = 30
SOCKET_TIMEOUT_S = 15.0
CONNECT_TIMEOUT_S = 5.0
# What "Redis is not answering" is, for callers outside this layer (none of them imports redis).
UNAVAILABLE: tuple[type[Exception], ...] = (redis.ConnectionError, redis.TimeoutError)

log = logging.getLogger(__name__)
T = TypeVar("T")


def where(url: str) -> str:
    """``host:port`` (or the socket path) of a Redis URL, without its credentials."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"


class Outage:
    """Whether this process's Redis answers; says so once as it stops and once as it is back.

    ``report`` gets each message (the log by default; the CLI prints them). One per
    connection, shared by every socket of its pool.
    """

    def __init__(self, url: str, report: Callable[[str], None] | None = None):
        self.where = where(url)
        self.report = report or log.warning
        self._since: float | None = None
        self._lock = threading.Lock()

    @property
    def down(self) -> bool:
        return self._since is not None

    def failed(self, error: Exception, within_s: float) -> None:
        with self._lock:
            if self._since is not None:
                return
            self._since = time.monotonic()
        self.report(f"Redis at {self.where} is not answering ({error}); retrying for up to {within_s:.0f} s")

    def answered(self) -> None:
        if self._since is None:
            return
        with self._lock:
            since, self._since = self._since, None
        if since is not None:
            self.report(f"Redis at {self.where} answers again (after {time.monotonic() - since:.0f} s)")

    def __deepcopy__(self, memo: dict) -> "Outage":
        return self  # redis-py copies a connection's retry policy; the outage stays shared


class RideOut(Retry):
    """redis-py's retry policy, bounded by time (``within_s`` from the first failure)
    rather than by a count, and reporting to an ``Outage``."""

    def __init__(self, outage: Outage, within_s: float = RIDE_OUT_S):
        # OSError too: redis-py retries a refused connect with the policy before it wraps
        # the OSError into a ConnectionError.
        super().__init__(EqualJitterBackoff(cap=2.0, base=0.1), retries=-1,
                         supported_errors=(redis.ConnectionError, redis.TimeoutError, OSError))
        self.outage = outage
        self.within_s = within_s

    def call_with_retry(self, do: Callable[[], T], fail: Callable[[Exception], Any]) -> T:
        self._backoff.reset()
        failures, first = 0, 0.0
        while True:
            try:
                result = do()
            except self._supported_errors as error:
                failures += 1
                fail(error)
                now = time.monotonic()
                first = first or now
                self.outage.failed(error, self.within_s)
                left = self.within_s - (now - first)
                if left <= 0:
                    raise
                time.sleep(min(left, self._backoff.compute(failures)))
            else:
                self.outage.answered()
                return result

    def __deepcopy__(self, memo: dict) -> "RideOut":
        return RideOut(self.outage, self.within_s)


def open_client(url: str, *, report: Callable[[str], None] | None = None, ride_out_s: float = RIDE_OUT_S,
           decode_responses: bool = True) -> redis.Redis:
    """A client of the Redis at ``url`` that rides out an outage of up to ``ride_out_s``."""
    return redis.Redis.from_url(
        url,
        decode_responses=decode_responses,
        retry=RideOut(Outage(url, report), ride_out_s),
        health_check_interval=HEALTH_CHECK_S,
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        socket_keepalive=True,
    )


class Connection:
    """One Redis client and the scripts registered on it (each once)."""

    def __init__(self, client: redis.Redis):
        self.redis = client
        self._scripts: dict[tuple[str, ...], Script] = {}

    @classmethod
    def from_url(cls, url: str, report: Callable[[str], None] | None = None,
                 ride_out_s: float = RIDE_OUT_S) -> "Connection":
        """A connection that rides out an outage of up to ``ride_out_s`` (see the module's
        docstring); ``report`` gets the one-line messages that say Redis stopped and started
        answering."""
        return cls(open_client(url, report=report, ride_out_s=ride_out_s))

    def script(self, name: str, *libs: str) -> Script:
        """``lua/<name>``, with the libraries ``libs`` (``lua/<lib>``) prepended."""
        wanted = (name, *libs)
        script = self._scripts.get(wanted)
        if script is None:
            source = "\n".join(LUA.joinpath(part).read_text() for part in (*libs, name))
            script = self._scripts[wanted] = self.redis.register_script(source)
        return script


def wait_until_up(url: str, alive: Callable[[], bool], attempts: int = 100) -> None:
    """Wait for a Redis server just started at ``url`` to answer; ``alive()`` False means
    its process exited, which is an ``EditpipeError``."""
    client = redis.Redis.from_url(url)
    try:
        for _ in range(attempts):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if not alive():
                    raise EditpipeError("the private redis-server exited at start") from None
                time.sleep(0.05)
    finally:
        client.close()


def flush(url: str) -> None:
    """Empty the Redis at ``url`` (a private server's, between tests)."""
    client = redis.Redis.from_url(url)
    try:
        client.flushall()
    finally:
        client.close()
