"""Uploaded files: tickets handed out by ``POST /api/v3/media/uploads`` and the stored bytes."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class Upload:
    token: str
    filename: str
    content_type: str
    declared_size: int | None
    data: bytes | None = None


class UploadStore:
    """Files by token. A ticket exists before its bytes; only a stored file can be downloaded.

    Tokens are unguessable, which is what makes the PUT and download URLs safe to hand out
    without the API key, as presigned URLs are.
    """

    def __init__(self) -> None:
        self._files: dict[str, Upload] = {}

    def ticket(self, filename: str, content_type: str, declared_size: int | None) -> Upload:
        name = _UNSAFE.sub("_", filename).strip("._") or "upload"
        upload = Upload(secrets.token_urlsafe(16), name, content_type, declared_size)
        self._files[upload.token] = upload
        return upload

    def get(self, token: str) -> Upload | None:
        return self._files.get(token)


def download_path(upload: Upload) -> str:
    return f"/_sim/media/{upload.token}/{upload.filename}"
