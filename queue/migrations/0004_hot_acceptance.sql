-- The provider's acceptance now only records the call id. Changing no indexed column (state,
-- deadline_at) lets Postgres update the row in place (a HOT update, given free room on the page:
-- fillfactor), instead of writing a new entry into each of the attempt table's six indexes for
-- every dial. The deadline set at claim time therefore covers the ring too; "accepted" is
-- provider_call_id IS NOT NULL.

ALTER TABLE dialer_attempt SET (fillfactor = 80);

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
        CONTINUE WHEN k <= 0;

        RETURN QUERY
        WITH picked AS (
            SELECT n.id
              FROM dialer_number n
             WHERE n.campaign_id = c.id
               AND n.status IN ('untried', 'retry_wait')
               AND n.next_attempt_at <= p_now
               AND n.attempts < 1 + c.max_retries
             ORDER BY n.priority DESC, n.next_attempt_at, n.id
             LIMIT k
               FOR UPDATE SKIP LOCKED
        ), taken AS (
            UPDATE dialer_number n
               SET status = 'in_progress', dials = n.dials + 1, updated_at = p_now
              FROM picked
             WHERE n.id = picked.id
            RETURNING n.*
        ), ins AS (
            INSERT INTO dialer_attempt AS a
                   (id, number_id, campaign_id, attempt_no, worker_id, provider, state, claimed_at, deadline_at)
            SELECT gen_random_uuid(), t.id, c.id, t.dials, p_worker, c.provider, 'dialing', p_now,
                   -- Covers the start request and the ring: acceptance only records the call id.
                   p_now + make_interval(secs => p_dial_timeout_seconds + c.ring_timeout_seconds)
              FROM taken t
            RETURNING a.id, a.number_id, a.attempt_no
        )
        SELECT ins.id, ins.number_id, c.id, c.name, ins.attempt_no, t.phone, coalesce(t.caller_id, c.caller_id),
               t.dtmf, c.ring_timeout_seconds, c.provider, t.payload
          FROM ins JOIN taken t ON t.id = ins.number_id;

        GET DIAGNOSTICS got = ROW_COUNT;
        remaining := remaining - got;
        IF got > 0 THEN
            UPDATE dialer_campaign SET last_claimed_at = p_now WHERE id = c.id;
        END IF;
    END LOOP;
END;
$$;

