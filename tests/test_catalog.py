"""Catalog sources: image sets from a CSV/JSONL feed (local, http, s3) or a folder of folders.

Bad rows are named by feed and line, skipped or fatal as the manifest says; what every row
shares (columns, vars) is judged once, at the manifest's own lines. S3 is moto's server,
http a real server on a loopback port.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import http.server
import json
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import make_image, write_yaml
from pipeline.catalog import Sources, compile_pattern
from pipeline.errors import ManifestError
from pipeline.manifest import CatalogSet, load_manifest
from pipeline.plan import InputRef, Plan, plan_runs

HEADER = """
version: 1
name: catalog
output: out
"""

FEED_CATALOG = """
catalog:
  feed: {feed}
  id: sku
  images: [image_url, image_url_2]
  vars: [title, color]
  on_bad_row: {on_bad_row}
prompts:
  - id: editorial
    text: A portrait wearing the {{color}} {{title}}.
"""


def write_manifest(directory: Path, body: str) -> Path:
    """HEADER, then the catalog's ``body``."""
    return write_yaml(directory, textwrap.dedent(HEADER).lstrip("\n") + textwrap.dedent(body).lstrip("\n"))


def feed_manifest(directory: Path, feed: str, on_bad_row: str = "skip", extra: str = "") -> Path:
    return write_manifest(directory, FEED_CATALOG.format(feed=feed, on_bad_row=on_bad_row) + extra)


def write_csv(path: Path, rows: list[list[str]], header=("sku", "image_url", "image_url_2", "title", "color")) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def plan_of(path: Path, specs, **kwargs) -> Plan:
    settings = kwargs.pop("settings", None)
    return plan_runs(load_manifest(path, specs, sources=Sources(settings)), specs, **kwargs)


def issues_of(path: Path, specs, settings=None) -> list[str]:
    with pytest.raises(ManifestError) as info:
        load_manifest(path, specs, sources=Sources(settings))
    return [str(issue) for issue in info.value.issues]


# --- Feeds -----------------------------------------------------------------------------------


def test_a_csv_feed_gives_one_image_set_per_row_with_its_images_and_vars(tmp_path, specs):
    make_image(tmp_path / "shared.png")
    write_csv(
        tmp_path / "products.csv",
        [
            ["sku-1", "https://cdn.example.com/1.jpg", "shared.png", "pearl drop earrings", "gold"],
            ["sku-2", "https://cdn.example.com/2.jpg", "", "hoop earrings", ""],
        ],
    )
    path = feed_manifest(
        tmp_path,
        "products.csv",
        extra="image_sets:\n  - id: inline\n    images: [shared.png]\n    vars: {title: ring, color: red}\n",
    )
    manifest = load_manifest(path, specs)

    assert [s.id for s in manifest.image_sets] == ["inline", "sku-1", "sku-2"]
    assert manifest.image_sets[1] == CatalogSet(
        "sku-1", ("https://cdn.example.com/1.jpg", "shared.png"), {"title": "pearl drop earrings", "color": "gold"}, 2
    )
    plan = plan_runs(manifest, specs)
    assert [(r.image_set, r.prompt) for r in plan.runs] == [
        ("inline", "A portrait wearing the red ring."),
        ("sku-1", "A portrait wearing the gold pearl drop earrings."),
        ("sku-2", "A portrait wearing the  hoop earrings."),  # an empty cell is an empty string
    ]
    shared = "sha256:" + hashlib.sha256((tmp_path / "shared.png").read_bytes()).hexdigest()
    assert plan.runs[1].inputs == (
        InputRef("https://cdn.example.com/1.jpg", "https", "https://cdn.example.com/1.jpg"),
        InputRef(str(tmp_path / "shared.png"), "local", shared),
    )
    assert [r.output_key for r in plan.runs] == ["inline/editorial/1:1/1.png", "sku-1/editorial/1:1/1.png", "sku-2/editorial/1:1/1.png"]
    assert plan.skipped_rows == []


