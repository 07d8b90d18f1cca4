//! Discovery and ownership: which pipelines this instance runs.
//!
//! Every `discovery_interval`, and at once on a `pgtrickle_relay_config` notification, the
//! coordinator reads `list_relay_configs()`, stops workers whose pipeline was disabled, deleted
//! or changed, and tries to own every enabled pipeline nobody owns:
//! `pg_try_advisory_lock(hashtext(group), hashtext(name))` (contract §4.5) on the instance's one
//! lock session, which holds the locks of all its pipelines — so a session that dies releases
//! them all and fences every worker's commits at once; the workers stop and their pipelines are
//! taken again from their committed offsets. `pgtrickle_outbox_new` notifications (payload: the bare
//! outbox table name) wake the matching forward worker without waiting for its poll interval.
//!
//! An instance that joins the group, or lets pipelines go while it is alive — it stops (SIGTERM:
//! a rolling update, a scale-down) or hands its surplus over to a newcomer — says so on
//! `pgtrickle_relay_handover` (payload: the relay group; after the locks are released), and the
//! group's other instances discover at once: pipelines move in milliseconds, not a discovery
//! interval later.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::catalog::connect::Notification;
use crate::catalog::pool::LockSession;
use crate::catalog::{self, pipelines, status, DbConnection};
use crate::config::{Direction, PipelineRow};
use crate::pipeline::{self, WorkerLink};
use crate::state::RelayState;

pub const CONFIG_CHANNEL: &str = "pgtrickle_relay_config";
pub const OUTBOX_CHANNEL: &str = "pgtrickle_outbox_new";
pub const HANDOVER_CHANNEL: &str = "pgtrickle_relay_handover";

#[derive(Debug, Clone)]
pub struct CoordinatorOptions {
    pub postgres_url: String,
    pub discovery_interval: Duration,
    /// Bound on how long stopping a worker (finishing its in-flight batch) may take.
    pub stop_timeout: Duration,
}

struct Worker {
    /// The config the worker runs with; a different one in the catalog restarts it.
    config: serde_json::Value,
    link: WorkerLink,
    handle: JoinHandle<()>,
}

type Key = (String, Direction);

pub struct Coordinator {
    ctx: Arc<RelayState>,
    opts: CoordinatorOptions,
    workers: HashMap<Key, Worker>,
    /// The session holding every owned pipeline's lock (opened on demand, replaced when it dies).
    locks: Option<Arc<LockSession>>,
    /// Last seen value of each watched outbox id sequence (see [`Coordinator::watch_outboxes`]).
    sequences: HashMap<String, i64>,
}

/// SQL true while some session of this database holds pipeline `p.name`'s lock of group `$1`
/// (the two-key advisory lock as `pg_locks` shows it).
const LOCKED_BY_ANY_SESSION: &str = "EXISTS (SELECT 1 FROM pg_locks
     WHERE locktype = 'advisory' AND objsubid = 2 AND granted
       AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
       AND classid::int8 = (hashtext($1)::int8 & 4294967295)
       AND objid::int8 = (hashtext(p.name)::int8 & 4294967295))";

/// How often the coordinator looks at the id sequences of its idle pipelines' outboxes: the
/// fallback for rows written without a `NOTIFY`, one query for the whole instance.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// How often the coordinator renews the status heartbeat of every owned pipeline, in one
/// statement (the operator counts a status older than 30 s as stale). Workers write their status
/// themselves when something changes.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(10);

impl Coordinator {
    pub fn new(ctx: Arc<RelayState>, opts: CoordinatorOptions) -> Self {
        Self { ctx, opts, workers: HashMap::new(), locks: None, sequences: HashMap::new() }
    }

    /// The live lock session, opened if there is none; `None` while the database refuses it.
    async fn lock_session(&mut self) -> Option<Arc<LockSession>> {
        if let Some(s) = self.locks.as_ref().filter(|s| !s.conn.closed.is_cancelled()) {
            return Some(s.clone());
        }
        match LockSession::open(&self.opts.postgres_url).await {
            Ok(s) => {
                let s = Arc::new(s);
                self.locks = Some(s.clone());
                Some(s)
            }
            Err(e) => {
                self.ctx.database_refused(&catalog::pool::PoolError::Connect(e));
                None
            }
        }
    }

