"""`colonies colony ...`, `colonies executor ls|approve|reject` and `colonies key generate`
on the real stack."""

from __future__ import annotations

import uuid

import msgspec

from colonies_es.crypto import Crypto, id_from_private_key
from colonies_es.models import Colony, Executor, decode, encode
from colonies_es.states import ExecutorState
from tests.stack import Stack
from tests.test_cli_common import Cli, stack_env

crypto = Crypto()


def colony_name() -> str:
    return f"cli{uuid.uuid4().hex[:10]}"


# --------------------------------------------------------------------------- keys


def test_key_generate_prints_a_key_and_its_id() -> None:
    cli = Cli({})
    out = cli.ok("key", "generate")
    prvkey = out.split("Private key:")[1].split()[0]
    assert out.split("Id:")[1].split()[0] == id_from_private_key(prvkey)
    generated = cli.json("key", "generate")
    assert generated["id"] == id_from_private_key(generated["prvkey"])
    assert generated["prvkey"] != prvkey


# --------------------------------------------------------------------------- colonies


def test_colony_add_generates_and_prints_the_colony_key(stack: Stack) -> None:
    cli = Cli({**stack_env(stack), "COLONIES_SERVER_PRVKEY": stack.server_prvkey})
    name = colony_name()
    out = cli.ok("colony", "add", "--name", name)
    prvkey = out.split("Colony prvkey")[1].split()[1]
    colony = stack.client.get_colony(name, prvkey)  # the printed key owns the colony
    assert colony.colonyid == id_from_private_key(prvkey)
    assert colony.colonyid in out


def test_colony_add_with_a_given_key_and_json(stack: Stack) -> None:
    cli = Cli({**stack_env(stack), "COLONIES_SERVER_PRVKEY": stack.server_prvkey})
    owner, name = crypto.prvkey(), colony_name()
    added = cli.json("colony", "add", "--name", name, "--colony-prvkey", owner)
    assert added == {"colony": {"colonyid": crypto.id(owner), "name": name}, "colonyprvkey": None}
    assert "Colony prvkey" not in cli.ok(
        "colony", "add", "--name", colony_name(), "--colony-prvkey", owner
    )
    line = cli.error("colony", "add", "--name", name)
    assert line == f"error: cannot now: colony {name!r} already exists"


def test_colony_add_and_ls_take_the_server_owner_key(stack: Stack) -> None:
    cli = Cli(stack_env(stack))
    assert cli.error("colony", "ls", status=2) == (
        "error: no server owner key: set COLONIES_SERVER_PRVKEY or pass --server-prvkey"
    )
    someone = crypto.prvkey()
    assert cli.error("colony", "add", "--name", colony_name(), "--server-prvkey", someone) == (
        "error: not allowed: only the server owner can do this (the key comes from "
        "COLONIES_SERVER_PRVKEY or --server-prvkey)"
    )
    name = colony_name()
    cli.ok("colony", "add", "--name", name, "--server-prvkey", stack.server_prvkey)
    listing = cli.ok("colony", "ls", COLONIES_SERVER_PRVKEY=stack.server_prvkey)
    assert name in listing
    assert "COLONY ID" in listing
    listed = decode(
        cli.ok("colony", "ls", "--json", "--server-prvkey", stack.server_prvkey), list[Colony]
    )
    assert sorted(listed, key=lambda c: c.name) == sorted(
        stack.client.list_colonies(stack.server_prvkey), key=lambda c: c.name
    )


# --------------------------------------------------------------------------- executors


def test_executor_ls_approve_and_reject(stack: Stack) -> None:
    colony = stack.new_colony()
    member_key = stack.new_executor(colony, "worker", name="approved-one")
    stack.new_executor(colony, "worker", name="newcomer", approve=False)
    cli = Cli(stack_env(stack, colony, member_key))

    listing = cli.ok("executor", "ls")
    rows = {line.split("│")[1].strip(): line for line in listing.splitlines() if "worker" in line}
    assert "APPROVED" in rows["approved-one"]
    assert "PENDING" in rows["newcomer"]
    listed = decode(cli.ok("executor", "ls", "--json"), list[Executor])
    assert msgspec.json.decode(encode(listed)) == msgspec.json.decode(
        encode(stack.client.list_executors(colony.name, member_key))
    )

    assert cli.ok("executor", "approve", "newcomer") == (
        f"Executor newcomer approved in colony {colony.name}\n"
    )
    newcomer = stack.client.get_executor(colony.name, "newcomer", member_key)
    assert newcomer.state == ExecutorState.APPROVED
    cli.ok("executor", "reject", "newcomer")
    newcomer = stack.client.get_executor(colony.name, "newcomer", member_key)
    assert newcomer.state == ExecutorState.REJECTED
    assert "REJECTED" in cli.ok("executor", "ls")

    line = cli.error("executor", "approve", "newcomer", COLONIES_COLONY_PRVKEY=member_key)
    assert line.startswith("error: not allowed: ")
    assert cli.error("executor", "reject", "nobody").startswith("error: ")
