-- 0001: machines (one row per machine: its latest snapshot, its lease and its timer),
-- their append-only journal and their inbox. Applied inside one transaction, with the
-- schema's migration lock held, in the schema the store was given (search_path).
-- User data (start contexts, event payloads) is json, not jsonb: it comes back exactly
-- as given (key order, number spelling, \u0000); the journal is jsonb, for queries.

CREATE TABLE machines (
    id               text COLLATE "C" PRIMARY KEY,
    workflow         text,
    definition_id    text NOT NULL DEFAULT '',
    status           text NOT NULL DEFAULT 'active',
    state            text NOT NULL DEFAULT '',
    version          bigint NOT NULL DEFAULT 0,
    snapshot         bytea,                -- NULL: started, never run yet
    start_context    json,
    busy             boolean NOT NULL DEFAULT false,  -- the snapshot has a transition in flight
    cancel_requested boolean NOT NULL DEFAULT false,
    lease_owner      text,
    lease_expires_at timestamptz,
    fencing_token    bigint NOT NULL DEFAULT 0,
    wake_at          timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX machines_status ON machines (status);

-- What claim() scans: active machines that have work of their own (inbox work is
-- found through inbox_undelivered, due timers through machines_wake_at).
CREATE INDEX machines_claimable ON machines (id)
    WHERE status = 'active' AND (snapshot IS NULL OR busy OR cancel_requested);

CREATE INDEX machines_wake_at ON machines (wake_at)
    WHERE status = 'active' AND wake_at IS NOT NULL;

CREATE TABLE journal (
    seq        bigserial PRIMARY KEY,
    machine_id text COLLATE "C" NOT NULL,
    version    bigint NOT NULL,
    kind       text NOT NULL,
    at         timestamptz NOT NULL,
    data       jsonb NOT NULL
);

CREATE INDEX journal_machine_seq ON journal (machine_id, seq);

-- Delivered events keep their row (delivered_at set), so a re-send of a delivered
-- event id is still recognised and ignored.
CREATE TABLE inbox (
    seq            bigserial PRIMARY KEY,
    machine_id     text COLLATE "C" NOT NULL,
    event_id       text NOT NULL,
    type           text NOT NULL,
    payload        json,
    correlation_id text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    delivered_at   timestamptz,
    UNIQUE (machine_id, event_id)
);

CREATE INDEX inbox_undelivered ON inbox (machine_id, seq) WHERE delivered_at IS NULL;
