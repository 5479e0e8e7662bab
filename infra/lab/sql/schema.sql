-- The lab's FTS database: channel state, jobs, agent sessions and the score.
CREATE TABLE channels (
    name        text PRIMARY KEY,
    state       text NOT NULL DEFAULT 'Active' CHECK (state IN ('Active', 'Inactive')),
    changed_at  timestamptz NOT NULL DEFAULT now()
);

-- Every change of a channel's state, with the database's time (the benchmarks' exact moments of
-- going Inactive and Active again; `channels.changed_at` keeps only the last).
CREATE TABLE channel_history (
    channel text NOT NULL,
    state   text NOT NULL,
    at      timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE FUNCTION record_channel_state() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.state IS DISTINCT FROM OLD.state THEN
        INSERT INTO channel_history (channel, state) VALUES (NEW.name, NEW.state);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER channel_state_history AFTER UPDATE ON channels
    FOR EACH ROW EXECUTE FUNCTION record_channel_state();

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
    -- the version of the agent software that started the transfer (the new software
    -- serves the transfers started after the restart)
    agent_version text,
    lost_reason  text,
    -- what the site's estimate of the transfer's duration is off by (its end as a real site
    -- estimates it, from size and rate): the lab's transfer_eta_query reads duration_s *
    -- eta_factor; 1 is the exact end (lab.eta_error)
    eta_factor   real NOT NULL DEFAULT 1
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

-- The web front end. The service epoch is a fencing token: a master is enabled with an
-- epoch, claims it here, and writes with it; a write whose epoch is older than the current one is
-- refused, so a master that was switched away from cannot write even if it never heard of it.
CREATE TABLE service_epoch (
    id         integer PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    epoch      bigint NOT NULL,
    holder     text NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
INSERT INTO service_epoch (epoch, holder) VALUES (1, 'lab');

-- Every epoch and when it began: the score checks the fencing from this, independently of the
-- trigger that enforces it.
CREATE TABLE epoch_history (
    epoch      bigint PRIMARY KEY,
    holder     text NOT NULL,
    began_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);
INSERT INTO epoch_history (epoch, holder) VALUES (1, 'lab');

-- Claim an epoch: raise the current one to `new_epoch` (or keep it when it is already that);
-- refused when the database already holds a newer one. Returns the epoch now current.
CREATE FUNCTION claim_epoch(new_epoch bigint, who text) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE cur bigint;
BEGIN
    SELECT epoch INTO cur FROM service_epoch WHERE id = 1 FOR UPDATE;
    IF new_epoch < cur THEN
        RAISE EXCEPTION 'epoch % is older than the current epoch %', new_epoch, cur
            USING ERRCODE = 'P0001';
    END IF;
    UPDATE service_epoch SET epoch = new_epoch, holder = who, changed_at = clock_timestamp()
        WHERE id = 1;
    INSERT INTO epoch_history (epoch, holder) VALUES (new_epoch, who)
        ON CONFLICT (epoch) DO UPDATE SET holder = EXCLUDED.holder;
    RETURN new_epoch;
END $$;

-- Jobs accepted by a front end (the client's id makes a retried submission count once).
CREATE TABLE submissions (
    id           text PRIMARY KEY,
    host         text NOT NULL,
    epoch        bigint NOT NULL,
    accepted_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE FUNCTION refuse_fenced_write() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE cur bigint;
BEGIN
    -- FOR SHARE: a claim of a newer epoch waits for this write, or this write sees the claim
    SELECT epoch INTO cur FROM service_epoch WHERE id = 1 FOR SHARE;
    IF NEW.epoch < cur THEN
        RAISE EXCEPTION 'fenced: % writes with epoch %, the current epoch is %',
            NEW.host, NEW.epoch, cur USING ERRCODE = 'P0002';
    END IF;
    NEW.accepted_at := clock_timestamp();
    RETURN NEW;
END $$;
CREATE TRIGGER submissions_fenced BEFORE INSERT ON submissions
    FOR EACH ROW EXECUTE FUNCTION refuse_fenced_write();

-- What the lab's clients saw (one row, written by the client process).
CREATE TABLE score_clients (
    id            integer PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    accepted      bigint NOT NULL DEFAULT 0,
    refused       bigint NOT NULL DEFAULT 0,
    failed        bigint NOT NULL DEFAULT 0,
    waiting       bigint NOT NULL DEFAULT 0,
    lost          bigint NOT NULL DEFAULT 0,
    outages       bigint NOT NULL DEFAULT 0,
    outage_max_s  double precision NOT NULL DEFAULT 0,
    outage_last_s double precision NOT NULL DEFAULT 0,
    updated_at    timestamptz NOT NULL DEFAULT clock_timestamp()
);
INSERT INTO score_clients DEFAULT VALUES;
