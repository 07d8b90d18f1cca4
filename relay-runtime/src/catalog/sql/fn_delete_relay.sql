CREATE OR REPLACE FUNCTION pgtrickle.delete_relay(p_name text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pgtrickle, pg_catalog, pg_temp AS $fn$
DECLARE
    n_out bigint;
    n_in bigint;
BEGIN
    DELETE FROM pgtrickle.relay_outbox_config WHERE name = p_name;
    GET DIAGNOSTICS n_out = ROW_COUNT;
    DELETE FROM pgtrickle.relay_inbox_config WHERE name = p_name;
    GET DIAGNOSTICS n_in = ROW_COUNT;
    IF n_out + n_in = 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'no_data_found', MESSAGE = format('relay: pipeline "%s" not found', p_name);
    END IF;
END
$fn$;
