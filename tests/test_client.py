"""The client on a real nats-server: connection failures, the wire contract, assign, wait.

Tests that need an answer from the engine use :class:`StubEngine`, which serves
``colonies.api.*`` on the same NATS with canned replies and records what it received
(checked with :func:`colonies_es.crypto.open_command`, as the engine checks it). This
proves the client's half of protocol.py; the end-to-end tests with the real engine are in
``test_client_e2e.py``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import RetentionPolicy, StorageType, StreamConfig

from colonies_es import (
    AsyncColonies,
    Colonies,
    ColoniesConnectionError,
    ColoniesError,
    Crypto,
    Workflow,
    func_spec,
)
from colonies_es.client import colonies_client, work_consumer_config
from colonies_es.crypto import id_from_private_key, open_command
from colonies_es.embedded import NatsServer, free_port
from colonies_es.loop import LoopThread
from colonies_es.models import Colony, Process, ProcessGraph, encode
from colonies_es.protocol import (
    ENGINE_QUEUE_GROUP,
    NOTHING_READY,
    OPS,
    WORK_PREFIX,
    WORK_STREAM,
    work_subject,
)

KEY = Crypto().prvkey()
Reply = bytes | tuple[int, str]
Handler = Callable[[dict[str, Any]], Reply]


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """A nats-server of this module's own: the stub engine must be the only responder."""
    with NatsServer(Path(tmp_path_factory.mktemp("client-nats"))) as nats_server:
        yield nats_server.start()


class StubEngine:
    """Answers every op like the engine's transport would, from ``handlers`` (default ``{}``).

    A handler gets the decoded body and returns the reply's JSON, or ``(status, message)``
    for a refusal (sent in the nats.micro error headers). ``received`` lists
    ``(op, caller_id, body)`` of every command, in order.
    """

    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self.handlers: dict[str, Handler] = {}
        self.holds: dict[str, bool] = {}
        """Ops answered only after the ``wait`` seconds of their body (held claims)."""
        self.received: list[tuple[str, str, dict[str, Any]]] = []
        self.arrived = asyncio.Event()
        """Set when a command arrives."""

    async def start(self, only: Sequence[str] = ()) -> None:
        """Serves every op, or ``only`` those (an engine of an older version)."""
        for subject in [f"colonies.api.{op}" for op in only] or ["colonies.api.*"]:
            await self.nc.subscribe(subject, queue=ENGINE_QUEUE_GROUP, cb=self._answer)
        await self.nc.flush()  # the server knows the subscription before anyone asks

    async def _answer(self, msg: Msg) -> None:
        command = open_command(msg.data, time.time())
        body = msgspec.json.decode(command.body)
        self.received.append((command.op, command.caller_id, body))
        self.arrived.set()
        if self.holds.get(command.op):
            await asyncio.sleep(body.get("wait", 0))
        handler = self.handlers.get(command.op)
        reply = b"{}" if handler is None else handler(body)
        if isinstance(reply, tuple):
            status, message = reply
            headers = {"Nats-Service-Error-Code": str(status), "Nats-Service-Error": message}
            await self.nc.publish(msg.reply, b"", headers=headers)
        else:
            await self.nc.publish(msg.reply, reply)

    def ops(self) -> list[str]:
        return [op for op, _, _ in self.received]

    async def work_stream(self) -> None:
        """The work stream, configured as the engine configures it."""
        config = StreamConfig(
            name=WORK_STREAM,
            subjects=[f"{WORK_PREFIX}.>"],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.MEMORY,
        )
        await self.nc.jetstream().add_stream(config)


@pytest.fixture
async def engine(server: NatsServer) -> AsyncIterator[StubEngine]:
    nc = await nats.connect(server.url)
    stub = StubEngine(nc)
    await stub.start()
    yield stub
    await nc.close()


@pytest.fixture
async def client(server: NatsServer) -> AsyncIterator[AsyncColonies]:
    async with AsyncColonies(servers=[server.url], timeout=2) as colonies:
        yield colonies


def unique(prefix: str) -> str:
    return f"{prefix}{time.monotonic_ns()}"


