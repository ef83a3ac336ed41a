"""Messages appended straight to the event stream, by anyone but the engine, neither break
nor change the view.

Two projectors follow the same log: one with the log's seal key (the store drops what the
engine did not seal) and one without (the store hands everything decodable to the
projector, whose own checks must then skip it: foreign topics, unreadable states, classes
that are not events, wrong versions, unknown or duplicate aggregates, and an event whose
``apply`` fails halfway, after changing the aggregate). After the engine goes on writing,
both views are the same, row for row, and read what the engine says.
"""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import nats
from eventsourcing.persistence import StoredEvent

from colonies_es import crypto
from colonies_es.client.queries import QueryClient
from colonies_es.domain import graph_aggregate_id
from colonies_es.states import ProcessState
from colonies_es.store.codec import MsgspecTranscoder, encode_envelope
from tests.stack import Stack
from tests.test_projector_support import (
    EXECUTOR_TYPE,
    ProjectorProcess,
    dump_view,
    seed_workflow,
    wait_for_view,
)

_state = MsgspecTranscoder().encode
EVENTS = "colonies_es.domain.graph_events"
NOT_AN_EVENT = "colonies_es.domain.graph:ProcessGraph"


def forge(url: str, messages: list[tuple[str, bytes]]) -> None:
    """Publishes (subject, payload) messages to the stream, as an intruder would."""

    async def publish() -> None:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            for subject, payload in messages:
                await js.publish(subject, payload)
        finally:
            await nc.close()

    asyncio.run(publish())


def envelope(aggregate_id: str, version: int, topic: str, state: bytes) -> tuple[str, bytes]:
    """An unsealed event message on the aggregate's subject."""
    stored = StoredEvent(aggregate_id, version, topic, state)
    return f"colonies.ev.{aggregate_id}", encode_envelope(stored)


def audit() -> dict[str, object]:
    return {"timestamp": datetime.now(UTC), "actor": "f" * 64, "command": b""}


def test_events_appended_by_others_neither_break_nor_change_the_view(
    stack: Stack, tmp_path: Path
) -> None:
    colony = stack.new_colony()
    executor = stack.new_executor(colony, EXECUTOR_TYPE)
    url = stack.nats.url
    with (
        ProjectorProcess(url, tmp_path / "keyed.sqlite", stack.engine.seal_key, tmp_path) as keyed,
        ProjectorProcess(url, tmp_path / "keyless.sqlite", None, tmp_path) as keyless,
        QueryClient(colony.owner_prvkey, servers=[url]) as query,
    ):
        keyed.start()
        keyless.start()
        graph = stack.client.submit_workflow(seed_workflow(colony.name), colony.owner_prvkey)
        running = stack.client.assign(colony.name, 10, executor)
        aggregate = graph_aggregate_id(colony.name, graph.processgraphid)
        written = query.log_position()
        wait_for_view(keyed.db, written)
        wait_for_view(keyless.db, written)
        version = int(
            sqlite3.connect(keyed.db)
            .execute("SELECT version FROM aggregates WHERE aggregate_id = ?", (aggregate,))
            .fetchone()[0]
        )
        nowhere = graph_aggregate_id(colony.name, "e" * 64)
        fails_halfway = {  # fails the running process, then cancels a process that is not there
            **audit(),
            "ready": [],
            "graphstate": int(ProcessState.FAILED),
            "processid": running.processid,
            "executorid": crypto.id_from_private_key(executor),
            "attempt": 1,
            "errors": ["forged"],
            "retried": False,
            "cancelled": ["0" * 64],
            "cancelreason": "forged",
        }
        foreign_aggregate = {"originator_topic": "os:system", **audit()}
        forge(
            url,
            [
                (f"colonies.ev.{aggregate}", b"not an event at all"),
                envelope(aggregate, version + 1, "elsewhere.module:Thing", _state({})),
                envelope(aggregate, version + 1, f"{EVENTS}:ProcessClosed", b"\xc1\xc1"),
                envelope(aggregate, version + 1, NOT_AN_EVENT, _state({})),
                envelope(aggregate, version + 7, f"{EVENTS}:ProcessClosed", _state(audit())),
                envelope(aggregate, 1, f"{EVENTS}:GraphSubmitted", _state(audit())),
                envelope(nowhere, 2, f"{EVENTS}:ProcessClosed", _state(audit())),
                envelope(nowhere, 1, f"{EVENTS}:GraphSubmitted", _state(foreign_aggregate)),
                envelope(aggregate, version + 1, f"{EVENTS}:ProcessFailed", _state(fails_halfway)),
            ],
        )
        stack.client.close(running.processid, [1, 2], executor)  # the engine goes on
        last = stack.client.assign(colony.name, 10, executor)
        stack.client.close(last.processid, [3], executor)
        written = query.log_position()
        wait_for_view(keyed.db, written)
        wait_for_view(keyless.db, written)
        view = query.get_graph(graph.processgraphid)
        keyed.stop()
        keyless.stop()

    assert dump_view(keyless.db) == dump_view(keyed.db)
    assert view.graph == stack.client.get_processgraph(graph.processgraphid, colony.owner_prvkey)
    assert [p.state for p in view.processes] == [ProcessState.SUCCESS] * 2
    for reason in (  # every forgery the store let through (all but the first)
        "foreign topic",
        "cannot decode it",  # an unreadable state; a class that is not an event
        "it does not follow the aggregate",
        "it creates an aggregate that exists",
        "no such aggregate",
        "foreign aggregate 'os:system'",
        "it does not apply",
    ):
        assert reason in keyless.output()
    assert "skipping event" not in keyed.output()
