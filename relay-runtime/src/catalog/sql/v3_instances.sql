-- Relay instances of each group, for balancing pipelines by a fair share. An instance is live
-- while its session holds the advisory lock (hashtext(group), hashtext('instance:' || worker_id));
-- rows of instances that died are ignored (their lock went with their session) and pruned.
CREATE TABLE IF NOT EXISTS pgtrickle.relay_instances (
    relay_group_id text        NOT NULL,
    worker_id      text        NOT NULL,
    started_at     timestamptz NOT NULL DEFAULT now(),
    seen_at        timestamptz NOT NULL DEFAULT now(),
    pipelines      int         NOT NULL DEFAULT 0,
    fair_share     int         NOT NULL DEFAULT 0,
    PRIMARY KEY (relay_group_id, worker_id)
);
