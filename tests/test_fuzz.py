"""Hostile manifests and feeds never get a traceback: thousands of generated and mutated ones
thrown at ``validate`` and ``plan`` each end in a valid plan or a refusal (exit 2) whose every
line is ``file:line:col: field: message``, within a deadline per example and bounded memory.

The seeds are valid manifests (the documented example, inline sets with a matrix and runs, CSV
and JSONL feeds, a folder catalog); hypothesis mutates their bytes (non-UTF-8 bytes, YAML
punctuation, huge numbers), their structure (keys dropped, added and retyped, values replaced
by any YAML value, deep nesting) and grows alias bombs ("billion laughs") in them. Every
example goes through the library as ``editpipe`` calls it (``load_manifest``, ``size_of``,
``plan_runs``); those that name no URL (so that nothing leaves the machine) go through the
CLI too, in process (click's ``CliRunner``), as ``editpipe validate`` and ``editpipe plan``.

Profiles: ``editpipe`` (the default, about 35 s here), ``ci`` (CI=true: derandomized, the
same examples on every run) and ``thorough`` (five times the examples, to hunt by hand):
``HYPOTHESIS_PROFILE=thorough pytest tests/test_fuzz.py``.
"""

from __future__ import annotations

import json
import os
import re
import resource
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from conftest import make_image
from pipeline.cli import main
from pipeline.errors import ManifestError
from pipeline.manifest import load_manifest
from pipeline.manifest.schema import FIELD_VOCABULARY
from pipeline.modelspec import load_model_specs
from pipeline.plan import plan_runs
from pipeline.size import size_of

FIXTURES = Path(__file__).resolve().parent / "data" / "manifests"
SPECS = load_model_specs()

# Per test (alias bombs: a fifth of it); about 40 s in all on a 2-core VM.
EXAMPLES = 600
_COMMON = dict(
    # A bound on any one hostile example, with room for the suite's three files at a time on
    # two cores (an alias bomb takes about 3 s alone, and was seen at 6.8 s under that load).
    deadline=timedelta(seconds=15),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
    database=None,
)
settings.register_profile("editpipe", max_examples=EXAMPLES, **_COMMON)
settings.register_profile("ci", max_examples=EXAMPLES, derandomize=True, **_COMMON)
settings.register_profile("thorough", max_examples=EXAMPLES * 5, **_COMMON)  # to hunt, by hand
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") == "true" else "editpipe"))

# Plans are built for real up to this many runs; more is refused, as EDITPIPE_MAX_RUNS would.
MAX_RUNS = 2_000
# What one example may add to the test process's peak RSS (its imports done before).
MAX_EXAMPLE_RSS_GROWTH_MB = 100

INLINE = """\
version: 1
name: fuzz-inline
output: out
budget_usd: 5.00
defaults:
  quality: medium
  variants: 2
image_sets:
  - id: a
    images: [a.png, products/0412/front.jpg]
    vars: {product: gold ring, color: gold}
  - id: b
    images: [b.jpg]
    vars: {product: silver hoops, color: silver}
prompts:
  - id: editorial
    text: A model wearing the {color} {product}.
  - id: flatlay
    text: A flat-lay of the {product}.
    aspect_ratio: "1:1"
matrix:
  aspect_ratio: ["2:3", "3:2"]
  resolution: [1k, 2k]
output_key: "{image_set}/{prompt}/{aspect_ratio}/{resolution}/{variant}"
"""

RUNS = INLINE.replace("name: fuzz-inline", "name: fuzz-runs") + """\
runs:
  - {image_set: a, prompt: flatlay, quality: high}
  - {image_set: b, prompt: editorial, variants: 3}
"""

CSV_FEED = """\
version: 1
name: fuzz-csv
output: out
catalog:
  feed: feed.csv
  id: sku
  images: [image, backdrop]
  vars: [title]
  on_bad_row: {on_bad_row}
prompts:
  - id: p
    text: An editorial photograph of the {title}.
"""

JSONL_FEED = CSV_FEED.replace("feed.csv", "feed.jsonl").replace("fuzz-csv", "fuzz-jsonl")

FOLDER = """\
version: 1
name: fuzz-folder
output: out
catalog: {prefix: products, pattern: "*/*"}
prompts:
  - id: p
    text: The {folder} on linen.
"""

