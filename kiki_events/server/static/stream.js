// The event stream of one run over EventSource: resumed after the last event
// applied (Last-Event-ID), nothing applied twice, gaps and notices reported.

import { app } from "./store.js";
import { el, button, setPill } from "./dom.js";

export const EVENT_TYPES = ["status", "agent_lifecycle", "token", "llm", "tool_call", "tool_result",
  "custom", "interrupt", "error", "done"];
const NOTICE_STATUSES = new Set(["gap", "lagging", "missed"]);
const MAX_MANUAL_RETRIES = 5;
const CONNECTION_LABELS = { connecting: "connecting…", connected: "live", reconnecting: "reconnecting…",
  closed: "all events received", disconnected: "disconnected", idle: "not connected" };

let stream = null;  // {es, url, retries, timer, onEvent, onGiveUp}

export function banner(level, text) {
  const box = el("div", `notice ${level}`);
  box.append(el("span", "notice-text", text));
  const close = button("×", "notice-close", () => box.remove());
  close.title = "Dismiss";
  box.append(close);
  app.ui.notices.append(box);
}

export function warn(text) {
  app.state.warnings.push(text);
  banner("warning", text);
}

export function setConnection(name) {
  const state = app.state;
  if (name === "reconnecting" && state.connection !== "reconnecting") state.reconnects += 1;
  state.connection = name;
  setPill(app.ui.conn, name, CONNECTION_LABELS[name] || name);
  // Once the run has ended the connection is of no interest: the run's state says it all.
  app.ui.conn.hidden = name === "closed" || name === "idle";
}

function seqOf(lastEventId) {
  const cut = lastEventId.lastIndexOf(":");
  if (cut < 0) return null;
  const seq = Number(lastEventId.slice(cut + 1));
  return { runId: lastEventId.slice(0, cut), seq: Number.isInteger(seq) ? seq : null };
}

function receive(type, event, es) {
  // Connection failures are plain `error` Events, not frames: onerror handles them.
  if (!(event instanceof MessageEvent) || !stream || stream.es !== es) return;
  const { state, view } = app;
  let data;
  try {
    data = JSON.parse(event.data);
  } catch {
    warn(`Ignored an unreadable ${type} frame.`);
    return;
  }
  // Connection notices carry no id. EventSource keeps the previous lastEventId for
  // them, so recognise them by content before the duplicate check.
  if (type === "status" && NOTICE_STATUSES.has(data.status)) {
    state.notices.push({ status: data.status, detail: data.detail || null, first_seq: data.first_seq ?? null });
    view.noticeSinceLast = true;
    banner("warning", `Stream ${data.status}: ${data.detail || "some events are not available."}`);
    return;
  }
  const id = seqOf(event.lastEventId || "");
  if (id && id.seq !== null) {
    if (id.runId !== state.runId) return;
    if (id.seq <= state.lastSeq) { state.duplicates += 1; return; }
    if (id.seq !== state.lastSeq + 1 && !view.noticeSinceLast) {
      warn(`Events ${state.lastSeq + 1}–${id.seq - 1} of this run were not received.`);
    }
    state.lastSeq = id.seq;
  }
  view.noticeSinceLast = false;
  stream.onEvent(type, data);
}

function resumeUrl() {
  const { state } = app;
  if (!state.lastSeq) return stream.url;
  const sep = stream.url.includes("?") ? "&" : "?";
  return `${stream.url}${sep}last_event_id=${encodeURIComponent(`${state.runId}:${state.lastSeq}`)}`;
}

function connect() {
  const es = new EventSource(resumeUrl());
  stream.es = es;
  setConnection(stream.retries ? "reconnecting" : "connecting");
  es.onopen = () => {
    if (stream && stream.es === es) { stream.retries = 0; setConnection("connected"); }
  };
  es.onerror = (event) => {
    // A frame named `error` (our ErrorEvent) also reaches onerror, as a MessageEvent.
    if (event instanceof MessageEvent || !stream || stream.es !== es) return;
    if (es.readyState === EventSource.CONNECTING) {
      setConnection("reconnecting");  // the browser retries by itself, sending Last-Event-ID
      return;
    }
    // The browser gave up (an HTTP error answer): retry ourselves, resuming after
    // lastSeq, unless the server does not know the run (any more).
    es.close();
    setConnection("reconnecting");
    runKnown().then((known) => {
      if (!stream || stream.es !== es) return;
      if (!known || stream.retries >= MAX_MANUAL_RETRIES) {
        const { onGiveUp } = stream;
        stopStream();
        setConnection("disconnected");
        onGiveUp(known ? "Lost the connection to the event stream."
          : "The server does not know this run (it ended too long ago, or never existed).");
        return;
      }
      stream.retries += 1;
      stream.timer = setTimeout(connect, 500 * 2 ** stream.retries);
    });
  };
  for (const type of EVENT_TYPES) es.addEventListener(type, (event) => receive(type, event, es));
}

async function runKnown() {
  try {
    const res = await fetch(`runs/${encodeURIComponent(app.state.runId)}`, { headers: { Accept: "application/json" } });
    return res.status !== 404;
  } catch {
    return true;  // the server is unreachable: keep trying
  }
}

export function openStream(url, onEvent, onGiveUp) {
  stopStream();
  stream = { es: null, url, retries: 0, timer: null, onEvent, onGiveUp };
  connect();
}

export function stopStream() {
  if (!stream) return;
  clearTimeout(stream.timer);
  if (stream.es) stream.es.close();
  stream = null;
}

export const streaming = () => stream !== null;
