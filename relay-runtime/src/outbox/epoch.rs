//! Outbox epochs: which outbox a forward pipeline's committed offset counts in.
//!
//! An offset is an outbox id, and ids repeat: pg_trickle's `disable_outbox` + `enable_outbox`
//! drop the outbox and create a new one whose ids start at 1 again (contract Appendix C §11),
//! `TRUNCATE … RESTART IDENTITY` resets the sequence, a restored or recreated database starts
//! over, a pipeline re-registered against another stream table reads another outbox. A reader
//! that keeps waiting for `id > offset` then never relays the new outbox's first rows.
//!
//! So every pipeline records, beside its offset (`pgtrickle.relay_outbox_epochs`), the identity
//! of its outbox — database system identifier, database OID, table OID and pg_trickle's
//! `pgt_outbox_config.created_at` — and an *anchor*: the greatest outbox id at or below the
//! offset with its `pgt_id` (a random uuid per row), written with every commit. On every start
//! (and whenever the running reader sees the table change) [`check`] compares them with the
//! database:
//! - same identity, anchor intact, ids not gone back: the same outbox, carry on;
//! - another identity but the anchor row is there with the same `pgt_id`: the same rows in
//!   another place (a restored or copied database): keep the offset, new dedup scope;
//! - otherwise a **new epoch**: the offset starts at 0 (the new outbox's beginning), a new
//!   scope names sink-side dedup state, a warning is logged and counted. Diff mode keeps its
//!   state, so the new outbox's first snapshot becomes only the true changes — unless the
//!   pipeline now reads another stream table, whose state is dropped.

use tokio_postgres::Client;

use super::OutboxTable;
use crate::catalog::pool::pipeline_lock_held;

/// Why a pipeline's outbox counts as a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Another table, database or pg_trickle registration (disable/enable_outbox, restore).
    Recreated,
    /// The row at the anchor's id has another `pgt_id`: ids were reset and reused.
    IdsReused,
    /// The id sequence (or the greatest id) is below the committed offset.
    IdsWentBack,
    /// The pipeline now reads another stream table's outbox (re-registered).
    OtherStreamTable,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Recreated => "the outbox was recreated (another table, database or pg_trickle registration)",
            Reason::IdsReused => "outbox ids were reset and reused (TRUNCATE ... RESTART IDENTITY?)",
            Reason::IdsWentBack => "outbox ids went back below the committed offset (TRUNCATE ... RESTART IDENTITY?)",
            Reason::OtherStreamTable => "the pipeline now reads another stream table's outbox",
        }
    }
}

/// What the catalog remembers of a pipeline's outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub identity: String,
    pub stream_table: String,
    pub relfilenode: i64,
    pub anchor_id: Option<i64>,
    pub anchor_uid: Option<String>,
    pub epoch: i32,
    pub scope: String,
    pub recreated_total: i64,
}

/// The row now at the stored anchor's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnchorRow {
    /// No anchor was stored, so nothing was looked up.
    Unknown,
    Missing,
    /// Found, with its uid (`None` for outboxes without `pgt_id`).
    Found(Option<String>),
}

/// What the database says about the outbox now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub identity: String,
    pub stream_table: String,
    pub table_oid: i64,
    pub relfilenode: i64,
    /// The highest id ever handed out: the id sequence's last value, else the greatest id;
    /// `None` when neither says anything (an unreadable sequence and an empty table).
    pub id_high: Option<i64>,
    pub min_id: Option<i64>,
    pub anchor_row: AnchorRow,
    /// pg_trickle registered this outbox after the offset was last committed: the offset
    /// belongs to an older outbox (what a catalog from before epochs can still tell).
    pub registered_after_commit: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The same outbox: carry on from the offset.
    Same,
    /// The same rows in another place (restored/copied database): keep the offset, new scope.
    Moved,
    /// Another outbox: start at its beginning.
    NewEpoch(Reason),
}

