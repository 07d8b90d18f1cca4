CREATE OR REPLACE FUNCTION pgtrickle.set_relay_inbox(
    p_name text, p_inbox text, p_source jsonb,
    p_max_retries int DEFAULT 3, p_schedule text DEFAULT '1s', p_with_dead_letter boolean DEFAULT true,
    p_retention_hours int DEFAULT 24, p_enabled boolean DEFAULT true) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pgtrickle, pg_catalog, pg_temp AS $fn$
BEGIN
    IF p_source IS NULL OR jsonb_typeof(p_source -> 'type') IS DISTINCT FROM 'string'
       OR coalesce(p_source ->> 'type', '') = '' THEN
        RAISE EXCEPTION 'relay.invalid_config: source JSONB must contain a "type" key (e.g. kafka, nats, http, redis, sqs, rabbitmq)';
    END IF;
    IF p_inbox IS NULL OR p_inbox = '' THEN
        RAISE EXCEPTION 'relay.invalid_config: p_inbox (the inbox table name) must not be empty';
    END IF;
    INSERT INTO pgtrickle.relay_inbox_config AS c (name, enabled, config)
    VALUES (p_name, p_enabled, jsonb_build_object(
        'source_type', p_source ->> 'type',
        'source', p_source,
        'sink_type', 'pg-inbox',
        'sink', jsonb_build_object('inbox', p_inbox, 'max_retries', p_max_retries, 'schedule', p_schedule,
                                   'with_dead_letter', p_with_dead_letter, 'retention_hours', p_retention_hours)))
    ON CONFLICT (name) DO UPDATE SET enabled = EXCLUDED.enabled, config = EXCLUDED.config;
END
$fn$;
