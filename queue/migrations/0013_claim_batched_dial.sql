-- A cheaper claim, same rules and signature (pods on the previous version claim through it too).
--
-- 1. In steady state a claim takes a few numbers from each of several campaigns (each is at its
--    concurrency cap and only the calls that ended since free slots), and it ran the
--    update-and-insert that dials once per campaign. That statement costs about 0.4 ms to set up
--    whatever its row count (seven indexes on dialer_attempt, five on dialer_number, CHECKs and
--    foreign keys), so a claim of 50 from 8 campaigns took 5.8 ms against 2.5 ms from one
--    campaign (PostgreSQL 15, this machine). The numbers each campaign's last round judged
--    dialable are now dialed by one statement after the walk, and the campaigns' last_claimed_at
--    and pacing budgets are written by one statement. Not with a per-phone cap set: the caps read
--    every campaign's calls of a phone, so there each round is still dialed before the next
--    campaign is judged.
-- 2. The abandon lockout looked up each candidate's recent calls whenever the campaign had a
--    lockout (the default: 72 h), though almost no phone has an abandoned call. One probe of a new
--    partial index on abandoned_at now tells whether any abandonment is recent enough to hold
--    anything back; only then does the per-number look-up run (-18% on a claim of 50).
-- 3. dialer_record_outcomes never scans dialer_attempt sequentially (below).

CREATE INDEX dialer_attempt_abandoned_idx ON dialer_attempt (abandoned_at) WHERE abandoned_at IS NOT NULL;

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
    taken_c   integer;
    held      integer;
    rounds    integer;
    ok_ids    bigint[];
    cap_day   integer;
    cap_life  integer;
    locks_left integer;  -- phone locks this claim may still take; NULL: no cap set, no locks
    locked_ids bigint[]; -- this round's candidates whose phone lock is held; NULL: no cap set
    acct_rate  double precision;  -- the campaign's provider account's calls per second; NULL: no limit
    acct_locked text[] := '{}';    -- limited accounts whose row this claim holds
    acct_room  integer;
    last_abandon timestamptz;     -- the latest abandonment anywhere: most claims need no lockout look-up
    lockout_live boolean;         -- this campaign's abandon lockout may hold some number back
    defer_ids  bigint[] := '{}';  -- numbers judged dialable, dialed together by one statement at the end
    camp_ids   bigint[] := '{}';  -- campaigns that dial in this claim, and how many each
    camp_taken integer[] := '{}';
