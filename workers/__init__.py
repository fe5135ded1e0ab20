"""Celery workers for editpipe: ``celery -A workers worker``, and ``celery -A workers beat``
for the schedules.

An interface (layer 5): it owns the Celery app (``celery_app``), the task names
(``names``), the thin tasks that call the engine (``tasks``, ``schedule_tasks``; they implement
``pipeline.dispatch.Tasks``, the protocol the engine asks for a step through) and beat's
scheduler (``beat``). It may import every layer of ``pipeline``; nothing in ``pipeline``
below the interfaces imports it."""

from . import beat  # noqa: F401 - makes beat's scheduler the schedules file's
from .celery_app import app

__all__ = ["app"]
