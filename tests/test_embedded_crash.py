"""`editpipe run` killed, or stopped with Ctrl-C, and run again continues the same job: the
provider bills every planned run once, every output and sidecar is stored, and the ledger
equals the bill (design invariant 9).

Real processes, production settings: the command in a process group of its own, with its
redis-server and Celery workers; the provider is the session's simulator, which runs in the
test process and so outlives the kill (a `--simulate` run's would die with it).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import redis
from conftest import API_KEY, many_runs_manifest

from pipeline.embedded import StateLock, persistent_redis, state_dir_for
from pipeline.settings import Settings

EDITPIPE = str(Path(sys.executable).parent / "editpipe")
SETS, PROMPTS = 15, 2
RUNS = SETS * PROMPTS
CONCURRENT = 10


def run_env(sim) -> dict[str, str]:
    """A fresh shell's environment (no test session settings), pointed at the simulator."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("REDIS_", "WAVESPEED_", "S3_", "EDITPIPE_", "AWS_"))}
    env.update(WAVESPEED_BASE_URL=sim.base_url, WAVESPEED_API_KEY=API_KEY,
               WAVESPEED_IMAGES_PER_MINUTE="600", WAVESPEED_MAX_CONCURRENT=str(CONCURRENT))
    return env


def start_run(manifest: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    """`editpipe run` as a user's shell starts it: a process group of its own."""
    with open(log, "wb") as out:
        return subprocess.Popen([EDITPIPE, "run", str(manifest)], cwd=manifest.parent, env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


def run_again(manifest: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([EDITPIPE, "run", str(manifest)], cwd=manifest.parent, env=env, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)


def wait_until(check, timeout_s: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def slow_provider(sim) -> None:
    sim.configure(latency_s=3.0, jitter_s=0.2, images_per_minute=600, max_concurrent=CONCURRENT)


def halfway_and_settled(sim):
    """Some runs billed, every concurrency slot in flight, and no submit on its way: the
    provider created nothing for a second (a submit whose answer a kill cuts off is the one
    payment no client can confirm; it is recorded as such, and not what this test is about)."""
    last = {"created": -1, "since": time.monotonic()}

    def check() -> bool:
        stats = sim.stats()
        if stats["created"] != last["created"]:
            last.update(created=stats["created"], since=time.monotonic())
            return False
        return (stats["billed_count"] >= CONCURRENT and stats["processing"] == CONCURRENT
                and time.monotonic() - last["since"] >= 1.0)

    return check


def assert_every_run_stored_once_and_the_ledger_is_the_bill(out: Path, sim) -> None:
    (job_dir,) = (out / "jobs").iterdir()  # one job, continued: not a second one
    results = [json.loads(line) for line in (job_dir / "results.jsonl").read_text().splitlines()]
    assert [r["status"] for r in results] == ["succeeded"] * RUNS
    for r in results:
        assert (out / r["output"]).is_file() and (out / r["output"]).with_suffix(".json").is_file(), r
    stats = sim.stats()
    assert stats["billed_count"] == RUNS and stats["created"] == RUNS, stats
    assert stats["duplicate_submissions"] == 0, stats
    ledger = [json.loads(line) for line in (job_dir / "ledger.jsonl").read_text().splitlines()]
    assert len(ledger) == RUNS
    assert sum(Decimal(line["cost_usd"]) for line in ledger) == Decimal(stats["billed_usd"])


def test_a_sigkilled_run_run_again_bills_each_planned_run_exactly_once(sim, tmp_path: Path):
    slow_provider(sim)
    manifest = many_runs_manifest(tmp_path, "out", sets=SETS, prompts=PROMPTS)
    env = run_env(sim)
    first = start_run(manifest, env, tmp_path / "first.log")
    try:
        wait_until(halfway_and_settled(sim), what="runs billed and predictions in flight")
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the command, its redis-server and its workers
        first.wait()
    killed_at = sim.stats()
    assert CONCURRENT <= killed_at["billed_count"] < RUNS and killed_at["processing"] == CONCURRENT

    again = run_again(manifest, env)

    assert again.returncode == 0, again.stdout + again.stderr
    continuing = re.search(r"continuing job \S+: (\d+) of (\d+) runs done, (\d+) in flight", again.stdout)
    assert continuing, again.stdout
    # Every prediction the provider was running is in flight for the job (a collect the kill
    # cut short counts too: its run is collected again, and charged once).
    assert int(continuing[3]) >= CONCURRENT and int(continuing[2]) == RUNS, again.stdout
    assert_every_run_stored_once_and_the_ledger_is_the_bill(tmp_path / "out", sim)

    # The job is finished: the same command now starts a new one, which finds everything done.
    third = run_again(manifest, env)
    assert third.returncode == 0 and f"{RUNS} runs ({RUNS} already done)" in third.stdout, third.stdout + third.stderr
    assert f"{RUNS} skipped" in third.stdout and sim.stats()["created"] == RUNS


def test_ctrl_c_stops_cleanly_and_the_same_command_continues_the_job(sim, tmp_path: Path):
    slow_provider(sim)
    manifest = many_runs_manifest(tmp_path, "out", sets=SETS, prompts=PROMPTS)
    env = run_env(sim)
    first = start_run(manifest, env, tmp_path / "first.log")
    try:
        wait_until(lambda: sim.stats()["processing"] > 0, what="predictions in flight")
        # One run per state folder: a second command is refused and names the first.
        second = run_again(manifest, env)
        assert second.returncode == 1 and f"another `editpipe run` (pid {first.pid})" in second.stderr, second.stderr
        wait_until(lambda: sim.stats()["billed_count"] > 0, what="a run billed")
        os.killpg(first.pid, signal.SIGINT)  # Ctrl-C in its terminal
        code = first.wait(timeout=90)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    said = (tmp_path / "first.log").read_text()
    assert code == 130, said
    assert "Stopping cleanly" in said and "Ctrl-C again" in said and "continues job" in said, said
    stopped = sim.stats()
    # Nothing was left running at the provider: what was in flight was collected and stored.
    assert stopped["processing"] == 0 and stopped["billed_count"] == stopped["created"] < RUNS, stopped
    stored = [p for p in (tmp_path / "out").rglob("*.png") if "jobs" not in p.parts and ".editpipe" not in p.parts]
    assert len(stored) == stopped["billed_count"]

    again = run_again(manifest, env)

    assert again.returncode == 0, again.stdout + again.stderr
    assert "continuing job" in again.stdout and "0 in flight" in again.stdout, again.stdout
    assert_every_run_stored_once_and_the_ledger_is_the_bill(tmp_path / "out", sim)


def test_a_sigkilled_redis_keeps_every_acknowledged_write(tmp_path: Path):
    lock = StateLock(tmp_path / "state")
    lock.acquire()
    try:
        with persistent_redis(tmp_path / "state", lock) as url:
            client = redis.Redis.from_url(url)
            for i in range(2000):
                client.hset("h", str(i), "x" * 100)
            os.kill(int(client.info("server")["process_id"]), signal.SIGKILL)  # no shutdown, no fsync
        with persistent_redis(tmp_path / "state", lock) as url:
            assert redis.Redis.from_url(url).hlen("h") == 2000
    finally:
        lock.release()


def test_run_state_lives_beside_a_local_output_and_under_the_state_home_for_s3(tmp_path: Path):
    settings = Settings.from_env({"HOME": str(tmp_path / "home")})
    assert state_dir_for(str(tmp_path / "out"), settings) == tmp_path / "out" / ".editpipe" / "state"
    s3 = state_dir_for("s3://bucket/edits", settings)
    assert s3.parent == tmp_path / "home" / ".local" / "state" / "editpipe"
    assert s3 != state_dir_for("s3://bucket/other", settings)
    moved = Settings.from_env({"EDITPIPE_STATE_DIR": str(tmp_path / "st"), "XDG_STATE_HOME": str(tmp_path / "x")})
    assert state_dir_for(str(tmp_path / "out"), moved).parent == tmp_path / "st"
    assert state_dir_for("s3://bucket/edits", Settings.from_env({"XDG_STATE_HOME": str(tmp_path / "x")})).parent \
        == tmp_path / "x" / "editpipe"
