// One handler per event type: each applies an event of the run to the page.

import { app, agentRec, toolRec } from "./store.js";
import { seconds } from "./dom.js";
import {
  handoff, item, lane, message, setLaneState, setToolName, showNode, toolArgsDelta, toolArgsEnd, toolCall,
  toolDone, toolProgress, toolWaiting,
} from "./lanes.js";
import { note, stepEnded, stepStarted, stepsStopped } from "./timeline.js";
import { kindOf, showInterrupts } from "./interrupts.js";

const ENDINGS = { success: "Run finished", error: "Run failed", interrupted: "Run paused for an answer",
  cancelled: "Run cancelled" };

// hooks: {started(d), finished(d), sendAnswer(resume, labels)} from the page.
export function makeHandlers(hooks) {
  return {
    status(d) {
      if (d.status !== "started") return;
      const { state } = app;
      state.node = d.node || null;
      if (d.thread_id) state.threadId = d.thread_id;
      hooks.started(d);
    },

    agent_lifecycle(d) {
      const name = d.agent || "(run)";
      const agent = agentRec(name);
      lane(name);
      showNode(name, d.node);
      if (d.phase === "started") {
        agent.steps += 1;
        setLaneState(name, "running");
        stepStarted(name, d.ts);
        return;
      }
      agent.durationS += d.duration_s || 0;
      if (d.phase === "failed") {
        agent.error = d.error || "failed";
        lane(name).failure = item(name, "error", `Failed: ${agent.error}`);
      }
      setLaneState(name, d.phase);
      stepEnded(name, d.phase, d.duration_s, d.ts);
    },

    token(d) {
      // The agent comes with a message's first token; later tokens name only the message.
      // Message ids count per run: a run that continues another one starts again at m1.
      const view = app.view;
      const key = `${app.state.runId}:${d.message_id}`;
      if (d.agent) view.messageAgents.set(key, d.agent);
      const name = d.agent || view.messageAgents.get(key) || "(run)";
      const kind = d.kind === "reasoning" ? "reasoning" : "text";
      const msg = message(key, d.message_id, lane(name));
      if (msg.kind !== kind) {
        msg.span = document.createElement("span");
        msg.span.className = kind;
        msg.span.append(document.createTextNode(""));
        msg.node.append(msg.span);
        msg.kind = kind;
      }
      msg.span.firstChild.appendData(d.text);
      agentRec(name)[kind] += d.text;
    },

    llm(d) {
      // One per LLM call: its model and timings, shown on the message it streamed.
      app.state.llmCalls.push({
        message_id: d.message_id, agent: d.agent || null, model: d.model || null, status: d.status,
        duration_s: d.duration_s, ttft_s: d.ttft_s ?? null, usage: d.usage || {},
      });
      const msg = app.view.messages.get(`${app.state.runId}:${d.message_id}`);
      if (msg) {
        const first = d.ttft_s != null ? `, first token after ${d.ttft_s.toFixed(3)} s` : "";
        msg.node.title = `${d.model || "LLM"}: ${d.status} in ${d.duration_s.toFixed(3)} s${first}`;
      }
    },

    tool_call(d) {
      const call = toolCall(d.tool_call_id, d.agent);
      const rec = toolRec(d.tool_call_id, d.agent);
      setToolName(call, rec, d.name);
      if (d.phase === "args" && d.args_delta) toolArgsDelta(call, rec, d.args_delta);
      else if (d.phase === "end") toolArgsEnd(call, rec, d.args);
    },

    tool_result(d) {
      const call = toolCall(d.tool_call_id, d.agent);
      const rec = toolRec(d.tool_call_id, d.agent);
      if (d.name && !rec.name) setToolName(call, rec, d.name);
      toolDone(call, rec, d);
      // Show where the result came from (usually the tools node) in that agent's own card.
      if (d.agent && lane(d.agent) !== call.entry) {
        const failed = rec.error !== null;
        const line = item(d.agent, failed ? "error ref" : "ref", `${failed ? "✗" : "✓"} ${rec.name || "tool"} → result`);
        line.title = d.tool_call_id;
      }
    },

    custom(d) {
      const { state } = app;
      state.custom.push({ name: d.name, data: d.data ?? null, agent: d.agent || null, tool_call_id: d.tool_call_id || null });
      if (d.name === "multiagent:sync" && d.data && typeof d.data === "object") {
        state.handoffs.push(d.data);
        const box = handoff(d.agent, d.data);
        note("handoff", d.ts, box.firstChild.textContent.replace(/^⇄ /, ""), "", (d.agent || "").split("/").length - 1);
      } else if (d.tool_call_id) {
        state.progress.push({ tool_call_id: d.tool_call_id, name: d.name, data: d.data ?? null });
        toolRec(d.tool_call_id, d.agent).progress.push(d.data ?? null);
        toolProgress(toolCall(d.tool_call_id, d.agent), d.name, d.data);
      } else {
        item(d.agent, "custom", `★ ${d.name}`, d.data);
      }
    },

    interrupt(d) {
      const list = d.interrupts || [];
      // A node of the root graph pauses without naming itself: the agent that asks
      // is the one that started last and is still running.
      const agent = d.agent || [...app.view.steps.keys()].pop() || null;
      app.state.interrupts.push(...list);
      app.state.interruptAgent = agent;
      showInterrupts(list, agent, hooks.sendAnswer);
      for (const it of list) {
        const approval = kindOf(it.value) === "approval" && app.view.tools.get(it.value.tool_call_id);
        if (approval) toolWaiting(approval, true);
        const asked = it.value && typeof it.value.question === "string" ? it.value.question : "a question";
        note("interrupt", d.ts, `${agent || "the run"} asks: ${asked}`);
      }
      item(agent, "interrupt", "‖ Waiting for your answer");
    },

    error(d) {
      const { state } = app;
      state.errors.push({ message: d.message, error_type: d.error_type, agent: d.agent || null });
      // The type once: `message` leaves it out (a node of an older version put it in front).
      const type = d.error_type || "Error";
      const text = (d.message || "").startsWith(`${type}: `) ? d.message.slice(type.length + 2) : d.message;
      const shown = text ? `${type}: ${text}` : type;
      state.lastError = shown;
      const failure = d.agent && lane(d.agent).failure;
      if (failure && agentRec(d.agent).error === shown) {
        failure.firstChild.textContent = shown;  // the agent's failure and the run's error, shown once
      } else {
        item(d.agent, "error", shown);
      }
    },

    done(d) {
      const { state } = app;
      state.usage = d.usage || { input_tokens: 0, output_tokens: 0, total_tokens: 0 };
      state.durationS = d.duration_s ?? null;
      const stillRunning = d.status === "interrupted" ? "paused" : "stopped";
      for (const [name, rec] of Object.entries(state.agents)) {
        if (rec.state === "running") setLaneState(name, stillRunning);
      }
      stepsStopped(stillRunning);
      note(d.status, d.ts, ENDINGS[d.status] || d.status, seconds(d.duration_s));
      hooks.finished(d);
    },
  };
}
