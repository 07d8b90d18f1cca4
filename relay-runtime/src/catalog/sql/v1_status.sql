-- What each relay is doing, one row per (group, direction, pipeline); written by the owning
-- worker, read by `pgtrickle-relay pipelines list`, /health and the Kubernetes operator.
CREATE TABLE IF NOT EXISTS pgtrickle.relay_pipeline_status (
    relay_group_id   text        NOT NULL,
    direction        text        NOT NULL CHECK (direction IN ('forward', 'reverse')),
    name             text        NOT NULL,
    state            text        NOT NULL,
    owner            text,
    committed_offset bigint,
    lag_rows         bigint,
    lag_seconds      double precision,
    messages_total   bigint      NOT NULL DEFAULT 0,
    errors_total     bigint      NOT NULL DEFAULT 0,
    last_error       text,
    last_error_at    timestamptz,
    started_at       timestamptz,
    heartbeat_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (relay_group_id, direction, name)
);

-- Messages or outbox rows that could not be relayed, kept with their error instead of being
-- dropped or blocking the pipeline.
CREATE TABLE IF NOT EXISTS pgtrickle.relay_dead_letters (
    id             bigserial   PRIMARY KEY,
    relay_group_id text        NOT NULL,
    direction      text        NOT NULL CHECK (direction IN ('forward', 'reverse')),
    pipeline       text        NOT NULL,
    source_ref     text,
    payload        bytea,
    headers        jsonb,
    error          text        NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    replayed_at    timestamptz
);
CREATE INDEX IF NOT EXISTS relay_dead_letters_pipeline_idx
    ON pgtrickle.relay_dead_letters (relay_group_id, pipeline, id);
