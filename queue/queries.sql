-- Named queries used by the runtime. Every time-dependent query takes the clock as a parameter:
-- the worker's Clock is the only source of "now", so tests move time instead of sleeping.

-- name: claim
SELECT * FROM dialer_claim($1::uuid, $2::integer, $3::timestamptz, $4::integer, $5::text[]);

-- name: key_lookups_only
-- First in the flush's and the sweeper's transactions: every statement after it finds attempts by
-- id. Their plans are cached per connection with the statistics of when they were made; made while
-- dialer_attempt was small (a new database, or ahead of autovacuum's ANALYZE of a fast-growing
-- table), they scanned it whole on every pass, however big it grew.
SET LOCAL enable_seqscan = off;

-- name: mark_accepted
-- The provider took the start request: only the call id is written, no indexed column, so the
-- update stays on its heap page (HOT). A callback may have ended the attempt first; that is fine.
UPDATE dialer_attempt a
   SET provider_call_id = u.call_id
  FROM unnest($1::uuid[], $2::text[]) AS u(id, call_id)
 WHERE a.id = u.id AND a.provider_call_id IS NULL;

-- name: mark_answered
UPDATE dialer_attempt a
   SET state = 'answered', answered_at = u.answered_at,
       provider_call_id = coalesce(a.provider_call_id, u.call_id)
  FROM unnest($1::uuid[], $2::timestamptz[], $3::text[]) AS u(id, answered_at, call_id)
 WHERE a.id = u.id AND a.state IN ('dialing', 'ringing');

-- name: record_outcomes
SELECT * FROM dialer_record_outcomes($1::uuid[], $2::text[], $3::boolean[], $4::boolean[], $5::text[],
    $6::timestamptz[], $7::timestamptz[], $8::double precision[], $9::integer[], $10::text[], $11::text[],
    $12::integer[], $13::text[], $14::timestamptz, $15::integer);

-- name: attempts_known
SELECT id FROM dialer_attempt WHERE id = ANY ($1::uuid[]);

-- name: release_attempts
-- Claims whose start request was provably never sent (cancelled before sending, or unknown to the
-- provider on reconciliation): the dial did not happen, so neither the attempt row nor the dial
-- count survives, and the number is due again at once.
WITH gone AS (
    DELETE FROM dialer_attempt a
     WHERE a.id = ANY ($1::uuid[]) AND a.state = 'dialing'
    RETURNING a.number_id
)
UPDATE dialer_number n
   SET status = CASE WHEN n.attempts = 0 THEN 'untried' ELSE 'retry_wait' END,
       dials = n.dials - 1,
       updated_at = $2::timestamptz
  FROM gone
 WHERE n.id = gone.number_id
RETURNING n.id;

-- name: take_overdue
-- Live attempts past their deadline (a lost callback, a worker killed mid-request). Taking one
-- pushes its deadline out, which is the sweeper's lease on it: concurrent sweepers skip it.
UPDATE dialer_attempt a
   SET deadline_at = $2::timestamptz + make_interval(secs => $3::integer)
  FROM (SELECT id FROM dialer_attempt
         WHERE state <> 'ended' AND deadline_at <= $2::timestamptz
         ORDER BY deadline_at
         LIMIT $1::integer
           FOR UPDATE SKIP LOCKED) due
 WHERE a.id = due.id
RETURNING a.id, a.number_id, a.campaign_id, a.provider, a.state, a.provider_call_id, a.claimed_at,
          (SELECT n.phone FROM dialer_number n WHERE n.id = a.number_id) AS phone,
          (SELECT c.ring_timeout_seconds FROM dialer_campaign c WHERE c.id = a.campaign_id) AS ring_timeout_seconds,
          (SELECT c.max_call_duration_seconds FROM dialer_campaign c WHERE c.id = a.campaign_id)
              AS max_call_duration_seconds;

-- name: set_deadline
UPDATE dialer_attempt
   SET deadline_at = u.deadline_at,
       state = CASE WHEN state = 'dialing' AND u.ringing THEN 'ringing' ELSE state END,
       provider_call_id = coalesce(provider_call_id, u.call_id)
  FROM unnest($1::uuid[], $2::timestamptz[], $3::boolean[], $4::text[]) AS u(id, deadline_at, ringing, call_id)
 WHERE dialer_attempt.id = u.id AND state <> 'ended';

