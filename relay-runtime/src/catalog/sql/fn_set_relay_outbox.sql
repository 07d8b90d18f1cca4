-- Contract §3.3/§3.4: pg_trickle's positional form and the nested config it stores.
CREATE OR REPLACE FUNCTION pgtrickle.set_relay_outbox(
    p_name text, p_outbox text, p_group text, p_sink jsonb,
    p_retention_hours int DEFAULT 24, p_enabled boolean DEFAULT true) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pgtrickle, pg_catalog, pg_temp AS $fn$
BEGIN
    IF p_sink IS NULL OR jsonb_typeof(p_sink -> 'type') IS DISTINCT FROM 'string'
       OR coalesce(p_sink ->> 'type', '') = '' THEN
        RAISE EXCEPTION 'relay.invalid_config: sink JSONB must contain a "type" key (e.g. nats, kafka, http, redis, sqs, rabbitmq, stdout, pg-inbox)';
    END IF;
    IF p_outbox IS NULL OR p_outbox = '' THEN
        RAISE EXCEPTION 'relay.invalid_config: p_outbox (the outbox table name) must not be empty';
    END IF;
    INSERT INTO pgtrickle.relay_outbox_config AS c (name, enabled, config)
    VALUES (p_name, p_enabled, jsonb_build_object(
        'source_type', 'outbox',
        'source', jsonb_build_object('outbox', p_outbox, 'group', p_group, 'retention_hours', p_retention_hours),
        'sink_type', p_sink ->> 'type',
        'sink', p_sink))
    ON CONFLICT (name) DO UPDATE SET enabled = EXCLUDED.enabled, config = EXCLUDED.config;
END
$fn$;
