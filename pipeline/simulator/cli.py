"""``editpipe simulate-api``: serve the simulator in the foreground until Ctrl-C."""

from __future__ import annotations

import signal
import threading
from decimal import Decimal, InvalidOperation
from pathlib import Path

import click

from ..settings import TIERS
from .config import SimConfig
from .server import Simulator

_DEFAULTS = SimConfig()


def _decimal(ctx: click.Context, param: click.Parameter, value: str) -> Decimal:
    try:
        return Decimal(value)
    except InvalidOperation:
        raise click.BadParameter(f"{value!r} is not a decimal amount") from None


_rate = click.FloatRange(0.0, 1.0)


@click.command("simulate-api")
@click.option("--host", default=_DEFAULTS.host, show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=8765, show_default=True, help="Port to listen on (0: any free port).")
@click.option("--latency", "latency_s", type=float, default=_DEFAULTS.latency_s, show_default=True,
              help="Seconds from submit to completion.")
@click.option("--jitter", "jitter_s", type=float, default=_DEFAULTS.jitter_s, show_default=True,
              help="Latency varies uniformly by up to this many seconds either way.")
@click.option("--tier", type=click.Choice(list(TIERS)), default=None,
              help="Account limits of this tier (default: unlimited).")
@click.option("--images-per-minute", type=click.IntRange(min=1), default=None,
              help="Images started per minute (overrides the tier).")
@click.option("--max-concurrent", type=click.IntRange(min=1), default=None,
              help="Tasks in flight at once (overrides the tier).")
@click.option("--api-key", default=None,
              help="Accept only this bearer key (default: any non-empty key). WAVESPEED_API_KEY is not read.")
@click.option("--fail-rate", type=_rate, default=0.0, show_default=True, help="Share of predictions that fail.")
@click.option("--fail-code", type=int, default=_DEFAULTS.fail_code, show_default=True,
              help="Failure code of the predictions --fail-rate fails (5000: internal error, submitted again).")
@click.option("--error-5xx-rate", type=_rate, default=0.0, show_default=True,
              help="Share of submits answered 500/502/503 before anything is created.")
@click.option("--drop-rate", type=_rate, default=0.0, show_default=True,
              help="Share of submits created (and billed) whose answer is never sent.")
@click.option("--slow-rate", type=_rate, default=0.0, show_default=True,
              help="Share of submits whose answer is delayed by --slow seconds.")
@click.option("--slow", "slow_s", type=float, default=_DEFAULTS.slow_s, show_default=True,
              help="Delay of a slow submit answer, in seconds.")
@click.option("--seed", type=int, default=_DEFAULTS.seed, show_default=True, help="Seed of the fault dice.")
@click.option("--image-long-side", type=click.IntRange(min=1), default=_DEFAULTS.image_long_side,
              show_default=True, help="Long side of output images, in pixels.")
@click.option("--sync-timeout", "sync_timeout_s", type=float, default=_DEFAULTS.sync_timeout_s,
              show_default=True, help="Longest wait of a sync-mode submit before it answers 'processing'.")
@click.option("--fetch-inputs/--no-fetch-inputs", default=True, show_default=True,
              help="Download and decode every input image, as the real service does.")
@click.option("--price-usd", default=str(_DEFAULTS.price_usd), show_default=True, callback=_decimal,
              help="Price billed per completed prediction.")
@click.option("--models-dir", type=click.Path(file_okay=False, path_type=Path), default=_DEFAULTS.models_dir,
              show_default=True, help="Model specs whose option values submits are checked against.")
def simulate_api(**options: object) -> None:
    """Serve a simulated WaveSpeed v3 API (nothing is paid) until Ctrl-C.

    Point editpipe at it with WAVESPEED_BASE_URL=<printed URL>. Stats: GET /_sim/stats.
    """
    try:
        cfg = SimConfig(**options)  # type: ignore[arg-type]
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    with Simulator(cfg) as sim:
        per_minute, concurrent = cfg.limits
        click.echo(f"WaveSpeed simulator listening on {sim.base_url}")
        click.echo(
            f"latency {cfg.latency_s:g}s, limits: {per_minute or 'unlimited'} images/min, "
            f"{concurrent or 'unlimited'} concurrent; stats at {sim.base_url}/_sim/stats; Ctrl-C stops"
        )
        _wait_for_stop_signal()
        click.echo("stopping")


def _wait_for_stop_signal() -> None:
    """Block until SIGINT (Ctrl-C) or SIGTERM (a process manager), so both stop cleanly."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
