// The AI SDK's own client talking to a kiki_events server, driven by tests/test_aisdk_clients.py.
//
//   node client.mjs <module: ai | ai7> <base URL of the chat endpoints, …/ai-sdk> <bearer token>
//
// Says {tag: "hello", ai: version, node: version} first, then reads one JSON command per line on stdin and answers each with JSON lines on stdout,
// tagged with the command's `tag`. Commands run concurrently; each names the graph whose
// endpoint (<base>/<graph>) it talks to:
//
//   {tag, op: "send", graph, chatId, messages, body?}  DefaultChatTransport.sendMessages + readUIMessageStream
//   {tag, op: "read", path, message?}                  the same, the response's body read from a file
//                                                      (continuing `message` when given)
//   {tag, op: "reconnect", graph, chatId}              DefaultChatTransport.reconnectToStream (+ readUIMessageStream)
//   {tag, op: "chat", graph, chatId, text}             an AbstractChat (what useChat runs) sends a user message
//   {tag, op: "approve", graph, chatId, approved, reason?}  that chat's addToolApprovalResponse for its
//                                                      pending approval (the chat sends the answer itself)
//
// While a stream is read, every chunk the client accepted is reported as {tag, chunk: type}.
// The last line of a command is {tag, result}: the final message (or the chat's messages and
// status), the errors the client reported, the chunk types it accepted and the number of
// `data:` chunks the server sent (counted on the raw body, `[DONE]` apart).

import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";

const [moduleName, base, token] = process.argv.slice(2);
const ai = await import(moduleName);
const manifest = new URL(`./node_modules/${moduleName}/package.json`, import.meta.url);
const headers = { Authorization: `Bearer ${token}` };
const chats = new Map();

function emit(line) {
  process.stdout.write(JSON.stringify(line) + "\n");
}

function describe(error) {
  return String(error?.message ?? error);
}

// A fetch that keeps a copy of each response body, so what the server sent can be counted.
function recordingFetch(bodies, fetchBody) {
  return async (input, init) => {
    const response = await fetchBody(input, init);
    if (response.body == null) return response;
    const [kept, passed] = response.body.tee();
    bodies.push(new Response(kept).text());
    return new Response(passed, { status: response.status, statusText: response.statusText, headers: response.headers });
  };
}

async function sentChunks(bodies) {
  let frames = 0;
  let done = 0;
  for (const text of await Promise.all(bodies)) {
    for (const block of text.split("\n\n")) {
      if (block === "data: [DONE]") done += 1;
      else if (block.startsWith("data: ")) frames += 1;
    }
  }
  return { sent: frames, doneFrames: done };
}

// A transport whose streams report each chunk the client parsed, in the order read.
function fileFetch(path) {
  const headers = { "content-type": "text/event-stream", "x-vercel-ai-ui-message-stream": "v1" };
  return async () => new Response(readFileSync(path), { headers });
}

function reportingTransport(graph, tagOf, bodies, accepted, fetchBody = fetch) {
  const api = `${base}/${graph}`;
  const inner = new ai.DefaultChatTransport({ api, headers, fetch: recordingFetch(bodies, fetchBody) });
  const report = (stream) =>
    stream?.pipeThrough(
      new TransformStream({
        transform(chunk, controller) {
          accepted.push(chunk.type);
          emit({ tag: tagOf(), chunk: chunk.type, messageId: chunk.messageId });
          controller.enqueue(chunk);
        },
      }),
    ) ?? null;
  return {
    resumeStreamIsReplay: inner.resumeStreamIsReplay,
    sendMessages: async (options) => report(await inner.sendMessages(options)),
    reconnectToStream: async (options) => report(await inner.reconnectToStream(options)),
  };
}

async function readAll(stream, errors, start) {
  let message = null;
  const onError = (e) => errors.push(describe(e));
  for await (const m of ai.readUIMessageStream({ stream, message: start, onError })) message = m;
  return message;
}

async function stream(command) {
  const bodies = [];
  const accepted = [];
  const errors = [];
  const fetchBody = command.op === "read" ? fileFetch(command.path) : fetch;
  const transport = reportingTransport(command.graph ?? "file", () => command.tag, bodies, accepted, fetchBody);
  let message = null;
  let reconnected = true;
  try {
    const chunks =
      command.op !== "reconnect"
        ? await transport.sendMessages({
            chatId: command.chatId ?? "file",
            messages: command.messages ?? [],
            trigger: "submit-message",
            messageId: undefined,
            abortSignal: undefined,
            body: command.body,
          })
        : await transport.reconnectToStream({ chatId: command.chatId });
    if (chunks == null) reconnected = false;
    else message = await readAll(chunks, errors, command.message);
  } catch (e) {
    errors.push("thrown: " + describe(e));
  }
  return { message, reconnected, errors, accepted, ...(await sentChunks(bodies)) };
}

class MemoryState {
  constructor() {
    this.status = "ready";
    this.error = undefined;
    this.messages = [];
  }
  pushMessage(message) {
    this.messages = [...this.messages, message];
  }
  popMessage() {
    this.messages = this.messages.slice(0, -1);
  }
  replaceMessage(index, message) {
    this.messages = [...this.messages.slice(0, index), structuredClone(message), ...this.messages.slice(index + 1)];
  }
  snapshot(thing) {
    return structuredClone(thing);
  }
}

class Chat extends ai.AbstractChat {}

function openChat(command) {
  if (!chats.has(command.chatId)) {
    const record = { bodies: [], accepted: [], errors: [], finished: [] };
    record.chat = new Chat({
      id: command.chatId,
      state: new MemoryState(),
      transport: reportingTransport(command.graph, () => record.tag, record.bodies, record.accepted),
      sendAutomaticallyWhen: ai.lastAssistantMessageIsCompleteWithApprovalResponses,
      onError: (e) => record.errors.push(describe(e)),
      onFinish: () => record.finished.shift()?.(),
    });
    chats.set(command.chatId, record);
  }
  return chats.get(command.chatId);
}

async function chatResult(record) {
  const { chat } = record;
  return {
    messages: chat.messages,
    status: chat.status,
    error: chat.error ? describe(chat.error) : null,
    errors: record.errors,
    accepted: record.accepted,
    ...(await sentChunks(record.bodies)),
  };
}

async function converse(command) {
  const record = openChat(command);
  record.tag = command.tag;
  const { chat } = record;
  if (command.op === "chat") {
    await chat.sendMessage({ text: command.text });
  } else {
    const parts = chat.lastMessage?.parts ?? [];
    const pending = parts.find((part) => part.state === "approval-requested");
    if (pending == null) throw new Error("no tool approval is pending");
    // The answer sends the next request by itself (sendAutomaticallyWhen); wait for its end.
    const finished = new Promise((resolve) => record.finished.push(resolve));
    await chat.addToolApprovalResponse({ id: pending.approval.id, approved: command.approved, reason: command.reason });
    await finished;
  }
  return chatResult(record);
}

async function run(command) {
  try {
    const streamed = ["send", "read", "reconnect"].includes(command.op);
    const result = streamed ? await stream(command) : await converse(command);
    emit({ tag: command.tag, result });
  } catch (e) {
    emit({ tag: command.tag, result: { errors: ["thrown: " + describe(e)] } });
  }
}

// First line: which client and Node this is.
emit({ tag: "hello", ai: JSON.parse(readFileSync(manifest, "utf8")).version, node: process.versions.node });

const pending = [];
for await (const line of createInterface({ input: process.stdin })) {
  if (line.trim()) pending.push(run(JSON.parse(line)));
}
await Promise.all(pending);
