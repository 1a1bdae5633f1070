"""The operators' pack in ``deploy/``, checked by a real Prometheus.

``promtool`` accepts the scrape configuration and the rules without a warning and their
unit tests pass; the dashboard's queries use only the agreed metric names and parse in
Prometheus; and a Prometheus scraping a real demo server (``kiki-events serve``) after
one run holds the same values as the server's own ``/metrics``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.processes import ServeProcess
from tests.prometheus import PrometheusServer, binary, promtool
from tests.servers import read_stream, wait_for

pytestmark = [pytest.mark.prometheus]

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "alerts.yml"
CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
RULE_TESTS = DEPLOY / "prometheus" / "alerts_test.yml"
DASHBOARD = DEPLOY / "grafana" / "kiki-events.json"

AGREED_METRICS = frozenset(re.findall(r"^\| `(kiki_[a-z_]+)` \|", (ROOT / "docs" / "metrics.md").read_text(), re.M))
"""The metric names of kiki_events (the tables of docs/metrics.md), the only ones the pack may query."""

HISTOGRAMS = frozenset(
    {
        "kiki_llm_request_duration_seconds",
        "kiki_llm_time_to_first_token_seconds",
        "kiki_tool_call_duration_seconds",
        "kiki_agent_run_duration_seconds",
        "kiki_run_duration_seconds",
        "kiki_bridge_delivery_lag_seconds",
    }
)
PROMETHEUS_OWN = frozenset({"up"})
"""Series Prometheus writes itself for every target."""

METRIC_UNDER_TEST = "kiki_events_published_total"
"""The series the scrape test compares between Prometheus and ``/metrics``."""
TOKENS = "kiki_llm_tokens_total"
TOKENS_QUERY = f'sum({TOKENS}{{token_type=~"input|output"}})'
"""Reasoning and cached tokens are parts of output and input tokens: the usage total is input + output."""

_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or"}) | {
    "unless",
    "offset",
    "inf",
    "nan",
}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (label values, label names, functions left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.$:])[A-Za-z_:][\w:]*(?![\w:]|\s*\()", text):
        if match.group().lower() not in _KEYWORDS:
            names.add(match.group())
    return names


def known(name: str, recorded: set[str]) -> bool:
    if name in AGREED_METRICS or name in PROMETHEUS_OWN or name in recorded:
        return True
    base, _, suffix = name.rpartition("_")
    return suffix in {"bucket", "sum", "count"} and base in HISTOGRAMS


def rule_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load(RULES.read_text())["groups"]
    return groups


def recorded_names() -> set[str]:
    return {rule["record"] for group in rule_groups() for rule in group["rules"] if "record" in rule}


def dashboard_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from dashboard_panels(panel.get("panels", []))


def dashboard_exprs() -> list[tuple[str, str]]:
    """(where, PromQL) of every query of the dashboard: panel targets and the variables' queries."""
    board = json.loads(DASHBOARD.read_text())
    exprs = [
        (f"panel {panel['title']!r} {target['refId']}", target["expr"])
        for panel in dashboard_panels(board["panels"])
        for target in panel.get("targets", [])
    ]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            inner = re.fullmatch(r"label_values\((.*),\s*\w+\)", variable["definition"])
            assert inner is not None, variable["definition"]
            exprs.append((f"variable {variable['name']}", inner.group(1)))
    return exprs


def as_promql(expr: str) -> str:
    """A dashboard query with Grafana's variables replaced by values Prometheus accepts."""
    expr = re.sub(r"\$\{?__\w+\}?", "1m", expr)  # $__rate_interval, $__interval, $__range
    return re.sub(r"\$\{?\w+(?::\w+)?\}?", ".*", expr)  # $node, ${node:regex}


