"""Listings of ended graphs and processes, from the read model instead of engine memory.

The engine keeps only live work in memory (issue 14): a colony's graphs that have not
ended, and none of those that have. Its listing ops (``list_processes``,
``get_processgraphs``, which the ColonyOS gateway uses; the client's own listings query
the read model directly) answer live states (WAITING, RUNNING) from memory and forward
every other listing to the projectors' read model, which holds the whole history on
disk:

- as a :class:`~colonies_es.protocol.ForwardedList` on
  ``colonies.q.forwarded_list``, sealed with the log's seal key when the engine has one
  (the projector then takes only what that key sealed: the engine has already checked
  that the caller is a member, and the projector checks it again);
- with ``after`` = the last stream sequence this engine has applied or written, so the
  answer includes everything the caller saw acknowledged (read your writes), waiting up
  to :data:`FORWARD_WAIT` seconds for the view to get there;
- a refusal of the projector keeps its status and message; no projector answering is
  503 with one line saying so.
"""

from __future__ import annotations

from typing import Literal

import msgspec
import nats.errors
from nats.micro.request import ERROR_CODE_HEADER, ERROR_HEADER

from colonies_es.domain import DomainError
from colonies_es.engine.aggregates import Aggregates
from colonies_es.protocol import FORWARDED_LIST_SUBJECT, ForwardedList, ListQuery

__all__ = ["FORWARD_WAIT", "forwarded_listing"]

FORWARD_WAIT = 10.0
"""Seconds the projector may wait for its view to reach what the engine has applied."""

_REPLY_MARGIN = 2.0
"""Seconds the engine waits for the reply beyond what the projector may wait."""


async def forwarded_listing(
    aggregates: Aggregates,
    what: Literal["graphs", "processes"],
    body: ListQuery,
    caller: str,
) -> bytes:
    """The read model's answer (JSON models, newest first) to the listing ``body`` of
    ``caller``, a member of the colony; DomainError with the projector's status, or 503
    when no projector answers."""
    if aggregates.nc is None:
        raise DomainError(503, "the engine is not connected: no listing of ended graphs")
    query = ForwardedList(
        what=what,
        colonyname=body.colonyname,
        state=body.state,
        count=body.count,
        caller=caller,
        after=aggregates.state.reached,
        wait=FORWARD_WAIT,
    )
    subject = FORWARDED_LIST_SUBJECT
    payload = msgspec.json.encode(query)
    sealer = aggregates.store.connection.sealer
    if sealer is not None:
        payload = sealer.seal_bytes(subject, payload)
    try:
        reply = await aggregates.nc.request(subject, payload, timeout=FORWARD_WAIT + _REPLY_MARGIN)
    except nats.errors.NoRespondersError:
        raise DomainError(
            503,
            "no projector answers listings of ended graphs and processes: start one "
            "(colonies server runs one unless --no-projector)",
        ) from None
    except nats.errors.TimeoutError:
        raise DomainError(503, "the projector did not answer the listing in time") from None
    headers = reply.headers or {}
    if ERROR_CODE_HEADER in headers:
        status = int(headers[ERROR_CODE_HEADER])
        raise DomainError(status, headers.get(ERROR_HEADER, f"the projector refused ({status})"))
    return reply.data
