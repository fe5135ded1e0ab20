"""Images in and out: the check a fetched input must pass, and the rendered outputs.

Outputs are real, decodable files of the requested aspect ratio and format. When the
simulator fetched the inputs, an output shows the first input centred on a backdrop whose
colour comes from the prompt (``derive``), so a contact sheet of a simulated job shows which
product each output came from and which prompt made it. Without inputs (benchmarks) the
output is a plain picture rendered once per (aspect ratio, format, size) and shared by
every prediction, so that thousands of predictions cost thousands of dict lookups, not
thousands of encodes.
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
from dataclasses import dataclass
from functools import cached_property

from PIL import Image, ImageDraw, ImageOps

# Request value of ``output_format`` -> (Pillow format, content type, file extension).
FORMATS: dict[str, tuple[str, str, str]] = {
    "png": ("PNG", "image/png", "png"),
    "jpeg": ("JPEG", "image/jpeg", "jpeg"),
    "webp": ("WEBP", "image/webp", "webp"),
}
CONTENT_TYPES = {ext: ctype for _, ctype, ext in FORMATS.values()}
_RATIO = re.compile(r"^([1-9][0-9]{0,2}):([1-9][0-9]{0,2})$")


def parse_ratio(aspect_ratio: str) -> tuple[int, int] | None:
    """``"16:9"`` -> ``(16, 9)``; ``None`` if it is not ``W:H`` with small positive integers."""
    match = _RATIO.match(aspect_ratio)
    return (int(match.group(1)), int(match.group(2))) if match else None


def output_size(aspect_ratio: str, long_side: int) -> tuple[int, int]:
    """Pixel size with ``long_side`` on the longer edge and the ratio kept (to the pixel)."""
    ratio = parse_ratio(aspect_ratio)
    if ratio is None:
        raise ValueError(f"not an aspect ratio: {aspect_ratio!r}")
    w, h = ratio
    if w >= h:
        return long_side, max(1, round(long_side * h / w))
    return max(1, round(long_side * w / h)), long_side


def check_image(data: bytes) -> str | None:
    """Why ``data`` is not a readable image, or ``None`` if Pillow can decode it."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.verify()
    except Exception as exc:  # Pillow raises many types for broken files; all mean "not an image".
        return f"not a decodable image ({type(exc).__name__})"
    return None


# An input larger than this many pixels is refused before it is decoded (a decompression bomb).
MAX_INPUT_PIXELS = 64_000_000
# The input covers at most this share of the output's width and of its height.
INPUT_SHARE = 0.8


class UndecodableInput(ValueError):
    """The first input passed ``check_image`` but cannot be drawn; the message says why."""


@dataclass(frozen=True)
class Rendered:
    data: bytes
    content_type: str
    ext: str

    @cached_property
    def b64(self) -> str:
        return base64.b64encode(self.data).decode("ascii")


class OutputImages:
    """Renders and caches output images; every call with the same key returns the same bytes."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str, int], Rendered] = {}

    def get(self, aspect_ratio: str, output_format: str, long_side: int) -> Rendered:
        key = (aspect_ratio, output_format, long_side)
        rendered = self._cache.get(key)
        if rendered is None:
            rendered = self._cache[key] = _render(*key)
        return rendered


def _render(aspect_ratio: str, output_format: str, long_side: int) -> Rendered:
    pil_format, content_type, ext = FORMATS[output_format]
    size = output_size(aspect_ratio, long_side)
    img = Image.new("RGB", size, (40, 90, 160))
    draw = ImageDraw.Draw(img)
    # A frame and a diagonal make orientation and cropping mistakes visible to a person.
    draw.rectangle((0, 0, size[0] - 1, size[1] - 1), outline=(250, 200, 40), width=max(1, long_side // 64))
    draw.line((0, 0, size[0], size[1]), fill=(240, 240, 240), width=max(1, long_side // 128))
    return Rendered(_encode(img, pil_format), content_type, ext)


def backdrop(prompt: str) -> tuple[int, int, int]:
    """The backdrop colour for ``prompt``: the same in every process, different per prompt."""
    r, g, b = hashlib.sha256(prompt.encode("utf-8")).digest()[:3]
    return r, g, b


def derive(source: bytes, prompt: str, aspect_ratio: str, output_format: str, long_side: int) -> Rendered:
    """The output for an edit of ``source``: it, scaled to fit and centred on the prompt's backdrop,
    at the requested size and format.

    Costs a decode, a resize and an encode (milliseconds): call it off the event loop.
    Raises ``UndecodableInput`` if ``source`` is too large or cannot be decoded.
    """
    pil_format, content_type, ext = FORMATS[output_format]
    size = output_size(aspect_ratio, long_side)
    fit = (max(1, int(size[0] * INPUT_SHARE)), max(1, int(size[1] * INPUT_SHARE)))
    try:
        with Image.open(io.BytesIO(source)) as img:
            if img.width * img.height > MAX_INPUT_PIXELS:
                raise UndecodableInput(f"{img.width}x{img.height} pixels is more than {MAX_INPUT_PIXELS:,}")
            img.draft("RGB", fit)  # JPEG decodes at a fraction of its size: much faster for big photos
            upright = ImageOps.exif_transpose(img)  # a phone's portrait photo stands up, as it does for a person
            picture = ImageOps.contain(upright.convert("RGBA"), fit)
    except UndecodableInput:
        raise
    except Exception as exc:  # Pillow raises many types for broken files; all mean "cannot draw it".
        raise UndecodableInput(f"not a decodable image ({type(exc).__name__})") from exc
    canvas = Image.new("RGB", size, backdrop(prompt))
    canvas.paste(picture, ((size[0] - picture.width) // 2, (size[1] - picture.height) // 2), picture)
    return Rendered(_encode(canvas, pil_format), content_type, ext)


def _encode(img: Image.Image, pil_format: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=pil_format)
    return buf.getvalue()
