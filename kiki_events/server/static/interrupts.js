// The pending interrupt: its question and choices, and the answer a person sends.
//
// An interrupt's value may say what it asks (docs/events.md): `question` (+ `choices`,
// the answer is one of them), or a tool approval (`tool_call_id`, `tool`, `args`; the
// answer is {"approved": bool, "reason"?: str}). Any other value is shown as JSON and
// answered with any JSON value (or plain text).

import { app } from "./store.js";
import { button, clipBox, el, pretty, setClipText } from "./dom.js";

let pending = null;  // {items, armed, sending, send, status, sendAll}

export function kindOf(value) {
  if (value && typeof value === "object" && !Array.isArray(value)) {
    if (typeof value.tool_call_id === "string") return "approval";
    const choices = value.choices;
    if (typeof value.question === "string" && Array.isArray(choices) && choices.length
        && choices.every((c) => typeof c === "string")) return "choices";
    if (typeof value.question === "string") return "question";
  }
  return "json";
}

function controls(entry) {
  const box = el("div", "ask-controls");
  const { value } = entry;
  if (entry.kind === "approval") {
    const reason = el("input", "ask-reason");
    reason.type = "text";
    reason.placeholder = "Reason (optional)";
    reason.setAttribute("aria-label", "Reason (optional)");
    const reply = (approved) => {
      const answer = { approved };
      if (reason.value.trim()) answer.reason = reason.value.trim();
      choose(entry, answer, approved ? "Approved" : "Rejected");
    };
    box.append(button("Approve", "approve", () => reply(true)), button("Reject", "reject", () => reply(false)), reason);
  } else if (entry.kind === "choices") {
    for (const choice of value.choices) box.append(button(choice, "choice", () => choose(entry, choice, choice)));
  } else {
    const json = entry.kind === "json";
    const input = el(json ? "textarea" : "input", "ask-text");
    if (json) input.rows = 3; else input.type = "text";
    input.placeholder = json ? "Your answer: JSON, or plain text" : "Your answer";
    input.setAttribute("aria-label", input.placeholder);
    const submit = () => {
      const text = input.value.trim();
      if (!text) { input.focus(); return; }
      let answer = text;
      if (json) { try { answer = JSON.parse(text); } catch { answer = text; } }
      choose(entry, answer, typeof answer === "string" ? answer : JSON.stringify(answer));
    };
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (!json || event.ctrlKey || event.metaKey)) { event.preventDefault(); submit(); }
    });
    box.append(input, button("Send", "send", submit));
  }
  return box;
}

function ask(it, agent) {
  const entry = { id: it.id, value: it.value, kind: kindOf(it.value), answer: undefined, label: null };
  const node = el("div", "ask");
  node.dataset.kind = entry.kind;
  node.dataset.interruptId = it.id;
  const { value } = entry;
  const caller = entry.kind === "approval" && app.view.tools.get(value.tool_call_id)?.entry.name;
  if (caller) node.append(el("div", "ask-agent", `${caller} wants to call ${value.tool || "a tool"}`));
  else if (agent) node.append(el("div", "ask-agent", `${agent} asks`));
  if (entry.kind === "approval") {
    node.append(el("p", "ask-question", value.question || `Run the tool ${value.tool || "call"}?`));
    const tool = el("div", "ask-tool");
    tool.append(el("span", "tool-name", value.tool || "tool"));
    if (value.args !== undefined) {
      const args = clipBox("ask-args");
      setClipText(args, pretty(value.args));
      tool.append(args);
    }
    node.append(tool);
  } else if (entry.kind === "json") {
    const body = clipBox("ask-value");
    setClipText(body, pretty(value));
    node.append(body);
  } else {
    node.append(el("p", "ask-question", value.question));
  }
  node.append(controls(entry));
  entry.node = node;
  return entry;
}

export function showInterrupts(list, agent, send) {
  const panel = app.ui.pending;
  if (!pending) {
    panel.replaceChildren(el("h2", "pending-title", "‖ The run is waiting for your answer"));
    const foot = el("div", "pending-foot");
    const status = el("span", "pending-status", "");
    const sendAll = button("Send answers", "send-all", () => submit());
    sendAll.hidden = true;
    foot.append(sendAll, status);
    panel.append(foot);
    pending = { items: [], armed: false, sending: false, send, status, sendAll, foot };
  }
  for (const it of list) {
    const entry = ask(it, agent);
    pending.items.push(entry);
    panel.insertBefore(entry.node, pending.foot);
  }
  pending.sendAll.hidden = pending.items.length < 2;
  panel.hidden = false;
  panel.dataset.state = "waiting";
  setEnabled(false);
  pending.status.textContent = "The run is pausing…";
}

// The run has ended at the interrupt: the answer may be sent now. A run joined
// later may have been answered already; the thread's state says.
export async function armInterrupts(threadId) {
  if (!pending) return;
  const mine = pending;
  let answered = false;
  if (threadId) {
    try {
      const res = await fetch(`threads/${encodeURIComponent(threadId)}/state`, { headers: { Accept: "application/json" } });
      if (res.ok) {
        const open = new Set(((await res.json()).interrupts || []).map((i) => i.id));
        answered = !mine.items.some((entry) => open.has(entry.id));
      }
    } catch { /* the server says when the answer is sent */ }
  }
  if (pending !== mine) return;
  if (answered) {
    app.ui.pending.dataset.state = "stale";
    mine.status.textContent = "Answered already: the thread has moved on.";
    return;
  }
  mine.armed = true;
  mine.status.textContent = mine.items.length > 1 ? "Answer each question, then send." : "";
  setEnabled(true);
  app.ui.pending.querySelector("button, input, textarea")?.focus({ preventScroll: true });
}

export function closeInterrupts() {
  pending = null;
  app.ui.pending.hidden = true;
  app.ui.pending.replaceChildren();
}

function setEnabled(on) {
  for (const node of app.ui.pending.querySelectorAll("button, input, textarea")) node.disabled = !on;
  if (on && pending) pending.sendAll.disabled = !pending.items.every((e) => e.answer !== undefined);
}

function choose(entry, answer, label) {
  if (!pending || !pending.armed || pending.sending) return;
  entry.answer = answer;
  entry.label = label;
  for (const b of entry.node.querySelectorAll("button")) b.setAttribute("aria-pressed", "false");
  entry.node.dataset.answer = label;
  const picked = [...entry.node.querySelectorAll("button")].find((b) => b.textContent === label);
  if (picked) picked.setAttribute("aria-pressed", "true");
  if (pending.items.length === 1) submit();
  else setEnabled(true);
}

async function submit() {
  const mine = pending;
  if (!mine || mine.sending || !mine.items.every((e) => e.answer !== undefined)) return;
  mine.sending = true;
  setEnabled(false);
  mine.status.textContent = "Sending your answer…";
  const resume = mine.items.length === 1 ? mine.items[0].answer
    : Object.fromEntries(mine.items.map((e) => [e.id, e.answer]));
  const labels = mine.items.map((e) => e.label).join(", ");
  try {
    await mine.send(resume, labels);
  } catch (err) {
    if (pending !== mine) return;
    mine.sending = false;
    mine.status.textContent = `Could not send the answer: ${err.message}`;
    app.ui.pending.dataset.state = "failed";
    setEnabled(true);
  }
}
