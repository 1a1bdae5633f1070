"""Processes the tests start die with the test run, however it ends.

``dying_with_us(command)`` prefixes a command with ``setpriv --pdeathsig KILL`` (util-linux,
Linux) so the kernel kills the process when the test process dies — even by SIGKILL,
when no ``finally`` runs. ``setpriv`` execs the command, so the pid, signals and exit
code stay the command's own. Without ``setpriv`` the command is returned as it is and
the fixtures' ``finally`` blocks are what stop it (``conftest.py`` fails a run that
leaves a process behind either way).
"""

from __future__ import annotations

import shutil
import sys

__all__ = ["dying_with_us"]

_SETPRIV = shutil.which("setpriv") if sys.platform.startswith("linux") else None


def dying_with_us(command: list[str]) -> list[str]:
    """``command``, made to die with this process (see the module docstring)."""
    if _SETPRIV is None:
        return command
    return [_SETPRIV, "--pdeathsig", "KILL", "--", *command]
