"""Manifest validation: every mistake is reported at once, each at the line that made it."""

from __future__ import annotations

import json
import re
import shutil
import time
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import make_image
from conftest import write_yaml as write
from pipeline.cli import main
from pipeline.errors import ManifestError
from pipeline.manifest import (
    DEFAULT_OUTPUT_KEY,
    ManifestDoc,
    load_manifest,
    manifest_json_schema,
    parse_manifest,
    unsafe_key,
)

FIXTURES = Path(__file__).resolve().parent / "data" / "manifests"


def issues_of(path: Path, specs) -> list[str]:
    with pytest.raises(ManifestError) as info:
        load_manifest(path, specs)
    return [str(issue) for issue in info.value.issues]


def prefixes(path: Path, specs) -> list[str]:
    """Each issue cut to ``file:line:col: field:``, the part a person navigates by."""
    return [s.split(": ", 2)[0] + ": " + s.split(": ", 2)[1] + ":" for s in issues_of(path, specs)]


BASE = """
version: 1
name: test
output: out
image_sets:
  - id: a
    images: [https://cdn.example.com/a.jpg]
    vars: {product: ring}
prompts:
  - id: p
    text: A photo of the {product}.
"""


def test_documented_example_validates(tmp_path, specs):
    path = tmp_path / "example.yaml"
    shutil.copy(FIXTURES / "example.yaml", path)
    make_image(tmp_path / "products/0412/front.jpg")

    manifest = load_manifest(path, specs)

    assert manifest.name == "spring-earrings"
    assert manifest.output == "s3://catalog-media/edits/spring"
    assert manifest.budget_usd == Decimal("25.00")
    assert [s.id for s in manifest.image_sets] == ["earring-0412", "earring-0413"]
    assert [p.id for p in manifest.prompts] == ["editorial", "flatlay"]
    assert manifest.matrix == {"aspect_ratio": ("2:3", "3:2")}
    assert [(r.image_set, r.prompt, r.options) for r in manifest.runs] == [
        ("earring-0412", "flatlay", {"quality": "high"})
    ]
    assert manifest.source_text == path.read_text()
    assert manifest.path == path


def test_every_mistake_is_reported_at_its_own_line(tmp_path, specs):
    path = tmp_path / "mistakes.yaml"
    shutil.copy(FIXTURES / "mistakes.yaml", path)
    f = str(path)

    assert prefixes(path, specs) == [
        f"{f}:2:7: name:",  # not a plain label
        f"{f}:4:13: budget_usd:",  # not positive
        f"{f}:6:17: defaults.aspect_ratio:",  # not a ratio the model accepts
        f"{f}:7:3: defaults.qualty:",  # unknown option, located at its key
        f"{f}:12:9: image_sets[1].id:",  # duplicate id
        f"{f}:13:14: image_sets[1].images[0]:",  # no such file
        f"{f}:17:11: prompts[0].text:",  # {color} is nobody's var
        f"{f}:18:15: prompts[0].variants:",  # below 1
        f"{f}:19:1: colour:",  # unknown top-level key
    ]


def test_issue_messages_say_what_to_fix(tmp_path, specs):
    path = tmp_path / "mistakes.yaml"
    shutil.copy(FIXTURES / "mistakes.yaml", path)
    text = "\n".join(issues_of(path, specs))

    assert "did you mean 'quality'?" in text
    assert "duplicate image set id 'ring' (first at line 9)" in text
    assert "{color} is not a var of image set 'ring'" in text
    assert "'2:5' is not an allowed aspect_ratio" in text


def test_unknown_var_names_the_image_set_that_lacks_it(tmp_path, specs):
    path = write(
        tmp_path,
        """
        version: 1
        name: test
        output: out
        image_sets:
          - id: a
            images: [https://cdn.example.com/a.jpg]
            vars: {product: ring, color: gold}
          - id: b
            images: [https://cdn.example.com/b.jpg]
            vars: {product: hoop}
        prompts:
          - id: p
            text: A photo of the {color} {product}.
        """,
    )
    assert issues_of(path, specs) == [f"{path}:13:11: prompts[0].text: {{color}} is not a var of image set 'b'"]


def test_vars_are_only_required_of_the_image_sets_a_prompt_runs_with(tmp_path, specs):
    path = write(
        tmp_path,
        """
        version: 1
        name: test
        output: out
        image_sets:
          - id: a
            images: [https://cdn.example.com/a.jpg]
            vars: {product: ring, color: gold}
          - id: b
            images: [https://cdn.example.com/b.jpg]
        prompts:
          - id: p
            text: A photo of the {color} {product}.
        runs:
          - {image_set: a, prompt: p}
        """,
    )
    assert len(load_manifest(path, specs).runs) == 1


