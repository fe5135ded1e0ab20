"""Checks: what every output of a job with a ``publish`` block is judged by when it is collected.

- ``aspect_ratio``: its pixel size (read from the stored bytes) is the requested ratio, within
  ``ASPECT_TOLERANCE`` (3%) of it: the provider rounds its sizes (to multiples of 16 or so),
  so a 9:21 picture may be 1024 × 2400 rather than 1024 × 2389;
- ``min_size: N``: its long side is at least N pixels;
- ``not_nsfw``: the provider did not flag it (``has_nsfw_contents``; no flag sent is no flag);
- ``changed``: it differs visibly from what is published at its ``publish.to`` place now, so
  that a nightly re-run that made the same picture does not churn the catalog. Pictures are
  compared by perceptual hashes (``imagehash``): the DCT hash of their luminance, which a
  re-encode or a resize hardly moves, and a colour hash, which a new backdrop does; they are
  the same picture when both are within ``SAME_PHASH_BITS`` and ``SAME_COLOR_BITS``. What is
  published is read from its sidecar (one GET: ``pipeline.publish`` stores the hashes there),
  and only when there is no sidecar, from the picture itself.

Each check gives ``{"passed": bool, "detail": str}`` (``RunResult.checks``). A check never
raises and never loses the output: one that cannot be made (an undecodable picture, a
destination that cannot be read) fails with the reason, which holds the output back from
publishing and tells a person why.

Engine layer: reads the job's spec from its record (once per job per process) and the
published sidecar from storage; imports the domain, ``storage`` and the job store.
"""

from __future__ import annotations

import io
import json
import logging
import math
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import imagehash
from PIL import Image

from .errors import StorageError
from .layout import sidecar_key
from .manifest.publish import RECORD_FIELD, PublishSpec, from_record, publish_values
from .plan import Run
from .state import Jobs
from .storage import Storage

log = logging.getLogger(__name__)

ASPECT_TOLERANCE = 0.03  # relative difference between the picture's ratio and the requested one
SAME_PHASH_BITS = 8  # of 64: a resize moves the DCT hash by up to ~5 bits, a new picture by dozens
SAME_COLOR_BITS = 1  # of 42: a re-encode moves the colour hash by none, a new backdrop by 2 or more
COLOR_BINBITS = 3
HASH_PX = 256  # pictures are hashed at this long side

Check = dict[str, Any]
Hashes = dict[str, str]


def check(passed: bool, detail: str) -> Check:
    return {"passed": passed, "detail": detail}


def perceptual_hashes(data: bytes) -> Hashes:
    """The hashes ``changed`` compares, as hex: ``phash`` (64 bits) and ``colorhash``."""
    with Image.open(io.BytesIO(data)) as img:
        # Both hashes look at a few dozen pixels a side: reduce first (JPEG decodes reduced),
        # which makes a 1024 x 1536 output cost milliseconds instead of a full-size colour pass.
        img.draft("RGB", (HASH_PX * 2, HASH_PX * 2))
        img.thumbnail((HASH_PX, HASH_PX), reducing_gap=2.0)
        rgb = img.convert("RGB")
    return {"phash": str(imagehash.phash(rgb)), "colorhash": str(imagehash.colorhash(rgb, binbits=COLOR_BINBITS))}


def hash_distance(a: Hashes, b: Hashes) -> tuple[int, int]:
    """(phash bits, colorhash bits) by which two pictures' hashes differ."""
    phash = imagehash.hex_to_hash(a["phash"]) - imagehash.hex_to_hash(b["phash"])
    color = (imagehash.hex_to_flathash(a["colorhash"], COLOR_BINBITS * 14)
             - imagehash.hex_to_flathash(b["colorhash"], COLOR_BINBITS * 14))
    return int(phash), int(color)


def aspect_check(size: tuple[int, int], requested: str | None) -> Check:
    width, height = size
    if not requested:
        return check(True, f"{width}x{height}; no aspect ratio was requested")
    try:
        a, b = (int(part) for part in requested.split(":"))
        wanted = a / b
    except (ValueError, ZeroDivisionError):
        return check(False, f"{width}x{height}; the requested aspect ratio {requested!r} is not W:H")
    off = abs(width / height - wanted) / wanted
    shown = _ratio(width, height)
    if off <= ASPECT_TOLERANCE:
        near = "" if shown == requested else f" (within {ASPECT_TOLERANCE:.0%})"
        return check(True, f"{width}x{height} is {requested}{near}")
    return check(False, f"{width}x{height} is {shown}, not {requested} ({off:.0%} off)")


def _ratio(width: int, height: int) -> str:
    d = math.gcd(width, height)
    return f"{width // d}:{height // d}"


