"""Figures about faults, computed from what the simulator saw (for ``bench/chaos.py``).

A run is *started* when the provider creates its prediction: the simulator's
``/_sim/predictions`` gives each prediction's ``created_at`` (UTC, millisecond resolution,
stamped by the simulator's own clock, which is the machine's: the benches run everything on
one host). A fault's time is the Unix time the bench sent its signal (``time.time()``).
"""

from __future__ import annotations

import bisect

from _common import created_times


def seconds_to_next_start(faults: list[float], predictions: list[dict]) -> list[float | None]:
    """For each fault (Unix time), the seconds until the provider created the next
    prediction after it: from a SIGKILL of a worker to the next run started on the workers
    left (or restarted). None when no prediction was created after that fault.

    A submit already on the wire when the fault struck may be created a few milliseconds
    after it; that start is counted, as the provider saw it. Faults need not be sorted.
    """
    starts = created_times(predictions)
    out: list[float | None] = []
    for fault in faults:
        i = bisect.bisect_right(starts, fault)
        out.append(starts[i] - fault if i < len(starts) else None)
    return out


def longest_pause_after(fault: float, predictions: list[dict], until: float | None = None) -> float:
    """The longest time without a new prediction from ``fault`` to ``until`` (the next
    fault, say; by default the last prediction created): how long the fleet stopped
    starting runs, not only how soon it started one again (a start already on its way at
    the fault, then a stall, shows here and not in ``seconds_to_next_start``)."""
    starts = [t for t in created_times(predictions) if t > fault and (until is None or t <= until)]
    edges = [fault, *starts, *([until] if until is not None else [])]
    return max((b - a for a, b in zip(edges, edges[1:])), default=0.0)


def demo(runs: int = 300) -> None:
    """``python bench/_faults.py``: three workers (prefork 4) on a 300-run job (simulator
    latency 1 s, 600 a minute, 20 at once, outputs to a local folder, the production
    visibility timeout); 6 s after the submit one worker's process group is SIGKILLed and
    not restarted, 10 s later the other two are SIGKILLed and two fresh workers started at
    once. Prints, for each fault, the seconds to the next run started and the longest pause
    in starts until the next fault."""
    import os
    import signal
    import time

    from _common import (celery_workers, editpipe_settings, editpipe_worker_env, machine, simulator,
                         wait_workers_ready, workdir, write_feed_manifest)

    from pipeline.embedded import private_redis
    from pipeline.report import finalize_job
    from pipeline.state import State
    from pipeline.submission import follow, prepare, submit
    from workers.celery_app import job_enqueuer

    print(f"kill recovery; {machine()}")
    with workdir() as work, private_redis(work / "redis") as redis_url, \
            simulator(latency_s=1.0, images_per_minute=600, max_concurrent=20) as sim:
        settings = editpipe_settings(redis_url=redis_url, sim=sim, images_per_minute=600, max_concurrent=20)
        assert settings.visibility_timeout_s == 600
        env = editpipe_worker_env(settings)
        manifest = write_feed_manifest(work / "manifest", runs, str(work / "out"), name="kills")
        state = State.from_url(redis_url)
        with celery_workers(env, count=3, concurrency=4, logdir=work / "logs") as first:
            wait_workers_ready(first, work / "logs")
            job_id = submit(prepare(manifest, settings), state, job_enqueuer(settings), finalize=finalize_job)
            submitted = time.time()
            time.sleep(6)
            faults = [time.time()]
            os.killpg(first[0].pid, signal.SIGKILL)
            time.sleep(10)
            faults.append(time.time())
            for proc in first[1:]:
                os.killpg(proc.pid, signal.SIGKILL)
            with celery_workers(env, count=2, concurrency=4, logdir=work / "logs", app="workers") as fresh:
                status = follow(state, job_id, lambda s: None, 0.2, 300)
                ended = time.time()
                del fresh
        predictions = sim.predictions()
    nexts = seconds_to_next_start(faults, predictions)
    pauses = [longest_pause_after(faults[0], predictions, faults[1]), longest_pause_after(faults[1], predictions)]
    print(f"job {status.status}: {status.succeeded} succeeded, {status.failed} failed of {status.total}, "
          f"{ended - submitted:.1f} s from submit to finalized")
    for what, fault, nxt, pause in zip(("one of three killed", "the other two killed, two started"),
                                       faults, nexts, pauses):
        shown = "none" if nxt is None else f"{nxt:.2f} s"
        print(f"{what} at +{fault - submitted:.1f} s: next run started after {shown}, "
              f"longest pause in starts {pause:.2f} s")


if __name__ == "__main__":
    demo()