EXAMPLE = (FIXTURES / "example.yaml").read_text().replace(
    "s3://catalog-media/edits/spring", "out").replace("s3://catalog-media/products/0412/detail.png", "b.jpg")

SEEDS = {
    "inline": INLINE,
    "runs": RUNS,
    "csv-skip": CSV_FEED.replace("{on_bad_row}", "skip"),
    "csv-fail": CSV_FEED.replace("{on_bad_row}", "fail"),
    "jsonl": JSONL_FEED.replace("{on_bad_row}", "skip"),
    "folder": FOLDER,
    "example": EXAMPLE,
    "mistakes": (FIXTURES / "mistakes.yaml").read_text(),
}

FEED_ROWS = [
    ["sku", "image", "backdrop", "title"],
    ["s1", "a.png", "b.jpg", "gold ring"],
    ["s2", "products/ring/front.png", "", "silver hoops, large"],
    ["s3", "text.jpg", "a.png", 'a "quoted" title'],
    ["s4", "", "", "no image"],
    ["s1", "a.png", "", "a duplicate id"],
]

# Bytes and tokens that break things in YAML, CSV, UTF-8 and templates.
TOKENS = [
    b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00", b"\x07", b"\r", b"\r\n", b"\t", b"\xef\xbb\xbf",
    b"&a ", b"*a", b"<<: *a\n", b"!!python/object:os.system ", b"!!binary ", b"!!timestamp ", b"!custom ",
    b"{", b"}", b"[", b"]", b"- ", b": ", b"? ", b"\n  ", b"\n", b"'", b'"', b"|\n", b">-\n", b"#",
    b"%YAML 1.1\n", b"---\n", b"...\n", b"~", b"null", b"true", b".nan", b".inf", b"-.inf", b"1e9999",
    b"99999999999999999999999999999999", b"-1", b"0", b"0x1F", b"0o17", b"1_000", b"2:3", b"12:30:00",
    b"{image_set}", b"{nope}", b"{{", b"}}", b"../", b"/", b"\\", b"..", b"a.png", b"text.jpg", b"missing.png",
    b",", b'"', b'""', b"\n,,,\n",
]

# Any YAML-ish value, from scalars that are hard to read to deep structures.
SCALARS = st.one_of(
    st.none(), st.booleans(),
    st.integers(), st.integers(min_value=10**18, max_value=10**400), st.integers(max_value=-(10**18)),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(["1:1", "2:3", "4k", "png", "jpeg", "{product}", "{image_set}/{variant}", "a.png", "text.jpg",
                     "https://", "s3://", "s3://bucket", "../x", "", " ", "\x00", "\u2028", "\ud7ff", "é"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.one_of(st.sampled_from(FIELD_VOCABULARY), st.text(max_size=10)), children, max_size=5),
    ),
    max_leaves=20,
)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """The files the seeds name: images the provider takes, a text file named .jpg, a folder."""
    work = tmp_path_factory.mktemp("fuzz")
    make_image(work / "a.png")
    make_image(work / "b.jpg")
    make_image(work / "products" / "0412" / "front.jpg")
    (work / "text.jpg").write_text("not an image\n")
    for folder in ("ring", "hoops"):
        make_image(work / "products" / folder / "front.png")
    (work / "products" / "hoops" / "notes.txt").write_text("a note\n")
    # Once through the CLI, so that what it imports on first use is not an example's memory.
    (work / "m.yaml").write_text(INLINE)
    CliRunner().invoke(main, ["plan", str(work / "m.yaml")])
    return work


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# ---- what every example must end in -------------------------------------------------------


def _located(line: str, files: set[str]) -> bool:
    """Whether an issue line is ``file:line:col: field: message`` for one of ``files``."""
    return any(re.match(re.escape(f) + r":[1-9]\d*:[1-9]\d*: ", line) for f in files)


def check(work: Path, manifest: bytes, feed: bytes | None = None, feed_name: str = "feed.csv", *,
          record=event) -> None:
    """Validate and plan ``manifest`` (with ``feed``) as editpipe does; ``record`` counts what
    each example ended in, for ``--hypothesis-show-statistics``."""
    peak = _peak_rss_mb()
    _check(work, manifest, feed, feed_name, record)
    grown = _peak_rss_mb() - peak
    assert grown <= MAX_EXAMPLE_RSS_GROWTH_MB, f"one example grew the peak RSS by {grown:.0f} MB"


