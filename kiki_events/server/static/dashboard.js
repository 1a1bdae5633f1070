// kiki_events live dashboard: start a run, watch its StreamEvents over SSE, answer
// its interrupts. Plain browser JavaScript modules, no build step.

import { app, newState, newView } from "./store.js";
import { $, el, seconds, setPill, shortId } from "./dom.js";
import { banner, openStream, setConnection, stopStream, streaming, warn } from "./stream.js";
import { makeHandlers } from "./handlers.js";
import { armInterrupts, closeInterrupts } from "./interrupts.js";
import { item } from "./lanes.js";
import { note } from "./timeline.js";
import { hideHistory, historyGraphs, listed, showHistory } from "./history.js";

const ui = {
  form: $("run-form"), message: $("message"), graph: $("graph"), run: $("run"), cancel: $("cancel"),
  conn: $("conn"), status: $("run-status"), notices: $("notices"), empty: $("empty"), runView: $("run-view"),
  outcome: $("outcome"), runId: $("run-id"), threadId: $("thread-id"), graphName: $("graph-name"),
  usage: $("usage"), pending: $("pending"), runFeed: $("run-feed"), lanes: $("lanes"),
  timeline: $("timeline"), timelineCount: $("timeline-count"), example: $("example-curl"), home: $("home"),
};
app.ui = ui;

let served = [];  // the graphs this server runs (GET /graphs)

// ---- the run's state and outcome ---------------------------------------------

const OUTCOMES = {
  starting: () => "Starting the run…",
  joining: () => "Joining the run…",
  running: () => "Running…",
  success: (s) => `✓ Finished successfully${s.durationS != null ? ` in ${seconds(s.durationS)}` : ""}`,
  error: (s) => `✗ Failed${s.lastError ? `: ${s.lastError}` : ""}`,
  interrupted: () => "‖ Paused: waiting for your answer",
  cancelled: (s) => `■ Cancelled${s.durationS != null ? ` after ${seconds(s.durationS)}` : ""}`,
};

function setStatus(name) {
  const { state } = app;
  state.status = name;
  setPill(ui.status, name, name);
  ui.outcome.dataset.state = name;
  ui.outcome.textContent = (OUTCOMES[name] || (() => name))(state);
  ui.outcome.hidden = name === "idle";
}

function showUsage() {
  const u = app.state.usage;
  ui.usage.textContent = u ? `${u.input_tokens ?? 0} in · ${u.output_tokens ?? 0} out · `
    + `${u.total_tokens ?? 0} tokens · ${seconds(app.state.durationS || 0)}` : "";
}

function showIds() {
  const { state } = app;
  ui.runId.textContent = `run ${state.runId}`;
  ui.threadId.textContent = state.threadId ? `thread ${state.threadId}` : "";
  if (state.resumedFrom) ui.threadId.textContent += ` · continues run ${shortId(state.resumedFrom)}`;
}

// The graph of the run shown, in the summary and in the selector. A run followed
// from another node may be of a graph this node does not serve: the selector says so.
function showGraph(name) {
  if (!name) return;
  app.state.graph = name;
  ui.graphName.textContent = `graph ${name}`;
  const foreign = ui.graph.querySelector("option[data-foreign]");
  if (served.includes(name)) {
    foreign?.remove();
    ui.graph.value = name;
    return;
  }
  const option = foreign || el("option");
  option.dataset.foreign = "yes";
  option.value = name;
  option.textContent = `${name} (not served by this node)`;
  option.disabled = true;
  if (!foreign) ui.graph.prepend(option);
  option.selected = true;
}

// ---- watching a run ----------------------------------------------------------

function watch(runId, streamUrl, status, info = {}, continued = false) {
  stopStream();
  const previous = app.state;
  app.state = newState(runId);
  const { state } = app;
  window.kikiState = state;
  state.threadId = info.thread_id || null;
  if (continued) {
    state.resumedFrom = previous.runId;
  } else {
    app.view = newView();
    for (const node of [ui.lanes, ui.runFeed, ui.notices, ui.timeline]) node.replaceChildren();
    ui.timelineCount.textContent = "0";
    ui.runFeed.hidden = true;
    closeInterrupts();
  }
  ui.empty.hidden = true;
  hideHistory();
  ui.home.hidden = false;
  ui.runView.hidden = false;
  ui.graphName.textContent = "";
  showGraph(info.graph);
  showIds();
  showUsage();
  ui.cancel.disabled = false;
  ui.cancel.textContent = "Cancel";
  setStatus(status);
  openStream(streamUrl, (type, data) => {
    if (typeof data.ts === "number") app.view.clock = Date.now() / 1000 - data.ts;
    handlers[type](data);
  }, giveUp);
}

// A run of the history list is known before its stream answers: its graph and thread.
function join(runId) {
  const known = listed.get(runId);
  watch(runId, `runs/${encodeURIComponent(runId)}/stream`, "joining", known || {});
  // The run's graph and thread, before its first event arrives.
  fetch(`runs/${encodeURIComponent(runId)}`, { headers: { Accept: "application/json" } })
    .then((res) => (res.ok ? res.json() : null))
    .then((info) => {
      if (!info || app.state.runId !== runId) return;
      if (!app.state.graph) showGraph(info.graph);
      if (!app.state.threadId && info.thread_id) { app.state.threadId = info.thread_id; showIds(); }
    })
    .catch(() => {});
}

function showEmpty() {
  stopStream();
  app.state = newState(null);
  window.kikiState = app.state;
  app.view = newView();
  closeInterrupts();
  setConnection("idle");
  setStatus("idle");
  ui.runView.hidden = true;
  ui.home.hidden = true;
  ui.empty.hidden = false;
  if (runFromHash() === null) showHistory();
  ui.cancel.disabled = true;
  ui.run.disabled = false;
}