def test_bad_aspect_ratio_is_caught_wherever_options_appear(tmp_path, specs):
    path = write(
        tmp_path,
        """
        version: 1
        name: test
        output: out
        defaults: {aspect_ratio: "7:1"}
        image_sets:
          - id: a
            images: [https://cdn.example.com/a.jpg]
        prompts:
          - id: p
            text: A photo.
            aspect_ratio: "8:1"
        matrix:
          aspect_ratio: ["1:1", "9:1"]
        runs:
          - {image_set: a, prompt: p, aspect_ratio: "6:1"}
        """,
    )
    assert prefixes(path, specs) == [
        f"{path}:4:26: defaults.aspect_ratio:",
        f"{path}:11:19: prompts[0].aspect_ratio:",
        f"{path}:13:25: matrix.aspect_ratio[1]:",
        f"{path}:15:45: runs[0].aspect_ratio:",
    ]


def test_unquoted_ratio_is_read_as_written_not_as_a_sexagesimal_number(tmp_path, specs):
    path = write(tmp_path, BASE + "defaults: {aspect_ratio: 2:3}\n")
    assert load_manifest(path, specs).defaults.options == {"aspect_ratio": "2:3"}


def test_seventeen_images_are_one_too_many(tmp_path, specs):
    for i in range(17):
        make_image(tmp_path / f"img/{i}.png")
    images = "\n".join(f"      - img/{i}.png" for i in range(17))
    path = write(
        tmp_path,
        f"""
version: 1
name: test
output: out
image_sets:
  - id: a
    images:
{images}
prompts:
  - id: p
    text: A photo.
""",
    )
    assert issues_of(path, specs) == [
        f"{path}:7:7: image_sets[0].images: 17 images; openai/gpt-image-2/edit accepts at most 16"
    ]


def test_image_references_must_be_files_s3_or_http(tmp_path, specs):
    make_image(tmp_path / "here.png")
    path = write(
        tmp_path,
        """
        version: 1
        name: test
        output: out
        image_sets:
          - id: a
            images: [here.png, s3://bucket/key.png, http://cdn.example.com/a.jpg, s3://bucket-only, ftp://x/y.png, gone.png]
        prompts:
          - id: p
            text: A photo.
        """,
    )
    assert prefixes(path, specs) == [
        f"{path}:6:75: image_sets[0].images[3]:",
        f"{path}:6:93: image_sets[0].images[4]:",
        f"{path}:6:108: image_sets[0].images[5]:",
    ]


def test_empty_images_list_is_rejected(tmp_path, specs):
    path = write(tmp_path, BASE.replace("[https://cdn.example.com/a.jpg]", "[]"))
    assert prefixes(path, specs) == [f"{path}:6:13: image_sets[0].images:"]


def test_duplicate_ids(tmp_path, specs):
    path = write(
        tmp_path,
        BASE
        + """
  - id: p
    text: Another photo.
""",
    )
    assert issues_of(path, specs) == [f"{path}:12:9: prompts[1].id: duplicate prompt id 'p' (first at line 9)"]


def test_duplicate_yaml_keys_are_reported(tmp_path, specs):
    path = write(tmp_path, BASE + "name: again\n")
    assert prefixes(path, specs) == [f"{path}:11:1: name:"]


def test_output_key_that_climbs_out_of_the_root_is_rejected(tmp_path, specs):
    path = write(tmp_path, BASE + 'output_key: "../{image_set}/{prompt}/{variant}"\n')
    issues = issues_of(path, specs)
    assert len(issues) == 1
    assert issues[0].startswith(f"{path}:11:13: output_key: '../{{image_set}}/{{prompt}}/{{variant}}' ")
    assert "'.' or '..' segment" in issues[0]


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("a\\b", "contains a backslash"),
        ("/etc/a", "is absolute"),
        ("a\tb", "contains a control character"),
        ("a/b\n", "contains a control character"),
        ("", "has an empty segment"),
        ("a//b", "has an empty segment"),
        ("a/b/", "has an empty segment"),
        (".", "has a '.' or '..' segment"),
        ("a/./b", "has a '.' or '..' segment"),
        ("a/..", "has a '.' or '..' segment"),
        ("a/b", None),
        ("a/.b/..c/c..", None),
        ("ring/p/1:1/1", None),
    ],
)
def test_every_unsafe_output_key_is_named_with_its_reason(key, reason):
    assert unsafe_key(key) == reason


