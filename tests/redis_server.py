"""A private Redis for the tests: our own ``redis-server`` process on a free port.

The machine's shared Redis is never flushed or relied on. With ``REDIS_URL`` set the
tests use that server instead (each test under its own key prefix, deleting only
its own keys). ``RedisServer`` can also be stopped and restarted on the same port,
for outage tests.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from benchmarks._common import start_helper

REQUIRE_ENV = "KIKI_REQUIRE_REDIS"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RedisServer:
    """One ``redis-server`` child process; ``url`` stays the same across restarts."""

    def __init__(self, *, port: int | None = None, appendonly: bool = True) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server is not on PATH")
        self.binary = binary
        self.port = port or free_port()
        self.appendonly = appendonly
        self.dir = Path(tempfile.mkdtemp(prefix="kiki-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--dir", str(self.dir),
            # Durable enough that a restart keeps streams (the streams mode's promise).
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "always",
            "--protected-mode", "no",
        ]  # fmt: skip
        self.process = start_helper(args)  # killed with this process, however it ends
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            time.sleep(0.02)  # polling a port, not timing a test
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout}s")

    def stop(self) -> None:
        """Kill it hard (like a crash); ``start()`` brings it back on the same port."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


async def wait_subscribed(redis: Any, channel: str, listeners: int = 1, timeout: float = 10.0) -> None:
    """Wait until ``listeners`` pub/sub connections listen on ``channel`` (``PUBSUB NUMSUB``)."""
    deadline = time.monotonic() + timeout
    while True:
        counts = await redis.pubsub_numsub(channel)
        if counts and counts[0][1] >= listeners:
            return
        assert time.monotonic() < deadline, f"nobody subscribed to {channel} within {timeout}s"
        await asyncio.sleep(0.01)  # polling Redis for a condition, not timing a test


@pytest.fixture(scope="session")
def redis_url() -> object:
    """URL of a Redis for this test session: ``REDIS_URL``, else a private server."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    if shutil.which("redis-server") is None:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail("redis-server is not on PATH and REDIS_URL is not set")
        pytest.skip("redis-server is not on PATH and REDIS_URL is not set")
    server = RedisServer().start()
    try:
        yield server.url
    finally:
        server.cleanup()


@pytest.fixture
def redis_server() -> object:
    """A private, restartable ``redis-server`` for outage tests (never the shared one)."""
    if shutil.which("redis-server") is None:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail("redis-server is not on PATH")
        pytest.skip("redis-server is not on PATH")
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def key_prefix() -> str:
    """A key/channel prefix of this test alone, so tests never collide on a shared Redis."""
    return f"kiki-test:{uuid.uuid4().hex[:12]}:"
