"""The upload cache: the provider URL of each local file's content, shared by every worker.

``ep:upload:<identity>`` holds the URL for as long as the provider keeps the upload (the
caller's ``ttl_s``); ``ep:upload-lock:<identity>`` is held (60 s at most) by the one worker
uploading that content now, so a file is uploaded once across the fleet.
"""

from __future__ import annotations

from . import keys
from .connection import Connection

LOCK_S = 60


class Uploads:
    """Cached upload URLs by content identity, and the lock of an upload in progress."""

    def __init__(self, conn: Connection):
        self._r = conn.redis

    def url(self, identity: str) -> str | None:
        return self._r.get(keys.upload(identity))

    def lock(self, identity: str) -> bool:
        """Take the upload of ``identity``; False when another worker is uploading it."""
        return bool(self._r.set(keys.upload_lock(identity), "1", nx=True, ex=LOCK_S))

    def unlock(self, identity: str) -> None:
        self._r.delete(keys.upload_lock(identity))

    def remember(self, identity: str, url: str, ttl_s: int) -> None:
        self._r.set(keys.upload(identity), url, ex=ttl_s)
