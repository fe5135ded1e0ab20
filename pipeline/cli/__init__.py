"""The ``editpipe`` command line (layer 5, an interface): ``main`` is the entry point.

``main`` holds the command group and the job commands, ``schedules`` the ``editpipe
schedules`` group, ``report`` the ``editpipe report`` command, ``output`` what they all
print (progress, summaries, exit codes). An interface may import every layer below it and
``workers`` (to enqueue); nothing in the library imports the CLI.
"""

from .main import EditpipeGroup, main

__all__ = ["EditpipeGroup", "main"]
