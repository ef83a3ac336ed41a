"""The web UI in a real headless Chromium, on a real `colonies dev` stack.

One stack for the module (nats-server, engine, projector, two python executors and the
web UI, all real processes started by `colonies dev`), one browser. The tests submit the
seed's workflows and a few of their own as the dev colony's member user, then read the
pages as a person would: states, the map-reduce fan-out, the scrubber on a failed graph,
re-run from failed, a node turning green while the page stays open, and the refusals
(403 for another colony's member, 401 without the token, no non-local bind).

Screenshots of the overview, a graph and the scrubber on a failed graph are written to
build/screenshots/ (ignored by git), or to the folder ``COLONIES_SCREENSHOTS`` names:
``COLONIES_SCREENSHOTS=docs/screenshots pytest tests/test_ui.py`` refreshes the ones the
README links, so an ordinary test run leaves the working tree clean.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import BrowserContext, Locator, Page, expect

from colonies_es import Colonies, FuncSpec, Workflow, crypto, func_spec
from colonies_es.cli.dev_demo import (
    basic_workflow,
    map_reduce_workflow,
    multiple_dependencies_workflow,
)
from colonies_es.cli.dev_seed import MAP_CODE, reduce
from colonies_es.client.queries import QueryClient
from colonies_es.states import ProcessState
from colonies_es.ui.server import check_bind, is_loopback
from tests.ui_browser import DevStack, UiProcess, chromium

REPO = Path(__file__).resolve().parent.parent
SCREENSHOTS = REPO / os.environ.get("COLONIES_SCREENSHOTS", "build/screenshots")
WAIT = 30.0  # seconds a workflow or a page may take on a loaded machine
EXPECT_MS = 20_000


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    stack = DevStack(tmp_path_factory.mktemp("ui-dev"))
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def client(dev: DevStack) -> Iterator[Colonies]:
    with Colonies(
        servers=[dev.env["COLONIES_NATS_URL"]],
        nkey_file=dev.env["COLONIES_NATS_NKEY_FILE"],  # colonies dev's NATS authorization
    ) as colonies:
        yield colonies


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserContext]:
    with chromium(tmp_path_factory.mktemp("chromium")) as context:
        context.set_default_timeout(EXPECT_MS)
        yield context


@pytest.fixture(scope="module")
def page(browser: BrowserContext, dev: DevStack) -> Page:
    """A page that has been given the access token (its cookie)."""
    tab = browser.new_page()
    tab.goto(dev.link)
    expect(tab.locator("#executors")).to_be_visible()
    return tab


def _step(name: str, code: str, colonyname: str, *after: str) -> FuncSpec:
    spec = func_spec(
        func=name,
        args=[],
        colonyname=colonyname,
        executortype="python-executor",
        maxexectime=60,
        maxwaittime=60,
        code=code,
    )
    spec.conditions.dependencies.extend(after)
    return spec


def _ended(client: Colonies, graphid: str, key: str) -> int:
    """Waits for the graph to end; returns its state."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        state = client.get_processgraph(graphid, key).state
        if state in (ProcessState.SUCCESS, ProcessState.FAILED, ProcessState.CANCELLED):
            return state
        time.sleep(0.1)
    raise TimeoutError(f"graph {graphid} did not end within {WAIT:g} s")


def _views_caught_up(dev: DevStack) -> None:
    """Waits until the read model has applied the whole log (listings read from it)."""
    nats_port = urlsplit(dev.env["COLONIES_NATS_URL"]).port  # SERVER_PORT: the gateway
    assert nats_port is not None
    with QueryClient(
        dev.env["COLONIES_PRVKEY"],
        "127.0.0.1",
        nats_port,
        nkey_file=dev.env["COLONIES_NATS_NKEY_FILE"],
    ) as q:
        q.wait_for_position(q.log_position(), timeout=WAIT)


