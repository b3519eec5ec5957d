-- 0001: machines (one row per machine: its latest snapshot) and their journal.
-- Times are ISO-8601 UTC text with microseconds.

CREATE TABLE machines (
    id            TEXT PRIMARY KEY,
    workflow      TEXT,
    definition_id TEXT NOT NULL,
    status        TEXT NOT NULL,
    state         TEXT NOT NULL,
    version       INTEGER NOT NULL,
    snapshot      BLOB NOT NULL,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL
);

CREATE INDEX machines_status ON machines (status);

CREATE TABLE journal (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    machine_id TEXT NOT NULL,
    version    INTEGER NOT NULL,
    kind       TEXT NOT NULL,
    at         TEXT NOT NULL,
    data       TEXT NOT NULL
);

CREATE INDEX journal_machine_seq ON journal (machine_id, seq);
