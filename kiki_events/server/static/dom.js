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

// A block of text shown whole when it fits the fold; a longer one shows its first
// lines and a button for the rest (never a scroll box of its own). Whether it fits
// is measured, again whenever its width changes.
const measured = new ResizeObserver((entries) => {
  for (const entry of entries) measureClip(entry.target.parentElement);
});

export function clipBox(className) {
  const box = el("div", `clip ${className}`);
  const body = el("pre", "clip-body");
  const toggle = button("", "clip-toggle", () => {
    box.dataset.open = box.dataset.open === "yes" ? "no" : "yes";
    labelClip(box);
  });
  toggle.hidden = true;
  box.append(body, toggle);
  measured.observe(body);
  return box;
}

export function setClipText(box, text) {
  box.firstChild.textContent = text;
  if (!box.dataset.pending) {
    box.dataset.pending = "yes";
    requestAnimationFrame(() => { delete box.dataset.pending; measureClip(box); });
  }
}

function measureClip(box) {
  if (!box || box.dataset.open === "yes") return;
  const body = box.firstChild;
  if (!body.isConnected || body.clientHeight === 0) return;
  box.dataset.long = body.scrollHeight > body.clientHeight + 2 ? "yes" : "no";
  labelClip(box);
}

function labelClip(box) {
  const toggle = box.lastChild;
  const open = box.dataset.open === "yes";
  toggle.hidden = box.dataset.long !== "yes";
  toggle.textContent = open ? "Show less ▴" : "Show all ▾";
  toggle.setAttribute("aria-expanded", open ? "true" : "false");
}
