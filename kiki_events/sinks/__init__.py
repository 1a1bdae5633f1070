"""Sinks: where events leave the process for operators (metrics today)."""
