-- The seed README's call form: set_relay_outbox('name', config => '{flat keys}'::jsonb).
-- The flat config is stored as written; the relay parses both shapes. Only the keys needed to
-- route the pipeline are checked here, the relay validates the rest and reports per pipeline.
CREATE OR REPLACE FUNCTION pgtrickle.set_relay_outbox(p_name text, config jsonb, enabled boolean DEFAULT true)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pgtrickle, pg_catalog, pg_temp AS $fn$
DECLARE
    v_config jsonb := $2;
BEGIN
    IF p_name IS NULL OR p_name = '' THEN
        RAISE EXCEPTION 'relay.invalid_config: pipeline name must not be empty';
    END IF;
    IF v_config IS NULL OR jsonb_typeof(v_config) <> 'object' THEN
        RAISE EXCEPTION 'relay.invalid_config: config must be a JSON object';
    END IF;
    IF coalesce(v_config ->> 'sink_type', v_config -> 'sink' ->> 'type', '') = '' THEN
        RAISE EXCEPTION 'relay.invalid_config: config must contain "sink_type" (e.g. nats, kafka, webhook, redis, sqs, rabbitmq, stdout, pg-inbox)';
    END IF;
    IF coalesce(v_config ->> 'stream_table', v_config ->> 'outbox_table', v_config -> 'source' ->> 'outbox', '') = '' THEN
        RAISE EXCEPTION 'relay.invalid_config: config must contain "stream_table" (the pg_trickle stream table whose outbox to relay)';
    END IF;
    INSERT INTO pgtrickle.relay_outbox_config AS c (name, enabled, config)
    VALUES (p_name, coalesce($3, true), v_config)
    ON CONFLICT (name) DO UPDATE SET enabled = EXCLUDED.enabled, config = EXCLUDED.config;
END
$fn$;

CREATE OR REPLACE FUNCTION pgtrickle.set_relay_inbox(p_name text, config jsonb, enabled boolean DEFAULT true)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pgtrickle, pg_catalog, pg_temp AS $fn$
DECLARE
    v_config jsonb := $2;
BEGIN
    IF p_name IS NULL OR p_name = '' THEN
        RAISE EXCEPTION 'relay.invalid_config: pipeline name must not be empty';
    END IF;
    IF v_config IS NULL OR jsonb_typeof(v_config) <> 'object' THEN
        RAISE EXCEPTION 'relay.invalid_config: config must be a JSON object';
    END IF;
    IF coalesce(v_config ->> 'source_type', v_config -> 'source' ->> 'type', '') = '' THEN
        RAISE EXCEPTION 'relay.invalid_config: config must contain "source_type" (e.g. nats, kafka, webhook, redis, sqs, rabbitmq)';
    END IF;
    IF coalesce(v_config ->> 'inbox_table', v_config ->> 'inbox', v_config -> 'sink' ->> 'inbox', '') = '' THEN
        RAISE EXCEPTION 'relay.invalid_config: config must contain "inbox_table" (the pg_trickle inbox to write into)';
    END IF;
    INSERT INTO pgtrickle.relay_inbox_config AS c (name, enabled, config)
    VALUES (p_name, coalesce($3, true), v_config)
    ON CONFLICT (name) DO UPDATE SET enabled = EXCLUDED.enabled, config = EXCLUDED.config;
END
$fn$;