-- name: campaigns_needing_window
SELECT id, time_zone, business_hours
  FROM dialer_campaign
 WHERE status = 'running' AND (window_closes_at IS NULL OR window_closes_at <= $1::timestamptz);

-- name: set_window
UPDATE dialer_campaign SET window_opens_at = $2, window_closes_at = $3 WHERE id = $1;

-- name: finish_campaigns
-- "finished" once nothing is left to dial: no number waiting or in flight. Every test is one index
-- probe: waiting numbers through the due index, in-flight ones through their live attempt (a
-- number is in_progress exactly while it has one: the claim and the outcome write both together).
-- Asking dialer_number for status 'in_progress' had no index to use and read every number of every
-- running campaign, every second, in every worker: 33 ms a pass at 100,000 numbers.
UPDATE dialer_campaign c
   SET status = 'finished', status_reason = 'all numbers reached a final state', updated_at = $1::timestamptz
 WHERE c.status = 'running'
   AND EXISTS (SELECT 1 FROM dialer_number n WHERE n.campaign_id = c.id)
   AND NOT EXISTS (SELECT 1 FROM dialer_number n
                    WHERE n.campaign_id = c.id AND n.status IN ('untried', 'retry_wait'))
   AND NOT EXISTS (SELECT 1 FROM dialer_attempt a WHERE a.campaign_id = c.id AND a.state <> 'ended')
RETURNING c.id, c.name;

-- name: worker_register
INSERT INTO dialer_worker (id, hostname, pid, started_at, heartbeat_at) VALUES ($1, $2, $3, $4, $4);

-- name: provider_accounts_sync
-- Each worker writes its accounts' rates at start-up (0: no limit). The deployment's config is
-- the same for every pod, so the last writer is as good as any; a rollout converges on the new.
INSERT INTO dialer_provider_account (name, max_calls_per_second, updated_at)
SELECT u.name, nullif(u.rate, 0), $3 FROM unnest($1::text[], $2::double precision[]) AS u(name, rate)
ON CONFLICT (name) DO UPDATE
   SET max_calls_per_second = excluded.max_calls_per_second, updated_at = excluded.updated_at
 WHERE dialer_provider_account.max_calls_per_second IS DISTINCT FROM excluded.max_calls_per_second;

-- name: prune_provider_starts
-- The widest window is 100 s (the slowest rate allowed, 0.01/s): older rows count for nothing.
DELETE FROM dialer_provider_start WHERE claimed_at < $1::timestamptz - interval '5 minutes';

-- name: worker_heartbeat
UPDATE dialer_worker SET heartbeat_at = $2, draining = $3 WHERE id = $1;

-- name: worker_deregister
DELETE FROM dialer_worker WHERE id = $1;

-- name: workers_prune
DELETE FROM dialer_worker WHERE heartbeat_at < $1::timestamptz;

-- name: campaign_insert
INSERT INTO dialer_campaign (name, provider, caller_id, ring_timeout_seconds, retry_wait_seconds, max_retries,
                             max_concurrent_calls, max_calls_per_second, max_call_duration_seconds,
                             starts_at, ends_at, time_zone, business_hours, created_at, updated_at,
                             webhook_url, webhook_attempt_events)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $14, $15, $16)
RETURNING *;

-- name: campaign_by_name
SELECT * FROM dialer_campaign WHERE name = $1;

-- name: campaign_list
SELECT * FROM dialer_campaign ORDER BY id;

-- name: campaign_transition
-- Status changes are compare-and-set on the allowed source states, so two operators (or an
-- operator and the finisher) cannot race a campaign into an impossible state. Leaving 'running'
-- clears the window: a resumed campaign gets a fresh one from the current hours.
UPDATE dialer_campaign
   SET status = $2, status_reason = $4, updated_at = $5,
       window_opens_at = NULL, window_closes_at = NULL
 WHERE name = $1 AND status = ANY ($3::text[])
RETURNING *;

-- name: campaign_counts
SELECT status, count(*)::bigint AS n FROM dialer_number WHERE campaign_id = $1 GROUP BY status;

