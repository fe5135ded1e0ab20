"""Logs: how every editpipe process writes its log lines (``EDITPIPE_LOG_FORMAT``).

``configure`` installs one handler on the root logger, in the CLI (``editpipe …``, the
webhook server, the embedded stack of ``editpipe run``), in Celery workers, their pool
children (forked with it) and beat (``workers.logs`` hooks Celery's ``setup_logging``):
- ``text`` (the default): the line format the caller gives (Celery's own for the workers);
- ``json``: one JSON object a line (python-json-logger): ``time`` (UTC, ISO 8601), ``level``,
  ``logger``, ``message``, an exception's traceback as ``exc_info``, and, where they apply,
  ``job_id``, ``index`` (the run's) and ``prediction_id``, plus any ``extra=`` fields.

The run a line is about comes from ``extra=`` or, when the line says nothing, from
``run_context`` (context variables: set around each step of a run by ``pipeline.dispatch``
and the collect tasks, so every line a step logs carries them, in threads and tasks alike).

Secrets: no code logs the API key or a webhook secret (they are ``SecretStr`` and error
messages name neither). As a safety net the formatter replaces each secret the process knows
(``Settings.api_key``, ``Settings.webhook_secret``, and those learnt later: ``redact``) by
``[redacted]`` in the finished line, so that even a traceback or a library's line that
quotes one does not carry it.
"""

from __future__ import annotations

import contextvars
import io
import json
import logging
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import IO

from pythonjsonlogger.json import JsonFormatter

from .settings import Settings

REDACTED = "[redacted]"
TEXT_FORMAT = "%(message)s"
_job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("job_id", default=None)
_index: contextvars.ContextVar[int | None] = contextvars.ContextVar("index", default=None)
_prediction_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("prediction_id", default=None)
CONTEXT = {"job_id": _job_id, "index": _index, "prediction_id": _prediction_id}
_MINE = "_editpipe_handler"  # marks the handler ``configure`` installed, so a second call replaces it


@contextmanager
def run_context(job_id: str, index: int | None = None, prediction_id: str | None = None) -> Iterator[None]:
    """Every line logged inside (that does not say otherwise) is about this run."""
    tokens = [(_job_id, _job_id.set(job_id)), (_index, _index.set(index)),
              (_prediction_id, _prediction_id.set(prediction_id))]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def set_prediction(prediction_id: str) -> None:
    """The run of the current ``run_context`` now has this prediction (its submit answered)."""
    if _job_id.get() is not None:
        _prediction_id.set(prediction_id)


class RunContext(logging.Filter):
    """Adds the current run's ``job_id``, ``index`` and ``prediction_id`` to a record that
    does not carry them already (``extra=`` wins); a field that does not apply is left out."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in CONTEXT.items():
            if getattr(record, name, None) is None:
                value = var.get()
                if value is not None:
                    setattr(record, name, value)
        return True


class Redacting(logging.Formatter):
    """Formats with ``inner``, then replaces every secret known to this process (``redact``)
    in the finished line (the message, its arguments, a traceback, any extra field), as
    written and as JSON escapes it."""

    def __init__(self, inner: logging.Formatter):
        super().__init__()
        self._inner = inner

    def format(self, record: logging.LogRecord) -> str:
        line = self._inner.format(record)
        for form in _redacted:
            if form in line:
                line = line.replace(form, REDACTED)
        return line


_redacted: list[str] = []  # every form of every secret, longest first


def redact(secrets: Iterable[str]) -> None:
    """From now on, no line this process logs shows any of ``secrets`` (a secret learnt at
    run time, such as the account's webhook secret the server fetches, is added here)."""
    forms = set(_redacted)
    for secret in secrets:
        if secret:
            forms.update({secret, json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]})
    # Longest first, so that a secret containing another is replaced whole.
    _redacted[:] = sorted(forms, key=len, reverse=True)


class LineLog(io.TextIOBase):
    """A text stream whose every line becomes a log record of ``logger``: what a command
    prints on standard error (messages, plain progress lines) is a JSON line too, in the
    json format, instead of loose text among the log's objects."""

    def __init__(self, logger: logging.Logger, level: int = logging.INFO):
        super().__init__()
        self._logger, self._level, self._partial = logger, level, ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            if line.strip():
                self._logger.log(self._level, "%s", line.rstrip())
        return len(text)

    def flush(self) -> None:
        if self._partial.strip():
            self._logger.log(self._level, "%s", self._partial.rstrip())
        self._partial = ""


class CurrentStderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a line is logged, as logging's last resort
    does: a command run by a test runner logs into the runner's capture, not a closed one."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self) -> IO[str]:  # type: ignore[override]
        return sys.stderr


def secrets_of(settings: Settings | None) -> list[str]:
    if settings is None:
        return []
    return [s.get_secret_value() for s in (settings.api_key, settings.webhook_secret) if s is not None]


def json_formatter() -> logging.Formatter:
    return JsonFormatter(["levelname", "name", "message"], rename_fields={"levelname": "level", "name": "logger"},
                         timestamp="time", json_ensure_ascii=False)


def configure(settings: Settings | None, *, level: int | str = logging.INFO, text_format: str = TEXT_FORMAT,
              text_level: int | str | None = None, stream: IO[str] | None = None, logfile: str | None = None,
              ) -> logging.Handler:
    """Make the root logger write this process's lines in ``settings.log_format`` (text when
    ``settings`` is None: they could not be read), to ``logfile``, ``stream``, or else
    whatever ``sys.stderr`` is at each line (``CurrentStderr``).
    ``text_level``: the level in text format when it differs from ``level``. A second call
    replaces the handler the first installed. Warnings (``warnings.warn``) become log lines."""
    as_json = settings is not None and settings.log_format == "json"
    handler: logging.Handler
    if logfile:
        handler = logging.FileHandler(logfile, encoding="utf-8")
    else:
        handler = logging.StreamHandler(stream) if stream is not None else CurrentStderr()
    inner = json_formatter() if as_json else logging.Formatter(text_format)
    redact(secrets_of(settings))
    handler.setFormatter(Redacting(inner))
    handler.addFilter(RunContext())
    setattr(handler, _MINE, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _MINE, False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level if as_json or text_level is None else text_level)
    # httpx logs every request at INFO with its full URL: a poll a line, and a notify URL's
    # path or a callback's query (tokens) in the log. Its warnings still show.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.captureWarnings(True)
    return handler

