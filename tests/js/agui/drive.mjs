// Drives the AG-UI client library (HttpAgent) against a kiki_events server, for tests/test_agui_client.py.
//
// Usage: node drive.mjs <scenario.json>
//
// The scenario names the client ("1": @ag-ui/client 1.0, "0": the last 0.0.x), the server,
// the agent's thread and a list of steps, run in order on one agent:
//   {"do": "run", "message": "...", ...}   add a user message and runAgent
//   {"do": "run", "answer": <payload>}      runAgent answering the open interrupts with <payload>
//                                           (1.0: the client's pendingInterrupts; 0.0.x: the
//                                           interrupts of the last kiki.interrupt CUSTOM event)
//   {"do": "connect"}                       a fresh agent on the same thread re-attaches to the
//                                           previous step's run: connectAgent reading
//                                           GET /runs/{id}/stream?format=agui
//   {"do": "run", "body": "...", ...}      a fresh agent's runAgent answered with that text
//                                           instead of the server's answer
// Options of a step: "cancelOnStep" (POST /runs/{id}/cancel when that step starts),
// "abortOnStep" (the client drops the connection there), "signalOnStep" (print a signal line).
//
// Output, one JSON object a line: {"signal": name} when a step reaches its signal, then
// {"steps": [...]}: per step the events the subscribers saw, the error runAgent threw (if any),
// the console warnings and errors the library printed, the agent's messages and pending
// interrupts after it, and our run id (the X-Kiki-Run-Id header).

import { readFileSync } from "node:fs";

const scenario = JSON.parse(readFileSync(process.argv[2], "utf8"));
const lib = await import(`agui-client-${scenario.client}`);
const { HttpAgent, runHttpRequest, transformHttpEventStream } = lib;

const printed = [];
for (const level of ["warn", "error"]) {
  console[level] = (...args) => printed.push(`${level}: ${args.map((a) => (a instanceof Error ? a.message : typeof a === "string" ? a : JSON.stringify(a))).join(" ")}`);
}

const headers = scenario.headers ?? {};
let lastRunId = null;
let fixedBody;
const recordingFetch = async (url, init) => {
  if (fixedBody !== undefined) {
    // A fixed answer instead of the server's: shows what the client refuses.
    return new Response(fixedBody, { headers: { "content-type": "text/event-stream" } });
  }
  const response = await fetch(url, init);
  const runId = response.headers.get("x-kiki-run-id");
  if (runId) lastRunId = runId;
  return response;
};

class ReattachingAgent extends HttpAgent {
  constructor(config, streamUrl) {
    super(config);
    this.streamUrl = streamUrl;
  }

  connect() {
    const init = { method: "GET", headers: { ...this.headers, Accept: "text/event-stream" } };
    return transformHttpEventStream(runHttpRequest(() => this.fetch(this.streamUrl, init)));
  }
}

function newAgent(streamUrl) {
  const config = {
    url: `${scenario.url}/ag-ui/${scenario.graph}`,
    headers,
    threadId: scenario.threadId,
    fetch: recordingFetch,
  };
  return streamUrl ? new ReattachingAgent(config, streamUrl) : new HttpAgent(config);
}

function resumeEntries(agent, events, answer) {
  let interrupts;
  if (scenario.client === "1") {
    interrupts = agent.pendingInterrupts;
  } else {
    const carried = events.filter((e) => e.type === "CUSTOM" && e.name === "kiki.interrupt");
    interrupts = carried.length ? carried[carried.length - 1].value.interrupts : [];
  }
  return interrupts.map((i) => ({ interruptId: i.id, status: "resolved", payload: answer }));
}

async function runStep(agent, step, previous) {
  const events = [];
  const pending = [];
  const printedBefore = printed.length;
  const subscriber = {
    onEvent: ({ event }) => {
      events.push(event);
      if (event.type !== "STEP_STARTED") return;
      if (event.stepName === step.cancelOnStep) {
        const url = `${scenario.url}/runs/${lastRunId}/cancel`;
        pending.push(fetch(url, { method: "POST", headers }).then((r) => r.status));
      }
      if (event.stepName === step.abortOnStep) agent.abortRun();
      if (event.stepName === step.signalOnStep) process.stdout.write(JSON.stringify({ signal: step.signalOnStep }) + "\n");
    },
  };
  const out = { events, error: null };
  try {
    let result;
    if (step.do === "connect") {
      result = await agent.connectAgent({}, subscriber);
    } else {
      const parameters = {};
      if (step.message !== undefined) {
        agent.addMessage({ id: `user-${Math.random().toString(36).slice(2)}`, role: "user", content: step.message });
      }
      if (step.answer !== undefined) parameters.resume = resumeEntries(agent, previous, step.answer);
      out.resume = parameters.resume;
      result = await agent.runAgent(parameters, subscriber);
    }
    out.newMessages = result.newMessages;
  } catch (error) {
    out.error = `${error?.name ?? "Error"}: ${error?.message ?? String(error)}`;
  }
  out.cancelStatus = await Promise.all(pending);
  out.printed = printed.slice(printedBefore);
  out.messages = agent.messages;
  out.pendingInterrupts = agent.pendingInterrupts ?? [];
  out.runId = lastRunId;
  return out;
}

const results = [];
let agent = newAgent(null);
let previous = [];
for (const step of scenario.steps) {
  if (step.do === "connect") {
    const streamUrl = `${scenario.url}/runs/${lastRunId}/stream?format=agui`;
    agent = newAgent(streamUrl);
  }
  if (step.body !== undefined) agent = newAgent(null);
  fixedBody = step.body;
  const out = await runStep(agent, step, previous);
  previous = out.events;
  results.push(out);
}
process.stdout.write(JSON.stringify({ steps: results }) + "\n");