/// The decision of the module docs, pure.
pub fn decide(stored: Option<&Stored>, now: &Observed, offset: i64) -> Verdict {
    let went_back = now.id_high.is_some_and(|high| high < offset);
    let Some(s) = stored else {
        // First check of this pipeline (or a catalog from before epochs): only the ids and
        // pg_trickle's registration time can tell.
        return if went_back {
            Verdict::NewEpoch(Reason::IdsWentBack)
        } else if offset > 0 && now.registered_after_commit {
            Verdict::NewEpoch(Reason::Recreated)
        } else {
            Verdict::Same
        };
    };
    if s.stream_table != now.stream_table {
        return Verdict::NewEpoch(Reason::OtherStreamTable);
    }
    // `Some(true)`: the anchor's row is still there; `Some(false)`: another row has its id.
    let anchor_same = match (&s.anchor_uid, &now.anchor_row) {
        (Some(then), AnchorRow::Found(Some(uid))) => Some(then == uid),
        _ => None,
    };
    if s.identity != now.identity {
        return if anchor_same == Some(true) { Verdict::Moved } else { Verdict::NewEpoch(Reason::Recreated) };
    }
    if anchor_same == Some(false) {
        return Verdict::NewEpoch(Reason::IdsReused);
    }
    if went_back {
        return Verdict::NewEpoch(Reason::IdsWentBack);
    }
    // Truncated (new relfilenode), the anchor row gone, and ids at or below it again: the
    // sequence restarted and new rows already passed the offset.
    let truncated = s.relfilenode != now.relfilenode && now.anchor_row == AnchorRow::Missing;
    if truncated && matches!((now.min_id, s.anchor_id), (Some(min), Some(anchor)) if min <= anchor) {
        return Verdict::NewEpoch(Reason::IdsReused);
    }
    Verdict::Same
}

/// The epoch a pipeline runs in, after [`check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Epoch {
    pub number: i32,
    /// Names sink-side dedup state (a uuid).
    pub scope: String,
    /// The committed offset to start from (0 after a new epoch).
    pub offset: i64,
    pub recreated_total: i64,
    /// Set when this check started a new epoch.
    pub new_epoch: Option<Reason>,
    /// What the running reader watches: a change of either sends the pipeline back to [`check`].
    pub table_oid: i64,
    pub relfilenode: i64,
}

/// Why [`check`] failed.
#[derive(Debug)]
pub enum CheckError {
    Db(tokio_postgres::Error),
    /// This session no longer holds the pipeline's lock.
    LockLost,
}

impl From<tokio_postgres::Error> for CheckError {
    fn from(e: tokio_postgres::Error) -> Self {
        CheckError::Db(e)
    }
}

