"""Streams mode: a run outlives the node that ran it.

A client reads part of a run from node A; node A stops; a node that never saw the
run (started afterwards) serves the rest from Redis, resuming exactly after the
client's ``Last-Event-ID``.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from tests.test_cluster import Cluster, Reader, full_run, make_cluster, start_run  # noqa: F401 - the fixture

pytestmark = [pytest.mark.slow, pytest.mark.redis]


def test_a_run_resumes_on_a_new_node_after_the_node_that_ran_it_is_gone(
    make_cluster: Callable[..., Cluster],  # noqa: F811 - the fixture imported above
) -> None:
    cluster = make_cluster("streams")
    (a,) = cluster.start("node-a")
    run_id = start_run(a)
    cut = Reader(f"{a.url}/runs/{run_id}/stream", stop_after=40).wait()  # the browser on A goes away
    last = cut.events()[-1].id
    assert last is not None
    everything = full_run(a, run_id)
    a.stop()
    assert a.process.returncode is not None

    (c,) = cluster.start("node-c")  # knows nothing of the run but what Redis kept
    resumed = Reader(f"{c.url}/runs/{run_id}/stream", {"Last-Event-ID": last}).wait()

    assert resumed.status == 200
    assert [f.raw for f in cut.events() + resumed.events()] == [f.raw for f in everything]
    assert resumed.notices() == []
    assert resumed.events()[-1].json["status"] == "success"
    info = httpx.get(f"{c.url}/runs/{run_id}", timeout=10).json()
    assert info["node"] == "node-a" and info["status"] == "success"
