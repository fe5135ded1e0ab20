"""Planning: which runs a manifest asks for, in what order, and the keys that identify them."""

from __future__ import annotations

import gc
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import pytest

from conftest import ROOT, make_image
from conftest import write_yaml as write
from pipeline.errors import ManifestError
from pipeline.manifest import DEFAULT_OUTPUT_KEY, load_manifest, unsafe_key
from pipeline.manifest.checks.keys import distinct_by_shape
from pipeline.modelspec import DEFAULT_MODEL, PriceRule
from pipeline.modelspec import PACKAGED_MODELS as CONFIGS
from pipeline.plan import InputRef, Plan, Run, count_runs, pair_runs, plan_runs, render_output_keys, run_key
from pipeline.size import size_of

FIXTURES = Path(__file__).resolve().parent / "data" / "manifests"


THREE_BY_TWO = """
version: 1
name: earrings
output: out
image_sets:
  - id: gold
    images: [gold.png]
    vars: {product: gold earrings}
  - id: silver
    images: [silver.png, https://cdn.example.com/silver-2.jpg]
    vars: {product: silver earrings}
  - id: pearl
    images: [https://cdn.example.com/pearl.jpg]
    vars: {product: pearl earrings}
prompts:
  - id: editorial
    text: An editorial portrait wearing the {product}.
  - id: flatlay
    text: A flat-lay of the {product}.
matrix:
  aspect_ratio: ["2:3", "3:2"]
"""


def three_by_two(directory: Path, text: str = THREE_BY_TWO) -> Path:
    make_image(directory / "gold.png", "gold")
    make_image(directory / "silver.png", "silver")
    return write(directory, text)


def plan_of(path: Path, specs, **kwargs) -> Plan:
    return plan_runs(load_manifest(path, specs), specs, **kwargs)


def test_every_set_meets_every_prompt_and_matrix_value_in_manifest_order(tmp_path, specs):
    plan = plan_of(three_by_two(tmp_path), specs)

    assert plan.manifest_name == "earrings"
    assert [(r.image_set, r.prompt_id, r.options["aspect_ratio"]) for r in plan.runs] == [
        (s, p, a) for s in ("gold", "silver", "pearl") for p in ("editorial", "flatlay") for a in ("2:3", "3:2")
    ]
    assert [r.index for r in plan.runs] == list(range(12))
    assert len({r.run_key for r in plan.runs}) == 12
    assert len({r.output_key for r in plan.runs}) == 12
    assert plan.runs[0].output_key == "gold/editorial/2:3/1.png"
    assert plan.runs[0].prompt == "An editorial portrait wearing the gold earrings."
    assert all(len(r.run_key) == 64 and int(r.run_key, 16) >= 0 for r in plan.runs)


def test_inputs_are_identified_by_content_etag_or_url(tmp_path, specs):
    path = three_by_two(tmp_path, THREE_BY_TWO.replace("[gold.png]", "[gold.png, s3://media/gold-2.png]"))
    plan = plan_of(path, specs, s3_etag=lambda uri: '"9b2cf535f27731c974343645a3985328"')

    gold = plan.runs[0].inputs
    assert gold == (
        InputRef(str(tmp_path / "gold.png"), "local", "sha256:" + hashlib.sha256((tmp_path / "gold.png").read_bytes()).hexdigest()),
        InputRef("s3://media/gold-2.png", "s3", "etag:9b2cf535f27731c974343645a3985328"),
    )
    pearl = plan.runs[-1].inputs
    assert pearl == (InputRef("https://cdn.example.com/pearl.jpg", "https", "https://cdn.example.com/pearl.jpg"),)


def test_an_s3_input_needs_an_etag_lookup(tmp_path, specs):
    path = three_by_two(tmp_path, THREE_BY_TWO.replace("[gold.png]", "[s3://media/gold.png]"))
    with pytest.raises(ValueError, match="s3_etag"):
        plan_of(path, specs)


def test_planning_leaves_the_garbage_collector_as_it_found_it(tmp_path, specs):
    path = three_by_two(tmp_path)
    assert gc.isenabled()
    assert len(plan_of(path, specs).runs) == 12
    assert gc.isenabled()
    gc.disable()  # a caller that turned it off itself keeps it off
    try:
        assert len(plan_of(path, specs).runs) == 12
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_planning_twice_gives_the_same_runs(tmp_path, specs):
    path = three_by_two(tmp_path)
    assert plan_of(path, specs) == plan_of(path, specs)