@pytest.fixture(scope="module")
def seed(dev: DevStack, client: Colonies) -> dict[str, str]:
    """The seed's three workflows, run to their end: name -> graph id."""
    key, colonyname = dev.env["COLONIES_PRVKEY"], dev.env["COLONIES_COLONY_NAME"]
    graphs = {
        name: client.submit_workflow(make(colonyname), key).processgraphid
        for name, make in (
            ("basic", basic_workflow),
            ("dependencies", multiple_dependencies_workflow),
            ("mapreduce", map_reduce_workflow),
        )
    }
    for graphid in graphs.values():
        assert _ended(client, graphid, key) == ProcessState.SUCCESS
    _views_caught_up(dev)
    return graphs


BOOM = "def boom(n1, n2, ctx={}):\n    raise ValueError(f'boom: cannot use {n1} and {n2}')\n"
GEN = "def gen_nums(ctx={}):\n    return 1, 2\n"


@pytest.fixture(scope="module")
def failed_graph(dev: DevStack, client: Colonies) -> str:
    """gen_nums -> boom, which raises: a FAILED graph."""
    colonyname, key = dev.env["COLONIES_COLONY_NAME"], dev.env["COLONIES_PRVKEY"]
    workflow = Workflow(
        colonyname=colonyname,
        functionspecs=[
            _step("gen_nums", GEN, colonyname),
            _step("boom", BOOM, colonyname, "gen_nums"),
        ],
    )
    graphid = client.submit_workflow(workflow, key).processgraphid
    assert _ended(client, graphid, key) == ProcessState.FAILED
    return graphid


_TYPE = "python-executor"


def _node(page: Page, name: str) -> Locator:
    return page.locator(f'#graph g.node[data-name="{name}"]')


# --------------------------------------------------------------------------- pages


def test_overview_shows_the_seed_workflows_with_their_states(
    page: Page, dev: DevStack, seed: dict[str, str]
) -> None:
    page.goto(dev.base + "/")
    for graphid in seed.values():
        row = page.locator(f'tr[data-graph="{graphid}"]')
        expect(row).to_have_attribute("data-state", "SUCCESS")
    expect(page.locator("#executors tr")).to_have_count(3)  # header + two executors
    expect(page.locator("#executors")).to_contain_text("python-executor")
    # the executors ran the seed's processes: their last activity is a time
    expect(page.locator("#executors td.last-activity", has_text="UTC")).not_to_have_count(0)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "overview.png"), full_page=True)


def test_graph_list_filters_by_state_searches_by_node_name_and_pages(
    page: Page, dev: DevStack, seed: dict[str, str], failed_graph: str
) -> None:
    _views_caught_up(dev)
    page.goto(dev.base + "/graphs?state=failed")
    expect(page.locator(f'tr[data-graph="{failed_graph}"]')).to_be_visible()
    expect(page.locator(f'tr[data-graph="{seed["basic"]}"]')).to_have_count(0)
    page.goto(dev.base + "/graphs?q=merge")
    expect(page.locator(f'tr[data-graph="{seed["dependencies"]}"]')).to_be_visible()
    expect(page.locator("table.graphs tr[data-graph]")).to_have_count(1)
    page.goto(dev.base + f"/graphs?q={seed['mapreduce'][:10]}")
    expect(page.locator("table.graphs tr[data-graph]")).to_have_count(1)
    page.goto(dev.base + "/graphs?state=successful&page=1")
    expect(page.locator("#page-prev")).to_be_visible()
    expect(page.locator("#no-graphs")).to_be_visible()  # three successful graphs: one page


def test_map_reduce_graph_shows_map_its_children_and_reduce(
    page: Page, dev: DevStack, seed: dict[str, str]
) -> None:
    page.goto(f"{dev.base}/graphs/{seed['mapreduce']}")
    names = ["map", *(f"gen_nums_{i}" for i in range(5)), "reduce"]
    for name in names:
        expect(_node(page, name)).to_have_attribute("data-state", "SUCCESS")
    expect(page.locator("#graph path.edge.add_child:not(.hidden)")).to_have_count(10)
    _node(page, "reduce").click()
    expect(page.locator("#node-output")).to_have_text("[15]")
    expect(page.locator("#node-input")).to_have_text("[1,2,1,2,1,2,1,2,1,2]")
    expect(page.locator("#attempts")).to_contain_text("success")
    page.screenshot(path=str(SCREENSHOTS / "graph.png"), full_page=True)
    # at the first event map has not added its children: they are not drawn yet
    page.click("#step-first")
    expect(_node(page, "gen_nums_0")).to_be_hidden()
    expect(_node(page, "map")).to_have_attribute("data-state", "WAITING")