-- name: campaign_attempt_counts
SELECT coalesce(outcome, state) AS outcome, count(*)::bigint AS n
  FROM dialer_attempt WHERE campaign_id = $1 GROUP BY 1;

-- name: stage_create
CREATE TEMPORARY TABLE dialer_stage (
    line integer, phone text, caller_id text, dtmf text, priority integer, payload jsonb, callee_zones text[]
) ON COMMIT DROP;

-- name: stage_work_mem
-- Each batch is merged in line order: at the default 4 MB that sort of 50,000 rows spills to disk.
SET LOCAL work_mem = '64MB';

-- name: stage_clear
TRUNCATE dialer_stage;

-- name: known_zones
SELECT name FROM pg_timezone_names;

-- name: stage_merge
-- ON CONFLICT DO NOTHING makes a re-run of the same file add nothing.
INSERT INTO dialer_number (campaign_id, phone, caller_id, dtmf, priority, payload, next_attempt_at,
                           created_at, updated_at, callee_zones)
SELECT $1, s.phone, s.caller_id, s.dtmf, coalesce(s.priority, 0), s.payload, $2, $2, $2,
       s.callee_zones  -- the calling-window gate's zones, derived by dialer.zones.ZoneResolver
  FROM dialer_stage s
 ORDER BY s.line  -- within one file, the first copy of a duplicate wins
ON CONFLICT (campaign_id, phone) DO NOTHING;

-- name: reopen_finished
UPDATE dialer_campaign SET status = 'running', status_reason = 'numbers added', updated_at = $2
 WHERE id = $1 AND status = 'finished';

-- name: backlog_stats
-- Per campaign: due backlog, its oldest due time, live calls, and why due work is not dialing.
-- Bounded by the campaign count; the due counts use the partial due index.
SELECT c.id, c.name, c.status, c.max_concurrent_calls, c.max_calls_per_second,
       d.due, d.oldest_due,
       (SELECT count(*) FROM dialer_attempt a WHERE a.campaign_id = c.id AND a.state <> 'ended') AS live,
       (SELECT count(*) FROM dialer_attempt a
         WHERE a.campaign_id = c.id AND a.claimed_at > $1::timestamptz - interval '1 second') AS recent,
       (c.window_opens_at IS NOT NULL AND c.window_opens_at <= $1::timestamptz
        AND $1::timestamptz < c.window_closes_at) AS window_open,
       ((c.starts_at IS NULL OR c.starts_at <= $1::timestamptz)
        AND (c.ends_at IS NULL OR c.ends_at > $1::timestamptz)) AS in_dates,
       -- The provider account's window is spent (dialer_claim's arithmetic).
       coalesce((SELECT greatest(floor(pa.max_calls_per_second), 1)
                        <= (SELECT coalesce(sum(s.starts), 0) FROM dialer_provider_start s
                             WHERE s.provider = pa.name
                               AND s.claimed_at > $1::timestamptz
                                   - make_interval(secs => greatest(1.0, 1.0 / pa.max_calls_per_second)))
                   FROM dialer_provider_account pa
                  WHERE pa.name = c.provider AND pa.max_calls_per_second IS NOT NULL), false) AS account_full
  FROM dialer_campaign c
  CROSS JOIN LATERAL (
        SELECT count(*) AS due, min(n.next_attempt_at) AS oldest_due
          FROM dialer_number n
         WHERE n.campaign_id = c.id AND n.status IN ('untried', 'retry_wait')
           AND n.next_attempt_at <= $1::timestamptz) d
 WHERE c.status IN ('running', 'paused', 'created');

-- name: workers_live
SELECT count(*) FROM dialer_worker WHERE heartbeat_at >= $1::timestamptz;

-- name: pause_provider_campaigns
-- An account error (bad credentials, no funds, unverified caller id) will not heal by redialing:
-- pause every running campaign on that account, with the reason, instead of burning numbers.
UPDATE dialer_campaign
   SET status = 'paused', status_reason = $2, updated_at = $3::timestamptz,
       window_opens_at = NULL, window_closes_at = NULL
 WHERE provider = $1 AND status = 'running'
RETURNING name;

-- ==== webhooks: outbox delivery ====

