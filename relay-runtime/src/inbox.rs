//! pg_trickle inbox tables (contract §2): resolving and creating them, and the one batched,
//! idempotent write both the `pg-inbox` sink and reverse pipelines use.

use tokio_postgres::error::SqlState;
use tokio_postgres::GenericClient;

use crate::catalog::connect::error_text;
use crate::outbox::quote_ident;

/// A resolved inbox table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxTable {
    pub schema: String,
    pub table: String,
}

/// Why an inbox cannot be used.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum InboxError {
    /// Needs a change (missing table, wrong columns, no rights): retried slowly.
    #[error("{0}")]
    Permanent(String),
    /// A row's values were refused (bad value, check constraint, trigger): that row is poison.
    #[error("{0}")]
    Row(String),
    /// The database was not reachable or the write may succeed later.
    #[error("{0}")]
    Retryable(String),
}

impl InboxError {
    pub fn from_pg(e: &tokio_postgres::Error) -> Self {
        let message = error_text(e);
        // Data and constraint errors are about a row; syntax/undefined-object and privilege
        // errors need a change; connection, resource and concurrency errors may pass.
        match e.code().map(|c| &c.code()[..2]) {
            Some("22" | "23") => InboxError::Row(message),
            Some("42" | "2B" | "44") if e.code() != Some(&SqlState::T_R_SERIALIZATION_FAILURE) => {
                InboxError::Permanent(message)
            }
            _ => InboxError::Retryable(message),
        }
    }

    pub fn is_retryable(&self) -> bool {
        matches!(self, InboxError::Retryable(_))
    }
}

impl InboxTable {
    /// `schema.table`, or a bare name in `schema` (default `pgtrickle`).
    pub fn parse(name: &str, schema: Option<&str>) -> Self {
        match (schema, name.split_once('.')) {
            (_, Some((s, t))) => Self { schema: s.trim_matches('"').to_owned(), table: t.trim_matches('"').to_owned() },
            (Some(s), None) => Self { schema: s.to_owned(), table: name.to_owned() },
            (None, None) => Self { schema: "pgtrickle".to_owned(), table: name.to_owned() },
        }
    }

    pub fn qualified(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.table))
    }

    /// Checks that the table exists; with `create`, creates it first in pg_trickle's
    /// `create_inbox` shape.
    pub async fn ensure(&self, client: &impl GenericClient, create: bool) -> Result<(), InboxError> {
        let qualified = self.qualified();
        if create {
            client
                .batch_execute(&format!(
                    "CREATE SCHEMA IF NOT EXISTS {schema_q};
                     CREATE TABLE IF NOT EXISTS {qualified} (
                         event_id     text        NOT NULL PRIMARY KEY,
                         event_type   text,
                         source       text,
                         aggregate_id text,
                         payload      jsonb,
                         received_at  timestamptz NOT NULL DEFAULT now(),
                         processed_at timestamptz,
                         error        text,
                         retry_count  int         NOT NULL DEFAULT 0,
                         trace_id     text)",
                    schema_q = quote_ident(&self.schema)
                ))
                .await
                .map_err(|e| InboxError::Permanent(format!("cannot create inbox {qualified}: {}", error_text(&e))))?;
        }
        let exists: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                                 WHERE n.nspname = $1 AND c.relname = $2)",
                &[&self.schema, &self.table],
            )
            .await
            .map_err(|e| InboxError::Retryable(error_text(&e)))?
            .get(0);
        if !exists {
            return Err(InboxError::Permanent(format!(
                "inbox table {qualified} does not exist; create it with SELECT pgtrickle.create_inbox('{}', '{}') or set \"create_inbox\": true",
                self.table, self.schema
            )));
        }
        Ok(())
    }

    /// One statement for a whole batch: `INSERT … SELECT unnest(…) ON CONFLICT (event_id) DO
    /// NOTHING RETURNING event_id`: the ids that were new.
    pub fn insert_sql(&self) -> String {
        format!(
            "INSERT INTO {} (event_id, event_type, source, aggregate_id, payload, trace_id)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::jsonb[], $6::text[])
             ON CONFLICT (event_id) DO NOTHING
             RETURNING event_id",
            self.qualified()
        )
    }

    /// What a reverse pipeline runs on this inbox.
    pub fn statements(&self) -> InboxStatements {
        InboxStatements {
            insert: self.insert_sql(),
            sources: format!("SELECT event_id, source FROM {} WHERE event_id = ANY($1::text[])", self.qualified()),
        }
    }
}

/// The statements of [`InboxTable::statements`].
pub struct InboxStatements {
    /// [`InboxTable::insert_sql`], for [`write`].
    pub insert: String,
    /// The stored `source` of rows by `event_id` ($1 `text[]`), for [`stored_sources`].
    pub sources: String,
}

/// One inbox row.
#[derive(Debug, Clone, PartialEq)]
pub struct InboxRow {
    pub event_id: String,
    pub event_type: Option<String>,
    pub source: Option<String>,
    pub aggregate_id: Option<String>,
    pub payload: crate::message::Payload,
    pub trace_id: Option<String>,
    /// `event_id` is unique only within `source` (a CloudEvent's id, CloudEvents 1.0 §id): a
    /// stored row of the same id from another source is another event, not a redelivery.
    pub source_scoped: bool,
}

/// Writes `rows` with one statement (`sql` from [`InboxTable::insert_sql`]); returns the event
/// ids that were new (the rest were already there: duplicates).
pub async fn write(client: &impl GenericClient, sql: &str, rows: &[InboxRow]) -> Result<Vec<String>, InboxError> {
    let ids: Vec<&str> = rows.iter().map(|r| r.event_id.as_str()).collect();
    let types: Vec<Option<&str>> = rows.iter().map(|r| r.event_type.as_deref()).collect();
    let sources: Vec<Option<&str>> = rows.iter().map(|r| r.source.as_deref()).collect();
    let aggregates: Vec<Option<&str>> = rows.iter().map(|r| r.aggregate_id.as_deref()).collect();
    let payloads: Vec<&crate::message::Payload> = rows.iter().map(|r| &r.payload).collect();
    let traces: Vec<Option<&str>> = rows.iter().map(|r| r.trace_id.as_deref()).collect();
    let inserted = client
        .query(sql, &[&ids, &types, &sources, &aggregates, &payloads, &traces])
        .await
        .map_err(|e| InboxError::from_pg(&e))?;
    Ok(inserted.iter().map(|r| r.get(0)).collect())
}

/// The stored `source` of each of `ids` that is in the inbox (`sql`:
/// [`InboxStatements::sources`]).
pub async fn stored_sources(
    client: &impl GenericClient,
    sql: &str,
    ids: &[&str],
) -> Result<std::collections::HashMap<String, Option<String>>, InboxError> {
    let rows = client.query(sql, &[&ids]).await.map_err(|e| InboxError::from_pg(&e))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_resolve_with_and_without_schema() {
        assert_eq!(InboxTable::parse("orders_inbox", None).qualified(), r#""pgtrickle"."orders_inbox""#);
        assert_eq!(InboxTable::parse("app.inbox", Some("x")).qualified(), r#""app"."inbox""#);
        assert_eq!(InboxTable::parse("inbox", Some("app")).qualified(), r#""app"."inbox""#);
    }
}
