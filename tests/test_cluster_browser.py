"""Two real nodes and a real browser: a run started on node A's dashboard, watched,
resumed and cancelled on node B's; and the README's two-node demo (the writer on node B)
followed on node B, its cross-node handoff shown in words.

Chromium drives the dashboards of two ``kiki-events serve`` processes sharing a
private Redis (pub/sub mode), as a new user would: run the research team on A,
open B's dashboard on that run (``#run=<id>``), watch it stream there, lose the
connection to B for a moment (a proxy in front of B cuts it) and let the browser
resume by itself with ``Last-Event-ID``, press Cancel on B, and see both pages end
with ``cancelled`` having seen every event once. In the two-node demo, node B's page
names the run's graph (which B does not serve), shows the writer's handoff to node B
(who, where, how it ended, B's own run as a link), the writer's work inside the writer's
card, and follows the link to B's run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.dashboard_pages import check_layout, rendered, wait_until_finished
from tests.tcp_proxy import CuttableProxy
from tests.test_cluster import Cluster, make_cluster  # noqa: F401 - the fixture
from tests.test_cluster_demo import Node, nodes  # noqa: F401 - the fixture
from tests.test_dashboard_browser import browser  # noqa: F401 - the fixture

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.redis]


@pytest.fixture
def pages(browser: Any) -> Iterator[Callable[[], Any]]:  # noqa: F811 - the fixture imported above
    opened: list[Any] = []

    def new_page() -> Any:
        page = browser.new_page()
        page.set_default_timeout(30_000)
        page.problems = []
        page.on("pageerror", lambda exc: page.problems.append(f"page error: {exc}"))
        opened.append(page)
        return page

    yield new_page
    for page in opened:
        page.close()


def test_a_run_started_on_a_is_watched_resumed_and_cancelled_on_b(
    make_cluster: Callable[..., Cluster],  # noqa: F811 - the fixture imported above
    pages: Callable[[], Any],
) -> None:
    cluster = make_cluster("pubsub", token_delay=0.05)
    a, b = cluster.start("node-a", "node-b")

    on_a = pages()
    on_a.goto(f"{a.url}/")
    on_a.wait_for_function("[...document.querySelectorAll('#graph option')].some(o => o.value === 'team')")
    on_a.select_option("#graph", "team")
    on_a.fill("#message", "Compare Redis streams and pub/sub")
    on_a.click("#run")
    on_a.wait_for_function("window.kikiState.runId !== null && window.kikiState.lastSeq > 3")
    run_id = on_a.evaluate("window.kikiState.runId")

    on_b = pages()
    with CuttableProxy(b.port) as to_b:
        on_b.goto(f"{to_b.url}/#run={run_id}")
        on_b.wait_for_function("window.kikiState.lastSeq > 10")  # live on B: tokens from A
        assert to_b.last_event_ids == []
        to_b.cut()  # the connection to B drops mid-run; the browser reconnects to B by itself
        on_b.wait_for_function("window.kikiState.reconnects > 0 && window.kikiState.connection === 'connected'")
        resumed_after = int(to_b.last_event_ids[0].rsplit(":", 1)[1])
        assert to_b.last_event_ids[0] == f"{run_id}:{resumed_after}" and resumed_after > 10
        on_b.wait_for_function(f"window.kikiState.lastSeq > {resumed_after + 5}")  # live again after the resume
        on_b.wait_for_function("!document.querySelector('#cancel').disabled")
        on_b.click("#cancel")

        assert wait_until_finished(on_b) == "cancelled"
    assert wait_until_finished(on_a) == "cancelled"
    seen_on_a = on_a.evaluate("window.kikiState.lastSeq")
    seen_on_b = on_b.evaluate("window.kikiState.lastSeq")
    assert seen_on_a == seen_on_b  # both pages got every event, done included
    assert on_b.text_content("#outcome").startswith("■ Cancelled")
    assert on_b.input_value("#graph") == "team"  # the run's graph, served by B too
    assert on_b.evaluate("window.kikiState.duplicates") == 0
    assert httpx.get(f"{a.url}/runs/{run_id}").json()["status"] == "cancelled"
    assert on_a.problems == [] and on_b.problems == []


def test_the_two_node_demo_followed_on_node_b(
    nodes: tuple[Node, Node],  # noqa: F811 - the fixture imported above
    pages: Callable[[], Any],
    tmp_path: Path,
) -> None:
    a, b = nodes
    body = {"graph": "research_team", "message": "Compare Redis streams and pub/sub"}
    run_id = httpx.post(f"{a.url}/runs", json=body, timeout=10).json()["run_id"]

    on_b = pages()
    on_b.goto(f"{b.url}/#run={run_id}")
    assert wait_until_finished(on_b) == "success"
    # B serves only the writer; the page names the run's graph and says B does not serve it.
    on_b.wait_for_function("[...document.querySelectorAll('#graph option')].some((o) => o.value === 'writer')")
    assert on_b.text_content("#graph-name") == "graph research_team"
    assert on_b.input_value("#graph") == "research_team"
    assert on_b.text_content("#graph option:checked") == "research_team (not served by this node)"

    # The handoff in words, not JSON: who, where, how it ended, and B's own run.
    handoff = on_b.locator('.lane[data-agent="writer"] > .feed > .item.handoff')
    assert handoff.count() == 1
    assert handoff.locator(".item-title").text_content() == "⇄ writer ran on node-b: success"
    sync = on_b.evaluate("window.kikiState.handoffs")
    assert [h["phase"] for h in sync] == ["requested", "completed"]
    child = sync[-1]["run_id"]
    assert handoff.locator("a").get_attribute("href") == f"#run={child}"
    assert "multiagent:sync" not in on_b.text_content("#lanes")
    timeline = rendered(on_b)["timeline"]
    assert any("Handed to agent writer on another node" in row for row in timeline), timeline
    assert any("writer ran on node-b: success" in row for row in timeline), timeline

    # The writer's work on B inside the writer's card, marked with its node.
    view = rendered(on_b)
    assert view["lanes"]["writer/writer"]["parent"] == "writer"
    assert view["lanes"]["writer/writer"]["node"] == "on node-b"
    assert view["lanes"]["writer"]["node"] is None
    assert on_b.evaluate("window.kikiState.agents['writer/writer'].text").startswith("Here is what the team found")
    check_layout(on_b, tmp_path / "shots", "two-nodes-on-b")

    # The link follows B's own run of the writer, a graph B serves.
    handoff.locator("a").click()
    on_b.wait_for_function(f"window.kikiState.runId === {child!r}")
    assert wait_until_finished(on_b) == "success"
    assert on_b.input_value("#graph") == "writer"
    assert on_b.locator("#graph option[data-foreign]").count() == 0
    assert on_b.evaluate("window.kikiState.agents.writer.text").startswith("Here is what the team found")
    assert on_b.problems == []
