-- Contract §3.2: payload {"direction" : <table name>, "event" : TG_OP, "name" : …, "enabled" : …}.
CREATE OR REPLACE FUNCTION pgtrickle.relay_config_notify() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pgtrickle, pg_catalog, pg_temp AS $fn$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('pgtrickle_relay_config', json_build_object(
            'direction', TG_TABLE_NAME, 'event', TG_OP, 'name', OLD.name, 'enabled', OLD.enabled)::text);
    ELSE
        PERFORM pg_notify('pgtrickle_relay_config', json_build_object(
            'direction', TG_TABLE_NAME, 'event', TG_OP, 'name', NEW.name, 'enabled', NEW.enabled)::text);
    END IF;
    RETURN NULL;
END
$fn$;
