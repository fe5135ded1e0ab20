"""The ``publish`` block, an editpipe extension of manifest.md (a schedule may set it too):

```yaml
publish:
  to: s3://catalog-live/products/{image_set}/{prompt}   # a template like output_key
  review: required          # or auto: publish whatever passes the checks
  checks: [aspect_ratio, min_size: 1024, not_nsfw, changed]
```

``PublishDoc`` (in ``schema``) is the block as written; ``PublishSpec`` is it
resolved: ``to`` split into a fixed ``root`` (``s3://bucket[/prefix]``, or an absolute local
folder, a relative one taken from the manifest's folder) and a ``key`` template under it,
rendered for a run with the names ``output_key`` knows and given the output's extension.
What the checks find is ``pipeline.checks``'s; what publishing does, ``pipeline.publish``'s.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from .schema import CHECK_NAMES, PublishDoc, Review
from .template import Template, unsafe_key

__all__ = ["CHECK_NAMES", "RECORD_FIELD", "CheckSpec", "PublishDoc", "PublishSpec", "from_record", "publish_values",
           "record_field", "resolve_publish", "split_to"]


@dataclass(frozen=True)
class CheckSpec:
    """One check a job asks for; ``min_size`` only for the check of that name."""

    name: str
    min_size: int | None = None

    @property
    def label(self) -> str:
        return f"min_size: {self.min_size}" if self.name == "min_size" else self.name


@dataclass(frozen=True)
class PublishSpec:
    """A resolved ``publish`` block. ``root``: ``s3://bucket[/prefix]`` or an absolute folder;
    ``key``: the template of an output's place under it, without the extension."""

    root: str
    key: str
    review: Review
    checks: tuple[CheckSpec, ...] = ()

    @property
    def to(self) -> str:
        """The destination template as a person reads it."""
        return f"{self.root}/{self.key}"

    @property
    def auto(self) -> bool:
        """Whether outputs whose checks pass are published without a person's approval."""
        return self.review == "auto"

    def check(self, name: str) -> CheckSpec | None:
        return next((c for c in self.checks if c.name == name), None)

    @cached_property
    def template(self) -> Template:
        return Template.parse(self.key)

    def destination_key(self, values: Mapping[str, str], output_key: str) -> str:
        """Where under ``root`` the output at ``output_key`` is published: ``key`` rendered with
        ``values`` (``publish_values``) and the output's extension. Raises ``ValueError`` for
        a name ``values`` lacks or a key that would be unsafe."""
        try:
            key = self.template.render(values)
        except KeyError as exc:
            raise ValueError(f"publish.to uses {{{exc.args[0]}}}, which this run does not have") from None
        problem = unsafe_key(key)
        if problem is not None:
            raise ValueError(f"publish.to gives {key!r}, which {problem}")
        extension = output_key.rsplit(".", 1)[1] if "." in output_key.rsplit("/", 1)[-1] else ""
        return f"{key}.{extension}" if extension else key

    def to_dict(self) -> dict[str, Any]:
        """As kept in the job's record and its ``summary.json``."""
        return {"to": self.to, "root": self.root, "key": self.key, "review": self.review,
                "checks": [{"name": c.name, **({"min_size": c.min_size} if c.min_size is not None else {})}
                           for c in self.checks]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PublishSpec:
        return cls(root=data["root"], key=data["key"], review=data["review"],
                   checks=tuple(CheckSpec(c["name"], c.get("min_size")) for c in data.get("checks") or ()))


RECORD_FIELD = "publish"  # the job record's field that holds a job's spec (``record_field``)
PUBLISH_MESSAGE = "publish_message"  # the job record's field: what publishing did or waits for


def record_field(spec: PublishSpec | None) -> dict[str, str]:
    """The spec as a field of a job's record in Redis (nothing for a job without one): what
    its collects read to know the checks, and what its finalize publishes by."""
    return {RECORD_FIELD: json.dumps(spec.to_dict())} if spec is not None else {}


def from_record(raw: str | None) -> PublishSpec | None:
    """The spec ``record_field`` stored; None for a job without one."""
    return PublishSpec.from_dict(json.loads(raw)) if raw else None


def publish_values(image_set: str, prompt: str, variant: int, options: Mapping[str, str],
                   vars_: Mapping[str, str]) -> dict[str, str]:
    """The names a ``publish.to`` template may use for one run, as ``output_key`` has them."""
    return {**options, **vars_, "image_set": image_set, "prompt": prompt, "variant": str(variant)}


def split_to(to: str) -> tuple[str, str]:
    """``to`` as (fixed root, key template): the root ends before the first segment with a
    placeholder (or before the last segment, when there is none)."""
    head, brace, _ = to.partition("{")
    cut = head.rfind("/") if brace else to.rstrip("/").rfind("/")
    if cut < 0:
        return "", to
    return to[:cut], to[cut + 1:]


def resolve_publish(doc: PublishDoc, base_dir: Path) -> tuple[PublishSpec | None, str | None]:
    """(the spec, None), or (None, what is wrong with ``to``); a relative local root is taken
    from ``base_dir`` (the folder of the manifest, or of the schedules file)."""
    to = doc.to.strip()
    if any(ord(c) < 0x20 for c in to):
        return None, "publish.to must not contain a control character"
    root, key = split_to(to)
    if to.startswith("s3://"):
        bucket = to[len("s3://"):].split("/", 1)[0]
        if not bucket or "{" in bucket or root in ("s3:", "s3:/"):
            return None, "publish.to in S3 is s3://bucket/prefix/{…}: a fixed bucket, then the key"
    elif "://" in to:
        return None, "publish.to is s3://bucket/prefix/{…} or a local folder/{…}"
    else:
        root = os.path.abspath(base_dir / os.path.expanduser(root or "."))
    if not key:
        return None, "publish.to needs a key after its folder, such as {image_set}/{prompt}"
    try:
        Template.parse(key)
    except ValueError as exc:
        return None, f"publish.to: {exc}"
    checks = tuple(CheckSpec("min_size", c["min_size"]) if isinstance(c, dict) else CheckSpec(c) for c in doc.checks)
    return PublishSpec(root=root.rstrip("/"), key=key, review=doc.review, checks=checks), None
