"""`editpipe top` in a real terminal (tmux): it shows a running job's progress as the workers
make it, the account's limits, and quits on q and on Ctrl-C."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import AWS_ENV, ROOT, many_runs_manifest
from pipeline.embedded import worker_env
from pipeline.report import finalize_job
from pipeline.state import State
from pipeline.submission import follow, prepare, submit
from workers.celery_app import job_enqueuer

TMUX = "/usr/bin/tmux"


class Terminal:
    """A detached tmux server of the test's own, 160 × 40."""

    def __init__(self) -> None:
        self.socket = f"editpipe-top-{uuid.uuid4().hex[:8]}"

    def tmux(self, *args: str) -> str:
        return subprocess.run([TMUX, "-L", self.socket, *args], check=True, capture_output=True, text=True).stdout

    def start(self, name: str, command: list[str], env: dict[str, str], rc_file: Path) -> None:
        """Run ``command`` in a new window; its exit status goes to ``rc_file``. The shell
        around it traps Ctrl-C (so the command alone answers it) and keeps the window open."""
        line = " ".join(["env", *(shlex.quote(f"{k}={v}") for k, v in env.items()), shlex.join(command)])
        self.tmux("new-session", "-d", "-s", name, "-x", "160", "-y", "40",
                  f"sh -c {shlex.quote(f'unset COLUMNS LINES; trap true INT; {line}; echo $? > {rc_file}; sleep 30')}")

    def screen(self, name: str) -> str:
        return self.tmux("capture-pane", "-p", "-t", name)

    def wait_for(self, name: str, pattern: str, timeout_s: float = 60) -> re.Match:
        deadline = time.monotonic() + timeout_s
        while True:
            found = re.search(pattern, self.screen(name))
            if found:
                return found
            assert time.monotonic() < deadline, f"{pattern!r} never shown:\n{self.screen(name)}"
            time.sleep(0.2)

    def close(self) -> None:
        subprocess.run([TMUX, "-L", self.socket, "kill-server"], capture_output=True)


@pytest.fixture
def terminal() -> Iterator[Terminal]:
    term = Terminal()
    yield term
    term.close()


def exit_code(rc_file: Path, timeout_s: float = 10) -> int:
    deadline = time.monotonic() + timeout_s
    while not rc_file.exists() or not rc_file.read_text().strip():
        assert time.monotonic() < deadline, "editpipe top did not exit"
        time.sleep(0.1)
    return int(rc_file.read_text())


def test_top_shows_a_running_jobs_progress_and_quits_on_q_or_ctrl_c(settings, sim, workers, tmp_path, bucket,
                                                                     terminal):
    # 4 predictions at once, 2 s each: 24 runs take about 12 s, long enough to watch.
    sim.configure(latency_s=2.0, jitter_s=0.2)
    workers.settings = settings.with_overrides(max_concurrent=4)
    workers.start(1)
    workers.wait_ready()
    state = State.from_url(settings.redis_url or "")
    manifest = many_runs_manifest(tmp_path, f"s3://{bucket}/out", sets=12, extra="budget_usd: 10.00\n")
    command = [sys.executable, "-c", "from pipeline.cli import main; main()", "top", "--interval", "0.3"]
    env = {**worker_env(workers.settings), **AWS_ENV, "PYTHONPATH": str(ROOT), "TERM": "xterm-256color"}
    for inherited in ("COLUMNS", "LINES"):  # the terminal's own size, not the test runner's
        env.pop(inherited, None)
    terminal.start("top", command, env, tmp_path / "rc-q")
    terminal.wait_for("top", r"no job active")
    job_id = submit(prepare(manifest, settings), state, job_enqueuer(settings), finalize=finalize_job)

    # Half done: the job's row shows its progress, its spend against its budget, and the
    # account's in-flight predictions against the cap the workers run with.
    mid = terminal.wait_for("top", re.escape(job_id) + r"\s+running\s+\S+\s+([1-9]|1\d|2[0-3])/24\b")
    screen = terminal.screen("top")
    assert re.search(r"in flight \d / 4\b", screen), screen
    assert re.search(r"\$\d+\.\d\d / \$10\.00", screen), screen
    assert int(mid.group(1)) < 24

    assert follow(state, job_id, lambda s: None, interval_s=0.2, timeout_s=120).done
    done = terminal.wait_for("top", re.escape(job_id) + r"\s+succeeded\s+.*24/24.*\$2\.40 / \$10\.00")
    assert done
    terminal.tmux("send-keys", "-t", "top", "q")
    assert exit_code(tmp_path / "rc-q") == 0

    # Ctrl-C quits as well.
    terminal.start("again", command, env, tmp_path / "rc-c")
    terminal.wait_for("again", re.escape(job_id))
    terminal.tmux("send-keys", "-t", "again", "C-c")
    assert exit_code(tmp_path / "rc-c") == 0


def test_top_once_prints_one_frame_without_a_terminal(settings, sim, workers, tmp_path, bucket):
    workers.start(1)
    workers.wait_ready()
    state = State.from_url(settings.redis_url or "")
    manifest = many_runs_manifest(tmp_path, f"s3://{bucket}/out", sets=3)
    job_id = submit(prepare(manifest, settings), state, job_enqueuer(settings), finalize=finalize_job)
    assert follow(state, job_id, lambda s: None, interval_s=0.2, timeout_s=60).done
    env = {**worker_env(settings), **AWS_ENV, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    out = subprocess.run([sys.executable, "-c", "from pipeline.cli import main; main()", "top", "--once"],
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    assert re.search(re.escape(job_id) + r"\s+succeeded\s+.*6/6", out.stdout), out.stdout
    assert "failures: none" in out.stdout
