"""The core: the event bus, run logs and cursors, the run store and manager, graphs. No web and no Redis code."""