-- name: webhook_claim
-- Due events, oldest due first, taken and leased in one statement. The lease is the due time
-- pushed past the POST's timeout: concurrent deliverers skip these rows while this statement
-- holds their locks, and find them not due once it commits (a row taken meanwhile is re-checked
-- against its new due time). An event whose deliverer dies comes due again when the lease ends.
-- The URL is the campaign's current one, read at every try; an event whose campaign no longer has
-- one is given up here.
WITH due AS (
    SELECT e.id
      FROM dialer_webhook_event e
     WHERE e.delivered_at IS NULL AND e.gave_up_at IS NULL AND e.next_attempt_at <= $2::timestamptz
     ORDER BY e.next_attempt_at
     LIMIT $1::integer
       FOR UPDATE SKIP LOCKED
)
UPDATE dialer_webhook_event e
   SET next_attempt_at = $2::timestamptz + make_interval(secs => $3::double precision),
       attempts = e.attempts + (c.webhook_url IS NOT NULL)::int,
       gave_up_at = CASE WHEN c.webhook_url IS NULL THEN $2::timestamptz END,
       last_error = CASE WHEN c.webhook_url IS NULL THEN 'webhook_url removed' ELSE e.last_error END
  FROM due, dialer_campaign c
 WHERE e.id = due.id AND c.id = e.campaign_id
RETURNING e.id, e.campaign_id, e.type, e.payload, e.created_at, e.attempts, c.webhook_url AS url;

-- name: webhook_record
-- The results of a batch of tries: one delivery-log row each, and the event's new state. A try
-- whose lease ran out and whose event another deliverer has taken since (attempts moved on) is
-- logged but does not overwrite the newer try's state, unless it delivered: then it is done.
WITH r AS (
    SELECT *
      FROM unnest($1::uuid[], $2::integer[], $3::timestamptz[], $4::integer[], $5::text[],
                  $6::double precision[], $7::text[], $8::timestamptz[])
           AS r(id, attempts, attempted_at, status_code, error, duration, result, next_attempt_at)
), logged AS (
    INSERT INTO dialer_webhook_delivery (event_id, attempted_at, status_code, error, duration_seconds)
    SELECT r.id, r.attempted_at, r.status_code, r.error, r.duration FROM r
)
UPDATE dialer_webhook_event e
   SET delivered_at = CASE WHEN r.result = 'delivered' THEN $9::timestamptz END,
       gave_up_at = CASE WHEN r.result = 'gave_up' THEN $9::timestamptz END,
       next_attempt_at = CASE WHEN r.result = 'retry' THEN r.next_attempt_at ELSE e.next_attempt_at END,
       last_status = r.status_code,
       last_error = r.error
  FROM r
 WHERE e.id = r.id AND e.delivered_at IS NULL AND e.gave_up_at IS NULL
   AND (e.attempts = r.attempts OR r.result = 'delivered');

-- name: webhook_release
-- Tries the drain cut short: due again now, and not counted (their result is unknown). Only
-- while the lease is still ours: attempts unchanged since we took the event.
UPDATE dialer_webhook_event e
   SET next_attempt_at = $3::timestamptz, attempts = e.attempts - 1
  FROM unnest($1::uuid[], $2::integer[]) AS r(id, attempts)
 WHERE e.id = r.id AND e.attempts = r.attempts AND e.delivered_at IS NULL AND e.gave_up_at IS NULL;

-- name: webhook_backlog
-- Whole-database gauges: undelivered events and the creation time of the oldest (partial index).
SELECT count(*) AS pending, min(created_at) AS oldest
  FROM dialer_webhook_event
 WHERE delivered_at IS NULL AND gave_up_at IS NULL;

-- name: webhook_deliveries_of_event
-- The delivery log of one event, in the order tried.
SELECT d.id, d.event_id, d.attempted_at, d.status_code, d.error, d.duration_seconds
  FROM dialer_webhook_delivery d
 WHERE d.event_id = $1::uuid
 ORDER BY d.attempted_at, d.id;

