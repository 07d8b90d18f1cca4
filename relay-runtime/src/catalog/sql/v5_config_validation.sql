-- Pipeline configs are checked where they are written. The relay stores its key catalog (every
-- key of every backend type and direction, from its typed config structs) in
-- relay_config_keys at each start; the trigger below refuses a config the relay would refuse,
-- with the same message: unknown keys (naming the nearest known one), wrong types, out-of-range
-- values, missing required keys, unknown sink/source types. It runs for every writer: the seed
-- functions, pg_trickle's positional functions and direct INSERT/UPDATE. A config that does not
-- change (enable/disable) is not checked again, so configs stored before stay manageable.

CREATE TABLE IF NOT EXISTS pgtrickle.relay_config_keys (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    catalog jsonb NOT NULL,
    relay_version text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Edit distance between two short strings (characters), for "did you mean".
CREATE OR REPLACE FUNCTION pgtrickle.relay_levenshtein(a text, b text) RETURNS int
LANGUAGE plpgsql IMMUTABLE STRICT AS $fn$
DECLARE
    la int := char_length(a);
    lb int := char_length(b);
    prev int[];
    cur int[];
    i int;
    j int;
BEGIN
    IF la = 0 THEN RETURN lb; END IF;
    IF lb = 0 THEN RETURN la; END IF;
    prev := array(SELECT generate_series(0, lb));
    FOR i IN 1..la LOOP
        cur := array[i];
        FOR j IN 1..lb LOOP
            cur := cur || least(prev[j + 1] + 1, cur[j] + 1,
                                prev[j] + CASE WHEN substr(a, i, 1) = substr(b, j, 1) THEN 0 ELSE 1 END);
        END LOOP;
        prev := cur;
    END LOOP;
    RETURN prev[lb + 1];
END
$fn$;

-- "; did you mean 'x'?" for the candidate nearest to `key`, or ''.
CREATE OR REPLACE FUNCTION pgtrickle.relay_config_did_you_mean(key text, candidates text[]) RETURNS text
LANGUAGE sql IMMUTABLE AS $fn$
    SELECT coalesce((
        SELECT format('; did you mean ''%s''?', c)
          FROM (SELECT c, pgtrickle.relay_levenshtein(lower(key), c) AS d FROM unnest(candidates) AS c) x
         WHERE d <= greatest(char_length(key) / 3, 2)
         ORDER BY d, char_length(c), c COLLATE "C"
         LIMIT 1), '')
$fn$;

CREATE OR REPLACE FUNCTION pgtrickle.relay_config_type_name(v jsonb) RETURNS text
LANGUAGE sql IMMUTABLE AS $fn$
    SELECT CASE jsonb_typeof(v)
        WHEN 'null' THEN 'null' WHEN 'boolean' THEN 'a boolean' WHEN 'number' THEN 'a number'
        WHEN 'string' THEN 'a string' WHEN 'array' THEN 'an array' ELSE 'an object' END
$fn$;

-- A value as an error may quote it (the relay's `shown`).
CREATE OR REPLACE FUNCTION pgtrickle.relay_config_shown(v jsonb) RETURNS text
LANGUAGE sql IMMUTABLE AS $fn$
    SELECT CASE
        WHEN jsonb_typeof(v) IN ('string', 'boolean') OR (jsonb_typeof(v) = 'number' AND v::text ~ '^-?[0-9]+$')
            THEN CASE WHEN char_length(v::text) > 60 THEN left(v::text, 60) || '…' ELSE v::text END
        ELSE pgtrickle.relay_config_type_name(v)
    END
$fn$;


-- NULL when `v` fits `rule` (`{"kind", "min", "max", "choices"}`), else what was expected
-- (the relay's `check_value`, word for word). A string holding a secret reference (`${…}`)
-- fits any scalar kind: the relay resolves it before it checks.
CREATE OR REPLACE FUNCTION pgtrickle.relay_config_check_value(rule jsonb, v jsonb, variables jsonb) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $fn$
DECLARE
    kind text := rule ->> 'kind';
    t text := jsonb_typeof(v);
    s text;
    got text;
    m text[];
    word text;
    meant text;
BEGIN
    IF v IS NULL OR t = 'null' OR kind = 'ignored' THEN
        RETURN NULL;
    END IF;
    IF t = 'string' THEN
        s := v #>> '{}';
        IF strpos(s, '${') > 0 AND kind NOT IN ('text', 'secret', 'template', 'string') THEN
            RETURN NULL;
        END IF;
    END IF;
    got := CASE WHEN kind = 'secret' THEN pgtrickle.relay_config_type_name(v) ELSE pgtrickle.relay_config_shown(v) END;
    IF kind = 'int' THEN
        IF (t = 'number' AND v::text ~ '^[0-9]+$') OR (t = 'string' AND s ~ '^\s*[0-9]+\s*$') THEN
            IF (CASE WHEN t = 'number' THEN v::text ELSE btrim(s, E' \t\n\r\f\v') END)::numeric
               BETWEEN (rule ->> 'min')::numeric AND (rule ->> 'max')::numeric THEN
                RETURN NULL;
            END IF;
        END IF;
        RETURN format('expected an integer between %s and %s, got %s', rule ->> 'min', rule ->> 'max', got);
    ELSIF kind = 'flag' THEN
        IF t = 'boolean' OR (t = 'string' AND s IN ('true', 'false')) THEN
            RETURN NULL;
        END IF;
        RETURN format('expected true or false, got %s', got);
    ELSIF kind IN ('text', 'secret', 'template', 'string') THEN
        IF t <> 'string' THEN
            RETURN format('expected a string, got %s', pgtrickle.relay_config_type_name(v));
        END IF;
        IF kind = 'string' THEN
            RETURN NULL;
        END IF;
        IF s !~ '\S' THEN
            RETURN 'must not be empty';
        END IF;
        IF kind = 'template' THEN
            FOR m IN SELECT regexp_matches(s, '\{([A-Za-z0-9_]+)\}', 'g') LOOP
                word := m[1];
                CONTINUE WHEN variables ? word;
                SELECT x INTO meant FROM jsonb_array_elements_text(variables) WITH ORDINALITY AS e(x, n)
                 WHERE pgtrickle.relay_levenshtein(lower(word), x) <= 2 ORDER BY n LIMIT 1;
                IF meant IS NOT NULL THEN
                    RETURN format('unknown template variable ''{%s}''; did you mean ''{%s}''?', word, meant);
                END IF;
            END LOOP;
        END IF;
        RETURN NULL;
    ELSIF kind = 'list' THEN
        IF t = 'string' OR (t = 'array' AND NOT EXISTS (
            SELECT 1 FROM jsonb_array_elements(v) e(x)
             WHERE jsonb_typeof(x) <> 'string' OR (x #>> '{}') !~ '\S')) THEN
            RETURN NULL;
        END IF;
        RETURN format('expected an array of strings or a comma-separated string, got %s', got);
    ELSIF kind = 'settings' THEN
        IF t <> 'object' THEN
            RETURN format('expected an object of names to strings, got %s', pgtrickle.relay_config_type_name(v));
        END IF;
        SELECT format('''%s'': expected a string, number or boolean, got %s', k, pgtrickle.relay_config_type_name(x))
          INTO s FROM jsonb_each(v) e(k, x) WHERE jsonb_typeof(x) NOT IN ('string', 'number', 'boolean') LIMIT 1;
        RETURN s;
    ELSIF kind = 'choice' THEN
        IF t = 'string' AND EXISTS (
            SELECT 1 FROM jsonb_array_elements_text(rule -> 'choices') c WHERE lower(c) = lower(s)) THEN
            RETURN NULL;
        END IF;
        RETURN format('%s is not one of %s', got,
                      (SELECT string_agg(c, ', ' ORDER BY n) FROM jsonb_array_elements_text(rule -> 'choices')
                                                                  WITH ORDINALITY AS e(c, n)));
    END IF;
    RETURN NULL;
END
$fn$;

-- A structural string key (`sink_type`, `source.type`): its value, or a problem.
CREATE OR REPLACE FUNCTION pgtrickle.relay_config_type_at(obj jsonb, key text, path text,
                                                          OUT val text, OUT problem text)
LANGUAGE plpgsql IMMUTABLE AS $fn$
DECLARE
    v jsonb := obj -> key;
BEGIN
    IF v IS NULL OR jsonb_typeof(v) = 'null' THEN
        RETURN;
    ELSIF jsonb_typeof(v) <> 'string' THEN
        problem := format('key ''%s'': expected a string, got %s', path, pgtrickle.relay_config_type_name(v));
    ELSIF (v #>> '{}') !~ '\S' THEN
        problem := format('key ''%s'': must not be empty', path);
    ELSE
        val := v #>> '{}';
    END IF;
END
$fn$;

-- Every problem of a config, as the relay's parser reports them (see config/mod.rs).
CREATE OR REPLACE FUNCTION pgtrickle.relay_config_problems(direction text, config jsonb) RETURNS text[]
LANGUAGE plpgsql STABLE AS $fn$
DECLARE
    cat jsonb;
    dir jsonb;
    role text;
    problems text[] := '{}';
    src jsonb := '{}';
    snk jsonb := '{}';
    r record;
    tval text;
    tpath text;
    ty jsonb;
    pipeline jsonb := '{}';
    backend jsonb := '{}';
    paths jsonb := '{}';
    k text;
    v jsonb;
    bare text;
    primary_key text;
    msg text;
    overwrite boolean := true;
    part text;
    nested jsonb;
    backend_here boolean;
BEGIN
    SELECT c.catalog INTO cat FROM pgtrickle.relay_config_keys c;
    IF cat IS NULL THEN
        RETURN problems;
    END IF;
    IF jsonb_typeof(config) IS DISTINCT FROM 'object' THEN
        RETURN ARRAY['config must be a JSON object'];
    END IF;
    dir := cat -> direction;
    role := dir ->> 'role';
    FOREACH part IN ARRAY ARRAY['source', 'sink'] LOOP
        v := config -> part;
        IF v IS NOT NULL AND jsonb_typeof(v) NOT IN ('null', 'object') THEN
            problems := problems || format('key ''%s'': expected an object, got %s', part, pgtrickle.relay_config_type_name(v));
        ELSIF jsonb_typeof(v) = 'object' THEN
            IF part = 'source' THEN src := v; ELSE snk := v; END IF;
        END IF;
    END LOOP;

    IF direction = 'forward' THEN
        SELECT * INTO r FROM pgtrickle.relay_config_type_at(config, 'source_type', 'source_type');
        problems := problems || r.problem;
        IF r.val IS NOT NULL AND r.val <> 'outbox' THEN
            problems := problems || format('key ''source_type'': a forward pipeline reads an outbox, got ''%s''', r.val);
        END IF;
        SELECT * INTO r FROM pgtrickle.relay_config_type_at(snk, 'type', 'sink.type');
        problems := problems || r.problem;
        tval := r.val;
        tpath := 'sink.type';
        IF tval IS NULL THEN
            SELECT * INTO r FROM pgtrickle.relay_config_type_at(config, 'sink_type', 'sink_type');
            problems := problems || r.problem;
            tval := r.val;
            tpath := 'sink_type';
        END IF;
    ELSE
        FOREACH part IN ARRAY ARRAY['sink_type', 'sink.type'] LOOP
            IF part = 'sink_type' THEN
                SELECT * INTO r FROM pgtrickle.relay_config_type_at(config, 'sink_type', 'sink_type');
            ELSE
                SELECT * INTO r FROM pgtrickle.relay_config_type_at(snk, 'type', 'sink.type');
            END IF;
            problems := problems || r.problem;
            IF r.val IS NOT NULL AND lower(r.val) NOT IN (
                SELECT jsonb_array_elements_text(t -> 'spellings') FROM jsonb_array_elements(cat #> '{forward,types}') t
                 WHERE t ->> 'name' = 'pg-inbox') THEN
                problems := problems || format('key ''%s'': a reverse pipeline writes into an inbox (''pg-inbox''), got ''%s''', part, r.val);
            END IF;
        END LOOP;
        snk := snk - 'type';
        SELECT * INTO r FROM pgtrickle.relay_config_type_at(src, 'type', 'source.type');
        problems := problems || r.problem;
        tval := r.val;
        tpath := 'source.type';
        IF tval IS NULL THEN
            SELECT * INTO r FROM pgtrickle.relay_config_type_at(config, 'source_type', 'source_type');
            problems := problems || r.problem;
            tval := r.val;
            tpath := 'source_type';
        END IF;
    END IF;
    -- array || NULL::text appends a NULL: drop those.
    problems := array_remove(problems, NULL);

    IF tval IS NULL THEN
        RETURN problems || format('%s (known: %s)',
            CASE WHEN direction = 'forward'
                 THEN 'missing key ''sink_type'' (or ''sink.type''): where should messages go?'
                 ELSE 'missing key ''source_type'' (or ''source.type''): where do messages come from?' END,
            dir ->> 'known_types');
    END IF;
    SELECT t INTO ty FROM jsonb_array_elements(dir -> 'types') t
     WHERE t -> 'spellings' ? lower(tval) LIMIT 1;
    IF ty IS NULL THEN
        RETURN problems || format('key ''%s'': unknown %s type ''%s'' (known: %s)%s', tpath, role, tval, dir ->> 'known_types',
            pgtrickle.relay_config_did_you_mean(tval, array(SELECT jsonb_array_elements_text(dir -> 'spellings'))));
    END IF;

    -- Sort the keys into the pipeline's and the backend's, under their primary names.
    -- Forward: `source` and `sink` first, then the top (a top pipeline key wins, a flat backend
    -- key does not replace a `sink` one). Reverse: the top, then `source`, then `sink`.
    FOREACH part IN ARRAY CASE WHEN direction = 'forward' THEN ARRAY['source', 'sink', 'top']
                               ELSE ARRAY['top', 'source', 'sink'] END LOOP
        IF part = 'top' THEN
            overwrite := direction <> 'forward';
            FOR k, v IN SELECT e.key, e.value FROM jsonb_each(config) e LOOP
                CONTINUE WHEN k IN ('source_type', 'source', 'sink_type', 'sink');
                primary_key := dir #>> ARRAY['pipeline_index', k];
                IF primary_key IS NOT NULL THEN
                    pipeline := pipeline || jsonb_build_object(primary_key, v);
                    paths := paths || jsonb_build_object('p:' || primary_key, k);
                    CONTINUE;
                END IF;
                bare := coalesce((SELECT substr(k, char_length(p) + 1)
                                    FROM jsonb_array_elements_text(ty -> 'prefixes') WITH ORDINALITY AS e(p, n)
                                   WHERE starts_with(k, p) ORDER BY n LIMIT 1), k);
                primary_key := ty #>> ARRAY['index', bare];
                IF primary_key IS NOT NULL THEN
                    IF overwrite OR NOT backend ? primary_key THEN
                        backend := backend || jsonb_build_object(primary_key, v);
                        paths := paths || jsonb_build_object('b:' || primary_key, k);
                    END IF;
                ELSE
                    problems := problems || format('unknown key ''%s'' for a %s %s%s', k, ty ->> 'name', role,
                        pgtrickle.relay_config_did_you_mean(k, array(
                            SELECT jsonb_object_keys(dir -> 'pipeline_index')
                            UNION ALL SELECT jsonb_object_keys(ty -> 'index')
                            UNION ALL SELECT jsonb_array_elements_text(ty -> 'flat_names'))));
                END IF;
            END LOOP;
        ELSE
            overwrite := true;
            nested := CASE WHEN part = 'source' THEN src ELSE snk END;
            backend_here := (direction = 'forward' AND part = 'sink') OR (direction = 'reverse' AND part = 'source');
            FOR k, v IN SELECT e.key, e.value FROM jsonb_each(nested) e LOOP
                CONTINUE WHEN k = 'type' AND backend_here;
                primary_key := dir #>> ARRAY['pipeline_index', k];
                IF primary_key IS NOT NULL THEN
                    pipeline := pipeline || jsonb_build_object(primary_key, v);
                    paths := paths || jsonb_build_object('p:' || primary_key, part || '.' || k);
                ELSIF backend_here AND ty #>> ARRAY['index', k] IS NOT NULL THEN
                    primary_key := ty #>> ARRAY['index', k];
                    backend := backend || jsonb_build_object(primary_key, v);
                    paths := paths || jsonb_build_object('b:' || primary_key, part || '.' || k);
                ELSE
                    problems := problems || format('unknown key ''%s'' for %s%s', part || '.' || k,
                        CASE WHEN backend_here THEN format('a %s %s', ty ->> 'name', role)
                             ELSE format('''%s'' of a %s pipeline', part, direction) END,
                        pgtrickle.relay_config_did_you_mean(k, array(
                            SELECT jsonb_object_keys(dir -> 'pipeline_index')
                            UNION ALL SELECT jsonb_object_keys(ty -> 'index') WHERE backend_here)));
                END IF;
            END LOOP;
        END IF;
    END LOOP;

    -- Every value against its rule, then every required backend key.
    FOR k, v IN SELECT e.key, e.value FROM jsonb_each(pipeline) e LOOP
        msg := pgtrickle.relay_config_check_value(dir #> ARRAY['pipeline', k], v, cat -> 'template_variables');
        IF msg IS NOT NULL THEN
            problems := problems || format('key ''%s'': %s', paths ->> ('p:' || k), msg);
        END IF;
    END LOOP;
    FOR k, v IN SELECT e.key, e.value FROM jsonb_each(backend) e LOOP
        msg := pgtrickle.relay_config_check_value(ty #> ARRAY['keys', k], v, cat -> 'template_variables');
        IF msg IS NOT NULL THEN
            problems := problems || format('key ''%s'': %s', paths ->> ('b:' || k), msg);
        END IF;
    END LOOP;
    FOR k IN SELECT e.key FROM jsonb_each(ty -> 'keys') e WHERE (e.value ->> 'required')::boolean LOOP
        IF coalesce(jsonb_typeof(backend -> k), 'null') = 'null' THEN
            problems := problems || format('missing key ''%s'' for a %s %s',
                CASE WHEN config ? CASE WHEN direction = 'forward' THEN 'sink' ELSE 'source' END
                       OR jsonb_array_length(ty -> 'prefixes') = 0
                     THEN role || '.' || k
                     ELSE (ty #>> '{prefixes,0}') || k END,
                ty ->> 'name', role);
        END IF;
    END LOOP;
    IF direction = 'forward' THEN
        IF coalesce(jsonb_typeof(pipeline -> 'outbox_table'), 'null') = 'null'
           AND coalesce(jsonb_typeof(pipeline -> 'stream_table'), 'null') = 'null' THEN
            problems := problems || 'missing key ''stream_table'' (or ''source.outbox''): which outbox should this pipeline read?'::text;
        END IF;
    ELSIF coalesce(jsonb_typeof(pipeline -> 'inbox_table'), 'null') = 'null' THEN
        problems := problems || 'missing key ''inbox_table'' (or ''sink.inbox''): which inbox should receive messages?'::text;
    END IF;
    RETURN problems;
END
$fn$;

CREATE OR REPLACE FUNCTION pgtrickle.relay_config_validate() RETURNS trigger
LANGUAGE plpgsql AS $fn$
DECLARE
    problems text[];
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.config IS NOT DISTINCT FROM OLD.config THEN
        RETURN NEW;
    END IF;
    problems := pgtrickle.relay_config_problems(
        CASE WHEN TG_TABLE_NAME = 'relay_outbox_config' THEN 'forward' ELSE 'reverse' END, NEW.config);
    IF cardinality(problems) > 0 THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('relay.invalid_config: pipeline ''%s'': %s', NEW.name, array_to_string(problems, '; ')),
            HINT = '`pgtrickle-relay config-schema` prints every key of every sink and source type';
    END IF;
    RETURN NEW;
END
$fn$;

DROP TRIGGER IF EXISTS relay_outbox_config_validate ON pgtrickle.relay_outbox_config;
CREATE TRIGGER relay_outbox_config_validate
    BEFORE INSERT OR UPDATE OF config ON pgtrickle.relay_outbox_config
    FOR EACH ROW EXECUTE FUNCTION pgtrickle.relay_config_validate();
DROP TRIGGER IF EXISTS relay_inbox_config_validate ON pgtrickle.relay_inbox_config;
CREATE TRIGGER relay_inbox_config_validate
    BEFORE INSERT OR UPDATE OF config ON pgtrickle.relay_inbox_config
    FOR EACH ROW EXECUTE FUNCTION pgtrickle.relay_config_validate();

-- The seed call forms leave every check to the trigger, which names the pipeline and the key
-- (they used to check a few keys themselves, with messages that named neither).
CREATE OR REPLACE FUNCTION pgtrickle.set_relay_outbox(p_name text, config jsonb, enabled boolean DEFAULT true)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pgtrickle, pg_catalog, pg_temp AS $fn$
BEGIN
    IF p_name IS NULL OR p_name = '' THEN
        RAISE EXCEPTION 'relay.invalid_config: pipeline name must not be empty';
    END IF;
    INSERT INTO pgtrickle.relay_outbox_config AS c (name, enabled, config)
    VALUES (p_name, coalesce($3, true), coalesce($2, 'null'::jsonb))
    ON CONFLICT (name) DO UPDATE SET enabled = EXCLUDED.enabled, config = EXCLUDED.config;
END
$fn$;

CREATE OR REPLACE FUNCTION pgtrickle.set_relay_inbox(p_name text, config jsonb, enabled boolean DEFAULT true)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pgtrickle, pg_catalog, pg_temp AS $fn$
BEGIN
    IF p_name IS NULL OR p_name = '' THEN
        RAISE EXCEPTION 'relay.invalid_config: pipeline name must not be empty';
    END IF;
    INSERT INTO pgtrickle.relay_inbox_config AS c (name, enabled, config)
    VALUES (p_name, coalesce($3, true), coalesce($2, 'null'::jsonb))
    ON CONFLICT (name) DO UPDATE SET enabled = EXCLUDED.enabled, config = EXCLUDED.config;
END
$fn$;
