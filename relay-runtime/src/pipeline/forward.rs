//! The forward runner: outbox → sink, one batch at a time.
//!
//! Per batch: take the safe horizon, read up to `batch_size` header rows after the committed
//! offset, decode them into messages (claim-check rows page by page inside a read-only
//! transaction), publish them — retrying retryable failures with jittered backoff, never
//! skipping — and only after the sink confirmed everything commit the new offset on the lock
//! connection. Undecodable rows go to the dead-letter table, never silently dropped.
//!
//! Before reading, the pipeline's outbox epoch is checked (`outbox::epoch`): a recreated
//! outbox, or one whose ids were reset, is relayed from its beginning. The running reader
//! watches the table (OID, relfilenode, id sequence) and sends the pipeline back to that check
//! when it changes, so it never waits for ids the new outbox will not reach.

mod claim_check;
mod snapshot;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use super::{borrow, report, WorkerLink, START_RETRY};
use crate::backoff::{jitter, Backoff};
use crate::catalog::dead_letters::{self, DeadLetter};
use crate::catalog::offsets;
use crate::catalog::pipelines;
use crate::catalog::pool::Work;
use crate::config::{DeltaMode, Direction, ForwardSpec, PipelineSpec, SinkConfig};
use crate::error::report as report_error;
use crate::message::envelope::{Column, Envelope, EnvelopeFacts, EnvelopeSpec};
use crate::message::outbox_row_ref;
use crate::message::{RelayMessage, TemplateNames};
use crate::otel::RowSpan;
use crate::outbox::decode::{build_messages, decode, summary_message, Decoded, Delta, MessageContext};
use crate::outbox::diff::{SnapshotDiff, SnapshotSource};
use crate::outbox::epoch::{self, Epoch};
use crate::outbox::reader::{fetch_rows, HeaderRow, HorizonError, OutboxReader};
use crate::outbox::OutboxTable;
use crate::sink::{self, Sink, SinkContext};
use crate::state::{PipelineState, PipelineStatus, RelayState};

/// Messages held before publishing a chunk, bounding memory for huge outbox rows.
const MAX_CHUNK_MESSAGES: usize = 10_000;
/// Status table and lag refresh period while busy (and the idle sink health check period).
const STATUS_EVERY: Duration = Duration::from_secs(1);
/// An idle pipeline whose outbox the coordinator watches (and that no open writer holds) still
/// looks by itself about this often (jittered, so that 1,000 idle pipelines spread their looks:
/// about 17 cheap queries a second), in case rows came without moving the id sequence.
const WATCHED_SAFETY_POLL: Duration = Duration::from_secs(60);
/// How often an idle, running pipeline checks its sink (a degraded one checks every
/// [`STATUS_EVERY`], to report its recovery at once): 1,000 idle pipelines wake ~100 times a
/// second, not 1,000.
const IDLE_HEALTH_EVERY: Duration = Duration::from_secs(10);
/// Wait between attempts after a permanent sink failure (the data stays; a config change or
/// a fixed target lets the pipeline continue).
const PERMANENT_RETRY: Duration = Duration::from_secs(30);

