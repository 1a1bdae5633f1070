"""A real Prometheus for the tests: ``promtool``, and a ``prometheus`` server scraping our servers.

Both come from the ``prometheus`` package (Debian/Ubuntu: ``apt-get install prometheus``).
Without them the tests that need them skip, naming what is missing, unless
``KIKI_REQUIRE_PROMETHEUS=1`` (as in CI), where a missing binary fails the test.

:class:`PrometheusServer` runs ``prometheus`` on a free port of 127.0.0.1 with its data in a
directory of the test's, scraping the given targets every second; it dies with the tests.
Tests wait for conditions through its HTTP API (:meth:`PrometheusServer.wait_targets_up`,
:meth:`PrometheusServer.wait_scraped_after`), never for a time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.processes import dying_with_us
from tests.redis_server import free_port
from tests.servers import DEFAULT_TIMEOUT, wait_for

__all__ = ["REQUIRE_ENV", "PrometheusServer", "binary", "prometheus_server", "promtool"]

REQUIRE_ENV = "KIKI_REQUIRE_PROMETHEUS"
JOB = "kiki_events"


def binary(name: str) -> str:
    """The path of ``name`` (``prometheus`` or ``promtool``); skips the test without it (fails in CI)."""
    path = shutil.which(name)
    if path is None:
        reason = f"{name} is not on PATH (apt-get install prometheus)"
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 but {reason}")
        pytest.skip(reason)
    return path


def promtool(*args: str, stdin: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``promtool args…`` to its end (output captured, never raising on its exit code)."""
    command = dying_with_us([binary("promtool"), *args])
    return subprocess.run(command, input=stdin, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


class PrometheusServer:
    """One ``prometheus`` process on a free port, scraping ``targets`` (node name → ``host:port``).

    Args:
        targets: the nodes to scrape, each target labelled ``node=<name>`` (job ``kiki_events``).
        directory: its configuration, data and log go here (a ``tmp_path``).
        scrape_interval: how often it scrapes (and evaluates rules).
        rule_files: rule files to load (absolute paths).
    """

    def __init__(
        self,
        targets: Mapping[str, str],
        directory: Path,
        *,
        scrape_interval: str = "1s",
        rule_files: tuple[Path, ...] = (),
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.directory = directory
        self.log = directory / "prometheus.log"
        self.config = directory / "prometheus.yml"
        config = {
            "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
            "rule_files": [str(path) for path in rule_files],
            "scrape_configs": [
                {
                    "job_name": JOB,
                    "metrics_path": "/metrics",
                    "static_configs": [
                        {"targets": [address], "labels": {"node": node}} for node, address in targets.items()
                    ],
                }
            ],
        }
        directory.mkdir(parents=True, exist_ok=True)
        self.config.write_text(yaml.safe_dump(config, sort_keys=False))
        self.process: subprocess.Popen[bytes] | None = None
        self._log_file = self.log.open("wb")

    def start(self, timeout: float = DEFAULT_TIMEOUT) -> PrometheusServer:
        command = [
            binary("prometheus"),
            f"--config.file={self.config}",
            f"--storage.tsdb.path={self.directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]
        self.process = subprocess.Popen(dying_with_us(command), stdout=self._log_file, stderr=subprocess.STDOUT)
        wait_for(self._ready, timeout, "prometheus to be ready")
        return self

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"prometheus exited with {self.process.returncode}:\n{self.log.read_text()}")
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    def api(self, path: str, **params: str) -> Any:
        """``GET /api/v1/<path>``'s ``data``; fails the test on an API error."""
        body = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10).json()
        assert body["status"] == "success", body
        return body["data"]

    def query_error(self, expr: str) -> str | None:
        """The error Prometheus reports for the instant query ``expr`` (a parse error …), or ``None``."""
        body = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10).json()
        if body["status"] == "success":
            return None
        return f"{body.get('errorType')}: {body.get('error')}"

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector ``expr`` evaluates to now."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        result: list[dict[str, Any]] = data["result"]
        return result

    def value(self, expr: str) -> float:
        """The one value of ``expr`` (which must return exactly one series)."""
        result = self.query(expr)
        assert len(result) == 1, f"{expr} returned {len(result)} series: {result}"
        return float(result[0]["value"][1])

    def targets(self) -> list[dict[str, Any]]:
        active: list[dict[str, Any]] = self.api("targets", state="active")["activeTargets"]
        return active

    def wait_targets_up(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Wait until every target was scraped successfully."""

        def up() -> bool:
            targets = self.targets()
            return bool(targets) and all(t["health"] == "up" for t in targets)

        wait_for(up, timeout, f"prometheus to scrape its targets ({self.log})")

    def wait_scraped_after(self, moment: float, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Wait until every target's latest scrape began after ``moment`` (a ``time.time()``)."""

        def scraped() -> bool:
            samples = self.query(f'timestamp(up{{job="{JOB}"}})')
            return bool(samples) and all(float(s["value"][1]) > moment for s in samples)

        wait_for(scraped, timeout, "a scrape after the moment given")

    def stop(self) -> str:
        """Stop it (SIGTERM, a kill after 20 s); returns its log."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log_file.close()
        return self.log.read_text()


@pytest.fixture
def prometheus_server(tmp_path: Path) -> Iterator[Callable[..., PrometheusServer]]:
    """Starts a :class:`PrometheusServer` (same arguments, ``directory`` optional); all stop with the test."""
    started: list[PrometheusServer] = []

    def start(targets: Mapping[str, str], directory: Path | None = None, **options: Any) -> PrometheusServer:
        server = PrometheusServer(targets, directory or tmp_path / f"prometheus-{len(started)}", **options)
        started.append(server)
        return server.start()

    binary("prometheus")
    try:
        yield start
    finally:
        for server in started:
            server.stop()
