// colonies web UI: the pages of one colony and its graphs, filled from the server's JSON
// API (colonies_es/ui/server.py). No framework; the graph layout is dagre (vendored).
// Every piece of data reaches the page through textContent or attributes, never as HTML.
"use strict";

const STATES = ["WAITING", "RUNNING", "SUCCESS", "FAILED", "CANCELLED"];
const FILTERS = ["", "waiting", "running", "successful", "failed"];
const CLUSTER_AT = 12; // siblings with the same function, parents and children drawn as one
const NODE_W = 150, NODE_H = 36, CLUSTER_W = 210, CLUSTER_H = 58;

// Timings for the benchmark (benchmarks/ui.py), in ms since the navigation started.
const timings = (window.coloniesUi = { started: performance.now() });

// ------------------------------------------------------------------ small helpers

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "onclick") node.addEventListener("click", value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  return node;
}

function badge(state) {
  const name = STATES[state] || String(state);
  return el("span", { class: `badge s-${name}`, "data-state": name }, name);
}

function when(text) {
  return text ? text.replace("T", " ").replace(/\.\d+/, "").replace("+00:00", " UTC") : "";
}

function short(id) {
  return id ? id.slice(0, 12) : "";
}

async function api(path, options) {
  const response = await fetch(path, options);
  const body = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) throw new Error(`${response.status}: ${body.error || response.statusText}`);
  return body;
}

function show(...children) {
  const main = document.getElementById("main");
  main.replaceChildren(...children);
  return main;
}

function failShown(error) {
  show(el("p", { class: "error-message", id: "error" }, String(error.message || error)));
}

// ------------------------------------------------------------------ routing

const colony = document.body.dataset.colony || document.body.dataset.defaultColony;

function route() {
  const path = location.pathname;
  const params = new URLSearchParams(location.search);
  document.getElementById("nav-overview").href = `/colonies/${encodeURIComponent(colony)}`;
  document.getElementById("nav-graphs").href = `/graphs?colony=${encodeURIComponent(colony)}`;
  const graph = path.match(/^\/graphs\/([0-9a-f]+)$/);
  if (graph) return graphPage(graph[1], params.get("at"));
  if (path === "/graphs") return listPage(params);
  return overviewPage();
}

document.addEventListener("DOMContentLoaded", () => route().catch(failShown));

// ------------------------------------------------------------------ overview

async function overviewPage() {
  const data = await api(`/api/colonies/${encodeURIComponent(colony)}/overview`);
  const s = data.stats;
  const card = (n, label, filter) =>
    el("a", { class: "card", href: listUrl({ state: filter }) },
      el("div", { class: "n" }, n), el("div", { class: "l" }, label));
  show(
    el("h1", {}, `Colony ${data.colonyname}`),
    el("h2", {}, "Graphs"),
    el("div", { class: "cards", id: "graph-counts" },
      card(s.waitingworkflows, "waiting", "waiting"),
      card(s.runningworkflows, "running", "running"),
      card(s.successfulworkflows, "successful", "successful"),
      card(s.failedworkflows, "failed", "failed")),
    el("h2", {}, "Processes"),
    el("div", { class: "cards", id: "process-counts" },
      card(s.waitingprocesses, "waiting"), card(s.runningprocesses, "running"),
      card(s.successfulprocesses, "successful"), card(s.failedprocesses, "failed")),
    el("h2", {}, "Recent graphs"),
    graphTable(data.graphs),
    el("h2", {}, `Executors (${data.executors.length})`),
    el("table", { id: "executors" },
      el("tr", {}, el("th", {}, "name"), el("th", {}, "type"), el("th", {}, "state"),
        el("th", {}, "last activity")),
      data.executors.map((x) =>
        el("tr", {}, el("td", {}, x.executorname), el("td", {}, x.executortype),
          el("td", {}, ["PENDING", "APPROVED", "REJECTED"][x.state] || x.state),
          el("td", { class: "last-activity" }, when(x.lastactivity) || "none yet")))),
  );
}

function listUrl(change) {
  const params = new URLSearchParams(location.pathname === "/graphs" ? location.search : "");
  params.set("colony", colony);
  for (const [key, value] of Object.entries(change)) {
    if (value === "" || value === undefined || value === null) params.delete(key);
    else params.set(key, value);
  }
  if (!("page" in change)) params.delete("page");
  return `/graphs?${params}`;
}

