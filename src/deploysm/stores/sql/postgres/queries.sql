-- The named queries of PostgresStore. Each block starts with "-- name: NAME" and runs
-- against the store's schema (search_path). Parameters use psycopg's %(name)s style.
-- Every time comes from the database clock (now()), so hosts may disagree on theirs.

-- A save is ONE statement, run outside any explicit transaction (so it commits on its
-- own, in one round trip): a head (save_insert or save_update, the CTE "saved"), then
-- save_journal when it has journal records, save_consume when it consumes inbox events,
-- and save_result. PostgresStore.save puts them together; every part runs or none does.

-- The lease of a machine run without a worker (see Lease in stores/_runtime.py):
-- %(hold)s NULL leaves the lease columns alone, true holds the lease for %(owner)s for
-- %(lease_ms)s (bumping the token when no token is given: taking it), false frees it.

-- name: save_insert
-- A first save (expected_version None): only if no row with this id exists.
WITH saved AS (
    INSERT INTO machines (id, workflow, definition_id, status, state, version, snapshot, busy,
                          lease_owner, lease_expires_at, fencing_token, last_error, sealed_error)
    VALUES (%(id)s, %(workflow)s, %(definition_id)s, %(status)s, %(state)s,
            %(version)s::bigint, %(snapshot)s, %(busy)s,
            CASE WHEN %(hold)s::boolean THEN %(owner)s::text END,
            CASE WHEN %(hold)s::boolean
                 THEN now() + %(lease_ms)s::float8 * interval '1 millisecond' END,
            CASE WHEN %(hold)s::boolean THEN 1 ELSE 0 END,
            %(last_error)s::text, %(sealed_error)s::bytea)
    ON CONFLICT (id) DO NOTHING
    RETURNING id, fencing_token
)

-- name: save_update
-- Compare-and-set: the stored version must be the expected one, and the writer must
-- hold the fencing token (with a token) or nobody may hold a live lease (without; but
-- %(evict)s, an owner known to be dead, may).
WITH saved AS (
    UPDATE machines
       SET workflow = coalesce(%(workflow)s, workflow), definition_id = %(definition_id)s,
           status = %(status)s, state = %(state)s, version = %(version)s::bigint,
           snapshot = %(snapshot)s, busy = %(busy)s, updated_at = now(),
           lease_owner = CASE WHEN %(hold)s::boolean IS NULL THEN lease_owner
                              WHEN %(hold)s::boolean THEN %(owner)s::text END,
           lease_expires_at = CASE
               WHEN %(hold)s::boolean IS NULL THEN lease_expires_at
               WHEN %(hold)s::boolean
               THEN now() + %(lease_ms)s::float8 * interval '1 millisecond' END,
           fencing_token = fencing_token + CASE
               WHEN %(hold)s::boolean AND %(token)s::bigint IS NULL THEN 1 ELSE 0 END,
           last_error = %(last_error)s::text, sealed_error = %(sealed_error)s::bytea
     WHERE id = %(id)s AND version = %(expected)s::bigint
       AND CASE WHEN %(token)s::bigint IS NULL
                THEN lease_owner IS NULL OR lease_expires_at IS NULL OR lease_expires_at <= now()
                     OR lease_owner = %(evict)s::text
                ELSE fencing_token = %(token)s::bigint END
    RETURNING id, fencing_token
)

-- name: save_journal
-- The journal records, a JSON array of [kind, at, data], in order; only if saved.
, journaled AS (
    INSERT INTO journal (machine_id, version, kind, at, data)
    SELECT saved.id, %(version)s::bigint, r.rec ->> 0, (r.rec ->> 1)::timestamptz, r.rec -> 2
      FROM saved, jsonb_array_elements(%(journal)s::jsonb) WITH ORDINALITY AS r (rec, n)
     ORDER BY r.n
)

-- name: save_journal_sealed
-- The same through the store's codec (not plain JSON): kinds, times and the codec's
-- bytes of each record's data, as three arrays in order.
, journaled AS (
    INSERT INTO journal (machine_id, version, kind, at, sealed)
    SELECT saved.id, %(version)s::bigint, r.kind, r.at, r.sealed
      FROM saved, unnest(%(kinds)s::text[], %(ats)s::timestamptz[], %(sealed)s::bytea[])
                  WITH ORDINALITY AS r (kind, at, sealed, n)
     ORDER BY r.n
)

-- name: save_consume
, consumed AS (
    UPDATE inbox SET delivered_at = now()
     WHERE machine_id = %(id)s AND seq = ANY(%(seqs)s::bigint[]) AND delivered_at IS NULL
       AND EXISTS (SELECT FROM saved)
)

-- name: save_result
-- One row "true" and the fencing token when the save wrote; else the row as this
-- statement found it (none: no such machine), to tell LEASE_LOST / LEASE_HELD from
-- CONFLICT without another round trip.
SELECT true, fencing_token, NULL::bigint, NULL::boolean, NULL::text, NULL::timestamptz
  FROM saved
