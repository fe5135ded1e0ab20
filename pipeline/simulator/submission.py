"""Reading a submit request the way the provider does: check it, or say clearly why not."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..modelspec import ModelSpec
from .images import FORMATS, parse_ratio

MAX_IMAGES = 16
BASE64_WEBHOOK_ERROR = (
    "webhook callback does not support base64 output, please use the normal API to use base64 output"
)


class BadRequest(ValueError):
    """The submit is malformed; the message is what the client is told (HTTP 400)."""


@dataclass(frozen=True)
class Submission:
    """A submit that passed every check, with defaults filled in."""

    images: list[str]
    prompt: str
    aspect_ratio: str
    output_format: str
    sync: bool
    base64_output: bool


def find_spec(specs: Mapping[str, ModelSpec], model: str) -> ModelSpec | None:
    """The spec for the model path after ``/api/v3/``, matched by endpoint or name."""
    for spec in specs.values():
        if spec.endpoint.removeprefix("/api/v3/") == model or spec.name == model:
            return spec
    return None


def parse_submission(body: Any, spec: ModelSpec | None, webhook: str | None) -> Submission:
    """Check ``body`` against the documented fields and, when there is one, the model spec.

    Raises ``BadRequest`` naming the first offending field.
    """
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    max_images = spec.max_images if spec else MAX_IMAGES
    images = body.get("images")
    if not isinstance(images, list) or not 1 <= len(images) <= max_images:
        raise BadRequest(f"images must be a list of 1 to {max_images} image URLs")
    for i, url in enumerate(images, 1):
        if not isinstance(url, str) or not url.strip():
            raise BadRequest(f"images[{i - 1}] must be a non-empty URL string")
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise BadRequest("prompt is required and must be non-empty text")

    options = {"aspect_ratio": "1:1", "output_format": "png"}
    if spec:
        options.update(spec.defaults())
        for name, option in spec.options.items():
            if name in body and body[name] not in option.values:
                raise BadRequest(
                    f"{name} must be one of {', '.join(option.values)}, got {body[name]!r}"
                )
    for name in ("aspect_ratio", "output_format"):
        if name in body:
            options[name] = body[name]
    if not isinstance(options["aspect_ratio"], str) or parse_ratio(options["aspect_ratio"]) is None:
        raise BadRequest(f"aspect_ratio must look like 16:9, got {options['aspect_ratio']!r}")
    if options["output_format"] not in FORMATS:
        raise BadRequest(
            f"output_format must be one of {', '.join(FORMATS)}, got {options['output_format']!r}"
        )

    flags = {}
    for name in ("enable_sync_mode", "enable_base64_output"):
        value = body.get(name, False)
        if not isinstance(value, bool):
            raise BadRequest(f"{name} must be true or false, got {value!r}")
        flags[name] = value
    if webhook and flags["enable_base64_output"]:
        raise BadRequest(BASE64_WEBHOOK_ERROR)

    return Submission(
        images=list(images),
        prompt=prompt,
        aspect_ratio=options["aspect_ratio"],
        output_format=options["output_format"],
        sync=flags["enable_sync_mode"],
        base64_output=flags["enable_base64_output"],
    )