function graphTable(graphs) {
  return el("table", { class: "graphs" },
    el("tr", {}, el("th", {}, "graph"), el("th", {}, "state"), el("th", {}, "processes"),
      el("th", {}, "submitted"), el("th", {}, "ended")),
    graphs.map((g) =>
      el("tr", { "data-graph": g.processgraphid, "data-state": STATES[g.state] },
        el("td", {}, el("a", { href: `/graphs/${g.processgraphid}`, class: "mono" },
          g.processgraphid)),
        el("td", {}, badge(g.state)), el("td", {}, g.processes),
        el("td", {}, when(g.submissiontime)), el("td", {}, when(g.endtime)))));
}

// ------------------------------------------------------------------ graph list

async function listPage(params) {
  const state = params.get("state") || "";
  const search = params.get("q") || "";
  const page = Number(params.get("page") || 0);
  const query = new URLSearchParams({ state, q: search, page: String(page) });
  const data = await api(`/api/colonies/${encodeURIComponent(colony)}/graphs?${query}`);
  document.querySelector("#search input[name=q]").value = search;
  show(
    el("h1", {}, `Graphs of ${data.colonyname}`),
    el("div", { class: "filters" },
      FILTERS.map((f) => el("a", { href: listUrl({ state: f }), class: f === state ? "on" : "" },
        f || "all"))),
    search ? el("p", {}, `matching “${search}” (id prefix or node name, among the newest `,
      `${data.scanned})`) : null,
    data.graphs.length ? graphTable(data.graphs) : el("p", { id: "no-graphs" }, "no graphs"),
    el("div", { class: "pager" },
      page > 0 ? el("a", { href: listUrl({ page: page - 1 }), id: "page-prev" }, "← newer") : null,
      el("span", {}, `page ${page + 1}`),
      data.more ? el("a", { href: listUrl({ page: page + 1 }), id: "page-next" }, "older →")
        : null),
  );
}

// ------------------------------------------------------------------ graph view

async function graphPage(graphid, at) {
  const timeline = await api(`/api/graphs/${graphid}/timeline`);
  timings.timelineArrived = performance.now();
  const view = new GraphView(graphid, timeline);
  view.render();
  const start = at !== null ? view.indexOfSequence(Number(at)) : view.events.length - 1;
  view.moveTo(start);
  afterPaint(() => { timings.firstRender = performance.now(); });
  view.attach();
  afterPaint(() => { timings.interactive = performance.now(); });
  view.follow();
}

// Runs `then` once the browser has painted what the page drew so far (the benchmark's
// marks: milliseconds since the navigation started).
function afterPaint(then) {
  requestAnimationFrame(() => setTimeout(then, 0));
}

class GraphView {
  constructor(graphid, timeline) {
    this.graphid = graphid;
    this.load(timeline);
    this.selected = null;
    this.index = -1;
  }

  // Takes a packed timeline (colonies_es/ui/timeline.py): the whole of it, or, with
  // `from`, what follows what this view has; unpacks it (nodes are named by index).
  load(packed) {
    const base = packed.from && this.timeline ? this.timeline : { nodes: [], edges: [], events: [] };
    const nodes = base.nodes.concat(packed.nodes);
    const ids = nodes.map((n) => n.id);
    const edges = base.edges.concat(packed.edges.map(([from, to, born, died, addChild]) =>
      ({ from: ids[from], to: ids[to], born, died, kind: addChild ? "add_child" : "dependency" })));
    for (const [edge, died] of packed.died || []) edges[edge].died = died;
    const events = base.events.concat(packed.events.map(
      ([seq, us, kind, actor, summary, graphstate, changes]) =>
        ({ seq, kind: packed.kinds[kind], actor: packed.actors[actor][0],
          actorname: packed.actors[actor][1], summary, graphstate,
          time: new Date(us / 1000).toISOString().replace("Z", "+00:00"),
          changes: changes.map(([node, state]) => [ids[node], state]) })));
    const timeline = { ...packed, nodes, edges, events };
    this.timeline = timeline;
    this.events = events;
    this.nodes = new Map(nodes.map((n) => [n.id, n]));
    this.state = new Map(); // processid -> state at this.index
    this.index = -1;
    this.cluster(timeline);
  }