-- name: webhook_redeliver
-- An operator's retry of a given-up event (the receiver is fixed): pending again, due now, with
-- a fresh try budget. Its earlier tries stay in the log. A delivered event is left alone.
UPDATE dialer_webhook_event
   SET gave_up_at = NULL, attempts = 0, next_attempt_at = $2::timestamptz, last_error = NULL
 WHERE id = $1::uuid AND gave_up_at IS NOT NULL
RETURNING id;

-- ==== upstream API ====

-- name: api_token_lookup
SELECT id, name, last_used_at FROM dialer_api_token WHERE token_hash = $1 AND revoked_at IS NULL;

-- name: api_token_touch
UPDATE dialer_api_token SET last_used_at = $2 WHERE id = $1;

-- name: api_token_insert
INSERT INTO dialer_api_token (name, token_hash, created_at) VALUES ($1, $2, $3)
RETURNING id, name, created_at;

-- name: api_token_list
SELECT id, name, created_at, last_used_at, revoked_at FROM dialer_api_token ORDER BY id;

-- name: api_token_revoke
UPDATE dialer_api_token SET revoked_at = $2 WHERE name = $1 AND revoked_at IS NULL RETURNING id;

-- name: api_campaign_page
-- Filters are parameters, never SQL text: NULL means "not filtered".
SELECT c.*, count(*) OVER () AS total
  FROM dialer_campaign c
 WHERE ($1::text IS NULL OR c.name = $1) AND ($2::text IS NULL OR c.status = $2)
 ORDER BY c.id
 LIMIT $3 OFFSET $4;

-- name: api_campaign_by_id
SELECT * FROM dialer_campaign WHERE id = $1;

-- name: api_campaign_update
-- A change of hours or zone clears the window, so the next maintenance tick recomputes it.
UPDATE dialer_campaign
   SET name = $2, provider = $3, caller_id = $4, ring_timeout_seconds = $5, retry_wait_seconds = $6,
       max_retries = $7, max_concurrent_calls = $8, max_calls_per_second = $9,
       max_call_duration_seconds = $10, starts_at = $11, ends_at = $12, time_zone = $13,
       business_hours = $14, webhook_url = $15, webhook_attempt_events = $16, updated_at = $17,
       window_opens_at = CASE WHEN time_zone IS DISTINCT FROM $13 OR business_hours IS DISTINCT FROM $14
                              THEN NULL ELSE window_opens_at END,
       window_closes_at = CASE WHEN time_zone IS DISTINCT FROM $13 OR business_hours IS DISTINCT FROM $14
                               THEN NULL ELSE window_closes_at END
 WHERE id = $1
RETURNING *;

-- name: api_campaign_delete
-- Only a campaign that cannot be dialing: running and paused ones must be stopped first.
DELETE FROM dialer_campaign c
 WHERE c.id = $1 AND c.status IN ('created', 'stopped', 'finished')
   AND NOT EXISTS (SELECT 1 FROM dialer_attempt a WHERE a.campaign_id = c.id AND a.state <> 'ended')
RETURNING c.id;

-- name: api_campaign_status
SELECT
    (SELECT count(*) FROM dialer_number n WHERE n.campaign_id = $1) AS items_total,
    (SELECT count(*) FROM dialer_number n
      WHERE n.campaign_id = $1 AND n.status IN ('completed', 'failed', 'dnc')) AS items_done,
    (SELECT count(*) FROM dialer_attempt a WHERE a.campaign_id = $1) AS calls,
    (SELECT count(*) FROM dialer_attempt a WHERE a.campaign_id = $1 AND a.state <> 'ended') AS active_calls,
    (SELECT count(*) FROM dialer_attempt a
      WHERE a.campaign_id = $1 AND a.outcome IN ('answered_human', 'answered_machine', 'answered_fax'))
        AS answered,
    (SELECT avg(a.billsec)::double precision FROM dialer_attempt a
      WHERE a.campaign_id = $1 AND a.outcome IN ('answered_human', 'answered_machine', 'answered_fax'))
        AS average_call_seconds;

-- name: api_campaign_numbers_by_status
SELECT status, count(*)::bigint AS n FROM dialer_number WHERE campaign_id = $1 GROUP BY status;

-- name: api_campaign_outcomes
SELECT outcome, decision, count(*)::bigint AS n
  FROM dialer_attempt WHERE campaign_id = $1 AND state = 'ended' GROUP BY outcome, decision;

