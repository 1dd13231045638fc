-- A callee's time zone from upstream. A CRM usually knows where a lead lives; the number alone
-- does not always say (a ported or moved mobile keeps its area code, a +1 non-geographic number
-- spans Guam to Newfoundland and so fell back to the campaign's zone). dialer_enqueue() accepts an
-- optional "time_zone" per item (a name PostgreSQL knows, else the whole call is rejected like any
-- bad item) and stores the zones dialer_number_zones() combines; numbers already queued keep theirs.
-- The 6-hour spread rule moves out of dialer_callee_zones() into dialer_zones_placed(), unchanged,
-- so the combination can apply it too.

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

CREATE OR REPLACE FUNCTION dialer_callee_zones(p_phone text) RETURNS text[]
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

CREATE OR REPLACE FUNCTION dialer_enqueue(p_campaign text, p_numbers jsonb, p_client_token text DEFAULT NULL,
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
