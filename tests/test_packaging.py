"""`pip install` works: a wheel built from the checkout, installed (not editable) into a fresh
virtualenv, runs the quickstart from a folder that is not the checkout.

The dependencies are installed for real (from the package index, which pip's cache answers
quickly), so the wheel's own requirements are what is tested. Takes about a minute.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from decimal import Decimal
from pathlib import Path

import pytest

from conftest import ROOT
from pipeline.modelspec import DEFAULT_MODEL, PACKAGED_MODELS, load_model_specs
from pipeline.settings import Settings

pytestmark = pytest.mark.timeout(300)

# What a build needs from the checkout: nothing else is copied, so the wheel cannot lean on it.
SOURCES = ("pyproject.toml", "README.md", "pipeline", "workers")


def fresh_shell_env() -> dict[str, str]:
    """A new shell's environment: none of the test session's servers, keys or PYTHONPATH."""
    return {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR", "PIP_CERT")}


def sh(*args: str | Path, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=fresh_shell_env(), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The ``bin/`` of a fresh virtualenv with the checkout's wheel installed in it."""
    tmp = tmp_path_factory.mktemp("packaging")
    src = tmp / "src"
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    sh(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", tmp / "dist", src, cwd=tmp)
    (wheel,) = (tmp / "dist").glob("editpipe-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("pipeline/") and n.endswith(".lua") for n in names), names
    assert any(n.startswith("pipeline/configs/models/") and n.endswith(".yaml") for n in names), names

    venv = tmp / "venv"
    sh(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp)
    sh(sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "--quiet", wheel, cwd=tmp,
       timeout=240)
    return venv / "bin"


def test_an_installed_wheel_validates_and_runs_the_quickstart_from_another_folder(installed: Path, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(ROOT / "examples" / "quickstart", elsewhere / "qs", ignore=shutil.ignore_patterns("out"))
    where = sh(installed / "python", "-c", "import pipeline, workers; print(pipeline.__file__, workers.__file__)",
               cwd=elsewhere).stdout.split()
    assert all(Path(p).is_relative_to(installed.parent / "lib") for p in where), where

    validated = subprocess.run([installed / "editpipe", "validate", "qs/manifest.yaml"], cwd=elsewhere,
                               env=fresh_shell_env(), capture_output=True, text=True, timeout=60)
    assert validated.returncode == 0, validated.stdout + validated.stderr

    ran = subprocess.run([installed / "editpipe", "run", "qs/manifest.yaml", "--simulate"], cwd=elsewhere,
                         env=fresh_shell_env(), capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    out = elsewhere / "qs" / "out"
    assert len(list(out.rglob("*.png"))) == 12
    (job_dir,) = (out / "jobs").iterdir()
    assert (job_dir / "report.html").is_file()
    results = [json.loads(line) for line in (job_dir / "results.jsonl").read_text().splitlines()]
    assert [r["status"] for r in results] == ["succeeded"] * 12


def test_a_users_spec_of_the_same_model_replaces_the_packaged_one_and_others_add(tmp_path):
    packaged = load_model_specs()
    models = tmp_path / "configs" / "models"
    models.mkdir(parents=True)
    text = (PACKAGED_MODELS / "openai-gpt-image-2-edit.yaml").read_text()
    (models / "mine.yaml").write_text(text.replace('default: "0.10"', 'default: "0.25"'))
    (models / "other.yaml").write_text(text.replace("model: openai/gpt-image-2/edit", "model: acme/other"))
    settings = Settings.from_env({"EDITPIPE_CONFIGS": str(tmp_path / "configs")})

    specs = load_model_specs(settings.models_dir)

    assert packaged[DEFAULT_MODEL].price_default == Decimal("0.10")
    assert specs[DEFAULT_MODEL].price_default == Decimal("0.25")
    assert set(specs) == {DEFAULT_MODEL, "acme/other"}
    assert settings.schedules_file == tmp_path / "configs" / "schedules.yaml"
