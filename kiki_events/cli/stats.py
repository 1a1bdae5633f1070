"""``kiki-events stats``: figures over the runs in the event store, as a table or JSON.

It reads the database the ``store`` section of the configuration names (SQLite file
or PostgreSQL), as an operator: every principal's runs (``--owner P`` keeps one's).
Times are Unix seconds, ISO 8601 (UTC unless it says otherwise) or a span before now
(``90m``, ``24h``, ``7d``, ``2w``). ``docs/history.md`` ("Statistics") explains the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING

from .common import DEFAULT_CONFIG, config_file, fail

if TYPE_CHECKING:
    from ..history import Stats, StatsGroup

__all__ = ["add_stats_parser", "format_stats", "parse_time", "stats_command"]

_SPAN = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([smhdw])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_STATUS_SHORT = {"success": "ok", "error": "err", "interrupted": "int", "cancelled": "cxl", "running": "run"}


def parse_time(value: str, now: float | None = None) -> float:
    """``value`` as Unix time: seconds, ISO 8601, or ``<n><s|m|h|d|w>`` before ``now``."""
    text = value.strip()
    span = _SPAN.match(text)
    if span:
        return (time.time() if now is None else now) - float(span.group(1)) * _SECONDS[span.group(2)]
    try:
        return float(text) if re.fullmatch(r"[0-9]+(?:\.[0-9]+)?", text) else _iso(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected Unix seconds, an ISO 8601 time or a span such as 24h or 7d, got {value!r}"
        ) from None


def _iso(text: str) -> float:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def add_stats_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``stats`` command's arguments."""
    from ..history import STATS_KEYS

    stats = commands.add_parser("stats", help="figures over the runs in the event store (store section)")
    stats.add_argument("--config", type=Path, help=f"YAML settings with a store section (default: {DEFAULT_CONFIG})")
    stats.add_argument("--by", choices=STATS_KEYS, help="group by this key (default: the total only)")
    stats.add_argument("--since", type=parse_time, metavar="TIME", help="runs started at or after TIME")
    stats.add_argument("--until", type=parse_time, metavar="TIME", help="runs started before TIME")
    stats.add_argument("--graph", help="runs of this graph")
    stats.add_argument("--agent", help="runs this agent (or one below it) took part in")
    stats.add_argument("--thread", metavar="ID", help="runs of this thread")
    stats.add_argument("--status", metavar="S[,S]", help="runs with this status (comma-separated for several)")
    stats.add_argument("--owner", metavar="PRINCIPAL", help="runs this principal started (default: anyone's)")
    stats.add_argument("--limit", type=int, default=100, help="most groups (default: 100)")
    stats.add_argument("--json", action="store_true", help="print the figures as JSON")


def stats_command(args: argparse.Namespace) -> int:
    """Run ``kiki-events stats``; returns the exit code (2: bad settings or arguments, 1: the store failed)."""
    from ..config import load_settings
    from ..errors import ConfigError, InvalidArgumentError, KikiEventsError

    try:
        settings = load_settings(config_file(args.config))
        if settings.store.backend == "sqlite" and not Path(settings.store.path).is_file():
            raise InvalidArgumentError(f"no event store at {settings.store.path!r} (store.path)")
        found = asyncio.run(_stats(settings.store, args))
    except (ConfigError, InvalidArgumentError) as exc:
        return fail(str(exc))
    except KikiEventsError as exc:
        print(f"kiki-events: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(found.model_dump_json(indent=2))
    else:
        format_stats(found, sys.stdout)
    return 0


async def _stats(settings: object, args: argparse.Namespace) -> Stats:
    from ..config import StoreSettings
    from ..history import ANYONE, create_store, parse_statuses

    assert isinstance(settings, StoreSettings)
    store = create_store(settings)
    await store.open()
    try:
        return await store.stats(
            ANYONE,
            by=args.by,
            since=args.since,
            until=args.until,
            graph=args.graph,
            agent=args.agent,
            thread_id=args.thread,
            status=parse_statuses(args.status),
            owner=ANYONE if args.owner is None else args.owner,
            limit=args.limit,
        )
    finally:
        await store.close()


_HEAD = ("runs", "statuses", "dur mean", "dur p95", "dur max", "llm", "tokens in", "out", "total",
         "ttft mean", "ttft p95", "tools", "failed", "cost $", "unpriced")  # fmt: skip


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}s"


def _row(group: StatsGroup) -> list[str]:
    statuses = " ".join(f"{count} {_STATUS_SHORT[name]}" for name, count in group.statuses if count) or "-"
    unpriced = group.cost.unpriced_calls
    return [
        str(group.runs),
        statuses,
        _seconds(group.duration_s.mean),
        _seconds(group.duration_s.p95),
        _seconds(group.duration_s.max),
        str(group.llm_calls),
        str(group.tokens.input_tokens),
        str(group.tokens.output_tokens),
        str(group.tokens.total_tokens),
        _seconds(group.ttft_s.mean),
        _seconds(group.ttft_s.p95),
        "-" if group.tool_calls is None else str(group.tool_calls),
        "-" if group.tool_errors is None else str(group.tool_errors),
        f"{group.cost.usd:.6f}",
        f"{unpriced} calls, {group.cost.unpriced_tokens} tokens" if unpriced else "-",
    ]


def format_stats(stats: Stats, out: IO[str]) -> None:
    """``stats`` as an aligned table: a line per group, then the total."""
    head = [stats.by or "", *_HEAD]
    lines = [[("(none)" if group.key is None else group.key), *_row(group)] for group in stats.groups]
    lines.append(["total", *_row(stats.total)])
    widths = [max(len(line[i]) for line in [head, *lines]) for i in range(len(head))]
    for line in [head, *lines]:
        rest = [cell.rjust(width) for cell, width in zip(line[1:], widths[1:], strict=True)]
        cells = [line[0].ljust(widths[0]), *rest]
        print("  ".join(cells).rstrip(), file=out)
    if stats.truncated:
        print(f"(only the first {len(stats.groups)} groups: --limit)", file=out)
