"""Reading the live dashboard in a real Chromium: what it shows, and how it is laid out.

Shared by the browser tests of one node (``test_dashboard_browser.py``) and of a
cluster (``test_cluster_browser.py``). Chromium is driven with Playwright's Python
package used only as a driver for the system browser (``/usr/bin/chromium``); no
browser is ever downloaded.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("KIKI_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WIDTHS = (390, 768, 1280, 1920)
"""Viewport widths the layout is checked at: a phone, a tablet, a laptop, a wide screen."""
ENDED = "['success', 'error', 'interrupted', 'cancelled'].includes(window.kikiState.status)"


def browser_missing() -> str | None:
    if not Path(CHROMIUM).is_file() or not os.access(CHROMIUM, os.X_OK):
        return f"Chromium not found at {CHROMIUM} (apt-get install chromium, or set KIKI_CHROMIUM)"
    if importlib.util.find_spec("playwright") is None:
        return "the playwright Python package is not installed (pip install playwright; no browser download needed)"
    return None


def require_browser() -> None:
    reason = browser_missing()
    if reason is None:
        return
    if os.environ.get("KIKI_REQUIRE_BROWSER") == "1":
        pytest.fail(f"KIKI_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


def wait_until_finished(page: Any) -> str:
    page.wait_for_function(ENDED)
    return str(page.evaluate("window.kikiState.status"))


def start_run(page: Any, base_url: str, message: str, graph: str = "research_team") -> str:
    page.goto(f"{base_url}/")
    page.wait_for_function(f"[...document.querySelectorAll('#graph option')].some(o => o.value === {graph!r})")
    page.select_option("#graph", graph)
    page.fill("#message", message)
    page.click("#run")
    page.wait_for_function("window.kikiState.runId !== null")
    return str(page.evaluate("window.kikiState.runId"))


def rendered(page: Any) -> dict[str, Any]:
    """What the page shows: agent cards, messages and tool cards, read from the DOM."""
    return page.evaluate(
        """() => {
          const text = (root, sel) => [...root.querySelectorAll(sel)].map((n) => n.textContent).join("");
          const lanes = {};
          for (const lane of document.querySelectorAll(".lane")) {
            const parent = lane.parentElement.closest(".lane");
            lanes[lane.dataset.agent] = {state: lane.dataset.state,
              indicator: lane.querySelector(".indicator").textContent,
              parent: parent ? parent.dataset.agent : null,
              node: lane.querySelector(":scope > .lane-head .lane-node").hidden ? null
                : lane.querySelector(":scope > .lane-head .lane-node").textContent};
          }
          const messages = {};
          for (const msg of document.querySelectorAll(".msg")) {
            messages[msg.dataset.messageId] = {text: text(msg, ".text"), reasoning: text(msg, ".reasoning"),
              agent: msg.closest(".lane").dataset.agent};
          }
          const tools = {};
          for (const card of document.querySelectorAll(".tool")) {
            const result = card.querySelector(".tool-result");
            const body = result.querySelector(".clip-body");
            tools[card.dataset.toolCallId] = {name: card.querySelector(".tool-name").textContent,
              args: card.querySelector(".tool-args .clip-body").textContent, state: card.dataset.state,
              summary: card.querySelector(".tool-summary").textContent,
              result: result.hidden ? null : body.textContent, resultColor: getComputedStyle(body).color,
              progress: [...card.querySelectorAll(".progress-all li")].map((n) => n.textContent),
              latest: card.querySelector(".progress-latest")?.textContent ?? null,
              agent: card.closest(".lane").dataset.agent};
          }
          const outcome = document.getElementById("outcome");
          return {lanes, messages, tools, usage: document.getElementById("usage").textContent,
                  status: document.getElementById("run-status").textContent,
                  outcome: {state: outcome.dataset.state, text: outcome.textContent, hidden: outcome.hidden},
                  connection: document.getElementById("conn").dataset.state,
                  timeline: [...document.querySelectorAll("#timeline li")].map((n) => n.textContent),
                  notices: document.querySelectorAll(".notice").length};
        }"""
    )


LAYOUT_FACTS = """() => {
  const doc = document.documentElement;
  const scrollers = [];
  for (const node of document.querySelectorAll("body *")) {
    const style = getComputedStyle(node);
    const scrolls = /(auto|scroll)/.test(style.overflowY) && node.scrollHeight > node.clientHeight + 1;
    const scrollsX = /(auto|scroll)/.test(style.overflowX) && node.scrollWidth > node.clientWidth + 1;
    if (scrolls || scrollsX || node.scrollTop > 0) scrollers.push(`${node.tagName}.${node.className}`);
  }
  const box = (node) => {
    const r = node.getBoundingClientRect();
    return {agent: node.dataset.agent, top: r.top + scrollY, bottom: r.bottom + scrollY, left: r.left, right: r.right};
  };
  // The first line of every card: scrolled to, it is what the browser shows there.
  const hidden = [];
  for (const lane of document.querySelectorAll(".lane")) {
    const first = lane.querySelector(":scope > .feed > *");
    if (!first) continue;
    first.scrollIntoView({block: "center"});
    const r = first.getBoundingClientRect();
    const hit = document.elementFromPoint(r.left + 4, r.top + 4);
    if (!hit || !(first === hit || first.contains(hit))) hidden.push(lane.dataset.agent);
  }
  scrollTo(0, 0);
  const wide = [...document.querySelectorAll("body *")]
    .filter((n) => n.getClientRects().length && n.getBoundingClientRect().right > doc.clientWidth + 1)
    .map((n) => `${n.tagName}.${n.className}`);
  return {viewport: innerWidth, overflowX: doc.scrollWidth - doc.clientWidth, scrollers, hidden, wide,
          lanes: [...document.querySelectorAll("#lanes > .lane")].map(box),
          side: box(document.querySelector(".side"))};
}"""


def check_layout(page: Any, shots: Path, name: str) -> dict[int, dict[str, Any]]:
    """At each of ``WIDTHS``: a full-page screenshot under ``shots``, and the layout facts.

    Asserted at every width: nothing wider than the viewport, nothing that scrolls
    but the page itself, every card's first line visible, the top-level cards one
    below the other without a gap bigger than the page's own spacing.
    """
    shots.mkdir(parents=True, exist_ok=True)
    facts: dict[int, dict[str, Any]] = {}
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900})
        page.wait_for_function(f"window.innerWidth === {width}")
        page.screenshot(path=str(shots / f"{name}-{width}.png"), full_page=True)
        seen = page.evaluate(LAYOUT_FACTS)
        assert seen["overflowX"] <= 0, (width, seen["overflowX"], seen["wide"][:5])
        assert seen["wide"] == [], (width, seen["wide"][:5])
        assert seen["scrollers"] == [], (width, seen["scrollers"])
        assert seen["hidden"] == [], (width, "first line not visible", seen["hidden"])
        lanes = seen["lanes"]
        for above, below in itertools.pairwise(lanes):
            assert 0 <= below["top"] - above["bottom"] <= 24, (width, above, below)
        facts[width] = seen
    page.set_viewport_size({"width": 1400, "height": 900})
    return facts
