"""The command line as a user types it: real processes, real exit codes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EDITPIPE = str(Path(sys.executable).parent / "editpipe")
QUICKSTART = ROOT / "examples" / "quickstart"


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a fresh shell: no Redis, no key, no endpoint of the test session."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("REDIS_", "WAVESPEED_", "S3_", "EDITPIPE_", "AWS_"))}
    env.update(extra)
    return env


def editpipe(*args: str, cwd: Path, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([EDITPIPE, *args], cwd=cwd, env=clean_env(**env), capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture
def quickstart(tmp_path: Path) -> Path:
    """The quickstart copied into an empty directory."""
    shutil.copytree(QUICKSTART, tmp_path / "qs", ignore=shutil.ignore_patterns("out"))
    return tmp_path / "qs" / "manifest.yaml"


def test_run_simulate_works_in_an_empty_directory_with_no_server_running(quickstart: Path):
    done = editpipe("run", str(quickstart), "--simulate", cwd=quickstart.parent, timeout=180)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "12 succeeded" in done.stdout and "spent: $1.20" in done.stdout
    out = quickstart.parent / "out"
    assert len(list(out.rglob("*.png"))) == 12
    (job_dir,) = (out / "jobs").iterdir()
    results = [json.loads(line) for line in (job_dir / "results.jsonl").read_text().splitlines()]
    assert [r["status"] for r in results] == ["succeeded"] * 12
    for name in ("manifest.yaml", "job.json", "ledger.jsonl", "report.html", "summary.json"):
        assert (job_dir / name).is_file()


def test_run_exits_1_when_some_runs_failed(quickstart: Path):
    text = quickstart.read_text().replace("A minimal flat-lay", "A minimal [sim:fail] flat-lay")
    quickstart.write_text(text)

    done = editpipe("run", str(quickstart), "--simulate", cwd=quickstart.parent, timeout=180)

    assert done.returncode == 1, done.stdout + done.stderr
    assert "6 succeeded" in done.stdout and "6 failed" in done.stdout
    assert "simulated failure" in done.stdout


def test_run_without_a_key_says_what_to_do(quickstart: Path):
    done = editpipe("run", str(quickstart), cwd=quickstart.parent)

    assert done.returncode == 2
    assert "WAVESPEED_API_KEY" in done.stderr and "--simulate" in done.stderr


def test_validate_reports_every_mistake_with_its_line_and_exits_2(tmp_path: Path):
    manifest = tmp_path / "bad.yaml"
    manifest.write_text(
        "version: 1\n"
        "name: bad name\n"
        "output: out\n"
        "image_sets:\n"
        "  - id: a\n"
        "    images: [https://cdn.example.com/a.jpg]\n"
        "prompts:\n"
        "  - id: p\n"
        "    text: The {product} on linen.\n"
        "    aspect_ratio: '7:7'\n"
        "output_key: ../{image_set}\n"
    )

    done = editpipe("validate", str(manifest), cwd=tmp_path)

    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert any(line.startswith(f"{manifest}:2:7: name:") for line in lines), done.stderr
    assert any(line.startswith(f"{manifest}:9:11: prompts[0].text:") and "{product}" in line for line in lines)
    assert any(line.startswith(f"{manifest}:10:19: prompts[0].aspect_ratio:") for line in lines)
    assert any(line.startswith(f"{manifest}:11:13: output_key:") for line in lines)
    assert not (tmp_path / "out").exists()


def test_validate_and_plan_accept_the_quickstart_and_price_it(quickstart: Path):
    assert editpipe("validate", str(quickstart), cwd=quickstart.parent).returncode == 0
    done = editpipe("plan", str(quickstart), cwd=quickstart.parent)
    assert done.returncode == 0
    assert "Estimated cost: $1.20 for 12 new runs" in done.stdout
    assert "within budget" in done.stdout


def test_schema_prints_the_manifest_json_schema(tmp_path: Path):
    done = editpipe("schema", cwd=tmp_path)
    schema = json.loads(done.stdout)
    assert {"version", "name", "output", "image_sets", "prompts", "matrix", "runs", "output_key"} <= set(
        schema["properties"]
    )