def _check(work: Path, manifest: bytes, feed: bytes | None, feed_name: str, record) -> None:
    path = work / "m.yaml"
    path.write_bytes(manifest)
    files = {str(path)}
    for name in ("feed.csv", "feed.jsonl"):
        files.add(str(work / name))
        (work / name).unlink(missing_ok=True)
    if feed is not None:
        (work / feed_name).write_bytes(feed)

    try:
        loaded = load_manifest(path, SPECS, max_runs=MAX_RUNS)
    except ManifestError as exc:
        record("refused")
        assert exc.issues
        for issue in exc.issues:
            assert _located(str(issue), files), str(issue)
    else:
        record("planned")
        size = size_of(loaded, SPECS)
        assert size.runs <= MAX_RUNS
        plan = plan_runs(loaded, SPECS, s3_etag=lambda uri: "0" * 32)
        assert len(plan.runs) == size.runs
        assert plan.estimated_cost(SPECS) == size.usd

    if b"://" in manifest or (feed is not None and b"://" in feed):
        return  # the CLI would read S3 or fetch a URL: nothing leaves the machine here
    record("through the CLI too")
    for command in ("validate", "plan"):
        result = CliRunner().invoke(main, [command, str(path)], env={"EDITPIPE_MAX_RUNS": str(MAX_RUNS)})
        assert result.exit_code in (0, 2), (command, result.exit_code, result.output, result.stderr)
        assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
        if result.exit_code == 2:
            # An issue is one line whatever it quotes (split on "\n" alone, as a terminal does).
            *issues, summary = result.stderr.strip().split("\n")
            assert summary.endswith("error(s); nothing was submitted."), result.stderr
            assert issues and all(_located(line, files) for line in issues), result.stderr


# ---- mutations ----------------------------------------------------------------------------


