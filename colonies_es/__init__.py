"""colonies-es: ColonyOS-style workflows, event-sourced on NATS JetStream.

What pycolonies users import::

    from colonies_es import Colonies, func_spec, Workflow
"""

from colonies_es.client import (
    AsyncColonies,
    Colonies,
    ColoniesConnectionError,
    ColoniesError,
    colonies_client,
)
from colonies_es.crypto import Crypto
from colonies_es.models import (
    Conditions,
    FuncSpec,
    Process,
    ProcessGraph,
    Workflow,
    func_spec,
)

__all__ = [
    "AsyncColonies",
    "Colonies",
    "ColoniesConnectionError",
    "ColoniesError",
    "Conditions",
    "Crypto",
    "FuncSpec",
    "Process",
    "ProcessGraph",
    "Workflow",
    "colonies_client",
    "func_spec",
]
