"""Agents across nodes: hand a task to an agent that another node serves.

A node *serves* agents (graph names it has registered): it advertises them in
Redis and consumes their work streams. Any node can *delegate* a task to an
agent: the task goes to exactly one serving node, runs there through that node's
:class:`~kiki_events.core.manager.RunManager` (so its events flow like any run's), and
its result comes back. :func:`remote_agent_node` makes a LangGraph node that
delegates and relays the remote run's events into the calling run, so a browser
watching that run sees the remote agent's tokens.

Redis keys (under the deployment prefix; see :class:`~kiki_events.redis.keys.Keys`):

=========================  ===========================================================
``agents:<agent>``         sorted set: serving node → advertisement expiry (Unix s)
``work:<agent>``           work stream; consumer group ``kiki-agents``, one consumer per node
``dead:<agent>``           dead-letter stream: tasks given up, with the reason
``reply:{<request>}``      reply stream: ``started`` (child run id, node), then ``result``
``handled:{<request>}``    done marker: a lease while a node runs it, ``done`` after
``cancel:{<request>}``     set when the requester gave up: a node picking the task up finishes it unrun
``replywake:<node>``       one-entry stream that wakes the node's reply reader for a new request
=========================  ===========================================================

Waiting: one reader per node (:class:`~.replies.ReplyReader`) reads the reply
streams of every request it waits on in one ``XREAD`` on one connection, however
many ``delegate``/``stream`` calls wait.

Giving up: a requester that stops waiting (timeout, cancellation, error) cancels
the remote run through its bridge (:meth:`~kiki_events.bridge.Bridge.cancel`), so
it stops at once like a cancel from any node. The ``cancel`` key covers what the
bridge cannot: a task picked up whose run has not started yet (checked before and
right after the run starts), and a requester or serving node without a bridge
(the serving node's heartbeat then watches the key). A serving node also cancels
a run once its task's deadline has passed, so a requester that died leaves
nothing running.

Failures: a node that dies while running a task stops touching it; after
``handoff.claim_idle`` another node reclaims it (``XAUTOCLAIM``) and runs it again
(the requester follows the new run). A task delivered more than
``handoff.max_attempts`` times moves to the dead-letter stream and its requester
gets :class:`~kiki_events.errors.HandoffFailedError`. A task whose done marker says
``done`` is acknowledged without running again. A run that ends in error is a
result, not a failure: it is not retried.

Modules: :mod:`~.service` (:class:`Handoff`: lifecycle, one object per node),
:mod:`~.common` (:class:`HandoffContext`: what a Handoff uses of its node, built by
the composition root, :func:`kiki_events.runtime.build.create_handoff`),
:mod:`~.serving` (consumer loops, running tasks, dead-lettering) and :mod:`~.served`
(what it keeps of them), :mod:`~.requesting` (submit, wait), :mod:`~.streaming`
(:class:`HandoffStream`: following the remote run), :mod:`~.replies` (the reply reader),
:mod:`~.remote_node` (:func:`remote_agent_node`), :mod:`~.results` and
:mod:`~.payload` (what crosses the wire); the Redis queue is :mod:`kiki_events.redis.workqueue`.

A graph node finds its node's Handoff in its run's ``configurable`` (:data:`CONFIG_KEY`,
added by the runtime to every run it starts): :meth:`Handoff.of`.
"""

from __future__ import annotations

from .common import GROUP, Follow, HandoffContext
from .payload import dump_payload, load_payload
from .remote_node import remote_agent_node
from .results import HandoffResult, HandoffStatus
from .service import CONFIG_KEY, Handoff, client_name
from .streaming import HandoffStream

__all__ = [
    "CONFIG_KEY",
    "GROUP",
    "Follow",
    "Handoff",
    "HandoffContext",
    "HandoffResult",
    "HandoffStatus",
    "HandoffStream",
    "client_name",
    "dump_payload",
    "load_payload",
    "remote_agent_node",
]
