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
  dagre, the SVG painted); ``interactive``: its handlers attached and painted too. Each
  run starts a `colonies ui` of its own: its first open of the graph (the server reads
  the history and builds the timeline) is ``cold``; the next finds the timeline in the
  server's cache (``warm``);
- ``step``: one click of "next event" or "previous event", until the browser has
  painted the result (``requestAnimationFrame`` then a task), :data:`STEPS` of each
  direction; ``jump``: the slider moved to a random event, as many times.
- for reference, the timeline's JSON: its size and the server's time to answer (warm);
  and where a cold open's time goes: when the page's script started, when the timeline
  arrived (the rest is drawing).

The harness's table shows each latency as a rate (one per latency, per second); the
latencies themselves, in ms, are printed after the runs and kept in the JSON
(``parameters.latencies_ms``).

Targets (absolute): first render at most 1 s (the median of the cold opens: a person
opening the graph; the warm one is reported beside it), a step at most 100 ms (the 95th
percentile).

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

from benchmarks.harness import Options, Reference, Report, Sample, Target, environment
from colonies_es import Colonies, Workflow, func_spec
from colonies_es.cli.dev_seed import MAP_CODE, reduce
from colonies_es.settings import Settings
from colonies_es.states import ProcessState
from tests.ui_browser import DevStack, UiProcess, chromium

EXECUTORS = 4
CHILDREN = 1000
QUICK_CHILDREN = 200
STEPS = 100
RUN_TIMEOUT = 600.0
FIRST_RENDER_TARGET_MS = 1000.0
STEP_TARGET_MS = 100.0

TARGETS = [
    Target("first_render_cold", "first_render_target", 1.0),
    Target("first_render_warm", "first_render_target"),
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
    """The seed's map-reduce with ``children`` children and no time limits on them (the
    seed's 100 s wait can run out for the last of 1,000 children on a loaded machine)."""
    map_code = MAP_CODE.replace("range(5)", f"range({children})")
    for limit in ("maxexectime=100", "maxwaittime=100"):
        assert limit in map_code, limit
        map_code = map_code.replace(limit, limit.replace("100", "-1"))
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
    # the settings of dev.env: where NATS is, and the NATS credential where it has one
    with Colonies.from_settings(Settings.load(dev.env)) as client:
        graphid = client.submit_workflow(_map_reduce(colonyname, children), key).processgraphid
        deadline = time.monotonic() + RUN_TIMEOUT
        while (state := client.get_processgraph(graphid, key).state) != ProcessState.SUCCESS:
            if state in (ProcessState.FAILED, ProcessState.CANCELLED):
                raise RuntimeError(
                    f"the map-reduce {graphid} ended {ProcessState(state).name}: "
                    f"see `colonies workflow debug {graphid}`"
                )
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
        quick=options.quick,
    )
    report.parameters["load_before"] = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="colonies-bench-ui-") as tmp:
        dev = DevStack(Path(tmp) / "dev", executors=EXECUTORS)
        try:
            graphid, events = _run_graph(dev, children)
            report.parameters["events"] = events
            print(f"  graph {graphid}: {events} events", flush=True)
            with chromium(Path(tmp) / "chromium") as browser:
                _measure(browser, dev, graphid, options, report, Path(tmp))
        finally:
            dev.stop()
    report.parameters["load_after"] = os.getloadavg()
    latencies = {key: 1000.0 / rate.median for key, rate in report.rates.items()}
    report.parameters["latencies_ms"] = latencies
    print("\n  latencies (median of the runs, ms):", flush=True)
    for key, milliseconds in latencies.items():
        print(f"    {report.rates[key].label:<36} {milliseconds:8.1f}", flush=True)
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


_UNIT = "1/s (1 / latency)"


def _latency(report: Report, key: str, label: str, milliseconds: float) -> None:
    report.add(key, label, _UNIT, _per_ms(milliseconds))


def _measure(
    browser: Any, dev: DevStack, graphid: str, options: Options, report: Report, tmp: Path
) -> None:
    """Each run on a `colonies ui` of its own (so its first open is cold), in the same
    browser: a cold open, a warm one, the timeline's answer, the scrubber."""
    report.references["first_render_target"] = Reference(
        "target: first render 1 s", _UNIT, 1000.0 / FIRST_RENDER_TARGET_MS
    )
    report.references["step_target"] = Reference(
        "target: step 100 ms", _UNIT, 1000.0 / STEP_TARGET_MS
    )
    for run_number in range(options.runs):
        ui = UiProcess(dev.env, tmp / f"ui-{run_number}.log")
        page = browser.new_page()
        try:
            link = ui.wait_ready()
            base = link.split("/?", 1)[0]
            page.goto(link)
            url = f"{base}/graphs/{graphid}"
            cold = _open(page, url)
            report.parameters["drawn_nodes"] = page.locator("#graph g.node").count()
            warm = _open(page, url)
            started = time.perf_counter()
            response = page.request.get(f"{base}/api/graphs/{graphid}/timeline")
            answer_ms = (time.perf_counter() - started) * 1000
            report.parameters["timeline_json_bytes"] = len(response.body())
            steps = page.evaluate(_MEASURE_STEPS, [STEPS])
        finally:
            page.close()
            ui.stop()
        both = steps["next"] + steps["prev"]
        _latency(report, "first_render_cold", "first render, cold", cold["firstRender"])
        _latency(report, "interactive_cold", "interactive, cold", cold["interactive"])
        _latency(report, "script_cold", "cold: page script running", cold["started"])
        _latency(report, "arrived_cold", "cold: timeline arrived", cold["timelineArrived"])
        _latency(report, "first_render_warm", "first render, warm", warm["firstRender"])
        _latency(report, "interactive_warm", "interactive, warm", warm["interactive"])
        _latency(report, "timeline_answer", "timeline JSON answered (warm)", answer_ms)
        _latency(report, "step_median", "scrubber step, median", statistics.median(both))
        _latency(report, "step_p95", "scrubber step, 95th percentile", _percentile(both, 0.95))
        _latency(report, "jump_median", "slider jump, median", statistics.median(steps["jump"]))
        _latency(
            report, "jump_p95", "slider jump, 95th percentile", _percentile(steps["jump"], 0.95)
        )
        print(
            f"  run {run_number + 1}: first render cold {cold['firstRender']:.0f} ms, warm "
            f"{warm['firstRender']:.0f} ms; step median {statistics.median(both):.1f} ms "
            f"p95 {_percentile(both, 0.95):.1f} ms; jump median "
            f"{statistics.median(steps['jump']):.1f} ms; timeline answer {answer_ms:.0f} ms",
            flush=True,
        )
