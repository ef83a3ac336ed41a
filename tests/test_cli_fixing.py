"""Debugging that can fix (issue 10, finding 10): a failed workflow re-run with new code
from a local file (the failed node runs the fix on its recorded input, succeeded nodes
replay their outputs), the fix tried locally first, and `debug --rerun --pdb`."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from colonies_es.models import ProcessGraph, decode
from colonies_es.states import ProcessState
from tests.stack import ColonyHandle, Stack
from tests.test_cli_common import COLONIES_VARIABLES, colonies_script
from tests.test_history import cli, cli_ok, colony, executor, failed_map_reduce, wait_ended

__all__ = ["colony"]  # the fixture, used by name

FIX = """
def gen_nums(ctx={}):
    return 1, 2
"""


def test_rerun_with_code_runs_the_fix_where_it_failed_and_replays_what_succeeded(
    stack: Stack, colony: ColonyHandle, tmp_path: Path
) -> None:
    graphid = failed_map_reduce(stack, colony, tmp_path / "never")
    fix = tmp_path / "fix.py"
    fix.write_text(FIX)
    key = ["--prvkey", colony.owner_prvkey]

    local = cli(stack, "workflow", "debug", graphid, "--rerun", "gen_nums_2", "--code", str(fix),
                prvkey=colony.owner_prvkey)  # fmt: skip
    assert local.exit_code == 0, local.stdout + local.stderr
    assert "returned: [1,2]" in local.stdout  # the fix, tried here on the recorded input

    out = cli_ok(
        stack, "workflow", "rerun", graphid[:10], "--colony", colony.name, "--code", str(fix), *key
    )
    assert out.endswith(f"{graphid} from its failure with new code for gen_nums_2, "
                        "gen_nums_3, gen_nums_4\n")  # fmt: skip
    rerun = decode(
        cli_ok(stack, "workflow", "rerun", graphid, "--code", str(fix), "--json", *key),
        ProcessGraph,
    )
    with executor(stack, colony):
        assert wait_ended(stack, colony, rerun.processgraphid) == ProcessState.SUCCESS
    processes = {
        p.spec.nodename: p
        for p in (stack.client.get_process(pid, colony.owner_prvkey) for pid in rerun.processids)
    }
    assert processes["reduce"].output == [15]
    assert processes["gen_nums_2"].output == [1, 2]
    # map replayed its output: it added no children this time.
    assert len(rerun.processids) == 7


def test_rerun_with_code_that_changes_nothing_is_refused(
    stack: Stack, colony: ColonyHandle, tmp_path: Path
) -> None:
    graphid = failed_map_reduce(stack, colony, tmp_path / "never")
    other = tmp_path / "other.py"
    other.write_text("def unrelated(ctx={}):\n    return 0\n")
    result = cli(stack, "workflow", "rerun", graphid, "--code", str(other),
                 "--prvkey", colony.owner_prvkey)  # fmt: skip
    assert result.exit_code == 1
    assert result.stderr == (
        "error: the file defines none of the functions that run again "
        "(gen_nums, gen_nums, gen_nums, reduce)\n"
    )
    broken = tmp_path / "broken.py"
    broken.write_text("def gen_nums(:\n")
    result = cli(stack, "workflow", "rerun", graphid, "--code", str(broken),
                 "--prvkey", colony.owner_prvkey)  # fmt: skip
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {broken} does not parse: ")


def test_debug_rerun_pdb_stops_at_the_functions_first_line(
    stack: Stack, colony: ColonyHandle, tmp_path: Path
) -> None:
    graphid = failed_map_reduce(stack, colony, tmp_path / "never")
    env = {k: v for k, v in os.environ.items() if k not in COLONIES_VARIABLES}
    env.update(
        COLONIES_SERVER_HOST="127.0.0.1",
        COLONIES_SERVER_PORT=str(stack.nats.port),
        COLONIES_EVENT_SEAL_KEY=stack.engine.seal_key,
        COLONIES_PRVKEY=colony.owner_prvkey,
    )
    run = subprocess.run(
        [colonies_script(), "workflow", "debug", graphid, "--rerun", "gen_nums_2", "--pdb"],
        input='p ctx["process"].spec.nodename\ncontinue\n',
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "(Pdb)" in run.stdout, run.stdout + run.stderr
    assert '-> if ctx["process"].spec.nodename == "gen_nums_2"' in run.stdout
    assert "'gen_nums_2'" in run.stdout  # what `p` printed, inside the function
    assert "raised: ValueError: no numbers for gen_nums_2" in run.stdout
    assert run.returncode == 1
