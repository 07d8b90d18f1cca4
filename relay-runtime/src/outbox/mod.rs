//! Reading pg_trickle outbox tables: finding them ([`OutboxTable::resolve`]), reading header
//! rows in commit-order-safe batches ([`reader`]) and decoding their payloads ([`decode`]).

pub mod decode;
pub mod diff;
pub mod epoch;
pub mod reader;

use serde_json::Value;
use tokio_postgres::Client;

use crate::config::OutboxRef;

/// PostgreSQL truncates identifiers to 63 bytes; pg_trickle cuts names at 63 characters.
const MAX_IDENT: usize = 63;

/// A resolved outbox: its header table, the stream table it belongs to and, if present, its
/// claim-check delta table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxTable {
    pub schema: String,
    /// Bare header table name (`outbox_orders`): the dedup key prefix and `{outbox_table}`.
    pub table: String,
    /// Bare stream table name (`orders`): `{stream_table}` in templates.
    pub stream_table: String,
    /// The stream table's schema (Debezium's `source.schema`): from pg_trickle's catalog when it
    /// names one, else the schema of the only table of that name, else `current_schema()`.
    pub stream_schema: String,
    /// `current_database()` (the envelopes' `source`).
    pub database: String,
    pub has_claim_check_column: bool,
    pub has_refresh_id_column: bool,
    pub has_created_at_column: bool,
    /// pg_trickle's `pgt_id`: a random uuid per outbox row, the row's part of dedup keys.
    pub has_pgt_id_column: bool,
    /// `pgt_outbox_config.created_at` of this outbox (pg_trickle re-inserts the row when it
    /// recreates the outbox): part of the outbox's identity.
    pub registered_at: Option<String>,
    /// The `id` column's sequence, when this session may read it (`pg_sequence_last_value`):
    /// a sequence that went back below the committed offset means the ids were reset.
    pub id_sequence: Option<String>,
    pub delta: Option<DeltaTable>,
}

/// The claim-check table (contract §1.3): pg_trickle's `row_op`/`row_data` columns, or the
/// design's `op`/`payload`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaTable {
    pub schema: String,
    pub table: String,
    pub op_column: String,
    pub data_column: String,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ResolveError {
    #[error("outbox table {schema}.{table} does not exist (stream table '{stream_table}'); enable it with SELECT pgtrickle.enable_outbox('{stream_table}') or fix the pipeline's 'stream_table'/'source.outbox'")]
    Missing { schema: String, table: String, stream_table: String },
    #[error("table {0} is not a pg_trickle outbox: it needs columns 'id' (bigint) and 'payload' (jsonb)")]
    NotAnOutbox(String),
    #[error("database error while resolving the outbox: {0}")]
    Db(String),
}

impl From<tokio_postgres::Error> for ResolveError {
    fn from(e: tokio_postgres::Error) -> Self {
        ResolveError::Db(e.to_string())
    }
}

/// A `json`/`jsonb` value as its text, borrowed from the row (jsonb's binary form is a
/// version byte and the text).
pub struct JsonText<'a>(pub &'a str);

impl<'a> tokio_postgres::types::FromSql<'a> for JsonText<'a> {
    fn from_sql(
        ty: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let text = if *ty == tokio_postgres::types::Type::JSONB {
            match raw.split_first() {
                Some((1, rest)) => rest,
                _ => return Err("unsupported jsonb wire version".into()),
            }
        } else {
            raw
        };
        Ok(JsonText(std::str::from_utf8(text)?))
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        matches!(*ty, tokio_postgres::types::Type::JSON | tokio_postgres::types::Type::JSONB)
    }
}

pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn truncate_chars(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

fn bare(name: &str) -> &str {
    name.rsplit_once('.').map(|(_, t)| t).unwrap_or(name).trim_matches('"')
}

impl OutboxTable {
    pub fn qualified(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.table))
    }

    /// SQL of the highest id the outbox's sequence handed out: `0` for a sequence not used
    /// since it was created or restarted (`RESTART IDENTITY`), NULL when it cannot be read.
    pub fn id_high_sql(&self) -> String {
        match &self.id_sequence {
            Some(s) => format!("coalesce(pg_sequence_last_value({}::regclass), 0)", diff::quote_literal(s)),
            None => "NULL::int8".to_owned(),
        }
    }

    /// SQL of an outbox row's uid (its `pgt_id` as text, NULL when the table has none).
    pub fn uid_sql(&self) -> &'static str {
        if self.has_pgt_id_column {
            "pgt_id::text"
        } else {
            "NULL::text"
        }
    }

    /// Finds the outbox a pipeline refers to. Never derives the name when pg_trickle's catalog
    /// knows it (contract §1.1: read `pgt_outbox_config.outbox_table_name`).
    pub async fn resolve(client: &Client, outbox: &OutboxRef) -> Result<Self, ResolveError> {
        // pg_trickle's catalog rows that can name this outbox, read once per resolve.
        let names: Vec<&str> = match outbox {
            OutboxRef::Outbox(name) => {
                vec![name.split_once('.').map_or(name.as_str(), |(_, t)| t).trim_matches('"'), bare(name)]
            }
            OutboxRef::StreamTable(st) => vec![bare(st)],
        };
        let catalog = outbox_config_rows(client, &names).await?;
        // A table's columns (none: no such table or view) tell whether it exists as well.
        let (schema, table, stream_table, columns) = match outbox {
            OutboxRef::Outbox(name) => {
                let (schema, table) = match name.split_once('.') {
                    Some((s, t)) => (s.trim_matches('"').to_owned(), t.trim_matches('"').to_owned()),
                    None => ("pgtrickle".to_owned(), name.clone()),
                };
                let columns = columns_of(client, &schema, &table).await?;
                if !columns.is_empty() {
                    let st = catalog_row(&catalog, &table)
                        .and_then(|r| r.get("stream_table_name").and_then(Value::as_str).map(|s| bare(s).to_owned()))
                        .unwrap_or_else(|| table.strip_prefix("outbox_").unwrap_or(&table).to_owned());
                    (schema, table, st, columns)
                } else {
                    // The docs' examples pass a stream table name here.
                    let (t, st) = outbox_for_stream_table(&catalog, name);
                    let columns = columns_of(client, "pgtrickle", &t).await?;
                    ("pgtrickle".to_owned(), t, st, columns)
                }
            }
            OutboxRef::StreamTable(st) => {
                let (t, st) = outbox_for_stream_table(&catalog, st);
                let columns = columns_of(client, "pgtrickle", &t).await?;
                ("pgtrickle".to_owned(), t, st, columns)
            }
        };
        if columns.is_empty() {
            return Err(ResolveError::Missing { schema, table, stream_table });
        }
        if !columns.iter().any(|c| c == "id") || !columns.iter().any(|c| c == "payload") {
            return Err(ResolveError::NotAnOutbox(format!("{schema}.{table}")));
        }
        let delta = find_delta_table(client, &schema, &table, &stream_table).await?;
        let registered_at =
            catalog_row(&catalog, &table).and_then(|r| r.get("created_at").and_then(Value::as_str).map(str::to_owned));
        let id_sequence =
            readable_id_sequence(client, &format!("{}.{}", quote_ident(&schema), quote_ident(&table))).await?;
        let catalog_schema = catalog_row(&catalog, &table)
            .and_then(|r| r.get("stream_table_name").and_then(Value::as_str))
            .and_then(|s| s.split_once('.').map(|(schema, _)| schema.trim_matches('"').to_owned()));
        let (database, stream_schema) = stream_table_home(client, &stream_table, catalog_schema).await?;
        Ok(Self {
            stream_schema,
            database,
            has_pgt_id_column: columns.iter().any(|c| c == "pgt_id"),
            registered_at,
            id_sequence,
            has_claim_check_column: columns.iter().any(|c| c == "is_claim_check"),
            has_refresh_id_column: columns.iter().any(|c| c == "refresh_id"),
            has_created_at_column: columns.iter().any(|c| c == "created_at"),
            schema,
            table,
            stream_table,
            delta,
        })
    }
}

/// The stream table's columns in order (pg_trickle's `__pgt_*` ones only with `keep_internal`);
/// none when there is no such table.
pub async fn stream_table_columns(
    client: &Client,
    table: &OutboxTable,
    keep_internal: bool,
) -> Result<Vec<crate::message::envelope::Column>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT a.attname::text,
                    -- A domain is described by its base type (its values are the base type's).
                    CASE WHEN t.typtype = 'd' THEN t.typbasetype::regtype::text ELSE a.atttypid::regtype::text END,
                    a.attnotnull
               FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
               JOIN pg_type t ON t.oid = a.atttypid
              WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
                AND a.attnum > 0 AND NOT a.attisdropped
              ORDER BY a.attnum",
            &[&table.stream_schema, &table.stream_table],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| crate::message::envelope::Column { name: r.get(0), pg_type: r.get(1), not_null: r.get(2) })
        .filter(|c| keep_internal || !c.name.starts_with("__pgt_"))
        .collect())
}