BEGIN
    SELECT cc.max_attempts_per_24h, cc.max_attempts_lifetime INTO cap_day, cap_life FROM dialer_compliance cc;
    -- The caps count a phone's calls through every campaign, and the campaign row lock does not
    -- serialise two campaigns: with a cap set, a number is judged only under an advisory lock on its
    -- phone. Each is a shared lock-table entry held to commit, so a claim takes at most its batch or
    -- max_locks_per_transaction (its share of that table), whichever is larger; numbers past that
    -- wait for the next claim rather than the claim failing "out of shared memory" on every retry.
    IF cap_day IS NOT NULL OR cap_life IS NOT NULL THEN
        locks_left := greatest(p_limit, current_setting('max_locks_per_transaction')::integer);
    END IF;
    -- One probe of a partial index, so the per-number lockout look-up below runs only while an
    -- abandonment is recent enough to hold something back (abandonments are rare: agent campaigns
    -- keep them under 3% of answered calls; agentless ones have none).
    SELECT max(a.abandoned_at) INTO last_abandon FROM dialer_attempt a WHERE a.abandoned_at IS NOT NULL;
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
        EXIT WHEN locks_left <= 0;  -- NULL (no cap set): never
        -- Checked here, not in the cursor: the cursor's rows are fetched (and locked) lazily, so
        -- a claim that fills its batch from the first campaigns never probes the others. The live
        -- count goes first: in steady state most campaigns sit at their cap (outcomes free slots
        -- one by one) and a claim walks them all, so skipping the due probe there halves a walk.
        SELECT count(*) INTO live FROM dialer_attempt a
         WHERE a.campaign_id = c.id AND a.state <> 'ended';
        CONTINUE WHEN live >= c.max_concurrent_calls;
        CONTINUE WHEN NOT EXISTS (SELECT 1 FROM dialer_number n
                                   WHERE n.campaign_id = c.id AND n.status IN ('untried', 'retry_wait')
                                     AND n.next_attempt_at <= p_now);
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
        -- The provider account's rate holds across its campaigns and every worker: it is spent
        -- like the campaign's, under a lock on the account's row (a claim that finds it held skips
        -- the account's campaigns: the holder is dialing for it), against the starts each claim
        -- logged for the account. Below one call per second the window widens: 0.5/s is one
        -- start in any 2 s.
        SELECT pa.max_calls_per_second INTO acct_rate FROM dialer_provider_account pa WHERE pa.name = c.provider;
        IF acct_rate IS NOT NULL AND k > 0 THEN
            IF NOT c.provider = ANY (acct_locked) THEN
                PERFORM 1 FROM dialer_provider_account pa WHERE pa.name = c.provider FOR UPDATE SKIP LOCKED;
                CONTINUE WHEN NOT FOUND;
                acct_locked := acct_locked || c.provider;
            END IF;
            SELECT greatest(floor(acct_rate), 1)::integer - coalesce(sum(s.starts), 0)::integer INTO acct_room
              FROM dialer_provider_start s
             WHERE s.provider = c.provider
               AND s.claimed_at > p_now - make_interval(secs => greatest(1.0, 1.0 / acct_rate));
            k := LEAST(k, acct_room);
        END IF;
        CONTINUE WHEN k <= 0;
        lockout_live := c.abandon_lockout_seconds > 0
                        AND last_abandon > p_now - make_interval(secs => c.abandon_lockout_seconds);

        taken_c := 0;
        rounds := 0;
        LOOP
            rounds := rounds + 1;
            IF locks_left IS NOT NULL THEN
                EXIT WHEN locks_left <= 0;
                -- The phone locks, in a statement of their own: the judging statement below then
                -- takes a fresh snapshot (READ COMMITTED), which sees every attempt committed by
                -- the claim that held a lock before us; a history read in the statement that
                -- takes the lock would use a snapshot from before that commit. Try-locks: a phone
                -- another claim is judging is skipped (no waits, no deadlocks; a hash collision
                -- only skips a number once). Same candidates and limit as the judging statement;
                -- a number skipped here stays row-locked by this claim, unjudged, until commit.
                SELECT coalesce(array_agg(l.id), '{}') INTO locked_ids
                  FROM (SELECT q.id
                          FROM (SELECT n.id, n.phone
                                  FROM dialer_number n
                                 WHERE n.campaign_id = c.id
                                   AND n.status IN ('untried', 'retry_wait')
                                   AND n.next_attempt_at <= p_now
                                   AND n.attempts < 1 + c.max_retries
                                 ORDER BY n.priority DESC, n.next_attempt_at, n.id
                                 -- Keeps the try-lock out of this subquery: it runs above the row
                                 -- lock and the limit, so only for candidates that will be judged.
                                 OFFSET 0
                                   FOR UPDATE OF n SKIP LOCKED) q
                         WHERE pg_try_advisory_xact_lock(hashtextextended(q.phone, 1885892462))
                         LIMIT least(CASE WHEN rounds = 1 THEN k ELSE greatest(k, p_limit) END, locks_left)) l;
                locks_left := locks_left - cardinality(locked_ids);
                EXIT WHEN cardinality(locked_ids) = 0;
            END IF;
            WITH cand AS (
                SELECT n.id, n.phone, n.callee_zones, n.priority, n.next_attempt_at, n.attempts, n.payload
                  FROM dialer_number n
                 WHERE n.campaign_id = c.id
                   AND n.status IN ('untried', 'retry_wait')
                   AND n.next_attempt_at <= p_now
                   AND n.attempts < 1 + c.max_retries
                   -- With a cap set, only the rows whose phone lock is held (above). With none,
                   -- locked_ids is NULL and this folds away: the plan is the one without caps.
                   -- array_position, not = ANY: = ANY is estimated as selective, which tipped the
                   -- plan cache to a generic plan for the no-cap claim too (measured).
                   AND (locked_ids IS NULL OR array_position(locked_ids, n.id) IS NOT NULL)
                 ORDER BY n.priority DESC, n.next_attempt_at, n.id
                 -- The first round judges (and locks) only the k it may dial: in the common case
                 -- nothing is held and judging more only burns the gate checks and keeps rows
                 -- from other workers. Once gates hold numbers back (the callee's night), later
                 -- rounds judge whole batches, so a rate-capped campaign still clears them p_limit
                 -- at a time.
                 LIMIT CASE WHEN rounds = 1 THEN k ELSE greatest(k, p_limit) END
                   FOR UPDATE OF n SKIP LOCKED
            ), judged AS (
                SELECT cand.*,
                       -- Suppression is checked here, at dispatch, so a do-not-call entry added
                       -- after the number was queued still wins. Such a number is closed.
                       EXISTS (SELECT 1 FROM dialer_suppression s
                                WHERE s.phone = cand.phone AND (s.campaign_id IS NULL OR s.campaign_id = c.id))
                           AS suppressed,
                       -- A call in flight counts (it records its attempt only when it ends), as
                       -- in the 24 h count below: otherwise a second campaign dials past the cap.
                       cap_life IS NOT NULL
                           AND (SELECT sum(n2.attempts) + count(*) FILTER (WHERE n2.status = 'in_progress')
                                  FROM dialer_number n2 WHERE n2.phone = cand.phone) >= cap_life
                           AS capped_for_life,
                       hist.abandoned_at + make_interval(secs => c.abandon_lockout_seconds) AS lockout_until,
                       -- The 24 h window frees up when the oldest call that keeps it full turns 24 h old.
                       CASE WHEN hist.day_n >= cap_day
                            THEN hist.day_at[hist.day_n - cap_day + 1] + interval '24 hours' END AS cap_until,
                       win.next_open
                  FROM cand
                  LEFT JOIN LATERAL (
                        SELECT max(a.abandoned_at) FILTER (WHERE c.abandon_lockout_seconds > 0) AS abandoned_at,
                               count(*) FILTER (WHERE a.claimed_at > p_now - interval '24 hours'
                                                  AND a.consumed_attempt IS NOT FALSE) AS day_n,
                               array_agg(a.claimed_at ORDER BY a.claimed_at)
                                   FILTER (WHERE a.claimed_at > p_now - interval '24 hours'
                                             AND a.consumed_attempt IS NOT FALSE) AS day_at
                          FROM dialer_number n2
                          JOIN dialer_attempt a ON a.number_id = n2.id
                         WHERE (cap_day IS NOT NULL OR lockout_live)
                           AND n2.phone = cand.phone
                           AND a.claimed_at > p_now - greatest(interval '24 hours',
                                                               make_interval(secs => c.abandon_lockout_seconds))
                  ) hist ON true
                  LEFT JOIN LATERAL (
                        -- Every zone of the number must be inside the window (the most
                        -- restrictive wins); it opens again at the latest of the zones' next
                        -- window starts, computed in local time and converted back (DST-correct).
                        SELECT max(CASE WHEN w.open THEN p_now
                                        WHEN w.t < w.s THEN (w.d + w.s) AT TIME ZONE w.zone
                                        ELSE (w.d + 1 + w.s) AT TIME ZONE w.zone END) AS next_open
                          FROM (SELECT l.zone, l.lt::date AS d, l.lt::time AS t, s.s,
                                       CASE WHEN s.s < s.e THEN l.lt::time >= s.s AND l.lt::time < s.e
                                            ELSE l.lt::time >= s.s OR l.lt::time < s.e END AS open
                                  FROM unnest(coalesce(cand.callee_zones, ARRAY[c.time_zone])) AS z(zone)
                                  CROSS JOIN LATERAL (SELECT z.zone, p_now AT TIME ZONE z.zone AS lt) l
                                  CROSS JOIN LATERAL (
                                        SELECT time '00:00' + make_interval(mins => c.callee_window_start) AS s,
                                               CASE WHEN c.callee_window_end = 1440 THEN time '24:00'
                                                    ELSE time '00:00' + make_interval(mins => c.callee_window_end)
                                               END AS e) s) w
                         WHERE c.callee_window_start IS NOT NULL
                  ) win ON true
            ), verdict AS (
                SELECT j.*,
                       CASE WHEN j.suppressed THEN 'suppressed'
                            WHEN j.capped_for_life THEN 'attempt_cap'
                            WHEN j.lockout_until > p_now THEN 'abandon_lockout'
                            WHEN j.cap_until > p_now THEN 'attempt_cap'
                            WHEN j.next_open > p_now THEN 'callee_window'
                       END AS reason,
                       -- Straight to when every holding gate is open; the next claim judges again.
                       greatest(j.lockout_until, j.cap_until, j.next_open) AS hold_until
                  FROM judged j
            ), closed AS (
                UPDATE dialer_number n
                   SET status = CASE WHEN v.suppressed THEN 'dnc' ELSE 'failed' END,
                       last_outcome = v.reason,
                       held_reason = NULL,
                       updated_at = p_now
                  FROM verdict v
                 WHERE n.id = v.id AND (v.suppressed OR v.capped_for_life)
                RETURNING n.id, n.phone, n.status, n.attempts, n.last_outcome, n.payload
            ), closed_events AS (
                INSERT INTO dialer_webhook_event (campaign_id, type, payload, created_at, next_attempt_at)
                SELECT c.id, 'number.finished',
                       jsonb_build_object(
                           'campaign', jsonb_build_object('id', c.id, 'name', c.name),
                           'number', jsonb_build_object('id', x.id, 'phone', x.phone, 'status', x.status,
                                                        'attempts', x.attempts, 'last_outcome', x.last_outcome,
                                                        'payload', x.payload),
                           'attempt', NULL),
                       p_now, p_now
                  FROM closed x
                 WHERE c.webhook_url IS NOT NULL
            ), held_rows AS (
                UPDATE dialer_number n
                   SET next_attempt_at = v.hold_until, held_reason = v.reason, updated_at = p_now
                  FROM verdict v
                 WHERE n.id = v.id AND v.reason IS NOT NULL AND NOT (v.suppressed OR v.capped_for_life)
                RETURNING n.id
            )
            SELECT array_agg(v.id ORDER BY v.priority DESC, v.next_attempt_at, v.id) FILTER (WHERE v.reason IS NULL),
                   count(*) FILTER (WHERE v.reason IS NOT NULL)
              INTO ok_ids, held
              FROM verdict v;

            -- The common case (no per-phone cap, and this campaign's last round) is dialed by one
            -- statement for the whole claim, after the walk: the update-and-insert costs ~0.4 ms to
            -- set up per run (seven indexes, constraints, foreign keys) whatever its row count, and a
            -- claim in steady state takes a few numbers from each of several campaigns. Nothing
            -- later in the walk depends on these rows without a cap: the caps are what read other
            -- campaigns' calls of a phone, so with a cap set each round is dialed at once as before.
            got := least(coalesce(cardinality(ok_ids), 0), k);
            IF locks_left IS NULL AND (held = 0 OR got >= k OR rounds >= 4) THEN
                defer_ids := defer_ids || ok_ids[1:k];
            ELSE
                RETURN QUERY
                WITH taken AS (
                    UPDATE dialer_number n
                       SET status = 'in_progress', dials = n.dials + 1, held_reason = NULL, updated_at = p_now
                      FROM unnest(ok_ids[1:k]) AS p(id)
                     WHERE n.id = p.id
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
            END IF;
            remaining := remaining - got;
            taken_c := taken_c + got;
            k := k - got;
            -- Another batch only while gates held numbers back and capacity is left, bounded so one
            -- claim never walks a whole night's backlog.
            EXIT WHEN held = 0 OR k <= 0 OR rounds >= 4;
        END LOOP;

        IF taken_c > 0 THEN
            camp_ids := camp_ids || c.id;
            camp_taken := camp_taken || taken_c;
            -- At once, not deferred: the next campaign of the same account reads this log.
            IF acct_rate IS NOT NULL THEN
                INSERT INTO dialer_provider_start (provider, claimed_at, starts) VALUES (c.provider, p_now, taken_c);
            END IF;
        END IF;
    END LOOP;

    IF cardinality(defer_ids) > 0 THEN
        RETURN QUERY
        WITH taken AS (
            UPDATE dialer_number n
               SET status = 'in_progress', dials = n.dials + 1, held_reason = NULL, updated_at = p_now
              FROM unnest(defer_ids) AS p(id)
             WHERE n.id = p.id
            RETURNING n.*
        ), ins AS (
            INSERT INTO dialer_attempt AS a
                   (id, number_id, campaign_id, attempt_no, worker_id, provider, state, claimed_at, deadline_at)
            SELECT gen_random_uuid(), t.id, cp.id, t.dials, p_worker, cp.provider, 'dialing', p_now,
                   p_now + make_interval(secs => p_dial_timeout_seconds + cp.ring_timeout_seconds)
              FROM taken t JOIN dialer_campaign cp ON cp.id = t.campaign_id
            RETURNING a.id, a.number_id, a.attempt_no
        )
        SELECT ins.id, ins.number_id, cp.id, cp.name, ins.attempt_no, t.phone, coalesce(t.caller_id, cp.caller_id),
               t.dtmf, cp.ring_timeout_seconds, cp.provider, t.payload
          FROM ins JOIN taken t ON t.id = ins.number_id JOIN dialer_campaign cp ON cp.id = t.campaign_id;
    END IF;
    IF cardinality(camp_ids) > 0 THEN
        UPDATE dialer_campaign cp
           SET last_claimed_at = p_now,
               pacing_budget = CASE WHEN cp.pacing_mode = 'agentless' THEN cp.pacing_budget
                                    ELSE greatest(cp.pacing_budget - u.n, 0) END
          FROM unnest(camp_ids, camp_taken) AS u(id, n)
         WHERE cp.id = u.id;
    END IF;
END;
$$;

-- Every statement in it finds rows by key; a sequential scan is never the right plan. The plans are
-- cached per connection, costed with the statistics of when they were made: made while
-- dialer_attempt was small (a new database, or before autovacuum's first ANALYZE of a fast-growing
-- table), they scanned the whole attempt table three times per flush, and kept doing so as it grew
-- (100,000 attempts in a minute: 6 times slower per outcome by the end).
ALTER FUNCTION dialer_record_outcomes(uuid[], text[], boolean[], boolean[], text[], timestamptz[], timestamptz[], double precision[],
                                    integer[], text[], text[], integer[], text[], text[], timestamptz, integer)
    SET enable_seqscan = off;
