-- Which outbox a forward pipeline's committed offset belongs to. pg_trickle recreates an outbox
-- (disable_outbox + enable_outbox: new tables, ids from 1 again) and TRUNCATE ... RESTART
-- IDENTITY reuses ids, so an offset alone cannot tell "id 3 of this outbox" from "id 3 of the
-- one before". Each pipeline records the identity of the outbox its offset counts in; a
-- different outbox starts a new epoch (offset back to 0, a new dedup scope).
CREATE TABLE IF NOT EXISTS pgtrickle.relay_outbox_epochs (
    relay_group_id  text        NOT NULL,
    pipeline_id     text        NOT NULL,
    -- 1 for the outbox the pipeline first read, +1 for every outbox after it.
    epoch           int         NOT NULL DEFAULT 1,
    -- Names sink-side dedup state of this epoch (the Redis sink's high-water mark field), so
    -- another epoch, database or relay group never suppresses new entries.
    scope           uuid        NOT NULL,
    -- '<system identifier>/<database oid>/<table oid>/<pg_trickle created_at>'.
    outbox_identity text        NOT NULL,
    outbox_table    text        NOT NULL,
    stream_table    text        NOT NULL,
    -- Changes on TRUNCATE (and VACUUM FULL): then the anchor tells whether ids were reused.
    relfilenode     bigint      NOT NULL,
    -- The greatest outbox id at or below the committed offset, and its pgt_id, written with
    -- every commit: a row at anchor_id with another pgt_id means the ids were reused.
    anchor_id       bigint,
    anchor_uid      text,
    recreated_total bigint      NOT NULL DEFAULT 0,
    last_reason     text,
    started_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (relay_group_id, pipeline_id)
);