def test_a_fan_out_of_many_alike_children_is_drawn_as_one_cluster(
    page: Page, dev: DevStack, client: Colonies
) -> None:
    colonyname, key = dev.env["COLONIES_COLONY_NAME"], dev.env["COLONIES_PRVKEY"]
    map15 = MAP_CODE.replace("range(5)", "range(15)")
    assert map15 != MAP_CODE
    reduce_spec = func_spec(
        func=reduce, args=[], colonyname=colonyname, executortype="python-executor"
    )
    reduce_spec.conditions.dependencies.append("map")
    workflow = Workflow(
        colonyname=colonyname, functionspecs=[_step("map", map15, colonyname), reduce_spec]
    )
    graphid = client.submit_workflow(workflow, key).processgraphid
    assert _ended(client, graphid, key) == ProcessState.SUCCESS
    page.goto(f"{dev.base}/graphs/{graphid}")
    cluster = page.locator("#graph g.node.cluster")
    expect(cluster).to_have_count(1)
    expect(cluster).to_have_attribute("data-counts", "0,0,15,0,0")
    expect(page.locator("#graph g.node")).to_have_count(3)  # map, the cluster, reduce
    expect(_node(page, "reduce")).to_have_attribute("data-state", "SUCCESS")
    cluster.click()
    expect(page.locator("#cluster-panel tr")).to_have_count(15)
    page.locator("#cluster-panel a", has_text="gen_nums_14").click()
    expect(page.locator("#node-output")).to_have_text("[1,2]")
    # back in time: before map ran, no child exists; while it added them, some do (its
    # first, inserted, is an event of its own: the executor sends the others together)
    page.click("#step-first")
    expect(cluster).to_be_hidden()
    page.click("#step-next")
    page.click("#step-next")
    expect(cluster).to_have_attribute("data-counts", "1,0,0,0,0")


def test_scrubber_on_a_failed_graph_shows_the_failure_arrive(
    page: Page, dev: DevStack, client: Colonies, failed_graph: str
) -> None:
    history = client.history(failed_graph, dev.env["COLONIES_PRVKEY"])
    second = history[1].sequence
    page.goto(f"{dev.base}/graphs/{failed_graph}?at={second}")
    expect(page.locator("#event-summary")).to_have_attribute("data-index", "1")
    expect(page.locator("#event-text")).to_have_text(history[1].summary)
    expect(_node(page, "boom")).to_have_attribute("data-state", "WAITING")
    expect(_node(page, "boom")).not_to_have_class("node on-path")
    page.click("#step-last")
    expect(_node(page, "boom")).to_have_attribute("data-state", "FAILED")
    expect(page.locator("#event-text")).to_have_text(history[-1].summary)
    expect(page).to_have_url(f"{dev.base}/graphs/{failed_graph}?at={history[-1].sequence}")
    # the path to the failure, the traceback and the audit verdict
    expect(_node(page, "boom")).to_have_class("node on-path")
    expect(_node(page, "gen_nums")).to_have_class("node on-path")
    expect(page.locator("#failure .traceback")).to_contain_text(
        "ValueError: boom: cannot use 1 and 2"
    )
    expect(page.locator("#failure .traceback")).to_contain_text("Traceback")
    expect(page.locator("#audit-verdict")).to_have_attribute("data-ok", "true")
    _node(page, "boom").click()
    expect(page.locator("#node-errors")).to_contain_text("boom: cannot use 1 and 2")
    expect(page.locator("#attempts")).to_contain_text("failed")
    page.screenshot(path=str(SCREENSHOTS / "failed-scrubber.png"), full_page=True)
    page.click("#step-prev")
    expect(page.locator("#event-summary")).to_have_attribute("data-index", str(len(history) - 2))
    # the open node's details follow the scrubber: before its failure, no errors yet
    expect(page.locator("#process-panel .badge")).to_have_text("RUNNING")
    expect(page.locator("#node-errors")).to_have_count(0)


