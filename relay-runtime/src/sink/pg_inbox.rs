//! PostgreSQL inbox sink: writes messages into a pg_trickle inbox table (contract §2) in this
//! database or another one (`postgres_url`).
//!
//! A batch is one `INSERT … SELECT unnest(…) ON CONFLICT (event_id) DO NOTHING` statement — one
//! round trip and one transaction per batch — with `event_id` = the dedup key, so a batch
//! written again after a crash adds nothing; the rows it skipped are reported as duplicates.

use futures::future::BoxFuture;
use serde_json::Value;
use tokio_postgres::error::SqlState;

use super::options::Options;
use super::{BuildError, Published, Sink, SinkContext, SinkError};
use crate::catalog::connect::error_text;
use crate::catalog::{self, redact_url, DbConnection};
use crate::message::RelayMessage;
use crate::outbox::quote_ident;

const BACKEND: &str = "pg-inbox";

/// Which message field becomes the inbox `event_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EventType {
    Subject,
    Op,
}

pub struct PgInboxSink {
    url: String,
    app_name: String,
    conn: Option<DbConnection>,
    insert_sql: String,
    event_type: EventType,
    aggregate_id_field: Option<String>,
    source: String,
}

pub async fn build(
    options: &serde_json::Map<String, Value>,
    ctx: &SinkContext<'_>,
) -> Result<Box<dyn Sink>, BuildError> {
    let o = Options::new(BACKEND, options);
    let url = o.str(&["postgres_url", "url"])?.unwrap_or(ctx.postgres_url).to_owned();
    let table = o.required_str(&["inbox_table", "inbox", "table"])?;
    let (schema, table) = match (o.str(&["schema"])?, table.split_once('.')) {
        (_, Some((s, t))) => (s.trim_matches('"').to_owned(), t.trim_matches('"').to_owned()),
        (Some(s), None) => (s.to_owned(), table.to_owned()),
        (None, None) => ("pgtrickle".to_owned(), table.to_owned()),
    };
    let event_type = match o.str(&["event_type"])? {
        None | Some("subject") => EventType::Subject,
        Some("op") => EventType::Op,
        Some(other) => {
            return Err(BuildError::Option {
                backend: BACKEND,
                key: "event_type".into(),
                message: format!("'{other}' is not one of subject, op"),
            })
        }
    };
    let aggregate_id_field = o.str(&["aggregate_id_field", "aggregate_id"])?.map(str::to_owned);
    let app_name = format!("pgtrickle-relay {} inbox", ctx.pipeline);
    let conn = catalog::connect(&url, &app_name, None).await.map_err(|e| BuildError::Unreachable {
        backend: BACKEND,
        message: format!("cannot connect to {}: {}", redact_url(&url), error_text(&e)),
    })?;
    let qualified = format!("{}.{}", quote_ident(&schema), quote_ident(&table));
    if o.bool("create_inbox", false)? {
        conn.client
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
                schema_q = quote_ident(&schema)
            ))
            .await
            .map_err(|e| BuildError::Open {
                backend: BACKEND,
                message: format!("cannot create inbox {qualified}: {}", error_text(&e)),
            })?;
    }
    let exists: bool = conn
        .client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                             WHERE n.nspname = $1 AND c.relname = $2)",
            &[&schema, &table],
        )
        .await
        .map_err(|e| BuildError::Unreachable { backend: BACKEND, message: error_text(&e) })?
        .get(0);
    if !exists {
        return Err(BuildError::Open {
            backend: BACKEND,
            message: format!(
                "inbox table {qualified} does not exist; create it with SELECT pgtrickle.create_inbox('{table}', '{schema}') or set \"create_inbox\": true"
            ),
        });
    }
    let insert_sql = format!(
        "WITH ins AS (
             INSERT INTO {qualified} (event_id, event_type, source, aggregate_id, payload)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::jsonb[])
             ON CONFLICT (event_id) DO NOTHING
             RETURNING 1)
         SELECT count(*) FROM ins"
    );
    Ok(Box::new(PgInboxSink {
        url,
        app_name,
        conn: Some(conn),
        insert_sql,
        event_type,
        aggregate_id_field,
        source: ctx.pipeline.to_owned(),
    }))
}

fn classify(e: &tokio_postgres::Error) -> SinkError {
    let message = error_text(e);
    let permanent = e.code().is_some_and(|c| {
        let class = &c.code()[..2];
        // Data, constraint, syntax/undefined-object and privilege errors will not go away by
        // retrying; connection, resource and concurrency errors may.
        matches!(class, "22" | "23" | "42" | "2B" | "44") && *c != SqlState::T_R_SERIALIZATION_FAILURE
    });
    if permanent {
        SinkError::Permanent { backend: BACKEND, message }
    } else {
        SinkError::Retryable { backend: BACKEND, message }
    }
}

impl PgInboxSink {
    fn aggregate_id(&self, payload: &Value) -> Option<String> {
        let v = payload.get(self.aggregate_id_field.as_deref()?)?;
        Some(match v {
            Value::String(s) => s.clone(),
            Value::Null => return None,
            other => other.to_string(),
        })
    }
}

impl Sink for PgInboxSink {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn publish<'a>(&'a mut self, batch: &'a [RelayMessage]) -> BoxFuture<'a, Result<Published, SinkError>> {
        Box::pin(async move {
            if self.conn.as_ref().is_none_or(|c| c.closed.is_cancelled()) {
                let conn =
                    catalog::connect(&self.url, &self.app_name, None).await.map_err(|e| SinkError::Retryable {
                        backend: BACKEND,
                        message: format!("cannot connect to {}: {}", redact_url(&self.url), error_text(&e)),
                    })?;
                self.conn = Some(conn);
            }
            let n = batch.len();
            let mut ids = Vec::with_capacity(n);
            let mut types = Vec::with_capacity(n);
            let mut sources = Vec::with_capacity(n);
            let mut aggregates = Vec::with_capacity(n);
            let mut payloads = Vec::with_capacity(n);
            for m in batch {
                ids.push(m.dedup_key.as_str());
                types.push(match self.event_type {
                    EventType::Subject => m.subject.as_str(),
                    EventType::Op => m.op.as_str(),
                });
                sources.push(self.source.as_str());
                aggregates.push(self.aggregate_id(&m.payload));
                payloads.push(&m.payload);
            }
            let Some(conn) = &self.conn else {
                return Err(SinkError::Retryable { backend: BACKEND, message: "not connected".into() });
            };
            let inserted: i64 = conn
                .client
                .query_one(&self.insert_sql, &[&ids, &types, &sources, &aggregates, &payloads])
                .await
                .map_err(|e| classify(&e))?
                .get(0);
            Ok(Published { confirmed: n as u64, duplicates: (n as u64).saturating_sub(inserted as u64) })
        })
    }

    fn health(&mut self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            match &self.conn {
                Some(c) if !c.closed.is_cancelled() => {
                    c.client.simple_query("SELECT 1").await.map(|_| ()).map_err(|e| classify(&e))
                }
                // Reconnected lazily by the next publish; say so meanwhile.
                _ => {
                    catalog::connect(&self.url, &self.app_name, None).await.map(|c| self.conn = Some(c)).map_err(|e| {
                        SinkError::Retryable {
                            backend: BACKEND,
                            message: format!("cannot connect to {}: {}", redact_url(&self.url), error_text(&e)),
                        }
                    })
                }
            }
        })
    }

    fn close(&mut self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            self.conn = None;
            Ok(())
        })
    }
}
