"""The automatic checks of an output at collection (``pipeline.checks``): each on pictures that
pass it and pictures that fail it, made here with Pillow; then a job whose outputs are checked
as they are collected, every check in its result line and on its report, and a failed check
that keeps its output."""

from __future__ import annotations

import io
import json

from PIL import Image, ImageDraw

from conftest import read_jsonl, run_job, write_manifest
from pipeline.checks import (
    ASPECT_TOLERANCE,
    aspect_check,
    changed_check,
    min_size_check,
    nsfw_check,
    perceptual_hashes,
    published_hashes,
    run_checks,
)
from pipeline.layout import job_file, sidecar_key
from pipeline.manifest.publish import CheckSpec, PublishSpec
from pipeline.provider import WaveSpeedClient
from pipeline.storage import LocalStorage

ALL_CHECKS = (CheckSpec("aspect_ratio"), CheckSpec("min_size", 1024), CheckSpec("not_nsfw"), CheckSpec("changed"))


def picture(size=(1024, 1536), backdrop=(230, 220, 200), product=(40, 60, 160), fmt="PNG", shape="ellipse") -> bytes:
    """A product shot: a shape on a backdrop, at ``size``, as ``fmt``."""
    img = Image.new("RGB", size, backdrop)
    w, h = size
    box = (w // 4, h // 4, 3 * w // 4, 3 * h // 4)
    draw = ImageDraw.Draw(img)
    (draw.ellipse if shape == "ellipse" else draw.rectangle)(box, fill=product)
    draw.rectangle((w // 10, h // 10, w // 5, h // 5), fill=(200, 30, 30))
    out = io.BytesIO()
    img.save(out, fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    return out.getvalue()


def size_of(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as img:
        return img.size


def test_aspect_ratio_passes_at_the_requested_ratio_within_the_rounding_and_fails_at_another():
    assert aspect_check(size_of(picture((1024, 1536))), "2:3") == {"passed": True, "detail": "1024x1536 is 2:3"}
    assert aspect_check((1536, 1024), "3:2")["passed"]
    # The provider rounds its sizes: 9:21 at a 2400 long side is 1028.6 wide, given as 1024.
    rounded = aspect_check((1024, 2400), "9:21")
    assert rounded["passed"] and "within 3%" in rounded["detail"]
    square = aspect_check(size_of(picture((1024, 1024))), "2:3")
    assert square == {"passed": False, "detail": "1024x1024 is 1:1, not 2:3 (50% off)"}
    just_out = aspect_check((1024, round(1536 * (1 + 2 * ASPECT_TOLERANCE))), "2:3")
    assert not just_out["passed"]
    assert aspect_check((512, 512), None)["passed"]  # a model without the option: nothing to judge


def test_min_size_passes_at_the_least_long_side_and_fails_below_it():
    assert min_size_check(size_of(picture((1024, 1536))), 1536)["passed"]
    assert min_size_check((1536, 1024), 1024) == {"passed": True, "detail": "long side 1536 px ≥ 1024"}
    assert min_size_check(size_of(picture((683, 1024))), 1025) == {"passed": False,
                                                                   "detail": "long side 1024 px < 1025"}


def test_not_nsfw_fails_only_when_the_provider_flagged_the_output():
    assert nsfw_check([False])["passed"]
    assert nsfw_check(None) == {"passed": True, "detail": "the provider sent no flag"}
    assert nsfw_check([])["passed"]
    assert nsfw_check([True]) == {"passed": False, "detail": "the provider flagged it (has_nsfw_contents)"}


def test_the_simulator_flags_a_marked_prompt_and_the_client_reads_the_flag(tmp_path, sim, settings):
    product = tmp_path / "ring.png"
    product.write_bytes(picture((64, 64)))
    with WaveSpeedClient(settings.base_url, settings.require_api_key()) as client:
        image = client.upload(product)
        edit = "/api/v3/openai/gpt-image-2/edit"
        flagged = client.submit(edit, {"images": [image], "prompt": "a swimsuit shot [sim:nsfw]", "enable_sync_mode": True})
        plain = client.submit(edit, {"images": [image], "prompt": "a ring", "enable_sync_mode": True})
    assert flagged.completed and flagged.nsfw == [True]
    assert plain.completed and plain.nsfw == [False]


def test_changed_fails_for_the_picture_published_there_and_passes_for_a_new_one(tmp_path):
    live = LocalStorage(tmp_path / "live")
    shot = picture()
    assert published_hashes(live, "ring/editorial.png") is None
    assert changed_check(perceptual_hashes(shot), None, "ring/editorial.png")["passed"]

    # Published by editpipe: the hashes are read from the sidecar alone.
    live.put_bytes("ring/editorial.png", shot)
    live.put_text(sidecar_key("ring/editorial.png"), json.dumps({"hashes": perceptual_hashes(shot)}))
    published = published_hashes(live, "ring/editorial.png")
    assert published == perceptual_hashes(shot)

    again = changed_check(perceptual_hashes(shot), published, "there")
    assert not again["passed"] and again["detail"].startswith("the same picture as published at there")
    # Re-encoded and resized, it is still the same picture.
    smaller_jpeg = picture((683, 1024), fmt="JPEG")
    assert not changed_check(perceptual_hashes(smaller_jpeg), published, "there")["passed"]
    # Another product, another backdrop: changed.
    assert changed_check(perceptual_hashes(picture(shape="rect", product=(20, 140, 60))), published, "x")["passed"]
    assert changed_check(perceptual_hashes(picture(backdrop=(40, 40, 45))), published, "x")["passed"]

    # Put there by another tool, without a sidecar: the picture itself is read.
    live.put_bytes("hoop/editorial.png", shot)
    assert published_hashes(live, "hoop/editorial.png") == perceptual_hashes(shot)


def test_every_check_on_a_passing_and_a_failing_output_and_an_undecodable_one_fails_without_raising(tmp_path):
    spec = PublishSpec(root=str(tmp_path), key="{image_set}", review="auto", checks=ALL_CHECKS)
    shot = picture((1024, 1536))

    passing = run_checks(spec, shot, "2:3", [False], lambda: (None, "live/ring.png"))
    assert {name: c["passed"] for name, c in passing.items()} == dict.fromkeys(
        ("aspect_ratio", "min_size", "not_nsfw", "changed"), True)

    failing = run_checks(spec, picture((512, 512)), "2:3", [True], lambda: (perceptual_hashes(picture((512, 512))),
                                                                            "live/ring.png"))
    assert {name: c["passed"] for name, c in failing.items()} == dict.fromkeys(
        ("aspect_ratio", "min_size", "not_nsfw", "changed"), False)

    broken = run_checks(spec, b"not a picture", "2:3", None, lambda: (None, "x"))
    assert broken["not_nsfw"]["passed"]
    for name in ("aspect_ratio", "min_size", "changed"):
        assert not broken[name]["passed"] and "not a decodable image" in broken[name]["detail"]

    def unreadable():
        raise OSError("the destination bucket refused the read")

    assert "could not be read" in run_checks(spec, shot, "2:3", None, unreadable)["changed"]["detail"]


def test_outputs_are_checked_at_collection_and_a_failed_check_keeps_the_output(tmp_path, settings, sim, workers,
                                                                              bucket, s3):
    """A job of 12 runs on S3: its simulated outputs are 256 px long (min_size 1024 fails for
    all), the flatlay prompt's are flagged by the provider; every result line holds its four
    checks, every output is stored, and the report shows the failed ones."""
    workers.start(1)
    prompts = """
  - id: editorial
    text: A model wearing the {product}, warm natural light.
  - id: flatlay
    text: A flat-lay of the {product} on beige linen [sim:nsfw]."""
    manifest = write_manifest(tmp_path, f"s3://{bucket}/out", prompts=prompts, extra=f"""publish:
  to: s3://{bucket}/live/{{image_set}}/{{prompt}}/{{aspect_ratio}}
  review: required
  checks: [aspect_ratio, min_size: 1024, not_nsfw, changed]
""")
    status = run_job(settings, manifest)
    assert status.status == "succeeded" and status.succeeded == 12

    lines = read_jsonl(s3, bucket, f"out/{job_file(status.id, 'results.jsonl')}")
    assert len(lines) == 12
    for line in lines:
        checks = line["checks"]
        assert list(checks) == ["aspect_ratio", "min_size", "not_nsfw", "changed"]
        ratio = line["options"]["aspect_ratio"]
        assert checks["aspect_ratio"] == {"passed": True, "detail": f"{'171x256' if ratio == '2:3' else '256x171'} is "
                                                                    f"{ratio} (within 3%)"}
        assert checks["min_size"] == {"passed": False, "detail": "long side 256 px < 1024"}
        assert checks["not_nsfw"]["passed"] is (line["prompt"] == "editorial")
        assert checks["changed"] == {"passed": True, "detail": f"nothing published at s3://{bucket}/live/"
                                                               f"{line['image_set']}/{line['prompt']}/{ratio}.png yet"}
        # Held back, never lost: the output and its sidecar are stored as for any run.
        s3.head_object(Bucket=bucket, Key=f"out/{line['output']}")
        s3.head_object(Bucket=bucket, Key=f"out/{sidecar_key(line['output'])}")
    report = s3.get_object(Bucket=bucket, Key=f"out/{job_file(status.id, 'report.html')}")["Body"].read().decode()
    assert report.count('class="check no"') == 12 + 6  # min size on every card, nsfw on the flatlay ones
    assert "checks failed" in report and "12 of 12" in report
    assert "wait for review" in report
