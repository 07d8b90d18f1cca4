//! The reverse runner: source → inbox table, acknowledged only after the commit.
//!
//! Per batch: receive, turn every message into an inbox row (or, for a poison message, a
//! dead-letter row), write both in one transaction on a borrowed work connection
//! (`INSERT … ON CONFLICT (event_id) DO NOTHING`), commit — only while the instance's lock
//! session still holds the pipeline's lock — and only then acknowledge every message of the
//! batch. A failed write gives the batch back to the source for redelivery; the
//! deterministic event ids make a redelivered message a no-op.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{borrow, borrow_to_finish, report, WorkerLink, START_RETRY};
use crate::backend::fields::Text;
use crate::backoff::Backoff;
use crate::catalog::dead_letters::{self, DeadLetter};
use crate::catalog::pool::{pipeline_lock_held, Work};
use crate::config::keys::{CloudEventsEventIdChoice, InboundEnvelopeChoice};
use crate::config::{Direction, ReverseSpec};
use crate::error::report as report_error;
use crate::inbox::{self, InboxError, InboxRow, InboxStatements, InboxTable};
use crate::message::{trace_id, Payload};
use crate::source::envelope::{self, Inbound, InboundEnvelope, Unwrapped};
use crate::source::{self, Incoming, Outcome, Source, SourceContext};
use crate::state::{PipelineState, PipelineStatus, RelayState};

/// How long one receive waits before the runner looks at cancellation and status again.
const RECEIVE_WAIT: Duration = Duration::from_millis(500);

/// How messages become inbox rows.
#[derive(Debug, Clone)]
pub struct Mapping {
    pub source_name: String,
    pub event_id_field: Option<String>,
    pub event_type_field: String,
    pub default_event_type: String,
    pub aggregate_id_field: Option<String>,
    pub max_message_bytes: usize,
    /// `source_name` was set (it then wins over a CloudEvent's `source`).
    pub source_name_set: bool,
    pub envelope: InboundEnvelope,
    /// `cloudevents_event_id: source_id`: a CloudEvent's `event_id` is `<source> <id>`.
    pub cloudevents_source_id: bool,
}

impl Mapping {
    pub fn of(spec: &ReverseSpec) -> Self {
        let k = &spec.keys;
        let text = |t: &Option<Text>| t.as_ref().map(|t| t.0.clone());
        Self {
            source_name: text(&k.source_name).unwrap_or_else(|| spec.name.clone()),
            event_id_field: text(&k.event_id_field),
            event_type_field: text(&k.event_type_field).unwrap_or_else(|| "event_type".to_owned()),
            default_event_type: text(&k.event_type).unwrap_or_else(|| spec.source_type.to_owned()),
            aggregate_id_field: text(&k.aggregate_id_field),
            max_message_bytes: k.max_message_bytes.map_or(1_048_576, |n| n.get() as usize),
            source_name_set: k.source_name.is_some(),
            envelope: match k.envelope.map(|c| c.0) {
                None | Some(InboundEnvelopeChoice::Auto) => InboundEnvelope::Auto,
                Some(InboundEnvelopeChoice::Native) => InboundEnvelope::Native,
                Some(InboundEnvelopeChoice::CloudEvents) => InboundEnvelope::CloudEvents,
                Some(InboundEnvelopeChoice::Debezium) => InboundEnvelope::Debezium,
            },
            cloudevents_source_id: k.cloudevents_event_id.is_some_and(|c| c.0 == CloudEventsEventIdChoice::SourceId),
        }
    }

    /// The inbox row of a message (none: nothing to store), or why it is poison.
    pub fn row(&self, m: &Incoming) -> Result<Option<InboxRow>, String> {
        if m.body.len() > self.max_message_bytes {
            return Err(format!(
                "message is {} bytes, over max_message_bytes ({})",
                m.body.len(),
                self.max_message_bytes
            ));
        }
        match envelope::inbound(m, self.envelope)? {
            Inbound::Native => self.native_row(m).map(Some),
            Inbound::Tombstone => Ok(None),
            Inbound::Unwrapped(u) => Ok(Some(self.unwrapped_row(m, u))),
        }
    }

