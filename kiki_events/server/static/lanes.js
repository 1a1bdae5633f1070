// Agent cards: one per agent path, a subgraph's agents nested inside their parent's
// card (`research/researcher` inside `research`). A card grows with its content: the
// page is the only thing that scrolls.

import { app, agentRec, toolRec } from "./store.js";
import { clipBox, el, oneLine, pretty, seconds, setClipText, shortId } from "./dom.js";

const INDICATORS = { completed: "✓", failed: "✗", stopped: "■", paused: "‖" };

export function lane(agent) {
  const name = agent || "(run)";
  const view = app.view;
  let entry = view.lanes.get(name);
  if (entry) return entry;

  const cut = name.lastIndexOf("/");
  const parent = cut > 0 ? lane(name.slice(0, cut)) : null;
  const root = el("section", parent ? "lane nested" : "lane");
  root.dataset.agent = name;
  root.dataset.state = "seen";
  const head = el("header", "lane-head");
  const indicator = el("span", "indicator");
  indicator.setAttribute("aria-hidden", "true");
  const title = el("h2", "lane-title");
  if (cut > 0) title.append(el("span", "lane-path", name.slice(0, cut + 1)));
  title.append(el("span", "lane-name", name.slice(cut + 1)));
  const where = el("span", "lane-node");
  where.hidden = true;
  const meta = el("span", "lane-meta");
  head.append(indicator, title, where, meta);
  const feed = el("div", "feed");
  root.append(head, feed);
  (parent ? parent.feed : app.ui.lanes).append(root);

  entry = { name, root, indicator, where, meta, feed, parent };
  view.lanes.set(name, entry);
  return entry;
}

export function setLaneState(name, lifecycle) {
  const entry = lane(name);
  const agent = agentRec(name);
  agent.state = lifecycle;
  entry.root.dataset.state = lifecycle;
  entry.indicator.textContent = INDICATORS[lifecycle] || "";
  const parts = [];
  if (agent.steps > 1) parts.push(`${agent.steps} steps`);
  if (lifecycle === "running") parts.push("running");
  else if (agent.durationS) parts.push(seconds(agent.durationS));
  if (lifecycle === "paused") parts.push("waiting for an answer");
  entry.meta.textContent = parts.join(" · ");
}

// The node an agent ran on, shown when it is not the run's own node.
export function showNode(name, node) {
  if (!node || !app.state.node || node === app.state.node) return;
  agentRec(name).node = node;
  const entry = lane(name);
  entry.where.hidden = false;
  entry.where.textContent = `on ${node}`;
}

export function message(key, id, entry) {
  let msg = app.view.messages.get(key);
  if (!msg) {
    const node = el("div", "msg");
    node.dataset.messageId = id;
    node.dataset.runId = app.state.runId;
    entry.feed.append(node);
    msg = { node, span: null, kind: null };
    app.view.messages.set(key, msg);
  }
  return msg;
}

export function item(agent, className, title, body) {
  const target = agent ? lane(agent).feed : runFeed();
  const node = el("div", `item ${className}`);
  node.append(el("div", "item-title", title));
  if (body !== undefined && body !== null && body !== "") {
    const box = clipBox("item-body");
    setClipText(box, pretty(body));
    node.append(box);
  }
  target.append(node);
  return node;
}

export function runFeed() {
  app.ui.runFeed.hidden = false;
  return app.ui.runFeed;
}

// ---- tool calls ------------------------------------------------------------

export function toolCall(id, agent) {
  let call = app.view.tools.get(id);
  toolRec(id, agent);
  if (call) return call;
  const entry = lane(agent);
  const card = el("div", "tool");
  card.dataset.toolCallId = id;
  card.dataset.state = "pending";
  card.title = `tool call ${id}`;
  const head = el("div", "tool-head");
  const badge = el("span", "tool-badge");
  badge.setAttribute("aria-hidden", "true");
  const name = el("span", "tool-name", "tool");
  const summary = el("span", "tool-summary");
  const info = el("span", "tool-info");
  head.append(badge, name, summary, info);
  const args = clipBox("tool-args");
  const progress = el("div", "tool-progress");
  progress.hidden = true;
  const result = clipBox("tool-result");
  result.hidden = true;
  card.append(head, args, progress, result);
  entry.feed.append(card);
  call = { card, badge, name, summary, info, args, progress, result, entry, latest: null, list: null, updates: 0 };
  app.view.tools.set(id, call);
  return call;
}

export function setToolName(call, rec, name) {
  if (!name) return;
  rec.name = name;
  call.name.textContent = name;
}

export function toolArgsDelta(call, rec, delta) {
  rec.argsText += delta;
  setClipText(call.args, rec.argsText);
}

