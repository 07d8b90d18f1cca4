//! Harness for the black-box tests: fresh databases, a pg_trickle 0.45 outbox emulation, and
//! the real `pgtrickle-relay` binary run as a child process.
//!
//! Tests need a PostgreSQL server (`PGTRICKLE_TEST_POSTGRES_URL`, default the local one);
//! `scripts/test` starts one when missing. Without it they fail loudly, never skip.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio_postgres::{Client, NoTls};

pub mod cluster;
pub mod fault_sources;
pub mod fault_targets;
pub mod faults;
pub mod gate;
pub mod http;
pub mod kafka;
pub mod kube_env;
pub mod nats;
pub mod nats_inject;
pub mod private_pg;
pub mod rabbitmq;
pub mod redis_server;
pub mod sqs;

pub fn admin_url() -> String {
    std::env::var("PGTRICKLE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// The relay binary built by `cargo build -p relay-runtime` next to this test executable.
pub fn relay_bin() -> PathBuf {
    if let Ok(p) = std::env::var("PGTRICKLE_RELAY_BIN") {
        return PathBuf::from(p);
    }
    // Tests live in target/<profile>/deps, binaries (the bench) in target/<profile>.
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap();
    let bin = [dir.join("pgtrickle-relay"), dir.parent().unwrap().join("pgtrickle-relay")]
        .into_iter()
        .find(|p| p.exists())
        .unwrap_or_else(|| dir.join("pgtrickle-relay"));
    assert!(
        bin.exists(),
        "{} not found: build it first with `cargo build -p relay-runtime --bin pgtrickle-relay` (scripts/test does)",
        bin.display()
    );
    bin
}

pub async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to PostgreSQL at {url}: {e} (start it with scripts/test)"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

static DB_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A database of its own for one test, dropped afterwards.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub async fn new() -> Self {
        let name = format!("relay_e2e_{}_{}", std::process::id(), DB_COUNTER.fetch_add(1, Ordering::SeqCst));
        let admin = connect(&admin_url()).await;
        admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await.unwrap();
        admin.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
        let base = admin_url();
        let url = match base.rfind('/') {
            Some(i) if base[..i].contains("://") && !base[i..].contains('@') => {
                let (head, tail) = base.split_at(i);
                let query = tail.find('?').map(|q| &tail[q..]).unwrap_or("");
                format!("{head}/{name}{query}")
            }
            _ => format!("{base} dbname={name}"),
        };
        Self { name, url }
    }

    pub async fn client(&self) -> Client {
        connect(&self.url).await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                if let Ok((c, conn)) = tokio_postgres::connect(&admin_url(), NoTls).await {
                    tokio::spawn(conn);
                    let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
                }
            });
        })
        .join();
    }
}

/// What pg_trickle 0.45's `enable_outbox` creates (contract §1.2–§1.5, Appendix C): the
/// catalog row, the header table and the claim-check table. `outbox_name` lets a test use a
/// collision-suffixed name that only the catalog can reveal.
pub async fn enable_outbox(client: &Client, stream_table: &str, outbox_name: Option<&str>) -> String {
    let outbox = outbox_name.map(str::to_owned).unwrap_or_else(|| format!("outbox_{stream_table}"));
    let delta: String = format!("outbox_delta_rows_{}", stream_table.chars().take(48).collect::<String>());
    client
        .batch_execute(&format!(
            r#"
            CREATE SCHEMA IF NOT EXISTS pgtrickle;
            CREATE TABLE IF NOT EXISTS pgtrickle.pgt_outbox_config (
                stream_table_oid oid PRIMARY KEY,
                stream_table_name text NOT NULL,
                outbox_table_name text NOT NULL UNIQUE,
                retention_hours int NOT NULL DEFAULT 24,
                created_at timestamptz NOT NULL DEFAULT now(),
                last_drained_at timestamptz,
                last_drained_count bigint NOT NULL DEFAULT 0);
            CREATE TABLE pgtrickle."{outbox}" (
                id bigserial PRIMARY KEY,
                pgt_id uuid NOT NULL DEFAULT gen_random_uuid(),
                refresh_id uuid,
                created_at timestamptz NOT NULL DEFAULT now(),
                inserted_count bigint NOT NULL DEFAULT 0,
                deleted_count bigint NOT NULL DEFAULT 0,
                is_claim_check boolean NOT NULL DEFAULT false,
                payload jsonb);
            CREATE TABLE pgtrickle."{delta}" (
                outbox_id bigint NOT NULL,
                row_num bigint NOT NULL,
                row_op text NOT NULL CHECK (row_op IN ('INSERT', 'DELETE')),
                row_data jsonb NOT NULL,
                PRIMARY KEY (outbox_id, row_num));
            INSERT INTO pgtrickle.pgt_outbox_config (stream_table_oid, stream_table_name, outbox_table_name)
            SELECT (coalesce(max(stream_table_oid::text::int8), 0) + 1)::text::oid, '{stream_table}', '{outbox}'
              FROM pgtrickle.pgt_outbox_config;
            "#
        ))
        .await
        .unwrap();
    outbox
}

