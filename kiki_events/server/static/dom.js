// Small DOM helpers shared by the dashboard's modules. Event data is only ever
// rendered with textContent, never parsed as HTML.

export const $ = (id) => document.getElementById(id);

export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

export function button(label, className, onClick) {
  const node = el("button", className, label);
  node.type = "button";
  if (onClick) node.addEventListener("click", onClick);
  return node;
}

export function pretty(value) {
  if (typeof value === "string") return value;
  try { return JSON.stringify(value, null, 2); } catch { return String(value); }
}

export function oneLine(value, max = 80) {
  let text = typeof value === "string" ? JSON.stringify(value) : JSON.stringify(value ?? null);
  if (text === undefined) text = String(value);
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

export function seconds(s) {
  if (typeof s !== "number") return "";
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 60) return `${s.toFixed(2)} s`;
  return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
}

export function shortId(id) {
  return typeof id === "string" && id.length > 10 ? `${id.slice(0, 8)}…` : String(id ?? "");
}

export function setPill(node, stateName, text) {
  node.dataset.state = stateName;
  node.textContent = text;
}

// A block of text shown whole when short; a long one shows its first lines and a
// button to show the rest (never a scroll box of its own).
const CLIP_LINES = 8;
const CLIP_CHARS = 900;

export function clipBox(className) {
  const box = el("div", `clip ${className}`);
  const body = el("pre", "clip-body");
  const toggle = button("", "clip-toggle", () => {
    box.dataset.open = box.dataset.open === "yes" ? "no" : "yes";
    labelClip(box);
  });
  toggle.hidden = true;
  box.append(body, toggle);
  return box;
}

export function setClipText(box, text) {
  const body = box.firstChild;
  body.textContent = text;
  const lines = text.split("\n").length;
  box.dataset.long = lines > CLIP_LINES || text.length > CLIP_CHARS ? "yes" : "no";
  box.dataset.lines = String(lines);
  labelClip(box);
}

function labelClip(box) {
  const toggle = box.lastChild;
  toggle.hidden = box.dataset.long !== "yes";
  const lines = Number(box.dataset.lines);
  toggle.textContent = box.dataset.open === "yes" ? "Show less ▴"
    : `Show all${lines > 1 ? ` ${lines} lines` : ""} ▾`;
  toggle.setAttribute("aria-expanded", box.dataset.open === "yes" ? "true" : "false");
}
