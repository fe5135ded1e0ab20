"""Where a finished job's records are, for the commands that read them (``review``, ``publish``).

A job is found through the Redis the workers use (its record names its output root), or
under the output root given with ``--output``: the only way for a job of ``editpipe run``,
whose private Redis is gone once it ends.
"""

from __future__ import annotations

from ..errors import JobNotFound, SettingsError
from ..settings import Settings
from ..state import State
from ..storage import Storage, open_storage


def job_storage(settings: Settings, job_id: str, output: str | None) -> Storage:
    """The output root holding ``job_id``'s records: ``output`` when given, else the root its
    Redis record names."""
    if output:
        return open_storage(output, settings)
    if not settings.redis_url:
        raise SettingsError(f"name job {job_id}'s output root with --output ROOT (or set REDIS_URL to find it "
                            "through the workers' Redis)")
    try:
        root = State.from_url(settings.redis_url).jobs.status(job_id).output
    except JobNotFound as missing:
        raise JobNotFound(f"{missing}; if it ran elsewhere (`editpipe run`), name its output root: --output ROOT") \
            from None
    return open_storage(root, settings)
