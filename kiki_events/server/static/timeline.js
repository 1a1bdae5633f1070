// The run's timeline: every agent step in start order (who handed to whom, how
// long it took, how it ended), cross-node handoffs, interrupts and answers, the end.

import { app } from "./store.js";
import { el, seconds } from "./dom.js";

const ICONS = { running: "●", completed: "✓", failed: "✗", stopped: "■", paused: "‖" };

function since(ts) {
  const view = app.view;
  if (typeof ts !== "number") return "";
  if (view.t0 === null) view.t0 = ts;
  const s = Math.max(0, ts - view.t0);
  return s < 60 ? `${s.toFixed(1)}s` : `${Math.floor(s / 60)}m${String(Math.round(s % 60)).padStart(2, "0")}s`;
}

function short(name) {
  return name.slice(name.lastIndexOf("/") + 1);
}

function row(kind, ts, depth = 0) {
  const li = el("li", `tl ${kind}`);
  li.style.setProperty("--depth", String(depth));
  li.append(el("span", "tl-time", since(ts)), el("span", "tl-icon"), el("span", "tl-text"), el("span", "tl-meta"));
  app.ui.timeline.append(li);
  app.ui.timelineCount.textContent = String(app.ui.timeline.children.length);
  return li;
}

const parts = (li) => ({ icon: li.children[1], text: li.children[2], meta: li.children[3] });

export function stepStarted(name, ts) {
  const view = app.view;
  const depth = name.split("/").length - 1;
  const li = row("step", ts, depth);
  li.dataset.agent = name;
  li.dataset.state = "running";
  const { icon, text } = parts(li);
  icon.textContent = ICONS.running;
  const from = view.lastEnded;
  if (from && from !== name) {
    text.append(el("span", "tl-from", short(from)), " → ", el("strong", null, short(name)));
    li.title = `${from} handed over to ${name}`;
  } else {
    text.append(el("strong", null, short(name)), " started");
    li.title = name;
  }
  view.lastEnded = null;
  view.steps.set(name, li);
}

export function stepEnded(name, phase, durationS, ts) {
  const view = app.view;
  const li = view.steps.get(name);
  if (phase === "completed" || phase === "failed") view.lastEnded = name;
  if (!li) return;
  view.steps.delete(name);
  li.dataset.state = phase;
  const { icon, meta } = parts(li);
  icon.textContent = ICONS[phase] || "";
  meta.textContent = typeof durationS === "number" ? seconds(durationS) : phase;
  if (ts !== undefined) li.dataset.end = since(ts);
}

// Steps still open when the run ends: stopped, or paused at an interrupt.
export function stepsStopped(phase) {
  for (const name of [...app.view.steps.keys()]) stepEnded(name, phase, undefined);
}

export function note(kind, ts, text, meta = "", depth = 0) {
  const li = row(kind, ts, depth);
  const p = parts(li);
  p.icon.textContent = { handoff: "⇄", interrupt: "‖", answer: "↩", success: "✓", error: "✗",
    interrupted: "‖", cancelled: "■" }[kind] || "•";
  p.text.textContent = text;
  p.meta.textContent = meta;
  return li;
}
