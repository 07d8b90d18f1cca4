//! The fault-injection suite: scenarios that break things while rows stream (SIGKILL the owner,
//! stop the broker, crash PostgreSQL, churn the config, 1,000 out-of-order writers, malformed
//! configs), then count at the destination. Each returns a JSON summary with `lost` and
//! `duplicates` (and its timings); `e2e/faults.rs` runs them at CI scale and asserts, the
//! `relay-faults` binary (`scripts/faults`) runs them at full scale and prints the summary.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio_postgres::Client;

use crate::nats::NatsServer;
use crate::private_pg::PrivatePostgres;
use crate::{connect, create_inbox_table, db_with_outbox, enable_outbox, lock_holder, run_cli, store_unchecked, Relay};

/// How hard each scenario pushes.
#[derive(Debug, Clone)]
pub struct Scale {
    pub name: &'static str,
    /// Stream-table rows (= messages) written per scenario.
    pub rows: usize,
    /// Rows per refresh (outbox row).
    pub per_refresh: usize,
    /// How long the writer spreads the rows over.
    pub stream: Duration,
    pub kills: usize,
    /// Rows (forward) or messages (reverse) of each per-backend scenario.
    pub backend_rows: usize,
    pub broker_outage: Duration,
    /// How long a per-backend `broker_restart` keeps the broker away.
    pub restart_outage: Duration,
    pub pg_down: Duration,
    pub writers: usize,
    pub tx_per_writer: usize,
}

impl Scale {
    /// The issues' numbers: 200,000 rows, 10 kills, a 30 s broker outage, 1,000 writers; per
    /// backend 100,000 rows or messages and a 20 s outage.
    pub fn full() -> Self {
        Self {
            name: "full",
            rows: 200_000,
            per_refresh: 500,
            stream: Duration::from_secs(30),
            kills: 10,
            backend_rows: 100_000,
            broker_outage: Duration::from_secs(30),
            restart_outage: Duration::from_secs(20),
            pg_down: Duration::from_secs(5),
            writers: 1000,
            tx_per_writer: 5,
        }
    }

    /// A bounded variant for CI (same scenarios, smaller numbers).
    pub fn ci() -> Self {
        Self {
            name: "ci",
            rows: 20_000,
            per_refresh: 200,
            stream: Duration::from_secs(8),
            kills: 3,
            backend_rows: 10_000,
            broker_outage: Duration::from_secs(4),
            restart_outage: Duration::from_secs(6),
            pg_down: Duration::from_secs(2),
            writers: 150,
            tx_per_writer: 4,
        }
    }

    pub fn refreshes(&self) -> usize {
        self.rows.div_ceil(self.per_refresh)
    }
}

/// Writes `refreshes` inline outbox rows of `per_refresh` rows each, paced over `stream`;
/// survives a PostgreSQL restart (reconnects and writes the next refresh). Ground truth is what
/// the outbox holds afterwards, not what this attempted.
pub fn spawn_writer(
    url: String,
    outbox: String,
    refreshes: usize,
    per_refresh: usize,
    stream: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let pace = stream / refreshes.max(1) as u32;
        let started = Instant::now();
        let mut client: Option<Client> = None;
        let mut r = 0;
        while r < refreshes {
            let c = match &client {
                Some(c) if !c.is_closed() => c,
                _ => {
                    match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                        Ok((c, conn)) => {
                            tokio::spawn(conn);
                            client = Some(c);
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                    continue;
                }
            };
            let rows: Vec<Value> = (0..per_refresh).map(|i| json!({"r": r, "i": i, "pad": "x".repeat(40)})).collect();
            let sql = format!(
                "WITH w AS (INSERT INTO pgtrickle.\"{outbox}\" (inserted_count, payload) VALUES ($1, $2) RETURNING id)
                 SELECT pg_notify('pgtrickle_outbox_new', $3) FROM w"
            );
            match c.execute(sql.as_str(), &[&(per_refresh as i64), &Value::Array(rows), &outbox]).await {
                Ok(_) => r += 1,
                Err(_) => {
                    client = None;
                    continue;
                }
            }
            let due = pace * r as u32;
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
    })
}

