CREATE OR REPLACE FUNCTION pgtrickle.enable_relay(p_name text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pgtrickle, pg_catalog, pg_temp AS $fn$
DECLARE
    n_out bigint;
    n_in bigint;
BEGIN
    UPDATE pgtrickle.relay_outbox_config SET enabled = true WHERE name = p_name;
    GET DIAGNOSTICS n_out = ROW_COUNT;
    UPDATE pgtrickle.relay_inbox_config SET enabled = true WHERE name = p_name;
    GET DIAGNOSTICS n_in = ROW_COUNT;
    IF n_out + n_in = 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'no_data_found', MESSAGE = format('relay: pipeline "%s" not found', p_name);
    END IF;
END
$fn$;
