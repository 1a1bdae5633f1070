"""Node harnesses under tests/js/<name>: a package.json and package-lock.json each, installed on first use.

:func:`install` runs ``npm ci`` in a harness when its ``node_modules`` misses a version
package.json pins (a changed pin reinstalls), one test process at a time. Without Node,
npm or the registry the tests that need it skip, unless ``KIKI_REQUIRE_NODE=1`` (as in
CI), where that fails them.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import pytest

__all__ = ["JS", "REQUIRE_ENV", "install", "unavailable"]

JS = Path(__file__).resolve().parent / "js"
REQUIRE_ENV = "KIKI_REQUIRE_NODE"


def unavailable(reason: str) -> NoReturn:
    """Skip, or fail with ``KIKI_REQUIRE_NODE=1``."""
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1)")
    pytest.skip(reason)


def _installed(harness: Path, also: Callable[[Path], bool]) -> bool:
    pins = json.loads((harness / "package.json").read_text())["dependencies"]
    for alias, spec in pins.items():
        manifest = harness / "node_modules" / alias / "package.json"
        if not manifest.is_file() or json.loads(manifest.read_text())["version"] != spec.rpartition("@")[2]:
            return False
    return also(harness)


def install(name: str, *, also: Callable[[Path], bool] = lambda harness: True) -> tuple[str, Path]:
    """The machine's ``node`` and the harness folder ``tests/js/<name>``, its pins installed.

    ``also`` checks what else an install must leave behind (e.g. a binary a package's
    install script fetches).
    """
    harness = JS / name
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        unavailable(f"node and npm are needed to run the clients of tests/js/{name}")
    with (harness / ".install.lock").open("w") as lock:  # one install at a time (parallel test processes)
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _installed(harness, also):
            try:
                done = subprocess.run(
                    [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                    cwd=harness,
                    capture_output=True,
                    text=True,
                    timeout=600,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                unavailable(f"npm ci in tests/js/{name} timed out (is the registry reachable?)")
            if done.returncode != 0 or not _installed(harness, also):
                unavailable(f"npm ci in tests/js/{name} failed: {(done.stderr or done.stdout).strip()[-800:]}")
    return node, harness
