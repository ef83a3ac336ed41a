"""NATS authorization by role (issue 9.1), on a real nats-server configured by
:mod:`colonies_es.nats_auth`: every component works with its own credential, and each
credential is refused everything beyond its role, which the stream's last sequence shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest
from nats.js.api import ConsumerConfig

from colonies_es import crypto, func_spec
from colonies_es.client import ColoniesConnectionError
from colonies_es.client.queries import QueryClient
from colonies_es.protocol import FORWARDED_LIST_SUBJECT, WORK_STREAM, work_consumer
from tests.secure_stack import ALPHA, BETA, COLONY, SecureStack, start_secure_stack
from tests.test_projector_support import ProjectorProcess

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureStack]:
    stack = start_secure_stack(tmp_path_factory.mktemp("secure"))
    yield stack
    stack.stop()


async def _last_sequence(stack: SecureStack) -> int:
    nc = await stack.access("engine").connect("test admin")
    try:
        return int((await nc.jetstream().stream_info("COLONIES")).state.last_seq)
    finally:
        await nc.close()


async def _refused(
    stack: SecureStack, credential: str, action: Callable[[Any], Awaitable[Any]]
) -> str:
    """Runs ``action(nc)`` as ``credential``; returns the permissions violation the
    server reported (the test fails if none comes within 10 s)."""
    errors: list[Exception] = []

    async def remember(error: Exception) -> None:
        errors.append(error)

    nc = await stack.access(credential).connect("test", error_cb=remember)
    try:
        # A request whose publish was refused gets no answer.
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            await action(nc)
        await nc.flush()
        deadline = time.monotonic() + 10
        while not any("permissions violation" in str(e).lower() for e in errors):
            assert time.monotonic() < deadline, f"not refused; errors: {errors}"
            await asyncio.sleep(0.05)
        return next(str(e) for e in errors if "permissions violation" in str(e).lower())
    finally:
        await nc.close()


async def test_an_anonymous_connection_is_refused(secure: SecureStack) -> None:
    with pytest.raises(nats.errors.Error, match=r"[Aa]uthorization"):
        await nats.connect(secure.nats.url, allow_reconnect=False, connect_timeout=5)


def test_a_workflow_runs_with_each_component_on_its_own_credential(
    secure: SecureStack, tmp_path: Path
) -> None:
    """Engine (engine), projector (reader), executor (executor-alpha), submitter and
    reader of the view (client): the seed workflow runs and its view answers."""
    owner = secure.client()
    executor_key = crypto.new_private_key()
    owner.add_executor(
        {
            "executorid": crypto.id_from_private_key(executor_key),
            "executortype": ALPHA,
            "executorname": "alpha-1",
            "colonyname": COLONY,
        },
        secure.colony_prvkey,
    )
    owner.approve_executor(COLONY, "alpha-1", secure.colony_prvkey)
    projector = ProjectorProcess(
        secure.nats.url,
        tmp_path / "view.sqlite",
        secure.engine.seal_key,
        tmp_path,
        extra_env={"COLONIES_NATS_NKEY_FILE": str(secure.seeds["reader"])},
    )
    with projector.start():
        submitted = owner.submit_func_spec(
            func_spec("gen", [], COLONY, ALPHA), secure.colony_prvkey
        )
        executor = secure.client("executor-alpha")
        process = executor.assign(COLONY, 20, executor_key)
        assert process.processid == submitted.processid
        executor.close(process.processid, [42], executor_key)
        with QueryClient(
            secure.colony_prvkey, servers=[secure.nats.url], nkey_file=str(secure.seeds["client"])
        ) as queries:
            queries.wait_for_position(queries.log_position(), timeout=20)
            assert queries.get_process(submitted.processid).output == [42]


async def test_a_client_cannot_touch_the_log_or_the_work(secure: SecureStack) -> None:
    before = await _last_sequence(secure)

    async def append(nc: Any) -> None:
        await nc.publish(f"colonies.ev.{COLONY}.graph.forged", b"x" * 1000)

    async def direct_get(nc: Any) -> None:
        await nc.request("$JS.API.DIRECT.GET.COLONIES", b'{"seq": 1}', timeout=1)

    async def consume_events(nc: Any) -> None:
        await nc.jetstream(timeout=1).add_consumer("COLONIES", ConsumerConfig(name="spy"))

    async def pull_work(nc: Any) -> None:
        subject = f"$JS.API.CONSUMER.MSG.NEXT.{WORK_STREAM}.{work_consumer(COLONY, ALPHA)}"
        await nc.request(subject, b'{"batch": 1, "expires": 500000000}', timeout=1)

    async def read_replies(nc: Any) -> None:
        await nc.subscribe("_INBOX.>")

    async def forward_a_listing(nc: Any) -> None:  # names its caller: the engine's alone
        await nc.request(FORWARDED_LIST_SUBJECT, b"{}", timeout=1)

    for action in (append, direct_get, consume_events, pull_work, forward_a_listing):
        assert "for publish to" in await _refused(secure, "client", action)
    assert "for subscription" in await _refused(secure, "client", read_replies)
    assert await _last_sequence(secure) == before


async def test_an_executor_pulls_its_own_type_only_and_cannot_append(
    secure: SecureStack,
) -> None:
    before = await _last_sequence(secure)

    async def pull_other_type(nc: Any) -> None:
        subject = f"$JS.API.CONSUMER.MSG.NEXT.{WORK_STREAM}.{work_consumer(COLONY, BETA)}"
        await nc.request(subject, b'{"batch": 1, "expires": 500000000}', timeout=1)

    async def append(nc: Any) -> None:
        await nc.publish(f"colonies.ev.{COLONY}.colony", b"forged")

    async def purge_work(nc: Any) -> None:
        await nc.jetstream(timeout=1).purge_stream(WORK_STREAM)

    for action in (pull_other_type, append, purge_work):
        assert "for publish to" in await _refused(secure, "executor-alpha", action)
    assert "for publish to" in await _refused(secure, "reader", append)
    assert await _last_sequence(secure) == before


def test_a_client_with_a_missing_credential_file_gets_one_clear_error(
    secure: SecureStack, tmp_path: Path
) -> None:
    from colonies_es.client import Colonies

    client = Colonies(servers=[secure.nats.url], nkey_file=str(tmp_path / "nowhere.nk"))
    with pytest.raises(ColoniesConnectionError, match=r"credential file .* does not exist"):
        client.get_colony(COLONY, secure.colony_prvkey)
    client.disconnect()


async def test_only_the_engine_may_write_or_read_checkpoints(secure: SecureStack) -> None:
    """The checkpoint stream (colonies_es/engine/checkpoint.py) is the engine's alone:
    reader, client and executor can neither write a head or a chunk nor read one."""
    from colonies_es.engine.checkpoint import Checkpoint, CheckpointStore
    from colonies_es.engine.state import LiveState

    nc = await secure.access("engine").connect("test engine")
    try:
        store = CheckpointStore(nc)
        await store.ensure_stream()
        checkpoint = Checkpoint(LiveState(0, [], [], {}), [])
        await store.write(checkpoint, "test")
        before = (await nc.jetstream().stream_info(store.stream)).state.last_seq
    finally:
        await nc.close()

    async def write_head(nc: Any) -> None:
        await nc.jetstream(timeout=1).publish(store.head_subject, b"forged")

    async def write_chunk(nc: Any) -> None:
        await nc.jetstream(timeout=1).publish(f"{store.prefix}.data.x.0", b"forged")

    async def read_head(nc: Any) -> None:
        await nc.jetstream(timeout=1).get_last_msg(store.stream, store.head_subject, direct=True)

    async def purge(nc: Any) -> None:
        await nc.jetstream(timeout=1).purge_stream(store.stream)

    for action in (write_head, write_chunk, read_head, purge):
        assert "for publish to" in await _refused(secure, "reader", action)
    for credential in ("client", "executor-alpha"):
        for action in (write_head, read_head):
            assert "for publish to" in await _refused(secure, credential, action)
    nc = await secure.access("engine").connect("test engine")
    try:
        assert (await nc.jetstream().stream_info(store.stream)).state.last_seq == before
    finally:
        await nc.close()
