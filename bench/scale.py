"""The cost of size: what editpipe does with manifests whose product of dimensions is huge.

Each case is a function that writes its inputs, runs one ``editpipe`` command in a child
process (its own interpreter, so that its peak RSS is its own: the ``ru_maxrss`` that ``os.wait4``
gives for it) and returns its figures beside their
targets. Cases so far:

- ``refused``: the manifest of issue 15, a 100,000-row CSV feed (an https URL per row plus
  one of three local files shared by every row) × 10 prompts × a 15 × 3 × 3 × 3 option matrix
  × ``variants: 4`` = 1,620,000,000 runs. ``editpipe plan`` must refuse it by arithmetic,
  before a run is built: exit 2, the count in its message, ≤ 2 s, ≤ 200 MB peak RSS.

The child runs under a 1.5 GiB address-space limit (``RLIMIT_AS``), as the issue's repro did,
so that a regression dies with a MemoryError rather than taking the machine's memory.

    .venv/bin/python bench/scale.py [--case refused]

Exits 1 when a figure misses its target.
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, machine, verdict

ROWS = 100_000
ADDRESS_SPACE_LIMIT = 3 << 29  # 1.5 GiB


@dataclass
class Figure:
    name: str
    value: float
    target: float
    unit: str

    @property
    def ok(self) -> bool:
        return self.value <= self.target

    def line(self) -> str:
        return (f"  {self.name:<12} {self.value:>9.2f} {self.unit:<3} target ≤ {self.target:g} {self.unit:<3} "
                f"{verdict(self.ok)}")


@dataclass
class Result:
    parameters: str
    figures: list[Figure]
    checks: list[tuple[str, bool]]  # what must hold besides the figures, and whether it did
    output: str  # what the command printed, shown as it is

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.figures) and all(held for _, held in self.checks)


@dataclass
class Child:
    exit_code: int
    wall_s: float
    peak_rss_mb: float
    stdout: str
    stderr: str


def run_editpipe(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> Child:
    """``editpipe ARGS`` in a child interpreter under ``ADDRESS_SPACE_LIMIT``: its wall time,
    exit code and peak RSS (``os.wait4`` gives the resource use of that child alone)."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_LIMIT, ADDRESS_SPACE_LIMIT))

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as errors:
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-c", "from pipeline.cli import main; main()", *args],
            cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
            stdout=out, stderr=errors, text=True, preexec_fn=limit,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        errors.seek(0)
        # ru_maxrss is in KiB on Linux.
        return Child(proc.returncode, wall, usage.ru_maxrss / 1024, out.read(), errors.read())


# ---- inputs -------------------------------------------------------------------------------


def write_feed(directory: Path, rows: int = ROWS) -> Path:
    """``rows`` products: an https image each, and one of three local backdrops (8 px PNGs)."""
    for i, color in enumerate(("red", "green", "blue")):
        Image.new("RGB", (8, 8), color).save(directory / f"backdrop-{i}.png")
    path = directory / "products.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["sku", "image_url", "backdrop", "title", "color"])
        for i in range(rows):
            writer.writerow([f"sku-{i:06d}", f"https://cdn.example.com/products/{i:06d}/front.jpg",
                             f"backdrop-{i % 3}.png", f"drop earrings, model {i}",
                             ("gold", "silver", "rose gold")[i % 3]])
    return path


def write_refused_manifest(directory: Path) -> Path:
    write_feed(directory)
    prompts = "".join(f"  - id: p{j}\n    text: Editorial photograph {j} of the {{color}} {{title}}.\n"
                      for j in range(10))
    path = directory / "huge.yaml"
    path.write_text(
        "version: 1\nname: huge\noutput: out\n"
        "defaults:\n  variants: 4\n"
        "catalog:\n  feed: products.csv\n  id: sku\n  images: [image_url, backdrop]\n  vars: [title, color]\n"
        f"prompts:\n{prompts}"
        "matrix:\n"
        '  aspect_ratio: ["1:1", "2:3", "3:2", "1:2", "2:1", "1:3", "3:1", "3:4", "4:3", "4:5", "5:4",'
        ' "9:16", "16:9", "9:21", "21:9"]\n'
        "  resolution: [1k, 2k, 4k]\n  quality: [low, medium, high]\n  output_format: [png, jpeg, webp]\n"
    )
    return path


# ---- cases ----------------------------------------------------------------------------------


def case_refused(work: Path) -> Result:
    """``editpipe plan`` on 1.6 billion runs: refused by arithmetic, exit 2, with the count."""
    manifest = write_refused_manifest(work)
    child = run_editpipe(["plan", str(manifest)], cwd=work)
    message = child.stderr.strip()
    return Result(
        parameters=f"{ROWS:,}-row CSV feed × 10 prompts × matrix 15 × 3 × 3 × 3 × variants 4 "
                   f"= {ROWS * 10 * 405 * 4:,} runs; `editpipe plan`, RLIMIT_AS 1.5 GiB",
        figures=[Figure("refused in", child.wall_s, 2.0, "s"), Figure("peak RSS", child.peak_rss_mb, 200.0, "MB")],
        checks=[
            (f"exit code {child.exit_code} (2 wanted)", child.exit_code == 2),
            ("the count in the message (1,620,000,000)", "1,620,000,000" in message),
            ("no traceback", "Traceback" not in message),
        ],
        output=message,
    )


CASES: dict[str, Callable[[Path], Result]] = {"refused": case_refused}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", choices=sorted(CASES), action="append", help="run only these cases")
    args = parser.parse_args()
    print(f"editpipe scale benchmark; {machine()}\n")
    missed = False
    for name in args.case or CASES:
        with tempfile.TemporaryDirectory(prefix="editpipe-scale-") as tmp:
            result = CASES[name](Path(tmp))
        print(f"{name}: {result.parameters}")
        for figure in result.figures:
            print(figure.line())
        for what, held in result.checks:
            print(f"  {what:<52} {verdict(held)}")
        print("  its message:\n" + "\n".join(f"    {line}" for line in result.output.splitlines()) + "\n")
        missed |= not result.ok
    print("every target met" if not missed else "a target was missed")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
