//! The database connections of a relay instance, bounded whatever the number of pipelines.
//!
//! A relay is a sidecar of its user's primary database and must never be what exhausts it. So
//! the advisory locks of all the pipelines an instance owns live on one [`LockSession`] (a
//! session can hold any number of locks), and every read, cursor, inbox write, commit and
//! status write borrows a connection from one [`WorkPool`]. The instance's total is
//! `--max-db-connections`: the catalog (LISTEN) connection, the lock session and the pool.
//!
//! Fencing stays as strong as with a connection per pipeline: a commit on a pooled connection
//! succeeds only while the lock session — identified by its backend pid *and* start time, so a
//! recycled pid cannot pass for it — still holds the pipeline's lock ([`pipeline_lock_held`]).
//! A lock session that dies stops every pipeline on it before its next commit.

use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use deadpool::managed::{self, Metrics as PoolMetrics, Object, RecycleError, RecycleResult};
use tokio_postgres::Client;

use super::connect::{connect, ConnectError, DbConnection};
use crate::backoff::Backoff;

/// Connections an instance keeps for itself besides the pool: the catalog (LISTEN) connection
/// and the lock session.
pub const RESERVED_CONNECTIONS: usize = 2;

/// The smallest `--max-db-connections`: the reserved ones, one work and one sink connection.
pub const MIN_DB_CONNECTIONS: usize = RESERVED_CONNECTIONS + 2;

/// Opens and checks the pool's connections.
pub struct WorkManager {
    url: String,
    /// The connections' `application_name` (unless the URL sets one), so that a DBA can tell
    /// them from the catalog connection and the lock session in `pg_stat_activity`.
    app_name: &'static str,
    cooldown: std::sync::Mutex<Cooldown>,
}

/// After a failed attempt to open a connection (`53300 too many clients`, `57P03`, an
/// authentication failure, an unreachable server) the pool makes no other attempt until a
/// jittered, doubling interval has passed: borrowers waiting meanwhile fail at once without
/// touching the server, so 1,000 pipelines cost the database one attempt per interval, not
/// 1,000.
struct Cooldown {
    until: Option<Instant>,
    backoff: Backoff,
    last: String,
}

const FIRST_COOLDOWN: Duration = Duration::from_millis(250);
const MAX_COOLDOWN: Duration = Duration::from_secs(10);

impl managed::Manager for WorkManager {
    type Type = DbConnection;
    type Error = ConnectError;

    async fn create(&self) -> Result<DbConnection, ConnectError> {
        {
            let c = self.cooldown.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(until) = c.until.filter(|t| *t > Instant::now()) {
                return Err(ConnectError::CoolingDown { wait: until - Instant::now(), last: c.last.clone() });
            }
        }
        let result = connect(&self.url, self.app_name, None).await;
        let mut c = self.cooldown.lock().unwrap_or_else(|p| p.into_inner());
        match &result {
            Ok(_) => {
                c.until = None;
                c.backoff.reset();
            }
            Err(e) => {
                c.until = Some(Instant::now() + c.backoff.next_wait());
                c.last = e.to_string();
            }
        }
        result
    }

    async fn recycle(&self, conn: &mut DbConnection, _: &PoolMetrics) -> RecycleResult<ConnectError> {
        if conn.closed.is_cancelled() || conn.client.is_closed() {
            return Err(RecycleError::message("the connection closed"));
        }
        Ok(())
    }
}

/// The shared pool of work connections (cheap to clone).
#[derive(Clone)]
pub struct WorkPool {
    pool: managed::Pool<WorkManager>,
}

/// Why no work connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("cannot open a database connection: {0}")]
    Connect(ConnectError),
    #[error("the connection pool is closed")]
    Closed,
}

impl std::fmt::Debug for WorkPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkPool").field("status", &self.pool.status()).finish()
    }
}

impl WorkPool {
    /// A pool of at most `size` connections to `url`, opened on demand.
    pub fn new(url: &str, size: usize, app_name: &'static str) -> Self {
        let manager = WorkManager {
            url: url.to_owned(),
            app_name,
            cooldown: std::sync::Mutex::new(Cooldown {
                until: None,
                backoff: Backoff::new(FIRST_COOLDOWN, MAX_COOLDOWN),
                last: String::new(),
            }),
        };
        // Only fails without a runtime for timeouts, and none are set: a wait lasts until a
        // connection is free (backpressure); the queue is first come, first served.
        let pool =
            managed::Pool::builder(manager).max_size(size.max(1)).build().unwrap_or_else(|e| unreachable!("{e}"));
        Self { pool }
    }

