"""The Redis client and the Lua scripts, loaded once per client.

Scripts live in ``lua/`` next to this module. A script that uses shared helpers names their
libraries when it is loaded; their text goes first, so a helper is written once and every
script that calls it runs it inside its own atomic step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from importlib import resources

import redis
from redis.commands.core import Script

from ..errors import EditpipeError

LUA = resources.files("pipeline.state").joinpath("lua")


class Connection:
    """One Redis client and the scripts registered on it (each once)."""

    def __init__(self, client: redis.Redis):
        self.redis = client
        self._scripts: dict[tuple[str, ...], Script] = {}

    @classmethod
    def from_url(cls, url: str) -> "Connection":
        return cls(redis.Redis.from_url(url, decode_responses=True))

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