# ---------------------------------------------------------------------------- connecting


async def test_a_dead_port_fails_quickly_naming_the_url() -> None:
    port = free_port()
    colonies = AsyncColonies("127.0.0.1", port, timeout=1)
    started = time.monotonic()
    with pytest.raises(ColoniesConnectionError, match=f"nats://127.0.0.1:{port}"):
        await colonies.list_colonies(KEY)
    assert time.monotonic() - started < 3
    await colonies.disconnect()


def test_the_sync_client_reports_a_dead_port_too() -> None:
    port = free_port()
    with (
        Colonies("127.0.0.1", port, timeout=1) as colonies,
        pytest.raises(ColoniesConnectionError, match="cannot connect to NATS"),
    ):
        colonies.get_colony("any", KEY)


async def test_nats_without_an_engine_says_no_engine_is_answering(server: NatsServer) -> None:
    async with AsyncColonies(servers=[server.url]) as colonies:
        with pytest.raises(ColoniesConnectionError) as caught:
            await colonies.stats("any", KEY)
    assert str(caught.value) == f"no colonies engine is answering on {server.url}"


def test_tls_selects_the_tls_scheme() -> None:
    assert Colonies("example.org", 4443, True).url == "tls://example.org:4443"
    assert AsyncColonies().url == "nats://localhost:4222"


async def test_the_client_carries_on_after_nats_restarts(
    nats_server_factory: Callable[..., NatsServer],
) -> None:
    """Commands sent while NATS is away fail with ColoniesConnectionError; the same
    client works again once NATS (and the engine) are back."""
    nats_server = nats_server_factory()

    async def until_answered(colonyname: str) -> None:
        deadline = time.monotonic() + 10
        while True:
            try:
                await colonies.del_colony(colonyname, KEY)
                return
            except ColoniesConnectionError:
                assert time.monotonic() < deadline, "the client never recovered"
                await asyncio.sleep(0.1)

    async with AsyncColonies(servers=[nats_server.url], timeout=1) as colonies:
        nc = await nats.connect(nats_server.url, max_reconnect_attempts=-1)
        engine = StubEngine(nc)
        await engine.start()
        # Polled too: once (two test workers, load 8) the first command met "no
        # responders" though the stub had flushed its subscription.
        await until_answered("before")
        nats_server.kill()
        nats_server.start()
        await until_answered("after")
        assert engine.ops()[-1] == "del_colony"
        assert engine.received[-1][2] == {"colonyname": "after"}
        await nc.close()


async def test_a_request_the_connection_loss_interrupted_is_sent_again_at_once(
    nats_server_factory: Callable[..., NatsServer],
) -> None:
    """A held claim waits for its reply up to its hold (10 s, then 1 s of margin). When
    NATS restarts meanwhile, that reply can never come: the client sends the same signed
    claim again as soon as its connection is back (it reconnects every 0.5 s), not once
    the hold is over."""
    nats_server = nats_server_factory()
    nc = await nats.connect(nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.05)
    claims: list[bytes] = []
    arrived = asyncio.Event()

    async def hold_forever(msg: Msg) -> None:  # an engine that never answers
        claims.append(msg.data)
        arrived.set()

    await nc.subscribe("colonies.api.*", queue=ENGINE_QUEUE_GROUP, cb=hold_forever)
    await nc.flush()
    async with AsyncColonies(servers=[nats_server.url], timeout=10) as colonies:
        assigning = asyncio.create_task(colonies.assign("c1", 30, KEY))
        await asyncio.wait_for(arrived.wait(), 10)
        arrived.clear()
        restarted = time.monotonic()
        nats_server.kill()
        nats_server.start()
        await asyncio.wait_for(arrived.wait(), 15)

        assert time.monotonic() - restarted < 5, "sent again only when its hold was over"
        assert len(claims) == 2
        assert claims[1] == claims[0]  # the same signed bytes: the engine replays it
        assert not assigning.done()
        assigning.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await assigning
    await nc.close()


# ---------------------------------------------------------------------------- the wire


