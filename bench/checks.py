"""What the automatic checks (``pipeline.checks``) add to the collection of one output.

An output of the provider's usual size (1024 × 1536) as PNG, JPEG and WebP, with a picture
that compresses like a photo (smooth gradients, a product, fine grain) and the worst case
(pure noise). Each is checked for all four checks (its hashes computed; what is published
given from memory, so the figure is CPU only) 10 times, 3 rounds, best round; beside it the
thumbnail that collection already makes from the same bytes, measured the same way. Both
decode the picture, so the checks' cost is set against the thumbnail's (a ratio holds on a
loaded machine where milliseconds do not): target ≤ 1.5 × the thumbnail's.

    .venv/bin/python bench/checks.py

Exits 1 when a figure misses its target.
"""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import machine, verdict  # noqa: E402

from pipeline.checks import run_checks  # noqa: E402
from pipeline.manifest.publish import CheckSpec, PublishSpec  # noqa: E402
from pipeline.thumbnails import make_thumbnail  # noqa: E402

TARGET_RATIO = 1.5
SIZE = (1024, 1536)
SPEC = PublishSpec("/nowhere", "{image_set}", "auto", (CheckSpec("aspect_ratio"), CheckSpec("min_size", 1024),
                                                      CheckSpec("not_nsfw"), CheckSpec("changed")))


def photo_like() -> Image.Image:
    img = Image.linear_gradient("L").resize(SIZE).convert("RGB")
    draw = ImageDraw.Draw(img)
    draw.ellipse((256, 384, 768, 1152), fill=(180, 140, 60))
    grain = Image.effect_noise(SIZE, 12).convert("RGB")
    return Image.blend(img, grain, 0.15).filter(ImageFilter.GaussianBlur(1))


def encoded(img: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **({"quality": 90} if fmt in ("JPEG", "WEBP") else {}))
    return out.getvalue()


def best_ms(work, rounds: int = 3, each: int = 10) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(each):
            work()
        times.append((time.perf_counter() - started) / each * 1000)
    return min(times)


def main() -> int:
    print(machine())
    print(f"checks: {', '.join(c.label for c in SPEC.checks)} on a {SIZE[0]}x{SIZE[1]} output; "
          f"target ≤ {TARGET_RATIO:g} × the thumbnail collection makes")
    ok = True
    for name, picture in (("photo-like", photo_like()), ("noise", Image.effect_noise(SIZE, 60).convert("RGB"))):
        for fmt in ("PNG", "JPEG", "WEBP"):
            data = encoded(picture, fmt)
            checks = best_ms(lambda: run_checks(SPEC, data, "2:3", [False], lambda: (None, "nowhere")))
            thumb = best_ms(lambda: make_thumbnail(data))
            hit = checks <= TARGET_RATIO * thumb
            ok &= hit
            print(f"  {name:10} {fmt:4} {len(data) / 1024:6.0f} KiB  checks {checks:6.1f} ms, thumbnail {thumb:6.1f} ms"
                  f" ({checks / thumb:.2f}×)  {verdict(hit)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