def test_the_name_extractor_finds_metric_names_and_nothing_else() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (model, le) (rate(kiki_llm_time_to_first_token_seconds_bucket{node=~"$node",'
        ' model="a b"}[$__rate_interval]))) / on (job) group_left (x) up > bool 1e3 and other_metric offset 5m'
    )
    assert metric_names(expr) == {"kiki_llm_time_to_first_token_seconds_bucket", "up", "other_metric"}
    assert metric_names("sum without (reason) (rate(a:b:c[5m])) * 60 > 1") == {"a:b:c"}
    assert not known("kiki_runs_bucket", set()) and not known("kiki_nonsense_total", set())
    assert known("kiki_run_duration_seconds_bucket", set()) and known("x:y", {"x:y"})


def test_promtool_accepts_the_rules_and_the_scrape_config_without_a_word() -> None:
    for args in (("check", "rules", str(RULES)), ("check", "config", str(CONFIG))):
        result = promtool(*args)
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        assert "SUCCESS" in result.stdout and "warn" not in output.lower() and result.stderr == "", output


def test_the_alert_unit_tests_pass() -> None:
    """alerts_test.yml: each alert fires on an unhealthy synthetic series and stays silent on a healthy one."""
    result = promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr
    tested = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    checks = [check for case in tested for check in case.get("alert_rule_test", [])]
    for alert in ("KikiRunErrorRateHigh", "KikiEventsDropped", "KikiLLMTimeToFirstTokenHigh", "KikiBridgeDown"):
        assert any(c["alertname"] == alert and c["exp_alerts"] for c in checks), f"{alert} is never shown firing"
        assert any(c["alertname"] == alert and not c["exp_alerts"] for c in checks), f"{alert} is never shown silent"


def test_every_alert_has_a_duration_a_severity_and_words_for_the_reader() -> None:
    alerts = [rule for group in rule_groups() for rule in group["rules"] if "alert" in rule]
    assert {a["alert"] for a in alerts} >= {
        "KikiRunErrorRateHigh",
        "KikiLLMErrorRateHigh",
        "KikiLLMTimeToFirstTokenHigh",
        "KikiBridgeDeliveryLagHigh",
        "KikiEventsDropped",
        "KikiBridgeDown",
        "KikiSSESlowClientDisconnects",
    }
    for alert in alerts:
        assert re.fullmatch(r"\d+[smh]", alert.get("for", "")), alert
        assert alert["labels"]["severity"] in {"warning", "critical"}, alert
        assert "{{ $labels." in alert["annotations"]["summary"], alert
        assert "{{ $labels." in alert["annotations"]["description"], alert


def test_rules_and_dashboard_query_only_agreed_metric_names() -> None:
    assert {"kiki_llm_tokens_total", "kiki_runs_total", "kiki_bridge_up"} <= AGREED_METRICS and len(AGREED_METRICS) > 30
    recorded = recorded_names()
    used: dict[str, str] = {}
    for group in rule_groups():
        for rule in group["rules"]:
            used.update(dict.fromkeys(metric_names(rule["expr"]), rule.get("alert") or rule["record"]))
    for where, expr in dashboard_exprs():
        used.update(dict.fromkeys(metric_names(expr), where))
    unknown = {name: where for name, where in used.items() if not known(name, recorded)}
    assert unknown == {}, f"names outside the agreed metric set: {unknown}"
    # Every part of the runtime the operators watch has a panel.
    shown = {name for where, expr in dashboard_exprs() if where.startswith("panel") for name in metric_names(expr)}
    wanted = {
        "kiki_runs_total", "kiki_runs_in_progress", "kiki_llm_time_to_first_token_seconds_bucket",
        "kiki_llm_request_duration_seconds_bucket", "kiki_llm_tokens_total", "kiki_llm_requests_total",
        "kiki_tool_calls_total", "kiki_tool_call_duration_seconds_bucket", "kiki_agent_runs_total",
        "kiki_sse_clients_connected", "kiki_sse_disconnects_total", "kiki_bridge_delivery_lag_seconds_bucket",
        "kiki_bridge_messages_total", "kiki_bridge_reconnects_total", "kiki_events_dropped_total", "kiki_queue_depth",
    }  # fmt: skip
    assert wanted - shown == set()


def test_the_dashboard_is_a_grafana_dashboard_with_datasource_and_node_variables() -> None:
    board = json.loads(DASHBOARD.read_text())
    assert board["schemaVersion"] >= 38
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["node"]["type"] == "query" and variables["node"]["multi"] and variables["node"]["includeAll"]
    panels = list(dashboard_panels(board["panels"]))
    assert len({p["id"] for p in panels}) == len(panels), "panel ids repeat"
    graphs = [p for p in panels if p["type"] != "row"]
    assert len(graphs) >= 15
    for panel in graphs:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert 'node=~"$node"' in target["expr"], f"{panel['title']}: not filtered by the node variable"


@dataclass
class Scraped:
    """A demo server after one run, and a Prometheus scraping it every second."""

    server: ServeProcess
    prometheus: PrometheusServer
    done: dict[str, Any]


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scraped]:
    binary("prometheus")
    directory = tmp_path_factory.mktemp("ops")
    history = str(directory / "history.sqlite")
    env = {"KIKI_DEMO_TOKEN_DELAY": "0", "KIKI__LOGGING__LEVEL": "WARNING", "KIKI_HISTORY_PATH": history}
    server = ServeProcess("demo", ROOT / "config" / "eventbus.yaml", directory / "serve.log", cwd=ROOT, env=env)
    prometheus = PrometheusServer({"demo": f"127.0.0.1:{server.port}"}, directory / "prometheus", rule_files=(RULES,))
    try:
        server.wait_up()
        prometheus.start()
        prometheus.wait_targets_up()
        with httpx.Client(base_url=server.url, timeout=60) as client:
            body = {"graph": "research_team", "message": "Compare Redis streams and pub/sub"}
            frames = read_stream(client, "POST", "/runs/stream", json=body)
        assert frames[-1].event == "done", frames[-1]
        yield Scraped(server, prometheus, frames[-1].json)
    finally:
        prometheus.stop()
        assert "Traceback" not in server.stop()


def own_samples(server: ServeProcess, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """The server's own samples of ``name`` on ``/metrics``, by label set."""
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return {
        frozenset(sample.labels.items()): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


def scraped_samples(prometheus: PrometheusServer, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """Prometheus' latest samples of ``name``, by label set without the labels the scrape adds."""
    added = {"__name__", "job", "instance", "node"}
    return {
        frozenset((k, v) for k, v in series["metric"].items() if k not in added): float(series["value"][1])
        for series in prometheus.query(name)
    }


def scrape_now(scraped: Scraped, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """The server's samples of ``name``, once Prometheus has scraped them (they stay the same meanwhile)."""
    own = own_samples(scraped.server, name)
    scraped.prometheus.wait_scraped_after(time.time())
    assert own_samples(scraped.server, name) == own, f"{name} moved while the node was idle"
    return own


@pytest.mark.slow
def test_prometheus_holds_the_value_the_server_reports(scraped: Scraped) -> None:
    own = scrape_now(scraped, METRIC_UNDER_TEST)
    assert sum(own.values()) > 0, f"{METRIC_UNDER_TEST} after a run: {own}"
    assert scraped_samples(scraped.prometheus, METRIC_UNDER_TEST) == own
    assert scraped.prometheus.value(f"sum({METRIC_UNDER_TEST})") == sum(own.values())


@pytest.mark.slow
def test_prometheus_counts_the_tokens_the_run_reported(scraped: Scraped) -> None:
    expected = scraped.done["usage"]["total_tokens"]
    assert expected > 0, scraped.done
    own = scrape_now(scraped, TOKENS)
    assert sum(v for labels, v in own.items() if dict(labels)["token_type"] in {"input", "output"}) == expected
    assert scraped.prometheus.value(TOKENS_QUERY) == expected


@pytest.mark.slow
def test_promtool_check_metrics_finds_nothing_to_say_about_metrics(scraped: Scraped) -> None:
    text = httpx.get(f"{scraped.server.url}/metrics", timeout=10).text
    assert METRIC_UNDER_TEST in text
    result = promtool("check", "metrics", stdin=text)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@pytest.mark.slow
def test_every_dashboard_query_parses_in_prometheus(scraped: Scraped) -> None:
    errors = {where: scraped.prometheus.query_error(as_promql(expr)) for where, expr in dashboard_exprs()}
    assert {where: error for where, error in errors.items() if error} == {}
    assert scraped.prometheus.query_error("sum(rate(kiki_runs_total[5m]) by") is not None  # a broken one is caught


@pytest.mark.slow
def test_prometheus_loads_and_evaluates_every_rule_on_live_data(scraped: Scraped) -> None:
    expected = {rule.get("alert") or rule["record"] for group in rule_groups() for rule in group["rules"]}

    def evaluated() -> bool:
        groups = scraped.prometheus.api("rules")["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        assert all(rule["health"] != "err" for rule in rules), [r for r in rules if r["health"] == "err"]
        return {rule["name"] for rule in rules if rule["health"] == "ok"} == expected

    wait_for(evaluated, what="prometheus to evaluate every rule")
    # A healthy node after a successful run: no alert even pending.
    assert scraped.prometheus.api("alerts")["alerts"] == []


@pytest.mark.slow
def test_a_node_that_stops_is_seen_down_under_its_node_label(
    tmp_path: Path, prometheus_server: Callable[..., PrometheusServer]
) -> None:
    """What KikiNodeDown and the dashboard's node variable read: ``up{job="kiki_events", node=…}``."""
    env = {"KIKI__LOGGING__LEVEL": "WARNING", "KIKI_HISTORY_PATH": str(tmp_path / "h.sqlite")}
    server = ServeProcess("node-x", ROOT / "config" / "eventbus.yaml", tmp_path / "serve.log", cwd=ROOT, env=env)
    try:
        server.wait_up()
        prometheus = prometheus_server({"node-x": f"127.0.0.1:{server.port}"})
        prometheus.wait_targets_up()
        assert prometheus.value('up{job="kiki_events", node="node-x"}') == 1
    finally:
        assert "Traceback" not in server.stop()
    up = 'up{job="kiki_events", node="node-x"}'
    wait_for(lambda: prometheus.value(up) == 0, what="prometheus to see the node down")
    (target,) = prometheus.targets()
    assert target["health"] == "down" and target["labels"]["node"] == "node-x" and target["lastError"], target
