-- The lab's FTS database: channel state, jobs, agent sessions and the score.
CREATE TABLE channels (
    name        text PRIMARY KEY,
    state       text NOT NULL DEFAULT 'Active' CHECK (state IN ('Active', 'Inactive')),
    changed_at  timestamptz NOT NULL DEFAULT now()
);

-- Submitted (waiting for its VO agent) -> Pending (assigned to its channel) -> Active (a transfer
-- process runs) -> Done, or Lost when the agent that ran it stopped or died before sweeping it up.
CREATE TABLE jobs (
    id           bigserial PRIMARY KEY,
    channel      text NOT NULL REFERENCES channels (name),
    vo           text,
    state        text NOT NULL CHECK (state IN ('Submitted', 'Pending', 'Active', 'Done', 'Lost')),
    duration_s   real NOT NULL,
    submitted_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    started_at   timestamptz,
    finished_at  timestamptz,
    host         text,
    agent_pid    integer,
    lost_reason  text
);
CREATE INDEX jobs_channel_state ON jobs (channel, state);
CREATE INDEX jobs_vo_state ON jobs (vo, state);

-- One row per agent instance that took its lock (backend_pid is its DB session).
CREATE TABLE agent_sessions (
    agent        text NOT NULL,
    host         text NOT NULL,
    pid          integer NOT NULL,
    backend_pid  integer NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    heartbeat_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    ended_at     timestamptz,
    PRIMARY KEY (agent, host, pid, backend_pid)
);

CREATE TABLE score_downtime (
    channel text PRIMARY KEY,
    seconds double precision NOT NULL DEFAULT 0
);

-- An agent seen serving on two hosts at once (never expected), or alive on two hosts (expected
-- only while a host that cannot be reached still runs an agent that lost its DB session).
CREATE TABLE score_twice (
    id         serial PRIMARY KEY,
    kind       text NOT NULL CHECK (kind IN ('serving', 'alive')),
    agent      text NOT NULL,
    hosts      text NOT NULL,
    first_seen timestamptz NOT NULL,
    last_seen  timestamptz NOT NULL
);

CREATE TABLE lab_control (
    key   text PRIMARY KEY,
    value text NOT NULL
);
