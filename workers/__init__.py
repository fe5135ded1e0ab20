"""Celery workers for editpipe: ``celery -A workers worker``, and ``celery -A workers beat``
for the schedules."""

from . import beat  # noqa: F401 - makes beat's scheduler the schedules file's
from .celery_app import app

__all__ = ["app"]
