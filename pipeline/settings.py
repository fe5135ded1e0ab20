"""Settings: the one place editpipe reads the environment and ``configs/``.

A user's configs folder is the one ``EDITPIPE_CONFIGS`` names, else ``configs/`` in the
working directory; it may be missing. Its ``models/*.yaml`` add to the model specs that ship
in the package, a spec naming the same model replacing the packaged one (see
``pipeline/modelspec.py``); its ``schedules.yaml`` is the schedules file unless
``EDITPIPE_SCHEDULES`` names another.

Every other module receives a ``Settings`` (or values taken from it); none reads
``os.environ`` itself. The API key is a ``SecretStr`` so that neither ``repr`` nor a log
line can print it by accident.
"""

from __future__ import annotations

import os
from importlib import resources
from collections.abc import Mapping
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from pathlib import Path

import yaml
from pydantic import SecretStr

from .errors import SettingsError

DEFAULT_BASE_URL = "https://api.wavespeed.ai"
DEFAULT_CONFIGS = Path("configs")

LOG_FORMATS = ("text", "json")  # the first is the default
TIERS_FILE = Path(str(resources.files(__package__) / "configs" / "tiers.yaml"))


def load_tiers(path: Path = TIERS_FILE) -> tuple[dict[str, tuple[int, int]], str]:
    """The account levels ``(images per minute, max concurrent)`` by tier, and the default
    tier, from the packaged ``configs/tiers.yaml`` (the provider's documentation,
    wavespeed-api.md): when the provider changes them, that file changes, not this code."""
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    tiers = {str(name): (int(limits["images_per_minute"]), int(limits["max_concurrent"]))
             for name, limits in raw["tiers"].items()}
    if raw["default"] not in tiers:
        raise SettingsError(f"{path}: default tier {raw['default']!r} is not one of {', '.join(tiers)}")
    return tiers, str(raw["default"])


# Account limits by tier, and the tier of an account that says nothing (bronze: new accounts).
TIERS, DEFAULT_TIER = load_tiers()


