"""Thumbnails: the small JPEGs a report shows, under ``jobs/<job_id>/thumbs/``.

An output's thumbnail is made when the output is collected, from the bytes in hand (an
output already no bigger than a thumbnail is its own); the report makes the rest (reference
images, outputs collected without one) in a thread pool within a time budget: Pillow decodes
and resizes without the GIL.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from concurrent.futures import TimeoutError as FuturesTimeout
from dataclasses import dataclass

from PIL import Image, ImageOps

from .errors import StorageError
from .layout import job_prefix, output_thumb_key
from .storage import Storage

log = logging.getLogger(__name__)

THUMB_PX = 256
OWN_THUMB_BYTES = 256 * 1024  # an output this small, and at most THUMB_PX wide and high, is its own
THUMB_BUDGET_S = 45.0
THUMB_THREADS = 8  # below boto3's default pool of 10 connections per client


def make_thumbnail(data: bytes, px: int = THUMB_PX) -> bytes:
    """A JPEG at most ``px`` on its longer side; transparency flattened onto white."""
    with Image.open(io.BytesIO(data)) as img:
        img.draft("RGB", (px * 2, px * 2))  # JPEG decodes at a fraction of full size
        img = ImageOps.exif_transpose(img)
        img.thumbnail((px, px), reducing_gap=2.0)
        if img.mode in ("RGBA", "LA", "P", "PA"):
            rgba = img.convert("RGBA")
            img = Image.new("RGB", rgba.size, (255, 255, 255))
            img.paste(rgba, mask=rgba.getchannel("A"))
        elif img.mode != "RGB":
            img = img.convert("RGB")
        out = io.BytesIO()
        img.save(out, "JPEG", quality=82)
        return out.getvalue()


def is_own_thumbnail(data: bytes, px: int = THUMB_PX) -> bool:
    """Whether an image is already thumbnail-sized (a thumbnail would save the viewer nothing)."""
    if len(data) > OWN_THUMB_BYTES:
        return False
    with Image.open(io.BytesIO(data)) as img:  # reads the header only
        return max(img.size) <= px


def store_output_thumbnail(storage: Storage, job_id: str, index: int, output_key: str, data: bytes) -> str:
    """Write run ``index``'s thumbnail from the output bytes in hand (when the output is
    collected), so that finalize has nothing left to make for it. Returns the key the report
    shows: the thumbnail's, or the output's own when it is small already."""
    if is_own_thumbnail(data):
        return output_key
    key = output_thumb_key(job_prefix(job_id), index)
    storage.put_bytes(key, make_thumbnail(data), "image/jpeg")
    return key


def output_thumbnail(storage: Storage, job_id: str, index: int, output_key: str, data: bytes) -> str | None:
    """``store_output_thumbnail``, or None (logged) when the output cannot be thumbnailed or
    the thumbnail not stored: the report makes it later, or shows the full image."""
    try:
        return store_output_thumbnail(storage, job_id, index, output_key, data)
    except (OSError, StorageError) as exc:  # Pillow raises OSError for an undecodable image
        log.warning("no thumbnail for run %s of %s: %s", index, job_id, exc)
        return None


@dataclass(frozen=True)
class ThumbTask:
    """A thumbnail to make: where it goes, and how to read the full image."""

    key: str
    read: Callable[[], bytes]
    what: str  # for the log: a storage key or an input's name, never a URL with a signature


def _make_one(storage: Storage, task: ThumbTask) -> bool:
    try:
        storage.put_bytes(task.key, make_thumbnail(task.read()), "image/jpeg")
        return True
    except Exception as exc:  # noqa: BLE001 - one bad image must not cost the report
        log.warning("no thumbnail for %s: %s: %s", task.what, type(exc).__name__, exc)
        return False


def make_thumbnails(storage: Storage, tasks: list[ThumbTask], *, budget_s: float = THUMB_BUDGET_S,
                    threads: int = THUMB_THREADS) -> set[str]:
    """Run ``tasks`` in a thread pool until done or ``budget_s`` is spent; the keys made."""
    made: set[str] = set()
    if not tasks:
        return made
    pool = ThreadPoolExecutor(threads, thread_name_prefix="thumb")
    futures = {pool.submit(_make_one, storage, task): task.key for task in tasks}
    try:
        for future in as_completed(futures, timeout=budget_s):
            if future.result():
                made.add(futures[future])
    except FuturesTimeout:
        log.warning("thumbnails: %d of %d made in %.0f s; the rest show the full image",
                    len(made), len(tasks), budget_s)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return made