export function toolArgsEnd(call, rec, args) {
  rec.args = args ?? {};
  setClipText(call.args, pretty(rec.args));
  const entries = Object.entries(rec.args);
  const parts = entries.map(([k, v]) => `${k}: ${oneLine(v, 60)}`);
  call.summary.textContent = parts.join(", ");
  call.summary.title = call.summary.textContent;
  // The one-line summary says it all for small arguments; long ones stay below it.
  const whole = entries.length > 0 && parts.every((p) => !p.endsWith("…")) && parts.join(", ").length <= 100;
  call.args.hidden = whole || entries.length === 0;
  call.card.dataset.argsDone = "yes";
}

export function toolDone(call, rec, d) {
  const failed = d.error !== undefined && d.error !== null;
  rec.output = d.output ?? null;
  rec.error = failed ? d.error : null;
  call.card.dataset.state = failed ? "error" : "ok";
  call.badge.textContent = failed ? "✗" : "✓";
  call.info.textContent = typeof d.duration_s === "number" ? seconds(d.duration_s) : "";
  call.result.hidden = false;
  call.result.classList.toggle("err", failed);
  setClipText(call.result, (failed ? d.error : d.output ?? "") + (d.truncated ? "\n… (truncated)" : ""));
}

export function toolWaiting(call, waiting) {
  if (call.card.dataset.state === "ok" || call.card.dataset.state === "error") return;
  call.card.dataset.state = waiting ? "waiting" : "pending";
  call.badge.textContent = waiting ? "‖" : "";
  call.info.textContent = waiting ? "waiting for approval" : "";
}

// Progress of a running tool call (custom events carrying its tool_call_id).
export function toolProgress(call, name, data) {
  const { text, pct } = describeProgress(name, data);
  call.progress.hidden = false;
  call.updates += 1;
  if (!call.latest) {
    call.latest = el("div", "progress-latest");
    call.bar = el("div", "progress-bar");
    call.bar.append(el("span", "progress-fill"));
    call.bar.hidden = true;
    call.list = el("details", "progress-all");
    call.list.append(el("summary", null, ""), el("ol"));
    call.list.hidden = true;
    call.progress.append(call.latest, call.bar, call.list);
  }
  call.latest.textContent = text;
  if (pct !== null) {
    call.bar.hidden = false;
    call.bar.firstChild.style.width = `${Math.max(0, Math.min(100, pct))}%`;
    call.bar.title = `${Math.round(pct)}%`;
  }
  call.list.lastChild.append(el("li", null, text));
  call.list.hidden = call.updates < 2;
  call.list.firstChild.textContent = `${call.updates} updates`;
}

const TEXT_KEYS = ["message", "text", "note", "status", "step", "detail", "stage"];
const PCT_KEYS = ["pct", "percent", "progress"];

export function describeProgress(name, data) {
  if (typeof data === "string") return { text: data, pct: null };
  let text = null;
  let pct = null;
  if (data && typeof data === "object" && !Array.isArray(data)) {
    const key = TEXT_KEYS.find((k) => typeof data[k] === "string");
    if (key) text = data[key];
    const pk = PCT_KEYS.find((k) => typeof data[k] === "number");
    if (pk) pct = data[pk] <= 1 && pk === "progress" ? data[pk] * 100 : data[pk];
  }
  if (text === null) text = pct !== null ? "" : oneLine(data, 160);
  if (pct !== null) text = `${text}${text ? " · " : ""}${Math.round(pct)}%`;
  if (name && name !== "stream" && name !== "progress") text = `${name}: ${text}`;
  return { text, pct };
}

// ---- cross-node handoffs (custom events named multiagent:sync) -----------------

export function handoff(agent, data) {
  const view = app.view;
  const key = data.request_id || `${agent}:${data.agent}`;
  let box = view.handoffs.get(key);
  if (!box) {
    box = el("div", "item handoff");
    box.append(el("div", "item-title"), el("div", "handoff-detail"));
    lane(agent).feed.append(box);
    view.handoffs.set(key, box);
  }
  const who = data.agent || "an agent";
  const [title, detail] = [box.firstChild, box.lastChild];
  box.dataset.state = data.phase;
  detail.replaceChildren();
  if (data.phase === "requested") {
    title.textContent = `⇄ Handed to agent ${who} on another node`;
    detail.append(`from ${data.from_node || "this node"} · waiting for its result…`);
  } else if (data.phase === "completed") {
    const ok = data.status === "success";
    title.textContent = `⇄ ${who} ran on ${data.node || "another node"}: ${data.status || "done"}`;
    box.dataset.state = ok ? "completed" : "failed";
    if (data.run_id) {
      detail.append("its own run: ");
      const link = el("a", "mono", shortId(data.run_id));
      link.href = `#run=${encodeURIComponent(data.run_id)}`;
      link.title = data.run_id;
      detail.append(link);
    }
  } else if (data.phase === "failed") {
    title.textContent = `⇄ ${who} failed on another node`;
    detail.append(data.error || "no reason given");
  } else {
    title.textContent = `⇄ ${who}: ${data.phase}`;
    detail.append(oneLine(data, 200));
  }
  if (data.request_id) box.title = `request ${data.request_id}`;
  return box;
}