    /// A CloudEvent's or Debezium event's row: fields named by the pipeline (looked up in the
    /// event's data) win, then the envelope's own, then the message's.
    fn unwrapped_row(&self, m: &Incoming, u: Unwrapped) -> InboxRow {
        let [id_value, aggregate_value] =
            u.payload.pick([self.event_id_field.as_deref(), self.aggregate_id_field.as_deref()]);
        // Only a CloudEvent has a `source`; its id is unique within that source.
        let envelope_id = match (u.event_id, &u.source) {
            (Some(id), Some(source)) if self.cloudevents_source_id => Some(format!("{source} {id}")),
            (id, _) => id,
        };
        // The inbox's `source` column holds the event's source unless `source_name` overrides it:
        // only then can a stored row tell which source its id came from.
        let source_scoped = u.source.is_some() && !self.source_name_set;
        InboxRow {
            event_id: id_value
                .and_then(crate::message::value_text)
                .or(envelope_id)
                .or_else(|| m.id.clone())
                .unwrap_or_else(|| m.coordinate.clone()),
            event_type: Some(u.event_type.unwrap_or_else(|| self.default_event_type.clone())),
            source: Some(match u.source {
                Some(s) if !self.source_name_set => s,
                _ => self.source_name.clone(),
            }),
            aggregate_id: aggregate_value.and_then(crate::message::value_text).or(u.aggregate_id),
            trace_id: u.traceparent.as_deref().and_then(trace_id),
            payload: u.payload,
            source_scoped,
        }
    }

    /// A message without an envelope: the pipeline's mapping.
    fn native_row(&self, m: &Incoming) -> Result<InboxRow, String> {
        let text = std::str::from_utf8(&m.body).map_err(|e| format!("message is not UTF-8: {e}"))?;
        // Kept as text; only the mapped fields are parsed, in one pass.
        let payload = Payload::parse(text, true).map_err(|e| format!("message is not JSON: {e}"))?;
        let [id_value, type_value, aggregate_value] = payload.pick([
            self.event_id_field.as_deref(),
            Some(self.event_type_field.as_str()),
            self.aggregate_id_field.as_deref(),
        ]);
        let event_id = id_value
            .and_then(crate::message::value_text)
            .or_else(|| m.id.clone())
            .unwrap_or_else(|| m.coordinate.clone());
        let event_type = type_value
            .and_then(|v| match v {
                Value::String(s) => Some(s),
                _ => None,
            })
            .or_else(|| m.header("Pgtrickle-Event-Type").or_else(|| m.header("ce-type")).map(str::to_owned))
            .or_else(|| m.header("x-event-type").map(str::to_owned))
            .or_else(|| m.subject.clone())
            .unwrap_or_else(|| self.default_event_type.clone());
        let aggregate_id = aggregate_value.and_then(crate::message::value_text).or_else(|| m.key.clone());
        Ok(InboxRow {
            event_id,
            event_type: Some(event_type),
            source: Some(self.source_name.clone()),
            aggregate_id,
            payload,
            trace_id: m.header("traceparent").and_then(trace_id),
            source_scoped: false,
        })
    }
}

/// Writes a status with a borrowed connection (in memory only when none can be had).
async fn report_now(ctx: &RelayState, link: &WorkerLink, st: &PipelineStatus, messages: i64, errors: i64) {
    match borrow_to_finish(ctx, link).await {
        Some(work) => report(ctx, &work, st, messages, errors).await,
        None => ctx.update(st),
    }
}