-- name: api_number_page
SELECT n.*, count(*) OVER () AS total
  FROM dialer_number n
 WHERE n.campaign_id = $1
   AND ($2::text[] IS NULL OR n.status = ANY ($2::text[]))
   AND ($3::text IS NULL OR n.phone = $3)
   AND ($4::boolean IS NULL OR (n.last_outcome IS NOT DISTINCT FROM 'answered_machine') = $4)
 ORDER BY n.id
 LIMIT $5 OFFSET $6;

-- name: api_number_by_id
SELECT * FROM dialer_number WHERE id = $1;

-- name: api_number_attempts
SELECT a.*, n.phone FROM dialer_attempt a JOIN dialer_number n ON n.id = a.number_id
 WHERE a.number_id = $1 ORDER BY a.attempt_no, a.claimed_at;

-- name: api_number_delete
-- Only a number never dialed: once a call was placed, its CDRs are kept.
DELETE FROM dialer_number WHERE id = $1 AND dials = 0 AND status = 'untried' RETURNING id;

-- name: api_enqueue
SELECT dialer_enqueue($1::text, $2::jsonb, $3::text, $4::timestamptz) AS result;

-- name: api_request_claim
INSERT INTO dialer_api_request (scope, client_token, request_hash, response, created_at)
VALUES ($1, $2, $3, 'null'::jsonb, $4)
ON CONFLICT DO NOTHING
RETURNING scope;

-- name: api_request_get
SELECT request_hash, response FROM dialer_api_request WHERE scope = $1 AND client_token = $2;

-- name: api_request_store
UPDATE dialer_api_request SET response = $3 WHERE scope = $1 AND client_token = $2;

-- name: api_suppression_page
SELECT s.*, count(*) OVER () AS total
  FROM dialer_suppression s
 WHERE ($1::text IS NULL OR s.phone = $1)
   AND ($2::bigint IS NULL OR s.campaign_id = $2)
   AND ($3::boolean IS NULL OR (s.campaign_id IS NULL) = $3)
 ORDER BY s.id
 LIMIT $4 OFFSET $5;

-- name: api_suppression_insert
-- Adding what is already there returns the existing entry: suppression is idempotent.
WITH new AS (
    INSERT INTO dialer_suppression (phone, campaign_id, reason, source, created_at)
    SELECT u.phone, $2::bigint, $3::text, 'api', $4::timestamptz FROM unnest($1::text[]) AS u(phone)
    ON CONFLICT DO NOTHING
    RETURNING *
)
SELECT new.*, true AS created FROM new
UNION ALL
SELECT s.*, false FROM dialer_suppression s
 WHERE s.phone = ANY ($1::text[]) AND s.campaign_id IS NOT DISTINCT FROM $2::bigint
   AND NOT EXISTS (SELECT 1 FROM new WHERE new.phone = s.phone);

-- name: api_suppression_by_id
SELECT * FROM dialer_suppression WHERE id = $1;

-- name: api_suppression_delete
DELETE FROM dialer_suppression WHERE id = $1 RETURNING id;

-- name: api_suppression_check
SELECT * FROM dialer_suppression
 WHERE phone = $1 AND (campaign_id IS NULL OR campaign_id = $2::bigint)
 ORDER BY campaign_id NULLS FIRST;

-- name: api_call_page
SELECT a.*, n.phone, count(*) OVER () AS total
  FROM dialer_attempt a JOIN dialer_number n ON n.id = a.number_id
 WHERE ($1::bigint IS NULL OR a.campaign_id = $1)
   AND ($2::text IS NULL OR a.state = $2 OR a.outcome = $2)
   AND ($3::text IS NULL OR n.phone = $3)
   AND ($4::double precision IS NULL OR a.duration_seconds >= $4)
   AND ($5::double precision IS NULL OR a.duration_seconds <= $5)
   AND ($6::timestamptz IS NULL OR a.claimed_at >= $6)
   AND ($7::timestamptz IS NULL OR a.claimed_at < $7)
 ORDER BY a.claimed_at, a.id
 LIMIT $8 OFFSET $9;