    /// Waits for a connection (fairly: first come, first served).
    pub async fn get(&self) -> Result<Work, PoolError> {
        let started = Instant::now();
        let obj = self.pool.get().await.map_err(|e| match e {
            managed::PoolError::Backend(e) => PoolError::Connect(e),
            _ => PoolError::Closed,
        })?;
        Ok(Work { obj: Some(obj), in_transaction: AtomicBool::new(false), waited: started.elapsed() })
    }

    /// `(busy, idle)` connections.
    pub fn usage(&self) -> (usize, usize) {
        let s = self.pool.status();
        (s.size.saturating_sub(s.available), s.available)
    }

    pub fn max_size(&self) -> usize {
        self.pool.status().max_size
    }
}

/// A borrowed work connection; back to the pool when dropped. One left inside a transaction
/// (its task was aborted mid-way) is closed instead of being handed to another pipeline.
pub struct Work {
    obj: Option<Object<WorkManager>>,
    in_transaction: AtomicBool,
    /// How long the borrower waited for it.
    pub waited: Duration,
}

impl Work {
    /// Runs `sql` (a `BEGIN …`) and marks the connection as inside a transaction.
    pub async fn begin(&self, sql: &str) -> Result<(), tokio_postgres::Error> {
        self.in_transaction.store(true, Ordering::Release);
        self.client().batch_execute(sql).await
    }

    /// Runs `sql` (ending with `COMMIT` or `ROLLBACK`); the transaction is over once it succeeded.
    pub async fn end(&self, sql: &str) -> Result<(), tokio_postgres::Error> {
        self.client().batch_execute(sql).await?;
        self.in_transaction.store(false, Ordering::Release);
        Ok(())
    }

    fn client(&self) -> &Client {
        match &self.obj {
            Some(o) => &o.client,
            None => unreachable!("a Work holds its connection until dropped"),
        }
    }
}

impl Deref for Work {
    type Target = Client;

    fn deref(&self) -> &Client {
        self.client()
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        if self.in_transaction.load(Ordering::Acquire) {
            if let Some(obj) = self.obj.take() {
                drop(Object::take(obj));
            }
        }
    }
}

/// The session holding this instance's pipeline locks.
pub struct LockSession {
    pub conn: DbConnection,
    /// Its backend pid and start time (µs since the epoch): what [`pipeline_lock_held`] checks.
    pub pid: i32,
    pub started_us: i64,
}

impl LockSession {
    pub async fn open(url: &str) -> Result<Self, ConnectError> {
        let conn = connect(url, "pgtrickle-relay locks", None).await?;
        let row = conn
            .client
            .query_one(
                "SELECT pid, (extract(epoch FROM backend_start) * 1000000)::int8
                   FROM pg_stat_activity WHERE pid = pg_backend_pid()",
                &[],
            )
            .await?;
        Ok(Self { pid: row.get(0), started_us: row.get(1), conn })
    }

    /// Takes a pipeline's lock (`pg_try_advisory_lock(hashtext(group), hashtext(pipeline))`,
    /// contract §4.5) unless another session holds it.
    pub async fn try_lock(&self, group: &str, pipeline: &str) -> Result<bool, tokio_postgres::Error> {
        Ok(self
            .conn
            .client
            .query_one("SELECT pg_try_advisory_lock(hashtext($1), hashtext($2))", &[&group, &pipeline])
            .await?
            .get(0))
    }

    pub async fn unlock(&self, group: &str, pipeline: &str) -> Result<(), tokio_postgres::Error> {
        self.conn.client.execute("SELECT pg_advisory_unlock(hashtext($1), hashtext($2))", &[&group, &pipeline]).await?;
        Ok(())
    }
}

/// SQL that is true while the lock session `(pid, start)` holds the pipeline's lock; the
/// arguments are the numbers of the parameters carrying group, pipeline, pid (int4) and start
/// time (int8, µs).
pub fn pipeline_lock_held(group: usize, pipeline: usize, pid: usize, started: usize) -> String {
    format!(
        "EXISTS (SELECT 1 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                  WHERE l.locktype = 'advisory' AND l.granted AND l.pid = ${pid}
                    AND (extract(epoch FROM a.backend_start) * 1000000)::int8 = ${started}
                    AND l.classid = hashtext(${group})::oid AND l.objid = hashtext(${pipeline})::oid AND l.objsubid = 2)"
    )
}

/// How `--max-db-connections` splits: `(work pool, sink pool)`. The sink pool serves the
/// `pg-inbox` sinks that write into the relay's own database: a separate pool, because a
/// pipeline publishes while it holds a work connection (one pool for both could deadlock).
pub fn pool_sizes(max_db_connections: usize) -> (usize, usize) {
    let shared = max_db_connections.saturating_sub(RESERVED_CONNECTIONS).max(2);
    let sinks = (shared / 4).max(1);
    (shared - sinks, sinks)
}
