-- 0002: user data through the codec, and `deploysm_meta`.
-- With a codec other than plain JSON (EncryptedCodec), start contexts, event payloads
-- (with their correlation id) and journal data are stored as the codec's bytes in the
-- new bytea columns, and the json/jsonb columns stay NULL; rows written in clear
-- before keep their json and stay readable.
-- `deploysm_meta` holds facts about the store as a whole: `codec = sealed` is recorded
-- before the first such row, so that a store opened without keys refuses to write in
-- clear into it. Schemas that already hold encrypted snapshots (the DSM1 envelope) are
-- marked here.

ALTER TABLE machines ADD COLUMN sealed_context bytea;

ALTER TABLE inbox ADD COLUMN sealed bytea;

ALTER TABLE journal ADD COLUMN sealed bytea, ALTER COLUMN data DROP NOT NULL;

CREATE TABLE deploysm_meta (
    name  text PRIMARY KEY,
    value text NOT NULL
);

INSERT INTO deploysm_meta (name, value)
SELECT 'codec', 'sealed'
 WHERE EXISTS (SELECT FROM machines WHERE substring(snapshot FROM 1 FOR 4) = '\x44534d31'::bytea);
