"""The domain: aggregates and events, pure code with no NATS and no store.

Two aggregates (eventsourcing ``BaseAggregate[str]``) hold every decision:

- :class:`Colony` (``colony.py``): a colony's owner, executors and users.
- :class:`ProcessGraph` (``graph.py``): a submitted workflow (a single function is a
  graph of one process) with its processes (``process.py``); the workflow checks are in
  ``submission.py`` and its events in ``graph_events.py``.

**The event model.**

- *One command, one event.* Each command method (``Colony.add_executor``,
  ``ProcessGraph.close``, ...) checks the rules, then triggers exactly one event on its
  aggregate; a refused command raises a :class:`DomainError` (:mod:`.errors`, with the
  status to reply with) and triggers nothing. The application saves an aggregate's
  pending events (``collect_events()``) atomically.
- *Events state consequences.* An event lists everything its command changed: a close
  lists the children it made ready with their inputs, a failure the processes it
  cancelled and why, every graph event the graph's state after it and the work it made
  ready (``event.ready``, for the engine to publish). Readers of the log never re-run
  the rules; ``apply`` only copies the event into the aggregate, so replaying the events
  rebuilds the same aggregate.
- *Audit fields.* Every event has ``actor`` (the id of the signer of the command, or
  the engine's id for what it does itself, e.g. timeouts) and ``command`` (the signed
  command envelope's exact bytes, ``b""`` if none). Its ``timestamp`` is the ``now``
  the command was given: the domain never reads the clock.
- *Ids are subjects.* Aggregate ids are strings that double as NATS subject tokens:
  ``"<colonyname>.colony"`` and ``"<colonyname>.graph.<processgraphid>"``. Colony names
  and executor types are 1 to 64 letters, digits, ``_`` or ``-``; graph and process ids
  64 lowercase hex characters.
- *Storable.* Event fields are str, int, float, bool, None, bytes, datetime, and lists
  and dicts of these (specs as ``models.to_dict`` dicts), so any eventsourcing
  transcoder can store them.
"""

from colonies_es.domain.base import (
    AuditedAggregate,
    AuditedCreationEvent,
    AuditedEvent,
    colony_aggregate_id,
    derives_graph,
    graph_aggregate_id,
    graph_id_of_process,
    is_id,
    new_graph_id,
    new_id,
    new_process_id,
)
from colonies_es.domain.colony import (
    Colony,
    ColonyCreated,
    ColonyRemoved,
    ExecutorAdded,
    ExecutorApproved,
    ExecutorRejected,
    ExecutorRemoved,
    UserAdded,
)
from colonies_es.domain.errors import (
    BadRequest,
    Conflict,
    DomainError,
    Forbidden,
    NotFound,
    NothingCame,
)
from colonies_es.domain.graph import (
    EXEC_TIMEOUT_ERROR,
    WAIT_TIMEOUT_ERROR,
    ProcessGraph,
    graph_ids,
    graph_state,
)
from colonies_es.domain.graph_events import (
    AttemptFailed,
    AttributeAdded,
    ChildAdded,
    ChildrenAdded,
    ExecutionTimedOut,
    GraphCancelled,
    GraphEvent,
    GraphRemoved,
    GraphRerun,
    GraphSubmitted,
    LogAdded,
    OutputSet,
    ProcessAssigned,
    ProcessClosed,
    ProcessFailed,
    SubmittedProcess,
    WaitTimedOut,
)
from colonies_es.domain.process import Attempt, Deadline, ProcessNode, ReadyProcess

__all__ = [
    "EXEC_TIMEOUT_ERROR",
    "WAIT_TIMEOUT_ERROR",
    "Attempt",
    "AttemptFailed",
    "AttributeAdded",
    "AuditedAggregate",
    "AuditedCreationEvent",
    "AuditedEvent",
    "BadRequest",
    "ChildAdded",
    "ChildrenAdded",
    "Colony",
    "ColonyCreated",
    "ColonyRemoved",
    "Conflict",
    "Deadline",
    "DomainError",
    "ExecutionTimedOut",
    "ExecutorAdded",
    "ExecutorApproved",
    "ExecutorRejected",
    "ExecutorRemoved",
    "Forbidden",
    "GraphCancelled",
    "GraphEvent",
    "GraphRemoved",
    "GraphRerun",
    "GraphSubmitted",
    "LogAdded",
    "NotFound",
    "NothingCame",
    "OutputSet",
    "ProcessAssigned",
    "ProcessClosed",
    "ProcessFailed",
    "ProcessGraph",
    "ProcessNode",
    "ReadyProcess",
    "SubmittedProcess",
    "UserAdded",
    "WaitTimedOut",
    "colony_aggregate_id",
    "derives_graph",
    "graph_aggregate_id",
    "graph_id_of_process",
    "graph_ids",
    "graph_state",
    "is_id",
    "new_graph_id",
    "new_id",
    "new_process_id",
]