def test_a_jsonl_feed_takes_numbers_as_text_and_lists_of_images(tmp_path, specs):
    rows = [
        {"sku": 412, "image_url": ["https://cdn.example.com/a.jpg", "https://cdn.example.com/b.jpg"], "title": "ring", "color": None},
        {"sku": "0413", "image_url": "https://cdn.example.com/c.jpg", "image_url_2": "", "title": "hoop", "color": "silver", "other": 1},
    ]
    (tmp_path / "products.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    manifest = load_manifest(feed_manifest(tmp_path, "products.jsonl"), specs)

    assert [(s.id, s.images, s.vars, s.line) for s in manifest.image_sets] == [
        ("412", ("https://cdn.example.com/a.jpg", "https://cdn.example.com/b.jpg"), {"title": "ring", "color": ""}, 1),
        ("0413", ("https://cdn.example.com/c.jpg",), {"title": "hoop", "color": "silver"}, 2),
    ]


def test_bad_rows_are_skipped_and_listed_by_feed_line(tmp_path, specs):
    make_image(tmp_path / "ok.png")
    write_csv(
        tmp_path / "products.csv",
        [
            ["a", "https://cdn.example.com/a.jpg", "", "t", "c"],  # line 2: fine
            ["b", "", "", "t", "c"],  # line 3: no image
            ["c", "ftp://cdn.example.com/c.jpg", "", "t", "c"],  # line 4: not a usable URL
            ["", "https://cdn.example.com/d.jpg", "", "t", "c"],  # line 5: no id
            ["a", "https://cdn.example.com/a2.jpg", "", "t", "c"],  # line 6: a's id again
            ["e", "missing.png", "", "multi\nline title", "c"],  # lines 7-8: no such file
            ["f", "ok.png", "https://", "t", "c"],  # line 9: a URL without a host
            ["g", "ok.png", "", "t", "c"],  # line 10: fine
        ],
    )
    plan = plan_of(feed_manifest(tmp_path, "products.csv"), specs)
    feed = tmp_path / "products.csv"

    assert [r.image_set for r in plan.runs] == ["a", "g"]
    assert plan.skipped_rows == [
        f"{feed}:3:1: images: no image: image_url, image_url_2 are empty",
        f"{feed}:4:1: image_url: 'ftp://cdn.example.com/c.jpg': images are local paths, s3:// URIs or http(s) URLs",
        f"{feed}:5:1: sku: no id: the cell is empty",
        f"{feed}:6:1: sku: duplicate image set id 'a' (first at line 2)",
        f"{feed}:7:1: image_url: no file 'missing.png' (looked for {tmp_path / 'missing.png'})",
        f"{feed}:9:1: image_url_2: 'https://' has no host",
    ]


def test_on_bad_row_fail_reports_each_bad_row_at_its_feed_line(tmp_path, specs):
    write_csv(
        tmp_path / "products.csv",
        [
            ["a", "https://cdn.example.com/a.jpg", "", "t", "c"],
            ["b", "", "", "t", "c"],
            ["../c", "https://cdn.example.com/c.jpg", "", "t", "c"],
        ],
    )
    path = feed_manifest(tmp_path, "products.csv", on_bad_row="fail")
    feed = tmp_path / "products.csv"

    assert issues_of(path, specs) == [
        f"{feed}:3:1: images: no image: image_url, image_url_2 are empty",
        f"{feed}:4:1: sku: id '../c' has a '.' or '..' segment; ids are part of output keys",
    ]


def test_a_feed_of_bad_rows_fails_with_the_first_twenty_and_a_count(tmp_path, specs):
    write_csv(tmp_path / "products.csv", [[f"s{i}", "", "", "t", "c"] for i in range(25)])
    issues = issues_of(feed_manifest(tmp_path, "products.csv", on_bad_row="fail"), specs)

    assert issues[0] == f"{tmp_path / 'm.yaml'}:5:9: catalog.feed: 25 bad rows (on_bad_row: fail); the first 20 follow"
    assert [issue.split(":")[1] for issue in issues[1:]] == [str(line) for line in range(2, 22)]


def test_what_every_row_shares_is_judged_once_at_the_manifest_lines(tmp_path, specs):
    write_csv(tmp_path / "products.csv", [["a", "https://cdn.example.com/a.jpg", "", "t", "c"]], header=("sku", "image_url", "title", "color"))
    path = feed_manifest(tmp_path, "products.csv", extra="  - id: flatlay\n    text: A flat-lay of the {size} {title}.\n")

    assert issues_of(path, specs) == [
        f"{path}:7:23: catalog.images[1]: no column 'image_url_2' in {tmp_path / 'products.csv'}"
        " (its header has: sku, image_url, title, color)",
        f"{path}:14:11: prompts[1].text: {{size}} is not a catalog var: name its column in catalog.vars (it lists title, color)",
    ]


def test_an_unreadable_feed_is_one_issue_at_the_feed_line(tmp_path, specs):
    path = feed_manifest(tmp_path, "nope.csv")
    assert issues_of(path, specs) == [f"{path}:5:9: catalog.feed: cannot read {tmp_path / 'nope.csv'}: No such file or directory"]
    (tmp_path / "products.txt").write_text("sku\n")
    path = feed_manifest(tmp_path, "products.txt")
    assert issues_of(path, specs) == [f"{path}:5:9: catalog.feed: 'products.txt': a feed is a .csv or a .jsonl file"]


def test_var_columns_follow_the_var_name_rules(tmp_path, specs):
    write_csv(tmp_path / "products.csv", [["a", "https://cdn.example.com/a.jpg", "", "t", "c"]], header=("sku", "image_url", "image_url_2", "quality", "color"))
    path = write_manifest(
        tmp_path,
        """
        catalog: {feed: products.csv, id: sku, images: [image_url], vars: [quality, color]}
        prompts:
          - id: p
            text: A {color} photo.
        """,
    )
    assert issues_of(path, specs) == [f"{path}:4:68: catalog.vars[0]: var name 'quality' is reserved for the run's own quality"]


# --- Folders ---------------------------------------------------------------------------------


def test_a_local_folder_gives_one_image_set_per_matching_folder(tmp_path, specs):
    products = tmp_path / "products"
    make_image(products / "0412" / "side.jpg", "gold")
    make_image(products / "0412" / "front.jpg", "gold")
    make_image(products / "0412" / "notes.png")  # not matched by the pattern
    make_image(products / "0413" / "front.jpg", "silver")
    make_image(products / "0414" / "deeper" / "front.jpg")  # two levels down: not */*.jpg
    make_image(products / "top.jpg")  # not in a folder
    for i in range(17):
        make_image(products / "0415" / f"{i:02d}.jpg")  # more than the model takes
    path = write_manifest(
        tmp_path,
        """
        catalog:
          prefix: products
          pattern: "*/*.jpg"
        prompts:
          - id: p
            text: Product {folder} on linen.
        """,
    )
    manifest = load_manifest(path, specs)
    plan = plan_runs(manifest, specs)

    assert [(s.id, s.images) for s in manifest.image_sets] == [
        ("0412", (str(products / "0412" / "front.jpg"), str(products / "0412" / "side.jpg"))),
        ("0413", (str(products / "0413" / "front.jpg"),)),
    ]
    assert [(r.image_set, r.prompt, r.vars) for r in plan.runs] == [
        ("0412", "Product 0412 on linen.", {"folder": "0412"}),
        ("0413", "Product 0413 on linen.", {"folder": "0413"}),
    ]
    assert plan.skipped_rows == [f"{path}:5:11: catalog.prefix: folder '0415': 17 images; openai/gpt-image-2/edit accepts at most 16"]


def test_a_folder_catalog_offers_only_the_folder_var(tmp_path, specs):
    make_image(tmp_path / "products" / "a" / "1.jpg")
    path = write_manifest(
        tmp_path,
        """
        catalog: {prefix: products, pattern: "*/*.jpg"}
        prompts:
          - id: p
            text: The {title}.
        """,
    )
    assert issues_of(path, specs) == [
        f"{path}:7:11: prompts[0].text: {{title}} is not a var of the catalog's sets: a folder catalog has only {{folder}}"
    ]


def test_patterns_match_within_segments_and_double_star_spans_folders():
    jpg = compile_pattern("*/*.jpg")
    assert jpg("a/b.jpg") and not jpg("a/b/c.jpg") and not jpg("b.jpg") and not jpg("a/b.png")
    deep = compile_pattern("**/*.[jp][pn]g")
    assert deep("a.jpg") and deep("x/y/a.png") and not deep("x/a.gif")


def test_an_s3_prefix_lists_folders_and_needs_no_etag_lookups(tmp_path, specs, settings, bucket, s3):
    for key in ("products/0412/front.jpg", "products/0412/side.jpg", "products/0413/front.jpg", "products/0413/x.txt", "other/0414/front.jpg"):
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    path = write_manifest(
        tmp_path,
        f"""
        catalog:
          prefix: s3://{bucket}/products/
          pattern: "*/*.jpg"
        prompts:
          - id: p
            text: Product {{folder}}.
        """,
    )
    plan = plan_of(path, specs, settings=settings)  # no s3_etag: the listing gave every ETag

    etag = s3.head_object(Bucket=bucket, Key="products/0412/side.jpg")["ETag"].strip('"')
    assert [(r.image_set, [i.uri for i in r.inputs]) for r in plan.runs] == [
        ("0412", [f"s3://{bucket}/products/0412/front.jpg", f"s3://{bucket}/products/0412/side.jpg"]),
        ("0413", [f"s3://{bucket}/products/0413/front.jpg"]),
    ]
    assert plan.runs[0].inputs[1].identity == f"etag:{etag}"


def test_an_s3_feed_is_streamed_from_the_bucket(tmp_path, specs, settings, bucket, s3):
    body = "sku,image_url,image_url_2,title,color\n" + "".join(f"s{i},s3://{bucket}/img/{i}.jpg,,item {i},red\n" for i in range(3))
    s3.put_object(Bucket=bucket, Key="feeds/products.csv", Body=body.encode())
    for i in range(3):
        s3.put_object(Bucket=bucket, Key=f"img/{i}.jpg", Body=f"image {i}".encode())
    path = feed_manifest(tmp_path, f"s3://{bucket}/feeds/products.csv")

    plan = plan_of(path, specs, settings=settings, s3_etag=lambda uri: hashlib.md5(f"image {uri[-5]}".encode()).hexdigest())
    assert [(r.image_set, r.prompt) for r in plan.runs] == [(f"s{i}", f"A portrait wearing the red item {i}.") for i in range(3)]

    assert issues_of(path, specs) == [
        f"{path}:5:9: catalog.feed: reading an s3:// catalog needs the S3 settings (S3_ENDPOINT_URL, AWS_*)"
    ]
    missing = feed_manifest(tmp_path, f"s3://{bucket}/feeds/nope.csv")
    assert issues_of(missing, specs, settings)[0].startswith(f"{missing}:5:9: catalog.feed: cannot read s3://{bucket}/feeds/nope.csv:")


@pytest.fixture
def http_dir(tmp_path) -> Iterator[tuple[Path, str]]:
    """A directory served over http on a free loopback port."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


def test_an_http_feed_is_streamed_and_its_line_numbers_kept(tmp_path, specs, http_dir):
    served, base = http_dir
    rows = [{"sku": f"s{i}", "image_url": f"{base}/img/{i}.jpg", "title": f"item {i}", "color": "red"} for i in range(3)]
    rows[1]["image_url"] = ""
    (served / "products.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    plan = plan_of(feed_manifest(tmp_path, f"{base}/products.jsonl"), specs)

    assert [r.image_set for r in plan.runs] == ["s0", "s2"]
    assert plan.skipped_rows == [f"{base}/products.jsonl:2:1: images: no image: image_url, image_url_2 are empty"]

    path = feed_manifest(tmp_path, f"{base}/missing.jsonl")
    assert issues_of(path, specs) == [f"{path}:5:9: catalog.feed: cannot read {base}/missing.jsonl: HTTP 404"]


def test_without_the_network_sources_a_url_feed_is_one_issue_at_the_feed_line(tmp_path, specs):
    path = feed_manifest(tmp_path, "https://cdn.example.com/products.csv")
    with pytest.raises(ManifestError) as info:
        load_manifest(path, specs)  # the domain's default: local files only
    assert [str(issue) for issue in info.value.issues] == [(
        f"{path}:5:9: catalog.feed: cannot read https://cdn.example.com/products.csv: "
        "only local files are read without the network sources (pipeline.catalog.Sources)"
    )]


# --- Keys: what changed is what gets paid for ------------------------------------------------------


def fifty_rows() -> list[list[str]]:
    return [[f"sku-{i:03d}", f"https://cdn.example.com/{i}.jpg", "", f"item {i}", "gold"] for i in range(50)]


def test_a_fifty_row_feed_keeps_its_keys_and_an_edit_changes_exactly_those_rows(tmp_path, specs):
    rows = fifty_rows()
    feed = write_csv(tmp_path / "products.csv", rows)
    path = feed_manifest(tmp_path, "products.csv")
    first = plan_of(path, specs)
    again = plan_of(path, specs)
    assert len(first.runs) == 50
    assert [r.run_key for r in first.runs] == [r.run_key for r in again.runs]

    rows[7][3] = "item 7, now in rose gold"  # a var the prompt uses
    rows[31][1] = "https://cdn.example.com/31-v2.jpg"  # a new image
    write_csv(feed, rows)
    edited = plan_of(path, specs)

    changed = {a.image_set for a, b in zip(first.runs, edited.runs, strict=True) if a.run_key != b.run_key}
    assert changed == {"sku-007", "sku-031"}
