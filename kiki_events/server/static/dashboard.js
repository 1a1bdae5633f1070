// kiki_events live dashboard: start a run, watch its StreamEvents over SSE.
// Plain browser JavaScript, no build step. Event data is only ever rendered with
// textContent, never parsed as HTML.
(() => {
  "use strict";

  const EVENT_TYPES = ["status", "agent_lifecycle", "token", "llm", "tool_call", "tool_result",
    "custom", "interrupt", "error", "done"];
  const NOTICE_STATUSES = new Set(["gap", "lagging", "missed"]);
  const MAX_MANUAL_RETRIES = 5;

  const $ = (id) => document.getElementById(id);
  const ui = {
    form: $("run-form"), message: $("message"), graph: $("graph"), run: $("run"),
    cancel: $("cancel"), conn: $("conn"), status: $("run-status"), notices: $("notices"),
    summary: $("summary"), runId: $("run-id"), graphName: $("graph-name"), usage: $("usage"),
    runFeed: $("run-feed"), lanes: $("lanes"),
  };

  // Everything about the run being watched. `state` is exposed as window.kikiState.
  let state = newState(null);
  let view = null;      // DOM bookkeeping of the current run
  let stream = null;    // {es, url, retries, timer}

  function newState(runId) {
    return {
      runId, threadId: null, graph: null, lastSeq: 0, status: "idle", connection: "idle", reconnects: 0,
      agents: {}, toolCalls: {}, llmCalls: [], duplicates: 0, notices: [], warnings: [],
      errors: [], interrupts: [], custom: [], usage: null, durationS: null,
    };
  }

  // ---- small DOM helpers -------------------------------------------------

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function pretty(value) {
    if (typeof value === "string") return value;
    try { return JSON.stringify(value, null, 2); } catch { return String(value); }
  }

  function seconds(s) {
    if (typeof s !== "number") return "";
    return s < 1 ? `${Math.round(s * 1000)} ms` : `${s.toFixed(2)} s`;
  }

  function setPill(node, stateName, text) {
    node.dataset.state = stateName;
    node.textContent = text;
  }

  function setConnection(name) {
    if (name === "reconnecting" && state.connection !== "reconnecting") state.reconnects += 1;
    state.connection = name;
    const labels = { connecting: "connecting…", connected: "connected", reconnecting: "reconnecting…",
      closed: "stream closed", disconnected: "disconnected", idle: "not connected" };
    setPill(ui.conn, name, labels[name] || name);
  }

  function setStatus(name) {
    state.status = name;
    setPill(ui.status, name, name);
  }

  // Keep a scrolled-to-bottom feed pinned to the bottom while text streams in.
  const toScroll = new Set();
  function follow(feed) {
    if (feed.dataset.stick === "no" || toScroll.has(feed)) return;
    toScroll.add(feed);
    if (toScroll.size === 1) {
      requestAnimationFrame(() => {
        for (const f of toScroll) f.scrollTop = f.scrollHeight;
        toScroll.clear();
      });
    }
  }

  function makeFeed(className) {
    const feed = el("div", className);
    feed.addEventListener("scroll", () => {
      const atBottom = feed.scrollHeight - feed.scrollTop - feed.clientHeight < 40;
      feed.dataset.stick = atBottom ? "yes" : "no";
    });
    return feed;
  }

  // ---- notices -----------------------------------------------------------

  function banner(level, text) {
    const box = el("div", `notice ${level}`);
    box.append(el("span", "notice-text", text));
    const close = el("button", "notice-close", "×");
    close.type = "button";
    close.title = "Dismiss";
    close.addEventListener("click", () => box.remove());
    box.append(close);
    ui.notices.append(box);
  }

  function warn(text) {
    state.warnings.push(text);
    banner("warning", text);
  }

  // ---- lanes, messages and tool calls -------------------------------------

  function lane(agent) {
    const name = agent || "(run)";
    let entry = view.lanes.get(name);
    if (entry) return entry;

    const root = el("section", "lane");
    root.dataset.agent = name;
    root.dataset.state = "seen";
    const head = el("header", "lane-head");
    const indicator = el("span", "indicator");
    indicator.setAttribute("aria-hidden", "true");
    const title = el("h2", "lane-title");
    const cut = name.lastIndexOf("/");
    if (cut > 0) title.append(el("span", "lane-path", name.slice(0, cut + 1)));
    title.append(el("span", "lane-name", name.slice(cut + 1)));
    const meta = el("span", "lane-meta");
    head.append(indicator, title, meta);
    const feed = makeFeed("feed");
    root.append(head, feed);
    ui.lanes.append(root);

    entry = { root, indicator, meta, feed, steps: 0, busy: 0 };
    view.lanes.set(name, entry);
    state.agents[name] = { state: "seen", text: "", reasoning: "", steps: 0, durationS: 0, error: null };
    return entry;
  }

  function setLaneState(name, entry, lifecycle) {
    const agent = state.agents[name];
    agent.state = lifecycle;
    entry.root.dataset.state = lifecycle;
    entry.indicator.textContent = { completed: "✓", failed: "✗", stopped: "■", paused: "⏸" }[lifecycle] || "";
    const parts = [];
    if (agent.steps > 1) parts.push(`${agent.steps} steps`);
    if (lifecycle !== "running" && agent.durationS) parts.push(seconds(agent.durationS));
    if (lifecycle === "running") parts.push("running");
    entry.meta.textContent = parts.join(" · ");
  }

  function message(id, entry) {
    let msg = view.messages.get(id);
    if (!msg) {
      const node = el("div", "msg");
      node.dataset.messageId = id;
      entry.feed.append(node);
      msg = { node, span: null, kind: null };
      view.messages.set(id, msg);
    }
    return msg;
  }

  function toolCall(id, agent) {
    let call = view.tools.get(id);
    if (call) return call;
    const entry = lane(agent);
    const card = el("div", "tool");
    card.dataset.toolCallId = id;
    card.dataset.state = "pending";
    const head = el("div", "tool-head");
    const badge = el("span", "tool-badge");
    const name = el("span", "tool-name", "tool");
    head.append(badge, name, el("span", "tool-id", id));
    const args = el("pre", "tool-args");
    const result = el("pre", "tool-result");
    result.hidden = true;
    card.append(head, args, result);
    entry.feed.append(card);
    follow(entry.feed);
    call = { card, badge, name, args, result, entry };
    view.tools.set(id, call);
    state.toolCalls[id] = { name: null, agent: agent || null, argsText: "", args: null, output: null, error: null };
    return call;
  }

  function feedItem(agent, className, title, body) {
    const target = agent ? lane(agent).feed : showRunFeed();
    const item = el("div", `item ${className}`);
    item.append(el("div", "item-title", title));
    if (body !== undefined && body !== null && body !== "") item.append(el("pre", "item-body", pretty(body)));
    target.append(item);
    follow(target);
    return item;
  }

  function showRunFeed() {
    ui.runFeed.hidden = false;
    return ui.runFeed;
  }

  // ---- event handlers (one per event type) ---------------------------------

  const handlers = {
    status(d) {
      if (d.status === "started") {
        if (d.graph) { state.graph = d.graph; ui.graphName.textContent = `graph ${d.graph}`; }
        if (state.status === "starting" || state.status === "joining") setStatus("running");
      }
    },

    agent_lifecycle(d) {
      const name = d.agent || "(run)";
      const entry = lane(name);
      const agent = state.agents[name];
      if (d.phase === "started") {
        agent.steps += 1;
        setLaneState(name, entry, "running");
      } else {
        agent.durationS += d.duration_s || 0;
        if (d.phase === "failed") {
          agent.error = d.error || "failed";
          entry.failure = feedItem(name, "error", `Failed: ${agent.error}`);
        }
        setLaneState(name, entry, d.phase);
      }
    },

    token(d) {
      // The agent comes with a message's first token; later tokens name only the message.
      if (d.agent) view.messageAgents.set(d.message_id, d.agent);
      const name = d.agent || view.messageAgents.get(d.message_id) || "(run)";
      const entry = lane(name);
      const kind = d.kind === "reasoning" ? "reasoning" : "text";
      const msg = message(d.message_id, entry);
      if (msg.kind !== kind) {
        msg.span = el("span", kind === "reasoning" ? "reasoning" : "text", "");
        msg.span.append(document.createTextNode(""));
        msg.node.append(msg.span);
        msg.kind = kind;
      }
      msg.span.firstChild.appendData(d.text);
      state.agents[name][kind] += d.text;
      follow(entry.feed);
    },

    llm(d) {
      // One per LLM call: its model and timings, shown on the message it streamed.
      state.llmCalls.push({
        message_id: d.message_id, agent: d.agent || null, model: d.model || null, status: d.status,
        duration_s: d.duration_s, ttft_s: d.ttft_s ?? null, usage: d.usage || {},
      });
      const msg = view.messages.get(d.message_id);
      if (msg) {
        const first = d.ttft_s != null ? `, first token after ${d.ttft_s.toFixed(3)} s` : "";
        msg.node.title = `${d.model || "LLM"}: ${d.status} in ${d.duration_s.toFixed(3)} s${first}`;
      }
    },

    tool_call(d) {
      const call = toolCall(d.tool_call_id, d.agent);
      const rec = state.toolCalls[d.tool_call_id];
      if (d.name) { rec.name = d.name; call.name.textContent = d.name; }
      if (d.phase === "args" && d.args_delta) {
        rec.argsText += d.args_delta;
        call.args.append(d.args_delta);
      } else if (d.phase === "end") {
        rec.args = d.args ?? {};
        call.args.textContent = pretty(rec.args);
        call.card.dataset.argsDone = "yes";
      }
      follow(call.entry.feed);
    },

    tool_result(d) {
      const call = toolCall(d.tool_call_id, d.agent);
      const rec = state.toolCalls[d.tool_call_id];
      if (d.name && !rec.name) { rec.name = d.name; call.name.textContent = d.name; }
      const failed = d.error !== undefined && d.error !== null;
      rec.output = d.output ?? null;
      rec.error = failed ? d.error : null;
      call.card.dataset.state = failed ? "error" : "ok";
      call.badge.textContent = failed ? "✗" : "✓";
      call.result.hidden = false;
      call.result.className = `tool-result ${failed ? "err" : "ok"}`;
      call.result.textContent = (failed ? d.error : d.output ?? "") + (d.truncated ? "\n… (truncated)" : "");
      // Show where the result came from (usually the tools node) in that agent's own lane.
      if (d.agent && lane(d.agent) !== call.entry) {
        const line = feedItem(d.agent, failed ? "error ref" : "ref",
          `${failed ? "✗" : "✓"} ${rec.name || "tool"} → result`);
        line.title = d.tool_call_id;
      }
      follow(call.entry.feed);
    },

    custom(d) {
      state.custom.push({ name: d.name, data: d.data ?? null, agent: d.agent || null });
      feedItem(d.agent, "custom", `★ ${d.name}`, d.data);
    },

    interrupt(d) {
      const list = d.interrupts || [];
      state.interrupts.push(...list);
      const item = feedItem(null, "interrupt", "⏸ Waiting for human input");
      for (const it of list) item.append(el("pre", "item-body", pretty(it.value)));
      if (d.agent) feedItem(d.agent, "interrupt", "⏸ interrupted");
    },

    error(d) {
      state.errors.push({ message: d.message, error_type: d.error_type, agent: d.agent || null });
      // The type once: `message` leaves it out (a node of an older version put it in front).
      const type = d.error_type || "Error";
      const message = (d.message || "").startsWith(`${type}: `) ? d.message.slice(type.length + 2) : d.message;
      const text = message ? `${type}: ${message}` : type;
      const failure = d.agent && lane(d.agent).failure;
      if (failure && state.agents[d.agent].error === text) {
        failure.firstChild.textContent = text;  // the agent's failure and the run's error, shown once
      } else {
        feedItem(d.agent, "error", text);
      }
    },

    done(d) {
      state.usage = d.usage || { input_tokens: 0, output_tokens: 0, total_tokens: 0 };
      state.durationS = d.duration_s ?? null;
      const u = state.usage;
      ui.usage.textContent = `${u.input_tokens ?? 0} in · ${u.output_tokens ?? 0} out · `
        + `${u.total_tokens ?? 0} tokens · ${seconds(d.duration_s || 0)}`;
      for (const [name, entry] of view.lanes) {
        if (state.agents[name].state === "running") {
          setLaneState(name, entry, d.status === "interrupted" ? "paused" : "stopped");
        }
      }
      finish();
      setStatus(d.status);
    },
  };

  // ---- the stream --------------------------------------------------------

  function seqOf(lastEventId) {
    const cut = lastEventId.lastIndexOf(":");
    if (cut < 0) return null;
    const seq = Number(lastEventId.slice(cut + 1));
    return { runId: lastEventId.slice(0, cut), seq: Number.isInteger(seq) ? seq : null };
  }

  function receive(type, event, es) {
    // Connection failures are plain `error` Events, not frames: onerror handles them.
    if (!(event instanceof MessageEvent) || !stream || stream.es !== es) return;
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
    handlers[type](data);
  }

  function resumeUrl() {
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
          giveUp(known ? "Lost the connection to the event stream."
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
      const res = await fetch(`runs/${encodeURIComponent(state.runId)}`, { headers: { Accept: "application/json" } });
      return res.status !== 404;
    } catch {
      return true;  // the server is unreachable: keep trying
    }
  }

  function giveUp(reason) {
    stopStream();
    setConnection("disconnected");
    warn(reason);
    ui.cancel.disabled = true;
    ui.run.disabled = false;
  }

  function stopStream() {
    if (!stream) return;
    clearTimeout(stream.timer);
    if (stream.es) stream.es.close();
    stream = null;
  }

  function finish() {
    stopStream();
    setConnection("closed");
    ui.cancel.disabled = true;
    ui.cancel.textContent = "Cancel";
    ui.run.disabled = false;
  }

  function watch(runId, streamUrl, status, info = {}) {
    stopStream();
    state = newState(runId);
    state.threadId = info.thread_id || null;
    state.graph = info.graph || null;
    window.kikiState = state;
    view = { lanes: new Map(), messages: new Map(), messageAgents: new Map(), tools: new Map(), noticeSinceLast: false };
    ui.lanes.replaceChildren();
    ui.runFeed.replaceChildren();
    ui.runFeed.hidden = true;
    ui.notices.replaceChildren();
    ui.summary.hidden = false;
    ui.runId.textContent = `run ${runId}` + (state.threadId ? ` · thread ${state.threadId}` : "");
    ui.graphName.textContent = state.graph ? `graph ${state.graph}` : "";
    ui.usage.textContent = "";
    ui.cancel.disabled = false;
    setStatus(status);
    stream = { es: null, url: streamUrl, retries: 0, timer: null };
    connect();
  }

  // ---- user actions ------------------------------------------------------

  async function readError(res) {
    try {
      const body = await res.json();
      const detail = body.detail ?? body.error ?? body;
      return typeof detail === "string" ? detail : JSON.stringify(detail);
    } catch {
      return `HTTP ${res.status}`;
    }
  }

  async function startRun(event) {
    event.preventDefault();
    const text = ui.message.value.trim();
    const graph = ui.graph.value;
    if (!text || !graph) return;
    ui.run.disabled = true;
    try {
      const res = await fetch("runs", {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify({ graph, message: text }),
      });
      if (!res.ok) throw new Error(await readError(res));
      const info = await res.json();
      history.replaceState(null, "", `#run=${encodeURIComponent(info.run_id)}`);
      watch(info.run_id, info.stream_url, "starting", { ...info, graph });
    } catch (err) {
      ui.run.disabled = false;
      warn(`Could not start the run: ${err.message}`);
    }
  }

  async function cancelRun() {
    if (!state.runId) return;
    ui.cancel.disabled = true;
    ui.cancel.textContent = "Cancelling…";
    try {
      const res = await fetch(`runs/${encodeURIComponent(state.runId)}/cancel`, { method: "POST" });
      if (!res.ok) throw new Error(await readError(res));
    } catch (err) {
      ui.cancel.disabled = !stream;
      ui.cancel.textContent = "Cancel";
      warn(`Could not cancel the run: ${err.message}`);
    }
  }

  async function loadGraphs() {
    try {
      const res = await fetch("graphs", { headers: { Accept: "application/json" } });
      if (!res.ok) throw new Error(await readError(res));
      const { graphs } = await res.json();
      ui.graph.replaceChildren(...graphs.map((name) => el("option", null, name)));
      if (!graphs.length) warn("The server has no graphs configured.");
    } catch (err) {
      warn(`Could not load the list of graphs: ${err.message}`);
    }
  }

  ui.form.addEventListener("submit", startRun);
  ui.cancel.addEventListener("click", cancelRun);
  ui.message.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) ui.form.requestSubmit();
  });
  window.kikiState = state;
  setConnection("idle");
  loadGraphs();

  // `#run=<id>` joins an existing run (live or recently finished) from its start.
  const joined = /^#run=(.+)$/.exec(location.hash);
  if (joined) {
    const runId = decodeURIComponent(joined[1]);
    watch(runId, `runs/${encodeURIComponent(runId)}/stream`, "joining");
  }
})();
