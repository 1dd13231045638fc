-- Agents and bridging (issue 6). An answered call of a progressive or predictive campaign waits for
-- a free agent; it is bridged to one, or abandoned once it has waited abandon_after_seconds. Agents
-- are counted, not named: busy = attempts bridged and not yet released (call ended + wrap-up), and
-- free = agents_logged_in - busy. Expand only: every new column is nullable, agentless campaigns
-- never touch them.

ALTER TABLE dialer_attempt
    ADD COLUMN bridged_at timestamptz,
    ADD COLUMN abandoned_at timestamptz,
    ADD COLUMN agent_released_at timestamptz,
    ADD CONSTRAINT dialer_attempt_bridge_check CHECK (
        (bridged_at IS NULL OR abandoned_at IS NULL)
        AND (answered_at IS NOT NULL OR (bridged_at IS NULL AND abandoned_at IS NULL))
        AND (agent_released_at IS NULL OR (bridged_at IS NOT NULL AND agent_released_at >= bridged_at)));

ALTER TABLE dialer_campaign
    -- The tick's bookkeeping next to the estimator: which events of recent attempts it has fed
    -- (so none is counted twice) and per-minute occupancy and hit counters.
    ADD COLUMN pacing_seen jsonb,
    -- The last decision and the rates behind it, for GET /v1/campaigns/{id}/pacing.
    ADD COLUMN pacing_decision jsonb;

-- Busy agents of a campaign: bridged and not released. Released rows sort before the open ones,
-- so "released after now or not at all" reads only the busy tail, however long the history.
CREATE INDEX dialer_attempt_agent_busy_idx ON dialer_attempt (campaign_id, agent_released_at)
    WHERE bridged_at IS NOT NULL;

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
