"""Keep a worker alive when Redis goes away: a fix for kombu's Redis channel, installed in worker processes.

When the broker connection breaks, Celery's consumer first `collect()`s the connection (closing its channels while
the transport is still attached), then `close()`s it (the transport detached). kombu's Redis `Channel.close()`
first drains a pending BRPOP; with the server gone that read raises a connection error, which aborts the close
before the channel is marked closed or its unacknowledged messages are handed back, and `collect()` swallows it.
If closing another channel (a fanout one: gossip, remote control) then fails too, the task channel stays open
until `close()`, which restores its unacked messages through a detached transport: `AttributeError: 'NoneType'
object has no attribute 'hostname'`, not a connection error, so Celery logs "Unrecoverable error" and the worker
shuts down instead of reconnecting. Which socket notices the dead server first decides it, so it is intermittent
(it hit 2 of 5 Redis kills of the fault suite in one run under load).

The fix: a failed read of the pending BRPOP does not abort the close. The channel closes in `collect()` as it
should; its unacked messages cannot be handed back to a dead server, so Redis redelivers them after the
visibility timeout (or, if Redis lost them, the reconciler re-dispatches their jobs).
"""

from __future__ import annotations

import logging
from queue import Empty

from kombu.transport import redis as kombu_redis

log = logging.getLogger(__name__)


class Channel(kombu_redis.Channel):
    """kombu's Redis channel, closing completely even when the broker died with a BRPOP pending."""

    def close(self) -> None:
        if self._in_poll:
            try:
                self._brpop_read()
            except Empty:
                pass
            except self.connection.connection_errors as exc:  # the reply will never come: finish closing
                log.info("broker gone while closing a channel (%s); closing it anyway", exc)
        super().close()


def install() -> None:
    """Make kombu's Redis transport open this channel class in this process (idempotent)."""
    kombu_redis.Transport.Channel = Channel