def min_size_check(size: tuple[int, int], least: int) -> Check:
    long_side = max(size)
    if long_side >= least:
        return check(True, f"long side {long_side} px ≥ {least}")
    return check(False, f"long side {long_side} px < {least}")


def nsfw_check(flags: list[bool] | None) -> Check:
    if flags is None or not flags:
        return check(True, "the provider sent no flag")
    if flags[0]:
        return check(False, "the provider flagged it (has_nsfw_contents)")
    return check(True, "not flagged by the provider")


def changed_check(hashes: Hashes, published: Hashes | None, where: str) -> Check:
    if published is None:
        return check(True, f"nothing published at {where} yet")
    phash, color = hash_distance(hashes, published)
    if phash <= SAME_PHASH_BITS and color <= SAME_COLOR_BITS:
        return check(False, f"the same picture as published at {where} (hashes {phash}/64 and {color} bits apart)")
    return check(True, f"differs from what is published at {where} (hashes {phash}/64 and {color} bits apart)")


def run_checks(spec: PublishSpec, data: bytes, requested_ratio: str | None, nsfw: list[bool] | None,
               published: Callable[[], tuple[Hashes | None, str]]) -> dict[str, Check]:
    """Every check ``spec`` asks for, on the output ``data``. ``published()`` gives the hashes
    of what is published at the output's place now (None: nothing) and that place's name;
    it is called only for ``changed``."""
    results: dict[str, Check] = {}
    size: tuple[int, int] | None = None
    unreadable = ""
    try:
        with Image.open(io.BytesIO(data)) as img:  # the header only
            size = img.size
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for a broken file
        unreadable = f"the output is not a decodable image ({type(exc).__name__})"
    for wanted in spec.checks:
        name = wanted.name
        if name == "not_nsfw":
            results[name] = nsfw_check(nsfw)
        elif size is None:
            results[name] = check(False, unreadable)
        elif name == "aspect_ratio":
            results[name] = aspect_check(size, requested_ratio)
        elif name == "min_size":
            results[name] = min_size_check(size, wanted.min_size or 0)
        elif name == "changed":
            results[name] = _changed(data, published)
    return results


def _changed(data: bytes, published: Callable[[], tuple[Hashes | None, str]]) -> Check:
    try:
        hashes = perceptual_hashes(data)
    except Exception as exc:  # noqa: BLE001 - an output Pillow cannot decode fails the check, not the run
        return check(False, f"the output cannot be decoded to compare it ({type(exc).__name__})")
    try:
        current, where = published()
    except (StorageError, OSError, ValueError) as exc:
        return check(False, f"what is published could not be read: {exc}")
    return changed_check(hashes, current, where)


def published_hashes(storage: Storage, key: str) -> Hashes | None:
    """The hashes of what is published at ``key`` under ``storage``: from its sidecar (one
    GET), else from the picture itself when one is there without a sidecar (put there by
    another tool); None when nothing is there."""
    try:
        sidecar = json.loads(storage.get_text(sidecar_key(key)))
    except FileNotFoundError:
        sidecar = None
    hashes = sidecar.get("hashes") if isinstance(sidecar, dict) else None
    if isinstance(hashes, dict) and {"phash", "colorhash"} <= set(hashes):
        return hashes
    if not storage.exists(key):
        return None
    return perceptual_hashes(storage.get_bytes(key))


@lru_cache(maxsize=256)
def _job_spec(jobs: Jobs, job_id: str) -> PublishSpec | None:
    # A job's publish block is set when it is recorded and never changed: read once per process.
    return from_record(jobs.field(job_id, RECORD_FIELD))


def check_output(jobs: Jobs, storage_for: Callable[[str], Storage], job_id: str, run: Run, data: bytes,
                 nsfw: list[bool] | None) -> dict[str, Check]:
    """The checks of run ``run``'s collected output ``data`` that its job asks for (``{}``
    for none). ``storage_for(root)`` opens the destination root, read for ``changed``."""
    spec = _job_spec(jobs, job_id)
    if spec is None or not spec.checks:
        return {}

    def published() -> tuple[Hashes | None, str]:
        values = publish_values(run.image_set, run.prompt_id, run.variant, run.options, run.vars)
        key = spec.destination_key(values, run.output_key)
        destination = storage_for(spec.root)
        return published_hashes(destination, key), destination.location(key)

    results = run_checks(spec, data, run.options.get("aspect_ratio"), nsfw, published)
    failed = [name for name, found in results.items() if not found["passed"]]
    if failed:
        log.info("run %s of %s: checks failed: %s", run.index, job_id, ", ".join(failed))
    return results