function finished(d) {
  const { state } = app;
  stopStream();
  setConnection("closed");
  ui.cancel.disabled = true;
  ui.cancel.textContent = "Cancel";
  ui.run.disabled = false;
  showUsage();
  setStatus(d.status);
  if (d.status === "interrupted") armInterrupts(state.threadId);
  else closeInterrupts();
}

function giveUp(reason) {
  warn(reason);
  ui.outcome.hidden = false;
  ui.outcome.dataset.state = "lost";
  ui.outcome.textContent = `✗ Not following the run: ${reason}`;
  ui.cancel.disabled = true;
  ui.run.disabled = false;
}

const handlers = makeHandlers({
  started(d) {
    showGraph(d.graph);
    showIds();
    if (app.state.status === "starting" || app.state.status === "joining") setStatus("running");
  },
  finished,
  sendAnswer,
});

// ---- what a person does -----------------------------------------------------

async function readError(res) {
  try {
    const body = await res.json();
    const detail = body.detail ?? body.error ?? body;
    return typeof detail === "string" ? detail : JSON.stringify(detail);
  } catch {
    return `HTTP ${res.status}`;
  }
}

async function postRun(body) {
  const res = await fetch("runs", {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "application/json" },
    body: JSON.stringify(body),
  });
  if (!res.ok) throw new Error(await readError(res));
  return res.json();
}

async function startRun(event) {
  event.preventDefault();
  const text = ui.message.value.trim();
  const graph = ui.graph.value;
  if (!text || !graph) return;
  if (!served.includes(graph)) {
    warn(`This node does not serve the graph ${graph}: pick one of ${served.join(", ") || "its graphs"}.`);
    return;
  }
  ui.run.disabled = true;
  try {
    const info = await postRun({ graph, message: text });
    history.pushState(null, "", `#run=${encodeURIComponent(info.run_id)}`);
    watch(info.run_id, info.stream_url, "starting", { ...info, graph });
  } catch (err) {
    ui.run.disabled = false;
    warn(`Could not start the run: ${err.message}`);
  }
}

// The answer to the run's interrupts continues the thread in a new run, followed here.
async function sendAnswer(resume, labels) {
  const { state } = app;
  if (!state.graph || !state.threadId) throw new Error("the run's graph and thread are not known yet");
  const asker = state.interruptAgent || null;
  const info = await postRun({ graph: state.graph, thread_id: state.threadId, resume });
  closeInterrupts();
  note("answer", Date.now() / 1000 - app.view.clock, `Answered: ${labels}`, `run ${shortId(info.run_id)}`);
  item(asker, "answer", `↩ Answered: ${labels}`);
  history.replaceState(null, "", `#run=${encodeURIComponent(info.run_id)}`);
  watch(info.run_id, info.stream_url, "starting", info, true);
}

async function cancelRun() {
  if (!app.state.runId) return;
  ui.cancel.disabled = true;
  ui.cancel.textContent = "Cancelling…";
  try {
    const res = await fetch(`runs/${encodeURIComponent(app.state.runId)}/cancel`, { method: "POST" });
    if (!res.ok) throw new Error(await readError(res));
  } catch (err) {
    ui.cancel.disabled = !streaming();
    ui.cancel.textContent = "Cancel";
    warn(`Could not cancel the run: ${err.message}`);
  }
}

async function loadGraphs() {
  try {
    const res = await fetch("graphs", { headers: { Accept: "application/json" } });
    if (!res.ok) throw new Error(await readError(res));
    served = (await res.json()).graphs;
    ui.graph.replaceChildren(...served.map((name) => el("option", null, name)));
    if (!served.length) banner("warning", "The server has no graphs configured: add one under graphs: in its settings.");
    document.body.dataset.graphs = served.join(" ");
    historyGraphs(served);
    showExample();
    if (app.state.graph) showGraph(app.state.graph);
  } catch (err) {
    warn(`Could not load the list of graphs: ${err.message}`);
  }
}

// The empty page's example: start a run of the selected graph over HTTP.
function showExample() {
  const base = `${location.origin}${location.pathname.replace(/[^/]*$/, "")}`;
  const body = JSON.stringify({ graph: ui.graph.value || "my_graph", message: "Compare Redis streams and pub/sub" });
  ui.example.textContent = `curl -N -X POST ${base}runs/stream \\\n     -H 'content-type: application/json' \\\n`
    + `     -d '${body.replaceAll("'", "'\\''")}'`;
}

// `#run=<id>` follows a run (live or recently finished) from its start; the page
// follows the address when it changes.
function runFromHash() {
  const match = /^#run=(.+)$/.exec(location.hash);
  return match ? decodeURIComponent(match[1]) : null;
}

function followHash() {
  const runId = runFromHash();
  if (runId === null) {
    if (app.state.runId !== null) showEmpty();
  } else if (runId !== app.state.runId) {
    join(runId);
  }
}

ui.form.addEventListener("submit", startRun);
ui.cancel.addEventListener("click", cancelRun);
ui.graph.addEventListener("change", showExample);
ui.message.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) ui.form.requestSubmit();
});
for (const chip of document.querySelectorAll("[data-task]")) {
  chip.addEventListener("click", () => { ui.message.value = chip.dataset.task; ui.message.focus(); });
}
window.addEventListener("hashchange", followHash);
window.addEventListener("popstate", followHash);
// On narrow screens the timeline starts folded, above the agents.
if (!matchMedia("(min-width: 1100px)").matches) document.querySelector(".timeline-box").open = false;
showEmpty();
loadGraphs();
followHash();
