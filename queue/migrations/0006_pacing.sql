-- Pacing modes (issue 6): agentless campaigns keep the fixed caps; progressive and predictive ones
-- dial within a budget that the pacing controller (scheduler/pacing.py) writes each tick from the
-- agents, the calls in flight and its estimates. The claim spends the budget under the campaign's
-- row lock. Expand only: agentless is the default, so existing campaigns behave as before.

ALTER TABLE dialer_campaign
    ADD COLUMN pacing_mode text NOT NULL DEFAULT 'agentless'
        CHECK (pacing_mode IN ('agentless', 'progressive', 'predictive')),
    -- Overrides of scheduler.pacing.PacingSettings (validated in Python before they are stored).
    ADD COLUMN pacing_settings jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(pacing_settings) = 'object'),
    ADD COLUMN agents_logged_in integer NOT NULL DEFAULT 0 CHECK (agents_logged_in BETWEEN 0 AND 100000),
    -- The controller's estimator, persisted between ticks (workers are stateless), and its output.
    ADD COLUMN pacing_state jsonb,
    ADD COLUMN pacing_budget integer NOT NULL DEFAULT 0 CHECK (pacing_budget >= 0),
    ADD COLUMN pacing_ticked_at timestamptz;

CREATE OR REPLACE FUNCTION dialer_claim(p_worker uuid, p_limit integer, p_now timestamptz, p_dial_timeout_seconds integer,
                             p_skip_providers text[])
RETURNS TABLE (
    attempt_id           uuid,
    number_id            bigint,
    campaign_id          bigint,
    campaign             text,
    attempt_no           integer,
    phone                text,
    caller_id            text,
    dtmf                 text,
    ring_timeout_seconds integer,
    provider             text,
    payload              jsonb
)
LANGUAGE plpgsql AS $$
DECLARE
    c         record;
    remaining integer := p_limit;
    live      integer;
    recent    integer;
    k         integer;
    got       integer;
BEGIN
    FOR c IN
        SELECT cp.*
          FROM dialer_campaign cp
         WHERE cp.status = 'running'
           -- Accounts whose circuit is open in this worker: their numbers stay queued.
           AND cp.provider <> ALL (p_skip_providers)
           AND (cp.starts_at IS NULL OR cp.starts_at <= p_now)
           AND (cp.ends_at IS NULL OR cp.ends_at > p_now)
           AND cp.window_opens_at <= p_now AND p_now < cp.window_closes_at
         -- Round-robin: the campaign served longest ago goes first, so one big campaign cannot
         -- starve the others when the batch is small.
         ORDER BY cp.last_claimed_at NULLS FIRST, cp.id
         FOR UPDATE SKIP LOCKED
    LOOP
        EXIT WHEN remaining <= 0;
        -- Checked here, not in the cursor: the cursor's rows are fetched (and locked) lazily, so
        -- a claim that fills its batch from the first campaigns never probes the others.
        CONTINUE WHEN NOT EXISTS (SELECT 1 FROM dialer_number n
                                   WHERE n.campaign_id = c.id AND n.status IN ('untried', 'retry_wait')
                                     AND n.next_attempt_at <= p_now);

        SELECT count(*) INTO live FROM dialer_attempt a
         WHERE a.campaign_id = c.id AND a.state <> 'ended';
        -- No upper bound on purpose: a claim that committed earlier may carry a later p_now (its
        -- transaction started later but won the lock first); those starts count against us too.
        SELECT count(*) INTO recent FROM dialer_attempt a
         WHERE a.campaign_id = c.id AND a.claimed_at > p_now - interval '1 second';

        k := LEAST(remaining, c.max_concurrent_calls - live, c.max_calls_per_second - recent);
        -- Agent campaigns dial only what the pacing controller's last tick granted; the budget is
        -- spent here, under the campaign's row lock, so workers together never exceed it.
        IF c.pacing_mode <> 'agentless' THEN
            k := LEAST(k, c.pacing_budget);
        END IF;
        CONTINUE WHEN k <= 0;

        RETURN QUERY
        WITH picked AS (
            SELECT n.id,
                   -- Suppression is checked here, at dispatch, so a do-not-call entry added after
                   -- the number was queued still wins. Such a number is closed, never dialed.
                   EXISTS (SELECT 1 FROM dialer_suppression s
                            WHERE s.phone = n.phone AND (s.campaign_id IS NULL OR s.campaign_id = c.id))
                       AS suppressed
              FROM dialer_number n
             WHERE n.campaign_id = c.id
               AND n.status IN ('untried', 'retry_wait')
               AND n.next_attempt_at <= p_now
               AND n.attempts < 1 + c.max_retries
             ORDER BY n.priority DESC, n.next_attempt_at, n.id
             LIMIT k
               FOR UPDATE OF n SKIP LOCKED
        ), taken AS (
            UPDATE dialer_number n
               SET status = CASE WHEN picked.suppressed THEN 'dnc' ELSE 'in_progress' END,
                   dials = n.dials + (NOT picked.suppressed)::int,
                   last_outcome = CASE WHEN picked.suppressed THEN 'suppressed' ELSE n.last_outcome END,
                   updated_at = p_now
              FROM picked
             WHERE n.id = picked.id
            RETURNING n.*, picked.suppressed
        ), closed AS (
            INSERT INTO dialer_webhook_event (campaign_id, type, payload, created_at, next_attempt_at)
            SELECT c.id, 'number.finished',
                   jsonb_build_object(
                       'campaign', jsonb_build_object('id', c.id, 'name', c.name),
                       'number', jsonb_build_object('id', t.id, 'phone', t.phone, 'status', 'dnc',
                                                    'attempts', t.attempts, 'last_outcome', 'suppressed',
                                                    'payload', t.payload),
                       'attempt', NULL),
                   p_now, p_now
              FROM taken t
             WHERE t.suppressed AND c.webhook_url IS NOT NULL
        ), ins AS (
            INSERT INTO dialer_attempt AS a
                   (id, number_id, campaign_id, attempt_no, worker_id, provider, state, claimed_at, deadline_at)
            SELECT gen_random_uuid(), t.id, c.id, t.dials, p_worker, c.provider, 'dialing', p_now,
                   -- Covers the start request and the ring: acceptance only records the call id.
                   p_now + make_interval(secs => p_dial_timeout_seconds + c.ring_timeout_seconds)
              FROM taken t
             WHERE NOT t.suppressed
            RETURNING a.id, a.number_id, a.attempt_no
        )
        SELECT ins.id, ins.number_id, c.id, c.name, ins.attempt_no, t.phone, coalesce(t.caller_id, c.caller_id),
               t.dtmf, c.ring_timeout_seconds, c.provider, t.payload
          FROM ins JOIN taken t ON t.id = ins.number_id;

        GET DIAGNOSTICS got = ROW_COUNT;
        remaining := remaining - got;
        IF got > 0 THEN
            UPDATE dialer_campaign
               SET last_claimed_at = p_now,
                   pacing_budget = CASE WHEN pacing_mode = 'agentless' THEN pacing_budget
                                        ELSE greatest(pacing_budget - got, 0) END
             WHERE id = c.id;
        END IF;
    END LOOP;
END;
$$;
