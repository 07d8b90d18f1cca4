DO $do$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'relay_outbox_config_notify'
                     AND tgrelid = 'pgtrickle.relay_outbox_config'::regclass) THEN
        CREATE TRIGGER relay_outbox_config_notify
            AFTER INSERT OR UPDATE OR DELETE ON pgtrickle.relay_outbox_config
            FOR EACH ROW EXECUTE FUNCTION pgtrickle.relay_config_notify();
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'relay_inbox_config_notify'
                     AND tgrelid = 'pgtrickle.relay_inbox_config'::regclass) THEN
        CREATE TRIGGER relay_inbox_config_notify
            AFTER INSERT OR UPDATE OR DELETE ON pgtrickle.relay_inbox_config
            FOR EACH ROW EXECUTE FUNCTION pgtrickle.relay_config_notify();
    END IF;
END
$do$;
