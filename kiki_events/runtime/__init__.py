"""The composition root: settings in, one object that owns everything running.

:class:`KikiRuntime` is the only place that builds the parts (bus, run store,
transports, bridge, handoff, sinks); :mod:`.build` holds one builder per part.
"""

from .runtime import KikiRuntime, default_node_name

__all__ = ["KikiRuntime", "default_node_name"]