/// Every dedup key the outbox's rows should produce (`<outbox>:<pgt_id>:<index>`).
pub async fn expected_keys(c: &Client, outbox: &str) -> HashSet<String> {
    let rows = c
        .query(&format!("SELECT id, pgt_id::text, jsonb_array_length(payload) FROM pgtrickle.\"{outbox}\""), &[])
        .await
        .unwrap();
    rows.iter()
        .flat_map(|r| {
            let pgt_id: String = r.get(1);
            let n: i32 = r.get(2);
            (0..n).map(move |i| format!("{outbox}:{pgt_id}:{i}"))
        })
        .collect()
}

/// `(lost, duplicates, unexpected)` of delivered `ids` against `expected`.
pub fn tally(expected: &HashSet<String>, ids: &[String]) -> (usize, usize, usize) {
    let unique: HashSet<&String> = ids.iter().collect();
    let lost = expected.iter().filter(|k| !unique.contains(k)).count();
    let unexpected = unique.iter().filter(|k| !expected.contains(k.as_str())).count();
    (lost, ids.len() - unique.len(), unexpected)
}

/// Waits until `count()` reaches `n` (or `timeout`); returns how long it took.
pub async fn until_count<F, Fut>(n: usize, timeout: Duration, mut count: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = usize>,
{
    let t = Instant::now();
    while count().await < n && t.elapsed() < timeout {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    t.elapsed()
}

async fn nats_tally(nats: &NatsServer, stream: &str, expected: &HashSet<String>) -> Value {
    let ids = nats.stream_msg_ids(stream).await;
    let (lost, duplicates, unexpected) = tally(expected, &ids);
    json!({"stored": ids.len(), "lost": lost, "duplicates": duplicates, "unexpected": unexpected})
}

pub fn stats(ms: &[u128]) -> Value {
    let max = ms.iter().max().copied().unwrap_or(0);
    let mean = if ms.is_empty() { 0 } else { ms.iter().sum::<u128>() / ms.len() as u128 };
    json!({"max": max, "mean": mean, "each": ms})
}

pub async fn register(c: &Client, name: &str, config: Value) {
    c.execute("SELECT pgtrickle.set_relay_outbox($1, config => $2::jsonb)", &[&name, &config]).await.unwrap();
}

fn nats_config(nats: &NatsServer, stream_table: &str, subject: &str) -> Value {
    json!({"stream_table": stream_table, "sink_type": "nats", "nats_url": nats.url(), "subject_template": subject,
           "ack_timeout_ms": 2000, "delta_mode": "snapshot", "batch_size": 20})
}

async fn owner_pid(c: &Client, pipeline: &str) -> Option<u32> {
    let row = c
        .query_opt(
            "SELECT owner FROM pgtrickle.relay_pipeline_status WHERE name = $1 AND state = 'running'",
            &[&pipeline],
        )
        .await
        .ok()??;
    let owner: Option<String> = row.get(0);
    owner?.rsplit_once(':')?.1.parse().ok()
}

/// SIGKILLs the relay owning `pipeline` `scale.kills` times, spread over the stream, restarting
/// it each time; returns how long each takeover (the lock held by another session) took.
pub async fn kill_owner_repeatedly(
    c: &Client,
    url: &str,
    relays: &mut [Relay],
    pipeline: &str,
    scale: &Scale,
) -> Vec<u128> {
    let gap = scale.stream / (scale.kills as u32 + 1);
    let mut failovers = Vec::new();
    for _ in 0..scale.kills {
        tokio::time::sleep(gap).await;
        // The current owner, from the status row its worker writes (with its first batch).
        let deadline = Instant::now() + Duration::from_secs(30);
        let idx = loop {
            if let Some(pid) = owner_pid(c, pipeline).await {
                if let Some(i) = relays.iter().position(|r| r.pid == pid) {
                    break i;
                }
            }
            if Instant::now() > deadline {
                let status: Vec<String> = c
                    .query(
                        "SELECT state || ' (' || coalesce(owner, '?') || '): ' || coalesce(last_error, '')
                           FROM pgtrickle.relay_pipeline_status WHERE name = $1",
                        &[&pipeline],
                    )
                    .await
                    .map(|rows| rows.iter().map(|r| r.get(0)).collect())
                    .unwrap_or_default();
                let pids: Vec<u32> = relays.iter().map(|r| r.pid).collect();
                let logs: Vec<String> = relays
                    .iter()
                    .map(|r| {
                        format!("{}\nhealth: {}", r.stderr(), r.try_get("/health").map(|h| h.1).unwrap_or_default())
                    })
                    .collect();
                panic!(
                    "no live owner of {pipeline} among the relays {pids:?}: status {status:?}\n{}",
                    logs.join("\n---\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let old_backend = lock_holder(c, "default", pipeline).await;
        relays[idx].kill();
        let t = Instant::now();
        loop {
            let now = lock_holder(c, "default", pipeline).await;
            if now.is_some() && now != old_backend {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(15), "nobody took over {pipeline} after a SIGKILL");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        failovers.push(t.elapsed().as_millis());
        relays[idx] = Relay::start(url, "default", &[]);
    }
    failovers
}

/// (a) SIGKILL the relay that owns the NATS pipeline `kills` times while the stream flows, with a
/// second instance running (the killed one is restarted each time). Counts at NATS JetStream
/// (`Nats-Msg-Id` = dedup key) and in a pg_trickle inbox (pg-inbox sink, `ON CONFLICT`).
pub async fn sigkill_owner(scale: &Scale) -> Value {
    let nats = NatsServer::start();
    nats.create_stream("FAULTS", &["faults.>"]).await;
    let (db, c, outbox) = db_with_outbox("faults").await;
    create_inbox_table(&c, "public.faults_inbox").await;
    register(&c, "to-nats", nats_config(&nats, "faults", "faults.{op}")).await;
    register(
        &c,
        "to-inbox",
        json!({"stream_table": "faults", "sink_type": "pg-inbox", "inbox_table": "public.faults_inbox", "delta_mode": "snapshot", "batch_size": 20}),
    )
    .await;
    let mut relays = vec![Relay::start(&db.url, "default", &[]), Relay::start(&db.url, "default", &[])];
    let writer = spawn_writer(db.url.clone(), outbox.clone(), scale.refreshes(), scale.per_refresh, scale.stream);
    let failovers = kill_owner_repeatedly(&c, &db.url, &mut relays, "to-nats", scale).await;
    writer.await.unwrap();
    let writer_done = Instant::now();
    let expected = expected_keys(&c, &outbox).await;
    let n = expected.len();
    until_count(n, Duration::from_secs(180), || async { nats.stream_count("FAULTS").await as usize }).await;
    until_count(n, Duration::from_secs(180), || async {
        c.query_one("SELECT count(*) FROM public.faults_inbox", &[])
            .await
            .map(|r| r.get::<_, i64>(0) as usize)
            .unwrap_or(0)
    })
    .await;
    let drained_ms = writer_done.elapsed().as_millis();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let at_nats = nats_tally(&nats, "FAULTS", &expected).await;
    let ids: Vec<String> =
        c.query("SELECT event_id FROM public.faults_inbox", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    let (lost_i, dup_i, unexpected_i) = tally(&expected, &ids);
    let lost = at_nats["lost"].as_u64().unwrap_or(0) as usize + lost_i;
    let duplicates = at_nats["duplicates"].as_u64().unwrap_or(0) as usize + dup_i;
    drop(relays);
    json!({
        "scenario": "sigkill_owner",
        "rows": n, "instances": 2, "kills": scale.kills, "discovery_interval_ms": 500,
        "lost": lost, "duplicates": duplicates,
        "nats": at_nats,
        "inbox": {"stored": ids.len(), "lost": lost_i, "duplicates": dup_i, "unexpected": unexpected_i},
        "failover_ms": stats(&failovers),
        "drained_after_writer_ms": drained_ms,
    })
}

/// (b) Stop the NATS broker mid-stream for `broker_outage`, restart it: the pipeline reports
/// `degraded` meanwhile and resumes by itself.
pub async fn broker_outage(scale: &Scale) -> Value {
    let mut nats = NatsServer::start();
    nats.create_stream("OUTAGE", &["outage.>"]).await;
    let (db, c, outbox) = db_with_outbox("outage").await;
    register(&c, "outage", nats_config(&nats, "outage", "outage.{op}")).await;
    let relay = Relay::start(&db.url, "default", &[]);
    let stream = scale.stream + scale.broker_outage;
    let writer = spawn_writer(db.url.clone(), outbox.clone(), scale.refreshes(), scale.per_refresh, stream);
    tokio::time::sleep(scale.stream / 3).await;
    nats.stop();
    let stopped = Instant::now();
    let mut degraded_after_ms = None;
    while stopped.elapsed() < scale.broker_outage {
        if degraded_after_ms.is_none() {
            let h = relay.health();
            if h["pipelines"][0]["state"] == "degraded" {
                degraded_after_ms = Some(stopped.elapsed().as_millis());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let offset_at_restart = crate::committed_offset(&c, "default", "outage").await.unwrap_or(0);
    nats.restart();
    let back = Instant::now();
    // Recovery: the relay commits past where it was stuck, by itself.
    let deadline = Instant::now() + Duration::from_secs(120);
    while crate::committed_offset(&c, "default", "outage").await.unwrap_or(0) <= offset_at_restart
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let recovery_ms = back.elapsed().as_millis();
    writer.await.unwrap();
    let expected = expected_keys(&c, &outbox).await;
    until_count(expected.len(), Duration::from_secs(180), || async { nats.stream_count("OUTAGE").await as usize })
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let at_nats = nats_tally(&nats, "OUTAGE", &expected).await;
    let state_after = relay.health()["pipelines"][0]["state"].clone();
    json!({
        "scenario": "broker_outage",
        "rows": expected.len(), "outage_ms": scale.broker_outage.as_millis(),
        "lost": at_nats["lost"], "duplicates": at_nats["duplicates"],
        "nats": at_nats,
        "degraded_after_ms": degraded_after_ms, "recovery_ms": recovery_ms, "state_after": state_after,
        "restarts_of_relay": 0,
    })
}

/// (c) Crash PostgreSQL (immediate stop) mid-stream and start it again.
pub async fn postgres_restart(scale: &Scale) -> Value {
    let pg = PrivatePostgres::start(100);
    let url = pg.url();
    let nats = NatsServer::start();
    nats.create_stream("PGR", &["pgr.>"]).await;
    assert!(run_cli(&url, &["migrate"]).0.success());
    let c = connect(&url).await;
    let outbox = enable_outbox(&c, "pgr", None).await;
    register(&c, "pgr", nats_config(&nats, "pgr", "pgr.{op}")).await;
    let relay = Relay::start(&url, "default", &[]);
    let writer = spawn_writer(url.clone(), outbox.clone(), scale.refreshes(), scale.per_refresh, scale.stream);
    tokio::time::sleep(scale.stream / 3).await;
    let before = crate::committed_offset(&c, "default", "pgr").await.unwrap_or(0);
    drop(c);
    let down = pg.crash_restart(scale.pg_down);
    let back = Instant::now();
    let c = connect(&url).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while crate::committed_offset(&c, "default", "pgr").await.unwrap_or(0) <= before && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let recovery_ms = back.elapsed().as_millis();
    writer.await.unwrap();
    let expected = expected_keys(&c, &outbox).await;
    until_count(expected.len(), Duration::from_secs(180), || async { nats.stream_count("PGR").await as usize }).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let at_nats = nats_tally(&nats, "PGR", &expected).await;
    let relay_alive = relay.try_get("/livez").is_ok();
    json!({
        "scenario": "postgres_restart",
        "rows": expected.len(), "down_ms": down.as_millis(),
        "lost": at_nats["lost"], "duplicates": at_nats["duplicates"],
        "nats": at_nats, "recovery_ms": recovery_ms, "relay_process_survived": relay_alive,
    })
}

/// (d) `disable_relay`, `enable_relay`, a config change and `delete_relay` + re-register while
/// rows stream: each applies in under a second; nothing lost or doubled.
pub async fn config_churn(scale: &Scale) -> Value {
    let nats = NatsServer::start();
    nats.create_stream("CHURN", &["churn.>"]).await;
    let (db, c, outbox) = db_with_outbox("churn").await;
    let config = nats_config(&nats, "churn", "churn.v1.{op}");
    register(&c, "churn", config.clone()).await;
    // A long discovery interval: only notifications can make these changes fast.
    let _relay = Relay::start(&db.url, "default", &["--discovery-interval", "60s"]);
    let writer = spawn_writer(db.url.clone(), outbox.clone(), scale.refreshes(), scale.per_refresh, scale.stream);
    let step = scale.stream / 6;
    let mut timings = serde_json::Map::new();
    tokio::time::sleep(step).await;
    c.execute("SELECT pgtrickle.disable_relay('churn')", &[]).await.unwrap();
    timings.insert("disable_ms".into(), json!(until_lock(&c, "churn", false).await));
    tokio::time::sleep(step).await;
    c.execute("SELECT pgtrickle.enable_relay('churn')", &[]).await.unwrap();
    timings.insert("enable_ms".into(), json!(until_lock(&c, "churn", true).await));
    tokio::time::sleep(step).await;
    let mut changed = config.clone();
    changed["subject_template"] = json!("churn.v2.{op}");
    register(&c, "churn", changed.clone()).await;
    let t = Instant::now();
    let stream = nats.jetstream().await.get_stream("CHURN").await.unwrap();
    while stream.get_last_raw_message_by_subject("churn.v2.insert").await.is_err() {
        assert!(t.elapsed() < Duration::from_secs(15), "config change never applied");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    timings.insert("config_change_ms".into(), json!(t.elapsed().as_millis()));
    tokio::time::sleep(step).await;
    c.execute("SELECT pgtrickle.delete_relay('churn')", &[]).await.unwrap();
    timings.insert("delete_ms".into(), json!(until_lock(&c, "churn", false).await));
    tokio::time::sleep(step).await;
    register(&c, "churn", changed).await;
    timings.insert("re_register_ms".into(), json!(until_lock(&c, "churn", true).await));
    writer.await.unwrap();
    let expected = expected_keys(&c, &outbox).await;
    until_count(expected.len(), Duration::from_secs(120), || async { nats.stream_count("CHURN").await as usize }).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let at_nats = nats_tally(&nats, "CHURN", &expected).await;
    json!({
        "scenario": "config_churn",
        "rows": expected.len(), "lost": at_nats["lost"], "duplicates": at_nats["duplicates"],
        "nats": at_nats, "applied_ms": Value::Object(timings),
    })
}

/// Waits until the pipeline's lock is (or is no longer) held; returns the milliseconds it took.
async fn until_lock(c: &Client, pipeline: &str, held: bool) -> u128 {
    let t = Instant::now();
    while lock_holder(c, "default", pipeline).await.is_some() != held {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "{pipeline}: lock never {}",
            if held { "taken" } else { "released" }
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    t.elapsed().as_millis()
}

/// (e) `writers` concurrent outbox writers, each holding its id uncommitted for a random while
/// (so later ids commit first) and rolling back one transaction in ten.
pub async fn concurrent_writers(scale: &Scale) -> Value {
    let pg = PrivatePostgres::start(scale.writers as u32 + 50);
    let url = pg.url();
    let nats = NatsServer::start();
    nats.create_stream("WRITERS", &["writers.>"]).await;
    assert!(run_cli(&url, &["migrate"]).0.success());
    let c = connect(&url).await;
    let outbox = enable_outbox(&c, "writers", None).await;
    register(&c, "writers", nats_config(&nats, "writers", "writers.{op}")).await;
    let _relay = Relay::start(&url, "default", &[]);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..scale.writers {
        let (url, outbox, n) = (url.clone(), outbox.clone(), scale.tx_per_writer);
        tasks.push(tokio::spawn(async move {
            let mut client = connect(&url).await;
            let mut rolled_back = 0;
            for t in 0..n {
                let tx = client.transaction().await.unwrap();
                tx.execute(
                    &format!("INSERT INTO pgtrickle.\"{outbox}\" (inserted_count, payload) VALUES (2, $1)"),
                    &[&json!([{"w": w, "t": t, "n": 0}, {"w": w, "t": t, "n": 1}])],
                )
                .await
                .unwrap();
                tx.execute("SELECT pg_notify('pgtrickle_outbox_new', $1)", &[&outbox]).await.unwrap();
                tokio::time::sleep(Duration::from_millis(fastrand::u64(0..50))).await;
                if fastrand::u8(0..10) == 0 {
                    tx.rollback().await.unwrap();
                    rolled_back += 1;
                } else {
                    tx.commit().await.unwrap();
                }
            }
            rolled_back
        }));
    }
    let mut rolled_back = 0;
    for t in tasks {
        rolled_back += t.await.unwrap();
    }
    let writes_ms = started.elapsed().as_millis();
    let expected = expected_keys(&c, &outbox).await;
    until_count(expected.len(), Duration::from_secs(120), || async { nats.stream_count("WRITERS").await as usize })
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let at_nats = nats_tally(&nats, "WRITERS", &expected).await;
    json!({
        "scenario": "concurrent_writers",
        "writers": scale.writers, "transactions": scale.writers * scale.tx_per_writer, "rolled_back": rolled_back,
        "rows": expected.len(), "lost": at_nats["lost"], "duplicates": at_nats["duplicates"],
        "relayed_rolled_back_rows": at_nats["unexpected"], "nats": at_nats, "writes_ms": writes_ms,
    })
}

/// (f) Malformed and failing pipelines beside healthy ones: the healthy ones relay everything;
/// each bad one shows its own error in the status table and `/health`.
pub async fn malformed_beside_healthy(scale: &Scale) -> Value {
    let nats = NatsServer::start();
    // One stream per healthy pipeline: they publish the same dedup keys (same outbox), which
    // JetStream would otherwise merge.
    for i in 0..3 {
        nats.create_stream(&format!("HEALTHY{i}"), &[&format!("healthy.{i}.>")]).await;
    }
    let (db, c, outbox) = db_with_outbox("mixed").await;
    for i in 0..3 {
        register(&c, &format!("healthy-{i}"), nats_config(&nats, "mixed", &format!("healthy.{i}.{{op}}"))).await;
    }
    // Configs the SQL functions refuse, stored as they could have been before they checked them.
    store_unchecked(
        &c,
        "relay_outbox_config",
        "bad-sink-type",
        r#"{"stream_table": "mixed", "sink_type": "carrier-pigeon"}"#,
    )
    .await;
    let bad_batch = json!({"stream_table": "mixed", "sink_type": "nats", "nats_url": nats.url(), "batch_size": "lots"});
    store_unchecked(&c, "relay_outbox_config", "bad-batch-size", &bad_batch.to_string()).await;
    register(&c, "missing-outbox", json!({"stream_table": "no_such_table", "sink_type": "stdout"})).await;
    register(
        &c,
        "unreachable-broker",
        json!({"stream_table": "mixed", "sink_type": "nats", "nats_url": format!("nats://127.0.0.1:{}", crate::free_port()), "delta_mode": "snapshot"}),
    )
    .await;
    // Written behind the SQL functions' back: not even a JSON object.
    store_unchecked(&c, "relay_outbox_config", "not-an-object", r#""oops""#).await;
    let relay = Relay::start(&db.url, "default", &[]);
    let rows = scale.rows / 4;
    let per = scale.per_refresh.min(rows.max(1));
    let writer = spawn_writer(db.url.clone(), outbox.clone(), rows.div_ceil(per), per, scale.stream / 4);
    writer.await.unwrap();
    let expected = expected_keys(&c, &outbox).await;
    let mut per_pipeline = serde_json::Map::new();
    let (mut lost, mut duplicates) = (0, 0);
    for i in 0..3 {
        let stream = format!("HEALTHY{i}");
        until_count(expected.len(), Duration::from_secs(120), || async { nats.stream_count(&stream).await as usize })
            .await;
        let t = nats_tally(&nats, &stream, &expected).await;
        lost += t["lost"].as_u64().unwrap_or(0);
        duplicates += t["duplicates"].as_u64().unwrap_or(0);
        per_pipeline.insert(format!("healthy-{i}"), t);
    }
    let health = relay.health();
    let states: serde_json::Map<String, Value> = c
        .query("SELECT name, state, coalesce(last_error, '') FROM pgtrickle.relay_pipeline_status", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get::<_, String>(0), json!({"state": r.get::<_, String>(1), "error": r.get::<_, String>(2)})))
        .collect();
    let healthy_ok = (0..3).all(|i| states.get(&format!("healthy-{i}")).is_some_and(|s| s["state"] == "running"));
    json!({
        "scenario": "malformed_beside_healthy",
        "rows": expected.len(), "healthy_pipelines": 3,
        "lost": lost, "duplicates": duplicates,
        "healthy": per_pipeline, "healthy_running": healthy_ok,
        "pipelines": states, "health_status": health["status"],
    })
}
