CREATE OR REPLACE FUNCTION pgtrickle.list_relay_configs()
RETURNS TABLE(name text, direction text, enabled boolean, config jsonb)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pgtrickle, pg_catalog, pg_temp AS $fn$
BEGIN
    RETURN QUERY
        SELECT o.name, 'forward'::text, o.enabled, o.config FROM pgtrickle.relay_outbox_config o
        UNION ALL
        SELECT i.name, 'reverse'::text, i.enabled, i.config FROM pgtrickle.relay_inbox_config i
        ORDER BY 1, 2;
END
$fn$;