def test_rerun_from_failed_creates_the_linked_graph(
    page: Page, dev: DevStack, client: Colonies, failed_graph: str
) -> None:
    page.goto(f"{dev.base}/graphs/{failed_graph}")
    page.click("#rerun")
    link = page.locator("#rerun-link")
    expect(link).to_be_visible()
    new_id = (link.get_attribute("href") or "").rsplit("/", 1)[1]
    assert client.get_processgraph(new_id, dev.env["COLONIES_PRVKEY"]).processgraphid == new_id
    link.click()
    expect(page.locator("#graph-id")).to_have_text(new_id)
    expect(page.locator("#origin-link")).to_have_attribute("href", f"/graphs/{failed_graph}")


def test_a_running_graph_turns_green_without_reload(
    page: Page, dev: DevStack, client: Colonies, tmp_path: Path
) -> None:
    release = tmp_path / "release"
    colonyname, key = dev.env["COLONIES_COLONY_NAME"], dev.env["COLONIES_PRVKEY"]
    code = (
        "def hold(ctx={}):\n    import os, time\n"
        f"    while not os.path.exists({str(release)!r}):\n        time.sleep(0.05)\n"
        "    return 7\n"
    )
    workflow = Workflow(colonyname=colonyname, functionspecs=[_step("hold", code, colonyname)])
    graphid = client.submit_workflow(workflow, key).processgraphid
    try:
        page.goto(f"{dev.base}/graphs/{graphid}")
        expect(_node(page, "hold")).to_have_attribute("data-state", "RUNNING")
        page.evaluate("window.notReloaded = true")
        release.touch()
        expect(_node(page, "hold")).to_have_attribute("data-state", "SUCCESS")
        assert page.evaluate("window.notReloaded") is True
        expect(page.locator("#graph-state .badge")).to_have_text("SUCCESS")
    finally:
        release.touch()


def test_children_added_while_the_page_is_open_appear_without_reload(
    page: Page, dev: DevStack, client: Colonies, tmp_path: Path
) -> None:
    """map adds two children, waits, adds a third: the page draws it when it comes."""
    release = tmp_path / "release"
    loop = "    for i in range(5):\n"
    assert loop in MAP_CODE
    map_code = MAP_CODE.replace(
        loop,
        "    for i in range(3):\n        if i == 2:\n            import os, time\n"
        f"            while not os.path.exists({str(release)!r}):\n"
        "                time.sleep(0.05)\n",
    )
    colonyname, key = dev.env["COLONIES_COLONY_NAME"], dev.env["COLONIES_PRVKEY"]
    reduce_spec = func_spec(func=reduce, args=[], colonyname=colonyname, executortype=_TYPE)
    reduce_spec.conditions.dependencies.append("map")
    workflow = Workflow(
        colonyname=colonyname, functionspecs=[_step("map", map_code, colonyname), reduce_spec]
    )
    graphid = client.submit_workflow(workflow, key).processgraphid
    try:
        page.goto(f"{dev.base}/graphs/{graphid}")
        expect(_node(page, "gen_nums_1")).to_be_visible()
        expect(_node(page, "map")).to_have_attribute("data-state", "RUNNING")
        expect(_node(page, "gen_nums_2")).to_have_count(0)
        page.evaluate("window.notReloaded = true")
        release.touch()
        expect(_node(page, "gen_nums_2")).to_have_attribute("data-state", "SUCCESS")
        expect(_node(page, "reduce")).to_have_attribute("data-state", "SUCCESS")
        expect(page.locator("#graph path.edge.add_child:not(.hidden)")).to_have_count(6)
        assert page.evaluate("window.notReloaded") is True
    finally:
        release.touch()