def test_a_var_can_make_an_output_key_unsafe(tmp_path, specs):
    path = write(tmp_path, BASE.replace("product: ring", "product: /etc") + 'output_key: "{product}/{variant}"\n')
    assert prefixes(path, specs) == [f"{path}:11:13: output_key:"]


def test_two_runs_writing_the_same_output_key_are_both_named(tmp_path, specs):
    path = write(
        tmp_path,
        BASE
        + """
matrix:
  quality: [low, high]
""",
    )
    [issue] = issues_of(path, specs)
    assert issue.startswith(f"{path}:1:1: output_key: 'a/p/1:1/1' is the output of two runs:")
    assert "quality=low" in issue and "quality=high" in issue


def test_output_key_names_must_be_known(tmp_path, specs):
    path = write(tmp_path, BASE + 'output_key: "{image_set}/{sku}/{quality}/{product}"\n')
    [issue] = issues_of(path, specs)
    assert issue.startswith(f"{path}:11:13: output_key: unknown name {{sku}}")


def test_prompt_template_must_be_well_formed(tmp_path, specs):
    path = write(tmp_path, BASE.replace("A photo of the {product}.", "A photo {product.name} }"))
    assert prefixes(path, specs) == [f"{path}:10:11: prompts[0].text:"]


def test_budget_is_the_exact_decimal_written(tmp_path, specs):
    path = write(tmp_path, BASE + "budget_usd: 25.10\n")
    budget = load_manifest(path, specs).budget_usd
    assert budget == Decimal("25.10")
    assert str(budget) == "25.10"


@pytest.mark.parametrize("budget", ["0", "-1", "abc", "[1]", "true"])
def test_budget_must_be_a_positive_amount(tmp_path, specs, budget):
    path = write(tmp_path, BASE + f"budget_usd: {budget}\n")
    assert prefixes(path, specs) == [f"{path}:11:13: budget_usd:"]


def test_missing_required_fields_point_at_the_enclosing_mapping(tmp_path, specs):
    path = write(
        tmp_path,
        """
        image_sets:
          - images: [https://cdn.example.com/a.jpg]
        """,
    )
    assert prefixes(path, specs) == [
        f"{path}:1:1: version:",
        f"{path}:1:1: name:",
        f"{path}:1:1: output:",
        f"{path}:1:1: prompts:",
        f"{path}:2:5: image_sets[0].id:",
    ]


def test_wrong_types_are_reported(tmp_path, specs):
    path = write(
        tmp_path,
        """
        version: "1"
        name: test
        output: out
        priority: high
        image_sets: {id: a}
        prompts:
          - id: p
            text: [not, text]
            variants: 1.5
        """,
    )
    assert issues_of(path, specs) == [
        f"{path}:1:10: version: must be a whole number",
        f"{path}:4:11: priority: must be a whole number",
        f"{path}:5:13: image_sets: must be a list",
        f"{path}:8:11: prompts[0].text: must be text",
        f"{path}:9:15: prompts[0].variants: must be a whole number",
    ]


def test_only_version_1_is_read(tmp_path, specs):
    path = write(tmp_path, BASE.replace("version: 1", "version: 2"))
    assert prefixes(path, specs) == [f"{path}:1:10: version:"]


def test_yaml_syntax_error_is_located(tmp_path, specs):
    path = write(tmp_path, BASE + "matrix: [unclosed\n")
    [issue] = issues_of(path, specs)
    assert issue.startswith(f"{path}:12:1: yaml: invalid YAML:")


def test_runs_must_name_existing_image_sets_and_prompts(tmp_path, specs):
    path = write(
        tmp_path,
        BASE
        + """
runs:
  - {image_set: a, prompt: p}
  - {image_set: zz, prompt: p}
  - image_set: a
    prompt: qq
""",
    )
    assert prefixes(path, specs) == [
        f"{path}:14:17: runs[1].image_set:",
        f"{path}:16:13: runs[2].prompt:",
    ]


def test_unknown_model(tmp_path, specs):
    path = write(tmp_path, BASE + "defaults: {model: acme/edit}\n")
    assert issues_of(path, specs) == [
        f"{path}:11:19: defaults.model: unknown model 'acme/edit' (known: openai/gpt-image-2/edit)"
    ]