async def test_a_refusal_raises_colonies_error_with_status_and_message(
    engine: StubEngine, client: AsyncColonies
) -> None:
    engine.handlers["get_colony"] = lambda body: (404, f"colony {body['colonyname']} not found")
    with pytest.raises(ColoniesError) as caught:
        await client.get_colony("nowhere", KEY)
    assert caught.value.status == 404
    assert str(caught.value) == "colony nowhere not found"


async def test_commands_are_signed_by_the_given_key(
    engine: StubEngine, client: AsyncColonies
) -> None:
    await client.del_colony("gone", KEY)
    assert engine.received == [("del_colony", id_from_private_key(KEY), {"colonyname": "gone"})]


async def test_results_decode_into_models(engine: StubEngine, client: AsyncColonies) -> None:
    reply = Process(processid="p1", state=2, output=[3], input=[1, 2])
    engine.handlers["get_process"] = lambda _: encode(reply)
    engine.handlers["list_colonies"] = lambda _: b'[{"colonyid": "c", "name": "dev"}]'
    assert await client.get_process("p1", KEY) == reply
    assert await client.list_colonies(KEY) == [Colony(colonyid="c", name="dev")]


async def test_an_unreadable_reply_is_an_internal_error(
    engine: StubEngine, client: AsyncColonies
) -> None:
    engine.handlers["get_processgraph"] = lambda _: b'{"processids": "not a list"}'
    with pytest.raises(ColoniesError, match="processids") as caught:
        await client.get_processgraph("g", KEY)
    assert caught.value.status == 500


async def test_pycolonies_arguments_become_the_protocol_bodies(
    engine: StubEngine, client: AsyncColonies
) -> None:
    spec = func_spec("gen", [], "dev", "python")
    await client.add_colony({"colonyid": "c1", "name": "dev"}, KEY)
    await client.remove_all_processes("dev", KEY)
    await client.remove_all_processes("dev", KEY, state=3)
    await client.add_child("g", "parent", None, spec, "gen_0", True, KEY)
    await client.add_log("p", "hello", KEY)
    await client.close("p", (1, 2), KEY)
    await client.close("p", [3], KEY, attempt=2)
    bodies = [body for _, _, body in engine.received]
    assert bodies[0] == {"colony": {"colonyid": "c1", "name": "dev"}}
    assert bodies[1] == {"colonyname": "dev", "state": None}
    assert bodies[2] == {"colonyname": "dev", "state": 3}
    assert bodies[3]["childprocessid"] == ""
    assert bodies[3]["nodename"] == "gen_0"
    assert bodies[3]["insert"] is True
    assert bodies[4] == {"processid": "p", "message": "hello"}
    assert bodies[5] == {"processid": "p", "out": [1, 2], "attempt": 0, "claim": ""}  # 0: any
    assert bodies[6] == {"processid": "p", "out": [3], "attempt": 2, "claim": ""}


async def test_find_process_returns_the_first_process_with_the_nodename(
    engine: StubEngine, client: AsyncColonies
) -> None:
    """One request (the engine searches: tests/test_engine_workflows.py); its null
    reply is None."""

    def find(body: dict[str, Any]) -> bytes:
        for pid in body["processids"]:
            name = pid.split("-")[0]
            if name == body["nodename"]:
                return encode(Process(processid=pid, spec=func_spec(name, [], "c", "t")))
        return b"null"

    engine.handlers["find_process"] = find
    found = await client.find_process("reduce", ["map-1", "reduce-2", "reduce-3"], KEY)
    assert found is not None
    assert found.processid == "reduce-2"
    assert await client.find_process("other", ["map-1"], KEY) is None
    assert engine.ops() == ["find_process", "find_process"]