UNION ALL
SELECT false, version, fencing_token,
       lease_owner IS NOT NULL AND lease_expires_at IS NOT NULL AND lease_expires_at > now(),
       lease_owner, lease_expires_at
  FROM machines WHERE id = %(id)s AND NOT EXISTS (SELECT FROM saved);

-- name: save_found
-- Why a save wrote nothing: the row's version, token, whether a lease is live, its
-- owner and expiry.
SELECT version, fencing_token,
       lease_owner IS NOT NULL AND lease_expires_at IS NOT NULL AND lease_expires_at > now(),
       lease_owner, lease_expires_at
  FROM machines WHERE id = %(id)s;

-- name: load
SELECT snapshot FROM machines WHERE id = %(id)s;

-- name: journal
SELECT seq, version, kind, at, data, sealed FROM journal
 WHERE machine_id = %(id)s AND seq > %(after)s
 ORDER BY seq;

-- name: list_all
SELECT id, workflow, definition_id, status, state, version, updated_at, last_error, sealed_error
  FROM machines ORDER BY id;

-- name: list_status
SELECT id, workflow, definition_id, status, state, version, updated_at, last_error, sealed_error
  FROM machines WHERE status = %(status)s ORDER BY id;

-- name: start
WITH added AS (
    INSERT INTO machines (id, workflow, start_context, sealed_context)
    VALUES (%(id)s, %(workflow)s, %(context)s::json, %(sealed)s::bytea)
    ON CONFLICT (id) DO NOTHING
    RETURNING id
)
SELECT pg_notify(%(channel)s, id) IS NULL FROM added;

-- name: send
-- One statement: the machine's status (locked against a concurrent save), whether the
-- event id was seen before, and the new row if one was added (then a notification).
WITH m AS (
    SELECT id, status FROM machines WHERE id = %(id)s FOR SHARE
), added AS (
    INSERT INTO inbox (machine_id, event_id, type, payload, correlation_id, sealed)
    SELECT id, %(event_id)s, %(type)s, %(payload)s::json, %(correlation_id)s,
           %(sealed)s::bytea FROM m
     WHERE status NOT IN ('completed', 'failed', 'cancelled')
    ON CONFLICT (machine_id, event_id) DO NOTHING
    RETURNING machine_id
)
SELECT m.status,
       EXISTS (SELECT 1 FROM inbox i WHERE i.machine_id = m.id AND i.event_id = %(event_id)s),
       (SELECT count(*) FROM added a WHERE pg_notify(%(channel)s, a.machine_id) IS NOT NULL)
  FROM m;

-- name: request_cancel
-- Only a machine that has not ended; none asked: see status.
WITH asked AS (
    UPDATE machines SET cancel_requested = true
     WHERE id = %(id)s AND status NOT IN ('completed', 'failed', 'cancelled')
    RETURNING id
)
SELECT pg_notify(%(channel)s, id) IS NULL FROM asked;

-- name: status
SELECT status FROM machines WHERE id = %(id)s;

-- name: claim
-- Active machines with work (never run, a transition in flight, a cancel request, a
-- due timer, an undelivered event) whose lease is free or expired, of the workflows
-- asked for (NULL: any); SKIP LOCKED lets
-- concurrent claimers pass each other; every claim bumps the fencing token and returns
-- the owner of the expired lease it took (NULL: it was free).
WITH work AS (
    SELECT id FROM machines
     WHERE status = 'active' AND (snapshot IS NULL OR busy OR cancel_requested)
    UNION
    SELECT id FROM machines WHERE status = 'active' AND wake_at <= now()
    UNION
    SELECT machine_id FROM inbox WHERE delivered_at IS NULL
), picked AS (
    SELECT m.id, m.lease_owner AS old_owner FROM machines m JOIN work w ON w.id = m.id
     WHERE m.status = 'active'
       AND (m.lease_owner IS NULL OR m.lease_expires_at IS NULL OR m.lease_expires_at <= now())
       AND (%(workflows)s::text[] IS NULL
            OR coalesce(m.workflow, m.definition_id) = ANY(%(workflows)s::text[]))
     ORDER BY m.id
     LIMIT %(limit)s
       FOR UPDATE OF m SKIP LOCKED
)
UPDATE machines m
   SET lease_owner = %(worker)s,
       lease_expires_at = now() + %(lease_ms)s::float8 * interval '1 millisecond',
       fencing_token = m.fencing_token + 1,
       wake_at = NULL
  FROM picked
 WHERE m.id = picked.id
RETURNING m.id, coalesce(m.workflow, m.definition_id), m.fencing_token, m.snapshot,
          m.start_context, m.cancel_requested, m.sealed_context, picked.old_owner;