/// `current_database()` and the stream table's schema (`known` when pg_trickle's catalog names it).
async fn stream_table_home(
    client: &Client,
    stream_table: &str,
    known: Option<String>,
) -> Result<(String, String), ResolveError> {
    let row = client
        .query_one(
            "SELECT current_database()::text,
                    coalesce($2::text,
                             (SELECT min(n.nspname)::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                               WHERE c.relname = $1 AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
                              HAVING count(*) = 1),
                             current_schema()::text, 'public')",
            &[&stream_table, &known],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

/// The columns of table or view `schema.table`; none when there is no such table or view.
async fn columns_of(client: &Client, schema: &str, table: &str) -> Result<Vec<String>, ResolveError> {
    Ok(client
        .query(
            "SELECT a.attname::text FROM pg_attribute a
               JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p', 'v')
                AND a.attnum > 0 AND NOT a.attisdropped",
            &[&schema, &table],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// The rows of `pgtrickle.pgt_outbox_config` whose outbox or stream table has one of the bare
/// `names`, as JSON (its columns differ between pg_trickle ≤ 0.45 and ≥ 0.46), or nothing when
/// pg_trickle is not installed. Filtered in SQL (a superset of what [`catalog_row`] and
/// [`outbox_for_stream_table`] match): 1,000 pipelines starting must not read the whole
/// catalog 1,000 times.
async fn outbox_config_rows(client: &Client, names: &[&str]) -> Result<Vec<Value>, ResolveError> {
    // Once seen, pg_trickle's catalog is taken as present (a pipeline start then costs one
    // statement less); should it be dropped, the query fails and the next resolve looks again.
    static PRESENT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    use std::sync::atomic::Ordering::Relaxed;
    if !PRESENT.load(Relaxed) {
        let present: bool =
            client.query_one("SELECT to_regclass('pgtrickle.pgt_outbox_config') IS NOT NULL", &[]).await?.get(0);
        if !present {
            return Ok(Vec::new());
        }
        PRESENT.store(true, Relaxed);
    }
    let rows = client
        .query(
            r#"SELECT j FROM (SELECT to_jsonb(c) AS j FROM pgtrickle.pgt_outbox_config c) r
                WHERE btrim(regexp_replace(coalesce(j->>'outbox_table_name', j->>'tide_outbox_name'), '^.*\.', ''), '"') = ANY($1)
                   OR btrim(regexp_replace(j->>'stream_table_name', '^.*\.', ''), '"') = ANY($1)"#,
            &[&names],
        )
        .await;
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
            PRESENT.store(false, Relaxed);
            return Ok(Vec::new());
        }
        Err(e) => return Err(e.into()),
    };
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

fn outbox_name_of(row: &Value) -> Option<&str> {
    row.get("outbox_table_name").or_else(|| row.get("tide_outbox_name")).and_then(Value::as_str)
}

/// pg_trickle's catalog row of an outbox table, if it has one.
fn catalog_row<'a>(catalog: &'a [Value], outbox_table: &str) -> Option<&'a Value> {
    catalog.iter().find(|r| outbox_name_of(r).map(bare) == Some(outbox_table))
}

/// The `id` column's sequence of `qualified`, if any and if this session may read its value.
async fn readable_id_sequence(client: &Client, qualified: &str) -> Result<Option<String>, ResolveError> {
    let row = client
        .query_one(
            "SELECT s, s IS NOT NULL AND has_sequence_privilege(s, 'SELECT') FROM pg_get_serial_sequence($1, 'id') s",
            &[&qualified],
        )
        .await?;
    let (seq, readable): (Option<String>, Option<bool>) = (row.get(0), row.get(1));
    Ok(seq.filter(|_| readable == Some(true)))
}

/// `(outbox table, bare stream table)` for a stream table name, bare or schema-qualified.
fn outbox_for_stream_table(catalog: &[Value], stream_table: &str) -> (String, String) {
    let st_bare = bare(stream_table).to_owned();
    for row in catalog {
        let Some(name) = row.get("stream_table_name").and_then(Value::as_str) else {
            continue;
        };
        if name == stream_table || bare(name) == st_bare {
            if let Some(outbox) = outbox_name_of(row) {
                return (bare(outbox).to_owned(), st_bare);
            }
        }
    }
    (truncate_chars(&format!("outbox_{st_bare}"), MAX_IDENT), st_bare)
}

async fn find_delta_table(
    client: &Client,
    schema: &str,
    outbox_table: &str,
    stream_table: &str,
) -> Result<Option<DeltaTable>, ResolveError> {
    // pg_trickle's real name first, then the upstream relay's doubled name (contract §7.2).
    let candidates = [
        format!("outbox_delta_rows_{}", truncate_chars(stream_table, 48)),
        truncate_chars(&format!("outbox_delta_rows_{outbox_table}"), MAX_IDENT),
    ];
    for table in candidates {
        let cols = columns_of(client, schema, &table).await?;
        if cols.is_empty() {
            continue;
        }
        let has = |c: &str| cols.iter().any(|x| x == c);
        let (op, data) = if has("row_op") && has("row_data") {
            ("row_op", "row_data")
        } else if has("op") && has("payload") {
            ("op", "payload")
        } else {
            tracing::warn!(table = %table, "claim-check table has neither row_op/row_data nor op/payload columns; ignoring it");
            continue;
        };
        return Ok(Some(DeltaTable {
            schema: schema.to_owned(),
            table,
            op_column: op.to_owned(),
            data_column: data.to_owned(),
        }));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_and_names_cut_by_characters() {
        assert_eq!(quote_ident("outbox_or\"ders"), "\"outbox_or\"\"ders\"");
        assert_eq!(truncate_chars(&"ü".repeat(70), 63).chars().count(), 63);
        assert_eq!(bare("public.orders"), "orders");
        assert_eq!(bare("orders"), "orders");
    }
}
