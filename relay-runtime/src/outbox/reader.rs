//! Commit-order-safe reading of outbox header rows.
//!
//! Outbox ids come from a sequence, allocated *before* the writing transaction commits, so
//! transactions can commit out of id order: a reader that hands out `id > offset` and moves
//! its offset to the highest id it saw silently skips a lower id committed a moment later.
//!
//! This reader only hands out ids up to a **safe horizon**. A horizon is taken in one
//! statement: `H` = the highest id visible in the statement's snapshot, and `W` = the virtual
//! transaction ids of every other session holding `RowExclusiveLock` on the outbox table at
//! that moment (read after the snapshot). Any transaction that allocated an id below `H` and
//! has not committed by then must be in `W`: it took that lock before its INSERT evaluated the
//! id default, and holds it until it ends. So once every transaction of `W` has ended, every
//! id ≤ `H` is committed or will never exist, and a fresh snapshot sees all of them. While `W`
//! is non-empty the horizon stays pending and older rows wait (in order) for it to clear; in the
//! common case — no concurrent writer — `W` is empty and the horizon is safe at once.
//!
//! Assumption (true for pg_trickle's `bigserial`): ids are allocated by the INSERT into the
//! outbox table itself, not by a `nextval()` taken earlier in another statement.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::{JsonText, OutboxTable};

/// One outbox header row; the payload is JSON text, split into rows without building values.
#[derive(Debug, Clone, PartialEq)]
pub struct HeaderRow {
    pub id: i64,
    /// pg_trickle's `pgt_id` (a random uuid per outbox row), when the outbox has it.
    pub uid: Option<String>,
    pub payload: Option<String>,
    pub is_claim_check: bool,
    pub refresh_id: Option<String>,
    /// Its `created_at` and `xmin` (for envelopes).
    pub stamp: crate::message::RowStamp,
}

#[derive(Debug, Clone)]
struct PendingHorizon {
    max_id: i64,
    lockers: Vec<String>,
    since: Instant,
    warned: bool,
}

pub struct OutboxReader {
    table: OutboxTable,
    /// `(table OID, relfilenode)` of the outbox this reader's epoch was checked against.
    watched: (i64, i64),
    /// The highest id known to exist in this outbox (at first the committed offset): the ids
    /// going back below it means they were reset.
    seen_high: i64,
    horizon_sql: String,
    lockers_sql: String,
    fetch_sql: std::sync::Arc<str>,
    lag_sql: String,
    safe: i64,
    pending: Option<PendingHorizon>,
}

/// Why no horizon could be taken.
#[derive(Debug)]
pub enum HorizonError {
    Db(tokio_postgres::Error),
    /// The outbox is not the one the pipeline's epoch was checked against any more (another
    /// table of the same name, a truncation, ids that went back): check it again.
    Changed(&'static str),
}

impl From<tokio_postgres::Error> for HorizonError {
    fn from(e: tokio_postgres::Error) -> Self {
        HorizonError::Db(e)
    }
}

/// How long a pending horizon may wait before a warning names the blocking transaction.
const SLOW_WRITER_WARNING: Duration = Duration::from_secs(30);

impl OutboxReader {
    /// A reader of `table` as it was when its epoch was checked (`watched` = its table OID and
    /// relfilenode), starting after `offset`.
    pub fn new(table: OutboxTable, watched: (i64, i64), offset: i64) -> Self {
        let q = table.qualified();
        let uid = table.uid_sql();
        let seq = table.id_high_sql();
        let claim = if table.has_claim_check_column { "is_claim_check" } else { "false" };
        let refresh = if table.has_refresh_id_column { "refresh_id::text" } else { "NULL::text" };
        let created =
            if table.has_created_at_column { "(extract(epoch FROM created_at) * 1000000)::int8" } else { "NULL::int8" };
        let lag_age = if table.has_created_at_column {
            format!(
                "(SELECT extract(epoch FROM now() - created_at)::float8 FROM {q} WHERE id > $1 ORDER BY id LIMIT 1)"
            )
        } else {
            "NULL::float8".to_owned()
        };
        Self {
            horizon_sql: format!(
                "SELECT (SELECT coalesce(max(id), 0)::int8 FROM {q}),
                        coalesce((SELECT array_agg(DISTINCT l.virtualtransaction) FROM pg_locks l
                                   WHERE l.locktype = 'relation' AND l.relation = $1::text::regclass
                                     AND l.mode = 'RowExclusiveLock'
                                     AND l.pid IS DISTINCT FROM pg_backend_pid()), '{{}}'::text[]),
                        c.oid::int8, c.relfilenode::int8, {seq}
                   FROM pg_class c WHERE c.oid = $1::text::regclass"
            ),
            lockers_sql:
                "SELECT array_agg(DISTINCT l.virtualtransaction || ' (pid ' || coalesce(l.pid::text, '?') || ')')
                            FROM pg_locks l
                           WHERE l.locktype = 'relation' AND l.relation = $1::text::regclass
                             AND l.mode = 'RowExclusiveLock' AND l.virtualtransaction = ANY($2)"
                    .to_owned(),
            fetch_sql: format!(
                "SELECT id::int8, payload, {claim}, {refresh}, {uid}, {created}, xmin::text::int8
                   FROM {q} WHERE id > $1 AND id <= $2 ORDER BY id LIMIT $3"
            )
            .into(),
            lag_sql: format!("SELECT (SELECT coalesce(max(id), 0)::int8 FROM {q}), {lag_age}"),
            table,
            watched,
            seen_high: offset,
            safe: 0,
            pending: None,
        }
    }

    /// Whether open transactions hold the outbox for writing (rows wait for them, or may come
    /// with their commit): then only polling shows when they end.
    pub fn is_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// The highest id seen in the outbox so far (at first the offset the reader started at).
    pub fn seen_high(&self) -> i64 {
        self.seen_high
    }

