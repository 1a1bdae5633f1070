"""The Vercel AI SDK's own client under Node, for tests: ``ai`` 6 and ``ai`` 7 from tests/js/aisdk.

tests/js/aisdk holds a package.json and package-lock.json pinning ``ai`` 6 (as ``ai``),
``ai`` 7 (as ``ai7``) and a Node 22 binary from the npm registry's ``node`` package (as
``node22``: its install script fetches the platform's ``node-<os>-<arch>`` package into
its own folder and links ``node22/bin/node``), since ``ai`` 7 needs Node 22 and ``ai`` 6
runs on the machine's Node. :func:`harness` runs ``npm ci`` there when ``node_modules`` is
missing or out of date. Without Node, npm or the registry the tests skip, unless
``KIKI_REQUIRE_NODE=1`` (as in CI), where that fails them.

:class:`AIClient` runs ``client.mjs`` (see its header) in one Node process: commands go
in as JSON lines, chunk reports and results come back as JSON lines, read by a thread.
"""

from __future__ import annotations

import json
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.node_harness import JS, install
from tests.processes import dying_with_us
from tests.servers import DEFAULT_TIMEOUT, wait_for

__all__ = ["HARNESS", "AIClient", "Client", "harness"]

HARNESS = JS / "aisdk"


@dataclass(frozen=True)
class Client:
    """One version of the AI SDK's client: the module name in the harness and the Node that runs it."""

    major: int
    module: str
    node: str


def _node22(harness: Path) -> bool:
    return (harness / "node_modules" / "node22" / "bin" / "node").is_file()


def harness() -> dict[int, Client]:
    """The installed clients by major version (``npm ci`` first when needed)."""
    node, folder = install("aisdk", also=_node22)
    node22 = str(folder / "node_modules" / "node22" / "bin" / "node")
    return {6: Client(6, "ai", node), 7: Client(7, "ai7", node22)}


class AIClient:
    """A running ``client.mjs`` for one client version, talking to ``api`` with a bearer ``token``."""

    def __init__(self, client: Client, api: str, token: str) -> None:
        command = dying_with_us([client.node, "client.mjs", client.module, api, token])
        self.process = subprocess.Popen(
            command,
            cwd=HARNESS,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._lock = threading.Lock()
        self._lines: list[dict[str, Any]] = []
        self._stderr: list[str] = []
        self._readers = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        hello = self.result_line("hello")
        self.versions = (hello["ai"], hello["node"])
        """The ``ai`` and Node versions the client runs."""
        if int(hello["ai"].split(".")[0]) != client.major:
            self.close()
            raise AssertionError(f"expected ai {client.major}, the harness runs {hello}")

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._lock:
                self._lines.append(json.loads(line))

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self._stderr.append(line)

    def __enter__(self) -> AIClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, tag: str, op: str, **fields: Any) -> None:
        """Start a command (see client.mjs); its lines carry ``tag``."""
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"tag": tag, "op": op, **fields}) + "\n")
        self.process.stdin.flush()

    def _of(self, tag: str) -> list[dict[str, Any]]:
        with self._lock:
            return [line for line in self._lines if line["tag"] == tag]

    def chunks(self, tag: str) -> list[dict[str, Any]]:
        """The chunks the client accepted so far for ``tag``."""
        return [line for line in self._of(tag) if "chunk" in line]

    def wait_chunk(self, tag: str, kind: str, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
        """The first chunk of type ``kind`` the client accepted for ``tag`` (waits for it)."""
        wait_for(lambda: self._first(tag, kind) or self.process.poll() is not None, timeout, f"a {kind} chunk")
        found = self._first(tag, kind)
        assert found is not None, self._failure()
        return found

    def _first(self, tag: str, kind: str) -> dict[str, Any] | None:
        return next((line for line in self.chunks(tag) if line["chunk"] == kind), None)

    def result(self, tag: str, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
        """The result of command ``tag`` (waits for it)."""
        result: dict[str, Any] = self.result_line(tag, timeout)["result"]
        return result

    def result_line(self, tag: str, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
        """The last line of ``tag`` (a result, or the first line ``hello``), waited for."""

        def found() -> dict[str, Any] | None:
            return next((line for line in self._of(tag) if "chunk" not in line), None)

        wait_for(lambda: found() is not None or self.process.poll() is not None, timeout, f"the result of {tag}")
        line = found()
        assert line is not None, self._failure()
        return line

    def _failure(self) -> str:
        return f"the client exited with {self.process.poll()}: {''.join(self._stderr)[-2000:]}"

    def close(self) -> None:
        if self.process.stdin is not None and not self.process.stdin.closed:
            self.process.stdin.close()
        try:
            self.process.wait(DEFAULT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(DEFAULT_TIMEOUT)
        for reader in self._readers:
            reader.join(DEFAULT_TIMEOUT)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()
