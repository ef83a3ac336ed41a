"""The web UI in headless Chromium: a 1,000-child map-reduce graph, and its scrubber.

The stack is `colonies dev` (nats-server, engine, projector, :data:`EXECUTORS` python
executors and the web UI, each its own process; :class:`tests.ui_browser.DevStack`).
The seed's map-reduce, scaled to :data:`CHILDREN` children (``map`` adds them with
``add_child``, one command each), runs to its end: about 3,000 events (the submission,
1,000 ChildAdded, 1,001 assignments and 1,001 closes, and map's and reduce's own).

Measured in Debian's Chromium (Playwright), from the page's own marks
(``window.coloniesUi``, milliseconds since the navigation started, so the server's
answer is included):

- ``first_render``: the graph drawn and painted (the timeline fetched, laid out by
  dagre, the SVG painted); ``interactive``: its handlers attached and painted too. The
  first open of the graph (the server reads its history and builds the timeline) is
  ``cold``; later opens find the timeline in the server's cache (``warm``);
- ``step``: one click of "next event" or "previous event", until the browser has
  painted the result (``requestAnimationFrame`` then a task), :data:`STEPS` of each
  direction; ``jump``: the slider moved to a random event, as many times.
- for reference, the timeline's JSON: its size and the server's time to answer.

Targets (absolute): first render at most 1 s (the median of the warm opens, the cold
one reported beside it), a step at most 100 ms (the 95th percentile).

Run ``python -m benchmarks ui [--quick] [--runs N]`` from the repository root (it needs
``/usr/bin/chromium``: ``apt-get install -y chromium``).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import Options, Report, Sample, Target, environment
from colonies_es import Colonies, Workflow, func_spec
from colonies_es.cli.dev_seed import MAP_CODE, reduce
from colonies_es.states import ProcessState
from tests.ui_browser import DevStack, chromium

EXECUTORS = 4
CHILDREN = 1000
QUICK_CHILDREN = 200
STEPS = 100
RUN_TIMEOUT = 600.0
FIRST_RENDER_TARGET_MS = 1000.0
STEP_TARGET_MS = 100.0

TARGETS = [
    Target("first_render_warm", "first_render_target", 1.0),
    Target("step_p95", "step_target", 1.0),
]
"""Latencies are reported as rates (one per latency), so ``rate / target >= 1`` means
within the target."""

_MEASURE_STEPS = """async ([steps]) => {
  const painted = () => new Promise((r) => requestAnimationFrame(() => setTimeout(r, 0)));
  const click = async (id) => {
    const t0 = performance.now();
    document.getElementById(id).click();
    await painted();
    return performance.now() - t0;
  };
  const slider = document.getElementById("scrubber");
  const last = Number(slider.max);
  const out = { next: [], prev: [], jump: [] };
  document.getElementById("step-first").click();
  await painted();
  for (let i = 0; i < steps; i++) out.next.push(await click("step-next"));
  for (let i = 0; i < steps; i++) out.prev.push(await click("step-prev"));
  for (let i = 0; i < steps; i++) {
    const t0 = performance.now();
    slider.value = String(Math.floor(Math.random() * (last + 1)));
    slider.dispatchEvent(new Event("input"));
    await painted();
    out.jump.push(performance.now() - t0);
  }
  return out;
}"""


def _map_reduce(colonyname: str, children: int) -> Workflow:
    map_code = MAP_CODE.replace("range(5)", f"range({children})")
    reduce_spec = func_spec(func=reduce, args=[], colonyname=colonyname, executortype=_TYPE)
    reduce_spec.conditions.dependencies.append("map")
    map_spec = func_spec(
        func="map", args=[], colonyname=colonyname, executortype=_TYPE, code=map_code
    )
    return Workflow(colonyname=colonyname, functionspecs=[map_spec, reduce_spec])


_TYPE = "python-executor"


def _run_graph(dev: DevStack, children: int) -> tuple[str, int]:
    """Submits the map-reduce, waits for its end; returns its id and its event count."""
    key, colonyname = dev.env["COLONIES_PRVKEY"], dev.env["COLONIES_COLONY_NAME"]
    with Colonies("127.0.0.1", int(dev.env["COLONIES_SERVER_PORT"])) as client:
        graphid = client.submit_workflow(_map_reduce(colonyname, children), key).processgraphid
        deadline = time.monotonic() + RUN_TIMEOUT
        while client.get_processgraph(graphid, key).state != ProcessState.SUCCESS:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the map-reduce did not succeed within {RUN_TIMEOUT:g} s")
            time.sleep(0.5)
        return graphid, len(client.history(graphid, key))


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _per_ms(milliseconds: float) -> Sample:
    """A latency as a rate (one per that many ms), so the harness's ratios apply."""
    return Sample(1, milliseconds / 1000.0)


