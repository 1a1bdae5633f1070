"""Tenants sharing one Redis: each deployment's ACL user reaches only its own prefix.

The README tells operators who do not trust each other to give every deployment a
Redis ACL user limited to its key and channel prefix. These tests check that the
bridge and the handoff need nothing outside their prefix (a whole run crosses nodes
under such a user, in both modes) and that another tenant's user can neither see nor
touch it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import ModuleType
from typing import Any

import pytest
import pytest_asyncio
from redis.asyncio import Redis
from redis.exceptions import NoPermissionError

from kiki_events.config import Settings
from kiki_events.errors import RunNotFoundError
from kiki_events.runtime import KikiRuntime
from tests.redis_server import RedisServer
from tests.servers import async_wait_for

pytestmark = [pytest.mark.redis, pytest.mark.asyncio]

TASK = {"messages": [{"role": "user", "content": "Compare Redis streams and pub/sub"}]}
TIMEOUT = 20.0


def acl_rule(tenant: str, password: str) -> list[str]:
    """The ACL the README documents for one deployment (prefix ``<tenant>:``)."""
    return [
        "reset",
        "on",
        f">{password}",
        "resetkeys",
        f"~{tenant}:*",
        "resetchannels",
        f"&{tenant}:*",
        "+@all",
        "-@dangerous",
    ]


@pytest_asyncio.fixture
async def tenants(redis_server: RedisServer) -> AsyncIterator[str]:
    """Two ACL users, ``tenant-a`` and ``tenant-b``, on a private server; yields its address."""
    admin = Redis.from_url(redis_server.url)
    try:
        for tenant in ("tenant-a", "tenant-b"):
            await admin.execute_command("ACL", "SETUSER", tenant, *acl_rule(tenant, f"pw-{tenant}"))
        yield f"127.0.0.1:{redis_server.port}"
    finally:
        await admin.aclose()


def settings(address: str, tenant: str, node: str, mode: str) -> Settings:
    url = f"redis://{tenant}:pw-{tenant}@{address}/0"
    return Settings.model_validate(
        {
            "node": node,
            "eventbus": {
                "provider": "redis",
                "redis": {"url": url, "channel_prefix": f"{tenant}:", "mode": mode},
                "subscribe": {"interest_linger": 0},
            },
            "runs": {"shutdown_grace": "1s"},
        }
    )


async def node(address: str, tenant: str, name: str, mode: str, research_team: ModuleType) -> KikiRuntime:
    runtime = KikiRuntime(settings(address, tenant, name, mode), graphs={"team": research_team.build_graph()})
    await runtime.start()
    bridge = runtime.bridge
    assert bridge is not None
    await async_wait_for(lambda: bridge.state == "connected", TIMEOUT, f"{name} to connect")
    return runtime


@pytest.mark.parametrize("mode", ["pubsub", "streams"])
async def test_a_deployment_limited_to_its_prefix_works_and_other_tenants_cannot_reach_it(
    tenants: str, mode: str, research_team: ModuleType
) -> None:
    nodes: list[KikiRuntime] = []
    outsider = Redis.from_url(f"redis://tenant-b:pw-tenant-b@{tenants}/0")
    try:
        a = await node(tenants, "tenant-a", "node-a", mode, research_team)
        nodes.append(a)
        b = await node(tenants, "tenant-a", "node-b", mode, research_team)
        nodes.append(b)
        other = await node(tenants, "tenant-b", "node-c", mode, research_team)
        nodes.append(other)

        handle = a.runs.start("team", TASK)
        await asyncio.wait_for(handle.task, TIMEOUT)
        local = [e async for e in a.follow(handle.run_id)]

        async def read(runtime: KikiRuntime) -> list[Any]:
            return [e async for e in runtime.follow(handle.run_id)]

        assert await asyncio.wait_for(read(b), TIMEOUT) == local  # the whole run, through the ACL user
        assert local[-1].type == "done"
        for runtime in nodes:
            assert runtime.bridge is not None
            assert not runtime.bridge.transport.stats.dropped, runtime.bridge.transport.stats.dropped

        with pytest.raises(RunNotFoundError):
            await asyncio.wait_for(read(other), TIMEOUT)  # another tenant's node does not know it
        with pytest.raises(NoPermissionError):
            await outsider.hgetall(f"tenant-a:runinfo:{{{handle.run_id}}}")
        with pytest.raises(NoPermissionError):
            await outsider.publish("tenant-a:control", b"{}")
    finally:
        for runtime in reversed(nodes):
            await runtime.close()
        await outsider.aclose()
