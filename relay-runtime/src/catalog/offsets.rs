//! Committed positions of forward pipelines in `pgtrickle.relay_consumer_offsets`
//! (contract §3.1): keyed by relay group and pipeline name, `last_change_id` = the last outbox
//! id whose messages were all confirmed by the sink.

use tokio_postgres::Client;

/// The commit statement (`$1` group, `$2` pipeline, `$3` offset, `$4` worker id, `$5` and `$6`
/// the lock session's pid and start time, see [`super::pool::pipeline_lock_held`]). With
/// `anchor_select` (a query of `(id, uid)` using `$3`, see `outbox::epoch::anchor_select`), the
/// same statement records the outbox row the offset stands on in `relay_outbox_epochs` (when
/// the query finds none, the anchor stays as it was).
pub fn commit_sql(anchor_select: Option<&str>) -> String {
    let held = super::pool::pipeline_lock_held(1, 2, 5, 6);
    let upsert = format!(
        "INSERT INTO pgtrickle.relay_consumer_offsets AS o (relay_group_id, pipeline_id, last_change_id, worker_id, updated_at)
         SELECT $1, $2, $3, $4, now() WHERE {held}
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

/// Commits an offset, fenced: only while the instance's lock session `lock` = (pid, start
/// time) still holds the pipeline's advisory lock. If it does not (the session died, the lock
/// was released), nothing is written and `Ok(false)` says the worker no longer owns the
/// pipeline and must stop. `sql` is a [`commit_sql`].
pub async fn commit(
    client: &Client,
    sql: &str,
    group: &str,
    pipeline: &str,
    offset: i64,
    worker_id: &str,
    lock: (i32, i64),
) -> Result<bool, tokio_postgres::Error> {
    let n: i64 = client.query_one(sql, &[&group, &pipeline, &offset, &worker_id, &lock.0, &lock.1]).await?.get(0);
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
        // The commit runs on one connection, the lock is held by another (the lock session).
        let locks = crate::catalog::pool::LockSession::open(&db.url).await.unwrap();
        let fence = (locks.pid, locks.started_us);
        let try_commit = |g: &'static str, p: &'static str, o: i64, fence: (i32, i64)| {
            let (client, sql) = (&c.client, sql.as_str());
            async move { commit(client, sql, g, p, o, "w", fence).await }
        };
        // Without the lock: nothing is written.
        assert!(!try_commit("g", "p", 10, fence).await.unwrap());
        assert_eq!(load("g", "p").await.unwrap(), 0);
        // The lock session holds it (the relay's two-key form): committed.
        assert!(locks.try_lock("g", "p").await.unwrap());
        assert!(try_commit("g", "p", 10, fence).await.unwrap());
        assert_eq!(load("g", "p").await.unwrap(), 10);
        // Another pipeline's lock does not count, nor the same pid with another start time (a
        // recycled pid), nor a session that holds it but is not the lock session.
        assert!(!try_commit("g", "other", 11, fence).await.unwrap());
        assert!(!try_commit("g", "p", 11, (fence.0, fence.1 + 1)).await.unwrap());
        // A released lock, or a lock session that died, stops commits again.
        locks.unlock("g", "p").await.unwrap();
        assert!(!try_commit("g", "p", 12, fence).await.unwrap());
        assert!(locks.try_lock("g", "p").await.unwrap());
        c.client.execute("SELECT pg_terminate_backend($1)", &[&locks.pid]).await.unwrap();
        locks.conn.closed.cancelled().await;
        assert!(!try_commit("g", "p", 13, fence).await.unwrap());
        assert_eq!(load("g", "p").await.unwrap(), 10);
        db.drop_now().await;
    }
}
