"""The ``ag-ui-langgraph`` peer of ``benchmarks/formats.py``, in a virtualenv of its own.

The package is installed with pip from PyPI into a separate virtualenv, never into the
project's ``.venv`` (its dependencies would then be the project's to keep):

* where: ``--peer-env DIR`` (used as it is when it already holds the version asked
  for), else ``$KIKI_BENCH_CACHE`` or ``~/.cache/kiki-events-bench``, in
  ``ag-ui-langgraph-<version>-py<X.Y>-<hash>``; ``<hash>`` covers the version and the
  constraints below, so a change of either makes a new environment and a ready one is
  reused (a file ``kiki-peer.json`` in it says what was installed);
* how: ``python -m venv`` with the interpreter the project's ``.venv`` was made from, then
  ``pip install "ag-ui-langgraph[fastapi]==<version>" "uvicorn[standard]"`` constrained
  to the exact versions of every distribution installed beside this process (LangGraph,
  LangChain, FastAPI, Starlette, uvicorn, pydantic, ag-ui-protocol …), so both servers
  run the same libraries and only the streaming code differs. When the peer's own pins
  rule that out, it is installed without the constraints and the versions that then
  differ are reported with the figures.

Only the standard library is imported here.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

PEER_VERSION = "0.0.47"
"""The ``ag-ui-langgraph`` release measured unless ``--peer-version`` says otherwise."""
PEER_REQUIREMENTS = ("ag-ui-langgraph[fastapi]=={version}", "uvicorn[standard]")
_MARKER = "kiki-peer.json"
_OURSELVES = {"kiki-events", "kiki_events"}
COMPARED = ("langgraph", "langchain-core", "langgraph-checkpoint", "fastapi", "starlette", "uvicorn", "pydantic",
            "pydantic-core", "uvloop", "httptools", "orjson", "ag-ui-protocol")  # fmt: skip
"""Distributions whose versions both servers report (they must match for a fair comparison)."""


class PeerUnavailable(RuntimeError):
    """``ag-ui-langgraph`` could not be installed (the message says why, with pip's last lines)."""


@dataclass(frozen=True)
class PeerEnv:
    """A ready virtualenv holding ``ag-ui-langgraph``."""

    path: Path
    version: str
    constrained: bool
    """Installed with every shared distribution pinned to this process's version."""

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"


def installed_versions() -> dict[str, str]:
    """Name (lowercase, ``-`` for ``_``) → version of every distribution this process sees."""
    versions: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            versions.setdefault(name.lower().replace("_", "-"), dist.version)
    return versions


def constraints() -> str:
    """One ``name==version`` line per distribution beside this process (the project itself left out)."""
    lines = [f"{name}=={version}" for name, version in sorted(installed_versions().items()) if name not in _OURSELVES]
    return "\n".join(lines) + "\n"


def default_root() -> Path:
    base = os.environ.get("KIKI_BENCH_CACHE") or Path.home() / ".cache" / "kiki-events-bench"
    return Path(base)


def base_python() -> str:
    """The interpreter the current virtualenv was made from (the same Python, without its packages)."""
    return getattr(sys, "_base_executable", None) or sys.executable


def ensure_peer(version: str = PEER_VERSION, env_dir: Path | None = None, *, log: Path | None = None) -> PeerEnv:
    """A virtualenv with ``ag-ui-langgraph==version`` (made and installed if needed; see the module docstring).

    Raises:
        PeerUnavailable: the virtualenv cannot be made or the package cannot be installed.
    """
    pinned = constraints()
    if env_dir is None:
        digest = hashlib.sha256(f"{version}\n{pinned}".encode()).hexdigest()[:12]
        py = f"{sys.version_info.major}.{sys.version_info.minor}"
        env_dir = default_root() / f"ag-ui-langgraph-{version}-py{py}-{digest}"
    try:
        env_dir.parent.mkdir(parents=True, exist_ok=True)
        lock = open(env_dir.parent / f".{env_dir.name}.lock", "w")  # noqa: SIM115
    except OSError as exc:
        raise PeerUnavailable(f"cannot make the virtualenv {env_dir}: {exc}") from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one installer at a time per environment
        ready = _ready(env_dir, version)
        if ready is not None:
            return ready
        return _install(env_dir, version, pinned, log or env_dir.parent / f"{env_dir.name}.log")


def _ready(env_dir: Path, version: str) -> PeerEnv | None:
    """The environment at ``env_dir`` if it holds ``ag-ui-langgraph==version`` (one made here, or any other)."""
    python = env_dir / "bin" / "python"
    if not python.exists():
        return None
    marker = env_dir / _MARKER
    if marker.is_file():
        facts = json.loads(marker.read_text())
        if facts.get("version") == version:
            return PeerEnv(env_dir, version, bool(facts.get("constrained")))
        return None
    check = "import importlib.metadata as m, sys; sys.exit(m.version('ag-ui-langgraph') != sys.argv[1])"
    found = subprocess.run([str(python), "-c", check, version], capture_output=True, check=False)
    return PeerEnv(env_dir, version, constrained=False) if found.returncode == 0 else None


def _install(env_dir: Path, version: str, pinned: str, log: Path) -> PeerEnv:
    started = time.monotonic()
    with open(log, "w") as out:
        _run([base_python(), "-m", "venv", str(env_dir)], out, "make the virtualenv", log)
        pip = [str(env_dir / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check",
               "--no-input", "--timeout", "60", "--retries", "1"]  # fmt: skip
        wanted = [requirement.format(version=version) for requirement in PEER_REQUIREMENTS]
        pins = env_dir / "constraints.txt"
        pins.write_text(pinned)
        constrained = _try([*pip, "-c", str(pins), *wanted], out)
        if not constrained:
            out.write("\n-- the peer's pins conflict with ours: installing it without constraints --\n")
            out.flush()
            _run([*pip, *wanted], out, f"pip install ag-ui-langgraph=={version}", log)
    facts = {"version": version, "constrained": constrained, "seconds": round(time.monotonic() - started, 1)}
    (env_dir / _MARKER).write_text(json.dumps(facts) + "\n")
    return PeerEnv(env_dir, version, constrained)


def _try(command: list[str], out: object) -> bool:
    return subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=False).returncode == 0  # type: ignore[call-overload]


def _run(command: list[str], out: object, what: str, log: Path) -> None:
    if not _try(command, out):
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise PeerUnavailable(f"could not {what} (log: {log}):\n{tail}")


def peer_versions(peer: PeerEnv) -> dict[str, str]:
    """Versions of :data:`COMPARED` (and the peer) in the peer's virtualenv."""
    names = [*COMPARED, "ag-ui-langgraph"]
    code = (
        "import importlib.metadata as m, json, sys\n"
        "def v(n):\n"
        "    try: return m.version(n)\n"
        "    except m.PackageNotFoundError: return None\n"
        "print(json.dumps({n: v(n) for n in sys.argv[1:]}))\n"
    )
    result = subprocess.run([str(peer.python), "-c", code, *names], capture_output=True, text=True, check=True)
    return {name: found for name, found in json.loads(result.stdout).items() if found is not None}


if __name__ == "__main__":  # python benchmarks/_agui_peer.py [VERSION]: make the environment, print where it is
    print(ensure_peer(sys.argv[1] if len(sys.argv) > 1 else PEER_VERSION).python)