async def test_find_process_reads_each_in_turn_from_an_engine_without_the_op(
    server: NatsServer, client: AsyncColonies
) -> None:
    """An engine from before ``find_process`` does not serve it (no responders): the
    client falls back to a ``get_process`` per id, as it did before."""
    nc = await nats.connect(server.url)
    try:
        old = StubEngine(nc)
        await old.start(only=["get_process"])

        def get(body: dict[str, Any]) -> bytes:
            pid = body["processid"]
            return encode(Process(processid=pid, spec=func_spec(pid.split("-")[0], [], "c", "t")))

        old.handlers["get_process"] = get
        found = await client.find_process("reduce", ["map-1", "reduce-2", "reduce-3"], KEY)
        assert found is not None
        assert found.processid == "reduce-2"
        assert old.ops() == ["get_process", "get_process"]
        # Known now: the next call reads each in turn at once.
        assert await client.find_process("other", ["map-1"], KEY) is None
        assert old.ops() == ["get_process", "get_process", "get_process"]
    finally:
        await nc.close()


# ---------------------------------------------------------------------------- assign


def nothing_ready(_: dict[str, Any]) -> Reply:
    return (404, f"{NOTHING_READY} for 'e1' (python)")


async def test_assign_sends_one_held_claim_and_returns_what_the_engine_assigns(
    engine: StubEngine, client: AsyncColonies
) -> None:
    engine.handlers["claim"] = lambda _: encode(Process(processid="p1", state=1))
    process = await client.assign("dev", 5, KEY)
    assert process.processid == "p1"
    assert engine.ops() == ["claim"]  # no whoami, no ticket: one request
    body = engine.received[0][2]
    assert body["colonyname"] == "dev"
    assert body["wait"] == pytest.approx(5, abs=0.1)  # the engine holds it while nothing is ready
    assert body["alive"].startswith("_INBOX.")


async def test_assign_claims_again_while_the_engine_says_nothing_is_ready(
    engine: StubEngine, client: AsyncColonies
) -> None:
    replies: list[Reply] = [nothing_ready({}), encode(Process(processid="p2"))]
    engine.handlers["claim"] = lambda _: replies.pop(0)
    assert (await client.assign("dev", 5, KEY)).processid == "p2"
    assert engine.ops() == ["claim", "claim"]
    assert engine.received[1][2]["wait"] < engine.received[0][2]["wait"]  # what remains


async def test_assign_without_work_raises_404_after_the_timeout(
    engine: StubEngine, client: AsyncColonies
) -> None:
    engine.handlers["claim"] = nothing_ready
    engine.holds["claim"] = True  # as the engine does: it answers 404 once `wait` is over
    started = time.monotonic()
    with pytest.raises(ColoniesError, match=r"no process available within 0\.5 s") as caught:
        await client.assign("dev", 0.5, KEY)
    assert caught.value.status == 404
    assert 0.5 <= time.monotonic() - started < 2
    assert engine.ops() == ["claim"]


async def test_assign_raises_a_refusal_at_once(engine: StubEngine, client: AsyncColonies) -> None:
    engine.handlers["claim"] = lambda _: (403, "executor is not approved")
    with pytest.raises(ColoniesError, match="not approved") as caught:
        await client.assign("dev", 5, KEY)
    assert caught.value.status == 403
    assert engine.ops() == ["claim"]


async def test_a_held_claim_says_it_waits_until_its_assign_is_cancelled(
    engine: StubEngine, client: AsyncColonies
) -> None:
    engine.handlers["claim"] = nothing_ready
    engine.holds["claim"] = True
    waiting = asyncio.create_task(client.assign("dev", 10, KEY))
    await asyncio.wait_for(engine.arrived.wait(), 5)
    alive = engine.received[0][2]["alive"]
    assert (await engine.nc.request(alive, b"", timeout=2)).data == b"1"
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert (await engine.nc.request(alive, b"", timeout=2)).data == b"0"  # give it nothing


async def test_close_and_claim_carries_a_signed_claim_and_returns_the_next_process(
    engine: StubEngine, client: AsyncColonies
) -> None:
    engine.handlers["close"] = lambda _: encode({"next": Process(processid="p7", state=1)})
    following = await client.close_and_claim("p6", [1], KEY, "dev", attempt=1)
    assert following is not None
    assert following.processid == "p7"
    _, caller, body = engine.received[0]
    claim = open_command(base64.b64decode(body["claim"]), time.time())
    assert (claim.op, claim.caller_id) == ("claim", caller)  # its own signed command
    assert msgspec.json.decode(claim.body)["colonyname"] == "dev"
    assert (body["processid"], body["out"], body["attempt"]) == ("p6", [1], 1)
    engine.handlers["close"] = lambda _: encode({"next": None})
    assert await client.close_and_claim("p7", [], KEY, "dev") is None