    pub fn table(&self) -> &OutboxTable {
        &self.table
    }

    /// The highest id below which no row can still appear. Never decreases: an outbox whose
    /// ids went back, or that is not the watched table any more, is [`HorizonError::Changed`].
    pub async fn safe_horizon(&mut self, client: &Client) -> Result<i64, HorizonError> {
        let qualified = self.table.qualified();
        if let Some(p) = &mut self.pending {
            let still: Option<Vec<String>> =
                client.query_one(&self.lockers_sql, &[&qualified, &p.lockers]).await?.get(0);
            match still {
                None => {
                    self.safe = self.safe.max(p.max_id);
                    self.pending = None;
                }
                Some(blockers) => {
                    if !p.warned && p.since.elapsed() > SLOW_WRITER_WARNING {
                        p.warned = true;
                        tracing::warn!(
                            outbox = %qualified, below_id = p.max_id, transactions = ?blockers,
                            "outbox rows wait for transactions that may still commit lower ids; a long-open transaction on the outbox delays delivery"
                        );
                    }
                    return Ok(self.safe);
                }
            }
        }
        // No row: the table is gone (dropped between statements).
        let Some(row) = client.query_opt(&self.horizon_sql, &[&qualified]).await? else {
            return Err(HorizonError::Changed("the outbox table was dropped"));
        };
        let max_id: i64 = row.get(0);
        let lockers: Vec<String> = row.get(1);
        if (row.get::<_, i64>(2), row.get::<_, i64>(3)) != self.watched {
            return Err(HorizonError::Changed("the outbox table was recreated or truncated"));
        }
        let id_high: Option<i64> = row.get(4);
        // The sequence's last value is never below an id it gave out; without a readable
        // sequence, a non-empty table's greatest id tells the same (retention deletes the oldest).
        let went_back = match id_high {
            Some(high) => high < self.seen_high,
            None => max_id > 0 && max_id < self.seen_high,
        };
        if went_back {
            return Err(HorizonError::Changed("the outbox's ids went back"));
        }
        self.seen_high = self.seen_high.max(max_id);
        if lockers.is_empty() {
            self.safe = self.safe.max(max_id);
        } else {
            // Open writers: rows they commit later may be all there is to come, and their commit
            // moves no sequence (the id was taken before) and may send no notification. Pending
            // even when nothing new is visible yet, so that the idle worker polls until they end.
            self.pending =
                Some(PendingHorizon { max_id: max_id.max(self.safe), lockers, since: Instant::now(), warned: false });
        }
        Ok(self.safe)
    }

    /// Header rows with `after < id <= upto`, in id order, at most `limit`.
    pub async fn fetch(
        &self,
        client: &Client,
        after: i64,
        upto: i64,
        limit: i64,
    ) -> Result<Vec<HeaderRow>, tokio_postgres::Error> {
        fetch_rows(client, &self.fetch_sql, after, upto, limit).await
    }

    /// The fetch statement, for reading ahead while the reader itself is borrowed elsewhere.
    pub fn fetch_statement(&self) -> std::sync::Arc<str> {
        self.fetch_sql.clone()
    }

    /// `(rows behind, age in seconds of the oldest unrelayed row)` for an offset.
    pub async fn lag(&self, client: &Client, offset: i64) -> Result<(i64, Option<f64>), tokio_postgres::Error> {
        let row = client.query_one(&self.lag_sql, &[&offset]).await?;
        let max: i64 = row.get(0);
        Ok(((max - offset).max(0), row.get::<_, Option<f64>>(1)))
    }

    /// Whether an outbox row's claim-check rows include deletes (then it is a delta, not a
    /// snapshot): `$1` = outbox id.
    pub fn claim_check_has_deletes_sql(&self) -> Option<String> {
        let d = self.table.delta.as_ref()?;
        Some(format!(
            "SELECT EXISTS (SELECT 1 FROM {}.{} WHERE outbox_id = $1 AND upper({}::text) IN ('DELETE', 'D'))",
            super::quote_ident(&d.schema),
            super::quote_ident(&d.table),
            super::quote_ident(&d.op_column)
        ))
    }

    /// The SQL reading one outbox row's claim-check rows, inserts before deletes, in
    /// `row_num` order: `(is_delete, row)`.
    pub fn claim_check_sql(&self) -> Option<String> {
        let d = self.table.delta.as_ref()?;
        let q = format!("{}.{}", super::quote_ident(&d.schema), super::quote_ident(&d.table));
        let op = super::quote_ident(&d.op_column);
        let data = super::quote_ident(&d.data_column);
        Some(format!(
            "SELECT upper({op}::text) IN ('DELETE', 'D') AS is_delete, {data} FROM {q}
              WHERE outbox_id = $1 ORDER BY 1, row_num"
        ))
    }
}

/// Runs a fetch statement of [`OutboxReader::fetch_statement`].
pub async fn fetch_rows(
    client: &Client,
    sql: &str,
    after: i64,
    upto: i64,
    limit: i64,
) -> Result<Vec<HeaderRow>, tokio_postgres::Error> {
    let rows = client.query(sql, &[&after, &upto, &limit]).await?;
    rows.iter()
        .map(|r| {
            Ok(HeaderRow {
                id: r.try_get(0)?,
                payload: r.try_get::<_, Option<JsonText>>(1)?.map(|j| j.0.to_owned()),
                is_claim_check: r.try_get(2)?,
                refresh_id: r.try_get(3)?,
                uid: r.try_get(4)?,
                stamp: crate::message::RowStamp { time_us: r.try_get(5)?, txid: r.try_get(6)? },
            })
        })
        .collect()
}