def test_keys_are_the_same_in_another_process(tmp_path, specs):
    path = three_by_two(tmp_path)
    script = (
        "import sys, json; from pathlib import Path;"
        "from pipeline.manifest import load_manifest; from pipeline.plan import plan_runs;"
        "from pipeline.modelspec import load_model_specs;"
        "s = load_model_specs(Path(sys.argv[2]));"
        "print(json.dumps([r.run_key for r in plan_runs(load_manifest(Path(sys.argv[1]), s), s).runs]))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", script, str(path), str(CONFIGS)], env=env, check=True, capture_output=True, text=True
    ).stdout
    assert json.loads(out) == [r.run_key for r in plan_of(path, specs).runs]


def test_run_key_is_the_sha256_of_the_documented_canonical_request(tmp_path, specs):
    run = plan_of(three_by_two(tmp_path), specs).runs[2]
    assert run.run_key == run_key(run.model, run.options, run.prompt, run.inputs, run.variant)


def test_keys_do_not_depend_on_output_name_or_position(tmp_path, specs):
    first = plan_of(three_by_two(tmp_path / "a"), specs)
    moved = THREE_BY_TWO.replace("name: earrings", "name: other").replace("output: out", "output: s3://b/elsewhere")
    # Reversing the prompts reorders the plan; each request keeps its key.
    reordered = moved.replace(
        "  - id: editorial\n    text: An editorial portrait wearing the {product}.\n"
        "  - id: flatlay\n    text: A flat-lay of the {product}.\n",
        "  - id: flatlay\n    text: A flat-lay of the {product}.\n"
        "  - id: editorial\n    text: An editorial portrait wearing the {product}.\n",
    )
    assert reordered != moved
    second = plan_of(three_by_two(tmp_path / "b", reordered + 'output_key: "x/{prompt}/{image_set}/{aspect_ratio}/{variant}"\n'), specs)

    def by_request(plan):
        return {(r.image_set, r.prompt_id, r.options["aspect_ratio"]): r.run_key for r in plan.runs}

    assert [r.index for r in second.runs] == list(range(12))
    assert by_request(first) == by_request(second)


def test_changing_one_prompt_changes_exactly_its_runs_keys(tmp_path, specs):
    before = plan_of(three_by_two(tmp_path / "a"), specs)
    after = plan_of(three_by_two(tmp_path / "b", THREE_BY_TWO.replace("A flat-lay", "A top-down flat-lay")), specs)

    changed = {a.index for a, b in zip(before.runs, after.runs, strict=True) if a.run_key != b.run_key}
    assert changed == {r.index for r in before.runs if r.prompt_id == "flatlay"}


def test_local_file_content_changes_the_key(tmp_path, specs):
    path = three_by_two(tmp_path)
    before = plan_of(path, specs)
    make_image(tmp_path / "gold.png", "black")
    after = plan_of(path, specs)

    changed = {a.index for a, b in zip(before.runs, after.runs, strict=True) if a.run_key != b.run_key}
    assert changed == {r.index for r in before.runs if r.image_set == "gold"}


def test_variants_are_distinct_runs(tmp_path, specs):
    path = three_by_two(tmp_path, THREE_BY_TWO + "defaults: {variants: 3}\n")
    plan = plan_of(path, specs)

    assert len(plan.runs) == 36
    assert [r.variant for r in plan.runs[:3]] == [1, 2, 3]
    assert len({r.run_key for r in plan.runs}) == 36
    assert [r.output_key for r in plan.runs[:3]] == [f"gold/editorial/2:3/{v}.png" for v in (1, 2, 3)]


def test_option_precedence_is_run_then_prompt_then_matrix_then_defaults_then_spec(tmp_path, specs):
    path = write(
        tmp_path,
        """
        version: 1
        name: precedence
        output: out
        defaults: {aspect_ratio: "4:5", resolution: 2k, quality: low}
        image_sets:
          - id: a
            images: [https://cdn.example.com/a.jpg]
        prompts:
          - id: p
            text: A photo.
            quality: high
            variants: 2
        matrix:
          aspect_ratio: ["1:1", "16:9"]
          quality: [low, medium]
          resolution: [4k]
        runs:
          - {image_set: a, prompt: p}
          - {image_set: a, prompt: p, resolution: 1k, output_format: webp, variants: 1}
        output_key: "{resolution}/{aspect_ratio}/{quality}/{variant}"
        """,
    )
    plan = plan_of(path, specs)

    assert [(r.output_key, r.options) for r in plan.runs] == [
        # matrix beats defaults; the prompt's quality pins that axis; png is the spec default
        ("4k/1:1/high/1.png", {"aspect_ratio": "1:1", "resolution": "4k", "quality": "high", "output_format": "png"}),
        ("4k/1:1/high/2.png", {"aspect_ratio": "1:1", "resolution": "4k", "quality": "high", "output_format": "png"}),
        ("4k/16:9/high/1.png", {"aspect_ratio": "16:9", "resolution": "4k", "quality": "high", "output_format": "png"}),
        ("4k/16:9/high/2.png", {"aspect_ratio": "16:9", "resolution": "4k", "quality": "high", "output_format": "png"}),
        # the run beats the matrix and the prompt, jpeg/webp get their own extension
        ("1k/1:1/high/1.webp", {"aspect_ratio": "1:1", "resolution": "1k", "quality": "high", "output_format": "webp"}),
        ("1k/16:9/high/1.webp", {"aspect_ratio": "16:9", "resolution": "1k", "quality": "high", "output_format": "webp"}),
    ]