@st.composite
def mutated_bytes(draw, seed: bytes) -> bytes:
    """``seed`` with a few bytes inserted, deleted, replaced or swapped for tokens."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["insert", "delete", "replace", "token"]))
        if kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=6))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 20))]
        elif kind == "replace" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        else:
            data[at:at] = draw(st.sampled_from(TOKENS))
    return bytes(data)


def _paths(node, path=()):
    yield path
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, path + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths(value, path + (i,))


def _nested(depth: int, leaf) -> object:
    for i in range(depth):
        leaf = [leaf] if i % 2 else {"n": leaf}
    return leaf


@st.composite
def mutated_structure(draw, seed: str) -> bytes:
    """``seed`` read as YAML, a few nodes replaced, dropped, added or nested deep, dumped again."""
    data = yaml.safe_load(seed)
    for _ in range(draw(st.integers(1, 4))):
        paths = list(_paths(data))
        path = draw(st.sampled_from(paths))
        kind = draw(st.sampled_from(["replace", "drop", "add", "nest"]))
        if not path:
            if kind == "replace":
                data = draw(VALUES)
            continue
        parent = data
        for part in path[:-1]:
            parent = parent[part]
        last = path[-1]
        if kind == "replace":
            parent[last] = draw(VALUES)
        elif kind == "drop":
            del parent[last]
        elif kind == "add" and isinstance(parent[last], dict):
            parent[last][draw(st.sampled_from(FIELD_VOCABULARY))] = draw(VALUES)
        elif kind == "add" and isinstance(parent[last], list):
            parent[last].append(draw(VALUES))
        else:
            parent[last] = _nested(draw(st.integers(1, 60)), parent[last])
    try:
        text = yaml.safe_dump(data, allow_unicode=draw(st.booleans()), sort_keys=False)
    except (yaml.YAMLError, RecursionError):
        text = seed
    return text.encode("utf-8", "surrogatepass")


@st.composite
def alias_bomb(draw, seed: str) -> bytes:
    """``seed`` with ``levels`` anchors, each listing the one before ``width`` times, the last
    aliased where a field was: width ** levels nodes from a few lines."""
    width, levels = draw(st.integers(2, 12)), draw(st.integers(2, 12))
    lines = ["lol0: &l0 [lol, lol]"]
    for i in range(1, levels + 1):
        lines.append(f"lol{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    field = draw(st.sampled_from(["prompts", "image_sets", "matrix", "defaults", "runs", "catalog"]))
    body = [line for line in seed.splitlines() if not line.startswith(f"{field}:")]
    where = draw(st.sampled_from([f"{field}: *l{levels}", f"{field}:\n  - *l{levels}",
                                  f"{field}: {{aspect_ratio: *l{levels}}}", f"{field}: {{<<: *l{levels}}}"]))
    return "\n".join([*lines, *body, where, ""]).encode()


def _feed_text(rows: list[list[str]], fmt: str) -> bytes:
    if fmt == "csv":
        out = []
        for row in rows:
            out.append(",".join('"' + c.replace('"', '""') + '"' if re.search(r'[,"\n\r]', c) else c for c in row))
        return ("\n".join(out) + "\n").encode("utf-8", "surrogatepass")
    header, *body = rows
    return "".join(json.dumps(dict(zip(header, row))) + "\n" for row in body).encode("utf-8", "surrogatepass")


CELLS = st.one_of(
    st.sampled_from(["a.png", "b.jpg", "text.jpg", "missing.png", "products", "/dev/null", "../a.png",
                     "https://cdn.example.com/x.jpg", "", " ", "s1", "{title}", "\x00", "x" * 300]),
    st.text(max_size=20),
)


@st.composite
def feeds(draw) -> tuple[bytes, bytes, str]:
    """A CSV or JSONL feed of generated rows (then maybe byte-mutated), and its manifest."""
    fmt = draw(st.sampled_from(["csv", "jsonl"]))
    rows = [list(row) for row in FEED_ROWS]
    for _ in range(draw(st.integers(0, 6))):
        rows.append(draw(st.lists(CELLS, min_size=0, max_size=6)))
    if draw(st.booleans()):
        rows[0] = draw(st.lists(st.one_of(st.sampled_from(FEED_ROWS[0]), st.text(max_size=8)), max_size=6))
    feed = _feed_text(rows, fmt) if fmt == "csv" else _feed_text([FEED_ROWS[0], *rows[1:]], fmt)
    if draw(st.booleans()):
        feed = draw(mutated_bytes(feed))
    seed = SEEDS["csv-" + draw(st.sampled_from(["skip", "fail"]))] if fmt == "csv" else SEEDS["jsonl"]
    return seed.encode(), feed, f"feed.{fmt}"


def _seed_feed(name: str) -> tuple[bytes | None, str]:
    if name.startswith("csv"):
        return _feed_text(FEED_ROWS, "csv"), "feed.csv"
    if name == "jsonl":
        return _feed_text(FEED_ROWS, "jsonl"), "feed.jsonl"
    return None, "feed.csv"


# ---- the tests ----------------------------------------------------------------------------


def test_every_seed_is_valid_or_refused_with_lines(workdir):
    for name, seed in SEEDS.items():
        feed, feed_name = _seed_feed(name)
        check(workdir, seed.encode(), feed, feed_name, record=lambda what: None)
    with pytest.raises(ManifestError):  # the fixture of mistakes is a refusal, the others plan
        load_manifest(FIXTURES / "mistakes.yaml", SPECS)


@given(data=st.data(), name=st.sampled_from(sorted(SEEDS)))
def test_mutated_bytes_never_crash_validate_or_plan(workdir, data, name):
    feed, feed_name = _seed_feed(name)
    check(workdir, data.draw(mutated_bytes(SEEDS[name].encode())), feed, feed_name)


@given(data=st.data(), name=st.sampled_from(sorted(SEEDS)))
def test_mutated_structure_never_crashes_validate_or_plan(workdir, data, name):
    feed, feed_name = _seed_feed(name)
    check(workdir, data.draw(mutated_structure(SEEDS[name])), feed, feed_name)


@settings(max_examples=EXAMPLES // 5)
@given(data=st.data(), name=st.sampled_from(["inline", "runs", "csv-skip"]))
def test_alias_bombs_are_refused_fast_at_a_line(workdir, data, name):
    feed, feed_name = _seed_feed(name)
    check(workdir, data.draw(alias_bomb(SEEDS[name])), feed, feed_name)


@given(generated=feeds())
def test_generated_and_mutated_feeds_never_crash_validate_or_plan(workdir, generated):
    manifest, feed, feed_name = generated
    check(workdir, manifest, feed, feed_name)
