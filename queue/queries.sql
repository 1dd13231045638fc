-- Named queries used by the runtime. Every time-dependent query takes the clock as a parameter:
-- the worker's Clock is the only source of "now", so tests move time instead of sleeping.

-- name: claim
SELECT * FROM dialer_claim($1::uuid, $2::integer, $3::timestamptz, $4::integer, $5::text[]);

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
-- "finished" once nothing is left to dial: no number waiting or in flight.
UPDATE dialer_campaign c
   SET status = 'finished', status_reason = 'all numbers reached a final state', updated_at = $1::timestamptz
 WHERE c.status = 'running'
   AND EXISTS (SELECT 1 FROM dialer_number n WHERE n.campaign_id = c.id)
   AND NOT EXISTS (SELECT 1 FROM dialer_number n
                    WHERE n.campaign_id = c.id AND n.status IN ('untried', 'in_progress', 'retry_wait'))
RETURNING c.id, c.name;

-- name: worker_register
INSERT INTO dialer_worker (id, hostname, pid, started_at, heartbeat_at) VALUES ($1, $2, $3, $4, $4);

-- name: worker_heartbeat
UPDATE dialer_worker SET heartbeat_at = $2, draining = $3 WHERE id = $1;

-- name: worker_deregister
DELETE FROM dialer_worker WHERE id = $1;

-- name: workers_prune
DELETE FROM dialer_worker WHERE heartbeat_at < $1::timestamptz;

-- name: campaign_insert
INSERT INTO dialer_campaign (name, provider, caller_id, ring_timeout_seconds, retry_wait_seconds, max_retries,
                             max_concurrent_calls, max_calls_per_second, max_call_duration_seconds,
                             starts_at, ends_at, time_zone, business_hours, created_at, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $14)
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
    line integer, phone text, caller_id text, dtmf text, priority integer, payload jsonb
) ON COMMIT DROP;

-- name: stage_merge
-- ON CONFLICT DO NOTHING makes a re-run of the same file add nothing.
INSERT INTO dialer_number (campaign_id, phone, caller_id, dtmf, priority, payload, next_attempt_at,
                           created_at, updated_at)
SELECT $1, s.phone, s.caller_id, s.dtmf, coalesce(s.priority, 0), s.payload, $2, $2, $2
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
        AND (c.ends_at IS NULL OR c.ends_at > $1::timestamptz)) AS in_dates
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
