"""Manifest validation: every mistake is reported at once, each at the line that made it."""

from __future__ import annotations

import json
import shutil
from decimal import Decimal
from pathlib import Path

import pytest

from conftest import make_image
from conftest import write_yaml as write
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