def test_model_spec_defaults_fill_every_option(tmp_path, specs):
    plan = plan_of(three_by_two(tmp_path, THREE_BY_TWO.split("matrix:")[0]), specs)
    assert plan.runs[0].options == {"aspect_ratio": "1:1", "resolution": "1k", "quality": "medium", "output_format": "png"}
    assert plan.runs[0].model == "openai/gpt-image-2/edit"


def test_runs_mode_plans_exactly_the_listed_pairs(tmp_path, specs):
    path = three_by_two(
        tmp_path,
        THREE_BY_TWO
        + """
runs:
  - {image_set: pearl, prompt: flatlay, quality: high}
  - {image_set: gold, prompt: editorial, aspect_ratio: "1:1", variants: 2}
""",
    )
    plan = plan_of(path, specs)

    assert [(r.image_set, r.prompt_id, r.options["aspect_ratio"], r.options["quality"], r.variant) for r in plan.runs] == [
        ("pearl", "flatlay", "2:3", "high", 1),
        ("pearl", "flatlay", "3:2", "high", 1),
        ("gold", "editorial", "1:1", "medium", 1),
        ("gold", "editorial", "1:1", "medium", 2),
    ]


def test_documented_example_plans_one_run(tmp_path, specs):
    path = tmp_path / "example.yaml"
    shutil.copy(FIXTURES / "example.yaml", path)
    make_image(tmp_path / "products/0412/front.jpg")
    plan = plan_of(path, specs, s3_etag=lambda uri: "abc")

    [run] = plan.runs
    assert (run.image_set, run.prompt_id, run.output_key) == ("earring-0412", "flatlay", "earring-0412/flatlay/1:1/1.png")
    assert run.options == {"aspect_ratio": "1:1", "resolution": "1k", "quality": "high", "output_format": "png"}
    assert run.prompt == "A minimal flat-lay of the gold pearl drop earrings on warm beige linen."
    assert run.vars == {"product": "gold pearl drop earrings"}


def test_run_round_trips_through_json(tmp_path, specs):
    for run in plan_of(three_by_two(tmp_path), specs).runs:
        assert Run.from_dict(json.loads(json.dumps(run.to_dict()))) == run


def test_estimated_cost_prices_every_run(tmp_path, specs):
    plan = plan_of(three_by_two(tmp_path), specs)
    assert plan.estimated_cost(specs) == Decimal("1.20")
    assert plan.cost_of(plan.runs[:3], specs) == Decimal("0.30")
    assert plan.cost_of([], specs) == Decimal("0")


def test_identical_output_keys_are_caught_before_planning(tmp_path, specs):
    with pytest.raises(ManifestError, match="is the output of two runs"):
        load_manifest(three_by_two(tmp_path, THREE_BY_TWO + 'output_key: "{image_set}/{variant}"\n'), specs)


def test_a_hundred_thousand_runs_plan_in_seconds(tmp_path, specs):
    sets = "".join(
        f"  - id: s{i}\n    images: [https://cdn.example.com/{i}.jpg, shared.png]\n    vars: {{product: item {i}}}\n"
        for i in range(1000)
    )
    prompts = "".join(f"  - id: p{j}\n    text: Photo {j} of the {{product}}.\n" for j in range(10))
    make_image(tmp_path / "shared.png")
    path = write(
        tmp_path,
        f"""
version: 1
name: big
output: out
defaults: {{variants: 5}}
image_sets:
{sets}prompts:
{prompts}matrix:
  aspect_ratio: ["2:3", "3:2"]
""",
    )
    started = time.perf_counter()
    plan = plan_of(path, specs)
    elapsed = time.perf_counter() - started

    assert len(plan.runs) == 100_000
    assert len({r.run_key for r in plan.runs}) == 100_000
    assert elapsed < 10, f"load + plan of 100,000 runs took {elapsed:.1f}s"


