-- 0003: `deploysm_meta`, facts about the store as a whole. A store whose codec is not
-- plain JSON (EncryptedCodec) records `codec = sealed` before its first row, so that a
-- store opened without keys refuses to write in clear into it. Stores that already hold
-- encrypted snapshots (the DSM1 envelope) are marked here.
-- With such a codec, start contexts, event payloads and journal data are BLOBs (the
-- codec's bytes) in the columns that hold JSON text otherwise: SQLite keeps a BLOB as
-- it is in a TEXT column, and the type of the value tells the two apart, so rows
-- written in clear before stay readable.

CREATE TABLE deploysm_meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

INSERT INTO deploysm_meta (name, value)
SELECT 'codec', 'sealed'
 WHERE EXISTS (SELECT 1 FROM machines WHERE substr(snapshot, 1, 4) = X'44534D31');
