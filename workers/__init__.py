"""Celery workers for editpipe: ``celery -A workers worker``."""

from .celery_app import app

__all__ = ["app"]
