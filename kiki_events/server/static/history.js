// The runs kept in the event store (GET /runs), newest first: a filter by status
// and graph, "More" for older runs. Each run is a link to `#run=<id>`, which
// replays it into the lanes.

import { app } from "./store.js";
import { $, el, seconds } from "./dom.js";

export const STATUSES = ["success", "error", "interrupted", "cancelled", "running"];
const STATUS_LABELS = { success: "✓ success", error: "✗ error", interrupted: "‖ interrupted",
  cancelled: "■ cancelled", running: "● running" };
const PAGE_SIZE = 20;

const ui = {
  box: $("history"), list: $("history-list"), more: $("history-more"), hint: $("history-hint"),
  filters: $("history-filters"), graph: $("history-graph"), statuses: $("history-statuses"),
  refresh: $("history-refresh"), count: $("history-count"),
};

// What is listed: the runs shown (by id), the cursor of the next page, the request in flight.
const list = { ids: new Set(), cursor: null, loading: null, generation: 0, graphs: new Set(), served: [] };
export const listed = new Map();  // run id → the run as GET /runs gave it (its graph and thread, before its stream)

function when(ts) {
  const ago = Date.now() / 1000 - (app.view?.clock ?? 0) - ts;
  if (ago < 60) return "just now";
  if (ago < 3600) return `${Math.floor(ago / 60)} min ago`;
  if (ago < 86400) return `${Math.floor(ago / 3600)} h ago`;
  return new Date(ts * 1000).toLocaleDateString(undefined, { month: "short", day: "numeric", year: "numeric" });
}

export function cost(usd) {
  if (typeof usd !== "number") return "";
  if (usd === 0) return "$0";
  return usd >= 0.01 ? `$${usd.toFixed(2)}` : `$${usd.toPrecision(2)}`;
}

// The agents at the top of the run (a subgraph's own agents are inside theirs).
function topAgents(agents) {
  return agents.filter((name) => !name.includes("/"));
}

function field(className, text, title) {
  const node = el("span", `hrun-${className}`, text);
  if (title) node.title = title;
  return node;
}

function row(run) {
  const link = el("a", "hrun");
  link.href = `#run=${encodeURIComponent(run.run_id)}`;
  link.dataset.runId = run.run_id;
  link.dataset.status = run.status;
  const u = run.usage || {};
  const started = new Date(run.started_at * 1000);
  const top = topAgents(run.agents || []);
  link.append(
    field("status", STATUS_LABELS[run.status] || run.status),
    field("graph", run.graph || "(no graph)"),
    field("when", when(run.started_at), started.toLocaleString()),
    field("duration", run.duration_s != null ? seconds(run.duration_s) : ""),
    field("tokens", `${u.total_tokens ?? 0} tokens`, `${u.input_tokens ?? 0} in · ${u.output_tokens ?? 0} out`),
    field("cost", cost(run.cost_usd), run.cost_usd == null ? "" : `${run.cost_usd} USD`),
    field("agents", top.join(" · "), (run.agents || []).join("\n")),
    field("id", run.run_id),
  );
  link.querySelector(".hrun-when").dataset.ts = String(run.started_at);
  return link;
}

function chosenStatuses() {
  return [...ui.statuses.querySelectorAll("input:checked")].map((box) => box.value);
}

function query(cursor) {
  const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
  for (const status of chosenStatuses()) params.append("status", status);
  if (ui.graph.value) params.set("graph", ui.graph.value);
  if (cursor) params.set("cursor", cursor);
  return `runs?${params}`;
}

function showHint(text) {
  ui.hint.textContent = text;
  ui.hint.hidden = false;
}

function offerGraphs() {
  const chosen = ui.graph.value;
  const names = [...new Set([...list.served, ...list.graphs])].sort();
  ui.graph.replaceChildren(el("option", null, "any graph"), ...names.map((name) => el("option", null, name)));
  ui.graph.firstChild.value = "";
  ui.graph.value = names.includes(chosen) ? chosen : "";
}

async function fetchPage(cursor) {
  const res = await fetch(query(cursor), { headers: { Accept: "application/json" } });
  if (res.status === 404) return { off: true };
  if (!res.ok) {
    let detail = `HTTP ${res.status}`;
    try { detail = (await res.json()).detail ?? detail; } catch { /* keep the status */ }
    throw new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
  }
  const page = await res.json();
  page.memory = res.headers.get("X-Kiki-History") === "memory";
  return page;
}

// The next page (or, with `fresh`, the first one again with the filters chosen).
async function load(fresh) {
  if (fresh) list.generation += 1;
  else if (list.loading) return list.loading;
  const generation = list.generation;
  ui.more.disabled = true;
  ui.box.dataset.state = "loading";
  const task = (async () => {
    let page;
    try {
      page = await fetchPage(fresh ? null : list.cursor);
    } catch (err) {
      if (generation !== list.generation) return;
      ui.box.dataset.state = "failed";
      showHint(`Could not load the recent runs: ${err.message}`);
      ui.more.disabled = false;
      return;
    }
    if (generation !== list.generation) return;
    if (page.off) {
      ui.box.dataset.state = "off";
      ui.filters.hidden = true;
      ui.list.replaceChildren();
      ui.more.hidden = true;
      showHint("History is off on this server: runs are kept only while in memory. "
        + "Turn on store.enabled in its settings to list past runs here.");
      return;
    }
    if (fresh) { ui.list.replaceChildren(); list.ids.clear(); listed.clear(); }
    ui.filters.hidden = false;
    ui.box.dataset.source = page.memory ? "memory" : "store";
    for (const run of page.runs) {
      if (list.ids.has(run.run_id)) continue;
      list.ids.add(run.run_id);
      listed.set(run.run_id, run);
      if (run.graph && !list.graphs.has(run.graph)) { list.graphs.add(run.graph); offerGraphs(); }
      ui.list.append(row(run));
    }
    list.cursor = page.cursor;
    ui.more.hidden = !page.cursor;
    ui.more.disabled = false;
    ui.count.textContent = String(list.ids.size) + (page.cursor ? "+" : "");
    ui.hint.hidden = list.ids.size > 0;
    if (!list.ids.size) ui.hint.textContent = chosenStatuses().length || ui.graph.value
      ? "No run matches these filters." : "No run kept yet: the runs you start are listed here.";
    if (page.memory) {
      // No event store: the server lists the runs it still keeps in memory, for a while only.
      showHint(`History is off on this server: ${list.ids.size ? "these are the runs" : "it lists the runs"} `
        + "it keeps in memory for a while. Turn on store.enabled in its settings to keep past runs.");
    }
    ui.box.dataset.state = "ready";
  })();
  list.loading = task;
  try { await task; } finally { if (list.loading === task) list.loading = null; }
  return undefined;
}

export function showHistory() {
  ui.box.hidden = false;
  load(true);
}

export function hideHistory() {
  ui.box.hidden = true;
}

export function historyGraphs(served) {
  list.served = served;
  offerGraphs();
}

for (const status of STATUSES) {
  const label = el("label", "hstatus");
  const box = el("input");
  box.type = "checkbox";
  box.value = status;
  box.addEventListener("change", () => load(true));
  label.dataset.status = status;
  label.append(box, el("span", null, STATUS_LABELS[status]));
  ui.statuses.append(label);
}
offerGraphs();
ui.graph.addEventListener("change", () => load(true));
ui.more.addEventListener("click", () => load(false));
ui.refresh.addEventListener("click", () => load(true));