/// A fresh database with the relay catalog installed (by the binary's `migrate`) and a
/// pg_trickle 0.45 outbox for `stream_table`: the starting point of most tests.
pub async fn db_with_outbox(stream_table: &str) -> (TestDb, Client, String) {
    let db = TestDb::new().await;
    let c = db.client().await;
    let (status, _, err) = run_cli(&db.url, &["migrate"]);
    assert!(status.success(), "migrate failed: {err}");
    let outbox = enable_outbox(&c, stream_table, None).await;
    (db, c, outbox)
}

/// Stores a pipeline config as one written before the relay checked configs at the SQL call
/// (or with its triggers disabled): nothing checks it. `table` is `relay_outbox_config` or
/// `relay_inbox_config`.
pub async fn store_unchecked(client: &Client, table: &str, name: &str, config: &str) {
    let trigger = table.replace("_config", "_config_validate");
    client
        .batch_execute(&format!(
            "BEGIN;
             ALTER TABLE pgtrickle.{table} DISABLE TRIGGER {trigger};
             INSERT INTO pgtrickle.{table} (name, enabled, config) VALUES ('{name}', true, '{config}');
             ALTER TABLE pgtrickle.{table} ENABLE TRIGGER {trigger};
             COMMIT;"
        ))
        .await
        .unwrap();
}

/// An inbox table of pg_trickle's `create_inbox` shape, `qualified` = `schema.table`.
pub async fn create_inbox_table(client: &Client, qualified: &str) {
    client
        .batch_execute(&format!(
            "CREATE TABLE {qualified} (
                 event_id text NOT NULL PRIMARY KEY, event_type text, source text, aggregate_id text,
                 payload jsonb, received_at timestamptz NOT NULL DEFAULT now(), processed_at timestamptz,
                 error text, retry_count int NOT NULL DEFAULT 0, trace_id text)"
        ))
        .await
        .unwrap();
}

/// Writes one inline outbox row as a refresh would (with its NOTIFY); returns its id.
pub async fn write_inline(client: &Client, outbox: &str, payload: Option<Value>) -> i64 {
    let id: i64 = client
        .query_one(
            &format!("INSERT INTO pgtrickle.\"{outbox}\" (inserted_count, payload) VALUES (1, $1) RETURNING id"),
            &[&payload],
        )
        .await
        .unwrap()
        .get(0);
    client.execute("SELECT pg_notify('pgtrickle_outbox_new', $1)", &[&outbox]).await.unwrap();
    id
}

/// Writes a claim-check outbox row and its delta rows (`(is_delete, row)`); returns its id.
pub async fn write_claim_check(client: &Client, outbox: &str, stream_table: &str, rows: &[(bool, Value)]) -> i64 {
    // Header and delta rows commit together, as in pg_trickle's refresh transaction.
    let ops: Vec<&str> = rows.iter().map(|(d, _)| if *d { "DELETE" } else { "INSERT" }).collect();
    let data: Vec<&Value> = rows.iter().map(|(_, r)| r).collect();
    let id: i64 = client
        .query_one(
            &format!(
                "WITH h AS (INSERT INTO pgtrickle.\"{outbox}\" (inserted_count, is_claim_check, payload)
                            VALUES ($1, true, NULL) RETURNING id),
                      d AS (INSERT INTO pgtrickle.\"outbox_delta_rows_{stream_table}\" (outbox_id, row_num, row_op, row_data)
                            SELECT h.id, r.n, r.op, r.data FROM h, unnest($2::text[], $3::jsonb[]) WITH ORDINALITY AS r(op, data, n))
                 SELECT id, pg_notify('pgtrickle_outbox_new', $4) FROM h"
            ),
            &[&(rows.len() as i64), &ops, &data, &outbox],
        )
        .await
        .unwrap()
        .get(0);
    id
}

/// Every outbox row's part of its messages' dedup keys, by outbox id: `<outbox>:<pgt_id>`
/// (the relay's default `dedup_key_format`); a key is `format!("{}:{index}", refs[&id])`.
pub async fn row_refs(client: &Client, outbox: &str) -> std::collections::HashMap<i64, String> {
    client
        .query(&format!("SELECT id, pgt_id::text FROM pgtrickle.\"{outbox}\""), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get::<_, i64>(0), format!("{outbox}:{}", r.get::<_, String>(1))))
        .collect()
}