def test_run_keys_do_not_change_between_versions(tmp_path, specs):
    # Incremental runs find earlier outputs by run key, so the key of a given request is part
    # of the storage contract: these were computed by editpipe before the planner built its
    # canonical JSON from parts, and must never change.
    path = write(tmp_path, """
        version: 1
        name: pinned
        output: out
        image_sets:
          - id: pearl
            images: [https://cdn.example.com/pearl.jpg, https://cdn.example.com/pearl-2.jpg]
        prompts:
          - id: fr
            text: "Boucles d’oreilles « dorées » sur un mannequin, lumière 暖かい"
        defaults:
          variants: 2
        matrix:
          aspect_ratio: ["1:1", "2:3"]
    """)
    runs = plan_of(path, specs).runs
    assert [r.run_key for r in runs] == [run_key(r.model, r.options, r.prompt, r.inputs, r.variant) for r in runs]
    assert [r.run_key[:16] for r in runs] == PINNED_KEYS


PINNED_KEYS = ["51d5b1b7a05c56c6", "8e76df8bd1ee061e", "fc2d2b9f3152120d", "90f7682688a64f53"]


SETS = """
image_sets:
  - id: gold
    images: [https://cdn.example.com/gold.jpg]
    vars: {product: gold earrings, shade: warm}
  - id: silver
    images: [https://cdn.example.com/silver.jpg]
    vars: {product: silver earrings, shade: cool}
"""
PROMPTS = """
prompts:
  - id: editorial
    text: An editorial portrait wearing the {product}.
  - id: flatlay
    text: A flat-lay of the {product}.
    aspect_ratio: "1:1"
    variants: 3
"""
# (output_key, the rest, whether the key's shape alone proves the keys safe and distinct):
# every check but the output keys' passes; each key shape, value and pairing is one the
# checks must either prove safe and distinct without rendering, or render and judge.
KEY_CASES = {
    "default key, matrix": (
        "{image_set}/{prompt}/{aspect_ratio}/{resolution}/{variant}",
        SETS + PROMPTS + 'matrix: {aspect_ratio: ["2:3", "3:2"], resolution: [1k, 2k]}\n',
        True,
    ),
    "a var in the key": ("{shade}/{image_set}/{prompt}/{aspect_ratio}/{variant}", SETS + PROMPTS, True),
    "a runs list told apart by its options": (DEFAULT_OUTPUT_KEY, SETS + PROMPTS + """
runs:
  - {image_set: gold, prompt: editorial, aspect_ratio: "2:3"}
  - {image_set: gold, prompt: editorial, aspect_ratio: "3:2"}
  - {image_set: silver, prompt: flatlay}
""", False),
    "a matrix axis left out of the key": (DEFAULT_OUTPUT_KEY, SETS + PROMPTS + "matrix: {resolution: [1k, 2k]}\n", False),
    "placeholders sharing a segment": ("{image_set}-{prompt}/{aspect_ratio}_{variant}", SETS + PROMPTS, False),
    "no variant in the key": ("{image_set}/{prompt}/{aspect_ratio}", SETS + PROMPTS, False),
    "a runs list naming a pair twice, told apart by nothing": (DEFAULT_OUTPUT_KEY, SETS + PROMPTS + """
runs:
  - {image_set: gold, prompt: editorial, resolution: 1k}
  - {image_set: gold, prompt: editorial, resolution: 2k}
""", False),
    "ids with slashes": ("{image_set}/{prompt}/{variant}", """
image_sets:
  - {id: a/b, images: [https://cdn.example.com/1.jpg]}
  - {id: a, images: [https://cdn.example.com/2.jpg]}
prompts:
  - {id: c, text: One.}
  - {id: b/c, text: Two.}
""", False),
    "a key unsafe as text": ("../{image_set}/{prompt}/{aspect_ratio}/{variant}", SETS + PROMPTS, False),
    "an unsafe var value": (
        "{image_set}/{shade}/{prompt}/{aspect_ratio}/{variant}",
        SETS.replace("shade: cool", 'shade: ".."') + PROMPTS,
        False,
    ),
}
# A key no case can repeat or make unsafe, to load each case without its own key judged.
DISTINCT_KEY = "{image_set}~{prompt}~{aspect_ratio}~{resolution}~{quality}~{output_format}~{variant}"


def _rendered_keys_problem(manifest, specs) -> str | None:
    """What rendering every key finds: an unsafe key or a shared one (None: neither)."""
    keys = [
        key
        for pair in pair_runs(manifest, specs)
        for options in pair.option_sets
        for key in render_output_keys(manifest, pair, options)
    ]
    unsafe = [problem for problem in map(unsafe_key, keys) if problem]
    if unsafe:
        return unsafe[0]
    return "shared" if len(set(keys)) != len(keys) else None


