-- The event store, version 1: runs, their agents, thread owners and events.
CREATE TABLE threads (
    thread_id TEXT PRIMARY KEY,
    principal TEXT,
    created_at DOUBLE PRECISION NOT NULL
);

CREATE TABLE runs (
    run_id TEXT PRIMARY KEY,
    thread_id TEXT,
    graph TEXT,
    principal TEXT,
    node TEXT,
    status TEXT NOT NULL,
    causation_id TEXT,
    caused_by TEXT,
    relayed_into TEXT,
    trace_id TEXT,
    started_at DOUBLE PRECISION NOT NULL,
    ended_at DOUBLE PRECISION,
    duration_s DOUBLE PRECISION,
    last_seq BIGINT NOT NULL,
    events BIGINT NOT NULL,
    llm_calls BIGINT NOT NULL,
    tool_calls BIGINT NOT NULL,
    tool_errors BIGINT NOT NULL,
    errors BIGINT NOT NULL,
    input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    total_tokens BIGINT NOT NULL,
    reasoning_tokens BIGINT NOT NULL,
    cached_tokens BIGINT NOT NULL,
    cost_usd DOUBLE PRECISION
);
CREATE INDEX runs_by_start ON runs (started_at, run_id);
CREATE INDEX runs_by_thread ON runs (thread_id, started_at);
CREATE INDEX runs_by_cause ON runs (caused_by);
CREATE INDEX runs_by_end ON runs (ended_at);

CREATE TABLE run_agents (
    run_id TEXT NOT NULL,
    agent TEXT NOT NULL,
    PRIMARY KEY (run_id, agent)
);
CREATE INDEX run_agents_by_agent ON run_agents (agent, run_id);

CREATE TABLE events (
    run_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    ts DOUBLE PRECISION NOT NULL,
    type TEXT NOT NULL,
    agent TEXT,
    body BYTEA NOT NULL, -- the fields not in a column, as compact JSON
    PRIMARY KEY (run_id, seq)
);
CREATE INDEX events_by_time ON events (ts);