-- name: api_call_by_id
SELECT a.*, n.phone FROM dialer_attempt a JOIN dialer_number n ON n.id = a.number_id WHERE a.id = $1;

-- name: api_cdr
-- The CDR export (Paycall `cdr_by_campaign` columns), read through a cursor: constant memory.
SELECT coalesce(n.caller_id, c.caller_id, '') AS cli, n.phone, a.claimed_at, a.answered_at, a.ended_at,
       a.billsec, a.outcome, a.raw_cause, a.id, a.campaign_id, n.dtmf
  FROM dialer_attempt a
  JOIN dialer_number n ON n.id = a.number_id
  JOIN dialer_campaign c ON c.id = a.campaign_id
 WHERE ($1::bigint IS NULL OR a.campaign_id = $1) AND ($2::text IS NULL OR n.phone = $2)
   AND a.state = 'ended'
 ORDER BY a.campaign_id, a.claimed_at, a.id;

-- name: api_webhook_event_page
SELECT e.*, count(*) OVER () AS total,
       (SELECT coalesce(jsonb_agg(jsonb_build_object(
                   'attempted_at', d.attempted_at, 'status_code', d.status_code, 'error', d.error,
                   'duration_seconds', d.duration_seconds) ORDER BY d.attempted_at), '[]'::jsonb)
          FROM dialer_webhook_delivery d WHERE d.event_id = e.id) AS deliveries
  FROM dialer_webhook_event e
 WHERE e.campaign_id = $1
   AND ($2::text IS NULL
        OR ($2 = 'delivered' AND e.delivered_at IS NOT NULL)
        OR ($2 = 'gave_up' AND e.gave_up_at IS NOT NULL)
        OR ($2 = 'pending' AND e.delivered_at IS NULL AND e.gave_up_at IS NULL))
 ORDER BY e.created_at, e.id
 LIMIT $3 OFFSET $4;

-- name: api_campaign_lock
SELECT * FROM dialer_campaign WHERE id = $1 FOR UPDATE;

-- ==== pacing and agents ====

-- name: pacing_campaigns
-- Agent campaigns the pacing loop bridges (and, if running, ticks): a paused or stopped campaign
-- still has calls out that people may answer, and they need an agent just the same.
SELECT c.id FROM dialer_campaign c
 WHERE c.pacing_mode <> 'agentless'
   AND (c.status = 'running'
        OR EXISTS (SELECT 1 FROM dialer_attempt a WHERE a.campaign_id = c.id AND a.state <> 'ended'))
 ORDER BY c.id;

-- name: pacing_lock
-- One worker ticks a campaign at a time (SKIP LOCKED: the others move on), and not more often than
-- the tick interval whichever worker did the last one. Holding this lock also keeps the claim off
-- the campaign, so the tick sees every attempt committed before it and none appears meanwhile.
SELECT id, name, pacing_mode, pacing_settings, agents_logged_in, pacing_state, pacing_seen, pacing_ticked_at
  FROM dialer_campaign
 WHERE id = $1::bigint AND status = 'running' AND pacing_mode <> 'agentless'
   AND (pacing_ticked_at IS NULL
        OR pacing_ticked_at <= $2::timestamptz - make_interval(secs => $3::double precision))
   FOR UPDATE SKIP LOCKED;

-- name: bridge
SELECT * FROM dialer_bridge($1::bigint, $2::timestamptz);

-- name: pacing_attempts
-- What the tick must look at: live attempts (partial live index), attempts started since the last
-- tick (claimed index), and those it fed before and has not finished with (by primary key).
-- Bounded by calls in flight plus recent starts, never by the campaign's history.
SELECT a.id, a.state, a.outcome, a.claimed_at, a.answered_at, a.ended_at, a.bridged_at, a.abandoned_at,
       a.agent_released_at
  FROM dialer_attempt a WHERE a.campaign_id = $1::bigint AND a.state <> 'ended'
UNION
SELECT a.id, a.state, a.outcome, a.claimed_at, a.answered_at, a.ended_at, a.bridged_at, a.abandoned_at,
       a.agent_released_at
  FROM dialer_attempt a WHERE a.campaign_id = $1::bigint AND a.claimed_at > $2::timestamptz