@pytest.mark.parametrize("case", sorted(KEY_CASES))
def test_output_keys_proven_distinct_by_shape_are_distinct_when_rendered(tmp_path, specs, case):
    key, body, proven = KEY_CASES[case]
    text = "version: 1\nname: keys\noutput: out\n" + body
    base = load_manifest(write(tmp_path / "base", text + f'output_key: "{DISTINCT_KEY}"\n'), specs)
    manifest = replace(base, output_key=key)
    found = _rendered_keys_problem(manifest, specs)

    assert distinct_by_shape(manifest, specs) is proven
    if proven:
        assert found is None
    try:
        load_manifest(write(tmp_path, text + f'output_key: "{key}"\n'), specs)
    except ManifestError as exc:
        assert found is not None
        assert {issue.field for issue in exc.issues} == {"output_key"}
    else:
        assert found is None


def test_the_output_keys_of_a_plan_are_those_the_checks_judge(tmp_path, specs):
    manifest = load_manifest(three_by_two(tmp_path), specs)
    assert distinct_by_shape(manifest, specs)  # nothing rendered while checking
    runs = plan_runs(manifest, specs).runs
    rendered = [
        key
        for pair in pair_runs(manifest, specs)
        for options in pair.option_sets
        for key in render_output_keys(manifest, pair, options)
    ]
    assert [r.output_key.rsplit(".", 1)[0] for r in runs] == rendered
    assert len(set(rendered)) == len(runs) > 1


COUNT_CASES = {
    "matrix": THREE_BY_TWO,
    "matrix and variants": THREE_BY_TWO + "defaults: {variants: 3}\n",
    "per-prompt pins": THREE_BY_TWO.replace(
        "A flat-lay of the {product}.", "A flat-lay of the {product}.\n    aspect_ratio: \"1:1\"\n    variants: 2"
    )
    + '  resolution: [1k, 2k]\noutput_key: "{image_set}/{prompt}/{aspect_ratio}/{resolution}/{variant}"\n',
    "runs list": THREE_BY_TWO + """
runs:
  - {image_set: gold, prompt: editorial}
  - {image_set: gold, prompt: flatlay, aspect_ratio: "1:1", variants: 4}
  - {image_set: pearl, prompt: editorial, variants: 2}
""",
    "no matrix": THREE_BY_TWO.replace('matrix:\n  aspect_ratio: ["2:3", "3:2"]\n', "")
    + 'output_key: "{image_set}/{prompt}/{variant}"\n',
}


@pytest.mark.parametrize("case", sorted(COUNT_CASES))
def test_runs_counted_before_expanding_are_the_runs_planned(tmp_path, specs, case):
    manifest = load_manifest(three_by_two(tmp_path, COUNT_CASES[case]), specs)
    assert count_runs(manifest) == len(plan_runs(manifest, specs).runs)


@pytest.mark.parametrize("case", sorted(COUNT_CASES))
def test_size_by_arithmetic_is_the_count_and_cost_of_the_plan(tmp_path, specs, case):
    spec = specs[DEFAULT_MODEL]
    priced = {spec.name: replace(spec, price_rules=(
        PriceRule({"resolution": "2k"}, Decimal("0.30")),
        PriceRule({"aspect_ratio": "2:3", "quality": "medium"}, Decimal("0.17")),
    ))}
    manifest = load_manifest(three_by_two(tmp_path, COUNT_CASES[case]), specs)
    for prices in (specs, priced):
        plan = plan_runs(manifest, prices)
        size = size_of(manifest, prices)
        assert (size.runs, size.usd) == (len(plan.runs), plan.estimated_cost(prices))
    assert size_of(manifest, {}).usd is None  # a model without a spec has no price


def test_runs_of_a_feed_are_counted_without_reading_an_input(tmp_path, specs):
    rows = "".join(f"s{i},https://cdn.example.com/{i}.jpg\n" for i in range(250))
    (tmp_path / "feed.csv").write_text("sku,image\n" + rows)
    path = write(tmp_path, """
        version: 1
        name: feed
        output: out
        catalog: {feed: feed.csv, id: sku, images: [image]}
        prompts:
          - {id: a, text: One.}
          - {id: b, text: Two., variants: 2}
        matrix:
          aspect_ratio: ["2:3", "3:2", "1:1"]
    """)
    manifest = load_manifest(path, specs)
    assert count_runs(manifest) == 250 * (3 + 3 * 2) == len(plan_runs(manifest, specs).runs)