/// Runs a one-shot CLI command; returns (exit status, stdout, stderr).
pub fn run_cli(url: &str, args: &[&str]) -> (ExitStatus, String, String) {
    let out =
        Command::new(relay_bin()).arg("--postgres-url").arg(url).args(args).env_remove("RUST_LOG").output().unwrap();
    (out.status, String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running relay process with its stdout collected line by line.
pub struct Relay {
    child: Child,
    pub pid: u32,
    pub metrics_addr: String,
    lines: Arc<Mutex<Vec<String>>>,
    stderr_path: PathBuf,
}

impl Relay {
    /// Starts `pgtrickle-relay run` and waits until `/readyz` answers 200.
    pub fn start(url: &str, group: &str, extra: &[&str]) -> Self {
        Self::start_with_env(url, group, extra, &[])
    }

    /// Like [`Relay::start`], with extra environment variables (e.g. `HOSTNAME`, as in a pod).
    pub fn start_with_env(url: &str, group: &str, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let metrics_addr = format!("127.0.0.1:{port}");
        let stderr_path = std::env::temp_dir().join(format!("pgtrickle-relay-e2e-{}-{port}.log", std::process::id()));
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let mut child = Command::new(relay_bin())
            .args(["--postgres-url", url, "--metrics-addr", &metrics_addr, "--relay-group-id", group])
            .args([
                "--discovery-interval",
                "500ms",
                "--shutdown-timeout",
                "10s",
                "--log-level",
                "info,relay_runtime=debug",
            ])
            .args(extra)
            .arg("run")
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .unwrap();
        let pid = child.id();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        let relay = Self { child, pid, metrics_addr, lines, stderr_path };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = relay.try_get("/readyz") {
                return relay;
            }
            assert!(Instant::now() < deadline, "relay did not become ready:\n{}", relay.stderr());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Every stdout line parsed as JSON (each must be a message).
    pub fn messages(&self) -> Vec<Value> {
        self.lines()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {l}")))
            .collect()
    }

    pub async fn wait_for_messages(&self, n: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let m = self.messages();
            if m.len() >= n {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "expected {n} messages, got {}: {m:#?}\n--- relay log ---\n{}",
                m.len(),
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn stderr(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(80)..].join("\n")
    }

    pub fn full_stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        Command::new("kill").args(["-TERM", &self.pid.to_string()]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "relay did not exit after SIGTERM:\n{}", self.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn try_get(&self, path: &str) -> std::io::Result<(u16, String)> {
        http_get(&self.metrics_addr, path)
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        self.try_get(path).unwrap()
    }

    /// The relay process's peak resident memory (VmHWM), in KiB.
    pub fn peak_rss_kb(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:").and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()))
            .unwrap_or(0)
    }

    pub fn health(&self) -> Value {
        serde_json::from_str(&self.get("/health").1).unwrap()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- relay {} log ---\n{}", self.pid, self.stderr());
        }
        // `PGTRICKLE_E2E_KEEP_LOGS=1`: every relay's log stays (for looking into a scenario).
        if std::env::var_os("PGTRICKLE_E2E_KEEP_LOGS").is_some() {
            eprintln!("relay {} log kept in {}", self.pid, self.stderr_path.display());
            return;
        }
        let _ = std::fs::remove_file(&self.stderr_path);
    }
}

/// A minimal HTTP/1.1 GET (no client library needed for the admin endpoints).
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let status = buf.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    let body = if buf.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(&body) } else { body };
    Ok((status, body))
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// Polls `f` until it returns `Some`, failing the test after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    eventually_every(timeout, Duration::from_millis(10), what, f).await
}

/// [`eventually`] with a polling interval (API and broker round trips are not free).
pub async fn eventually_every<T, F, Fut>(timeout: Duration, every: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for: {what}");
        tokio::time::sleep(every).await;
    }
}

/// Backend pid holding the pipeline's advisory lock in this database, if any (contract §4.5 key;
/// advisory locks are per database, `pg_locks` shows every database's).
pub async fn lock_holder(client: &Client, group: &str, pipeline: &str) -> Option<i32> {
    client
        .query_opt(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2 AND granted
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
               AND classid::int8 = (hashtext($1)::int8 & 4294967295) AND objid::int8 = (hashtext($2)::int8 & 4294967295)",
            &[&group, &pipeline],
        )
        .await
        .unwrap()
        .map(|r| r.get(0))
}

pub async fn committed_offset(client: &Client, group: &str, pipeline: &str) -> Option<i64> {
    client
        .query_opt(
            "SELECT last_change_id FROM pgtrickle.relay_consumer_offsets WHERE relay_group_id = $1 AND pipeline_id = $2",
            &[&group, &pipeline],
        )
        .await
        .unwrap()
        .map(|r| r.get(0))
}

/// Reads a JSON-lines file written by the file sink.
pub fn read_jsonl(path: &std::path::Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line in {} ({e}): {l}", path.display())))
        .collect()
}

pub fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "pgtrickle-relay-e2e-{}-{}-{name}",
        std::process::id(),
        DB_COUNTER.fetch_add(1, Ordering::SeqCst)
    ))
}
