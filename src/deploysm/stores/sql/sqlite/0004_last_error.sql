-- 0004: `last_error`, the machine's last error as one line ("CODE: message"), written
-- by every save from the snapshot's last error (NULL when it has none), so that
-- list() and `deploysm ls` show it without decoding snapshots. With a codec other than
-- plain JSON (EncryptedCodec) it is a BLOB, the codec's bytes of {"last_error": text},
-- as journal data is.

ALTER TABLE machines ADD COLUMN last_error TEXT;

-- The rows already there, from their snapshot when it is plain JSON (the default
-- codec); rows the codec hides get theirs with their next save.
UPDATE machines
   SET last_error = CASE
       WHEN json_extract(CAST(snapshot AS TEXT), '$.last_error.code') IS NOT NULL
            AND json_extract(CAST(snapshot AS TEXT), '$.last_error.code') != ''
       THEN json_extract(CAST(snapshot AS TEXT), '$.last_error.code')
            || coalesce(': ' || nullif(json_extract(CAST(snapshot AS TEXT),
                                                    '$.last_error.message'), ''), '')
       ELSE coalesce(nullif(json_extract(CAST(snapshot AS TEXT), '$.last_error.message'), ''),
                     json_extract(CAST(snapshot AS TEXT), '$.last_error.type'), 'error')
       END
 WHERE json_valid(CAST(snapshot AS TEXT))
   AND json_type(CAST(snapshot AS TEXT), '$.last_error') = 'object';
