"""Capture: the callback handler that turns a LangGraph run into events, and the ``astream_events`` adapter."""
