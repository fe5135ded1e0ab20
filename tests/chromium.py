"""Headless Chromium for the tests that look at a page the way a person would.

Debian's ``chromium`` package is installed on first use when it is missing (the test machines
run as root and reach Debian's archive); if that fails the caller skips with the reason.
Every run gets its own throwaway profile and talks to nothing but the page's own servers.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
)


class ChromiumUnavailable(Exception):
    """Chromium is not installed and could not be installed; the message says why."""


def find_or_install() -> str:
    """The path of ``chromium``, installing Debian's package (after one ``apt-get update``)
    when it is missing."""
    found = shutil.which("chromium")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise ChromiumUnavailable("chromium is not installed and apt-get (as root) is not available to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise ChromiumUnavailable(f"`{' '.join(cmd)}` failed: {' / '.join(tail)}")
    found = shutil.which("chromium")
    if not found:
        raise ChromiumUnavailable("apt-get installed chromium but no `chromium` is on PATH")
    return found


@dataclass
class Chromium:
    binary: str

    def _run(self, url: str, *extra: str, window: tuple[int, int], budget_ms: int) -> subprocess.CompletedProcess:
        with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
            return subprocess.run(
                [self.binary, *FLAGS, f"--user-data-dir={profile}", f"--window-size={window[0]},{window[1]}",
                 f"--virtual-time-budget={budget_ms}", *extra, url],
                capture_output=True, text=True, timeout=120,
            )

    def dump_dom(self, url: str, *, window: tuple[int, int] = (1280, 8000), budget_ms: int = 10_000) -> str:
        """The page's DOM after its images had time to load (virtual time waits for the
        network). The window is tall so that lazily loaded images are all in view."""
        done = self._run(url, "--dump-dom", window=window, budget_ms=budget_ms)
        if done.returncode != 0 or "<html" not in done.stdout:
            raise RuntimeError(f"chromium --dump-dom failed ({done.returncode}): {done.stderr[-2000:]}")
        return done.stdout

    def screenshot(self, url: str, path: Path, *, window: tuple[int, int] = (1280, 1800),
                   budget_ms: int = 10_000) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        done = self._run(url, f"--screenshot={path}", window=window, budget_ms=budget_ms)
        if not path.is_file():
            raise RuntimeError(f"chromium --screenshot wrote nothing ({done.returncode}): {done.stderr[-2000:]}")
        return path


def body_data(dom: str) -> dict[str, str]:
    """The ``data-*`` attributes of the dumped page's ``<body>``."""
    match = re.search(r"<body([^>]*)>", dom)
    attrs = match.group(1) if match else ""
    return dict(re.findall(r'data-([\w-]+)="([^"]*)"', attrs))
