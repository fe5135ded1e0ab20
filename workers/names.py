"""The Celery task names, used by the tasks themselves, the CLI's enqueuers, the webhook
server and the watchdog (which send them by name, without importing the tasks)."""

ENQUEUE_JOB = "editpipe.enqueue_job"
ENQUEUE_RUNS = "editpipe.enqueue_runs"
PUMP = "editpipe.pump"
POLLER = "editpipe.poller"
COLLECT = "editpipe.collect"
COLLECT_RUNS = "editpipe.collect_runs"
FINALIZE = "editpipe.finalize"
RUN_SCHEDULE = "editpipe.run_schedule"
SEND_ALERTS = "editpipe.send_alerts"