  // Siblings with the same function, parents and children (a map's fan-out) become one
  // cluster node once there are CLUSTER_AT of them.
  cluster(timeline) {
    const parents = new Map(), children = new Map();
    for (const e of timeline.edges) {
      if (e.died !== null) continue;
      (parents.get(e.to) || parents.set(e.to, []).get(e.to)).push(e.from);
      (children.get(e.from) || children.set(e.from, []).get(e.from)).push(e.to);
    }
    const groups = new Map();
    for (const n of timeline.nodes) {
      const key = [n.func, (parents.get(n.id) || []).sort().join(","),
        (children.get(n.id) || []).sort().join(",")].join("|");
      (groups.get(key) || groups.set(key, []).get(key)).push(n.id);
    }
    this.visualOf = new Map();
    this.visuals = new Map(); // visual id -> {id, members, cluster}
    for (const members of groups.values()) {
      if (members.length >= CLUSTER_AT) {
        const id = `cluster:${members[0]}`;
        this.visuals.set(id, { id, members, cluster: true });
        for (const m of members) this.visualOf.set(m, id);
      } else {
        for (const m of members) {
          this.visuals.set(m, { id: m, members: [m], cluster: false });
          this.visualOf.set(m, m);
        }
      }
    }
    this.parentsNow = parents;
    this.vedges = new Map(); // "a>b" -> {from, to, edges: [...], kind}
    for (const e of timeline.edges) {
      const from = this.visualOf.get(e.from), to = this.visualOf.get(e.to);
      if (!from || !to || from === to) continue;
      const key = `${from}>${to}`;
      const vedge = this.vedges.get(key) || { key, from, to, edges: [], kind: e.kind };
      vedge.edges.push(e);
      this.vedges.set(key, vedge);
    }
  }