/// Why the runner stopped.
enum Stop {
    Cancelled,
    Db(String),
    /// The sink failed: forget what is in flight and read again from the committed offset.
    Rewind(crate::sink::SinkError),
    /// The outbox is not the one the epoch was checked against: check it again.
    OutboxChanged(&'static str),
}

impl From<tokio_postgres::Error> for Stop {
    fn from(e: tokio_postgres::Error) -> Self {
        if e.code() == Some(&SqlState::UNDEFINED_TABLE) {
            return Stop::OutboxChanged("the outbox table no longer exists");
        }
        Stop::Db(e.to_string())
    }
}

impl From<HorizonError> for Stop {
    fn from(e: HorizonError) -> Self {
        match e {
            HorizonError::Db(e) => e.into(),
            HorizonError::Changed(why) => Stop::OutboxChanged(why),
        }
    }
}

const LOCK_SESSION_CLOSED: &str = "the instance's lock session (which holds the pipeline's lock) closed";
/// The fenced commit found the lock gone: another instance may own the pipeline now.
pub(crate) const LOCK_LOST: &str =
    "the pipeline's advisory lock is no longer held by this session; stopped before committing";

pub async fn run(ctx: Arc<RelayState>, spec: ForwardSpec, link: &WorkerLink, st: &mut PipelineStatus) {
    loop {
        let Some(Started { table, sink, epoch }) = start(&ctx, &spec, link, st).await else {
            return;
        };
        let _ = link.outbox_table.set(table.table.clone());
        link.watch_sequence(table.id_sequence.clone());
        tracing::info!(pipeline = %spec.name, outbox = %table.qualified(), sink = sink.name(), offset = epoch.offset, epoch = epoch.number, "forward pipeline started");
        st.state = PipelineState::Running;
        st.last_error = None;
        st.committed_offset = Some(epoch.offset);
        st.outbox_epoch = Some(epoch.number);

        let mut runner = ForwardRunner {
            labels: [spec.name.clone(), "forward".to_owned()],
            ctx: ctx.clone(),
            diff: (spec.delta_mode == DeltaMode::Diff).then(|| SnapshotDiff::new(&table, &spec.key_columns)),
            names: template_names(&spec, &table),
            commit_sql: offsets::commit_sql(Some(&epoch::anchor_select(&table, (epoch.table_oid, epoch.relfilenode)))),
            reader: OutboxReader::new(table, (epoch.table_oid, epoch.relfilenode), epoch.offset),
            scope: epoch.scope,
            stamp: Default::default(),
            spec: spec.clone(),
            work: None,
            link,
            st: &mut *st,
            sink,
            offset: epoch.offset,
            read_pos: epoch.offset,
            marks: VecDeque::new(),
            publish_calls: 0,
            confirmed_calls: 0,
            sent_at: VecDeque::new(),
            backoff: Backoff::new(Duration::from_millis(100), crate::backoff::MAX),
            last_health: Instant::now(),
            unreported_messages: 0,
            unreported_errors: 0,
            last_status: Instant::now(),
            status_due: true,
            prefetched: None,
        };
        // Written with the first batch's connection (one borrow less per pipeline start).
        ctx.update(runner.st);
        let stop = runner.run_loop().await;
        // The last flush, commit and status write need a connection even after a cancel.
        if runner.work.is_none() {
            runner.work = super::borrow_to_finish(&ctx, link).await.map(Arc::new);
        }
        if matches!(stop, Stop::Cancelled | Stop::OutboxChanged(_)) {
            // Confirm and commit what is in flight, so nothing is sent twice (a dropped outbox
            // cannot take the commit; its epoch ends anyway).
            match runner.flush_and_commit().await {
                Err(Stop::Rewind(e)) => {
                    tracing::warn!(pipeline = %runner.spec.name, error = %report_error(&e), "in-flight messages not confirmed at stop; they will be relayed again")
                }
                Err(Stop::Db(e)) => {
                    tracing::debug!(pipeline = %runner.spec.name, error = %e, "in-flight batch not committed")
                }
                _ => {}
            }
        }
        if let Err(e) = runner.sink.close().await {
            tracing::warn!(pipeline = %runner.spec.name, error = %report_error(&e), "sink did not close cleanly");
        }
        runner.flush_status().await;
        match stop {
            Stop::Cancelled => {
                tracing::info!(pipeline = %runner.spec.name, offset = runner.offset, "forward pipeline stopped")
            }
            Stop::OutboxChanged(why) => {
                tracing::info!(pipeline = %runner.spec.name, reason = why, "checking the pipeline's outbox again");
                continue;
            }
            Stop::Db(e) => {
                tracing::warn!(pipeline = %runner.spec.name, error = %e, "forward pipeline lost its database connection; another discovery will resume it")
            }
            Stop::Rewind(e) => {
                tracing::warn!(pipeline = %runner.spec.name, error = %report_error(&e), "forward pipeline stopped after a sink error")
            }
        }
        return;
    }
}

/// A pipeline ready to relay: its outbox, its sink and the epoch it reads in.
struct Started {
    table: OutboxTable,
    sink: Box<dyn Sink>,
    epoch: Epoch,
}

/// Resolves the outbox, checks its epoch and builds the sink, retrying until it works. `None`
/// when the worker must stop (cancelled, or its lock is gone). The sink is built holding no
/// database connection (a broker may take its time to answer).
async fn start(ctx: &RelayState, spec: &ForwardSpec, link: &WorkerLink, st: &mut PipelineStatus) -> Option<Started> {
    let mut backoff = Backoff::new(Duration::from_secs(1), crate::backoff::MAX);
    loop {
        let work = borrow(ctx, link).await?;
        let prepared = prepare(ctx, spec, &work, link.lock.fence()).await;
        drop(work);
        let built = match prepared {
            Ok((table, epoch, columns)) => {
                build_sink(ctx, spec, &table, &epoch, &columns).await.map(|sink| Started { table, sink, epoch })
            }
            Err(e) => Err(e),
        };
        let e = match built {
            Ok(started) => return Some(started),
            Err(SetupError::LockLost) => {
                tracing::warn!(pipeline = %spec.name, "{LOCK_LOST}");
                return None;
            }
            Err(SetupError::Retry { message, transient }) => (message, transient),
        };
        let (message, transient) = e;
        // A target that is down makes the pipeline degraded and retried with backoff; anything
        // else needs a change and is retried slowly (or when its outbox is written to).
        let wait = if transient { backoff.next_wait() } else { START_RETRY };
        tracing::error!(pipeline = %spec.name, error = %message, retry_in_ms = wait.as_millis() as u64, "cannot start forward pipeline");
        let kind = if transient { "retryable" } else { "permanent" };
        ctx.metrics.start_errors.with_label_values(&[&spec.name, "forward", kind]).inc();
        st.state = if transient { PipelineState::Degraded } else { PipelineState::Failed };
        st.errors_total += 1;
        st.last_error = Some(message);
        match borrow(ctx, link).await {
            Some(work) => report(ctx, &work, st, 0, 1).await,
            None => return None,
        }
        tokio::select! {
            _ = link.cancel.cancelled() => return None,
            _ = link.lost.cancelled() => return None,
            _ = link.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Why a pipeline could not start, and whether waiting can fix it.
enum SetupError {
    Retry { message: String, transient: bool },
    LockLost,
}

/// The outbox and the epoch to read it in.
async fn prepare(
    ctx: &RelayState,
    spec: &ForwardSpec,
    client: &Client,
    fence: (i32, i64),
) -> Result<(OutboxTable, Epoch, Vec<Column>), SetupError> {
    let table = OutboxTable::resolve(client, &spec.outbox)
        .await
        .map_err(|e| SetupError::Retry { message: e.to_string(), transient: false })?;
    if let Some(message) = shared_fifo_queue(client, spec, &table).await {
        return Err(SetupError::Retry { message, transient: false });
    }
    let columns = if matches!(spec.envelope, EnvelopeSpec::Debezium { schemas: true, .. }) {
        let columns =
            crate::outbox::stream_table_columns(client, &table, spec.keep_internal_columns).await.map_err(|e| {
                SetupError::Retry { message: format!("cannot read the stream table's columns: {e}"), transient: true }
            })?;
        if columns.is_empty() {
            return Err(SetupError::Retry {
                message: format!(
                    "key 'debezium_schemas': no table {}.{} to describe; the Connect schema is built from the stream table's columns",
                    table.stream_schema, table.stream_table
                ),
                transient: false,
            });
        }
        columns
    } else {
        Vec::new()
    };
    let epoch = match epoch::check(client, &ctx.group_id, &spec.name, &table, fence).await {
        Ok(epoch) => epoch,
        Err(epoch::CheckError::LockLost) => return Err(SetupError::LockLost),
        Err(epoch::CheckError::Db(e)) => {
            return Err(SetupError::Retry {
                message: format!("cannot check the outbox's epoch: {}", crate::catalog::connect::error_text(&e)),
                transient: true,
            })
        }
    };
    if let Some(reason) = epoch.new_epoch {
        tracing::warn!(
            pipeline = %spec.name, outbox = %table.qualified(), epoch = epoch.number, reason = reason.as_str(),
            "the pipeline's outbox is a new one: relaying it from its beginning"
        );
        ctx.metrics.outbox_recreated.with_label_values(&[&spec.name]).inc();
    }
    Ok((table, epoch, columns))
}

async fn build_sink(
    ctx: &RelayState,
    spec: &ForwardSpec,
    table: &OutboxTable,
    epoch: &Epoch,
    columns: &[Column],
) -> Result<Box<dyn Sink>, SetupError> {
    if !spec.conflicts.is_empty() {
        return Err(SetupError::Retry { message: spec.conflicts.join("; "), transient: false });
    }
    let names = template_names(spec, table);
    let envelope = envelope_of(spec, &names, columns);
    let sink_ctx = SinkContext {
        envelope: &envelope,
        pipeline: &spec.name,
        subject_template: spec.subject_template.source(),
        postgres_url: &ctx.postgres_url,
        names: &names,
        dedup_scope: &epoch.scope,
        own_database: Some(&ctx.sink_pool),
    };
    sink::build(&spec.sink, &sink_ctx)
        .await
        .map_err(|e| SetupError::Retry { transient: e.is_transient(), message: report_error(&e) })
}

/// Another enabled forward pipeline relaying the same outbox into the same SQS FIFO queue. SQS
/// drops a message whose deduplication id (the row's dedup key) it saw within 5 minutes and
/// reports it sent, so each of the two would silently lose the rows the other sent first: both
/// stop, saying so. A catalog that cannot be read skips the check (it runs again at each start).
pub(crate) async fn shared_fifo_queue(client: &Client, spec: &ForwardSpec, table: &OutboxTable) -> Option<String> {
    let SinkConfig::Sqs(sqs) = &spec.sink.config else { return None };
    let queue = sqs.client.queue_url.as_str();
    if !queue.ends_with(".fifo") {
        return None;
    }
    let rows = pipelines::list(client).await.ok()?;
    for row in rows.iter().filter(|r| r.enabled && r.direction == Direction::Forward && r.name != spec.name) {
        let Ok(PipelineSpec::Forward(other)) = row.parse() else { continue };
        let same_queue = matches!(&other.sink.config, SinkConfig::Sqs(o) if o.client.queue_url.as_str() == queue);
        if !same_queue {
            continue;
        }
        let Ok(theirs) = OutboxTable::resolve(client, &other.outbox).await else { continue };
        if theirs.qualified() == table.qualified() {
            return Some(format!(
                "pipeline '{}' relays the same outbox {} into the same SQS FIFO queue {queue}: SQS drops a message \
                 whose MessageDeduplicationId (the row's dedup key) it saw in the last 5 minutes and reports it sent, \
                 so each pipeline would lose the rows the other sent first. Give each pipeline its own queue (or \
                 disable one)",
                other.name,
                table.qualified()
            ));
        }
    }
    None
}

/// What the pipeline's templates can name, for its resolved outbox.
pub(crate) fn template_names(spec: &ForwardSpec, table: &OutboxTable) -> TemplateNames {
    TemplateNames {
        pipeline: spec.name.clone(),
        database: table.database.clone(),
        schema: table.stream_schema.clone(),
        stream_table: table.stream_table.clone(),
        outbox_table: table.table.clone(),
    }
}

/// The pipeline's envelope for its resolved outbox.
pub(crate) fn envelope_of(spec: &ForwardSpec, names: &TemplateNames, columns: &[Column]) -> Envelope {
    Envelope::new(&spec.envelope, &EnvelopeFacts { names, key_columns: &spec.key_columns, columns })
}

/// The next batch, read ahead: rows with `after < id <= upto`.
struct Prefetched {
    after: i64,
    upto: i64,
    rows: Vec<HeaderRow>,
}

struct ForwardRunner<'a> {
    ctx: Arc<RelayState>,
    spec: ForwardSpec,
    /// The work connection borrowed for the current batch (given back between batches and
    /// while idle, so that many pipelines share few connections).
    work: Option<Arc<Work>>,
    link: &'a WorkerLink,
    st: &'a mut PipelineStatus,
    reader: OutboxReader,
    /// The epoch's scope: names dedup state, and outbox rows without a `pgt_id` in dedup keys.
    scope: String,
    /// The outbox row being relayed ([`MessageContext::stamp`]).
    stamp: crate::message::RowStamp,
    /// What the subject template can name.
    names: TemplateNames,
    /// The fenced offset commit, recording the outbox row it stands on.
    commit_sql: String,
    sink: Box<dyn Sink>,
    /// Committed: every message up to here was confirmed by the sink.
    offset: i64,
    /// Read and sent up to here (ahead of `offset` while a pipelined sink confirms).
    read_pos: i64,
    /// Batches sent but not yet committed: (publish calls made before the batch ended, offset).
    marks: VecDeque<(u64, i64)>,
    publish_calls: u64,
    /// Publish calls whose messages are all confirmed.
    confirmed_calls: u64,
    /// When each unconfirmed publish call was handed to the sink (for the broker-ack latency),
    /// and its outbox rows when spans are exported.
    sent_at: VecDeque<Sent>,
    /// Backoff for consecutive sink failures.
    backoff: Backoff,
    last_health: Instant,
    labels: [String; 2],
    unreported_messages: i64,
    unreported_errors: i64,
    last_status: Instant,
    /// The status changed without being written yet (the pipeline just started).
    status_due: bool,
    prefetched: Option<Prefetched>,
    /// Diff mode's statements (`delta_mode: diff`).
    diff: Option<SnapshotDiff>,
}

impl ForwardRunner<'_> {
    fn labels(&self) -> [&str; 2] {
        [&self.labels[0], &self.labels[1]]
    }

    /// The connection of the current batch.
    fn client(&self) -> Result<Arc<Work>, Stop> {
        self.work.clone().ok_or_else(|| Stop::Db("no work connection borrowed".to_owned()))
    }

    async fn run_loop(&mut self) -> Stop {
        loop {
            if self.link.cancel.is_cancelled() {
                return Stop::Cancelled;
            }
            if self.work.is_none() {
                match borrow(&self.ctx, self.link).await {
                    Some(w) => self.work = Some(Arc::new(w)),
                    None if self.link.lost.is_cancelled() => return Stop::Db(LOCK_SESSION_CLOSED.to_owned()),
                    None => return Stop::Cancelled,
                }
            }
            match self.step().await {
                // Back to the pool between batches: waiting pipelines get their turn.
                Ok(true) => self.work = None,
                Ok(false) => {
                    self.check_sink_health().await;
                    if let Err(e) = self.refresh_lag().await {
                        return e;
                    }
                    self.work = None;
                    if let Some(stop) = self.idle().await {
                        return stop;
                    }
                }
                Err(Stop::Rewind(e)) => {
                    if let Some(stop) = self.sink_failed(e).await {
                        return stop;
                    }
                }
                Err(stop) => return stop,
            }
        }
    }

    /// Waits, holding no connection, until there may be rows: a notification, the coordinator
    /// seeing the outbox's sequence move, or the fallback poll (`poll_interval`, or
    /// [`WATCHED_SAFETY_POLL`] when the coordinator watches and no open transaction holds rows
    /// back). Checks the sink meanwhile.
    async fn idle(&mut self) -> Option<Stop> {
        let watched = self.link.watched().is_some() && !self.reader.is_pending();
        let fallback =
            if watched { jitter(WATCHED_SAFETY_POLL).max(self.spec.poll_interval) } else { self.spec.poll_interval };
        let deadline = tokio::time::Instant::now() + fallback;
        loop {
            let tick = deadline.min(tokio::time::Instant::now() + self.health_period());
            tokio::select! {
                _ = self.link.cancel.cancelled() => return Some(Stop::Cancelled),
                _ = self.link.lost.cancelled() => return Some(Stop::Db(LOCK_SESSION_CLOSED.to_owned())),
                _ = self.link.wake.notified() => return None,
                _ = tokio::time::sleep_until(tick) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            self.check_sink_health().await;
        }
    }

    fn health_period(&self) -> Duration {
        if self.st.state == PipelineState::Running {
            IDLE_HEALTH_EVERY
        } else {
            STATUS_EVERY
        }
    }

    /// While idle, at most once per health period: report an unreachable target as `degraded`
    /// (and its recovery) without waiting for the next message.
    async fn check_sink_health(&mut self) {
        if self.last_health.elapsed() < self.health_period() {
            return;
        }
        self.last_health = Instant::now();
        match self.sink.health().await {
            Ok(()) if self.st.state == PipelineState::Degraded && self.marks.is_empty() => {
                tracing::info!(pipeline = %self.spec.name, "sink reachable again");
                self.st.state = PipelineState::Running;
                self.st.last_error = None;
                self.flush_status().await;
            }
            Err(e) if self.st.state == PipelineState::Running => {
                tracing::warn!(pipeline = %self.spec.name, error = %report_error(&e), "sink unhealthy while idle");
                self.st.state = PipelineState::Degraded;
                self.st.last_error = Some(report_error(&e));
                self.flush_status().await;
            }
            _ => {}
        }
    }

    /// After a sink error: nothing unconfirmed counts as delivered. Read again from the
    /// committed offset after a backoff (the target dedups what it already has).
    async fn sink_failed(&mut self, e: crate::sink::SinkError) -> Option<Stop> {
        self.sink.reset();
        self.marks.clear();
        self.sent_at.clear();
        self.prefetched = None;
        self.read_pos = self.offset;
        let [p, d] = self.labels();
        self.ctx.metrics.publish_errors.with_label_values(&[p, d, e.kind()]).inc();
        self.st.errors_total += 1;
        self.unreported_errors += 1;
        let wait = if e.is_retryable() { self.backoff.next_wait() } else { PERMANENT_RETRY };
        tracing::warn!(pipeline = %self.spec.name, error = %report_error(&e), retry_in_ms = wait.as_millis() as u64, offset = self.offset, "publish failed; relaying again from the committed offset");
        self.st.state = if e.is_retryable() { PipelineState::Degraded } else { PipelineState::Failed };
        self.st.last_error = Some(report_error(&e));
        // The lag grows while the target fails: refresh it with the status (the lag alerts
        // watch it), on the batch's connection.
        if self.work.is_some() {
            if let Err(stop) = self.refresh_lag().await {
                return Some(stop);
            }
        } else {
            self.flush_status().await;
        }
        self.work = None;
        tokio::select! {
            _ = self.link.cancel.cancelled() => Some(Stop::Cancelled),
            _ = self.link.lost.cancelled() => Some(Stop::Db(LOCK_SESSION_CLOSED.to_owned())),
            _ = tokio::time::sleep(wait) => None,
        }
    }

    /// One batch. `Ok(false)` when there was nothing to relay.
    async fn step(&mut self) -> Result<bool, Stop> {
        let client = self.client()?;
        let safe = self.reader.safe_horizon(&client).await?;
        if safe <= self.read_pos {
            // Idle: make sure what is in flight is confirmed and committed.
            self.flush_and_commit().await?;
            return Ok(false);
        }
        let started = Instant::now();
        let (rows, upto) = match self.prefetched.take() {
            Some(p) if p.after == self.read_pos => (p.rows, p.upto),
            _ => (self.reader.fetch(&client, self.read_pos, safe, self.spec.batch_size).await?, safe),
        };
        let full = rows.len() as i64 == self.spec.batch_size;
        // A short batch covers everything up to its horizon (ids in between were rolled back).
        let new_pos = match rows.last() {
            Some(last) if full => last.id,
            _ => upto,
        };
        let had_rows = !rows.is_empty();
        if full {
            // Read the next batch while this one is published, so PostgreSQL and the relay work
            // at the same time. The rows are only used if this batch goes through as planned.
            // The step's connection handle goes with the read-ahead: a claim-check or diff cursor
            // waiting for its share gives the connection back (see `begin_cursor`).
            let (client, sql, limit) = (client, self.reader.fetch_statement(), self.spec.batch_size);
            // The fetch goes first so its query is on the wire before this batch's CPU work
            // starts (join! polls in order); the runner yields between outbox rows so the
            // connection task can take in the rows meanwhile.
            let next = async move { fetch_rows(&client, &sql, new_pos, safe, limit).await };
            let (next, relayed) = tokio::join!(next, self.relay_rows(rows));
            relayed?;
            if let Ok(rows) = next {
                self.prefetched = Some(Prefetched { after: new_pos, upto: safe, rows });
            }
        } else {
            drop(client);
            self.relay_rows(rows).await?;
        }
        self.marks.push_back((self.publish_calls, new_pos));
        self.read_pos = new_pos;
        self.commit_confirmed().await?;
        if had_rows {
            self.ctx.metrics.batch_duration.with_label_values(&self.labels()).observe(started.elapsed().as_secs_f64());
        }
        if self.last_status.elapsed() >= STATUS_EVERY {
            self.refresh_lag().await?;
        }
        Ok(had_rows)
    }

    /// Commits the highest offset whose batches the sink has fully confirmed.
    async fn commit_confirmed(&mut self) -> Result<(), Stop> {
        let mut to = None;
        while let Some(&(calls, offset)) = self.marks.front() {
            if calls > self.confirmed_calls {
                break;
            }
            to = Some(offset);
            self.marks.pop_front();
        }
        match to {
            Some(offset) => self.commit(offset).await,
            None => Ok(()),
        }
    }

    /// Waits for everything in flight, then commits it.
    async fn flush_and_commit(&mut self) -> Result<(), Stop> {
        if self.marks.is_empty() {
            return Ok(());
        }
        self.flush_sink().await?;
        self.commit_confirmed().await
    }

    /// Waits until the sink confirmed everything sent so far.
    async fn flush_sink(&mut self) -> Result<(), Stop> {
        let done = self.sink.flush().await.map_err(Stop::Rewind)?;
        self.confirmed(done);
        self.confirmed_calls = self.publish_calls;
        self.observe_acks();
        if done.confirmed > 0 {
            self.recovered().await;
        }
        Ok(())
    }

    /// The sink confirmed messages: a degraded pipeline is running again, backoff restarts.
    async fn recovered(&mut self) {
        self.backoff.reset();
        if self.st.state != PipelineState::Running {
            tracing::info!(pipeline = %self.spec.name, "sink recovered");
            self.st.state = PipelineState::Running;
            self.st.last_error = None;
            self.flush_status().await;
        }
    }

    /// Opens the read-only transaction of a claim-check or diff cursor, within the instance's
    /// bounded cursor share ([`RelayState::cursor_share`]): such a transaction holds its
    /// connection while every page is published. When the share is taken, the pipeline gives
    /// its connection back while it waits — other pipelines' batches go on — and borrows one
    /// again. The permit is held until the transaction ends.
    async fn begin_cursor(&mut self) -> Result<tokio::sync::OwnedSemaphorePermit, Stop> {
        let share = self.ctx.cursor_share.clone();
        let permit = match share.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                self.work = None;
                let waited = Instant::now();
                let permit = tokio::select! {
                    p = share.acquire_owned() => p.map_err(|_| Stop::Cancelled)?,
                    _ = self.link.cancel.cancelled() => return Err(Stop::Cancelled),
                    _ = self.link.lost.cancelled() => return Err(Stop::Db(LOCK_SESSION_CLOSED.to_owned())),
                };
                match borrow(&self.ctx, self.link).await {
                    Some(w) => self.work = Some(Arc::new(w)),
                    None if self.link.lost.is_cancelled() => return Err(Stop::Db(LOCK_SESSION_CLOSED.to_owned())),
                    None => return Err(Stop::Cancelled),
                }
                tracing::debug!(pipeline = %self.spec.name, waited_ms = waited.elapsed().as_millis() as u64, "waited for the cursor share");
                permit
            }
        };
        self.client()?.begin("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?;
        Ok(permit)
    }

    /// Ends a read-only cursor transaction: `CLOSE` and `COMMIT` after success, `ROLLBACK`
    /// after a failure (whose error is kept).
    async fn end_cursor_txn<T>(&mut self, cursor: &str, result: Result<T, Stop>) -> Result<T, Stop> {
        match result {
            Ok(v) => {
                self.client()?.end(&format!("CLOSE {cursor}; COMMIT")).await?;
                Ok(v)
            }
            Err(e) => {
                if let Ok(c) = self.client() {
                    let _ = c.end("ROLLBACK").await;
                }
                Err(e)
            }
        }
    }

    async fn relay_rows(&mut self, rows: Vec<HeaderRow>) -> Result<(), Stop> {
        let mut msgs: Vec<RelayMessage> = Vec::new();
        let keep = self.spec.keep_internal_columns;
        for row in rows {
            let row_ref = self.row_ref(&row);
            self.stamp = row.stamp;
            match decode(row.payload.as_deref(), row.is_claim_check, row.refresh_id.as_deref(), keep) {
                Ok(Decoded::Empty) => {}
                Ok(Decoded::Rows { deleted, full_refresh: true, refresh_id, .. })
                    if self.diff.is_some() && deleted.is_empty() =>
                {
                    self.publish(&msgs).await?;
                    msgs.clear();
                    self.relay_snapshot(row.id, &row_ref, SnapshotSource::Inline, refresh_id.as_deref()).await?;
                }
                Ok(Decoded::Rows { inserted, deleted, full_refresh, refresh_id }) => {
                    let delta = Delta {
                        outbox_id: row.id,
                        row_ref: &row_ref,
                        inserted,
                        deleted,
                        full_refresh,
                        refresh_id: refresh_id.as_deref(),
                        first_index: 0,
                        first_deleted_index: None,
                    };
                    build_messages(&self.message_context(), delta, &mut msgs);
                }
                // Debezium has no event for a summary (counts, no row change).
                Ok(Decoded::Summary(_)) if self.spec.envelope.is_debezium() => {
                    let labels = [self.labels[0].as_str(), "forward", "summary"];
                    self.ctx.metrics.messages_skipped.with_label_values(&labels).inc();
                }
                Ok(Decoded::Summary(summary)) => {
                    let m = summary_message(&self.message_context(), row.id, &row_ref, summary);
                    msgs.push(m);
                }
                Ok(Decoded::ClaimCheck { full_refresh, refresh_id }) => {
                    self.publish(&msgs).await?;
                    msgs.clear();
                    if full_refresh != Some(false) && self.is_claim_check_snapshot(row.id).await? {
                        self.relay_snapshot(row.id, &row_ref, SnapshotSource::ClaimCheck, refresh_id.as_deref())
                            .await?;
                    } else {
                        self.relay_claim_check(&row, &row_ref, full_refresh.unwrap_or(true), refresh_id.as_deref())
                            .await?;
                    }
                }
                Err(error) => self.dead_letter(&row, &error.to_string()).await?,
            }
            if msgs.len() >= MAX_CHUNK_MESSAGES {
                self.publish(&msgs).await?;
                msgs.clear();
            }
            // Let the connection task read the next batch's rows (see `step`).
            tokio::task::yield_now().await;
        }
        self.publish(&msgs).await
    }

    /// In diff mode, a claim-check row with only inserted rows is a full snapshot
    /// (pg_trickle 0.45); one with deletes is a delta.
    async fn is_claim_check_snapshot(&mut self, outbox_id: i64) -> Result<bool, Stop> {
        let (Some(_), Some(sql)) = (&self.diff, self.reader.claim_check_has_deletes_sql()) else {
            return Ok(false);
        };
        let has_deletes: bool = self.client()?.query_one(&sql, &[&outbox_id]).await?.get(0);
        Ok(!has_deletes)
    }

    /// The outbox row's part of its messages' dedup keys.
    fn row_ref(&self, row: &HeaderRow) -> String {
        outbox_row_ref(self.spec.dedup_key_format, &self.reader.table().table, row.id, row.uid.as_deref(), &self.scope)
    }

    fn message_context(&self) -> MessageContext<'_> {
        MessageContext {
            names: &self.names,
            subject: &self.spec.subject_template,
            key_columns: &self.spec.key_columns,
            keep_internal_columns: self.spec.keep_internal_columns,
            stamp: self.stamp,
        }
    }

    /// Hands messages to the sink. A failure rewinds the runner (see [`Self::sink_failed`]).
    async fn publish(&mut self, msgs: &[RelayMessage]) -> Result<(), Stop> {
        if msgs.is_empty() {
            return Ok(());
        }
        self.ctx.metrics.messages_consumed.with_label_values(&self.labels()).inc_by(msgs.len() as u64);
        let call = self.publish_calls;
        let rows = if self.ctx.spans.enabled() { row_spans(msgs) } else { Vec::new() };
        self.sent_at.push_back(Sent { call, at: Instant::now(), wall: SystemTime::now(), rows });
        match self.sink.publish(msgs).await {
            Ok(done) => {
                self.publish_calls += 1;
                // A pipelined sink confirmed the earlier calls; any other, this one too.
                self.confirmed_calls = if self.sink.pipelined() { call } else { call + 1 };
                self.confirmed(done);
                self.observe_acks();
                // A pipelined sink's `Ok` says only that this call was sent: the pipeline counts
                // as recovered (and the backoff restarts) once something was confirmed.
                if done.confirmed > 0 || !self.sink.pipelined() {
                    self.recovered().await;
                }
                Ok(())
            }
            Err(e) => Err(Stop::Rewind(e)),
        }
    }

    /// Records the broker-ack latency of every publish call confirmed by now (and, when spans
    /// are exported, the span of each of its outbox rows). A pipelined sink's confirmation is
    /// seen at its next `publish` or `flush`, so the latency is the relay's view of it: never
    /// shorter than the target's.
    fn observe_acks(&mut self) {
        let histogram = self.ctx.metrics.broker_ack.with_label_values(&[&self.spec.name, self.sink.name()]);
        while self.sent_at.front().is_some_and(|s| s.call < self.confirmed_calls) {
            let Some(sent) = self.sent_at.pop_front() else { break };
            histogram.observe(sent.at.elapsed().as_secs_f64());
            let ended = SystemTime::now();
            for row in &sent.rows {
                self.ctx.spans.row_published(&self.spec.name, self.sink.name(), row, sent.wall, ended);
            }
        }
    }

    fn confirmed(&mut self, done: crate::sink::Published) {
        if done.duplicates > 0 {
            self.ctx.metrics.dedup_skipped.with_label_values(&[&self.spec.name]).inc_by(done.duplicates);
        }
        self.ctx.metrics.messages_published.with_label_values(&self.labels()).inc_by(done.confirmed);
        self.st.messages_total += done.confirmed as i64;
        self.unreported_messages += done.confirmed as i64;
    }

    /// Keeps an undecodable outbox row in `relay_dead_letters` (once) and moves on.
    async fn dead_letter(&mut self, row: &HeaderRow, error: &str) -> Result<(), Stop> {
        // `<outbox>:<id>:<pgt_id or epoch scope>`: never the same for another outbox's row.
        let source_ref =
            format!("{}:{}:{}", self.reader.table().table, row.id, row.uid.as_deref().unwrap_or(&self.scope));
        let headers = serde_json::json!({"outbox_id": row.id, "pgt_id": row.uid, "is_claim_check": row.is_claim_check, "refresh_id": row.refresh_id});
        let letter = DeadLetter {
            group: &self.ctx.group_id,
            direction: Direction::Forward,
            pipeline: &self.spec.name,
            source_ref: &source_ref,
            payload: row.payload.as_ref().map(|p| p.as_bytes()),
            headers: &headers,
            error,
        };
        let kept = dead_letters::keep(&**self.client()?, &letter).await?;
        tracing::error!(pipeline = %self.spec.name, outbox_row = %source_ref, error, "outbox row cannot be decoded; kept in pgtrickle.relay_dead_letters");
        let [p, d] = self.labels();
        // A row read again after a rewind is kept once, and counted once.
        self.ctx.metrics.dead_letters.with_label_values(&[p, d]).inc_by(kept);
        self.ctx.metrics.source_errors.with_label_values(&[p, d, "decode"]).inc();
        self.st.errors_total += 1;
        self.unreported_errors += 1;
        self.st.last_error = Some(format!("outbox row {source_ref} moved to pgtrickle.relay_dead_letters: {error}"));
        Ok(())
    }

    async fn commit(&mut self, new_offset: i64) -> Result<(), Stop> {
        if new_offset <= self.offset {
            return Ok(());
        }
        let client = self.client()?;
        if !offsets::commit(
            &client,
            &self.commit_sql,
            &self.ctx.group_id,
            &self.spec.name,
            new_offset,
            &self.ctx.worker_id,
            self.link.lock.fence(),
        )
        .await?
        {
            return Err(Stop::Db(LOCK_LOST.to_owned()));
        }
        self.offset = new_offset;
        self.st.committed_offset = Some(new_offset);
        self.ctx.metrics.committed_offset.with_label_values(&[&self.spec.name]).set(new_offset);
        Ok(())
    }

    /// Reads the lag and writes the status, at most once per [`STATUS_EVERY`] — and not at all
    /// while idle and caught up with nothing to report: the coordinator keeps the status row's
    /// heartbeat for every owned pipeline in one statement.
    async fn refresh_lag(&mut self) -> Result<(), Stop> {
        let quiet = !self.status_due && self.unreported_messages == 0 && self.unreported_errors == 0;
        if quiet && self.st.lag_rows == Some(0) && self.reader.seen_high() <= self.offset {
            return Ok(());
        }
        if self.last_status.elapsed() < STATUS_EVERY && quiet {
            return Ok(());
        }
        let client = self.client()?;
        let (rows, age) = self.reader.lag(&client, self.offset).await?;
        self.st.lag_rows = Some(rows);
        self.st.lag_seconds = Some(if rows == 0 { 0.0 } else { age.unwrap_or(0.0) });
        self.ctx.metrics.lag_rows.with_label_values(&[&self.spec.name]).set(rows);
        self.ctx.metrics.lag_seconds.with_label_values(&[&self.spec.name]).set(self.st.lag_seconds.unwrap_or(0.0));
        self.flush_status().await;
        Ok(())
    }

    async fn flush_status(&mut self) {
        if self.work.is_none() && !self.link.cancel.is_cancelled() {
            // Idle (a sink health change): borrow one for the write.
            self.work = borrow(&self.ctx, self.link).await.map(Arc::new);
            let written = self.flush_status_with_work().await;
            self.work = None;
            return written;
        }
        self.flush_status_with_work().await
    }

    async fn flush_status_with_work(&mut self) {
        match &self.work {
            Some(work) => report(&self.ctx, work, self.st, self.unreported_messages, self.unreported_errors).await,
            // No connection (the instance is stopping and the pool gave none): in memory only.
            None => self.ctx.update(self.st),
        }
        self.unreported_messages = 0;
        self.unreported_errors = 0;
        self.status_due = false;
        self.last_status = Instant::now();
    }
}

/// A publish call not yet confirmed.
struct Sent {
    call: u64,
    at: Instant,
    wall: SystemTime,
    rows: Vec<RowSpan>,
}

/// The outbox rows of a publish call (messages of a row are consecutive).
fn row_spans(msgs: &[RelayMessage]) -> Vec<RowSpan> {
    let mut rows: Vec<RowSpan> = Vec::new();
    for m in msgs {
        match rows.last_mut() {
            Some(r) if r.traceparent == m.traceparent => r.messages += 1,
            _ => rows.push(RowSpan { traceparent: m.traceparent.clone(), outbox_id: m.outbox_id, messages: 1 }),
        }
    }
    rows
}