def test_matrix_keys_must_be_request_options(tmp_path, specs):
    path = write(tmp_path, BASE + "matrix:\n  seed: [\"1\", \"2\"]\n  quality: []\n")
    assert prefixes(path, specs) == [f"{path}:12:3: matrix.seed:", f"{path}:13:12: matrix.quality:"]


def test_reserved_var_names_are_rejected(tmp_path, specs):
    path = write(tmp_path, BASE.replace("vars: {product: ring}", "vars: {product: ring, quality: fine}"))
    assert prefixes(path, specs) == [f"{path}:7:27: image_sets[0].vars.quality:"]


def test_a_catalog_feed_that_cannot_be_read_is_reported_at_its_line(tmp_path, specs):
    path = write(
        tmp_path,
        """
        version: 1
        name: test
        output: out
        catalog:
          feed: products.csv
          id: sku
          images: [image_url]
        prompts:
          - id: p
            text: A photo.
        """,
    )
    (issue,) = issues_of(path, specs)
    assert issue.startswith(f"{path}:5:9: catalog.feed: cannot read ") and "products.csv" in issue


def test_catalog_of_neither_shape_is_a_structure_error(tmp_path, specs):
    path = write(tmp_path, BASE + "catalog: {feed: products.csv, prefix: s3://b/p/}\n")
    assert prefixes(path, specs) == [f"{path}:11:10: catalog:"]


def test_local_output_resolves_against_the_manifest_directory(tmp_path, specs):
    manifest = load_manifest(write(tmp_path, BASE), specs)
    assert manifest.output == str(tmp_path / "out")
    assert manifest.output_key == DEFAULT_OUTPUT_KEY
    assert manifest.priority == 0


def test_output_must_be_s3_or_local(tmp_path, specs):
    path = write(tmp_path, BASE.replace("output: out", "output: gs://bucket/x"))
    assert prefixes(path, specs) == [f"{path}:3:9: output:"]


def test_parse_manifest_reads_text_not_on_disk(tmp_path, specs):
    make_image(tmp_path / "a.png")
    text = BASE.lstrip("\n").replace("https://cdn.example.com/a.jpg", "a.png")
    manifest = parse_manifest(text, "s3://bucket/m.yaml", tmp_path, specs)
    assert manifest.path is None and manifest.source_text == text
    with pytest.raises(ManifestError) as info:
        parse_manifest(text.replace("version: 1", "version: 3"), "s3://bucket/m.yaml", tmp_path, specs)
    assert str(info.value).startswith("s3://bucket/m.yaml:1:10: version:")


def test_unreadable_file_is_a_manifest_error(tmp_path, specs):
    with pytest.raises(ManifestError, match="cannot read"):
        load_manifest(tmp_path / "nope.yaml", specs)


def test_json_schema_describes_every_top_level_key(specs):
    schema = manifest_json_schema(specs)
    json.dumps(schema)
    assert schema["type"] == "object"
    assert set(schema["properties"]) == set(ManifestDoc.model_fields)
    for key in ("version", "name", "output", "budget_usd", "priority", "defaults", "image_sets",
                "catalog", "prompts", "matrix", "runs", "output_key"):
        assert key in schema["properties"]
    assert set(schema["required"]) == {"version", "name", "output", "prompts"}
    assert schema["additionalProperties"] is False
    prompt = schema["$defs"]["Prompt"]
    assert "2:3" in prompt["properties"]["aspect_ratio"]["enum"]
    assert prompt["additionalProperties"] is False
    assert schema["properties"]["matrix"]["properties"]["quality"]["items"]["enum"] == ["low", "medium", "high"]


def test_json_schema_without_specs_still_describes_the_structure():
    schema = manifest_json_schema()
    assert "image_sets" in schema["properties"]
    assert schema["$defs"]["Prompt"]["additionalProperties"] == {"type": "string"}


# ---- the size of a plan, counted before it is built ------------------------------------------

# 1 set × 1 prompt × a 15 × 3 × 3 × 3 matrix × 10,000 variants: 4,050,000 runs at $0.10.
HUGE = BASE + """defaults:
  variants: 10000
matrix:
  aspect_ratio: ["1:1", "2:3", "3:2", "1:2", "2:1", "1:3", "3:1", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "9:21", "21:9"]
  resolution: [1k, 2k, 4k]
  quality: [low, medium, high]
  output_format: [png, jpeg, webp]
output_key: "{image_set}/{prompt}/{aspect_ratio}/{resolution}/{quality}/{output_format}/{variant}"
"""


