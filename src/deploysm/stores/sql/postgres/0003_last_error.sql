-- 0003: the machine's last error, written by every save from the snapshot's last
-- error (NULL when it has none), so that list() and `deploysm ls` show it without
-- decoding snapshots: `last_error`, one line of text ("CODE: message"), or, with a
-- codec other than plain JSON (EncryptedCodec), `sealed_error`, the codec's bytes of
-- {"last_error": text}, as for start contexts.

ALTER TABLE machines ADD COLUMN last_error text, ADD COLUMN sealed_error bytea;

-- The rows already there, from their snapshot when it is plain JSON (the default
-- codec; a row that is not valid JSON is left alone); rows the codec hides get theirs
-- with their next save.
DO $$
DECLARE
    r   record;
    err jsonb;
BEGIN
    FOR r IN SELECT id, snapshot FROM machines
              WHERE substring(snapshot FROM 1 FOR 1) = '\x7b'::bytea LOOP
        BEGIN
            err := convert_from(r.snapshot, 'UTF8')::jsonb -> 'last_error';
        EXCEPTION WHEN others THEN
            err := NULL;
        END;
        IF jsonb_typeof(err) = 'object' THEN
            UPDATE machines
               SET last_error = CASE
                   WHEN coalesce(err ->> 'code', '') != ''
                   THEN (err ->> 'code') || coalesce(': ' || nullif(err ->> 'message', ''), '')
                   ELSE coalesce(nullif(err ->> 'message', ''), err ->> 'type', 'error')
                   END
             WHERE id = r.id;
        END IF;
    END LOOP;
END
$$;
