-- The event store, version 2: the events statistics read (LLM calls and tool results),
-- found by run without reading the run's other events.
CREATE INDEX events_llm ON events (run_id) WHERE type = 'llm';
CREATE INDEX events_tool_results ON events (run_id) WHERE type = 'tool_result';
