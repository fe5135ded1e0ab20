"""Whether an image reference can be fetched, judged the same for inline sets and catalog rows."""

from __future__ import annotations

import os
from pathlib import Path

from ..plan import image_kind


class References:
    """Whether an image reference can be fetched: a well-formed s3:// URI or http(s) URL, or a
    local file (relative to the manifest) that exists, each file looked at once."""

    def __init__(self, base_dir: Path):
        self.base_dir = base_dir
        self._files: dict[str, str | None] = {}

    def problem(self, ref: str) -> str | None:
        """Why ``ref`` cannot be fetched, or None when it can."""
        kind = image_kind(ref)
        if kind == "s3":
            bucket, _, key = ref[len("s3://") :].partition("/")
            return None if bucket and key else f"{ref!r} is not an s3://bucket/key URI"
        if kind == "https":
            host = ref.split("://", 1)[1].split("/", 1)[0]
            return None if host else f"{ref!r} has no host"
        if "://" in ref:
            return f"{ref!r}: images are local paths, s3:// URIs or http(s) URLs"
        if ref not in self._files:
            path = os.path.abspath(os.path.join(self.base_dir, ref))
            self._files[ref] = None if os.path.isfile(path) else f"no file {ref!r} (looked for {path})"
        return self._files[ref]