def editpipe(*args: str, env: dict[str, str] | None = None):
    """The CLI in this process, as a user runs it (exit code, stdout, stderr)."""
    return CliRunner().invoke(main, list(args), env={"EDITPIPE_MAX_RUNS": "", **(env or {})})


def test_a_manifest_over_the_cap_is_refused_by_arithmetic_at_its_largest_dimension(tmp_path, specs):
    path = write(tmp_path, HUGE)

    for command in ("validate", "plan"):
        result = editpipe(command, str(path))
        assert result.exit_code == 2, result.output
        (line, summary) = result.stderr.strip().splitlines()
        # defaults.variants (10,000) multiplies most: the issue is at its line.
        assert line.startswith(f"{path}:12:13: defaults.variants: 4,050,000 runs (estimated $405,000.00) are more "
                               "than the 1,000,000 a job may have (the default cap): ")
        assert "1 image sets × 1 prompts" not in line  # a dimension of 1 multiplies nothing
        assert "15 aspect_ratio values × 3 resolution values × 3 quality values × 3 output_format values" in line
        assert line.endswith("raise the cap: max_runs: 4050000 at the manifest's top level, "
                             "or EDITPIPE_MAX_RUNS=4050000")
        assert summary == "1 error(s); nothing was submitted."
        assert "Traceback" not in result.stderr


def test_the_cap_is_raised_in_the_manifest_or_the_environment(tmp_path, specs):
    path = write(tmp_path, HUGE.replace("variants: 10000", "variants: 10"))  # 4,050 runs
    assert editpipe("validate", str(path)).exit_code == 0

    result = editpipe("validate", str(path), env={"EDITPIPE_MAX_RUNS": "4049"})
    assert result.exit_code == 2
    # Now the matrix's 15 aspect ratios multiply most.
    assert f"{path}:14:17: matrix.aspect_ratio: 4,050 runs (estimated $405.00) are more than the 4,049 a job may " \
           "have (EDITPIPE_MAX_RUNS): " in result.stderr
    assert editpipe("validate", str(path), env={"EDITPIPE_MAX_RUNS": "4050"}).exit_code == 0

    own = write(tmp_path, "max_runs: 4050\n" + path.read_text(), name="own.yaml")
    result = editpipe("validate", str(own), env={"EDITPIPE_MAX_RUNS": "4049"})
    assert result.exit_code == 0, result.stderr
    assert "ok, 4050 runs" in result.stdout
    # The manifest's own cap comes first, lower than the environment's too.
    lowered = write(tmp_path, "max_runs: 100\n" + BASE.lstrip("\n") + "defaults: {variants: 101}\n", name="low.yaml")
    result = editpipe("validate", str(lowered), env={"EDITPIPE_MAX_RUNS": "1000"})
    assert result.exit_code == 2
    assert "101 runs (estimated $10.10) are more than the 100 a job may have (max_runs, line 1)" in result.stderr


def test_max_runs_must_be_a_positive_whole_number(tmp_path, specs):
    path = write(tmp_path, BASE + "max_runs: 0\n")
    assert prefixes(path, specs) == [f"{path}:11:11: max_runs:"]
    result = editpipe("validate", str(write(tmp_path, BASE, name="ok.yaml")), env={"EDITPIPE_MAX_RUNS": "lots"})
    assert result.exit_code == 2 and "EDITPIPE_MAX_RUNS must be a whole number" in result.stderr


def test_plan_prints_the_count_and_cost_before_the_runs(tmp_path, specs):
    path = write(tmp_path, HUGE.replace("variants: 10000", "variants: 2"))
    result = editpipe("plan", str(path), "--limit", "1")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(f"{path}: 810 runs, estimated $81.00 if all are new")


# ---- inputs checked before anything is paid ------------------------------------------------


def test_a_text_file_named_jpg_is_refused_at_validate_on_its_line(tmp_path, specs):
    (tmp_path / "front.jpg").write_text("not an image at all\n")
    make_image(tmp_path / "back.png")
    path = write(tmp_path, BASE.replace("[https://cdn.example.com/a.jpg]", "[back.png, front.jpg]"))

    result = editpipe("validate", str(path))

    assert result.exit_code == 2
    assert result.stderr.splitlines()[0] == (
        f"{path}:6:24: image_sets[0].images[1]: 'front.jpg' is not an image "
        "(JPG, PNG, WebP, GIF, BMP, TIFF are accepted)"
    )


