"""The colonies client: pycolonies' API over NATS, synchronous and asyncio.

- :class:`Colonies`: the synchronous client (scripts, executed functions).
- :class:`AsyncColonies`: the same operations as coroutines (executors, services).
- :func:`colonies_client`: a client and identity from ``COLONIES_*`` variables.
- :class:`ColoniesError` / :class:`ColoniesConnectionError`: refused / not delivered.
- :func:`work_consumer_config`: the work consumer the engine and executors share.
"""

from colonies_es.client.async_client import AsyncColonies
from colonies_es.client.environment import colonies_client
from colonies_es.client.errors import ColoniesConnectionError, ColoniesError
from colonies_es.client.sync_client import Colonies
from colonies_es.client.work import work_consumer_config

__all__ = [
    "AsyncColonies",
    "Colonies",
    "ColoniesConnectionError",
    "ColoniesError",
    "colonies_client",
    "work_consumer_config",
]