def run(options: Options) -> Report:
    children = QUICK_CHILDREN if options.quick else CHILDREN
    report = Report(
        "ui",
        options.runs,
        parameters={"children": children, "executors": EXECUTORS, "steps": STEPS},
        environment=environment(),
        targets=TARGETS,
    )
    report.parameters["load_before"] = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="colonies-bench-ui-") as tmp:
        dev = DevStack(Path(tmp) / "dev", executors=EXECUTORS)
        try:
            graphid, events = _run_graph(dev, children)
            report.parameters["events"] = events
            print(f"  graph {graphid}: {events} events", flush=True)
            with chromium(Path(tmp) / "chromium") as browser:
                _measure(browser, dev, graphid, options, report)
        finally:
            dev.stop()
    report.parameters["load_after"] = os.getloadavg()
    return report


def _open(page: Any, url: str) -> dict[str, float]:
    page.goto(url)
    deadline = time.monotonic() + 60
    while True:  # polled from here: the page's CSP forbids the eval wait_for_function uses
        marks: dict[str, float] = page.evaluate("window.coloniesUi")
        if "interactive" in marks and "firstRender" in marks:
            return marks
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not become interactive within 60 s")
        time.sleep(0.01)


def _measure(browser: Any, dev: DevStack, graphid: str, options: Options, report: Report) -> None:
    page = browser.new_page()
    page.goto(dev.link)
    url = f"{dev.base}/graphs/{graphid}"
    cold = _open(page, url)
    report.add(
        "first_render_cold",
        "first render, cold server cache",
        "1/s (1 / latency)",
        _per_ms(cold["firstRender"]),
    )
    report.add(
        "interactive_cold", "interactive, cold", "1/s (1 / latency)", _per_ms(cold["interactive"])
    )
    print(
        f"  cold open: first render {cold['firstRender']:.0f} ms, "
        f"interactive {cold['interactive']:.0f} ms",
        flush=True,
    )
    report.add(
        "first_render_target",
        "target: first render 1 s",
        "1/s (1 / latency)",
        _per_ms(FIRST_RENDER_TARGET_MS),
    )
    report.add("step_target", "target: step 100 ms", "1/s (1 / latency)", _per_ms(STEP_TARGET_MS))
    nodes = page.locator("#graph g.node").count()
    report.parameters["drawn_nodes"] = nodes
    for run_number in range(options.runs):
        warm = _open(page, url)
        report.add(
            "first_render_warm",
            "first render, warm",
            "1/s (1 / latency)",
            _per_ms(warm["firstRender"]),
        )
        report.add(
            "interactive_warm",
            "interactive, warm",
            "1/s (1 / latency)",
            _per_ms(warm["interactive"]),
        )
        started = time.perf_counter()
        response = page.request.get(f"{dev.base}/api/graphs/{graphid}/timeline")
        answer_ms = (time.perf_counter() - started) * 1000
        report.parameters["timeline_json_bytes"] = len(response.body())
        report.add(
            "timeline_answer",
            "timeline JSON answered (warm)",
            "1/s (1 / latency)",
            _per_ms(answer_ms),
        )
        steps = page.evaluate(_MEASURE_STEPS, [STEPS])
        both = steps["next"] + steps["prev"]
        report.add(
            "step_median",
            "scrubber step, median",
            "1/s (1 / latency)",
            _per_ms(statistics.median(both)),
        )
        report.add(
            "step_p95",
            "scrubber step, 95th percentile",
            "1/s (1 / latency)",
            _per_ms(_percentile(both, 0.95)),
        )
        report.add(
            "jump_median",
            "slider jump, median",
            "1/s (1 / latency)",
            _per_ms(statistics.median(steps["jump"])),
        )
        report.add(
            "jump_p95",
            "slider jump, 95th percentile",
            "1/s (1 / latency)",
            _per_ms(_percentile(steps["jump"], 0.95)),
        )
        print(
            f"  run {run_number + 1}: first render {warm['firstRender']:.0f} ms, interactive "
            f"{warm['interactive']:.0f} ms, step median {statistics.median(both):.1f} ms "
            f"p95 {_percentile(both, 0.95):.1f} ms, jump median "
            f"{statistics.median(steps['jump']):.1f} ms, timeline answer {answer_ms:.0f} ms",
            flush=True,
        )
    page.close()
