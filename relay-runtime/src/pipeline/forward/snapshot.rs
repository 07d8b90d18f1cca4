//! Diff mode in the runner: a full-snapshot outbox row is a barrier. Everything before it is
//! confirmed and committed first; then its changes against the kept state are streamed to the
//! sink and confirmed; then, in **one transaction** on the lock connection, the state is
//! replaced by the snapshot and the offset moves past the row. A crash anywhere before that
//! commit replays the same diff with the same dedup keys; after it, the diff is never repeated.

use std::time::Duration;

use super::{ForwardRunner, Stop};
use crate::message::{Op, Payload};
use crate::outbox::decode::{diff_message, DiffEvent};
use crate::outbox::diff::{with_literals, SnapshotSource};
use crate::outbox::JsonText;

impl ForwardRunner<'_> {
    pub(super) async fn relay_snapshot(
        &mut self,
        outbox_id: i64,
        row_ref: &str,
        source: SnapshotSource,
        refresh_id: Option<&str>,
    ) -> Result<(), Stop> {
        let Some(diff) = &self.diff else {
            return Ok(());
        };
        let (changes, apply) = (diff.changes_sql(source), diff.apply_sql(source));

        // 1. Everything before this row: confirmed and committed.
        self.marks.push_back((self.publish_calls, outbox_id - 1));
        self.flush_and_commit().await?;

        let group = self.ctx.group_id.clone();
        let pipeline = self.spec.name.clone();
        let first = self
            .client()?
            .query_opt(
                "SELECT 1 FROM pgtrickle.relay_snapshot_baseline WHERE relay_group_id = $1 AND pipeline = $2",
                &[&group, &pipeline],
            )
            .await?
            .is_none();
        let emit = !(first && self.spec.initial_snapshot == crate::config::InitialSnapshot::Skip);

        // 2. The changes, streamed through a cursor and confirmed by the sink.
        let started = std::time::Instant::now();
        let mut emitted = 0usize;
        if emit {
            let share = self.begin_cursor().await?;
            let streamed = self
                .stream_changes(
                    &with_literals(&changes, outbox_id, &group, &pipeline),
                    outbox_id,
                    row_ref,
                    first,
                    refresh_id,
                )
                .await;
            emitted = self.end_cursor_txn("pgt_relay_diff", streamed).await?;
            drop(share);
            self.flush_sink().await?;
        }

        // 3. State and offset together.
        let client = self.client()?;
        client.begin("BEGIN").await?;
        let applied = async {
            client.execute(apply.as_str(), &[&outbox_id, &group, &pipeline]).await?;
            client
                .execute(
                    "INSERT INTO pgtrickle.relay_snapshot_baseline AS b (relay_group_id, pipeline, outbox_id, row_count)
                     SELECT $1, $2, $3, count(*) FROM pgtrickle.relay_snapshot_state WHERE relay_group_id = $1 AND pipeline = $2
                     ON CONFLICT (relay_group_id, pipeline)
                     DO UPDATE SET outbox_id = EXCLUDED.outbox_id, row_count = EXCLUDED.row_count, updated_at = now()",
                    &[&group, &pipeline, &outbox_id],
                )
                .await?;
            crate::catalog::offsets::commit(
                &client,
                &self.commit_sql,
                &group,
                &pipeline,
                outbox_id,
                &self.ctx.worker_id,
                self.link.lock.fence(),
            )
            .await
        }
        .await;
        match applied {
            Ok(true) => client.end("COMMIT").await?,
            Ok(false) => {
                let _ = client.end("ROLLBACK").await;
                return Err(Stop::Db(super::LOCK_LOST.to_owned()));
            }
            Err(e) => {
                let _ = client.end("ROLLBACK").await;
                return Err(e.into());
            }
        }
        if outbox_id > self.offset {
            self.offset = outbox_id;
            self.st.committed_offset = Some(outbox_id);
            self.ctx.metrics.committed_offset.with_label_values(&[&self.spec.name]).set(outbox_id);
        }
        tracing::debug!(pipeline = %self.spec.name, outbox_id, events = emitted, first, took_ms = started.elapsed().as_millis() as u64, "snapshot diffed");
        Ok(())
    }

    /// Streams the diff cursor page by page to the sink; returns how many events it sent.
    async fn stream_changes(
        &mut self,
        sql: &str,
        outbox_id: i64,
        row_ref: &str,
        first: bool,
        refresh_id: Option<&str>,
    ) -> Result<usize, Stop> {
        let client = self.client()?;
        client.batch_execute(&format!("DECLARE pgt_relay_diff NO SCROLL CURSOR FOR {sql}")).await?;
        let fetch = format!("FETCH {} FROM pgt_relay_diff", self.spec.claim_check_page_size);
        let mut index = 0usize;
        loop {
            let rows = client.query(&fetch, &[]).await?;
            let n = rows.len();
            let ctx = self.message_context();
            let keep = ctx.keep_internal_columns;
            let row_of = |r: &tokio_postgres::Row, i: usize| -> Result<Option<Payload>, Stop> {
                match r.try_get::<_, Option<JsonText<'_>>>(i)? {
                    None => Ok(None),
                    Some(t) => Payload::row(t.0, keep)
                        .map(Some)
                        .map_err(|e| Stop::Db(format!("diff row of outbox row {outbox_id}: {e}"))),
                }
            };
            let mut msgs = Vec::with_capacity(n);
            for (i, r) in rows.iter().enumerate() {
                let op = match r.try_get::<_, &str>(0)? {
                    "insert" => Op::Insert,
                    "update" => Op::Update,
                    _ => Op::Delete,
                };
                let event = DiffEvent { op, new: row_of(r, 1)?, old: row_of(r, 2)? };
                msgs.push(diff_message(&ctx, outbox_id, row_ref, index + i, event, first, refresh_id));
            }
            self.publish(&msgs).await?;
            index += n;
            if (n as i64) < self.spec.claim_check_page_size {
                return Ok(index);
            }
            // Let other pipelines run between pages of a huge diff.
            tokio::time::sleep(Duration::ZERO).await;
        }
    }
}
