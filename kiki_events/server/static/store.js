// The state of the page, shared by the dashboard's modules.
//
// `app.state` is everything known about the run being watched (exposed as
// window.kikiState); a new run starts a new state. `app.view` is the DOM
// bookkeeping of what is shown: it survives the run that continues an answered
// interrupt, so the agents' cards go on where they stopped.

export const app = { state: newState(null), view: null, ui: null };

export function newState(runId) {
  return {
    runId, threadId: null, graph: null, node: null, lastSeq: 0, status: "idle", connection: "idle",
    reconnects: 0, agents: {}, toolCalls: {}, llmCalls: [], duplicates: 0, notices: [], warnings: [],
    errors: [], interrupts: [], custom: [], progress: [], handoffs: [], usage: null, durationS: null,
    resumedFrom: null,
  };
}

export function newView() {
  return {
    lanes: new Map(),          // agent path → card bookkeeping
    messages: new Map(),       // run_id:message_id → message node
    messageAgents: new Map(),  // run_id:message_id → agent (only a message's first token names it)
    tools: new Map(),          // tool_call_id → tool card bookkeeping
    handoffs: new Map(),       // multiagent:sync request_id → handoff item
    steps: new Map(),          // agent path → its open timeline row
    lastEnded: null,           // the agent whose end was the last lifecycle event
    t0: null,                  // ts of the first event shown
    clock: 0,                  // this browser's clock minus the server's (seconds), from the last event
    noticeSinceLast: false,
  };
}

// The record of an agent of the current run (created on its first event).
export function agentRec(name) {
  const agents = app.state.agents;
  if (!agents[name]) {
    agents[name] = { state: "seen", text: "", reasoning: "", steps: 0, durationS: 0, error: null, node: null };
  }
  return agents[name];
}

export function toolRec(id, agent) {
  const calls = app.state.toolCalls;
  if (!calls[id]) {
    calls[id] = { name: null, agent: agent || null, argsText: "", args: null, output: null, error: null, progress: [] };
  }
  return calls[id];
}
