"""The broker transport: kombu's Redis transport, fixed to survive a Redis restart.

Why it exists: with Redis gone (restarted, or down a while), a worker's consumer sees its
connection fail and closes it before reconnecting. kombu's ``Connection.collect()`` forgets
the transport's connection parameters (``transport.client = None``) before the channel is
closed; closing it then puts the worker's unacknowledged messages back in the queue, which
needs a Redis client, which needs those parameters: ``AttributeError: 'NoneType' object has
no attribute 'hostname'``, which no ``ignore_errors`` catches, and the worker exits
("Unrecoverable error", the celery/kombu#582 family; seen with celery and kombu 5.7.0). The
acks of tasks still running when the connection broke go through the same old channel and
fail the same way.

``Transport`` keeps its connection parameters: the old channel's restore then fails with a
connection error (Redis is not answering), which the consumer ignores as meant, the worker
reconnects, and the old channel's acks reach Redis once it answers again. What the old
channel could not hand back is handed back after the reconnect (``workers.consumer``).

The app selects it with ``broker_transport`` (``workers.celery_app``); a ``redis://`` URL
is still the broker's address.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis


class Transport(kombu_redis.Transport):
    """kombu's Redis transport whose ``client`` (the kombu connection it was made for, which
    holds the broker's address) outlives the connection's close, as its channels' link to
    it outlives theirs."""

    _client: Any = None

    @property
    def client(self) -> Any:
        return self._client

    @client.setter
    def client(self, value: Any) -> None:
        # kombu sets None to break a reference cycle; the channel still needs the address.
        if value is not None:
            self._client = value

    def close_channel(self, channel: Any) -> None:
        super().close_channel(channel)
        # The messages the channel delivered are acknowledged through it when their tasks end.
        channel.connection = self
