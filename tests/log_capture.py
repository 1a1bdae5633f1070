"""No secret in any log line of the test run.

``conftest.py`` installs one :class:`SecretScan` handler on the root logger for the
whole session: every record of every logger that reaches the root (``kiki_events``
from INFO up, everything else at its own level) is formatted with its traceback and
stack, and searched for the fake credentials the tests use (:data:`SECRETS`; a test
that plants a new one adds it here). At the end of the session :func:`report`
plants a credential through a logger of the package (it must arrive masked) and
one through a foreign logger (it must be found), then fails the run if any line of
the tests held a secret, naming the lines. Memory stays bounded: lines are scanned
as they come, and only the first offenders are kept. The output of every
``kiki-events serve`` process a test started (``tests/processes.py``) is scanned too.
"""

from __future__ import annotations

import logging
import threading

import pytest

from kiki_events.log import get_logger

__all__ = ["SECRETS", "SecretScan", "find_secrets", "install", "report", "scan_output"]

SECRETS = (
    "hunter2",  # the Redis password of most tests (URLs, password=, error messages)
    "s3cret",  # s3cret-pw, hunter2-s3cret: Redis passwords of the CLI and config tests
    "s3cr3t-redis-pw",
    "alice-secret-token-0123456789",  # bearer tokens of the cluster tests
    "bob-secret-token-9876543210",
    "alice-token-0123456789",  # bearer tokens of the transport contract
    "bob-token-0123456789ab",
    "fuzz-token",
    "sk-proj-AbCdEfGh12345678",  # API keys of the redaction and config tests
    "sk-ant-api03-abcdefghijkl_MNOP",
    "sk-lf-1234abcd-5678-90ef",
    "sk-lf-topsecret",
    "sk-lf-abcdef123456",
)
"""Fake credentials the tests use; none may appear in any log line."""

_KEEP = 50
_CANARY = "hunter2-canary"
_active: list[SecretScan] = []


def find_secrets(text: str, secrets: tuple[str, ...] = SECRETS) -> list[str]:
    """The secrets of ``secrets`` that ``text`` contains."""
    return [secret for secret in secrets if secret in text]


class SecretScan(logging.Handler):
    """Scans every record it is given for :data:`SECRETS`; keeps a count and the first offenders."""

    def __init__(self, secrets: tuple[str, ...] = SECRETS) -> None:
        super().__init__(logging.NOTSET)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.secrets = secrets
        self.records = 0
        self.offending = 0
        self.offenders: list[str] = []
        self._lock_offenders = threading.Lock()

    def scan(self, text: str) -> None:
        """Count one line (or record) of log text; keep it if it holds a secret."""
        found = find_secrets(text, self.secrets)
        with self._lock_offenders:
            self.records += 1
            if found:
                self.offending += 1
                if len(self.offenders) < _KEEP:
                    self.offenders.append(f"{', '.join(found)} in: {text[:2000]}")

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception as exc:  # a record that cannot be formatted is scanned as raw as it comes
            text = f"{record.name}: {record.msg!r} {record.args!r} (unformattable: {exc!r})"
        if record.stack_info and record.stack_info not in text:
            text += "\n" + record.stack_info
        self.scan(text)


def scan_output(source: str, text: str) -> None:
    """Scan the output of a process a test started (e.g. a ``kiki-events serve``), line by line."""
    for scan in _active:
        for line in text.splitlines():
            scan.scan(f"[{source}] {line}")


def install() -> SecretScan:
    """Put a :class:`SecretScan` on the root logger and let INFO records of the package reach it."""
    scan = SecretScan()
    _active[:] = [scan]
    logging.getLogger().addHandler(scan)
    package = logging.getLogger("kiki_events")
    if package.level == logging.NOTSET or package.level > logging.INFO:
        package.setLevel(logging.INFO)
    return scan


def _self_check(scan: SecretScan) -> list[str]:
    """Plant a credential both ways; what is wrong with the scan itself (empty: nothing)."""
    problems: list[str] = []
    if scan not in logging.getLogger().handlers:
        return ["the secret scan is no longer a handler of the root logger"]
    before = (scan.records, scan.offending)
    get_logger("kiki_events.tests").warning("connecting to redis://:%s@127.0.0.1:1/0", _CANARY)
    if scan.records <= before[0]:
        problems.append("a warning of kiki_events did not reach the secret scan")
    elif scan.offending != before[1]:
        problems.append("a credential logged through kiki_events reached the handlers unmasked")
    foreign = logging.getLogger("tests.planted")
    foreign.warning("Authorization: Bearer %s", SECRETS[3])
    if scan.offending != before[1] + 1:
        problems.append("the secret scan did not find a credential planted through a foreign logger")
    else:  # the planted line is the scan's own test, not an offence of the suite
        scan.offending -= 1
        if scan.offenders and SECRETS[3] in scan.offenders[-1] and "tests.planted" in scan.offenders[-1]:
            scan.offenders.pop()
    return problems


def report(session: pytest.Session, scan: SecretScan) -> None:
    """Fail the run if a log line held a secret, or if the scan could not have seen one."""
    problems = _self_check(scan)
    writer = session.config.get_terminal_writer()
    if scan.offending:
        listing = "\n".join(f"  {line}" for line in scan.offenders)
        more = scan.offending - len(scan.offenders)
        problems.append(
            f"{scan.offending} log line(s) of the tests held a secret:\n{listing}"
            + (f"\n  … and {more} more" if more > 0 else "")
        )
    if problems:
        writer.line("\nsecret scan of the log: " + "\n".join(problems), red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    else:
        writer.line(f"secret scan of the log: {scan.records} record(s), no secret")