UNION
SELECT a.id, a.state, a.outcome, a.claimed_at, a.answered_at, a.ended_at, a.bridged_at, a.abandoned_at,
       a.agent_released_at
  FROM dialer_attempt a WHERE a.id = ANY ($3::uuid[]) AND a.campaign_id = $1::bigint;

-- name: pacing_busy
-- Busy agents (bridged, not released), through the partial busy index. agent_released_at set
-- (call end + wrap-up, by the agent trigger): in wrap-up, free at that known moment.
SELECT a.bridged_at, a.agent_released_at
  FROM dialer_attempt a
 WHERE a.campaign_id = $1::bigint AND a.bridged_at IS NOT NULL
   AND (a.agent_released_at IS NULL OR a.agent_released_at > $2::timestamptz);

-- name: pacing_save
-- The budget is overwritten, never added to: a tick's decision replaces the last one, whatever of
-- it the claim has not spent.
UPDATE dialer_campaign
   SET pacing_budget = $2::integer, pacing_state = $3::jsonb, pacing_seen = $4::jsonb,
       pacing_decision = $5::jsonb, pacing_ticked_at = $6::timestamptz
 WHERE id = $1::bigint;

-- name: notify_due
SELECT pg_notify('dialer_due', '');

-- name: campaign_set_agents
-- Agents reported live by upstream (or set by an operator). Fewer agents take effect at the next
-- bridge and tick; calls already bridged keep their agent.
UPDATE dialer_campaign SET agents_logged_in = $2::integer, updated_at = $3::timestamptz
 WHERE id = $1::bigint
RETURNING *;

-- name: campaign_set_pacing
UPDATE dialer_campaign
   SET pacing_mode = $2::text, pacing_settings = $3::jsonb, agents_logged_in = $4::integer,
       updated_at = $5::timestamptz
 WHERE id = $1::bigint
RETURNING *;

-- ==== compliance ====

-- name: record_outcomes_keys
-- record_outcomes plus the keys each callee pressed (auto-stop per key).
SELECT * FROM dialer_record_outcomes($1::uuid[], $2::text[], $3::boolean[], $4::boolean[], $5::text[],
    $6::timestamptz[], $7::timestamptz[], $8::double precision[], $9::integer[], $10::text[], $11::text[],
    $12::integer[], $13::text[], $14::text[], $15::timestamptz, $16::integer);

-- name: held_back_stats
-- Numbers a dispatch gate is holding back, by campaign and reason (the held partial index only:
-- numbers whose hold has run out are due again and counted by backlog_stats instead).
SELECT c.name, n.held_reason AS reason, count(*) AS held
  FROM dialer_number n
  JOIN dialer_campaign c ON c.id = n.campaign_id
 WHERE n.held_reason IS NOT NULL AND n.status IN ('untried', 'retry_wait')
   AND n.next_attempt_at > $1::timestamptz
   AND c.status IN ('running', 'paused', 'created')
 GROUP BY c.name, n.held_reason;

-- name: campaign_set_compliance
-- The compliance settings of one campaign, written after campaign_insert / api_campaign_update in
-- the same transaction (kept apart so the pacing columns and these change independently).
UPDATE dialer_campaign
   SET callee_window_start = $2, callee_window_end = $3, abandon_lockout_seconds = $4, amd_policy = $5,
       auto_stop_conditions = $6,
       -- New conditions count from now on.
       auto_stop_counts = CASE WHEN auto_stop_conditions IS DISTINCT FROM $6 THEN '{}'::jsonb
                               ELSE auto_stop_counts END
 WHERE id = $1
RETURNING *;

-- name: compliance_get
SELECT max_attempts_per_24h, max_attempts_lifetime, updated_at FROM dialer_compliance;

-- name: compliance_set
INSERT INTO dialer_compliance (id, max_attempts_per_24h, max_attempts_lifetime, updated_at)
VALUES (true, $1, $2, $3)
ON CONFLICT (id) DO UPDATE
   SET max_attempts_per_24h = excluded.max_attempts_per_24h,
       max_attempts_lifetime = excluded.max_attempts_lifetime, updated_at = excluded.updated_at
RETURNING max_attempts_per_24h, max_attempts_lifetime, updated_at;
