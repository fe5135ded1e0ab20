"""``python -m pipeline.simulator``: the same as ``editpipe simulate-api``."""

from .cli import simulate_api

simulate_api(prog_name="python -m pipeline.simulator")
