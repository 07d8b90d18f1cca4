//! Diff mode: turning consecutive full snapshots into insert/update/delete events.
//!
//! pg_trickle 0.36–0.45 writes every refresh as the whole stream table. The relay keeps the
//! last delivered state per pipeline in `pgtrickle.relay_snapshot_state` (row key → row) and
//! computes each new snapshot's difference **in SQL** — a `FULL JOIN` of the snapshot's rows
//! (inline JSON array or claim-check rows) with the state — so memory stays bounded whatever
//! the table size; the relay only streams the changed rows through a cursor.
//!
//! Row identity is `__pgt_row_id` (stable across refreshes), or the configured key columns, or
//! the whole row. Keys and rows are `jsonb`, so numbers compare by value (`175.0` = `175.00`)
//! and key order does not matter; internal `__pgt_*` columns never count as a change.
//! The state is replaced in the same transaction that commits the offset, after the sink
//! confirmed the events, so a crash or a failover never loses, repeats or invents a transition.

use super::{quote_ident, OutboxTable};

/// Where a snapshot's rows live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotSource {
    /// The outbox row's `payload` (a JSON array, or an envelope's `inserted` array).
    Inline,
    /// The claim-check delta table.
    ClaimCheck,
}

/// The statements of one pipeline's diff mode. Parameters: `$1` outbox id, `$2` relay group,
/// `$3` pipeline.
pub struct SnapshotDiff {
    inline_new: String,
    claim_check_new: Option<String>,
}

/// `e` without its `__pgt_*` keys (objects only).
fn clean(e: &str) -> String {
    format!(
        "(CASE WHEN jsonb_typeof({e}) = 'object' \
          THEN {e} - ARRAY(SELECT k FROM jsonb_object_keys({e}) k WHERE k LIKE '\\_\\_pgt\\_%') ELSE {e} END)"
    )
}

/// A SQL string literal.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

impl SnapshotDiff {
    pub fn new(table: &OutboxTable, key_columns: &[String]) -> Self {
        let key = if key_columns.is_empty() {
            format!("coalesce(e -> '__pgt_row_id', {})", clean("e"))
        } else {
            let parts: Vec<String> = key_columns.iter().map(|c| format!("e -> {}", quote_literal(c))).collect();
            format!("jsonb_build_array({})", parts.join(", "))
        };
        // One row per key (the last one wins if a snapshot repeats a key).
        let new_from = |source: &str| {
            format!(
                "SELECT DISTINCT ON (row_key) row_key, e, ord \
                   FROM (SELECT {key} AS row_key, e, ord FROM ({source}) src) keyed \
                  ORDER BY row_key, ord DESC"
            )
        };
        let inline = format!(
            "SELECT t.e, t.ord FROM {q} o, \
               jsonb_array_elements(CASE WHEN jsonb_typeof(o.payload) = 'array' THEN o.payload \
                                         ELSE coalesce(o.payload -> 'inserted', '[]') END) WITH ORDINALITY AS t(e, ord) \
              WHERE o.id = $1",
            q = table.qualified()
        );
        let claim_check = table.delta.as_ref().map(|d| {
            new_from(&format!(
                "SELECT d.{data} AS e, d.row_num AS ord FROM {s}.{t} d WHERE d.outbox_id = $1",
                data = quote_ident(&d.data_column),
                s = quote_ident(&d.schema),
                t = quote_ident(&d.table)
            ))
        });
        Self { inline_new: new_from(&inline), claim_check_new: claim_check }
    }

    fn new_rows(&self, source: SnapshotSource) -> &str {
        match (source, &self.claim_check_new) {
            (SnapshotSource::ClaimCheck, Some(sql)) => sql,
            _ => &self.inline_new,
        }
    }

    /// The changes, inserts and updates first in snapshot order, then deletes:
    /// `(op text, new row jsonb, old row jsonb)`.
    pub fn changes_sql(&self, source: SnapshotSource) -> String {
        format!(
            "WITH new AS ({new}), \
                  old AS (SELECT row_key, row_data FROM pgtrickle.relay_snapshot_state \
                           WHERE relay_group_id = $2 AND pipeline = $3) \
             SELECT CASE WHEN old.row_key IS NULL THEN 'insert' WHEN new.row_key IS NULL THEN 'delete' ELSE 'update' END, \
                    new.e, old.row_data \
               FROM new FULL JOIN old ON new.row_key = old.row_key \
              WHERE old.row_key IS NULL OR new.row_key IS NULL OR {cn} IS DISTINCT FROM {co} \
              ORDER BY new.row_key IS NULL, new.ord, old.row_key",
            new = self.new_rows(source),
            cn = clean("new.e"),
            co = clean("old.row_data"),
        )
    }

    /// Replaces the state by the snapshot (only the rows that changed are written); returns
    /// nothing. Run in the transaction that commits the offset.
    pub fn apply_sql(&self, source: SnapshotSource) -> String {
        format!(
            "WITH new AS ({new}), \
                  gone AS (DELETE FROM pgtrickle.relay_snapshot_state s \
                            WHERE s.relay_group_id = $2 AND s.pipeline = $3 \
                              AND NOT EXISTS (SELECT 1 FROM new WHERE new.row_key = s.row_key)) \
             INSERT INTO pgtrickle.relay_snapshot_state AS s (relay_group_id, pipeline, row_key, row_data) \
             SELECT $2, $3, row_key, e FROM new \
             ON CONFLICT (relay_group_id, pipeline, row_key) DO UPDATE SET row_data = EXCLUDED.row_data \
              WHERE s.row_data IS DISTINCT FROM EXCLUDED.row_data",
            new = self.new_rows(source)
        )
    }
}

/// `SQL` with `$1`..`$3` replaced by literals, for a cursor (DECLARE takes no parameters).
pub fn with_literals(sql: &str, outbox_id: i64, group: &str, pipeline: &str) -> String {
    sql.replace("$1", &outbox_id.to_string())
        .replace("$2", &quote_literal(group))
        .replace("$3", &quote_literal(pipeline))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_are_quoted() {
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(with_literals("a $1 $2 $3", 7, "g'1", "p"), "a 7 'g''1' 'p'");
    }
}