async def test_the_engine_and_the_client_create_the_same_work_consumer(
    engine: StubEngine,
) -> None:
    await engine.work_stream()
    js = engine.nc.jetstream()
    config = work_consumer_config("c", "t")
    first = await js.add_consumer(WORK_STREAM, config)
    second = await js.add_consumer(WORK_STREAM, work_consumer_config("c", "t"))
    assert first.config == second.config
    assert config.filter_subject == work_subject("c", "t")
    assert config.ack_wait == 30


# ---------------------------------------------------------------------------- wait


async def test_wait_is_one_request_the_engine_holds_until_the_end(
    engine: StubEngine, client: AsyncColonies
) -> None:
    ended = Process(processid="p", spec=func_spec("f", [], "c", "t"), state=2, output=[3])
    engine.handlers["wait_process"] = lambda _: encode(ended)
    assert (await client.wait("p", 10, KEY)).output == [3]
    assert engine.ops() == ["wait_process"]
    assert engine.received[0][2]["processid"] == "p"
    assert engine.received[0][2]["wait"] == pytest.approx(10, abs=0.1)


async def test_wait_raises_408_when_the_process_does_not_end_in_time(
    engine: StubEngine, client: AsyncColonies
) -> None:
    running = Process(processid="p", state=1, spec=func_spec("f", [], "c", "t"))
    engine.handlers["wait_process"] = lambda _: encode(running)
    engine.holds["wait_process"] = True  # as the engine does: the process as it is, after `wait`
    with pytest.raises(ColoniesError, match=r"did not end within 0\.3 s") as caught:
        await client.wait(running, 0.3, KEY)
    assert caught.value.status == 408
    assert engine.ops() == ["wait_process"]


# ---------------------------------------------------------------------------- sync client


def test_the_sync_client_has_every_op_with_the_async_signature() -> None:
    ops = set(OPS) - {"wait_process"} | {"assign", "close_and_claim", "wait"}
    for op in ops:
        sync, coroutine = getattr(Colonies, op), getattr(AsyncColonies, op)
        assert inspect.signature(sync) == inspect.signature(coroutine), op
        assert sync.__doc__ == coroutine.__doc__
        assert inspect.iscoroutinefunction(coroutine)
        assert not inspect.iscoroutinefunction(sync)


@dataclass
class ThreadedStub:
    """A stub engine on a loop of its own, for tests whose thread blocks in sync calls."""

    engine: StubEngine
    loop: LoopThread


@pytest.fixture
def threaded(server: NatsServer) -> Iterator[ThreadedStub]:
    loop = LoopThread(name="stub-engine")

    async def start() -> StubEngine:
        stub = StubEngine(await nats.connect(server.url))
        await stub.start()
        return stub

    stub = loop.run(start())
    yield ThreadedStub(stub, loop)
    loop.run(stub.nc.close())
    loop.close()


