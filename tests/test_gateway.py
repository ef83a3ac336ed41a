"""The ColonyOS gateway with unmodified pycolonies (from PyPI): workflows, executors of
both kinds side by side, wait(), refusals and audit, on a real nats-server, engine and
gateway (each its own process)."""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import json
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import nats
import pycolonies
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pycolonies import Colonies as PyColonies
from pycolonies import Crypto as PyCrypto
from pycolonies import Workflow, func_spec

from colonies_es import colonyos, crypto
from colonies_es.client import colonies_client
from colonies_es.projections.audit import Authorities, verify
from colonies_es.protocol import WORK_STREAM, work_consumer
from tests.eventlog import last_sequence, nothing_written, read_events
from tests.gateway_stack import (
    PYCOLONIES_EXAMPLES,
    GatewayProcess,
    colonyos_env,
    start_process,
    stop_process,
    wait_for_line,
)
from tests.stack import ColonyHandle, Stack

pytestmark = pytest.mark.timeout(180)

EXAMPLES = {
    "workflow_example.py": "Result: 3",
    "multi_dependency_example.py": "Result: 30",
    "mapreduce_example.py": "Result: 15",
}


@pytest.fixture(scope="module")
def gateway(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    running = GatewayProcess(stack.nats.url, tmp_path_factory.mktemp("gw") / "gateway.log")
    running.start()
    yield running
    running.stop()


@pytest.fixture
def pyc(gateway: GatewayProcess) -> PyColonies:
    """An unmodified pycolonies client pointed at the gateway."""
    return PyColonies("127.0.0.1", gateway.port)


def register(pyc: PyColonies, colony: ColonyHandle, executortype: str, approve: bool = True) -> str:
    """A new executor registered (and approved) through pycolonies; its private key."""
    key: str = PyCrypto().prvkey()
    name = f"pyc-{uuid.uuid4().hex[:8]}"
    pyc.add_executor(
        {
            "executorid": PyCrypto().id(key),
            "executorname": name,
            "executortype": executortype,
            "colonyname": colony.name,
        },
        colony.owner_prvkey,
    )
    if approve:
        pyc.approve_executor(colony.name, name, colony.owner_prvkey)
    colony.executors[name] = key
    return key


def run_example(name: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, str(PYCOLONIES_EXAMPLES / name)],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.splitlines()[-1]


def one_spec(colony: ColonyHandle, executortype: str = "python-executor", **extra: Any) -> Any:
    return func_spec(
        func="noop", args=[], colonyname=colony.name, executortype=executortype, **extra
    )


# ------------------------------------------------------------------ workflows


def test_seed_workflows_run_on_a_pycolonies_executor(
    stack: Stack, gateway: GatewayProcess, tmp_path: Path
) -> None:
    colony = stack.new_colony()
    env = colonyos_env(stack, gateway, colony)
    log = tmp_path / "pycolonies-executor.log"
    executor = start_process(
        [sys.executable, str(PYCOLONIES_EXAMPLES / "python_executor.py")], env, log
    )
    try:
        wait_for_line(log, "registered", executor, timeout=30)
        for example, result in EXAMPLES.items():
            assert run_example(example, env) == result
        executor.terminate()  # idle in assign: it stops at once
        assert executor.wait(10) == 0
    finally:
        stop_process(executor)
    assigned = read_events(stack.nats.url).of_kind("ProcessAssigned")
    ours = {e.state["executorid"] for e in assigned if e.aggregate_id.startswith(colony.name)}
    [executor_id] = ours  # every process ran on the one pycolonies executor
    [registered] = stack.client.list_executors(colony.name, colony.owner_prvkey)
    assert registered.executorid == executor_id
    assert registered.executorname.startswith("pycolonies-")


def test_seed_workflows_run_on_the_native_executor_beside_a_pycolonies_one(
    stack: Stack, gateway: GatewayProcess, tmp_path: Path, pyc: PyColonies
) -> None:
    colony = stack.new_colony()
    env = colonyos_env(stack, gateway, colony)
    native_log, pyc_log = tmp_path / "native.log", tmp_path / "pycolonies.log"
    native = start_process(
        [sys.executable, "-m", "colonies_es.cli", "executor", "start", "--type", "python-executor"],
        env,
        native_log,
    )
    other = start_process(
        [sys.executable, str(PYCOLONIES_EXAMPLES / "python_executor.py"), "pycolonies-executor"],
        env,
        pyc_log,
    )
    try:
        wait_for_line(pyc_log, "registered", other, timeout=30)
        for example, result in EXAMPLES.items():  # python-executor: the native one
            assert run_example(example, env) == result
        # One workflow across both kinds: gen_nums on pycolonies', sum_nums on ours.
        wf = Workflow(colonyname=colony.name)
        gen = func_spec(
            func="gen_nums",
            args=[],
            colonyname=colony.name,
            executortype="pycolonies-executor",
            code="def gen_nums(ctx={}):\n    return 1, 2\n",
        )
        add = func_spec(
            func="sum_nums",
            args=[],
            colonyname=colony.name,
            executortype="python-executor",
            code="def sum_nums(a, b, ctx={}):\n    return a + b\n",
        )
        add.conditions.dependencies.append("gen_nums")
        wf.functionspecs = [gen, add]
        graph = pyc.submit_workflow(wf, colony.owner_prvkey)
        last = pyc.find_process("sum_nums", graph.processids, colony.owner_prvkey)
        last = pyc.wait(last, 60, colony.owner_prvkey)
        first = pyc.find_process("gen_nums", graph.processids, colony.owner_prvkey)
    finally:
        stop_process(other)
        native.terminate()
        native.wait(15)
    assert last.output == [3]
    executors = {e["executorname"]: e for e in pyc.list_executors(colony.name, colony.owner_prvkey)}
    by_id = {e["executorid"]: e["executortype"] for e in executors.values()}
    assert by_id[first.assignedexecutorid] == "pycolonies-executor"
    assert by_id[last.assignedexecutorid] == "python-executor"


# ------------------------------------------------------------------ wait


def test_wait_returns_on_success_and_raises_on_failure_and_timeout(
    stack: Stack, pyc: PyColonies
) -> None:
    colony = stack.new_colony()
    executor = register(pyc, colony, "waiter")
    owner = colony.owner_prvkey
    with ThreadPoolExecutor(2) as pool:
        process = pyc.submit_func_spec(one_spec(colony, "waiter"), owner)
        waiting = pool.submit(pyc.wait, process, 30, owner)
        assigned = pyc.assign(colony.name, 10, executor)
        assert assigned.processid == process.processid
        time.sleep(0.2)  # let wait() subscribe first: it must be woken, not find it done
        pyc.close(assigned.processid, ["done"], executor)
        ended = waiting.result(timeout=20)
        assert ended.state == pycolonies.Colonies.SUCCESSFUL
        assert ended.output == ["done"]

        process = pyc.submit_func_spec(one_spec(colony, "waiter"), owner)
        waiting = pool.submit(pyc.wait, process, 30, owner)
        assigned = pyc.assign(colony.name, 10, executor)
        started = time.monotonic()
        pyc.fail(assigned.processid, ["broken"], executor)
        with pytest.raises(Exception, match=r"closed|Connection"):
            waiting.result(timeout=20)
        assert time.monotonic() - started < 10  # at once, not at wait()'s 30 s timeout

        process = pyc.submit_func_spec(one_spec(colony, "waiter"), owner)
        started = time.monotonic()
        with pytest.raises(Exception, match=r"closed|Connection"):
            pyc.wait(process, 1, owner)
        assert 0.9 < time.monotonic() - started < 10


def test_identical_messages_are_separate_commands(stack: Stack, pyc: PyColonies) -> None:
    """pycolonies signs deterministically: the same message twice is the same bytes, and
    must still be two commands (two submissions, two assignments), never one retried."""
    colony = stack.new_colony()
    executor = register(pyc, colony, "twice")
    spec = one_spec(colony, "twice")
    first = pyc.submit_func_spec(spec, colony.owner_prvkey)
    second = pyc.submit_func_spec(spec, colony.owner_prvkey)
    assert first.processid != second.processid
    assigned = {pyc.assign(colony.name, 5, executor).processid for _ in range(2)}
    assert assigned == {first.processid, second.processid}


def test_assign_waits_for_work_and_answers_404_when_none_comes(
    stack: Stack, pyc: PyColonies
) -> None:
    colony = stack.new_colony()
    executor = register(pyc, colony, "poller")
    started = time.monotonic()
    with pytest.raises(pycolonies.ColoniesConnectionError, match="No process available"):
        pyc.assign(colony.name, 1, executor)
    assert 0.9 < time.monotonic() - started < 5
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(pyc.assign, colony.name, 20, executor)
        time.sleep(0.5)  # the assign is now waiting in the gateway
        submitted = time.monotonic()
        process = pyc.submit_func_spec(one_spec(colony, "poller"), colony.owner_prvkey)
        assigned = waiting.result(timeout=20)
        assert time.monotonic() - submitted < 0.9  # woken by the work ticket, not the 1 s retry
    assert assigned.processid == process.processid
    assert assigned.state == pycolonies.Colonies.RUNNING


def test_assigns_through_the_gateway_leave_no_work_tickets_behind(
    stack: Stack, pyc: PyColonies
) -> None:
    colony = stack.new_colony()
    executor = register(pyc, colony, "drained")
    for _ in range(5):
        pyc.submit_func_spec(one_spec(colony, "drained"), colony.owner_prvkey)
    for _ in range(5):
        pyc.close(pyc.assign(colony.name, 5, executor).processid, [], executor)

    async def tickets_waiting() -> int:
        nc = await nats.connect(stack.nats.url)
        try:
            info = await nc.jetstream().consumer_info(
                WORK_STREAM, work_consumer(colony.name, "drained")
            )
            return (info.num_pending or 0) + (info.num_ack_pending or 0)
        finally:
            await nc.close()

    deadline = time.monotonic() + 10
    while (waiting := asyncio.run(tickets_waiting())) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert waiting == 0  # without taking them, the 5 tickets would stay in the stream


def test_an_assign_whose_caller_left_claims_nothing(
    stack: Stack, gateway: GatewayProcess, pyc: PyColonies
) -> None:
    colony = stack.new_colony()
    executor = register(pyc, colony, "left")
    body = colonyos.envelope(
        {"msgtype": "assignprocessmsg", "timeout": 30, "colonyname": colony.name}, executor
    )
    request = (
        f"POST /api HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    )
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as gone:
        gone.sendall(request)
        time.sleep(0.5)  # the assign is now waiting in the gateway
    time.sleep(0.2)  # its connection is closed
    process = pyc.submit_func_spec(one_spec(colony, "left"), colony.owner_prvkey)
    time.sleep(0.5)  # the ticket wakes the abandoned assign, which must not claim
    assert pyc.assign(colony.name, 5, executor).processid == process.processid


# ------------------------------------------------------------------ refusals


def raw_call(gateway: GatewayProcess, body: bytes) -> tuple[int, dict[str, Any]]:
    """POST a raw RPC message; (status, decoded error payload)."""
    answer = requests.post(f"{gateway.url}/api", data=body, timeout=30)
    envelope = answer.json()
    assert set(envelope) == {"payloadtype", "payload", "error"}
    payload = json.loads(base64.b64decode(envelope["payload"]))
    if answer.status_code != 200:
        assert envelope["error"] is True
        assert envelope["payloadtype"] == "error"
        assert set(payload) == {"status", "message"}
        assert payload["status"] == answer.status_code
    return answer.status_code, payload


def submit_message(colony: ColonyHandle) -> dict[str, Any]:
    return {"msgtype": "submitfuncspecmsg", "spec": one_spec(colony).model_dump(by_alias=True)}


def test_refusals_have_the_colonyos_shape_and_status_and_write_nothing(
    stack: Stack, gateway: GatewayProcess
) -> None:
    colony = stack.new_colony()
    owner = colony.owner_prvkey
    good = json.loads(colonyos.envelope(submit_message(colony), owner))
    flipped = good["signature"][:10] + ("0" if good["signature"][10] != "0" else "1")
    # A changed signature names another key (not a member) or none at all (bad signature).
    bad_signature = {**good, "signature": flipped + good["signature"][11:]}
    bad_recovery_id = {**good, "signature": good["signature"][:128] + "1b"}
    wrong_type = {**good, "payloadtype": "getprocessmsg"}  # signed payload says submit
    other_type = json.loads(
        colonyos.envelope({**submit_message(colony), "msgtype": "nosuchmsg"}, owner)
    )
    stranger = colonyos.envelope(submit_message(colony), crypto.new_private_key())
    unknown = colonyos.envelope({"msgtype": "getprocessmsg", "processid": "ab" * 32}, owner)
    close_unknown = colonyos.envelope(
        {"msgtype": "closesuccessfulmsg", "processid": "ab" * 32, "out": []}, owner
    )
    cases = [
        (json.dumps(bad_signature).encode(), 403, "signature|not a member"),
        (json.dumps(bad_recovery_id).encode(), 403, "bad signature"),
        (json.dumps(wrong_type).encode(), 400, "does not match payloadType"),
        (json.dumps(other_type).encode(), 403, r"invalid rpcMsg\.PayloadType: nosuchmsg"),
        (stranger, 403, "not a member"),
        (unknown, 404, "does not exist"),
        (close_unknown, 404, "does not exist"),
        (b"not json", 400, "malformed"),
    ]
    with nothing_written(stack.nats.url):
        for body, status, message in cases:
            got_status, payload = raw_call(gateway, body)
            found = re.search(message, payload["message"]) is not None
            assert (got_status, found) == (status, True), payload
            if status == 403:  # as ColonyOS says it; pycolonies' own tests look for it
                assert payload["message"].startswith("Access denied: "), payload
    pyc = PyColonies("127.0.0.1", gateway.port)
    with (
        nothing_written(stack.nats.url),
        pytest.raises(pycolonies.ColoniesConnectionError, match="not a member"),
    ):
        pyc.submit_func_spec(one_spec(colony), crypto.new_private_key())
    before = last_sequence(stack.nats.url)
    assert raw_call(gateway, json.dumps(good).encode())[0] == 200  # the same, signed right
    assert last_sequence(stack.nats.url) == before + 1


def test_unapproved_executor_cannot_assign(stack: Stack, pyc: PyColonies) -> None:
    colony = stack.new_colony()
    pending = register(pyc, colony, "t", approve=False)
    pyc.submit_func_spec(one_spec(colony, "t"), colony.owner_prvkey)
    with (
        nothing_written(stack.nats.url),
        pytest.raises(pycolonies.ColoniesConnectionError, match="APPROVED"),
    ):
        pyc.assign(colony.name, 1, pending)


def test_health(gateway: GatewayProcess) -> None:
    answer = requests.get(f"{gateway.url}/health", timeout=10)
    assert (answer.status_code, answer.content) == (200, b"")


# ------------------------------------------------------------------ every message


def test_every_pycolonies_message_for_colonies_executors_processes_and_logs(
    stack: Stack, pyc: PyColonies
) -> None:
    server = stack.server_prvkey
    owner = PyCrypto().prvkey()
    name = f"c{uuid.uuid4().hex[:10]}"
    assert pyc.add_colony({"colonyid": PyCrypto().id(owner), "name": name}, server)["name"] == name
    assert name in [c["name"] for c in pyc.list_colonies(server)]
    assert pyc.get_colony(name, owner)["colonyid"] == PyCrypto().id(owner)
    colony = ColonyHandle(name, owner)
    executor = register(pyc, colony, "kind")
    executorname = next(iter(colony.executors))
    assert pyc.get_executor(name, executorname, owner)["state"] == 1
    rejected = register(pyc, colony, "kind", approve=False)
    rejected_name = next(n for n in colony.executors if n != executorname)
    pyc.reject_executor(name, rejected_name, owner)
    assert pyc.get_executor(name, rejected_name, owner)["state"] == 2
    pyc.remove_executor(name, rejected_name, owner)
    assert [e["executorname"] for e in pyc.list_executors(name, owner)] == [executorname]
    del rejected

    waiting = pyc.submit_func_spec(one_spec(colony, "kind", priority=5), owner)
    assert waiting.state == pycolonies.Colonies.WAITING
    assert [p["processid"] for p in pyc.list_processes(name, 10, 0, owner)] == [waiting.processid]
    running = pyc.assign(name, 5, executor)
    pyc.set_output(running.processid, ["partial"], executor)
    attribute = pyc.add_attribute(running.processid, "k", "v", executor)
    assert (attribute["key"], attribute["value"]) == ("k", "v")
    pyc.add_log(running.processid, "hello", executor)
    logs = pyc.get_process_log(name, running.processid, 10, 0, executor)
    assert [entry["message"] for entry in logs] == ["hello"]
    assert pyc.get_process(running.processid, owner).output == ["partial"]
    pyc.close(running.processid, ["done"], executor)
    stats = pyc.stats(name, owner)
    assert (stats["successfulprocesses"], stats["executors"]) == (1, 1)

    graphs = pyc.get_processgraphs(name, 10, owner, state=2)
    assert [g["processgraphid"] for g in graphs] == [running.processgraphid]
    assert pyc.get_processgraph(running.processgraphid, owner).state == 2
    pyc.remove_processgraph(running.processgraphid, owner)
    assert pyc.get_processgraphs(name, 10, owner, state=2) == []

    doomed = pyc.submit_func_spec(one_spec(colony, "kind"), owner)
    pyc.remove_process(doomed.processid, owner)
    with pytest.raises(pycolonies.ColoniesConnectionError, match="does not exist"):
        pyc.get_process(doomed.processid, owner)
    for _ in range(2):
        pyc.submit_func_spec(one_spec(colony, "kind"), owner)
    pyc.remove_all_processgraphs(name, owner)  # no state: the waiting ones, as ColonyOS
    assert pyc.list_processes(name, 10, 0, owner) == []
    pyc.submit_func_spec(one_spec(colony, "kind"), owner)
    pyc.remove_all_processes(name, owner)
    assert pyc.list_processes(name, 10, 0, owner) == []

    # add_child from the executor holding the parent
    wf = Workflow(colonyname=name)
    wf.functionspecs = [one_spec(colony, "kind")]
    graph = pyc.submit_workflow(wf, owner)
    assert (graph.nodes, graph.edges) == ([], [])
    parent = pyc.assign(name, 5, executor)
    child = pyc.add_child(
        graph.processgraphid,
        parent.processid,
        "",
        one_spec(colony, "kind"),
        "child",
        False,
        executor,
    )
    assert child["parents"] == [parent.processid]
    pyc.close(parent.processid, [], executor)
    assert pyc.assign(name, 5, executor).processid == child["processid"]

    with pytest.raises(pycolonies.ColoniesConnectionError, match="not implemented"):
        pyc.get_attribute(attribute["attributeid"], owner)
    pyc.del_colony(name, server)
    assert name not in [c["name"] for c in pyc.list_colonies(server)]


# ------------------------------------------------------------------ dev.env and audit


def test_one_dev_env_serves_pycolonies_and_the_native_client(
    stack: Stack, gateway: GatewayProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    colony = stack.new_colony()
    for variable, value in colonyos_env(stack, gateway, colony).items():
        monkeypatch.setenv(variable, value)
    client, colonyname, _, _, prvkey = pycolonies.colonies_client()
    assert client.get_colony(colonyname, prvkey)["name"] == colony.name
    native, colonyname, _, _, prvkey = colonies_client()
    with native:
        assert native.get_colony(colonyname, prvkey).name == colony.name


def test_events_caused_by_pycolonies_pass_the_audit(stack: Stack, pyc: PyColonies) -> None:
    colony = stack.new_colony()
    executor = register(pyc, colony, "audited")
    owner = colony.owner_prvkey
    for outcome in ("close", "fail"):
        pyc.submit_func_spec(one_spec(colony, "audited"), owner)
        process = pyc.assign(colony.name, 5, executor)
        pyc.add_log(process.processid, "working", executor)
        if outcome == "close":
            pyc.close(process.processid, [1], executor)
        else:
            pyc.fail(process.processid, ["no"], executor)
    events = read_events(stack.nats.url)
    mine = [e for e in events if e.aggregate_id.startswith(f"{colony.name}.")]
    assert len(mine) >= 11
    assert all(colonyos.is_colonyos_command(e.state["command"]) for e in mine[1:])
    authorities = Authorities(
        engine_id=crypto.id_from_private_key(stack.engine.engine_prvkey),
        server_id=crypto.id_from_private_key(stack.server_prvkey),
    )
    report = verify(stack.nats.url, authorities, seal_key=stack.engine.seal_key)
    assert report.ok, report.findings
    assert report.checked >= len(mine)


# ------------------------------------------------------------------ without an engine


def test_without_an_engine_the_answer_is_503_in_the_colonyos_shape(
    nats_url: str, tmp_path: Path
) -> None:
    lonely = GatewayProcess(nats_url, tmp_path / "gateway.log").start()  # no engine here
    try:
        body = colonyos.envelope({"msgtype": "getcoloniesmsg"}, crypto.new_private_key())
        status, payload = raw_call(lonely, body)
        assert (status, payload["message"]) == (503, "no colonies engine is answering")
        assert requests.get(f"{lonely.url}/health", timeout=10).status_code == 200
    finally:
        lonely.stop()


def test_an_unreachable_nats_is_one_line_and_exit_1() -> None:
    done = subprocess.run(
        [
            *(sys.executable, "-m", "colonies_es.cli", "gateway"),
            *("--nats", "nats://127.0.0.1:1", "--port", "0"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr == "error: cannot connect to NATS at nats://127.0.0.1:1\n"


# ------------------------------------------------------------------ TLS


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by its own key (PEM files)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "colonies-es gateway test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def test_pycolonies_with_tls_talks_https_and_wss(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert_file, key_file = self_signed(tmp_path)
    secure = GatewayProcess(
        stack.nats.url,
        tmp_path / "gateway.log",
        "--tls-cert",
        str(cert_file),
        "--tls-key",
        str(key_file),
    ).start()
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert_file))  # what pycolonies' requests trusts
    monkeypatch.setenv("WEBSOCKET_CLIENT_CA_BUNDLE", str(cert_file))  # and its websocket
    try:
        assert "https://" in (tmp_path / "gateway.log").read_text()
        colony = stack.new_colony()
        pyc = PyColonies("127.0.0.1", secure.port, tls=True)
        executor = register(pyc, colony, "secure")
        process = pyc.submit_func_spec(one_spec(colony, "secure"), colony.owner_prvkey)
        pyc.close(pyc.assign(colony.name, 5, executor).processid, ["ok"], executor)
        assert pyc.wait(process, 10, colony.owner_prvkey).output == ["ok"]
        with pytest.raises(requests.exceptions.ConnectionError):  # no plain HTTP there
            requests.get(f"http://127.0.0.1:{secure.port}/health", timeout=10)
    finally:
        secure.stop()


def test_tls_options_are_checked_before_serving(tmp_path: Path) -> None:
    gateway = [sys.executable, "-m", "colonies_es.cli", "gateway", "--port", "0"]
    alone = subprocess.run(
        [*gateway, "--tls-cert", str(tmp_path / "c.pem")], capture_output=True, text=True
    )
    assert (alone.returncode, alone.stderr) == (2, "error: --tls-cert and --tls-key go together\n")
    missing = subprocess.run(
        [*gateway, "--tls-cert", str(tmp_path / "c.pem"), "--tls-key", str(tmp_path / "k.pem")],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2
    assert missing.stderr.startswith(f"error: cannot use the TLS certificate {tmp_path}/c.pem")
