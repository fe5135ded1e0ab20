"""Whether an image reference can be fetched, judged the same for inline sets and catalog rows.

A local file is judged as the provider would judge it (wavespeed-api.md: JPG, PNG, WebP,
GIF, BMP or TIFF, at most 20 MB), by its size and its header alone: Pillow's ``Image.open``
reads the header and decodes nothing. Remote references (s3://, http(s)) are judged by
their form only; nothing is fetched.
"""

from __future__ import annotations

import os
import struct
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ..plan import image_kind

# What the provider accepts, by Pillow's format names, as its documentation names them.
ACCEPTED_FORMATS = {"JPEG": "JPG", "PNG": "PNG", "WEBP": "WebP", "GIF": "GIF", "BMP": "BMP", "TIFF": "TIFF"}
MAX_IMAGE_BYTES = 20 * 1024 * 1024
_ACCEPTED = ", ".join(ACCEPTED_FORMATS.values())


class References:
    """Whether an image reference can be fetched: a well-formed s3:// URI or http(s) URL, or a
    local file (relative to the manifest) that is an image the provider accepts, each file
    looked at once however many references name it."""

    def __init__(self, base_dir: Path):
        self.base_dir = base_dir
        self._refs: dict[str, str | None] = {}
        self._files: dict[str, str | None] = {}

    def problem(self, ref: str) -> str | None:
        """Why ``ref`` cannot be fetched, or None when it can."""
        if ref in self._refs:  # a local file every row of a catalog names, judged once
            return self._refs[ref]
        kind = image_kind(ref)
        if kind == "s3":
            bucket, _, key = ref[len("s3://") :].partition("/")
            return None if bucket and key else f"{ref!r} is not an s3://bucket/key URI"
        if kind == "https":
            host = ref.split("://", 1)[1].split("/", 1)[0]
            return None if host else f"{ref!r} has no host"
        if "://" in ref:
            return f"{ref!r}: images are local paths, s3:// URIs or http(s) URLs"
        path = os.path.abspath(os.path.join(self.base_dir, ref))
        if path not in self._files:
            self._files[path] = _file_problem(path)
        problem = self._files[path]
        if problem is _MISSING:
            self._refs[ref] = f"no file {ref!r} (looked for {path})"
        else:
            self._refs[ref] = None if problem is None else f"{ref!r} {problem}"
        return self._refs[ref]


_MISSING = "no file"


def _file_problem(path: str) -> str | None:
    """What makes the local file at ``path`` not an image the provider accepts (``_MISSING``
    when there is no such file), or None."""
    if "\x00" in path or not os.path.isfile(path):
        return _MISSING
    try:
        size = os.stat(path).st_size
    except OSError:
        return _MISSING
    if size > MAX_IMAGE_BYTES:
        return f"is {size / (1024 * 1024):.1f} MB; the provider accepts images up to 20 MB"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                found = image.format
    except UnidentifiedImageError:
        return f"is not an image ({_ACCEPTED} are accepted)"
    except Image.DecompressionBombError:
        return "claims more pixels than any image the provider takes"
    except (OSError, ValueError, SyntaxError, EOFError, struct.error) as exc:
        return f"is not a readable image: {exc}"
    if found not in ACCEPTED_FORMATS:
        return f"is a {found} image; the provider accepts {_ACCEPTED}"
    return None