def test_the_sync_client_works_from_threads_and_inside_an_event_loop(
    threaded: ThreadedStub, server: NatsServer
) -> None:
    threaded.engine.handlers["submit_workflow"] = lambda _: encode(ProcessGraph(processgraphid="g"))
    results: list[str] = []
    with Colonies(servers=[server.url]) as colonies:

        def submit() -> None:
            graph = colonies.submit_workflow(Workflow(colonyname="dev"), KEY)
            results.append(graph.processgraphid)

        async def submit_from_a_coroutine() -> None:
            submit()

        threads = [threading.Thread(target=submit) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        asyncio.run(submit_from_a_coroutine())
    assert results == ["g"] * 5


def test_the_sync_client_connects_again_after_disconnect(
    threaded: ThreadedStub, server: NatsServer
) -> None:
    colonies = Colonies(servers=[server.url])
    colonies.del_colony("a", KEY)
    colonies.disconnect()
    colonies.del_colony("b", KEY)
    colonies.disconnect()
    assert threaded.engine.ops() == ["del_colony", "del_colony"]


def test_an_interrupted_sync_assign_stops_and_its_claim_takes_nothing(
    threaded: ThreadedStub, server: NatsServer
) -> None:
    stub = threaded.engine
    stub.handlers["claim"] = nothing_ready
    stub.holds["claim"] = True  # held, as the engine holds a claim while nothing is ready

    # Ctrl-C delivered to another thread than the blocked caller (the kernel may pick
    # any thread of the process): Python still raises it in the main thread, which must
    # not sleep through it in a lock wait.
    # (The timer's thread takes it itself.)
    def press_ctrl_c() -> None:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        signal.pthread_kill(threading.get_ident(), signal.SIGINT)

    ctrl_c = threading.Timer(0.5, press_ctrl_c)
    # Python's own Ctrl-C handler, as in a terminal: a pytest started in the background
    # of a non-interactive shell inherits SIGINT ignored, and Python then keeps it so.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _interrupted_assign(stub, threaded, server, ctrl_c)
    finally:
        signal.signal(signal.SIGINT, previous)


def _interrupted_assign(
    stub: StubEngine, threaded: ThreadedStub, server: NatsServer, ctrl_c: threading.Timer
) -> None:
    with Colonies(servers=[server.url]) as colonies:
        started = time.monotonic()
        ctrl_c.start()
        with pytest.raises(KeyboardInterrupt):
            colonies.assign("dev", 10, KEY)
        assert time.monotonic() - started < 5.0  # at Ctrl-C, not when the claim ends
        alive = stub.received[0][2]["alive"]
        answer = threaded.loop.run(stub.nc.request(alive, b"", timeout=2))
        assert answer.data == b"0"  # the engine asking before it assigns gets "no longer"
        stub.holds["claim"] = False
        stub.handlers["claim"] = lambda _: encode(Process(processid="p5"))
        assert colonies.assign("dev", 5, KEY).processid == "p5"


# ---------------------------------------------------------------------------- environment

DEV_ENV = {
    "COLONIES_SERVER_HOST": "nats.example",
    "COLONIES_SERVER_PORT": "4333",
    "COLONIES_SERVER_TLS": "true",
    "COLONIES_COLONY_NAME": "dev",
    "COLONIES_COLONY_PRVKEY": "colony-key",
    "COLONIES_EXECUTOR_NAME": "exec-1",
    "COLONIES_PRVKEY": "my-key",
}


def test_colonies_client_reads_the_dev_env_variables() -> None:
    client, colonyname, colony_prvkey, executorname, prvkey = colonies_client(DEV_ENV)
    assert client.url == "tls://nats.example:4333"
    assert (colonyname, colony_prvkey, executorname, prvkey) == (
        "dev",
        "colony-key",
        "exec-1",
        "my-key",
    )


def test_colonies_client_defaults_to_local_nats_and_no_optional_identity() -> None:
    env = {"COLONIES_COLONY_NAME": "dev", "COLONIES_PRVKEY": "k"}
    client, _, colony_prvkey, executorname, _ = colonies_client(env)
    assert client.url == "nats://localhost:4222"
    assert colony_prvkey is None
    assert executorname is None


def test_colonies_client_names_the_missing_variables() -> None:
    with pytest.raises(ValueError, match="COLONIES_COLONY_NAME, COLONIES_PRVKEY"):
        colonies_client({"COLONIES_SERVER_HOST": "localhost"})


@pytest.mark.parametrize(
    ("name", "value"), [("COLONIES_SERVER_PORT", "http"), ("COLONIES_SERVER_TLS", "maybe")]
)
def test_colonies_client_refuses_unreadable_settings(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=name):
        colonies_client({**DEV_ENV, name: value})


def test_colonies_client_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in DEV_ENV.items():
        monkeypatch.setenv(name, value)
    assert colonies_client()[1:] == ("dev", "colony-key", "exec-1", "my-key")