/// Runs a reverse pipeline until cancelled or until its lock session closes.
pub async fn run(ctx: Arc<RelayState>, spec: ReverseSpec, link: &WorkerLink, st: &mut PipelineStatus) {
    let mut backoff = Backoff::new(Duration::from_secs(1), crate::backoff::MAX);
    let (mapping, table, batch_size, mut source) = loop {
        let Some(work) = borrow(&ctx, link).await else { return };
        let attempt = setup(&work, &spec).await;
        drop(work);
        match attempt {
            Ok(ok) => break ok,
            Err((transient, message)) => {
                let wait = if transient { backoff.next_wait() } else { START_RETRY };
                tracing::error!(pipeline = %spec.name, error = %message, retry_in_ms = wait.as_millis() as u64, "cannot start reverse pipeline");
                let kind = if transient { "retryable" } else { "permanent" };
                ctx.metrics.start_errors.with_label_values(&[&spec.name, "reverse", kind]).inc();
                st.state = if transient { PipelineState::Degraded } else { PipelineState::Failed };
                st.errors_total += 1;
                st.last_error = Some(message);
                report_now(&ctx, link, st, 0, 1).await;
                tokio::select! {
                    _ = link.cancel.cancelled() => return,
                    _ = link.lost.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    };
    tracing::info!(pipeline = %spec.name, inbox = %table.qualified(), source = source.name(), "reverse pipeline started");
    st.state = PipelineState::Running;
    st.last_error = None;
    report_now(&ctx, link, st, 0, 0).await;
    let statements = table.statements();
    let labels = [spec.name.as_str(), "reverse"];
    let mut delay = Backoff::new(Duration::from_millis(100), crate::backoff::MAX);
    let (mut unreported, mut unreported_errors, mut last_status) = (0i64, 0i64, Instant::now());
    loop {
        let received = tokio::select! {
            _ = link.cancel.cancelled() => break,
            _ = link.lost.cancelled() => break,
            r = source.receive(batch_size, RECEIVE_WAIT) => r,
        };
        let batch = match received {
            Ok(b) => b,
            Err(e) => {
                ctx.metrics.source_errors.with_label_values(&[labels[0], labels[1], e.kind()]).inc();
                let wait = delay.next_wait();
                tracing::warn!(pipeline = %spec.name, error = %report_error(&e), retry_in_ms = wait.as_millis() as u64, "receive failed");
                let pending = (unreported, unreported_errors);
                (unreported, unreported_errors) = (0, 0);
                if !fail_and_wait(&ctx, link, st, PipelineState::Degraded, report_error(&e), pending, wait).await {
                    break;
                }
                continue;
            }
        };
        if batch.is_empty() {
            if last_status.elapsed() > Duration::from_secs(5) && (unreported > 0 || st.state != PipelineState::Running)
            {
                report_now(&ctx, link, st, unreported, unreported_errors).await;
                (unreported, unreported_errors, last_status) = (0, 0, Instant::now());
            }
            continue;
        }
        let started = Instant::now();
        let Some(work) = borrow(&ctx, link).await else {
            // Stopping (or the lock is gone) before the batch was stored: it goes back.
            source.nack("the relay is stopping").await;
            break;
        };
        let stored = store(&work, link.lock.fence(), &ctx.group_id, &spec.name, &statements, &mapping, &batch).await;
        drop(work);
        match stored {
            Ok(outcomes) => {
                if let Err(e) = source.ack(&outcomes).await {
                    // Stored already: a redelivery is absorbed by the event ids.
                    tracing::warn!(pipeline = %spec.name, error = %report_error(&e), "acknowledging a stored batch failed; its messages may be delivered again (and skipped as duplicates)");
                }
                let n = outcomes.len() as u64;
                let dups = outcomes.iter().filter(|o| **o == Outcome::Duplicate).count() as u64;
                let dead = outcomes.iter().filter(|o| matches!(o, Outcome::DeadLettered(_))).count() as u64;
                let skipped = outcomes.iter().filter(|o| **o == Outcome::Skipped).count() as u64;
                ctx.metrics.messages_consumed.with_label_values(&labels).inc_by(n);
                if skipped > 0 {
                    ctx.metrics
                        .messages_skipped
                        .with_label_values(&[labels[0], labels[1], "tombstone"])
                        .inc_by(skipped);
                }
                // Published: in the inbox now, written by this batch or already there.
                ctx.metrics.messages_published.with_label_values(&labels).inc_by(n - dead - skipped);
                ctx.metrics.dedup_skipped.with_label_values(&[labels[0]]).inc_by(dups);
                if dead > 0 {
                    ctx.metrics.dead_letters.with_label_values(&labels).inc_by(dead);
                    if let Some(Outcome::DeadLettered(e)) =
                        outcomes.iter().find(|o| matches!(o, Outcome::DeadLettered(_)))
                    {
                        st.last_error = Some(format!("{dead} message(s) moved to pgtrickle.relay_dead_letters: {e}"));
                    }
                }
                ctx.metrics.batch_duration.with_label_values(&labels).observe(started.elapsed().as_secs_f64());
                st.messages_total += n as i64;
                unreported += n as i64;
                delay.reset();
                if st.state != PipelineState::Running {
                    st.state = PipelineState::Running;
                    if dead == 0 {
                        st.last_error = None;
                    }
                    report_now(&ctx, link, st, unreported, unreported_errors).await;
                    (unreported, unreported_errors, last_status) = (0, 0, Instant::now());
                }
                ctx.metrics.pipeline_healthy.with_label_values(&labels).set(1);
            }
            Err(e) => {
                source.nack(&e.to_string()).await;
                ctx.metrics
                    .publish_errors
                    .with_label_values(&[
                        labels[0],
                        labels[1],
                        if e.is_retryable() { "retryable" } else { "permanent" },
                    ])
                    .inc();
                if link.lost.is_cancelled() {
                    break;
                }
                let wait = if e.is_retryable() { delay.next_wait() } else { START_RETRY };
                tracing::warn!(pipeline = %spec.name, error = %e, retry_in_ms = wait.as_millis() as u64, "inbox write failed; the batch goes back to the source");
                let state = if e.is_retryable() { PipelineState::Degraded } else { PipelineState::Failed };
                let pending = (unreported, unreported_errors);
                (unreported, unreported_errors) = (0, 0);
                if !fail_and_wait(&ctx, link, st, state, e.to_string(), pending, wait).await {
                    break;
                }
            }
        }
        if last_status.elapsed() > Duration::from_secs(1) {
            report_now(&ctx, link, st, unreported, unreported_errors).await;
            (unreported, unreported_errors, last_status) = (0, 0, Instant::now());
        }
    }
    source.close().await;
    report_now(&ctx, link, st, unreported, unreported_errors).await;
    tracing::info!(pipeline = %spec.name, "reverse pipeline stopped");
}

async fn setup(
    client: &Work,
    spec: &ReverseSpec,
) -> Result<(Mapping, InboxTable, usize, Box<dyn Source>), (bool, String)> {
    let mapping = Mapping::of(spec);
    let table = inbox_table(spec);
    let batch_size = spec.keys.batch_size.map_or(1000, |n| n.get() as usize);
    table
        .ensure(&**client, spec.keys.create_inbox.is_some_and(|f| f.0))
        .await
        .map_err(|e| (e.is_retryable(), e.to_string()))?;
    let source = source::build(spec, &SourceContext { pipeline: &spec.name })
        .await
        .map_err(|e| (e.is_transient(), report_error(&e)))?;
    Ok((mapping, table, batch_size, source))
}

/// The inbox table of a reverse pipeline: `inbox_table`, in `schema` (or `inbox_schema`) when
/// the name is bare.
pub fn inbox_table(spec: &ReverseSpec) -> InboxTable {
    InboxTable::parse(&spec.inbox_table, spec.keys.schema.as_ref().map(Text::as_str))
}

/// Records a failure in the status, reports it (with the counts not reported yet) and waits;
/// `false` when the pipeline was told to stop (or lost its connection) meanwhile.
#[allow(clippy::too_many_arguments)]
async fn fail_and_wait(
    ctx: &RelayState,
    link: &WorkerLink,
    st: &mut PipelineStatus,
    state: PipelineState,
    error: String,
    (messages, errors): (i64, i64),
    wait: Duration,
) -> bool {
    st.state = state;
    st.last_error = Some(error);
    st.errors_total += 1;
    report_now(ctx, link, st, messages, errors + 1).await;
    tokio::select! {
        _ = link.cancel.cancelled() => false,
        _ = link.lost.cancelled() => false,
        _ = tokio::time::sleep(wait) => true,
    }
}

/// Writes a batch in one transaction: inbox rows and dead letters. A row the table rejects
/// (constraint, trigger, bad value) is retried alone and dead-lettered if it fails alone.
async fn store(
    client: &Work,
    lock: (i32, i64),
    group: &str,
    pipeline: &str,
    sql: &InboxStatements,
    mapping: &Mapping,
    batch: &[Incoming],
) -> Result<Vec<Outcome>, InboxError> {
    let mut outcomes = vec![Outcome::Stored; batch.len()];
    let mut rows = Vec::with_capacity(batch.len());
    let mut row_index = Vec::with_capacity(batch.len());
    let mut dead: Vec<(usize, String)> = Vec::new();
    for (i, m) in batch.iter().enumerate() {
        match mapping.row(m) {
            Ok(Some(r)) => {
                rows.push(r);
                row_index.push(i);
            }
            Ok(None) => outcomes[i] = Outcome::Skipped,
            Err(e) => dead.push((i, e)),
        }
    }
    // Duplicates inside one batch (a sender retrying quickly) count once.
    let pg = |e: tokio_postgres::Error| InboxError::from_pg(&e);
    client.begin("BEGIN").await.map_err(pg)?;
    let result: Result<(), InboxError> = async {
        if !rows.is_empty() {
            client.batch_execute("SAVEPOINT batch").await.map_err(pg)?;
            match inbox::write(&**client, &sql.insert, &rows).await {
                Ok(new) => mark_duplicates(&mut outcomes, &rows, &row_index, &new),
                Err(InboxError::Row(_)) => {
                    client.batch_execute("ROLLBACK TO SAVEPOINT batch").await.map_err(pg)?;
                    for (r, &i) in rows.iter().zip(&row_index) {
                        client.batch_execute("SAVEPOINT one").await.map_err(pg)?;
                        match inbox::write(&**client, &sql.insert, std::slice::from_ref(r)).await {
                            Ok(new) if new.is_empty() => outcomes[i] = Outcome::Duplicate,
                            Ok(_) => {}
                            Err(InboxError::Row(e)) => {
                                client.batch_execute("ROLLBACK TO SAVEPOINT one").await.map_err(pg)?;
                                dead.push((i, format!("rejected by the inbox table: {e}")));
                            }
                            Err(e) => return Err(e),
                        }
                    }
                }
                Err(e) => return Err(e),
            }
            dead.extend(collisions(client, sql, &outcomes, &rows, &row_index).await?);
        }
        for (i, error) in &dead {
            let m = &batch[*i];
            let mut headers: serde_json::Map<String, Value> =
                m.headers.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
            if let Some(subject) = &m.subject {
                headers.insert(dead_letters::SUBJECT_HEADER.to_owned(), Value::String(subject.clone()));
            }
            let headers = Value::Object(headers);
            let source_ref = m.id.clone().unwrap_or_else(|| m.coordinate.clone());
            let letter = DeadLetter {
                group,
                direction: Direction::Reverse,
                pipeline,
                source_ref: &source_ref,
                payload: Some(&m.body),
                headers: &headers,
                error,
            };
            dead_letters::keep(&**client, &letter).await.map_err(pg)?;
            tracing::error!(pipeline, message = %source_ref, error = %error, "poison message kept in pgtrickle.relay_dead_letters");
            outcomes[*i] = Outcome::DeadLettered(error.clone());
        }
        // Fenced: nothing is stored (and so nothing acknowledged) once the lock is gone.
        let held: bool = client
            .query_one(&format!("SELECT {}", pipeline_lock_held(1, 2, 3, 4)), &[&group, &pipeline, &lock.0, &lock.1])
            .await
            .map_err(pg)?
            .get(0);
        if !held {
            return Err(InboxError::Retryable(super::forward::LOCK_LOST.to_owned()));
        }
        Ok(())
    }
    .await;
    match result {
        Ok(()) => {
            client.end("COMMIT").await.map_err(pg)?;
            Ok(outcomes)
        }
        Err(e) => {
            let _ = client.end("ROLLBACK").await;
            Err(e)
        }
    }
}

/// The duplicates that are not redeliveries: a CloudEvent whose id is stored from another
/// source is another event (CloudEvents ids are unique per source). Skipping it would lose it
/// silently, so it is dead-lettered, saying so.
async fn collisions(
    client: &Work,
    sql: &InboxStatements,
    outcomes: &[Outcome],
    rows: &[InboxRow],
    index: &[usize],
) -> Result<Vec<(usize, String)>, InboxError> {
    let scoped: Vec<(&InboxRow, usize)> = rows
        .iter()
        .zip(index)
        .filter(|(r, &i)| r.source_scoped && outcomes[i] == Outcome::Duplicate)
        .map(|(r, &i)| (r, i))
        .collect();
    if scoped.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<&str> = scoped.iter().map(|(r, _)| r.event_id.as_str()).collect();
    let stored = inbox::stored_sources(&**client, &sql.sources, &ids).await?;
    Ok(scoped
        .into_iter()
        .filter_map(|(r, i)| {
            let theirs = stored.get(&r.event_id)?;
            (theirs != &r.source).then(|| {
                (i, format!(
                    "event id '{}' from source '{}' is already in the inbox from source '{}': CloudEvents ids are unique only \
                     within their source, so this is another event, not a redelivery. Set \"cloudevents_event_id\": \"source_id\" \
                     to key the inbox on source and id, then replay this dead letter",
                    r.event_id,
                    r.source.as_deref().unwrap_or(""),
                    theirs.as_deref().unwrap_or(""),
                ))
            })
        })
        .collect())
}

/// After a batch insert: a row whose id is not among the new ones (or that repeats an id of
/// the same batch) was a duplicate.
fn mark_duplicates(outcomes: &mut [Outcome], rows: &[InboxRow], index: &[usize], new: &[String]) {
    let mut fresh: std::collections::HashSet<&str> = new.iter().map(String::as_str).collect();
    for (r, &i) in rows.iter().zip(index) {
        if !fresh.remove(r.event_id.as_str()) {
            outcomes[i] = Outcome::Duplicate;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_gives_the_trace_id() {
        assert_eq!(
            trace_id("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(trace_id("00-00000000000000000000000000000000-00f067aa0ba902b7-01"), None);
        assert_eq!(trace_id("garbage"), None);
    }

    fn incoming(body: &str) -> Incoming {
        Incoming {
            id: None,
            coordinate: "nats:s:7".into(),
            subject: Some("orders.created".into()),
            key: None,
            headers: vec![],
            body: body.as_bytes().to_vec(),
            null_body: false,
        }
    }

    fn mapping() -> Mapping {
        Mapping {
            source_name: "p".into(),
            event_id_field: None,
            event_type_field: "event_type".into(),
            default_event_type: "nats".into(),
            aggregate_id_field: Some("order_id".into()),
            max_message_bytes: 100,
            source_name_set: false,
            envelope: InboundEnvelope::Auto,
            cloudevents_source_id: false,
        }
    }

    #[test]
    fn rows_take_ids_types_and_aggregates_in_order_of_preference() {
        let m = mapping();
        let r = m.row(&incoming(r#"{"order_id": 7, "x": 1}"#)).unwrap().unwrap();
        assert_eq!(r.event_id, "nats:s:7", "no own id: the broker coordinate");
        assert_eq!(r.event_type.as_deref(), Some("orders.created"), "no event_type field: the subject");
        assert_eq!(r.aggregate_id.as_deref(), Some("7"));
        let mut with_id = incoming(r#"{"event_type": "OrderPlaced"}"#);
        with_id.id = Some("msg-1".into());
        let r = m.row(&with_id).unwrap().unwrap();
        assert_eq!((r.event_id.as_str(), r.event_type.as_deref()), ("msg-1", Some("OrderPlaced")));
    }

    #[test]
    fn poison_messages_say_why() {
        let m = mapping();
        assert!(m.row(&incoming("not json")).unwrap_err().contains("not JSON"));
        assert!(m.row(&incoming(&format!("\"{}\"", "x".repeat(200)))).unwrap_err().contains("max_message_bytes"));
        let mut bad = incoming("");
        bad.body = vec![0xff, 0xfe];
        assert!(m.row(&bad).unwrap_err().contains("UTF-8"));
    }

    #[test]
    fn a_cloudevent_id_is_scoped_by_its_source_when_asked() {
        let event = incoming(r#"{"specversion":"1.0","id":"7","source":"/shop/a","type":"t","data":{}}"#);
        let row = mapping().row(&event).unwrap().unwrap();
        assert_eq!((row.event_id.as_str(), row.source.as_deref(), row.source_scoped), ("7", Some("/shop/a"), true));
        let scoped = Mapping { cloudevents_source_id: true, ..mapping() };
        assert_eq!(scoped.row(&event).unwrap().unwrap().event_id, "/shop/a 7");
        // `source_name` replaces the source column: a stored row cannot tell the sources apart.
        let named = Mapping { source_name_set: true, ..mapping() };
        assert!(!named.row(&event).unwrap().unwrap().source_scoped);
        // Debezium and native rows have no source of their own.
        assert!(!mapping().row(&incoming(r#"{"order_id": 1}"#)).unwrap().unwrap().source_scoped);
    }

    #[test]
    fn ids_not_returned_as_new_are_duplicates() {
        let row = |id: &str| InboxRow {
            event_id: id.into(),
            event_type: None,
            source: None,
            aggregate_id: None,
            payload: Value::Null.into(),
            trace_id: None,
            source_scoped: false,
        };
        let rows = vec![row("a"), row("b"), row("a")];
        let mut outcomes = vec![Outcome::Stored; 3];
        mark_duplicates(&mut outcomes, &rows, &[0, 1, 2], &["a".to_owned(), "b".to_owned()]);
        assert_eq!(outcomes, vec![Outcome::Stored, Outcome::Stored, Outcome::Duplicate]);
    }
}
