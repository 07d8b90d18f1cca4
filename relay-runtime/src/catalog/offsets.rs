//! Committed positions of forward pipelines in `pgtrickle.relay_consumer_offsets`
//! (contract §3.1): keyed by relay group and pipeline name, `last_change_id` = the last outbox
//! id whose messages were all confirmed by the sink.

use tokio_postgres::Client;

/// SQL that is true while this session holds the pipeline's advisory lock
/// (`pg_try_advisory_lock(hashtext($1 = group), hashtext($2 = pipeline))`).
pub const HOLDS_PIPELINE_LOCK: &str = "EXISTS (SELECT 1 FROM pg_locks
     WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted
       AND classid = hashtext($1)::oid AND objid = hashtext($2)::oid AND objsubid = 2)";

/// The commit statement (`$1` group, `$2` pipeline, `$3` offset, `$4` worker id). With
/// `anchor_select` (a query of `(id, uid)` using `$3`, see `outbox::epoch::anchor_select`), the
/// same statement records the outbox row the offset stands on in `relay_outbox_epochs` (when
/// the query finds none, the anchor stays as it was).
pub fn commit_sql(anchor_select: Option<&str>) -> String {
    let upsert = format!(
        "INSERT INTO pgtrickle.relay_consumer_offsets AS o (relay_group_id, pipeline_id, last_change_id, worker_id, updated_at)
         SELECT $1, $2, $3, $4, now() WHERE {HOLDS_PIPELINE_LOCK}
         ON CONFLICT (relay_group_id, pipeline_id)
         DO UPDATE SET last_change_id = EXCLUDED.last_change_id, worker_id = EXCLUDED.worker_id, updated_at = now()"
    );
    let anchor = match anchor_select {
        None => String::new(),
        Some(anchor) => format!(
            ", e AS (UPDATE pgtrickle.relay_outbox_epochs SET anchor_id = a.id, anchor_uid = a.uid
                       FROM ({anchor}) a
                      WHERE relay_group_id = $1 AND pipeline_id = $2 AND EXISTS (SELECT 1 FROM c))"
        ),
    };
    format!("WITH c AS ({upsert} RETURNING 1){anchor} SELECT count(*)::int8 FROM c")
}

/// Commits an offset, fenced: only while this session holds the pipeline's advisory lock.
/// It must run on the connection holding that lock; if the lock is not held there (the session
/// was reset, the lock released), nothing is written and `Ok(false)` says the worker no longer
/// owns the pipeline and must stop. A connection that is gone fails outright, so a worker that
/// lost its lock never commits. `sql` is a [`commit_sql`].
pub async fn commit(
    client: &Client,
    sql: &str,
    group: &str,
    pipeline: &str,
    offset: i64,
    worker_id: &str,
) -> Result<bool, tokio_postgres::Error> {
    let n: i64 = client.query_one(sql, &[&group, &pipeline, &offset, &worker_id]).await?.get(0);
    Ok(n == 1)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::catalog::test_db::TestDatabase;

    #[tokio::test]
    async fn a_commit_is_fenced_by_the_pipeline_lock() {
        let db = TestDatabase::new("offsets").await;
        let c = &db.conn;
        let sql = commit_sql(None);
        let load = |g: &'static str, p: &'static str| {
            let client = &c.client;
            async move {
                client
                    .query_opt(
                        "SELECT last_change_id FROM pgtrickle.relay_consumer_offsets WHERE relay_group_id = $1 AND pipeline_id = $2",
                        &[&g, &p],
                    )
                    .await
                    .map(|r| r.map_or(0, |r| r.get::<_, i64>(0)))
            }
        };
        let try_commit = |g: &'static str, p: &'static str, o: i64| {
            let (client, sql) = (&c.client, sql.as_str());
            async move { commit(client, sql, g, p, o, "w").await }
        };
        // Without the lock: nothing is written.
        assert!(!try_commit("g", "p", 10).await.unwrap());
        assert_eq!(load("g", "p").await.unwrap(), 0);
        // Holding it (the relay's two-key form): committed.
        c.client.execute("SELECT pg_advisory_lock(hashtext('g'), hashtext('p'))", &[]).await.unwrap();
        assert!(try_commit("g", "p", 10).await.unwrap());
        assert_eq!(load("g", "p").await.unwrap(), 10);
        // Another pipeline's lock does not count; a released lock stops commits again.
        assert!(!try_commit("g", "other", 11).await.unwrap());
        c.client.execute("SELECT pg_advisory_unlock(hashtext('g'), hashtext('p'))", &[]).await.unwrap();
        assert!(!try_commit("g", "p", 12).await.unwrap());
        assert_eq!(load("g", "p").await.unwrap(), 10);
        db.drop_now().await;
    }
}
