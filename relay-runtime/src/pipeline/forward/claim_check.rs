//! Claim-check outbox rows: their rows live in the delta table and can be huge (pg_trickle
//! 0.45 writes the whole stream table there), so they are streamed page by page through a
//! cursor inside one read-only transaction, each page published before the next is read.

use super::{ForwardRunner, Stop};
use crate::message::Payload;
use crate::outbox::decode::{build_messages, Delta};
use crate::outbox::reader::HeaderRow;
use crate::outbox::JsonText;

impl ForwardRunner<'_> {
    /// Streams one outbox row's claim-check rows in pages, inside one read-only transaction
    /// (contract §4.9: the upstream relay declared its cursor outside a transaction).
    pub(super) async fn relay_claim_check(
        &mut self,
        row: &HeaderRow,
        row_ref: &str,
        full_refresh: bool,
        refresh_id: Option<&str>,
    ) -> Result<(), Stop> {
        let Some(sql) = self.reader.claim_check_sql() else {
            let t = self.reader.table();
            let err = format!(
                "claim-check outbox row but no delta table found (expected {}.outbox_delta_rows_{})",
                t.schema, t.stream_table
            );
            return self.dead_letter(row, &err).await;
        };
        let sql = sql.replace("$1", &row.id.to_string());
        let _share = self.begin_cursor().await?;
        let result = self.page_claim_check(&sql, row.id, row_ref, full_refresh, refresh_id).await;
        self.end_cursor_txn("pgt_relay_claim_check", result).await
    }

    async fn page_claim_check(
        &mut self,
        sql: &str,
        outbox_id: i64,
        row_ref: &str,
        full_refresh: bool,
        refresh_id: Option<&str>,
    ) -> Result<(), Stop> {
        let client = self.client()?;
        client.batch_execute(&format!("DECLARE pgt_relay_claim_check NO SCROLL CURSOR FOR {sql}")).await?;
        let fetch = format!("FETCH {} FROM pgt_relay_claim_check", self.spec.claim_check_page_size);
        let mut index = 0usize;
        loop {
            let rows = client.query(&fetch, &[]).await?;
            let n = rows.len();
            let mut inserted = Vec::new();
            let mut deleted = Vec::new();
            for r in &rows {
                let is_delete: bool = r.try_get(0)?;
                let data: JsonText<'_> = r.try_get(1)?;
                let data = Payload::row(data.0, self.spec.keep_internal_columns)
                    .map_err(|e| Stop::Db(format!("claim-check row of outbox row {outbox_id}: {e}")))?;
                if is_delete {
                    deleted.push(data);
                } else {
                    inserted.push(data);
                }
            }
            let mut msgs = Vec::with_capacity(n);
            let delta = Delta {
                outbox_id,
                row_ref,
                inserted,
                deleted,
                full_refresh,
                refresh_id,
                first_index: index,
                first_deleted_index: None,
            };
            build_messages(&self.message_context(), delta, &mut msgs);
            self.publish(&msgs).await?;
            index += n;
            if (n as i64) < self.spec.claim_check_page_size {
                return Ok(());
            }
        }
    }
}
