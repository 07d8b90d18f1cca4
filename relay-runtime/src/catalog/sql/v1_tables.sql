-- Contract §3.1: exactly pg_trickle's relay tables (no-ops when the extension created them).
CREATE TABLE IF NOT EXISTS pgtrickle.relay_outbox_config (
    name    text    NOT NULL PRIMARY KEY,
    enabled boolean NOT NULL DEFAULT true,
    config  jsonb   NOT NULL
);
CREATE TABLE IF NOT EXISTS pgtrickle.relay_inbox_config (
    name    text    NOT NULL PRIMARY KEY,
    enabled boolean NOT NULL DEFAULT true,
    config  jsonb   NOT NULL
);
CREATE TABLE IF NOT EXISTS pgtrickle.relay_consumer_offsets (
    relay_group_id text        NOT NULL,
    pipeline_id    text        NOT NULL,
    last_change_id bigint      NOT NULL DEFAULT 0,
    worker_id      text,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (relay_group_id, pipeline_id)
);
