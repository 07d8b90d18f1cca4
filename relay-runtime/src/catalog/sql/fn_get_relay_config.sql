CREATE OR REPLACE FUNCTION pgtrickle.get_relay_config(p_name text)
RETURNS TABLE(name text, direction text, enabled boolean, config jsonb)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pgtrickle, pg_catalog, pg_temp AS $fn$
BEGIN
    RETURN QUERY
        SELECT o.name, 'forward'::text, o.enabled, o.config FROM pgtrickle.relay_outbox_config o WHERE o.name = p_name
        UNION ALL
        SELECT i.name, 'reverse'::text, i.enabled, i.config FROM pgtrickle.relay_inbox_config i WHERE i.name = p_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'no_data_found', MESSAGE = format('relay: pipeline "%s" not found', p_name);
    END IF;
END
$fn$;