# --------------------------------------------------------------------------- refusals


def test_a_member_of_another_colony_sees_403_pages(
    browser: BrowserContext, dev: DevStack, client: Colonies, seed: dict[str, str], tmp_path: Path
) -> None:
    other_owner, other_user = crypto.new_private_key(), crypto.new_private_key()
    client.add_colony(
        {"colonyid": crypto.id_from_private_key(other_owner), "name": "other"},
        dev.env["COLONIES_SERVER_PRVKEY"],
    )
    client.add_user("other", crypto.id_from_private_key(other_user), "outsider", other_owner)
    env = {**dev.env, "COLONIES_COLONY_NAME": "other", "COLONIES_PRVKEY": other_user}
    ui = UiProcess(env, tmp_path / "ui.log")
    try:
        link = ui.wait_ready()
        base = link.split("/?", 1)[0]
        tab = browser.new_page()
        tab.goto(link)
        expect(tab.locator("h1")).to_have_text("Colony other")
        for path in (f"/graphs/{seed['basic']}", "/colonies/dev", "/graphs?colony=dev"):
            response = tab.goto(base + path)
            assert response is not None
            assert response.status == 403, path
            expect(tab.locator(".error-message")).to_contain_text("member")
        for api in ("timeline", "live", "audit", f"processes/{'0' * 64}"):
            answer = tab.request.get(f"{base}/api/graphs/{seed['basic']}/{api}")
            assert answer.status == 403, api
            assert "member" in answer.json()["error"]
        tab.close()
    finally:
        ui.stop()


def test_pages_need_the_access_token(dev: DevStack, seed: dict[str, str]) -> None:
    for path in (
        "/",
        f"/graphs/{seed['basic']}",
        f"/api/graphs/{seed['basic']}/timeline",
        "/?token=not-the-token",
    ):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(dev.base + path, timeout=WAIT)
        assert refused.value.code == 401
        assert "token" in refused.value.read().decode()
    # the page's own code and style are no secret (the 401 page uses them)
    with urllib.request.urlopen(dev.base + "/static/app.css", timeout=WAIT) as style:
        assert style.status == 200


def test_a_change_from_another_site_is_refused(dev: DevStack, failed_graph: str) -> None:
    request = urllib.request.Request(
        f"{dev.base}/api/graphs/{failed_graph}/rerun",
        method="POST",
        headers={"Cookie": f"colonies_ui_token={dev.token}", "Origin": "http://evil.example"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=WAIT)
    assert refused.value.code == 403
    assert "own pages" in refused.value.read().decode()


def test_an_exposed_ui_says_what_it_exposes(dev: DevStack, tmp_path: Path) -> None:
    ui = UiProcess(dev.env, tmp_path / "ui.log", "--ui-host", "0.0.0.0", "--expose")
    try:
        link = ui.wait_ready()
        assert link.startswith("http://0.0.0.0:")
        said = (tmp_path / "ui.log").read_text()
        assert "warning: the UI listens on 0.0.0.0" in said
        assert "re-run its failed graphs" in said
    finally:
        ui.stop()


def test_the_log_holding_the_link_is_private(dev: DevStack) -> None:
    """`colonies dev` writes the UI's output, its link with the token, to ui.log."""
    log = dev.directory / "ui.log"
    assert dev.token in log.read_text()
    assert log.stat().st_mode & 0o777 == 0o600


def test_the_server_refuses_a_non_local_bind_unless_told() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "colonies_es.cli", "ui", "--ui-host", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "", "COLONIES_PRVKEY": crypto.new_private_key(), "COLONIES_COLONY_NAME": "x"},
    )
    assert result.returncode == 2
    assert "refusing to listen on 0.0.0.0" in result.stderr
    assert "--expose" in result.stderr
    assert "Traceback" not in result.stderr
    assert all(is_loopback(host) for host in ("127.0.0.1", "::1", "localhost"))
    assert not is_loopback("0.0.0.0")
    check_bind("0.0.0.0", expose=True)  # told: no error