-- name: leased_elsewhere
-- The machines a claim of these workflows would take but for another owner's live
-- lease (what a starting worker says it waits for), with that owner and the expiry.
WITH work AS (
    SELECT id FROM machines
     WHERE status = 'active' AND (snapshot IS NULL OR busy OR cancel_requested)
    UNION
    SELECT id FROM machines WHERE status = 'active' AND wake_at <= now()
    UNION
    SELECT machine_id FROM inbox WHERE delivered_at IS NULL
)
SELECT m.id, m.lease_owner, m.lease_expires_at FROM machines m JOIN work w ON w.id = m.id
 WHERE m.status = 'active'
   AND m.lease_owner IS NOT NULL AND m.lease_owner <> %(worker)s
   AND m.lease_expires_at > now()
   AND (%(workflows)s::text[] IS NULL
        OR coalesce(m.workflow, m.definition_id) = ANY(%(workflows)s::text[]))
 ORDER BY m.id;

-- name: renew
UPDATE machines m
   SET lease_expires_at = now() + %(lease_ms)s::float8 * interval '1 millisecond'
  FROM unnest(%(ids)s::text[], %(tokens)s::bigint[]) AS held (id, token)
 WHERE m.id = held.id AND m.fencing_token = held.token AND m.lease_owner = %(worker)s
RETURNING m.id;

-- name: release
-- Other workers are told when the machine has work again, or has a timer (they then
-- wait no longer than its wake_at, see next_wake).
WITH freed AS (
    UPDATE machines m
       SET lease_owner = NULL, lease_expires_at = NULL, wake_at = %(wake_at)s
     WHERE m.id = %(id)s AND m.fencing_token = %(token)s
    RETURNING m.id, m.status = 'active' AND (
        m.snapshot IS NULL OR m.busy OR m.cancel_requested OR m.wake_at IS NOT NULL
        OR EXISTS (SELECT 1 FROM inbox i WHERE i.machine_id = m.id AND i.delivered_at IS NULL)
    ) AS wake
)
SELECT CASE WHEN wake THEN pg_notify(%(channel)s, id) IS NULL END FROM freed;

-- name: next_event
SELECT seq, event_id, type, payload, correlation_id, created_at, sealed FROM inbox
 WHERE machine_id = %(id)s AND delivered_at IS NULL
 ORDER BY seq LIMIT 1;

-- name: cancel_requested
SELECT cancel_requested FROM machines WHERE id = %(id)s;

-- name: next_wake
-- Seconds until the earliest future timer of an active machine (NULL: none).
SELECT extract(epoch FROM min(wake_at) - now())::float8 FROM machines
 WHERE status = 'active' AND wake_at > now();

-- name: marked
-- Whether the schema holds rows through a codec other than plain JSON (see _sealed).
SELECT 1 FROM deploysm_meta WHERE name = 'codec' AND value = 'sealed';

-- name: mark
INSERT INTO deploysm_meta (name, value) VALUES ('codec', 'sealed') ON CONFLICT DO NOTHING;

-- name: prune
-- Retention (see stores/_prune.py): journal entries of finished machines and delivered
-- events, older than %(older)s; never an undelivered event or a live machine's journal.
WITH journal_gone AS (
    DELETE FROM journal
     WHERE at < now() - %(older)s::interval
       AND machine_id IN (SELECT id FROM machines
                           WHERE status IN ('completed', 'failed', 'cancelled'))
    RETURNING 1
), inbox_gone AS (
    DELETE FROM inbox WHERE delivered_at < now() - %(older)s::interval RETURNING 1
)
SELECT (SELECT count(*) FROM journal_gone), (SELECT count(*) FROM inbox_gone);

-- name: park
-- A claimed machine whose snapshot cannot be read: status needs_attention, the lease
-- given back, the reason in its journal (see stores/_parking.py).
WITH parked AS (
    UPDATE machines
       SET status = %(status)s, lease_owner = NULL, lease_expires_at = NULL,
           last_error = %(last_error)s::text, sealed_error = %(sealed_error)s::bytea
     WHERE id = %(id)s AND fencing_token = %(token)s
    RETURNING id, version
)
INSERT INTO journal (machine_id, version, kind, at, data)
SELECT id, version, %(kind)s, now(), %(data)s::jsonb FROM parked;

-- name: parked_row
SELECT status, snapshot, sealed_context, start_context IS NOT NULL FROM machines WHERE id = %(id)s;

-- name: unpark
-- Back to the status its snapshot has, only if nothing changed since it was read.
WITH freed AS (
    UPDATE machines SET status = %(status)s,
           last_error = %(last_error)s::text, sealed_error = %(sealed_error)s::bytea
     WHERE id = %(id)s AND status = 'needs_attention'
       AND snapshot IS NOT DISTINCT FROM %(snapshot)s::bytea
    RETURNING id, version
), noted AS (
    INSERT INTO journal (machine_id, version, kind, at, data)
    SELECT id, version, %(kind)s, now(), %(data)s::jsonb FROM freed
)
SELECT pg_notify(%(channel)s, id) IS NULL FROM freed;
