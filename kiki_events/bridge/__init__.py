"""Where events cross nodes: this node's bus ⇄ a transport ⇄ the other nodes' buses.

The :class:`Bridge` is created and owned by :class:`~kiki_events.runtime.KikiRuntime`
when a transport is configured (``eventbus.provider: redis``, or a
:class:`~kiki_events.transports.memory.MemoryHub`). What it does, and where:

* **Out** (:mod:`.outbound`). It is a sink on the local bus: every event of a run
  executing here (relayed events included) goes to the transport's bounded outbox, without
  blocking and without ever raising into the graph. It also keeps the run
  registry up to date (which node runs what, and how it ended).
* **In, on demand** (:mod:`.follow`, :mod:`.threads`, :mod:`.inbound`). A remote
  run's events reach this node only while something here wants them: an SSE
  reader, :meth:`KikiRuntime.follow`, or a bus subscription to that run or
  thread (each holds a :class:`Lease`). They are delivered into the local bus (so
  the run store keeps a replay log and readers are served as for a local run)
  strictly in ``seq`` order, each once; a node never re-delivers its own events.
* **Repair** (:mod:`.repair`). A gap in a remote run's ``seq`` (a lost message, a
  reconnect) holds later events back while the missing ones are fetched again —
  from the stream (streams mode) or from the owning node's replay log (pub/sub,
  memory). What cannot be recovered within ``eventbus.subscribe.repair_timeout``
  is skipped with an explicit ``missed`` notice to the run's readers. After a
  pub/sub reconnect every followed run gets a ``missed`` notice too (messages
  sent while disconnected are gone from Redis), then is repaired from its node.
  A run that ended elsewhere but whose history is gone (its stream trimmed or
  expired, its node restarted) ends here at once: its readers get what is left
  and a ``missed`` notice saying which events are no longer available.
* **Control** (:mod:`.control`). Cancel a run on the node that runs it, ask a
  node to replay a run, or your own operations (:meth:`Bridge.add_control_handler`,
  :meth:`Bridge.send_control`).
* **Liveness** (:mod:`.liveness`). Heartbeats; readers of a run whose node
  stopped are told and released.

Lifecycle events (``agent:*``, ``multiagent:sync``) of every run are broadcast
and offered to this node's topic subscribers when ``eventbus.subscribe.events``
lists them, whether or not the run is followed here.

:mod:`.core` holds the :class:`Bridge` itself: lifecycle, the transport's
listener, the public API and health. It builds the parts and hands each one the
shared :class:`~.context.BridgeContext` (transport, bus, run store, settings,
counters, task supervision) and the other parts it works with; no part sees the
bridge. Thread ownership across the cluster: :mod:`.ownership`; a followed run's
state: :mod:`.remote`.
"""

from .control import ControlHandler
from .core import Bridge, BridgeStats
from .lease import Lease

__all__ = ["Bridge", "BridgeStats", "ControlHandler", "Lease"]
