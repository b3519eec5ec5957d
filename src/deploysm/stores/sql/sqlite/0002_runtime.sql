-- 0002: what workers need. A machine can be *started* (a row with its workflow and
-- start context but no snapshot yet), so `snapshot` becomes nullable; SQLite cannot
-- drop a NOT NULL constraint, so the table is rebuilt (create, copy, drop, rename,
-- index again). New machine columns:
--   start_context    JSON text of the context given to start() (NULL for saved rows)
--   busy             1 while the snapshot has an unfinished transition (in_flight)
--   cancel_requested 1 once request_cancel() was called
--   lease_owner      the worker holding the machine (NULL: free)
--   lease_expires_at when that lease ends, INTEGER microseconds since the Unix epoch
--                    (UTC): exact, and integers compare the way time runs
--   fencing_token    grows with every claim; a save carrying another token is refused
--   wake_at          when a released machine is due again (timer), same unit
-- and the `inbox` of events sent to machines, kept after delivery so that an event id
-- sent again is recognised (de-duplication per machine).

CREATE TABLE machines_v2 (
    id               TEXT PRIMARY KEY,
    workflow         TEXT,
    definition_id    TEXT NOT NULL,
    status           TEXT NOT NULL,
    state            TEXT NOT NULL,
    version          INTEGER NOT NULL,
    snapshot         BLOB,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    start_context    TEXT,
    busy             INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    lease_owner      TEXT,
    lease_expires_at INTEGER,
    fencing_token    INTEGER NOT NULL DEFAULT 0,
    wake_at          INTEGER
);

-- `busy` of the rows already there, as save() would have set it: read from the stored
-- snapshot when it is plain JSON (the default codec); 0 when the codec hides it.
INSERT INTO machines_v2 (id, workflow, definition_id, status, state, version, snapshot,
                         created_at, updated_at, busy)
SELECT id, workflow, definition_id, status, state, version, snapshot, created_at, updated_at,
       CASE WHEN json_valid(CAST(snapshot AS TEXT))
            THEN coalesce(json_type(CAST(snapshot AS TEXT), '$.in_flight') = 'object', 0)
            ELSE 0 END
FROM machines;

DROP TABLE machines;

ALTER TABLE machines_v2 RENAME TO machines;

CREATE INDEX machines_status ON machines (status);

-- Candidates for a claim, found without scanning every active machine: the ones never
-- run, busy or asked to cancel (this index), due timers (machines_wake) and undelivered
-- events (inbox_undelivered).
CREATE INDEX machines_pending ON machines (id)
    WHERE status = 'active' AND (snapshot IS NULL OR busy = 1 OR cancel_requested = 1);

CREATE INDEX machines_wake ON machines (wake_at) WHERE wake_at IS NOT NULL;

CREATE TABLE inbox (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    machine_id     TEXT NOT NULL,
    event_id       TEXT NOT NULL,
    type           TEXT NOT NULL,
    payload        TEXT,
    correlation_id TEXT,
    created_at     TEXT NOT NULL,
    delivered_at   TEXT,
    UNIQUE (machine_id, event_id)
);

CREATE INDEX inbox_undelivered ON inbox (machine_id, seq) WHERE delivered_at IS NULL;
