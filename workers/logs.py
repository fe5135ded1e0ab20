"""Celery's logging, made editpipe's (``pipeline.logs``): workers, their pool children and
beat write their lines in ``EDITPIPE_LOG_FORMAT``, Celery's own lines included.

- ``setup_logging``: Celery sends this signal where it would set up its logging (the worker's
  main process, beat); a receiver makes Celery leave logging to it, so ``pipeline.logs``
  installs its handler, with Celery's ``--loglevel`` and ``--logfile``. Pool children are
  forked from the main process and keep that handler.
- In the json format, the app's import sets logging up already (``configure_early``), so a
  warning Celery gives before ``setup_logging`` is a JSON line too; and what Celery prints
  itself is made a log line: the worker's banner becomes one line (``Worker``), its signal
  handlers' messages ("Warm shutdown") are logged (``safe_say``), beat starts quiet (``Beat``).
- In either format, stray writes to standard output and error are logged, one line each
  (``redirect_stdouts``, as Celery does when it sets logging up itself).
"""

from __future__ import annotations

import logging
import sys

from celery import current_app
from celery.apps.beat import Beat as CeleryBeat
from celery.apps import worker as celery_worker
from celery.apps.worker import Worker as CeleryWorker
from celery.signals import setup_logging

from pipeline import logs
from pipeline.errors import SettingsError
from pipeline.settings import Settings

log = logging.getLogger(__name__)
# Celery's default worker line (``worker_log_format``), kept for the text format.
CELERY_TEXT_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(message)s"


def _settings() -> Settings | None:
    try:
        return Settings.from_env()
    except SettingsError:
        return None  # the worker meets the error itself at its first task, and says so


def _json() -> bool:
    settings = _settings()
    return settings is not None and settings.log_format == "json"


@setup_logging.connect
def _setup_logging(loglevel: int | str | None = None, logfile: str | None = None, **_: object) -> None:
    settings = _settings()
    # The stream as it is now: stderr is redirected to the log below.
    logs.configure(settings, level=loglevel or logging.INFO, text_format=CELERY_TEXT_FORMAT,
                   logfile=logfile or None, stream=sys.stderr)
    if settings is not None and settings.log_format == "json":
        # The worker's signal handlers say "worker: Warm shutdown (MainProcess)" and the like
        # with ``safe_say``, a raw write to the standard streams: a log line instead.
        celery_worker.safe_say = _say
    # What Celery does when it sets up logging itself (``worker_redirect_stdouts``): a stray
    # print is a log line (a JSON one, in that format), not a raw line in the worker's log.
    current_app.log.redirect_stdouts("WARNING")  # a name: pool children read it back from the environment


def _say(message: str, stream: object = None) -> None:
    logging.getLogger(celery_worker.__name__).warning("%s", message.strip())


def configure_early() -> None:
    """In the json format, log this process's lines so from the moment the app is imported:
    a warning Celery gives before it sets up logging (running as root, say) is a JSON line
    too. ``setup_logging`` replaces the handler with Celery's level and log file. A process
    that configured its logging already (the CLI) is left alone."""
    settings = _settings()
    if settings is not None and settings.log_format == "json" and not logging.getLogger().handlers:
        logs.configure(settings, stream=sys.stderr)


class Worker(CeleryWorker):
    """``celery worker``, whose banner is one log line in the json format."""

    def emit_banner(self) -> None:
        if not _json():
            super().emit_banner()
            return
        log.info("celery worker %s starting", self.hostname,
                 extra={"startup": self.startup_info(artlines=False).strip()})


class Beat(CeleryBeat):
    """``celery beat``, quiet in the json format (its own log lines say it started)."""

    def __init__(self, *args: object, quiet: bool = False, **kwargs: object):
        super().__init__(*args, quiet=quiet or _json(), **kwargs)