def test_an_image_format_the_provider_does_not_take_or_too_large_is_refused(tmp_path, specs):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "a.ico")
    with (tmp_path / "big.png").open("wb") as f:
        f.truncate(21 * 1024 * 1024)
    path = write(tmp_path, BASE.replace("[https://cdn.example.com/a.jpg]", "[a.ico, big.png]"))
    assert issues_of(path, specs) == [
        f"{path}:6:14: image_sets[0].images[0]: 'a.ico' is a ICO image; the provider accepts JPG, PNG, WebP, GIF, BMP, TIFF",
        f"{path}:6:21: image_sets[0].images[1]: 'big.png' is 21.0 MB; the provider accepts images up to 20 MB",
    ]


FEED_MANIFEST = """
version: 1
name: feed
output: out
catalog:
  feed: products.csv
  id: sku
  images: [image]
  on_bad_row: fail
prompts:
  - id: p
    text: A photo.
"""


def test_a_feed_row_naming_a_local_file_that_is_not_an_image_is_refused_at_the_feeds_line(tmp_path, specs):
    make_image(tmp_path / "ok.png")
    (tmp_path / "notes.png").write_bytes(b"%PDF-1.4 not a png")
    (tmp_path / "products.csv").write_text("sku,image\na,ok.png\nb,https://cdn.example.com/b.jpg\nc,notes.png\n")
    path = write(tmp_path, FEED_MANIFEST)

    result = editpipe("validate", str(path))

    assert result.exit_code == 2
    feed = tmp_path / "products.csv"
    assert result.stderr.splitlines()[0] == (
        f"{feed}:4:1: image: 'notes.png' is not an image (JPG, PNG, WebP, GIF, BMP, TIFF are accepted)"
    )


def test_a_byte_that_is_not_utf8_is_reported_at_its_line_and_column(tmp_path, specs):
    text = write(tmp_path, BASE).read_bytes()
    lines = text.splitlines(keepends=True)
    assert lines[8] == b"  - id: p\n"
    lines[8] = b"  - id: \xc3\xa9\xff\n"  # an é, then a byte no UTF-8 text has
    path = tmp_path / "latin.yaml"
    path.write_bytes(b"".join(lines))

    result = editpipe("validate", str(path))

    assert result.exit_code == 2
    assert result.stderr.splitlines()[0] == f"{path}:9:10: manifest: byte 0xff is not UTF-8; a manifest is UTF-8 text"


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_a_feed_byte_that_is_not_utf8_is_reported_at_its_line_and_column(tmp_path, specs, newline):
    rows = ["sku,image", "a,https://cdn.example.com/a.jpg", "caf\u00e9,https://cdn.example.com/b.jpg"]
    feed = tmp_path / "products.csv"
    feed.write_bytes(newline.join(rows).encode() + newline.encode() + b"d,https://cdn.example.com/\xe9.jpg" + newline.encode())
    path = write(tmp_path, FEED_MANIFEST)

    assert issues_of(path, specs) == [f"{feed}:4:27: feed: byte 0xe9 is not UTF-8; a feed is UTF-8 text"]


def test_an_alias_bomb_is_refused_at_its_anchor_without_expanding_it(tmp_path, specs):
    levels = "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 10))
    path = write(tmp_path, "l0: &l0 [lol, lol]\n" + levels + BASE.lstrip("\n") + "matrix: {aspect_ratio: *l9}\n")
    started = time.perf_counter()
    (issue,) = issues_of(path, specs)  # 2 × 10 ** 9 strings, were it expanded
    assert time.perf_counter() - started < 2
    assert re.match(rf"{re.escape(str(path))}:\d+:\d+: manifest: aliases repeat more than 100,000 nodes", issue)


def test_a_control_character_is_reported_at_its_line_and_column(tmp_path, specs):
    path = write(tmp_path, BASE.replace("A photo of", "A \x07photo of"))
    assert issues_of(path, specs) == [
        f"{path}:10:13: yaml: invalid YAML: character #x0007: control characters are not allowed"
    ]


def test_an_issue_at_line_100_is_printed_as_written_not_as_an_emoji(tmp_path, specs):
    path = write(tmp_path, BASE + "#\n" * 89 + "nmae: x\n")
    result = editpipe("validate", str(path))
    assert result.stderr.splitlines()[0] == f"{path}:100:1: nmae: unknown key 'nmae' (did you mean 'name'?)"