/// Compares the outbox with what the catalog remembers and records the outcome, in one
/// transaction, fenced like every commit by the lock session `lock` = (pid, start time).
pub async fn check(
    client: &Client,
    group: &str,
    pipeline: &str,
    table: &OutboxTable,
    lock: (i32, i64),
) -> Result<Epoch, CheckError> {
    client.batch_execute("BEGIN").await?;
    let result = check_in_transaction(client, group, pipeline, table, lock).await;
    match result {
        Ok(epoch) => {
            client.batch_execute("COMMIT").await?;
            Ok(epoch)
        }
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

async fn check_in_transaction(
    client: &Client,
    group: &str,
    pipeline: &str,
    table: &OutboxTable,
    lock: (i32, i64),
) -> Result<Epoch, CheckError> {
    // The fence and the committed offset in one statement.
    let row = client
        .query_one(
            &format!(
                "SELECT {}, o.last_change_id, coalesce($5::text::timestamptz > o.updated_at, false)
                   FROM (SELECT 1) one
                   LEFT JOIN pgtrickle.relay_consumer_offsets o ON o.relay_group_id = $1 AND o.pipeline_id = $2",
                pipeline_lock_held(1, 2, 3, 4)
            ),
            &[&group, &pipeline, &lock.0, &lock.1, &table.registered_at],
        )
        .await?;
    if !row.get::<_, bool>(0) {
        return Err(CheckError::LockLost);
    }
    let (offset, registered_after_commit): (i64, bool) = (row.get::<_, Option<i64>>(1).unwrap_or(0), row.get(2));
    let stored = load(client, group, pipeline).await?;
    let mut now = observe(client, table, stored.as_ref().and_then(|s| s.anchor_id)).await?;
    now.registered_after_commit = registered_after_commit;
    let verdict = decide(stored.as_ref(), &now, offset);
    let qualified = table.qualified();
    let mut epoch = Epoch {
        number: stored.as_ref().map_or(1, |s| s.epoch),
        scope: String::new(),
        offset,
        recreated_total: stored.as_ref().map_or(0, |s| s.recreated_total),
        new_epoch: None,
        table_oid: now.table_oid,
        relfilenode: now.relfilenode,
    };
    match (verdict, stored) {
        (Verdict::Same, Some(s)) => {
            epoch.scope = s.scope;
            if s.relfilenode != now.relfilenode {
                client
                    .execute(
                        "UPDATE pgtrickle.relay_outbox_epochs SET relfilenode = $3 WHERE relay_group_id = $1 AND pipeline_id = $2",
                        &[&group, &pipeline, &now.relfilenode],
                    )
                    .await?;
            }
        }
        (Verdict::Same, None) => {
            epoch.scope = random_uuid();
            let anchor = client
                .query_opt(
                    &format!(
                        "SELECT id::int8, {} FROM {qualified} WHERE id <= $1 ORDER BY id DESC LIMIT 1",
                        table.uid_sql()
                    ),
                    &[&offset],
                )
                .await?;
            let (anchor_id, anchor_uid): (Option<i64>, Option<String>) =
                anchor.map(|r| (r.get(0), r.get(1))).unwrap_or((None, None));
            client
                .execute(
                    "INSERT INTO pgtrickle.relay_outbox_epochs
                         (relay_group_id, pipeline_id, epoch, scope, outbox_identity, outbox_table, stream_table,
                          relfilenode, anchor_id, anchor_uid)
                     VALUES ($1, $2, 1, $3::text::uuid, $4, $5, $6, $7, $8, $9)",
                    &[
                        &group,
                        &pipeline,
                        &epoch.scope,
                        &now.identity,
                        &qualified,
                        &now.stream_table,
                        &now.relfilenode,
                        &anchor_id,
                        &anchor_uid,
                    ],
                )
                .await?;
        }
        (Verdict::Moved, _) => {
            epoch.scope = random_uuid();
            client
                .execute(
                    "UPDATE pgtrickle.relay_outbox_epochs
                        SET scope = $3::text::uuid, outbox_identity = $4, outbox_table = $5, relfilenode = $6
                      WHERE relay_group_id = $1 AND pipeline_id = $2",
                    &[&group, &pipeline, &epoch.scope, &now.identity, &qualified, &now.relfilenode],
                )
                .await?;
        }
        (Verdict::NewEpoch(reason), stored) => {
            epoch.scope = random_uuid();
            epoch.offset = 0;
            epoch.new_epoch = Some(reason);
            epoch.number = stored.as_ref().map_or(1, |s| s.epoch + 1);
            epoch.recreated_total += 1;
            client
                .execute(
                    "INSERT INTO pgtrickle.relay_outbox_epochs AS e
                         (relay_group_id, pipeline_id, epoch, scope, outbox_identity, outbox_table, stream_table,
                          relfilenode, anchor_id, anchor_uid, recreated_total, last_reason, started_at)
                     VALUES ($1, $2, $3, $4::text::uuid, $5, $6, $7, $8, NULL, NULL, $9, $10, now())
                     ON CONFLICT (relay_group_id, pipeline_id) DO UPDATE SET
                         epoch = EXCLUDED.epoch, scope = EXCLUDED.scope, outbox_identity = EXCLUDED.outbox_identity,
                         outbox_table = EXCLUDED.outbox_table, stream_table = EXCLUDED.stream_table,
                         relfilenode = EXCLUDED.relfilenode, anchor_id = NULL, anchor_uid = NULL,
                         recreated_total = EXCLUDED.recreated_total, last_reason = EXCLUDED.last_reason,
                         started_at = now()",
                    &[
                        &group,
                        &pipeline,
                        &epoch.number,
                        &epoch.scope,
                        &now.identity,
                        &qualified,
                        &now.stream_table,
                        &now.relfilenode,
                        &epoch.recreated_total,
                        &reason.as_str(),
                    ],
                )
                .await?;
            client
                .execute(
                    "UPDATE pgtrickle.relay_consumer_offsets SET last_change_id = 0, updated_at = now()
                      WHERE relay_group_id = $1 AND pipeline_id = $2",
                    &[&group, &pipeline],
                )
                .await?;
            if reason == Reason::OtherStreamTable {
                // Diff state of another table would turn its rows into deletes of this one's.
                client
                    .batch_execute(&format!(
                        "DELETE FROM pgtrickle.relay_snapshot_state WHERE relay_group_id = {g} AND pipeline = {p};
                         DELETE FROM pgtrickle.relay_snapshot_baseline WHERE relay_group_id = {g} AND pipeline = {p};",
                        g = super::diff::quote_literal(group),
                        p = super::diff::quote_literal(pipeline)
                    ))
                    .await?;
            }
        }
    }
    Ok(epoch)
}

/// A random (version 4) UUID, as text.
fn random_uuid() -> String {
    let mut bits = fastrand::u128(..);
    bits = (bits & !(0xf << 76)) | (0x4 << 76); // version 4
    bits = (bits & !(0x3 << 62)) | (0x2 << 62); // RFC 4122 variant
    let h = format!("{bits:032x}");
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

async fn load(client: &Client, group: &str, pipeline: &str) -> Result<Option<Stored>, tokio_postgres::Error> {
    Ok(client
        .query_opt(
            "SELECT outbox_identity, stream_table, relfilenode, anchor_id, anchor_uid, epoch, scope::text, recreated_total
               FROM pgtrickle.relay_outbox_epochs WHERE relay_group_id = $1 AND pipeline_id = $2",
            &[&group, &pipeline],
        )
        .await?
        .map(|r| Stored {
            identity: r.get(0),
            stream_table: r.get(1),
            relfilenode: r.get(2),
            anchor_id: r.get(3),
            anchor_uid: r.get(4),
            epoch: r.get(5),
            scope: r.get(6),
            recreated_total: r.get(7),
        }))
}

async fn observe(
    client: &Client,
    table: &OutboxTable,
    anchor_id: Option<i64>,
) -> Result<Observed, tokio_postgres::Error> {
    let q = table.qualified();
    let seq = table.id_high_sql();
    let row = client
        .query_one(
            &format!(
                "SELECT (SELECT system_identifier::text FROM pg_control_system()),
                        (SELECT oid::int8 FROM pg_database WHERE datname = current_database()),
                        c.oid::int8, c.relfilenode::int8, {seq},
                        (SELECT max(id)::int8 FROM {q}), (SELECT min(id)::int8 FROM {q})
                   FROM pg_class c WHERE c.oid = $1::text::regclass"
            ),
            &[&q],
        )
        .await?;
    let system: Option<String> = row.get(0);
    let database: i64 = row.get(1);
    let table_oid: i64 = row.get(2);
    let (seq_last, max_id): (Option<i64>, Option<i64>) = (row.get(4), row.get(5));
    let anchor_row = match anchor_id {
        None => AnchorRow::Unknown,
        Some(id) => {
            match client.query_opt(&format!("SELECT {} FROM {q} WHERE id = $1", table.uid_sql()), &[&id]).await? {
                None => AnchorRow::Missing,
                Some(r) => AnchorRow::Found(r.get(0)),
            }
        }
    };
    Ok(Observed {
        identity: format!(
            "{}/{database}/{table_oid}/{}",
            system.as_deref().unwrap_or("?"),
            table.registered_at.as_deref().unwrap_or("-")
        ),
        stream_table: table.stream_table.clone(),
        table_oid,
        relfilenode: row.get(3),
        id_high: seq_last.or(max_id),
        min_id: row.get(6),
        anchor_row,
        registered_after_commit: false,
    })
}

/// The SQL that finds a commit's anchor, `(id, uid)` of the greatest row at or below `$3`
/// (the offset being committed), for [`crate::catalog::offsets::commit_sql`]. It finds nothing
/// (and the stored anchor stays) once the table is not the one the epoch was checked against
/// (`watched` = table OID and relfilenode): an anchor taken from a table swapped in under the
/// running pipeline would vouch for the new table's rows as the old offset's.
pub fn anchor_select(table: &OutboxTable, watched: (i64, i64)) -> String {
    let (oid, relfilenode) = watched;
    format!(
        "SELECT id::int8 AS id, {uid} AS uid FROM {q}
          WHERE id <= $3 AND EXISTS (SELECT 1 FROM pg_class WHERE oid = {q_lit}::regclass
                                       AND oid::int8 = {oid} AND relfilenode::int8 = {relfilenode})
          ORDER BY id DESC LIMIT 1",
        uid = table.uid_sql(),
        q = table.qualified(),
        q_lit = super::diff::quote_literal(&table.qualified()),
    )
}

/// One pipeline's epoch as `pipelines show` reports it.
pub async fn describe(
    client: &Client,
    group: &str,
    pipeline: &str,
) -> Result<Option<serde_json::Value>, tokio_postgres::Error> {
    Ok(client
        .query_opt(
            "SELECT jsonb_build_object('epoch', epoch, 'since', started_at, 'recreated_total', recreated_total,
                                       'last_reason', last_reason, 'outbox_table', outbox_table,
                                       'stream_table', stream_table, 'dedup_scope', scope)
               FROM pgtrickle.relay_outbox_epochs WHERE relay_group_id = $1 AND pipeline_id = $2",
            &[&group, &pipeline],
        )
        .await?
        .map(|r| r.get(0)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn scopes_are_random_version_4_uuids() {
        let (a, b) = (super::random_uuid(), super::random_uuid());
        assert_ne!(a, b);
        for u in [a, b] {
            let groups: Vec<usize> = u.split('-').map(str::len).collect();
            assert_eq!(groups, [8, 4, 4, 4, 12], "{u}");
            assert!(u.chars().all(|c| c == '-' || c.is_ascii_hexdigit()), "{u}");
            assert_eq!(&u[14..15], "4", "{u}");
            assert!("89ab".contains(&u[19..20]), "{u}");
        }
    }

    use super::*;

    fn stored() -> Stored {
        Stored {
            identity: "sys/5/1000/t0".into(),
            stream_table: "orders".into(),
            relfilenode: 1000,
            anchor_id: Some(3),
            anchor_uid: Some("uuid-3".into()),
            epoch: 1,
            scope: "scope".into(),
            recreated_total: 0,
        }
    }

    fn observed() -> Observed {
        Observed {
            identity: "sys/5/1000/t0".into(),
            stream_table: "orders".into(),
            table_oid: 1000,
            relfilenode: 1000,
            id_high: Some(5),
            min_id: Some(1),
            anchor_row: AnchorRow::Found(Some("uuid-3".into())),
            registered_after_commit: false,
        }
    }

    /// The scenarios of the README's Lifecycle table against a real outbox of pg_trickle 0.45's
    /// shape: what `check` decides and records, and that the commit keeps the anchor current.
    #[tokio::test]
    async fn check_follows_an_outbox_through_its_lifecycle() {
        use crate::catalog::offsets::{commit, commit_sql};
        use crate::config::OutboxRef;

        let db = crate::catalog::test_db::TestDatabase::new("epochs").await;
        let c = &db.conn.client;
        let create = "CREATE TABLE IF NOT EXISTS pgtrickle.pgt_outbox_config (stream_table_oid oid PRIMARY KEY,
                          stream_table_name text NOT NULL, outbox_table_name text NOT NULL UNIQUE,
                          created_at timestamptz NOT NULL DEFAULT clock_timestamp());
                      CREATE TABLE pgtrickle.outbox_orders (id bigserial PRIMARY KEY,
                          pgt_id uuid NOT NULL DEFAULT gen_random_uuid(), payload jsonb);
                      INSERT INTO pgtrickle.pgt_outbox_config (stream_table_oid, stream_table_name, outbox_table_name)
                      VALUES (1, 'orders', 'outbox_orders');";
        let recreate = format!(
            "BEGIN; DROP TABLE pgtrickle.outbox_orders; DELETE FROM pgtrickle.pgt_outbox_config; {create} COMMIT;"
        );
        c.batch_execute(create).await.unwrap();
        let insert = |n: i64| async move {
            c.execute(
                "INSERT INTO pgtrickle.outbox_orders (payload) SELECT '[]' FROM generate_series(1, $1::int8)",
                &[&n],
            )
            .await
            .unwrap();
        };
        let resolve = || async { OutboxTable::resolve(c, &OutboxRef::StreamTable("orders".into())).await.unwrap() };
        let locks = crate::catalog::pool::LockSession::open(&db.url).await.unwrap();
        let fence = (locks.pid, locks.started_us);
        let check = || async { check(c, "g", "p", &resolve().await, fence).await };
        let commit_at = |offset: i64| async move {
            let table = resolve().await;
            let watched: (i64, i64) = c
                .query_one(
                    "SELECT oid::int8, relfilenode::int8 FROM pg_class WHERE oid = 'pgtrickle.outbox_orders'::regclass",
                    &[],
                )
                .await
                .map(|r| (r.get(0), r.get(1)))
                .unwrap();
            let sql = commit_sql(Some(&anchor_select(&table, watched)));
            assert!(commit(c, &sql, "g", "p", offset, "w", fence).await.unwrap());
        };

        assert!(matches!(check().await, Err(CheckError::LockLost)), "fenced like a commit");
        assert!(locks.try_lock("g", "p").await.unwrap());
        let first = check().await.unwrap();
        assert_eq!((first.number, first.offset, first.new_epoch), (1, 0, None));

        insert(3).await;
        commit_at(3).await;
        let same = check().await.unwrap();
        assert_eq!((same.number, same.offset, same.new_epoch, &same.scope), (1, 3, None, &first.scope));

        // disable_outbox + enable_outbox, two rows since: a new epoch from the beginning.
        c.batch_execute(&recreate).await.unwrap();
        insert(2).await;
        let second = check().await.unwrap();
        assert_eq!((second.number, second.offset, second.new_epoch), (2, 0, Some(Reason::Recreated)));
        assert_ne!(second.scope, first.scope, "a new dedup scope");
        let stored: i64 = c
            .query_one("SELECT last_change_id FROM pgtrickle.relay_consumer_offsets WHERE pipeline_id = 'p'", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(stored, 0, "the offset reset is committed");
        assert_eq!(check().await.unwrap().new_epoch, None, "counted once");

        // TRUNCATE … RESTART IDENTITY, then more rows than the offset: the anchor's id holds another row.
        commit_at(2).await;
        c.batch_execute("TRUNCATE pgtrickle.outbox_orders RESTART IDENTITY").await.unwrap();
        insert(5).await;
        assert_eq!(check().await.unwrap().new_epoch, Some(Reason::IdsReused));

        // … with nothing written yet: the restarted sequence shows it at once (waiting for the
        // first rows would let a burst reach the offset unnoticed).
        commit_at(5).await;
        c.batch_execute("TRUNCATE pgtrickle.outbox_orders RESTART IDENTITY").await.unwrap();
        let reset = check().await.unwrap();
        assert_eq!((reset.number, reset.new_epoch, reset.recreated_total), (4, Some(Reason::IdsWentBack), 3));
        insert(1).await;
        assert_eq!(check().await.unwrap().new_epoch, None);

        // A plain TRUNCATE (ids continue) and retention are the same outbox.
        insert(2).await;
        commit_at(3).await;
        c.batch_execute("TRUNCATE pgtrickle.outbox_orders").await.unwrap();
        insert(1).await;
        let cont = check().await.unwrap();
        assert_eq!((cont.offset, cont.new_epoch), (3, None));

        // A commit racing a swap (the runner still watches the old table) leaves the anchor as
        // it was, so the next check still sees the reuse instead of vouching for the new rows.
        let stale = commit_sql(Some(&anchor_select(&resolve().await, (cont.table_oid, cont.relfilenode))));
        c.batch_execute("TRUNCATE pgtrickle.outbox_orders RESTART IDENTITY").await.unwrap();
        insert(5).await;
        assert!(commit(c, &stale, "g", "p", 4, "w", fence).await.unwrap());
        assert_eq!(check().await.unwrap().new_epoch, Some(Reason::IdsReused));

        // The same rows under another identity (a restored database): offset kept, new scope.
        commit_at(4).await;
        c.batch_execute("UPDATE pgtrickle.relay_outbox_epochs SET outbox_identity = 'elsewhere'").await.unwrap();
        let moved = check().await.unwrap();
        assert_eq!((moved.offset, moved.new_epoch, moved.number), (4, None, 5));
        assert_ne!(moved.scope, reset.scope);
        db.drop_now().await;
    }

    #[test]
    fn the_same_outbox_carries_on() {
        assert_eq!(decide(Some(&stored()), &observed(), 3), Verdict::Same);
        // Retention drained everything; ids continue: still the same outbox.
        let drained = Observed { anchor_row: AnchorRow::Missing, min_id: None, ..observed() };
        assert_eq!(decide(Some(&stored()), &drained, 3), Verdict::Same);
        // VACUUM FULL (new relfilenode) with the anchor row intact.
        assert_eq!(decide(Some(&stored()), &Observed { relfilenode: 2000, ..observed() }, 3), Verdict::Same);
        // TRUNCATE without RESTART IDENTITY: the anchor is gone, new ids are all above it.
        let truncated = Observed { relfilenode: 2000, anchor_row: AnchorRow::Missing, min_id: Some(4), ..observed() };
        assert_eq!(decide(Some(&stored()), &truncated, 3), Verdict::Same);
    }

    #[test]
    fn a_recreated_outbox_is_a_new_epoch() {
        // disable_outbox + enable_outbox: new table OID and registration, ids from 1 again.
        let recreated = Observed {
            identity: "sys/5/2000/t1".into(),
            table_oid: 2000,
            id_high: Some(1),
            anchor_row: AnchorRow::Missing,
            ..observed()
        };
        assert_eq!(decide(Some(&stored()), &recreated, 3), Verdict::NewEpoch(Reason::Recreated));
        // … even once its ids passed the old offset (the relay was stopped meanwhile).
        let busy =
            Observed { id_high: Some(9), anchor_row: AnchorRow::Found(Some("other".into())), ..recreated.clone() };
        assert_eq!(decide(Some(&stored()), &busy, 3), Verdict::NewEpoch(Reason::Recreated));
        let busy = Observed { anchor_row: AnchorRow::Found(None), ..busy };
        assert_eq!(decide(Some(&stored()), &busy, 3), Verdict::NewEpoch(Reason::Recreated));
    }

    #[test]
    fn reset_ids_are_a_new_epoch() {
        // RESTART IDENTITY, few rows since: the sequence is below the offset.
        let reset = Observed { relfilenode: 2000, id_high: Some(1), anchor_row: AnchorRow::Missing, ..observed() };
        assert_eq!(decide(Some(&stored()), &reset, 3), Verdict::NewEpoch(Reason::IdsWentBack));
        // Many rows since: the anchor's id holds another row …
        let reused = Observed { id_high: Some(7), anchor_row: AnchorRow::Found(Some("uuid-new".into())), ..observed() };
        assert_eq!(decide(Some(&stored()), &reused, 3), Verdict::NewEpoch(Reason::IdsReused));
        // … or, the anchor id not reached again, ids at or below it exist after a truncation.
        let refilled = Observed {
            relfilenode: 2000,
            id_high: Some(7),
            min_id: Some(1),
            anchor_row: AnchorRow::Missing,
            ..observed()
        };
        let sparse = Stored { anchor_id: Some(3), ..stored() };
        assert_eq!(decide(Some(&sparse), &refilled, 3), Verdict::NewEpoch(Reason::IdsReused));
        // Without any record (first start after an upgrade), the sequence alone tells.
        assert_eq!(decide(None, &reset, 3), Verdict::NewEpoch(Reason::IdsWentBack));
        assert_eq!(decide(None, &observed(), 3), Verdict::Same);
        // An empty table with an unreadable sequence says nothing.
        assert_eq!(decide(None, &Observed { id_high: None, ..observed() }, 3), Verdict::Same);
        // pg_trickle registered the outbox after the offset was committed: an older outbox's.
        let newer = Observed { registered_after_commit: true, ..observed() };
        assert_eq!(decide(None, &newer, 3), Verdict::NewEpoch(Reason::Recreated));
        assert_eq!(decide(None, &newer, 0), Verdict::Same);
    }

    #[test]
    fn the_same_rows_elsewhere_keep_their_offset() {
        // pg_dump + restore: new OIDs and system identifier, but the anchor row is there.
        let restored = Observed { identity: "other/7/3000/t0".into(), table_oid: 3000, ..observed() };
        assert_eq!(decide(Some(&stored()), &restored, 3), Verdict::Moved);
        // Re-registered against another stream table: never the same outbox.
        let other = Observed { stream_table: "customers".into(), ..restored };
        assert_eq!(decide(Some(&stored()), &other, 3), Verdict::NewEpoch(Reason::OtherStreamTable));
    }
}
