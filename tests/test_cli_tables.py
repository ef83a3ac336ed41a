"""Tables people read, ids they type, and the commands they look for (issue 10, findings
3 and 5): tables fit 80 columns with id prefixes (whole ids with --wide and --json), any
unique prefix is accepted, listings say when they are cut, every state can be listed,
and `log get`, `user add`, `executor remove`, `process remove`, `colony remove`, `stats`
and `--version` exist."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from colonies_es.cli.common import SHORT_ID, ago
from colonies_es.crypto import Crypto
from colonies_es.states import ExecutorState, ProcessState
from tests.stack import Stack
from tests.test_cli_common import EXECUTOR_TYPE, Cli, stack_env
from tests.test_cli_workflow import SEED, SEED_FUNCTIONS, Member

crypto = Crypto()
NARROW = "80"


@pytest.fixture(scope="module")
def stack(stack_with_projector: Stack) -> Stack:
    """Workflow history reads go through a projector: the engine process runs one."""
    return stack_with_projector


@pytest.fixture
def member(stack: Stack, tmp_path: Path) -> Member:
    colony = stack.new_colony()
    prvkey = crypto.prvkey()
    stack.client.add_user(colony.name, crypto.id(prvkey), "alice", colony.owner_prvkey)
    env = {**stack_env(stack, colony, prvkey), "COLONIES_SERVER_PRVKEY": stack.server_prvkey}
    return Member(stack, colony, prvkey, Cli(env), tmp_path)


def fits(out: str, width: int = 80) -> None:
    """Every line within ``width``, and every table line whole (its right border shown:
    a console crops what is wider than itself)."""
    too_long = [line for line in out.splitlines() if len(line) > width]
    assert not too_long, "\n".join(too_long)
    cropped = [line for line in out.splitlines() if line[:1] in "╭│├╰" and line[-1] not in "╮│┤╯"]
    assert not cropped, out


def test_tables_fit_80_columns_with_id_prefixes_and_wide_shows_whole_ids(
    member: Member,
) -> None:
    with member.executor(**SEED_FUNCTIONS):
        graphid = member.submit(*SEED)
        member.wait_for(graphid, ProcessState.SUCCESS)
    processid = member.client.get_processgraph(graphid, member.prvkey).processids[1]
    member.stack.new_executor(member.colony, "python-executor", name="python-executor-18d0c3a2")
    for command in (
        ("workflow", "ls"),
        ("workflow", "pss"),
        ("process", "ls"),
        ("process", "pss"),
        ("executor", "ls"),
        ("workflow", "get", graphid[:8]),
    ):
        out = member.cli.ok(*command, COLUMNS=NARROW)
        fits(out)
        assert "…" not in out.split("\n", 3)[1], out  # the header row is whole
    listing = member.cli.ok("workflow", "ls", COLUMNS=NARROW)
    assert graphid[:SHORT_ID] in listing
    assert graphid not in listing
    assert "s ago" in listing  # an age, not a timestamp
    processes = member.cli.ok("process", "ls", COLUMNS=NARROW)
    assert "sum_nums" in processes
    assert "gen_nums" in processes
    assert processid[:SHORT_ID] in processes
    assert graphid in member.cli.ok("workflow", "ls", "--wide")
    assert processid in member.cli.ok("process", "ls", "--wide")
    assert member.cli.json("workflow", "ls")[0]["processgraphid"] == graphid


def test_any_unique_prefix_is_accepted_and_an_ambiguous_one_is_a_clear_error(
    member: Member,
) -> None:
    graphids = [member.submit({**SEED[0], "nodename": "only"}) for _ in range(17)]
    first = graphids[0]
    shown = member.cli.json("workflow", "get", first[:6])
    assert shown["processgraph"]["processgraphid"] == first
    processid = shown["processes"][0]["processid"]
    assert member.cli.json("process", "get", processid[:7])["processid"] == processid
    history = member.cli.ok("workflow", "history", first[:6])
    assert "submitted" in history
    # 17 ids over 16 hex digits: two start alike (pigeonhole).
    letter, _ = Counter(g[0] for g in graphids).most_common(1)[0]
    line = member.cli.error("workflow", "get", letter)
    assert line.startswith(f"error: '{letter}' starts ")
    assert line.endswith("give more characters")
    assert member.cli.error("workflow", "get", "zz") == (
        "error: no workflow id starts with 'zz' (give more of it, or the whole id)"
    )
    member.cli.ok("workflow", "remove", first[:10])
    assert first not in member.cli.ok("workflow", "ls", "--wide", "--count", "100")


def test_listings_say_when_they_are_cut_and_every_state_can_be_listed(member: Member) -> None:
    graphids = [member.submit(SEED[0]) for _ in range(3)]
    cut = member.cli("workflow", "ls", "--count", "2")
    assert cut.exit_code == 0
    assert cut.stderr == "(the newest 2 workflows shown; more with --count 10)\n"
    whole = member.cli("workflow", "ls", "--count", "3")
    assert whole.stderr == ""
    member.cli.ok("workflow", "cancel", graphids[0][:12])
    cancelled = member.cli.json("workflow", "ls", "--state", "cancelled")
    assert [g["processgraphid"] for g in cancelled] == [graphids[0]]
    every = member.cli.json("workflow", "ls")
    assert {g["processgraphid"] for g in every} == set(graphids)
    processes = member.cli.json("process", "ls", "--state", "cancelled")
    assert [p["processgraphid"] for p in processes] == [graphids[0]]


def test_ages_are_human() -> None:
    from datetime import UTC, datetime, timedelta

    now = datetime(2026, 1, 2, tzinfo=UTC)
    assert ago(now - timedelta(seconds=5), now) == "5s ago"
    assert ago(now - timedelta(minutes=3, seconds=9), now) == "3m ago"
    assert ago(now - timedelta(hours=2), now) == "2h ago"
    assert ago(now - timedelta(days=4), now) == "4d ago"
    assert ago(None, now) == "-"


# --------------------------------------------------------------------------- new commands


def test_user_add_makes_a_member_whose_key_works(member: Member) -> None:
    added = member.cli.json(
        "user", "add", "--name", "carol", COLONIES_COLONY_PRVKEY=member.colony.owner_prvkey
    )
    assert added["username"] == "carol"
    assert crypto.id(added["prvkey"]) == added["userid"]
    carol = Cli({**member.cli.env, "COLONIES_PRVKEY": added["prvkey"]})
    assert carol.json("workflow", "ls") == []
    refused = member.cli.error(
        "user", "add", "--name", "dave", COLONIES_COLONY_PRVKEY=member.prvkey
    )
    assert refused.startswith("error: not allowed: ")


def test_executor_remove_and_colony_remove(member: Member, stack: Stack) -> None:
    stack.new_executor(member.colony, EXECUTOR_TYPE, name="stale")
    owner = {"COLONIES_COLONY_PRVKEY": member.colony.owner_prvkey}
    assert member.cli.ok("executor", "remove", "stale", **owner) == (
        f"Executor stale removed from colony {member.colony.name}\n"
    )
    names = [e["executorname"] for e in member.cli.json("executor", "ls")]
    assert "stale" not in names
    doomed = stack.new_colony()
    assert member.cli.ok("colony", "remove", doomed.name) == f"Colony {doomed.name} removed\n"
    listed = [c["name"] for c in member.cli.json("colony", "ls")]
    assert doomed.name not in listed


def test_process_remove_takes_a_lone_process_out_of_listings(member: Member) -> None:
    graphid = member.submit(SEED[0])
    processid = member.client.get_processgraph(graphid, member.prvkey).processids[0]
    out = member.cli.ok("process", "remove", processid[:10])
    assert out == f"Process {processid} removed\n"
    assert processid not in member.cli.ok("process", "ls", "--wide")


def test_stats_counts_and_log_get_shows_what_the_function_wrote(
    member: Member, stack: Stack
) -> None:
    executor_key = stack.new_executor(member.colony, EXECUTOR_TYPE, name="logger")
    graphid = member.submit(SEED[0])
    process = stack.client.assign(member.colony.name, 10, executor_key)
    stack.client.add_log(process.processid, "hello from gen_nums\n", executor_key)
    stack.client.close(process.processid, [1], executor_key)
    member.wait_for(graphid, ProcessState.SUCCESS)
    logs = member.cli.ok("log", "get", process.processid[:12])
    assert logs.endswith("  logger  hello from gen_nums\n")
    assert member.cli.json("log", "get", process.processid)[0]["message"] == "hello from gen_nums\n"
    counts = member.cli.json("stats")
    assert counts["successfulprocesses"] == 1
    assert counts["successfulworkflows"] == 1
    assert "1 successful" in member.cli.ok("stats")
    approved = [e for e in member.cli.json("executor", "ls") if e["executorname"] == "logger"]
    assert approved[0]["state"] == ExecutorState.APPROVED


def test_version() -> None:
    out = Cli({}).ok("--version")
    assert out.startswith("colonies-es ")
    assert out.split()[1][0].isdigit()


def test_executors_are_heard_from_when_they_claim_and_report_even_after_a_restart(
    fresh_stack: Stack, tmp_path: Path
) -> None:
    stack = fresh_stack
    colony = stack.new_colony()
    busy = stack.new_executor(colony, EXECUTOR_TYPE, name="busy")
    stack.new_executor(colony, EXECUTOR_TYPE, name="silent")
    member = Member(stack, colony, colony.owner_prvkey,
                    Cli(stack_env(stack, colony, colony.owner_prvkey)), tmp_path)  # fmt: skip
    graphid = member.submit(SEED[0])
    process = stack.client.assign(colony.name, 10, busy)
    stack.client.close(process.processid, [1], busy)
    member.wait_for(graphid, ProcessState.SUCCESS)

    def heard() -> dict[str, str | None]:
        return {
            e["executorname"]: e["lastheardfromtime"] for e in member.cli.json("executor", "ls")
        }

    before = heard()
    assert before["busy"] is not None
    assert before["silent"] is None
    table = member.cli.ok("executor", "ls")
    assert "never" in table
    assert "s ago" in table
    stack.engine.stop()
    stack.engine.start()
    assert heard()["busy"] == before["busy"]  # derived from the log again
