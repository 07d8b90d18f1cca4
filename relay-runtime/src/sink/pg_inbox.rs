//! PostgreSQL inbox sink: writes messages into a pg_trickle inbox table (contract §2) in this
//! database or another one (`postgres_url`). Into the relay's own database it borrows from the
//! instance's sink pool (counted in `--max-db-connections`); into another one it keeps a
//! connection of its own.
//!
//! A batch is one `INSERT … SELECT unnest(…) ON CONFLICT (event_id) DO NOTHING` statement — one
//! round trip and one transaction per batch — with `event_id` = the dedup key, so a batch
//! written again after a crash adds nothing; the rows it skipped are reported as duplicates.

use futures::future::BoxFuture;

use super::{BuildError, Published, Sink, SinkContext, SinkError};
use crate::backend::fields::Text;
use crate::backend::pg_inbox::{InboxEventType, PgInboxSinkConfig};
use crate::catalog::pool::WorkPool;
use crate::catalog::{self, DbConnection};
use crate::inbox::{self, InboxError, InboxRow, InboxTable};
use crate::message::envelope::Envelope;
use crate::message::{Payload, RelayMessage};
use crate::redact::redact_url;

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
    /// The instance's sink pool when the inbox is in the relay's own database.
    shared: Option<WorkPool>,
    /// Else a connection of its own (opened again when it closed).
    conn: Option<DbConnection>,
    insert_sql: String,
    event_type: EventType,
    aggregate_id_field: Option<String>,
    source: String,
    envelope: Envelope,
}

pub async fn build(cfg: &PgInboxSinkConfig, ctx: &SinkContext<'_>) -> Result<Box<dyn Sink>, BuildError> {
    let url = cfg.postgres_url.as_ref().map_or(ctx.postgres_url, Text::as_str).to_owned();
    let table = InboxTable::parse(cfg.inbox_table.as_str(), cfg.schema.as_ref().map(Text::as_str));
    let event_type = match cfg.event_type.map(|c| c.0) {
        None | Some(InboxEventType::Subject) => EventType::Subject,
        Some(InboxEventType::Op) => EventType::Op,
    };
    let aggregate_id_field = cfg.aggregate_id_field.as_ref().map(|f| f.0.clone());
    let app_name = format!("pgtrickle-relay {} inbox", ctx.pipeline);
    let unreachable = |e: &dyn std::fmt::Display| {
        BuildError::unreachable(BACKEND, format!("cannot connect to {}: {e}", redact_url(&url)))
    };
    let shared = ctx.own_database.filter(|_| url == ctx.postgres_url).cloned();
    let (conn, borrowed) = match &shared {
        Some(pool) => (None, Some(pool.get().await.map_err(|e| unreachable(&e))?)),
        None => (Some(catalog::connect(&url, &app_name, None).await.map_err(|e| unreachable(&e))?), None),
    };
    let client = match (&conn, &borrowed) {
        (Some(c), _) => &c.client,
        (None, Some(w)) => &**w,
        (None, None) => unreachable!("one of them was just set"),
    };
    table.ensure(client, cfg.create_inbox.is_some_and(|f| f.0)).await.map_err(|e| match e {
        InboxError::Retryable(message) => BuildError::unreachable(BACKEND, message),
        InboxError::Permanent(message) | InboxError::Row(message) => BuildError::open(BACKEND, message),
    })?;
    drop(borrowed);
    let insert_sql = table.insert_sql();
    Ok(Box::new(PgInboxSink {
        url,
        app_name,
        shared,
        conn,
        insert_sql,
        event_type,
        aggregate_id_field,
        source: ctx.pipeline.to_owned(),
        envelope: ctx.envelope.clone(),
    }))
}

fn classify(e: &tokio_postgres::Error) -> SinkError {
    match InboxError::from_pg(e) {
        InboxError::Retryable(message) => SinkError::retryable(BACKEND, message),
        InboxError::Permanent(message) | InboxError::Row(message) => SinkError::permanent(BACKEND, message),
    }
}

impl PgInboxSink {
    fn aggregate_id(&self, m: &RelayMessage) -> Option<String> {
        m.field_text(self.aggregate_id_field.as_deref()?)
    }
}

impl PgInboxSink {
    /// The inbox's database cannot be reached (a borrow or a connect failed).
    fn unreachable(&self, e: &dyn std::fmt::Display) -> SinkError {
        SinkError::retryable(BACKEND, format!("cannot connect to {}: {e}", redact_url(&self.url)))
    }
}

impl Sink for PgInboxSink {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn publish<'a>(&'a mut self, batch: &'a [RelayMessage]) -> BoxFuture<'a, Result<Published, SinkError>> {
        Box::pin(async move {
            let borrowed = match &self.shared {
                Some(pool) => Some(pool.get().await.map_err(|e| self.unreachable(&e))?),
                None => None,
            };
            if borrowed.is_none() && self.conn.as_ref().is_none_or(|c| c.closed.is_cancelled()) {
                let conn = catalog::connect(&self.url, &self.app_name, None).await.map_err(|e| self.unreachable(&e))?;
                self.conn = Some(conn);
            }
            let n = batch.len();
            let rows: Vec<InboxRow> = batch
                .iter()
                .map(|m| InboxRow {
                    event_id: m.dedup_key.clone(),
                    event_type: Some(match self.event_type {
                        EventType::Subject => m.subject.clone(),
                        EventType::Op => m.op.as_str().to_owned(),
                    }),
                    source: Some(self.source.clone()),
                    aggregate_id: self.aggregate_id(m),
                    payload: if self.envelope.is_native() {
                        m.payload.clone()
                    } else {
                        Payload::written(self.envelope.body(m))
                    },
                    trace_id: crate::message::trace_id(&m.traceparent),
                    source_scoped: false,
                })
                .collect();
            let client = match (&borrowed, &self.conn) {
                (Some(w), _) => &**w,
                (None, Some(c)) => &c.client,
                (None, None) => return Err(SinkError::retryable(BACKEND, "not connected")),
            };
            let inserted = inbox::write(client, &self.insert_sql, &rows).await.map_err(|e| match e {
                InboxError::Retryable(message) => SinkError::retryable(BACKEND, message),
                InboxError::Permanent(message) | InboxError::Row(message) => SinkError::permanent(BACKEND, message),
            })?;
            Ok(Published { confirmed: n as u64, duplicates: (n - inserted.len().min(n)) as u64 })
        })
    }

    fn health(&mut self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            if let Some(pool) = &self.shared {
                // The pool opens connections on demand; a borrow is the check.
                let w = pool.get().await.map_err(|e| self.unreachable(&e))?;
                return w.simple_query("SELECT 1").await.map(|_| ()).map_err(|e| classify(&e));
            }
            match &self.conn {
                Some(c) if !c.closed.is_cancelled() => {
                    c.client.simple_query("SELECT 1").await.map(|_| ()).map_err(|e| classify(&e))
                }
                // Reconnected lazily by the next publish; say so meanwhile.
                _ => match catalog::connect(&self.url, &self.app_name, None).await {
                    Ok(c) => {
                        self.conn = Some(c);
                        Ok(())
                    }
                    Err(e) => Err(self.unreachable(&e)),
                },
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
