"""An HTTP simulator of the WaveSpeed v3 API, for tests and for dry runs that pay nothing.

It speaks the real API's routes and envelopes (submit, poll, sync mode, base64 output,
uploads, webhooks, and the account endpoints: recent predictions and billing records, see
``account.py``), enforces the account limits of a tier, renders real output images, bills
each completed prediction once, and injects faults on demand: random by rate, or exactly
where a test wants them through markers in the prompt (``[sim:fail]``, ``[sim:400]``,
``[sim:500-once]``, ``[sim:500-after-create-once]`` (a 5xx for a prediction that was made
and will be billed), ``[sim:drop-once]``, ``[sim:drop-uncreated-once]`` (the connection
dropped before anything was made), ``[sim:slow]``, ``[sim:output-500-once]``: the first
download of the output answers 500; ``[sim:fail:CODE]``, ``[sim:fail-once:CODE]``,
``[sim:status:timeout]`` and the like: failure codes and terminal statuses, see ``faults``;
``[sim:nsfw]``: the prediction completes with ``has_nsfw_contents`` true for its output).
``/_sim/stats`` reports what
happened, including what a correct client must never cause (duplicate submissions, 429s).

    from pipeline.simulator import SimConfig, Simulator
    with Simulator(SimConfig(latency_s=0.2, tier="bronze")) as sim:
        ...  # point the client at sim.base_url

A stand-in for the provider at the adapters' level (layer 2): it imports only the domain
(``modelspec``, ``settings``' tiers), never the client or the engine it is there to judge.
"""

from .config import SimConfig
from .server import Simulator

__all__ = ["SimConfig", "Simulator"]