  render() {
    const g = new dagre.graphlib.Graph();
    g.setGraph({ rankdir: "LR", nodesep: 18, ranksep: 56, marginx: 16, marginy: 16 });
    g.setDefaultEdgeLabel(() => ({}));
    for (const v of this.visuals.values()) {
      g.setNode(v.id, v.cluster ? { width: CLUSTER_W, height: CLUSTER_H }
        : { width: NODE_W, height: NODE_H });
    }
    for (const e of this.vedges.values()) g.setEdge(e.from, e.to);
    dagre.layout(g);
    const size = g.graph();
    const canvas = svg("svg", { width: size.width, height: size.height,
      viewBox: `0 0 ${size.width} ${size.height}` });
    const defs = svg("defs");
    const marker = svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5,
      markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" });
    marker.append(svg("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#7b8794" }));
    defs.append(marker);
    canvas.append(defs);
    for (const e of this.vedges.values()) {
      const points = g.edge(e.from, e.to).points;
      const d = points.map((p, i) => `${i ? "L" : "M"} ${p.x} ${p.y}`).join(" ");
      e.element = svg("path", { d, class: `edge ${e.kind}`, "marker-end": "url(#arrow)",
        "data-from": e.from, "data-to": e.to });
      canvas.append(e.element);
    }
    for (const v of this.visuals.values()) {
      const box = g.node(v.id);
      const group = svg("g", { class: v.cluster ? "node cluster" : "node", "data-id": v.id,
        transform: `translate(${box.x - box.width / 2}, ${box.y - box.height / 2})` });
      const first = this.nodes.get(v.members[0]);
      if (v.cluster) {
        group.setAttribute("data-name", `${first.func}×${v.members.length}`);
        group.append(svg("rect", { class: "frame", width: box.width, height: box.height }));
        v.bar = svg("g", { transform: "translate(8, 34)" });
        group.append(v.bar);
        v.label = svg("text", { x: 8, y: 16 });
        v.label.textContent = `${first.func} × ${v.members.length}`;
        v.counts = svg("text", { x: 8, y: 30, "font-size": 10 });
        group.append(v.label, v.counts);
      } else {
        group.setAttribute("data-name", first.name);
        group.append(svg("rect", { width: box.width, height: box.height }));
        const label = svg("text", { x: 8, y: 22 });
        label.textContent = first.name.length > 20 ? `${first.name.slice(0, 19)}…` : first.name;
        group.append(label);
      }
      const title = svg("title");
      title.textContent = v.cluster ? `${v.members.length} × ${first.func}` : first.name;
      group.append(title);
      v.element = group;
      canvas.append(group);
    }
    this.canvas = canvas;
    show(this.header(), this.scrubber(),
      el("div", { class: "graph-layout" },
        el("div", { id: "graph" }, canvas),
        el("div", { id: "side" }, this.failurePanel(), el("div", { id: "details" }),
          this.legend())));
  }

  header() {
    const t = this.timeline;
    return el("div", {},
      el("h1", {}, "Graph ", el("span", { class: "mono", id: "graph-id" }, this.graphid), " ",
        el("span", { id: "graph-state" }, badge(t.state))),
      el("p", { id: "lineage" },
        `colony ${t.colonyname} · ${this.nodes.size} processes · ${this.events.length} events`,
        t.origin ? [" · re-run of ", el("a", { href: `/graphs/${t.origin}`, id: "origin-link",
          class: "mono" }, short(t.origin))] : null,
        el("span", { id: "live" })));
  }

  scrubber() {
    const last = this.events.length - 1;
    this.slider = el("input", { type: "range", id: "scrubber", min: 0, max: last, value: last,
      "aria-label": "event" });
    return el("div", { class: "scrubber" },
      el("div", { class: "row" },
        el("button", { id: "step-first", title: "first event" }, "«"),
        el("button", { id: "step-prev", title: "previous event" }, "◀"),
        this.slider,
        el("button", { id: "step-next", title: "next event" }, "▶"),
        el("button", { id: "step-last", title: "last event" }, "»"),
        el("a", { id: "share-link", href: location.pathname }, "link")),
      el("div", { id: "event-summary" }));
  }

  legend() {
    return el("div", { class: "panel legend" },
      STATES.map((s) => el("span", {}, badge(STATES.indexOf(s)))),
      el("div", {}, "solid edge: dependency · dashed: add_child · red outline: path to the failure"));
  }

  failurePanel() {
    const failed = this.timeline.failed || [];
    if (!failed.length) return null;
    const panel = el("div", { class: "panel failure", id: "failure" },
      el("h3", {}, "Failed"),
      failed.map((f) => el("div", { class: "failed-process" },
        el("p", {}, el("b", {}, f.nodename), ` failed (sequence ${f.failedat ?? "?"})`,
          f.cancelled.length ? `; cancelled: ${f.cancelled.join(", ")}` : ""),
        el("pre", { class: "traceback" }, f.errors.join("\n")))),
      el("button", { id: "rerun" }, "Re-run from failed"),
      el("span", { id: "rerun-result" }),
      el("p", { id: "audit-verdict" }, "audit: checking…"));
    return panel;
  }

  attach() {
    const go = (i) => this.moveTo(Math.max(0, Math.min(this.events.length - 1, i)), true);
    this.slider.addEventListener("input", () => go(Number(this.slider.value)));
    document.getElementById("step-first").onclick = () => go(0);
    document.getElementById("step-prev").onclick = () => go(this.index - 1);
    document.getElementById("step-next").onclick = () => go(this.index + 1);
    document.getElementById("step-last").onclick = () => go(this.events.length - 1);
    this.canvas.addEventListener("click", (event) => {
      const group = event.target.closest("g.node");
      if (group) this.select(group.dataset.id);
    });
    const rerun = document.getElementById("rerun");
    if (rerun) rerun.onclick = () => this.rerun();
    if (document.getElementById("audit-verdict")) this.audit();
  }

  indexOfSequence(sequence) {
    let found = 0;
    this.events.forEach((e, i) => { if (e.seq <= sequence) found = i; });
    return found;
  }

  // The graph as it was after event `target`: apply (or undo) the changes in between.
  moveTo(target, fromUser) {
    const dirty = new Set();
    if (target < this.index) {
      this.state = new Map();
      this.index = -1;
      for (const v of this.visuals.values()) dirty.add(v.id);
    }
    for (let i = this.index + 1; i <= target; i++) {
      for (const [pid, state] of this.events[i].changes) {
        this.state.set(pid, state);
        dirty.add(this.visualOf.get(pid));
      }
    }
    const born = (n) => n.born <= target;
    for (const id of dirty) {
      const v = this.visuals.get(id);
      if (!v) continue;
      const present = v.members.filter((m) => born(this.nodes.get(m)));
      v.element.classList.toggle("hidden", present.length === 0);
      if (v.cluster) this.drawCluster(v, present);
      else v.element.setAttribute("data-state", STATES[this.state.get(v.id) ?? 0]);
    }
    for (const e of this.vedges.values()) {
      const alive = e.edges.some((x) => x.born <= target && (x.died === null || x.died > target));
      e.element.classList.toggle("hidden", !alive);
    }
    this.index = target;
    this.slider.value = String(target);
    this.describe();
    this.highlightFailure();
    if (fromUser) {
      const url = `${location.pathname}?at=${this.events[target].seq}`;
      history.replaceState(null, "", url);
      document.getElementById("share-link").href = url;
      if (this.selected) this.select(this.selected);
    }
  }

  drawCluster(v, present) {
    const counts = [0, 0, 0, 0, 0];
    for (const m of present) counts[this.state.get(m) ?? 0] += 1;
    const worst = counts[3] ? 3 : counts[1] ? 1 : counts[0] ? 0 : counts[4] ? 4 : 2;
    v.element.setAttribute("data-state", STATES[worst]);
    v.element.setAttribute("data-counts", counts.join(","));
    v.counts.textContent = STATES.map((s, i) => (counts[i] ? `${counts[i]} ${s.toLowerCase()}` : ""))
      .filter(Boolean).join(" · ") || "not yet added";
    v.bar.replaceChildren();
    let x = 0;
    const width = CLUSTER_W - 16;
    counts.forEach((n, i) => {
      if (!n) return;
      const w = (n / v.members.length) * width;
      v.bar.append(svg("rect", { x, y: 4, width: w, height: 10, class: `s-${STATES[i]}`,
        fill: getComputedStyle(document.documentElement).getPropertyValue(
          `--${STATES[i].toLowerCase()}`) }));
      x += w;
    });
  }

  describe() {
    const e = this.events[this.index];
    const box = document.getElementById("event-summary");
    box.replaceChildren(
      el("span", { class: "meta" },
        `event ${this.index + 1} of ${this.events.length} · sequence ${e.seq} · ${when(e.time)} · `),
      el("b", { id: "event-actor" }, e.actorname || short(e.actor) || "?"), ": ",
      el("span", { id: "event-text", "data-kind": e.kind }, e.summary));
    box.dataset.index = String(this.index);
  }

  // Every node and edge on a path from a root to a failed process, once it has failed.
  highlightFailure() {
    const failing = (this.timeline.failed || []).map((f) => f.processid)
      .filter((pid) => this.state.get(pid) === 3);
    const onPath = new Set();
    const stack = [...failing];
    while (stack.length) {
      const pid = stack.pop();
      if (onPath.has(pid)) continue;
      onPath.add(pid);
      stack.push(...(this.parentsNow.get(pid) || []));
    }
    const visualsOnPath = new Set([...onPath].map((pid) => this.visualOf.get(pid)));
    for (const v of this.visuals.values()) {
      v.element.classList.toggle("on-path", visualsOnPath.has(v.id));
    }
    for (const e of this.vedges.values()) {
      e.element.classList.toggle("on-path", visualsOnPath.has(e.from) && visualsOnPath.has(e.to));
    }
  }

  async select(visualId) {
    const v = this.visuals.get(visualId);
    if (!v) return;
    this.selected = visualId;
    for (const other of this.visuals.values()) {
      other.element.classList.toggle("selected", other.id === visualId);
    }
    const details = document.getElementById("details");
    if (v.cluster) {
      details.replaceChildren(el("div", { class: "panel", id: "cluster-panel" },
        el("h3", {}, `${v.members.length} × ${this.nodes.get(v.members[0]).func}`),
        el("table", {}, v.members.filter((m) => this.nodes.get(m).born <= this.index)
          .slice(0, 500).map((m) => el("tr", {},
            el("td", {}, el("a", { href: "#", onclick: (ev) => { ev.preventDefault();
              this.showProcess(m); } }, this.nodes.get(m).name)),
            el("td", {}, badge(this.state.get(m) ?? 0)))))));
      return;
    }
    await this.showProcess(visualId);
  }

  async showProcess(processid) {
    const details = document.getElementById("details");
    const at = this.events[this.index].seq;
    try {
      const data = await api(`/api/graphs/${this.graphid}/processes/${processid}?at=${at}`);
      const p = data.process;
      details.replaceChildren(el("div", { class: "panel", id: "process-panel",
        "data-process": processid },
        el("h3", {}, p.spec.nodename, " ", badge(p.state)),
        el("table", { class: "kv" },
          el("tr", {}, el("th", {}, "process"), el("td", { class: "mono" }, p.processid)),
          el("tr", {}, el("th", {}, "function"), el("td", {}, p.spec.funcname)),
          el("tr", {}, el("th", {}, "as of"), el("td", {}, `sequence ${data.at}`))),
        el("h3", {}, "input"), el("pre", { id: "node-input" }, JSON.stringify(p.in)),
        el("h3", {}, "output"), el("pre", { id: "node-output" }, JSON.stringify(p.out)),
        p.errors.length ? [el("h3", {}, "errors"),
          el("pre", { id: "node-errors" }, p.errors.join("\n"))] : null,
        el("h3", {}, `attempts (${data.attempts.length})`),
        el("table", { id: "attempts" },
          el("tr", {}, el("th", {}, "#"), el("th", {}, "executor"), el("th", {}, "started"),
            el("th", {}, "ended"), el("th", {}, "outcome")),
          data.attempts.map((a) => el("tr", {}, el("td", {}, a.attempt),
            el("td", {}, a.executorname || short(a.executorid)), el("td", {}, when(a.starttime)),
            el("td", {}, when(a.endtime)), el("td", {}, a.outcome)))),
        el("h3", {}, `logs (${data.logs.length})`),
        el("pre", { id: "node-logs" }, data.logs.map((l) => l.message).join("\n")),
        el("h3", {}, "spec"), el("pre", { id: "node-spec" }, JSON.stringify(p.spec, null, 1))));
    } catch (error) {
      details.replaceChildren(el("div", { class: "panel" }, String(error.message)));
    }
  }

  async rerun() {
    const button = document.getElementById("rerun");
    const result = document.getElementById("rerun-result");
    button.disabled = true;
    try {
      const graph = await api(`/api/graphs/${this.graphid}/rerun`, { method: "POST" });
      result.replaceChildren(" → new graph ",
        el("a", { id: "rerun-link", class: "mono", href: `/graphs/${graph.processgraphid}` },
          short(graph.processgraphid)));
    } catch (error) {
      result.replaceChildren(el("span", { class: "verdict-bad" }, ` ${error.message}`));
      button.disabled = false;
    }
  }

  async audit() {
    const box = document.getElementById("audit-verdict");
    try {
      const verdict = await api(`/api/graphs/${this.graphid}/audit`);
      box.dataset.ok = String(verdict.ok);
      box.replaceChildren(verdict.ok
        ? el("span", { class: "verdict-ok" }, `audit: all ${verdict.checked} events verify`)
        : el("span", { class: "verdict-bad" },
          `audit: ${verdict.findings.length} of ${verdict.checked} events do not verify`));
      if (verdict.findings.length) {
        box.append(el("pre", {}, verdict.findings.map((f) =>
          `${f.sequence} ${f.kind}: ${f.reasons.join("; ")}`).join("\n")));
      }
    } catch (error) {
      box.replaceChildren(`audit: ${error.message}`);
    }
  }

  // While the graph runs: the server says when it has new events; take the new timeline
  // and redraw, staying at the last event if the scrubber was there.
  follow() {
    if (this.timeline.state >= 2 || !window.EventSource) return;
    const live = document.getElementById("live");
    live.replaceChildren(" · ", el("span", { class: "live" }, "live"));
    this.source = new EventSource(`/api/graphs/${this.graphid}/live`);
    this.wanted = 0;
    this.source.onmessage = (message) => {
      this.wanted = Math.max(this.wanted, JSON.parse(message.data).sequence);
      if (!this.updating) this.update().catch((error) => console.error(error));
    };
  }

  // Takes what follows what the view has, until it has the sequence the server last
  // announced; one update at a time (each asks from the counts the previous left).
  async update() {
    this.updating = true;
    try {
      while (this.events[this.events.length - 1].seq < this.wanted) {
        const t = this.timeline;
        const since = `events=${t.events.length}&nodes=${t.nodes.length}&edges=${t.edges.length}`;
        const packed = await api(`/api/graphs/${this.graphid}/timeline?${since}`);
        if (!packed.events.length) break; // the server has no more yet: its next event says
        const atEnd = this.index === this.events.length - 1;
        const index = this.index, selected = this.selected;
        this.load(packed);
        this.render();
        this.moveTo(atEnd ? this.events.length - 1 : index);
        this.attach();
        if (selected && this.visuals.has(selected)) this.select(selected);
        timings.liveUpdates = (timings.liveUpdates || 0) + 1;
      }
    } finally {
      this.updating = false;
    }
    if (this.timeline.state >= 2) this.source.close();
    else document.getElementById("live").replaceChildren(" · ",
      el("span", { class: "live" }, "live"));
  }
}
