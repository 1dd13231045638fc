-- Outcome webhooks say when a call was abandoned (answered with no agent free in time) or bridged
-- to an agent, and which keys the callee pressed. The event is now built from the attempt row as
-- the update stored it, after the agent trigger marked it, instead of from the input alone.
-- Same signature and result: pods on the previous version are unaffected.

CREATE OR REPLACE FUNCTION dialer_record_outcomes(
    p_ids uuid[], p_outcomes text[], p_final boolean[], p_consumes boolean[], p_final_status text[],
    p_answered_at timestamptz[], p_ended_at timestamptz[], p_duration double precision[],
    p_billsec integer[], p_raw_status text[], p_raw_cause text[], p_sip integer[],
    p_provider_call_ids text[], p_dtmf text[], p_now timestamptz, p_requeue_seconds integer)
RETURNS TABLE (attempt_id uuid, campaign text, outcome text, decision text)
LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY
    WITH input AS (
        SELECT * FROM unnest(p_ids, p_outcomes, p_final, p_consumes, p_final_status, p_answered_at,
                             p_ended_at, p_duration, p_billsec, p_raw_status, p_raw_cause, p_sip,
                             p_provider_call_ids, p_dtmf)
               AS i(id, outcome, final, consumes, final_status, answered_at, ended_at, duration,
                    billsec, raw_status, raw_cause, sip, provider_call_id, dtmf)
    ), locked AS (
        -- The row lock serialises concurrent flushes of the same attempt (a callback delivered twice
        -- to two pods): the loser re-checks state after the winner commits and drops out.
        SELECT a.id, a.number_id, a.attempt_no, a.claimed_at, a.answered_at AS prior_answered_at
          FROM dialer_attempt a
         WHERE a.id = ANY (p_ids) AND a.state <> 'ended'
           FOR UPDATE
    ), policed AS (
        -- The campaign's answering-machine policy: 'final' ends the number as completed (a
        -- message was left), 'retry' keeps the vocabulary's retry after retry_wait.
        SELECT i.id, i.outcome, i.consumes, i.answered_at, i.ended_at, i.duration, i.billsec,
               i.raw_status, i.raw_cause, i.sip, i.provider_call_id, i.dtmf,
               i.final OR (i.outcome = 'answered_machine' AND cp.amd_policy = 'final') AS final,
               CASE WHEN i.outcome = 'answered_machine' AND cp.amd_policy = 'final' THEN 'completed'
                    ELSE i.final_status END AS final_status
          FROM input i
          JOIN dialer_attempt a ON a.id = i.id
          JOIN dialer_campaign cp ON cp.id = a.campaign_id
    ), decided AS (
        SELECT lk.number_id, lk.attempt_no, lk.claimed_at, lk.prior_answered_at, i.*,
               n.attempts + i.consumes::int AS attempts_after,
               cp.retry_wait_seconds, cp.name AS campaign_name, cp.id AS campaign_id,
               cp.webhook_url IS NOT NULL AS hooks, cp.webhook_attempt_events,
               coalesce((cp.auto_stop_conditions ->> 'enabled')::boolean, false) AS auto_stop,
               CASE WHEN i.final THEN 'final'
                    WHEN NOT i.consumes THEN 'requeue'
                    WHEN n.attempts + 1 >= 1 + cp.max_retries THEN 'exhausted'
                    ELSE 'retry' END AS decision,
               -- Never sooner than retry_wait after the call ended, by either clock.
               greatest(i.ended_at, p_now) AS base_at
          FROM locked lk
          JOIN policed i ON i.id = lk.id
          JOIN dialer_number n ON n.id = lk.number_id
          JOIN dialer_campaign cp ON cp.id = n.campaign_id
    ), num AS (
        UPDATE dialer_number n
           SET status = CASE d.decision WHEN 'final' THEN d.final_status
                                        WHEN 'exhausted' THEN 'failed'
                                        ELSE 'retry_wait' END,
               attempts = d.attempts_after,
               next_attempt_at = CASE d.decision
                   WHEN 'retry' THEN d.base_at + make_interval(secs => d.retry_wait_seconds)
                   WHEN 'requeue' THEN d.base_at + make_interval(secs => p_requeue_seconds)
                   ELSE n.next_attempt_at END,
               last_outcome = d.outcome,
               updated_at = p_now
          FROM decided d
         WHERE n.id = d.number_id
        RETURNING n.id, n.next_attempt_at, n.phone, n.status, n.attempts, n.payload
    ), suppressed AS (
        -- A do-not-call outcome (blocked, a provider's opt-out) suppresses the phone everywhere, in
        -- the transaction that records it: no campaign dials it again, whichever queued it.
        INSERT INTO dialer_suppression (phone, campaign_id, reason, source, created_at)
        SELECT DISTINCT num.phone, NULL::bigint, 'outcome: ' || d.outcome, 'outcome', p_now
          FROM decided d JOIN num ON num.id = d.number_id
         WHERE d.decision = 'final' AND d.final_status = 'dnc'
        ON CONFLICT DO NOTHING
    ), stop_counts AS (
        -- Auto-stop (CALLR Sendr's AutoStopConditions): counters kept on the campaign, and only
        -- for campaigns that set conditions, so no one else pays a campaign-row write per flush.
        SELECT d.campaign_id,
               count(*) FILTER (WHERE d.outcome = 'answered_human') AS answered,
               array_agg(d.dtmf) FILTER (WHERE d.dtmf IS NOT NULL) AS pressed
          FROM decided d
         WHERE d.auto_stop
         GROUP BY d.campaign_id
    ), stopped AS (
        UPDATE dialer_campaign cp
           SET auto_stop_counts = nc.counts,
               status = CASE WHEN r.reason IS NOT NULL THEN 'stopped' ELSE cp.status END,
               status_reason = coalesce(r.reason, cp.status_reason),
               window_opens_at = CASE WHEN r.reason IS NOT NULL THEN NULL ELSE cp.window_opens_at END,
               window_closes_at = CASE WHEN r.reason IS NOT NULL THEN NULL ELSE cp.window_closes_at END,
               updated_at = p_now
          FROM stop_counts sc
         CROSS JOIN LATERAL (
               SELECT cp2.auto_stop_counts
                      || jsonb_build_object('answered', coalesce((cp2.auto_stop_counts ->> 'answered')::bigint, 0)
                                                        + sc.answered)
                      || (SELECT jsonb_object_agg('key_' || kk,
                                     coalesce((cp2.auto_stop_counts ->> ('key_' || kk))::bigint, 0)
                                     + (SELECT count(*) FROM unnest(sc.pressed) AS p(keys)
                                         WHERE strpos(p.keys, kk::text) > 0))
                            FROM generate_series(0, 9) AS kk) AS counts
                 FROM dialer_campaign cp2 WHERE cp2.id = sc.campaign_id
         ) nc
         CROSS JOIN LATERAL (
               -- A call that pressed several keys counts once for each of them.
               SELECT coalesce(
                   (SELECT format('auto-stop: %s answered calls', (nc.counts ->> 'answered'))
                      FROM dialer_campaign cp3
                     WHERE cp3.id = sc.campaign_id
                       AND coalesce((cp3.auto_stop_conditions #>> '{per_answer_count,enabled}')::boolean, false)
                       AND (cp3.auto_stop_conditions #>> '{per_answer_count,count}')::bigint > 0
                       AND (nc.counts ->> 'answered')::bigint
                           >= (cp3.auto_stop_conditions #>> '{per_answer_count,count}')::bigint),
                   (SELECT format('auto-stop: %s presses of key %s', nc.counts ->> ('key_' || kk), kk)
                      FROM dialer_campaign cp3, generate_series(0, 9) AS kk
                     WHERE cp3.id = sc.campaign_id
                       AND coalesce((cp3.auto_stop_conditions #>> '{per_key,enabled}')::boolean, false)
                       AND (cp3.auto_stop_conditions #>> ARRAY['per_key', 'key_' || kk])::bigint > 0
                       AND (nc.counts ->> ('key_' || kk))::bigint
                           >= (cp3.auto_stop_conditions #>> ARRAY['per_key', 'key_' || kk])::bigint
                     ORDER BY kk LIMIT 1)) AS reason
         ) r
         WHERE cp.id = sc.campaign_id AND cp.status IN ('running', 'paused', 'created', 'finished')
    ), ended AS (
        UPDATE dialer_attempt a
           SET state = 'ended',
               outcome = d.outcome,
               answered_at = coalesce(d.answered_at, a.answered_at),
               ended_at = d.ended_at,
               duration_seconds = d.duration,
               billsec = d.billsec,
               raw_status = d.raw_status,
               raw_cause = d.raw_cause,
               sip_code = d.sip,
               provider_call_id = coalesce(a.provider_call_id, d.provider_call_id),
               dtmf_pressed = coalesce(d.dtmf, a.dtmf_pressed),
               consumed_attempt = d.consumes,
               decision = d.decision,
               next_attempt_at = CASE WHEN d.decision IN ('retry', 'requeue') THEN num.next_attempt_at END
          FROM decided d JOIN num ON num.id = d.number_id
         WHERE a.id = d.id
        -- After the agent trigger: abandoned_at and agent_released_at are what it stored.
        RETURNING a.id, d.campaign_name, a.outcome, a.decision, a.bridged_at, a.abandoned_at, a.dtmf_pressed
    ), events AS (
        -- Written by the transaction that records the outcome: no outcome without its event, and
        -- no event for an outcome that rolled back. Built from what the attempt update stored, so
        -- an abandoned call (marked by the agent trigger) says so.
        INSERT INTO dialer_webhook_event (campaign_id, type, payload, created_at, next_attempt_at)
        SELECT d.campaign_id, ev.type,
               jsonb_build_object(
                   'campaign', jsonb_build_object('id', d.campaign_id, 'name', d.campaign_name),
                   'number', jsonb_build_object('id', num.id, 'phone', num.phone, 'status', num.status,
                                                'attempts', num.attempts, 'last_outcome', d.outcome,
                                                'next_attempt_at', CASE WHEN d.decision IN ('retry', 'requeue')
                                                                        THEN num.next_attempt_at END,
                                                'payload', num.payload),
                   'attempt', jsonb_build_object(
                       'id', d.id, 'attempt_no', d.attempt_no, 'outcome', d.outcome, 'decision', d.decision,
                       'consumed_attempt', d.consumes, 'started_at', d.claimed_at,
                       'answered_at', coalesce(d.answered_at, d.prior_answered_at), 'ended_at', d.ended_at,
                       'duration_seconds', d.duration, 'billsec', d.billsec, 'raw_status', d.raw_status,
                       'raw_cause', d.raw_cause, 'sip_code', d.sip, 'keys_pressed', e.dtmf_pressed,
                       'bridged_at', e.bridged_at, 'abandoned', e.abandoned_at IS NOT NULL,
                       'abandoned_at', e.abandoned_at)),
               p_now, p_now
          FROM ended e
          JOIN decided d ON d.id = e.id
          JOIN num ON num.id = d.number_id
          CROSS JOIN LATERAL (VALUES ('number.finished', d.decision IN ('final', 'exhausted')),
                                     ('attempt.ended', d.webhook_attempt_events)) AS ev(type, wanted)
         WHERE d.hooks AND ev.wanted
    )
    SELECT e.id, e.campaign_name, e.outcome, e.decision FROM ended e;

    -- A finished call frees a concurrency slot: wake claimers now rather than at their next poll.
    PERFORM pg_notify('dialer_due', '');
END;
$$;
