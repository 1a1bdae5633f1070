-- The event store, version 1: runs, their agents, thread owners and events.
CREATE TABLE threads (
    thread_id TEXT PRIMARY KEY,
    principal TEXT,
    created_at REAL NOT NULL
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
    started_at REAL NOT NULL,
    ended_at REAL,
    duration_s REAL,
    last_seq INTEGER NOT NULL,
    events INTEGER NOT NULL,
    llm_calls INTEGER NOT NULL,
    tool_calls INTEGER NOT NULL,
    tool_errors INTEGER NOT NULL,
    errors INTEGER NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    total_tokens INTEGER NOT NULL,
    reasoning_tokens INTEGER NOT NULL,
    cached_tokens INTEGER NOT NULL,
    cost_usd REAL
);
CREATE INDEX runs_by_start ON runs (started_at, run_id);
CREATE INDEX runs_by_thread ON runs (thread_id, started_at);
CREATE INDEX runs_by_cause ON runs (caused_by);
CREATE INDEX runs_by_end ON runs (ended_at);

CREATE TABLE run_agents (
    run_id TEXT NOT NULL,
    agent TEXT NOT NULL,
    PRIMARY KEY (run_id, agent)
) WITHOUT ROWID;
CREATE INDEX run_agents_by_agent ON run_agents (agent, run_id);

CREATE TABLE events (
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    ts REAL NOT NULL,
    type TEXT NOT NULL,
    agent TEXT,
    body BLOB NOT NULL, -- the fields not in a column, as compact JSON
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
CREATE INDEX events_by_time ON events (ts);
