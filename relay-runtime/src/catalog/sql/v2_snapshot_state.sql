-- Diff mode: the last delivered state of each pipeline's stream table, so that consecutive
-- full snapshots (what pg_trickle 0.36-0.45 writes) become insert/update/delete events.
-- Written only in the transaction that also commits the pipeline's offset.
CREATE TABLE IF NOT EXISTS pgtrickle.relay_snapshot_state (
    relay_group_id text  NOT NULL,
    pipeline       text  NOT NULL,
    -- __pgt_row_id, the key columns, or the whole row; jsonb so numbers compare by value.
    row_key        jsonb NOT NULL,
    row_data       jsonb NOT NULL,
    PRIMARY KEY (relay_group_id, pipeline, row_key)
);

-- Which outbox row the state reflects; no row means the next snapshot is the first.
CREATE TABLE IF NOT EXISTS pgtrickle.relay_snapshot_baseline (
    relay_group_id text        NOT NULL,
    pipeline       text        NOT NULL,
    outbox_id      bigint      NOT NULL,
    row_count      bigint      NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (relay_group_id, pipeline)
);