    /// Runs until `shutdown` fires, then stops every worker (each finishes and commits its
    /// in-flight batch). Returns false when some worker did not stop within the timeout.
    pub async fn run(mut self, shutdown: CancellationToken) -> bool {
        'reconnect: loop {
            let (tx, mut rx) = mpsc::unbounded_channel();
            let Some(conn) =
                catalog::connect_with_retry(&self.opts.postgres_url, "pgtrickle-relay", Some(tx), &shutdown).await
            else {
                break 'reconnect;
            };
            if let Err(e) = conn
                .client
                .batch_execute(&format!("LISTEN {CONFIG_CHANNEL}; LISTEN {OUTBOX_CHANNEL}; LISTEN {HANDOVER_CHANNEL}"))
                .await
            {
                tracing::warn!(error = %e, "cannot LISTEN; reconnecting");
                continue 'reconnect;
            }
            self.ctx.set_catalog_connected(true);
            // This instance is live (for the fair share of the others) while this session holds
            // its instance lock.
            if let Err(e) = self.register(&conn).await {
                tracing::warn!(error = %e, "cannot register this relay instance; balancing treats it as absent");
            } else {
                // The others' share shrank: they hand their surplus over now, not on their next tick.
                self.announce_handover(&conn).await;
            }
            // A reconnect may have missed notifications: resync at once.
            self.discover(&conn).await;
            self.ctx.set_ready(true);
            // Notifications may have been missed while disconnected: every worker looks once.
            for w in self.workers.values() {
                w.link.wake.notify_one();
            }
            let mut tick = tokio::time::interval(self.opts.discovery_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            let mut watch = tokio::time::interval(WATCH_EVERY);
            watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut heartbeat = tokio::time::interval(HEARTBEAT_EVERY);
            heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        self.ctx.set_ready(false);
                        let clean = self.stop_all().await;
                        self.depart(&conn).await;
                        return clean;
                    }
                    _ = conn.closed.cancelled() => {
                        tracing::warn!("lost the catalog connection; reconnecting (workers keep running on their own connections)");
                        self.ctx.set_catalog_connected(false);
                        continue 'reconnect;
                    }
                    _ = tick.tick() => self.discover(&conn).await,
                    _ = watch.tick() => self.watch_outboxes(&conn).await,
                    _ = heartbeat.tick() => self.heartbeat(&conn).await,
                    Some(n) = rx.recv() => {
                        // Drain what is queued: a burst of changes costs one discovery. Config
                        // changes are applied before outbox wake-ups, so that rows written after
                        // a change are relayed by the worker running the new config.
                        let mut batch = vec![n];
                        while let Ok(n) = rx.try_recv() {
                            batch.push(n);
                        }
                        let handover = batch.iter().any(|n| n.channel == HANDOVER_CHANNEL && n.payload == self.ctx.group_id);
                        if batch.iter().any(|n| n.channel == CONFIG_CHANNEL) {
                            tracing::debug!(changes = batch.iter().filter(|n| n.channel == CONFIG_CHANNEL).count(), "relay config changed");
                            self.discover(&conn).await;
                        } else if handover {
                            tracing::debug!("another instance of the group let pipelines go");
                            self.discover(&conn).await;
                        }
                        for n in batch.iter().filter(|n| n.channel == OUTBOX_CHANNEL) {
                            self.wake(n);
                        }
                    }
                }
            }
        }
        self.ctx.set_ready(false);
        self.stop_all().await
    }

    /// One query for every watched outbox: wakes the workers whose id sequence moved.
    async fn watch_outboxes(&mut self, conn: &DbConnection) {
        let watched: Vec<(String, &WorkerLink)> =
            self.workers.values().filter_map(|w| w.link.watched().map(|s| (s, &w.link))).collect();
        if watched.is_empty() {
            return;
        }
        let names: Vec<&str> = watched.iter().map(|(s, _)| s.as_str()).collect();
        let rows = match conn
            .client
            .query(
                "SELECT s, coalesce(pg_sequence_last_value(to_regclass(s)), 0)::int8
                   FROM unnest($1::text[]) AS s WHERE to_regclass(s) IS NOT NULL",
                &[&names],
            )
            .await
        {
            Ok(rows) => rows,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the watched outbox sequences");
                // Without the watch, wake everyone: they look by themselves.
                watched.iter().for_each(|(_, l)| l.wake.notify_one());
                return;
            }
        };
        let now: HashMap<String, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        for (seq, link) in &watched {
            if now.get(seq) != self.sequences.get(seq) {
                link.wake.notify_one();
            }
        }
        self.sequences = now;
    }

    /// Renews the status heartbeat of every pipeline this instance runs.
    async fn heartbeat(&self, conn: &DbConnection) {
        let (names, directions): (Vec<&str>, Vec<&str>) = self
            .workers
            .iter()
            .filter(|(_, w)| !w.handle.is_finished())
            .map(|((name, direction), _)| (name.as_str(), direction.as_str()))
            .unzip();
        if names.is_empty() {
            return;
        }
        if let Err(e) = conn
            .client
            .execute(
                "UPDATE pgtrickle.relay_pipeline_status s SET heartbeat_at = now()
                   FROM unnest($3::text[], $4::text[]) AS w(name, direction)
                  WHERE s.relay_group_id = $1 AND s.owner = $2 AND s.name = w.name AND s.direction = w.direction",
                &[&self.ctx.group_id, &self.ctx.worker_id, &names, &directions],
            )
            .await
        {
            tracing::debug!(error = %e, "cannot renew the pipelines' status heartbeat");
        }
    }

    fn wake(&self, n: &Notification) {
        for w in self.workers.values() {
            if w.link.outbox_table.get().is_some_and(|t| *t == n.payload) {
                w.link.wake.notify_one();
            }
        }
    }

    async fn discover(&mut self, conn: &DbConnection) {
        // Reap workers that ended by themselves (their lock session closed, or they panicked).
        let ended: Vec<Key> =
            self.workers.iter().filter(|(_, w)| w.handle.is_finished()).map(|(k, _)| k.clone()).collect();
        for key in ended {
            if let Some(w) = self.workers.remove(&key) {
                tracing::info!(pipeline = %key.0, direction = key.1.as_str(), "worker ended; will try to own the pipeline again");
                if let Err(e) = w.handle.await {
                    tracing::error!(pipeline = %key.0, error = %e, "pipeline worker failed");
                    self.release(&w.link, &key).await;
                }
            }
        }
        let rows = match pipelines::list(&conn.client).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list relay pipelines");
                return;
            }
        };
        let wanted: HashMap<Key, PipelineRow> =
            rows.into_iter().filter(|r| r.enabled).map(|r| ((r.name.clone(), r.direction), r)).collect();

        // Stop what was disabled, deleted or changed.
        let stale: Vec<Key> = self
            .workers
            .iter()
            .filter(|(k, w)| wanted.get(*k).is_none_or(|r| r.config != w.config))
            .map(|(k, _)| k.clone())
            .collect();
        for key in stale {
            if let Some(w) = self.workers.remove(&key) {
                tracing::info!(pipeline = %key.0, direction = key.1.as_str(), "pipeline disabled, deleted or changed; stopping its worker");
                self.stop_worker(&key, w).await;
            }
        }

        // Fair share: the pipelines spread over the group's live instances. An instance over its
        // share hands the surplus back (each worker finishes and commits its batch first); the
        // others pick it up on their next discovery. A dead instance's lock is gone with its
        // session, so the survivors' share grows at once.
        let live = self.live_instances(conn).await.max(1);
        let share = wanted.len().div_ceil(live);
        let mut released = Vec::new();
        if self.workers.len() > share {
            let mut owned: Vec<Key> = self.workers.keys().cloned().collect();
            owned.sort();
            for key in owned.into_iter().skip(share) {
                if let Some(w) = self.workers.remove(&key) {
                    tracing::info!(pipeline = %key.0, direction = key.1.as_str(), live_instances = live, fair_share = share, "handing a pipeline over to another instance (balancing)");
                    self.stop_worker(&key, w).await;
                    released.push(key);
                }
            }
            if !released.is_empty() {
                self.announce_handover(conn).await;
            }
        }
        let mut keys: Vec<Key> = wanted.keys().cloned().collect();
        keys.sort();
        let room = share.saturating_sub(self.workers.len());
        if room > 0 {
            let candidates: Vec<Key> =
                keys.into_iter().filter(|k| !self.workers.contains_key(k) && !released.contains(k)).collect();
            if !candidates.is_empty() {
                if let Some(locks) = self.lock_session().await {
                    match self.try_own(conn, &locks, &candidates, room).await {
                        Ok(acquired) => {
                            for key in acquired {
                                let Some(row) = wanted.get(&key).cloned() else { continue };
                                tracing::info!(pipeline = %row.name, direction = row.direction.as_str(), "acquired pipeline");
                                let link = WorkerLink::new(CancellationToken::new(), locks.clone());
                                let handle =
                                    tokio::spawn(pipeline::run_worker(self.ctx.clone(), row.clone(), link.clone()));
                                self.workers.insert(key, Worker { config: row.config, link, handle });
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot try the pipelines' locks"),
                    }
                }
            }
        }
        self.count_unowned(conn, &wanted).await;
        self.ctx.observe_pool();
        // Bookkeeping last, so that starting pipelines is not delayed by it.
        self.report_share(conn, share).await;
        if let Err(e) = status::prune(&conn.client, &self.ctx.group_id).await {
            tracing::debug!(error = %e, "cannot prune status rows");
        }
    }

    /// Records this instance and takes its instance lock on the catalog connection.
    async fn register(&self, conn: &DbConnection) -> Result<(), tokio_postgres::Error> {
        conn.client
            .execute(
                "INSERT INTO pgtrickle.relay_instances (relay_group_id, worker_id) VALUES ($1, $2)
                 ON CONFLICT (relay_group_id, worker_id) DO UPDATE SET seen_at = now()",
                &[&self.ctx.group_id, &self.ctx.worker_id],
            )
            .await?;
        conn.client
            .execute(
                "SELECT pg_advisory_lock(hashtext($1), hashtext('instance:' || $2))",
                &[&self.ctx.group_id, &self.ctx.worker_id],
            )
            .await?;
        Ok(())
    }

    /// Instances of this group whose session holds their instance lock (this one included);
    /// rows of instances that are gone are pruned.
    async fn live_instances(&self, conn: &DbConnection) -> usize {
        let r = conn
            .client
            .query_one(
                "WITH live AS (
                     SELECT i.worker_id, EXISTS (
                         SELECT 1 FROM pg_locks l
                          WHERE l.locktype = 'advisory' AND l.objsubid = 2 AND l.granted
                            AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                            AND l.classid::int8 = (hashtext($1)::int8 & 4294967295)
                            AND l.objid::int8 = (hashtext('instance:' || i.worker_id)::int8 & 4294967295)) AS up
                       FROM pgtrickle.relay_instances i WHERE i.relay_group_id = $1),
                 gone AS (DELETE FROM pgtrickle.relay_instances i USING live
                           WHERE i.relay_group_id = $1 AND i.worker_id = live.worker_id AND NOT live.up)
                 SELECT count(*) FILTER (WHERE up) FROM live",
                &[&self.ctx.group_id],
            )
            .await;
        match r {
            Ok(row) => row.get::<_, i64>(0).max(1) as usize,
            Err(e) => {
                tracing::warn!(error = %e, "cannot count live relay instances; assuming this one alone");
                1
            }
        }
    }

    /// Shows this instance's load and fair share in `pgtrickle.relay_instances`.
    async fn report_share(&self, conn: &DbConnection, share: usize) {
        let _ = conn
            .client
            .execute(
                "UPDATE pgtrickle.relay_instances SET seen_at = now(), pipelines = $3, fair_share = $4
                  WHERE relay_group_id = $1 AND worker_id = $2",
                &[&self.ctx.group_id, &self.ctx.worker_id, &(self.workers.len() as i32), &(share as i32)],
            )
            .await;
    }

    /// Takes up to `room` of the `candidates`' advisory locks on the lock session, in order, in
    /// two statements whatever their number: one `pg_locks` look for the pipelines no session
    /// holds, one `pg_try_advisory_lock` over those (another instance may win some meanwhile).
    /// A name of both directions is one lock: its first key gets it.
    async fn try_own(
        &self,
        conn: &DbConnection,
        locks: &LockSession,
        candidates: &[Key],
        room: usize,
    ) -> Result<Vec<Key>, tokio_postgres::Error> {
        let mut names: Vec<&str> = Vec::new();
        for (name, _) in candidates {
            if !names.contains(&name.as_str()) {
                names.push(name);
            }
        }
        let free: Vec<String> = conn
            .client
            .query(
                &format!(
                    "SELECT p.name FROM unnest($2::text[]) WITH ORDINALITY AS p(name, i)
                      WHERE NOT {LOCKED_BY_ANY_SESSION} ORDER BY p.i LIMIT $3"
                ),
                &[&self.ctx.group_id, &names, &(room as i64)],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if free.is_empty() {
            return Ok(Vec::new());
        }
        let got: Vec<String> = locks
            .conn
            .client
            .query(
                "SELECT p.name FROM unnest($2::text[]) WITH ORDINALITY AS p(name, i)
                  WHERE pg_try_advisory_lock(hashtext($1), hashtext(p.name)) ORDER BY p.i",
                &[&self.ctx.group_id, &free],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut acquired = Vec::with_capacity(got.len());
        for name in got {
            if let Some(key) = candidates.iter().find(|(n, _)| *n == name) {
                acquired.push(key.clone());
            }
        }
        Ok(acquired)
    }

    /// How many enabled pipelines of the group no session holds the lock of (for `/health`).
    async fn count_unowned(&self, conn: &DbConnection, wanted: &HashMap<Key, PipelineRow>) {
        let names: Vec<&str> = wanted.keys().map(|(n, _)| n.as_str()).collect();
        let r = conn
            .client
            .query_one(
                &format!("SELECT count(*) FROM unnest($2::text[]) AS p(name) WHERE NOT {LOCKED_BY_ANY_SESSION}"),
                &[&self.ctx.group_id, &names],
            )
            .await;
        match r {
            Ok(row) => self.ctx.set_unowned(row.get::<_, i64>(0) as usize),
            Err(e) => tracing::debug!(error = %e, "cannot count unowned pipelines"),
        }
    }

    async fn stop_worker(&self, key: &Key, w: Worker) {
        w.link.cancel.cancel();
        let mut handle = w.handle;
        if tokio::time::timeout(self.opts.stop_timeout, &mut handle).await.is_err() {
            tracing::warn!("worker did not stop in time; aborting it (its uncommitted batch will be relayed again)");
            handle.abort();
            let _ = handle.await;
            self.release(&w.link, key).await;
        }
    }

    /// Releases the lock of a worker that could not release it itself (aborted, panicked): the
    /// lock session outlives its workers, so nobody else could own the pipeline otherwise.
    async fn release(&self, link: &WorkerLink, (pipeline, direction): &Key) {
        if link.lost.is_cancelled() {
            return;
        }
        let held = link
            .lock
            .conn
            .client
            .query_one(
                &format!("SELECT {}", catalog::pool::pipeline_lock_held(1, 2, 3, 4)),
                &[&self.ctx.group_id, pipeline, &link.lock.pid, &link.lock.started_us],
            )
            .await
            .map(|r| r.get::<_, bool>(0))
            .unwrap_or(false);
        if held {
            if let Err(e) = link.lock.unlock(&self.ctx.group_id, pipeline).await {
                tracing::warn!(pipeline = %pipeline, error = %e, "cannot release the lock of a failed worker");
            }
        }
        self.ctx.remove(pipeline, *direction);
    }

    /// Leaves the group after [`Self::stop_all`]: the workers released their pipelines' locks;
    /// the instance lock goes now, so that the others' fair share grows, and they are told.
    async fn depart(&self, conn: &DbConnection) {
        if let Err(e) = conn
            .client
            .execute(
                "SELECT pg_advisory_unlock(hashtext($1), hashtext('instance:' || $2))",
                &[&self.ctx.group_id, &self.ctx.worker_id],
            )
            .await
        {
            tracing::debug!(error = %e, "cannot release the instance lock (it goes with the session)");
            return;
        }
        self.announce_handover(conn).await;
    }

    /// Tells the group's other instances that pipelines were let go (see the module docs).
    async fn announce_handover(&self, conn: &DbConnection) {
        if let Err(e) = conn.client.execute("SELECT pg_notify($1, $2)", &[&HANDOVER_CHANNEL, &self.ctx.group_id]).await
        {
            tracing::debug!(error = %e, "cannot announce the handover; the others find the pipelines on their next discovery");
        }
    }

    async fn stop_all(&mut self) -> bool {
        let workers: Vec<(Key, Worker)> = self.workers.drain().collect();
        for (_, w) in &workers {
            w.link.cancel.cancel();
        }
        let deadline = tokio::time::Instant::now() + self.opts.stop_timeout;
        let mut clean = true;
        for (key, w) in workers {
            let mut handle = w.handle;
            if tokio::time::timeout_at(deadline, &mut handle).await.is_err() {
                handle.abort();
                let _ = handle.await;
                self.release(&w.link, &key).await;
                clean = false;
            }
        }
        clean
    }
}