@dataclass(frozen=True)
class Settings:
    api_key: SecretStr | None = None
    base_url: str = DEFAULT_BASE_URL
    redis_url: str | None = None
    s3_endpoint_url: str | None = None
    configs_dir: Path = DEFAULT_CONFIGS
    tier: str = DEFAULT_TIER
    images_per_minute: int = TIERS[DEFAULT_TIER][0]
    max_concurrent: int = TIERS[DEFAULT_TIER][1]
    # Whether the account's limits were set (a tier or numbers) rather than defaulted.
    limits_explicit: bool = False
    request_timeout_s: float = 60.0
    # First poll of a prediction, and the cap of its growing interval (the provider asks
    # for at least 2 s between checks of the same task).
    poll_initial_s: float = 2.0
    poll_max_s: float = 30.0
    # Transient errors (5xx, timeouts) a run may meet before it fails; 429s never count.
    max_transient_retries: int = 8
    # Tasks that submit runs as fast as the account's limits admit (see pipeline/dispatch.py).
    pumps: int = 2
    # A task not acknowledged within this many seconds (its worker died) is delivered again.
    visibility_timeout_s: int = 600
    daily_budget_usd: Decimal | None = None
    # Where the provider POSTs finished predictions (`editpipe webhook-server`), and the
    # secret that signs each run's callback URL. Polling stays the fallback.
    webhook_url: str | None = None
    webhook_secret: SecretStr | None = None
    # The schedules `celery -A workers beat` runs (manifest.md, "Schedules").
    schedules_file: Path = DEFAULT_CONFIGS / "schedules.yaml"
    # Where `editpipe run` keeps its Redis (pipeline/embedded.py, ``state_dir_for``): one
    # folder per output root under ``state_dir`` when set; otherwise beside a local output,
    # or under ``state_home`` for an s3:// one.
    state_dir: Path | None = None
    state_home: Path = Path("~/.local/state").expanduser()
    # Runs one job may have (EDITPIPE_MAX_RUNS; None: the default of ``pipeline.size``); a
    # manifest's own ``max_runs`` takes precedence.
    max_runs: int | None = None
    # Where budget alerts go when the job has no ``notify`` URL (day alerts: first), and how
    # log lines are written: "text", or "json" (one object a line; ``pipeline.logs``).
    alert_url: str | None = None
    log_format: str = "text"
    # How long Redis keeps a finalized job (EDITPIPE_FINISHED_JOB_TTL_S; 0: for ever): its
    # records are in storage by then, and a resume lifts the expiry.
    finished_job_ttl_s: int = 7 * 24 * 3600

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if environ is None else environ
        tier = (env.get("WAVESPEED_TIER") or DEFAULT_TIER).strip().lower()
        if tier not in TIERS:
            raise SettingsError(f"WAVESPEED_TIER={tier!r} is not one of {', '.join(TIERS)}")
        per_minute, concurrent = TIERS[tier]
        # Absolute, so that a worker started in another folder reads the same one.
        configs_dir = Path(env.get("EDITPIPE_CONFIGS") or DEFAULT_CONFIGS).absolute()
        key = env.get("WAVESPEED_API_KEY", "").strip()
        return cls(
            api_key=SecretStr(key) if key else None,
            base_url=env.get("WAVESPEED_BASE_URL", DEFAULT_BASE_URL).rstrip("/") or DEFAULT_BASE_URL,
            redis_url=env.get("REDIS_URL") or None,
            s3_endpoint_url=env.get("S3_ENDPOINT_URL") or None,
            configs_dir=configs_dir,
            tier=tier,
            images_per_minute=_int(env, "WAVESPEED_IMAGES_PER_MINUTE", per_minute),
            max_concurrent=_int(env, "WAVESPEED_MAX_CONCURRENT", concurrent),
            limits_explicit=any(
                env.get(name) for name in ("WAVESPEED_TIER", "WAVESPEED_IMAGES_PER_MINUTE", "WAVESPEED_MAX_CONCURRENT")
            ),
            request_timeout_s=_float(env, "EDITPIPE_REQUEST_TIMEOUT", 60.0),
            poll_initial_s=_float(env, "EDITPIPE_POLL_INITIAL", 2.0),
            poll_max_s=_float(env, "EDITPIPE_POLL_MAX", 30.0),
            max_transient_retries=_int(env, "EDITPIPE_MAX_RETRIES", 8),
            pumps=_int(env, "EDITPIPE_PUMPS", 2),
            visibility_timeout_s=_int(env, "EDITPIPE_VISIBILITY_TIMEOUT", 600),
            daily_budget_usd=_decimal(env, "EDITPIPE_DAILY_BUDGET_USD"),
            webhook_url=(env.get("EDITPIPE_WEBHOOK_URL") or "").rstrip("/") or None,
            webhook_secret=SecretStr(env["EDITPIPE_WEBHOOK_SECRET"]) if env.get("EDITPIPE_WEBHOOK_SECRET") else None,
            schedules_file=Path(env.get("EDITPIPE_SCHEDULES") or configs_dir / "schedules.yaml"),
            state_dir=Path(env["EDITPIPE_STATE_DIR"]).expanduser().absolute() if env.get("EDITPIPE_STATE_DIR") else None,
            state_home=Path(env.get("XDG_STATE_HOME") or Path(env.get("HOME") or "~").expanduser() / ".local" / "state"),
            max_runs=_int(env, "EDITPIPE_MAX_RUNS", 0) or None,
            alert_url=_url(env, "EDITPIPE_ALERT_URL"),
            log_format=_choice(env, "EDITPIPE_LOG_FORMAT", LOG_FORMATS),
            finished_job_ttl_s=_int(env, "EDITPIPE_FINISHED_JOB_TTL_S", 7 * 24 * 3600),
        )

    def with_tier(self, tier: str) -> "Settings":
        per_minute, concurrent = TIERS[tier]
        return replace(self, tier=tier, images_per_minute=per_minute, max_concurrent=concurrent, limits_explicit=True)

    def with_overrides(self, **changes) -> "Settings":
        return replace(self, **changes)

    @property
    def models_dir(self) -> Path:
        return self.configs_dir / "models"

    def require_api_key(self) -> str:
        if self.api_key is None:
            raise SettingsError(
                "no API key: set WAVESPEED_API_KEY, or add --simulate to run against the "
                "built-in simulator (nothing is paid)"
            )
        return self.api_key.get_secret_value()


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, got {raw!r}") from None
    if value <= 0:
        raise SettingsError(f"{name} must be positive, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        return float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number of seconds, got {raw!r}") from None


def _decimal(env: Mapping[str, str], name: str) -> Decimal | None:
    raw = env.get(name)
    if raw in (None, ""):
        return None
    try:
        return Decimal(raw)
    except InvalidOperation:
        raise SettingsError(f"{name} must be a decimal amount in USD, got {raw!r}") from None


def _url(env: Mapping[str, str], name: str) -> str | None:
    raw = (env.get(name) or "").strip()
    if not raw:
        return None
    if not raw.startswith(("http://", "https://")):
        raise SettingsError(f"{name} must be an http:// or https:// URL")
    return raw


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    raw = (env.get(name) or choices[0]).strip().lower()
    if raw not in choices:
        raise SettingsError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw
