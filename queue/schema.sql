-- The whole schema as it stands after every migration in migrations/ (a test replays them and
-- compares catalogs). Read this file to learn the queue; change it only together with a new
-- numbered migration.
--
-- The dialer queue. Postgres is the single source of truth: every pod is stateless, and every
-- invariant that a transaction can enforce is enforced here rather than in worker memory.

CREATE TABLE dialer_campaign (
    id                        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name                      text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 200),
    status                    text NOT NULL DEFAULT 'created'
                              CHECK (status IN ('created', 'running', 'paused', 'stopped', 'finished')),
    provider                  text NOT NULL DEFAULT 'simulator' CHECK (length(provider) BETWEEN 1 AND 64),
    caller_id                 text CHECK (caller_id ~ '^\+[1-9][0-9]{6,14}$'),
    ring_timeout_seconds      integer NOT NULL DEFAULT 30 CHECK (ring_timeout_seconds BETWEEN 5 AND 300),
    retry_wait_seconds        integer NOT NULL DEFAULT 600 CHECK (retry_wait_seconds BETWEEN 0 AND 2592000),
    max_retries               integer NOT NULL DEFAULT 2 CHECK (max_retries BETWEEN 0 AND 100),
    max_concurrent_calls      integer NOT NULL DEFAULT 10 CHECK (max_concurrent_calls BETWEEN 1 AND 100000),
    max_calls_per_second      integer NOT NULL DEFAULT 5 CHECK (max_calls_per_second BETWEEN 1 AND 10000),
    max_call_duration_seconds integer NOT NULL DEFAULT 3600 CHECK (max_call_duration_seconds BETWEEN 10 AND 86400),
    starts_at                 timestamptz,
    ends_at                   timestamptz,
    time_zone                 text NOT NULL DEFAULT 'UTC',
    business_hours            jsonb,
    -- The business-hours window in force, computed by scheduler.hours (DST-correct, in Python) and
    -- checked by the claim against the injected clock. A campaign whose window has not been computed,
    -- or has lapsed, is simply not dispatchable until a worker refreshes it: closed is the safe default.
    window_opens_at           timestamptz,
    window_closes_at          timestamptz,
    last_claimed_at           timestamptz,
    status_reason             text,
    created_at                timestamptz NOT NULL DEFAULT now(),
    updated_at                timestamptz NOT NULL DEFAULT now(),
    -- Outcome webhooks to the upstream system (events go through dialer_webhook_event).
    webhook_url               text CHECK (webhook_url ~ '^https?://[^\s]+$' AND length(webhook_url) <= 2000),
    webhook_attempt_events    boolean NOT NULL DEFAULT false,
    -- Pacing (scheduler/pacing.py): agentless keeps the fixed caps; progressive and predictive
    -- dial within pacing_budget, which the controller's tick writes and the claim spends.
    pacing_mode               text NOT NULL DEFAULT 'agentless'
                              CHECK (pacing_mode IN ('agentless', 'progressive', 'predictive')),
    pacing_settings           jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(pacing_settings) = 'object'),
    agents_logged_in          integer NOT NULL DEFAULT 0 CHECK (agents_logged_in BETWEEN 0 AND 100000),
    pacing_state              jsonb,
    pacing_budget             integer NOT NULL DEFAULT 0 CHECK (pacing_budget >= 0),
    pacing_ticked_at          timestamptz,
    -- The tick's bookkeeping (events of recent attempts already fed, occupancy and hit counters)
    -- and its last decision, for GET /v1/campaigns/{id}/pacing.
    pacing_seen               jsonb,
    pacing_decision           jsonb,
    -- Compliance (issue 6). The callee-local calling window in minutes after local midnight (both
    -- NULL: off; end at or before start crosses midnight), the abandoned-call lockout, the
    -- answering-machine policy, and CALLR Sendr-style auto-stop conditions with their counters.
    callee_window_start       integer DEFAULT 480 CHECK (callee_window_start BETWEEN 0 AND 1439),
    callee_window_end         integer DEFAULT 1260 CHECK (callee_window_end BETWEEN 1 AND 1440),
    abandon_lockout_seconds   integer NOT NULL DEFAULT 259200 CHECK (abandon_lockout_seconds BETWEEN 0 AND 31536000),
    amd_policy                text NOT NULL DEFAULT 'retry' CHECK (amd_policy IN ('retry', 'final')),
    auto_stop_conditions      jsonb CHECK (auto_stop_conditions IS NULL OR jsonb_typeof(auto_stop_conditions) = 'object'),
    auto_stop_counts          jsonb NOT NULL DEFAULT '{}'::jsonb,
    CONSTRAINT dialer_campaign_callee_window_check
        CHECK ((callee_window_start IS NULL) = (callee_window_end IS NULL) AND callee_window_start <> callee_window_end),
    CHECK (ends_at IS NULL OR starts_at IS NULL OR ends_at > starts_at),
    CHECK (window_closes_at IS NULL OR window_closes_at > window_opens_at)
);

CREATE TABLE dialer_number (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    campaign_id     bigint NOT NULL REFERENCES dialer_campaign (id) ON DELETE CASCADE,
    phone           text NOT NULL CHECK (phone ~ '^\+[1-9][0-9]{6,14}$'),
    caller_id       text CHECK (caller_id ~ '^\+[1-9][0-9]{6,14}$'),
    dtmf            text CHECK (dtmf ~ '^[0-9#*Ww]{1,64}$'),
    priority        integer NOT NULL DEFAULT 0 CHECK (priority BETWEEN -1000 AND 1000),
    payload         jsonb,
    status          text NOT NULL DEFAULT 'untried'
                    CHECK (status IN ('untried', 'in_progress', 'retry_wait', 'completed', 'failed', 'dnc')),
    -- attempts = dials that consumed an attempt; dials = every dial, including provider errors
    -- that never reached the network (those do not count against max_retries).
    attempts        integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    dials           integer NOT NULL DEFAULT 0 CHECK (dials >= attempts),
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_outcome    text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    -- The callee's zones from the number (dialer_callee_zones); NULL when unknown: the campaign's
    -- zone applies. held_reason: the gate that last held the number back, cleared when dialed.
    callee_zones    text[],
    held_reason     text CHECK (held_reason IN ('callee_window', 'attempt_cap', 'abandon_lockout')),
    -- Idempotent enqueue: the same number twice in one campaign is one work item.
    UNIQUE (campaign_id, phone),
    -- The key an attempt references: its number, and that number's campaign.
    CONSTRAINT dialer_number_id_campaign_key UNIQUE (id, campaign_id)
);

-- The claim reads only queued rows: a partial index keeps its cost flat however many finished rows
-- pile up, and its column order is the claim's ORDER BY so the scan stops after LIMIT rows.
CREATE INDEX dialer_number_due_idx ON dialer_number (campaign_id, priority DESC, next_attempt_at, id)
    WHERE status IN ('untried', 'retry_wait');
-- Phone lookups across campaigns: suppression at dispatch, the API's phone filters.
CREATE INDEX dialer_number_phone_idx ON dialer_number (phone);
-- Held numbers by campaign and reason for the stats gauge, without reading the whole queue.
CREATE INDEX dialer_number_held_idx ON dialer_number (campaign_id, held_reason, next_attempt_at)
    WHERE held_reason IS NOT NULL AND status IN ('untried', 'retry_wait');

CREATE TABLE dialer_worker (
    id           uuid PRIMARY KEY,
    hostname     text NOT NULL,
    pid          integer NOT NULL,
    started_at   timestamptz NOT NULL,
    heartbeat_at timestamptz NOT NULL,
    draining     boolean NOT NULL DEFAULT false
);

-- One row per dial: the call detail record. Its id is the idempotency key sent to the provider.
CREATE TABLE dialer_attempt (
    id                uuid PRIMARY KEY,
    number_id         bigint NOT NULL,
    -- Its number's campaign (the foreign key below), copied for the per-campaign indexes.
    campaign_id       bigint NOT NULL,
    attempt_no        integer NOT NULL CHECK (attempt_no >= 1),
    worker_id         uuid NOT NULL,
    provider          text NOT NULL,
    -- dialing: claimed, start request possibly sent; ringing: the provider accepted it;
    -- answered: the callee picked up; ended: the outcome is recorded. Forward only.
    state             text NOT NULL DEFAULT 'dialing'
                      CHECK (state IN ('dialing', 'ringing', 'answered', 'ended')),
    provider_call_id  text,
    claimed_at        timestamptz NOT NULL,
    answered_at       timestamptz,
    ended_at          timestamptz,
    -- When the sweeper must look at a live attempt: start-request timeout while dialing, then
    -- ring timeout + maximum call duration + grace once ringing. Nothing stays live forever.
    deadline_at       timestamptz NOT NULL,
    duration_seconds  double precision CHECK (duration_seconds >= 0),
    billsec           integer CHECK (billsec >= 0),
    raw_status        text,
    raw_cause         text,
    sip_code          integer,
    outcome           text CHECK (outcome IN ('answered_human', 'answered_machine', 'answered_fax', 'busy',
                          'no_answer', 'rejected', 'canceled', 'congestion', 'invalid_number', 'blocked',
                          'account_error', 'provider_error', 'unknown')),
    consumed_attempt  boolean,
    decision          text CHECK (decision IN ('final', 'retry', 'exhausted', 'requeue')),
    next_attempt_at   timestamptz,
    -- The keys the callee pressed, as the provider reports them (auto-stop per key).
    dtmf_pressed      text CHECK (length(dtmf_pressed) <= 200),
    -- Agent campaigns: an answered call is bridged to a free agent or abandoned after waiting
    -- abandon_after_seconds; a bridged call's agent is released at its end plus wrap-up.
    bridged_at        timestamptz,
    abandoned_at      timestamptz,
    agent_released_at timestamptz,
    CHECK ((state = 'ended') = (outcome IS NOT NULL AND ended_at IS NOT NULL AND decision IS NOT NULL)),
    CONSTRAINT dialer_attempt_bridge_check CHECK (
        (bridged_at IS NULL OR abandoned_at IS NULL)
        AND (answered_at IS NOT NULL OR (bridged_at IS NULL AND abandoned_at IS NULL))
        AND (agent_released_at IS NULL OR (bridged_at IS NOT NULL AND agent_released_at >= bridged_at))),
    -- One check per dial instead of one for the number and one for the campaign; deleting a
    -- campaign removes its attempts through its numbers.
    CONSTRAINT dialer_attempt_number_fkey FOREIGN KEY (number_id, campaign_id)
        REFERENCES dialer_number (id, campaign_id) ON DELETE CASCADE
);

-- Invariant 1: a number never has two live attempts. The database refuses the second one, so no
-- interleaving of workers, sweepers and callbacks can ring a person twice at once.
CREATE UNIQUE INDEX dialer_attempt_one_live_per_number ON dialer_attempt (number_id)
    WHERE state <> 'ended';
-- Live calls per campaign, counted inside the claim under the campaign's row lock.
CREATE INDEX dialer_attempt_live_idx ON dialer_attempt (campaign_id) WHERE state <> 'ended';
-- Starts in the last second, counted inside the claim (calls-per-second cap).
CREATE INDEX dialer_attempt_claimed_idx ON dialer_attempt (campaign_id, claimed_at);
CREATE INDEX dialer_attempt_deadline_idx ON dialer_attempt (deadline_at) WHERE state <> 'ended';
-- By number and start: the per-phone gates read only the last 24 h / lockout period of a phone.
CREATE INDEX dialer_attempt_number_claimed_idx ON dialer_attempt (number_id, claimed_at);

-- Busy agents of a campaign: bridged and not released. Released rows sort before the open ones,
-- so "released after now or not at all" reads only the busy tail, however long the history.
CREATE INDEX dialer_attempt_agent_busy_idx ON dialer_attempt (campaign_id, agent_released_at)
    WHERE bridged_at IS NOT NULL;
-- The latest abandonment, read once per claim: the per-number lockout look-up runs only while one
-- is recent enough to hold a number back.
CREATE INDEX dialer_attempt_abandoned_idx ON dialer_attempt (abandoned_at) WHERE abandoned_at IS NOT NULL;

-- An answered call of an agent campaign that ends: a bridged one frees its agent after wrap-up; one
-- that was never bridged but stayed on the line past the grace is abandoned. In a trigger rather
-- than in dialer_record_outcomes so every path that ends an attempt (callbacks, the sweeper, CDR
-- imports) keeps the agent count right. The WHEN clause keeps it off unanswered calls entirely.
CREATE FUNCTION dialer_attempt_agent_end() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    s jsonb;
    grace interval;
BEGIN
    SELECT cp.pacing_settings INTO s FROM dialer_campaign cp
     WHERE cp.id = NEW.campaign_id AND cp.pacing_mode <> 'agentless';
    IF NOT FOUND THEN
        RETURN NEW;
    END IF;
    IF NEW.bridged_at IS NOT NULL THEN
        -- The defaults are scheduler.pacing.PacingSettings' (a test holds them together).
        NEW.agent_released_at := greatest(NEW.ended_at, NEW.bridged_at)
            + make_interval(secs => coalesce((s ->> 'wrap_up_seconds')::double precision, 0.0));
    ELSIF NEW.outcome = 'answered_human' THEN
        grace := make_interval(secs => coalesce((s ->> 'abandon_after_seconds')::double precision, 2.0));
        IF NEW.ended_at >= NEW.answered_at + grace THEN
            NEW.abandoned_at := NEW.answered_at + grace;
        END IF;
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER dialer_attempt_agent_end BEFORE UPDATE ON dialer_attempt
    FOR EACH ROW
    WHEN (NEW.state = 'ended' AND OLD.state <> 'ended' AND NEW.answered_at IS NOT NULL
          AND NEW.abandoned_at IS NULL)
    EXECUTE FUNCTION dialer_attempt_agent_end();

-- Bridge a campaign's waiting answered calls to free agents, oldest answer first, and abandon the
-- ones that have waited past the grace. Returns what changed (the worker hangs up abandoned calls).
--
-- Atomic across workers: the campaign row is locked first (FOR UPDATE, blocking: an answer must not
-- be skipped), then busy agents are counted in a fresh statement that sees every bridge the previous
-- lock holder committed. So however many workers bridge at once, bridged-and-unreleased calls never
-- exceed agents_logged_in at the moment of bridging.
CREATE FUNCTION dialer_bridge(p_campaign bigint, p_now timestamptz)
RETURNS TABLE (attempt_id uuid, action text, provider text, provider_call_id text)
LANGUAGE plpgsql AS $$
DECLARE
    c     record;
    busy  integer;
    grace interval;
BEGIN
    SELECT cp.agents_logged_in, cp.pacing_mode, cp.pacing_settings INTO c
      FROM dialer_campaign cp WHERE cp.id = p_campaign FOR UPDATE;
    IF NOT FOUND OR c.pacing_mode = 'agentless' THEN
        RETURN;
    END IF;
    grace := make_interval(secs => coalesce((c.pacing_settings ->> 'abandon_after_seconds')::double precision, 2.0));
    SELECT count(*) INTO busy FROM dialer_attempt a
     WHERE a.campaign_id = p_campaign AND a.bridged_at IS NOT NULL
       AND (a.agent_released_at IS NULL OR a.agent_released_at > p_now);

    RETURN QUERY
    WITH waiting AS (
        -- Row locks: an outcome being recorded for one of these wins or waits; after it commits the
        -- row is re-checked and, ended, drops out (a hung-up call is never bridged).
        SELECT a.id, a.answered_at, a.answered_at + grace <= p_now AS expired
          FROM dialer_attempt a
         WHERE a.campaign_id = p_campaign AND a.state = 'answered'
           AND a.bridged_at IS NULL AND a.abandoned_at IS NULL
           FOR UPDATE
    ), ranked AS (
        SELECT w.id, w.answered_at, w.expired,
               row_number() OVER (PARTITION BY w.expired ORDER BY w.answered_at, w.id) AS k
          FROM waiting w
    ), changed AS (
        UPDATE dialer_attempt a
           SET bridged_at = CASE WHEN r.expired THEN NULL ELSE greatest(p_now, r.answered_at) END,
               -- The moment it became abandoned, not the moment a worker noticed.
               abandoned_at = CASE WHEN r.expired THEN r.answered_at + grace END
          FROM ranked r
         WHERE a.id = r.id AND (r.expired OR r.k <= c.agents_logged_in - busy)
        RETURNING a.id, r.expired, a.provider, a.provider_call_id
    )
    SELECT ch.id, CASE WHEN ch.expired THEN 'abandoned' ELSE 'bridged' END, ch.provider, ch.provider_call_id
      FROM changed ch;
END;
$$;

-- Claimed and finished rows churn constantly: vacuum them early so the hot indexes stay small.
ALTER TABLE dialer_number SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02);
-- fillfactor 40: room on each page for its rows' acceptance (the call id), so that update stays
-- on the page and writes no index entry (migration 0014).
ALTER TABLE dialer_attempt SET (autovacuum_vacuum_scale_factor = 0.05, fillfactor = 40);

-- Wake idle workers at once when work appears (enqueue, resume) or capacity frees (an outcome).
-- Statement-level, so a COPY of a million rows sends one notification, not a million.
CREATE FUNCTION dialer_notify_due() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('dialer_due', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER dialer_number_notify AFTER INSERT ON dialer_number
    FOR EACH STATEMENT EXECUTE FUNCTION dialer_notify_due();

-- Provider accounts' call rates (DIALER_PROVIDERS max_calls_per_second), written by every worker
-- at start-up: the claim spends an account's rate across all its campaigns and workers, as it does
-- a campaign's. NULL: no limit. A rate under 0.01/s (one call in 100 s) is refused by the loader.
CREATE TABLE dialer_provider_account (
    name                 text PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 200),
    max_calls_per_second double precision CHECK (max_calls_per_second >= 0.01),
    updated_at           timestamptz NOT NULL
);

-- Starts per claim and limited account, the log the claim counts the account's window from.
-- Pruned by the workers' maintenance once older than any window.
CREATE TABLE dialer_provider_start (
    provider   text NOT NULL,
    claimed_at timestamptz NOT NULL,
    starts     integer NOT NULL CHECK (starts > 0)
);
CREATE INDEX dialer_provider_start_idx ON dialer_provider_start (provider, claimed_at);

-- The claim. One call claims up to p_limit attempts across campaigns, honouring every pacing rule
-- at the moment of dispatch:
--   * only running campaigns inside their start/end dates and business-hours window (at p_now);
--   * live attempts < max_concurrent_calls and starts in the last second < max_calls_per_second,
--     summed over all workers; and the provider account's calls per second across its campaigns.
-- Exactness across workers comes from the campaign row lock: a campaign is worked by one claim at
-- a time (SKIP LOCKED: others move on to other campaigns instead of queueing behind it). This is a
-- plpgsql function on purpose: under READ COMMITTED each statement in it takes a fresh snapshot,
-- so the counts below, taken after the lock is granted, see every attempt that the previous
-- holder committed. Counting inside a single SQL statement would use a snapshot taken before the
-- lock wait and could overshoot the caps.
--   * the compliance gates (issue 6): each eligible campaign is worked in two statements under
-- its row lock: the first takes up to p_limit due numbers (FOR UPDATE SKIP
-- LOCKED, claim order) and judges each against the gates, closing suppressed and capped-for-life
-- numbers and rescheduling held ones to when their gate opens; the second dials the first k that
-- passed. Held numbers are neither failed nor charged an attempt. Every gate is an index probe per
-- number: suppression by phone, the phone's attempts in the last 24 h / lockout through
-- (number_id, claimed_at), zones read from the number itself.
--   * the per-phone caps span campaigns, which the campaign row lock does not serialise: with a
-- cap set, a number is judged only under a transaction advisory lock on its phone (try-lock: a
-- phone another claim is judging is skipped), taken in a statement before the judging one, so the
-- history read sees every call the previous holder committed. Calls in flight count against both
-- caps. No cap set: no locks, and the plan is the one without caps.
--   * the numbers each campaign's last round judged dialable are dialed by one statement for the
-- whole claim after the walk (its set-up cost does not depend on its row count); with a per-phone
-- cap set, each round is dialed before the next campaign is judged, since the caps read them.
CREATE FUNCTION dialer_claim(p_worker uuid, p_limit integer, p_now timestamptz, p_dial_timeout_seconds integer,
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

CREATE OR REPLACE FUNCTION dialer_claim(p_worker uuid, p_limit integer, p_now timestamptz,
                                        p_dial_timeout_seconds integer)
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
LANGUAGE sql AS $$
    SELECT * FROM dialer_claim(p_worker, p_limit, p_now, p_dial_timeout_seconds, '{}'::text[]);
$$;

-- Outcomes are applied in batches (one statement per flush, not one per call). Forward only: an
-- attempt already ended is skipped, so duplicate, replayed or out-of-order callbacks change nothing.
-- The retry arithmetic lives here, next to the campaign's settings, so the attempt cap holds
-- whichever worker applies the outcome (scheduler.retry is its executable specification, and a
-- test holds the two together).
CREATE FUNCTION dialer_record_outcomes(
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
-- Every statement in it finds rows by key; a sequential scan is never the right plan. The plans are
-- cached per connection, costed with the statistics of when they were made: made while
-- dialer_attempt was small (a new database, or before autovacuum's first ANALYZE of a fast-growing
-- table), they scanned the whole attempt table three times per flush, and kept doing so as it grew
-- (100,000 attempts in a minute: 6 times slower per outcome by the end).
ALTER FUNCTION dialer_record_outcomes(uuid[], text[], boolean[], boolean[], text[], timestamptz[], timestamptz[], double precision[],
                                    integer[], text[], text[], integer[], text[], text[], timestamptz, integer)
    SET enable_seqscan = off;

-- The signature of the previous version (no pressed keys), kept for pods still running it.
CREATE FUNCTION dialer_record_outcomes(
    p_ids uuid[], p_outcomes text[], p_final boolean[], p_consumes boolean[], p_final_status text[],
    p_answered_at timestamptz[], p_ended_at timestamptz[], p_duration double precision[],
    p_billsec integer[], p_raw_status text[], p_raw_cause text[], p_sip integer[],
    p_provider_call_ids text[], p_now timestamptz, p_requeue_seconds integer)
RETURNS TABLE (attempt_id uuid, campaign text, outcome text, decision text)
LANGUAGE sql AS $$
    SELECT * FROM dialer_record_outcomes(p_ids, p_outcomes, p_final, p_consumes, p_final_status, p_answered_at,
                                         p_ended_at, p_duration, p_billsec, p_raw_status, p_raw_cause, p_sip,
                                         p_provider_call_ids, NULL::text[], p_now, p_requeue_seconds);
$$;

-- Do-not-call. campaign_id NULL = suppressed everywhere.
CREATE TABLE dialer_suppression (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    phone       text NOT NULL CHECK (phone ~ '^\+[1-9][0-9]{6,14}$'),
    campaign_id bigint REFERENCES dialer_campaign (id) ON DELETE CASCADE,
    reason      text CHECK (length(reason) <= 500),
    source      text NOT NULL DEFAULT 'api' CHECK (source IN ('api', 'sql', 'outcome')),
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX dialer_suppression_global_idx ON dialer_suppression (phone) WHERE campaign_id IS NULL;
CREATE UNIQUE INDEX dialer_suppression_campaign_idx ON dialer_suppression (campaign_id, phone)
    WHERE campaign_id IS NOT NULL;

-- Only a SHA-256 of each token is kept: tokens are 256-bit random, so a slow hash adds nothing,
-- and a leaked table cannot be replayed.
CREATE TABLE dialer_api_token (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 200),
    token_hash bytea NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    created_at timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at timestamptz
);

-- Idempotent requests: the first response to a client token is stored and replayed. The request
-- hash refuses a token reused for a different request instead of answering it with a stale result.
CREATE TABLE dialer_api_request (
    scope        text NOT NULL,
    client_token text NOT NULL CHECK (length(client_token) BETWEEN 1 AND 200),
    request_hash bytea NOT NULL,
    response     jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, client_token)
);

-- The outbox: events are written by the same transaction that records the outcome, so an event
-- exists exactly when its outcome does. Delivery is at least once; receivers dedupe on the id.
CREATE TABLE dialer_webhook_event (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    campaign_id     bigint NOT NULL REFERENCES dialer_campaign (id) ON DELETE CASCADE,
    type            text NOT NULL CHECK (type IN ('number.finished', 'attempt.ended')),
    payload         jsonb NOT NULL,
    created_at      timestamptz NOT NULL,
    -- Due time, and while a deliverer holds it, its lease: taking an event pushes this out.
    next_attempt_at timestamptz NOT NULL,
    attempts        integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    delivered_at    timestamptz,
    gave_up_at      timestamptz,
    last_status     integer,
    last_error      text,
    CHECK (delivered_at IS NULL OR gave_up_at IS NULL)
);
CREATE INDEX dialer_webhook_event_pending_idx ON dialer_webhook_event (next_attempt_at)
    WHERE delivered_at IS NULL AND gave_up_at IS NULL;
CREATE INDEX dialer_webhook_event_campaign_idx ON dialer_webhook_event (campaign_id, created_at);

CREATE TABLE dialer_webhook_delivery (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id         uuid NOT NULL REFERENCES dialer_webhook_event (id) ON DELETE CASCADE,
    attempted_at     timestamptz NOT NULL,
    status_code      integer,
    error            text,
    duration_seconds double precision NOT NULL CHECK (duration_seconds >= 0)
);
CREATE INDEX dialer_webhook_delivery_event_idx ON dialer_webhook_delivery (event_id, attempted_at);

-- Phone validity rules for SQL callers, generated from the same phonenumbers metadata the Python
-- ingest path uses (`dialer migrate` refreshes them when the library changes). For a calling code
-- shared by several regions, the first region (by ordinal) whose leading digits match owns the
-- number; regions without leading digits own only numbers valid in them, as in phonenumbers.
CREATE TABLE dialer_phone_rule (
    calling_code text NOT NULL,
    ordinal      integer NOT NULL,
    region       text NOT NULL,
    leading_digits text,
    -- 0 with a NULL pattern: a region that owns numbers by leading digits but has no valid lengths.
    nsn_length   integer NOT NULL,
    pattern      text,
    PRIMARY KEY (calling_code, ordinal, nsn_length)
);
CREATE TABLE dialer_meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);

CREATE FUNCTION dialer_phone_valid(p_phone text) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
DECLARE
    cc   text;
    nsn  text;
    r    record;
BEGIN
    IF p_phone IS NULL OR p_phone !~ '^\+[1-9][0-9]{6,14}$' THEN
        RETURN false;
    END IF;
    SELECT k.cc INTO cc
      FROM (VALUES (substr(p_phone, 2, 1)), (substr(p_phone, 2, 2)), (substr(p_phone, 2, 3))) AS k(cc)
     WHERE EXISTS (SELECT 1 FROM dialer_phone_rule pr WHERE pr.calling_code = k.cc)
     ORDER BY length(k.cc)
     LIMIT 1;
    IF cc IS NULL THEN
        RETURN false;
    END IF;
    nsn := substr(p_phone, 2 + length(cc));
    FOR r IN
        SELECT pr.region, pr.leading_digits,
               bool_or(pr.nsn_length = length(nsn) AND nsn ~ ('^(?:' || pr.pattern || ')$')) AS ok
          FROM dialer_phone_rule pr
         WHERE pr.calling_code = cc
         GROUP BY pr.ordinal, pr.region, pr.leading_digits
         ORDER BY pr.ordinal
    LOOP
        IF r.leading_digits IS NOT NULL THEN
            IF nsn ~ ('^(?:' || r.leading_digits || ')') THEN
                RETURN coalesce(r.ok, false);
            END IF;
        ELSIF r.ok THEN
            RETURN true;
        END IF;
    END LOOP;
    RETURN false;
END;
$$;

-- Per-phone caps hold across every campaign, so they are one setting for the whole database, not
-- a campaign's: two campaigns with different caps would leave "3 calls a day" undefined. One row
-- (or none: no caps). NULL = no cap.
CREATE TABLE dialer_compliance (
    id                    boolean PRIMARY KEY DEFAULT true CHECK (id),
    max_attempts_per_24h  integer CHECK (max_attempts_per_24h >= 1),
    max_attempts_lifetime integer CHECK (max_attempts_lifetime >= 1),
    updated_at            timestamptz NOT NULL DEFAULT now()
);

-- phonenumbers' time-zone data, written by `dialer migrate` (dialer/zones.py) like dialer_phone_rule.
CREATE TABLE dialer_phone_zone (
    prefix text PRIMARY KEY,
    zones  text[] NOT NULL
);
CREATE TABLE dialer_phone_nongeo (
    calling_code text PRIMARY KEY,
    nongeo       text,
    mobile       text,
    fixed        text
);

-- The zones, or NULL when they lie more than 6 h apart at either reference instant (January and July,
-- so DST cannot hide a spread): such zones share no calling window, so "the most restrictive" would
-- never open (a +1 non-geographic number gets 42, Guam to Newfoundland). dialer/zones.py decides
-- the same in Python.
CREATE FUNCTION dialer_zones_placed(p_zones text[]) RETURNS text[]
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN EXISTS (
                    SELECT 1
                      FROM (VALUES (timestamptz '2026-01-15 12:00+00'), (timestamptz '2026-07-15 12:00+00')) AS t(at)
                     CROSS JOIN LATERAL (
                           SELECT max(x.o) - min(x.o) AS spread
                             FROM unnest(p_zones) AS z(zone)
                            CROSS JOIN LATERAL (SELECT (t.at AT TIME ZONE z.zone) - (t.at AT TIME ZONE 'UTC') AS o) x) s
                     WHERE s.spread > interval '6 hours')
                THEN NULL ELSE p_zones END
$$;

-- A number's zones as phonenumbers.timezone.time_zones_for_number gives them (NULL for unknown):
-- non-geographical numbers by calling code, the others by the longest prefix of their digits.
CREATE FUNCTION dialer_callee_zones(p_phone text) RETURNS text[]
LANGUAGE plpgsql STABLE AS $$
DECLARE
    digits text := substr(p_phone, 2);
    g      dialer_phone_nongeo%ROWTYPE;
    nsn    text;
    key    text;
    result text[];
BEGIN
    SELECT * INTO g FROM dialer_phone_nongeo
     WHERE calling_code IN (left(digits, 1), left(digits, 2), left(digits, 3))
     ORDER BY length(calling_code)
     LIMIT 1;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    nsn := substr(digits, 1 + length(g.calling_code));
    key := CASE WHEN nsn ~ ('^(?:' || g.nongeo || ')$')
                  OR (nsn ~ ('^(?:' || g.mobile || ')$') AND NOT coalesce(nsn ~ ('^(?:' || g.fixed || ')$'), false))
                THEN g.calling_code ELSE digits END;
    SELECT z.zones INTO result FROM dialer_phone_zone z
     WHERE z.prefix IN (SELECT left(key, l) FROM generate_series(1, least(length(key), 10)) AS l)
     ORDER BY length(z.prefix) DESC
     LIMIT 1;
    RETURN dialer_zones_placed(result);
END;
$$;

