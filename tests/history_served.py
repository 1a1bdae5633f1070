"""A real server keeping its history (SQLite in the test's folder, or PostgreSQL), with runs of the demo team.

Two principals call it with bearer tokens: alice (several runs on two threads, one
with a failing tool, one crashing) and bob (one run).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import httpx

from kiki_events.config import Settings
from kiki_events.history import ANYONE, EventStore
from kiki_events.server import bearer_tokens, create_app
from kiki_events.sinks.history import HistorySink
from tests.servers import LiveServer, live_server, wait_for

__all__ = ["ALICE", "BOB", "Served", "served_history"]

ALICE = {"Authorization": "Bearer alice-token"}
BOB = {"Authorization": "Bearer bob-token"}

# (principal's headers, thread, message): alice's runs, then bob's.
RUNS: tuple[tuple[dict[str, str], str, str], ...] = (
    (ALICE, "t-a1", "Compare Redis streams and pub/sub"),
    (ALICE, "t-a1", "Now compare Kafka and NATS"),
    (ALICE, "t-a2", "Research event stores, fail"),
    (ALICE, "t-a2", "Research SQLite WAL mode"),
    (ALICE, "t-a2", "Research PostgreSQL advisory locks, crash"),
    (BOB, "t-b1", "Research bob's private topic"),
)


@dataclass
class Served:
    server: LiveServer
    http: httpx.Client
    runs: dict[str, str] = field(default_factory=dict)
    """run id → principal."""

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def history(self) -> EventStore | None:
        runtime = self.server.config.app.state.kiki_runtime  # type: ignore[union-attr]
        history: EventStore | None = runtime.history
        return history

    def get(self, path: str, who: dict[str, str] = ALICE, **params: Any) -> httpx.Response:
        return self.http.get(path, headers=who, params=params)

    def ok(self, path: str, who: dict[str, str] = ALICE, **params: Any) -> Any:
        response = self.get(path, who, **params)
        assert response.status_code == 200, response.text
        return response.json()

    def alice_runs(self) -> list[str]:
        return [run_id for run_id, who in self.runs.items() if who == "alice"]

    def stored(self, call: Any) -> Any:
        """The result of a store query (as ANYONE) made on the server's loop."""
        store = self.history
        assert store is not None
        return self.server.call(lambda: call(store, ANYONE))

    def flush(self) -> None:
        runtime = self.server.config.app.state.kiki_runtime  # type: ignore[union-attr]
        sinks = [s for s in runtime.sinks.sinks if isinstance(s, HistorySink)]
        for sink in sinks:
            assert self.server.call(lambda s=sink: s.writer.flush(20))


def start_runs(served: Served) -> None:
    for who, thread, message in RUNS:
        body = {"graph": "team", "thread_id": thread, "message": message}
        response = served.http.post("/runs", headers=who, json=body)
        assert response.status_code == 202, response.text
        run_id = response.json()["run_id"]
        served.runs[run_id] = "alice" if who is ALICE else "bob"
        wait_for(
            lambda run_id=run_id, who=who: (
                served.get(f"/runs/{run_id}", who).json()["status"] not in ("pending", "running")
            ),
            what=f"run {run_id} to end",
        )
    served.flush()


@contextmanager
def served_history(research_team: ModuleType, store: dict[str, Any] | None) -> Iterator[Served]:
    """A server of the demo team with ``store`` settings (``None``: the store off), after its runs."""
    options: dict[str, Any] = {"runs": {"replay_ttl": "1h"}}
    if store is not None:
        options["store"] = {"enabled": True, "flush_interval": "2ms", **store}
    auth = bearer_tokens({"alice-token": "alice", "bob-token": "bob"})
    app = create_app(
        Settings.from_mapping(options), graphs={"team": research_team.build_graph(token_delay=0.0)}, auth=auth
    )
    with live_server(app) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        served = Served(server, http)
        start_runs(served)
        yield served