-- The zones a number's calling window is judged in, given the callee's zone as upstream knows it
-- (from the lead's address; NULL when not given). Both the number's zones and that one count, the
-- most restrictive winning, as compliance practice has it when an area code and an address
-- disagree; when together they share no window, upstream's zone alone, since the number only
-- suggests where its owner is (ported, moved, a mobile), and it alone when the number cannot be
-- placed. NULL (the campaign's zone applies) only when neither says anything.
CREATE FUNCTION dialer_number_zones(p_phone text, p_time_zone text) RETURNS text[]
LANGUAGE plpgsql STABLE AS $$
DECLARE
    derived text[] := dialer_callee_zones(p_phone);
BEGIN
    IF p_time_zone IS NULL OR p_time_zone = ANY (derived) THEN
        RETURN derived;
    END IF;
    IF derived IS NULL THEN
        RETURN ARRAY[p_time_zone];
    END IF;
    RETURN coalesce(dialer_zones_placed(derived || p_time_zone), ARRAY[p_time_zone]);
END;
$$;

-- Enqueue from inside an upstream transaction (systems sharing the database). The same rules as
-- the HTTP route: numbers valid per phonenumbers' metadata, at most 10,000 per call, the whole call
-- rejected on any bad item (SQLSTATE 22023, the DETAIL lists every bad item as JSON), duplicates
-- skipped, and an optional client token that makes a repeated call return its first result.
--   SELECT dialer_enqueue('spring-promo', '[{"phone": "+14155550100", "payload": {"crm_id": 7}}]');
CREATE FUNCTION dialer_enqueue(p_campaign text, p_numbers jsonb, p_client_token text DEFAULT NULL,
                               p_now timestamptz DEFAULT now())
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    camp     dialer_campaign%ROWTYPE;
    n_items  integer;
    bad      jsonb;
    added    integer;
    result   jsonb;
    req_hash bytea;
    stored   dialer_api_request%ROWTYPE;
BEGIN
    SELECT * INTO camp FROM dialer_campaign WHERE name = p_campaign;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no campaign named %', p_campaign USING ERRCODE = 'no_data_found';
    END IF;
    IF camp.status = 'stopped' THEN
        RAISE EXCEPTION 'campaign % is stopped', p_campaign USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF jsonb_typeof(p_numbers) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'numbers must be a JSON array' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    n_items := jsonb_array_length(p_numbers);
    IF n_items > 10000 THEN
        RAISE EXCEPTION 'at most 10000 numbers per call, got %', n_items USING ERRCODE = 'program_limit_exceeded';
    END IF;

    IF p_client_token IS NOT NULL THEN
        req_hash := sha256(convert_to(p_numbers::text, 'UTF8'));
        -- A concurrent call with the same token waits here for the first to commit, then replays it.
        INSERT INTO dialer_api_request (scope, client_token, request_hash, response, created_at)
        VALUES ('enqueue:' || camp.id, p_client_token, req_hash, 'null'::jsonb, p_now)
        ON CONFLICT DO NOTHING;
        IF NOT FOUND THEN
            SELECT * INTO stored FROM dialer_api_request
             WHERE scope = 'enqueue:' || camp.id AND client_token = p_client_token;
            IF stored.request_hash <> req_hash THEN
                RAISE EXCEPTION 'client token % was already used for a different request', p_client_token
                      USING ERRCODE = 'unique_violation';
            END IF;
            RETURN stored.response || '{"replayed": true}'::jsonb;
        END IF;
    END IF;

    CREATE TEMPORARY TABLE IF NOT EXISTS dialer_enqueue_items (
        idx integer, phone text, caller_id text, dtmf text, priority integer, payload jsonb, time_zone text,
        error text
    ) ON COMMIT DROP;
    TRUNCATE dialer_enqueue_items;
    INSERT INTO dialer_enqueue_items
    SELECT e.idx - 1,
           CASE jsonb_typeof(e.item) WHEN 'string' THEN e.item #>> '{}' ELSE e.item ->> 'phone' END,
           e.item ->> 'caller_id', e.item ->> 'dtmf',
           CASE WHEN jsonb_typeof(e.item -> 'priority') = 'number'
                     AND (e.item ->> 'priority') ~ '^-?[0-9]{1,4}$' THEN (e.item ->> 'priority')::integer END,
           e.item -> 'payload',
           CASE WHEN jsonb_typeof(e.item -> 'time_zone') = 'string' THEN e.item ->> 'time_zone' END,
           CASE
               WHEN jsonb_typeof(e.item) NOT IN ('string', 'object') THEN 'must be a phone string or an object'
               WHEN jsonb_typeof(e.item) = 'object' AND jsonb_typeof(e.item -> 'phone') IS DISTINCT FROM 'string'
                   THEN 'phone: required string'
               WHEN NOT dialer_phone_valid(CASE jsonb_typeof(e.item) WHEN 'string' THEN e.item #>> '{}'
                                                                     ELSE e.item ->> 'phone' END)
                   THEN 'phone: not a valid E.164 number'
               WHEN jsonb_typeof(e.item) = 'object' AND e.item ? 'caller_id' AND jsonb_typeof(e.item -> 'caller_id') <> 'null'
                    AND NOT dialer_phone_valid(e.item ->> 'caller_id')
                   THEN 'caller_id: not a valid E.164 number'
               WHEN jsonb_typeof(e.item) = 'object' AND e.item ? 'dtmf' AND jsonb_typeof(e.item -> 'dtmf') <> 'null'
                    AND (e.item ->> 'dtmf') !~ '^[0-9#*Ww]{1,64}$'
                   THEN 'dtmf: digits, #, * and W only (1-64)'
               WHEN jsonb_typeof(e.item) = 'object' AND e.item ? 'priority' AND jsonb_typeof(e.item -> 'priority') <> 'null'
                    AND NOT (jsonb_typeof(e.item -> 'priority') = 'number' AND (e.item ->> 'priority') ~ '^-?[0-9]{1,4}$'
                             AND abs((e.item ->> 'priority')::integer) <= 1000)
                   THEN 'priority: an integer between -1000 and 1000'
               WHEN jsonb_typeof(e.item) = 'object' AND e.item ? 'time_zone' AND jsonb_typeof(e.item -> 'time_zone') <> 'null'
                    AND jsonb_typeof(e.item -> 'time_zone') <> 'string'
                   THEN 'time_zone: an IANA time zone name such as America/Chicago'
           END
      FROM jsonb_array_elements(p_numbers) WITH ORDINALITY AS e(item, idx);

    -- pg_timezone_names reads the whole zone database (tens of ms): only when a zone was given.
    IF EXISTS (SELECT 1 FROM dialer_enqueue_items WHERE time_zone IS NOT NULL AND error IS NULL) THEN
        UPDATE dialer_enqueue_items i
           SET error = 'time_zone: unknown time zone ' || to_json(i.time_zone)::text
         WHERE i.time_zone IS NOT NULL AND i.error IS NULL
           AND NOT EXISTS (SELECT 1 FROM pg_timezone_names k WHERE k.name = i.time_zone);
    END IF;

    SELECT jsonb_agg(jsonb_build_object('index', idx, 'error', error) ORDER BY idx) INTO bad
      FROM dialer_enqueue_items WHERE error IS NOT NULL;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'invalid numbers: % of % items rejected', jsonb_array_length(bad), n_items
              USING ERRCODE = 'invalid_parameter_value', DETAIL = bad::text;
    END IF;

    INSERT INTO dialer_number (campaign_id, phone, caller_id, dtmf, priority, payload, next_attempt_at,
                               created_at, updated_at, callee_zones)
    SELECT camp.id, i.phone, i.caller_id, i.dtmf, coalesce(i.priority, 0), i.payload, p_now, p_now, p_now,
           dialer_number_zones(i.phone, i.time_zone)
      FROM dialer_enqueue_items i
     ORDER BY i.idx
    ON CONFLICT (campaign_id, phone) DO NOTHING;
    GET DIAGNOSTICS added = ROW_COUNT;
    IF added > 0 AND camp.status = 'finished' THEN
        UPDATE dialer_campaign SET status = 'running', status_reason = 'numbers added', updated_at = p_now
         WHERE id = camp.id AND status = 'finished';
    END IF;

    result := jsonb_build_object('campaign', camp.name, 'received', n_items, 'added', added,
                                 'duplicates', n_items - added, 'replayed', false);
    IF p_client_token IS NOT NULL THEN
        UPDATE dialer_api_request SET response = result
         WHERE scope = 'enqueue:' || camp.id AND client_token = p_client_token;
    END IF;
    RETURN result;
END;
$$;
