//! Hundreds of pipelines on a bounded number of database connections: one instance's pipelines
//! share one lock session and one pool (`--max-db-connections`), so they never lock other
//! clients out of the database; a lock session that dies stops its pipelines, which resume from
//! their committed offsets without loss; a SIGKILLed instance's pipelines are all taken by the
//! survivor within the discovery interval.
//!
//! Every scenario counts at its targets, key by key.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use relay_e2e::faults::expected_keys;
use relay_e2e::private_pg::PrivatePostgres;
use relay_e2e::*;
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio_postgres::Client;

const WAIT: Duration = Duration::from_secs(45);

/// All of an instance's connections are named `pgtrickle-relay…` (pool and catalog
/// `pgtrickle-relay`, lock session `pgtrickle-relay locks`).
const RELAY_CONNECTIONS: &str = "application_name LIKE 'pgtrickle-relay%'";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_pipelines_share_a_bounded_number_of_connections() {
    const PIPELINES: usize = 300;
    const MAX_DB_CONNECTIONS: i64 = 8;
    // Old behaviour (a connection per pipeline) would need 300 of these 40.
    let pg = PrivatePostgres::start(40);
    let url = private_db(&pg, "many").await;
    let c = connect(&url).await;

    let started = Instant::now();
    let stream_tables: Vec<String> = (0..PIPELINES).map(|i| format!("mp{i}")).collect();
    let outboxes = enable_outboxes(&c, &stream_tables).await;
    let files: Vec<PathBuf> = (0..PIPELINES).map(|i| temp_path(&format!("mp{i}.jsonl"))).collect();
    let names: Vec<String> = (0..PIPELINES).map(|i| format!("mp-{i}")).collect();
    let configs: Vec<(String, Value)> = (0..PIPELINES)
        .map(|i| {
            (
                names[i].clone(),
                json!({"stream_table": stream_tables[i], "sink_type": "file", "path": files[i].to_str().unwrap(),
                       "delta_mode": "snapshot"}),
            )
        })
        .collect();
    register_all(&c, &configs).await;
    eprintln!("setup of {PIPELINES} outboxes and pipelines: {:?}", started.elapsed());

    // Watch the relay's connections and another client's access throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = spawn_connection_sampler(url.clone(), stop.clone());
    let prober = spawn_prober(url.clone(), stop.clone());

    let started = Instant::now();
    let relay = Relay::start(&url, "many", &["--max-db-connections", &MAX_DB_CONNECTIONS.to_string()]);
    eventually(WAIT, "the instance owns all 300 pipelines", || async {
        let h = relay.health();
        (h["pipelines_owned"] == PIPELINES && h["pipelines_unowned"] == 0).then_some(())
    })
    .await;
    eprintln!("one instance owned {PIPELINES} pipelines after {:?}", started.elapsed());

    // Two outbox rows of three rows each in every outbox.
    let started = Instant::now();
    let mut last = HashMap::new();
    for (name, outbox) in names.iter().zip(&outboxes) {
        let mut id = 0;
        for o in 0..2 {
            let rows: Vec<Value> = (0..3).map(|r| json!({"o": o, "r": r, "outbox": outbox})).collect();
            id = write_inline(&c, outbox, Some(Value::Array(rows))).await;
        }
        last.insert(name.clone(), id);
    }
    wait_offsets(&c, "many", &last, WAIT).await;
    eprintln!("{} messages relayed and committed in {:?}", PIPELINES * 6, started.elapsed());

    // Every row once in its pipeline's file.
    let mut expected_total = 0;
    for (outbox, file) in outboxes.iter().zip(&files) {
        let expected = expected_keys(&c, outbox).await;
        assert_eq!(expected.len(), 6, "{outbox}");
        expected_total += expected.len();
        let t = tally(&expected, &file_keys(file));
        assert!(t.lost == 0 && t.duplicates == 0 && t.unexpected == 0, "{}: {t:?}", file.display());
    }
    assert_eq!(expected_total, PIPELINES * 6);

    let h = relay.health();
    assert_eq!(h["pipelines_owned"], PIPELINES, "{h}");
    assert_eq!(h["pipelines_unowned"], 0, "{h}");
    assert_eq!(h["status"], "healthy", "{h}");
    let metrics = relay.get("/metrics").1;
    let pool: Vec<&str> = metrics.lines().filter(|l| l.starts_with("pgtrickle_relay_db_connections")).collect();
    eprintln!("pool gauges: {pool:?}");
    let pooled: i64 = pool.iter().filter_map(|l| l.rsplit(' ').next()?.parse::<i64>().ok()).sum();
    assert!(pooled <= MAX_DB_CONNECTIONS - 2, "the pool holds {pooled} connections: {pool:?}");
    assert_eq!(gauge(&metrics, "pgtrickle_relay_pipelines_unowned"), Some(0.0));
    assert!(gauge(&metrics, "pgtrickle_relay_db_pool_wait_seconds_count").is_some_and(|n| n > 0.0));

    stop.store(true, Ordering::SeqCst);
    let peak = sampler.await.unwrap();
    let probes = prober.await.unwrap();
    eprintln!("relay connections: {peak:?}");
    eprintln!("another client: {probes:?}");
    assert!(peak.error.is_none() && peak.samples >= 10, "the sampler barely ran: {peak:?}");
    assert!(peak.max > 0, "the relay's connections were never seen: {peak:?}");
    assert!(
        peak.max <= MAX_DB_CONNECTIONS,
        "the relay held {} connections (--max-db-connections {MAX_DB_CONNECTIONS}): {peak:?}",
        peak.max
    );
    assert!(probes.failures.is_empty(), "another client could not use the database: {probes:?}");
    assert!(probes.ok >= 10, "the other client barely tried: {probes:?}");
    for f in &files {
        let _ = std::fs::remove_file(f);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_lock_session_stops_its_pipelines_and_they_resume_without_loss() {
    const OUTBOXES: usize = 20;
    const GROUP: &str = "locks";
    let db = TestDb::new().await;
    assert!(run_cli(&db.url, &["migrate"]).0.success());
    let c = db.client().await;
    create_inbox_table(&c, "public.lk_inbox").await;
    let stream_tables: Vec<String> = (0..OUTBOXES).map(|i| format!("lk{i}")).collect();
    let outboxes = enable_outboxes(&c, &stream_tables).await;
    // Each outbox to a file (keeps every copy: a repeat shows) and to the shared inbox.
    let files: Vec<PathBuf> = (0..OUTBOXES).map(|i| temp_path(&format!("lk{i}.jsonl"))).collect();
    let mut configs = Vec::new();
    for i in 0..OUTBOXES {
        let st = &stream_tables[i];
        configs.push((
            format!("lk-file-{i}"),
            json!({"stream_table": st, "sink_type": "file", "path": files[i].to_str().unwrap(),
                   "delta_mode": "snapshot", "batch_size": 5}),
        ));
        configs.push((
            format!("lk-inbox-{i}"),
            json!({"stream_table": st, "sink_type": "pg-inbox", "inbox_table": "public.lk_inbox",
                   "delta_mode": "snapshot", "batch_size": 5}),
        ));
    }
    let pipelines = configs.len();
    register_all(&c, &configs).await;

    let relay = Relay::start(&db.url, GROUP, &[]);
    eventually(WAIT, "the instance owns every pipeline", || async {
        (relay.health()["pipelines_owned"] == pipelines).then_some(())
    })
    .await;
    let old = lock_session(&c).await;
    assert_eq!(locks_held_by(&c, GROUP, old).await, pipelines as i64, "every lock on the one lock session");

    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(db.url.clone(), outboxes.clone(), 3, Duration::from_millis(20), stop.clone());
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let log_before = relay.full_stderr().len();
    let terminated: bool = c.query_one("SELECT pg_terminate_backend($1)", &[&old]).await.unwrap().get(0);
    assert!(terminated);
    let t = Instant::now();
    // A new lock session takes every pipeline again.
    let new = eventually(WAIT, "a new lock session holding every pipeline's lock", || async {
        let pid = lock_session_opt(&c).await.filter(|p| *p != old)?;
        (locks_held_by(&c, GROUP, pid).await == pipelines as i64).then_some(pid)
    })
    .await;
    let relocked = t.elapsed();
    eventually(WAIT, "every pipeline running again", || async {
        let h = relay.health();
        let running = h["pipelines"].as_array()?.iter().filter(|p| p["state"] == "running").count();
        (h["pipelines_owned"] == pipelines && running == pipelines).then_some(())
    })
    .await;
    let recovered = t.elapsed();
    eprintln!(
        "lock session {old} terminated: new lock session {new} held all {pipelines} locks after {relocked:?}, all running after {recovered:?}"
    );
    assert!(recovered <= Duration::from_secs(10), "recovery took {recovered:?}");

    // Every worker on the dead session stopped and its pipeline was taken again.
    let log = relay.full_stderr()[log_before..].to_owned();
    let ended = configs.iter().filter(|(n, _)| log_mentions(&log, "worker ended", n)).count();
    let reacquired = configs.iter().filter(|(n, _)| log_mentions(&log, "acquired pipeline", n)).count();
    let fenced = log.lines().filter(|l| strip_ansi(l).contains("no longer held by this session")).count();
    eprintln!(
        "after the termination: {ended} workers ended, {reacquired} pipelines acquired again, {fenced} commits fenced"
    );
    assert_eq!(ended, pipelines, "every worker on the dead lock session ends:\n{log}");
    assert_eq!(reacquired, pipelines, "every pipeline is acquired again:\n{log}");

    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::SeqCst);
    let rounds = writer.await.unwrap().unwrap();

    let mut last = HashMap::new();
    let mut expected_all = HashSet::new();
    for (i, outbox) in outboxes.iter().enumerate() {
        let id = max_id(&c, outbox).await;
        last.insert(format!("lk-file-{i}"), id);
        last.insert(format!("lk-inbox-{i}"), id);
        expected_all.extend(expected_keys(&c, outbox).await);
    }
    wait_offsets(&c, GROUP, &last, WAIT).await;

    // Files: nothing lost (a batch sent but not committed before the fence may come twice).
    let mut file_total = Tally::default();
    for (outbox, file) in outboxes.iter().zip(&files) {
        let t = tally(&expected_keys(&c, outbox).await, &file_keys(file));
        assert!(t.lost == 0 && t.unexpected == 0, "{}: {t:?}", file.display());
        file_total.add(&t);
    }
    // The inbox: every event once.
    let ids: Vec<String> =
        c.query("SELECT event_id FROM public.lk_inbox", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    let inbox = tally(&expected_all, &ids);
    eprintln!("{rounds} writer rounds, {} messages: files {file_total:?}, inbox {inbox:?}", expected_all.len());
    assert!(inbox.lost == 0 && inbox.duplicates == 0 && inbox.unexpected == 0, "inbox: {inbox:?}");
    assert_eq!(ids.len(), expected_all.len());
    assert!(rounds >= 10, "the writer barely wrote: {rounds} rounds");
    let h = relay.health();
    assert_eq!(h["pipelines_unowned"], 0, "{h}");
    for f in &files {
        let _ = std::fs::remove_file(f);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_two_hundred_pipelines_one_sigkilled_survivor_takes_all() {
    const PIPELINES: usize = 200;
    const GROUP: &str = "pair";
    // Room for the pg-inbox sinks' own connections besides the relays': as of this writing a
    // pg-inbox sink opens one per pipeline (`pgtrickle-relay <pipeline> inbox`), outside the
    // instance's --max-db-connections; the sampler below reports them.
    let pg = PrivatePostgres::start(300);
    let url = private_db(&pg, "pair").await;
    let c = connect(&url).await;
    create_inbox_table(&c, "public.pair_inbox").await;
    let stream_tables: Vec<String> = (0..PIPELINES).map(|i| format!("tk{i}")).collect();
    let outboxes = enable_outboxes(&c, &stream_tables).await;
    let names: Vec<String> = (0..PIPELINES).map(|i| format!("tk-{i}")).collect();
    let configs: Vec<(String, Value)> = names
        .iter()
        .zip(&stream_tables)
        .map(|(n, st)| {
            (
                n.clone(),
                json!({"stream_table": st, "sink_type": "pg-inbox", "inbox_table": "public.pair_inbox",
                       "delta_mode": "snapshot", "batch_size": 5}),
            )
        })
        .collect();
    register_all(&c, &configs).await;

    let stop_sampling = Arc::new(AtomicBool::new(false));
    let sampler = spawn_connection_sampler(url.clone(), stop_sampling.clone());
    let started = Instant::now();
    let mut r1 = Relay::start(&url, GROUP, &[]);
    let r2 = Relay::start(&url, GROUP, &[]);
    let owned = |r: &Relay| r.health()["pipelines_owned"].as_u64().unwrap_or(0);
    eventually(WAIT, "each instance owns its fair share (100)", || async {
        (owned(&r1) == 100 && owned(&r2) == 100).then_some(())
    })
    .await;
    eprintln!("two instances own 100 pipelines each after {:?}", started.elapsed());
    // `pipelines_unowned` is counted at each discovery (500 ms), after that instance's takes.
    eventually(Duration::from_secs(5), "neither instance sees unowned pipelines", || async {
        (r1.health()["pipelines_unowned"] == 0 && r2.health()["pipelines_unowned"] == 0).then_some(())
    })
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(url.clone(), outboxes.clone(), 2, Duration::from_millis(20), stop.clone());
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let r1_owned = owned(&r1);
    let sessions: Vec<i32> = c
        .query("SELECT pid FROM pg_stat_activity WHERE application_name = 'pgtrickle-relay locks'", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    r1.kill();
    let t = Instant::now();
    // The survivor's lock session holding every lock, and its /health showing every pipeline
    // owned (its worker started); with the owned count every 500 ms on the way.
    let mut progress = Vec::new();
    let mut locked = None;
    let failover = loop {
        if locked.is_none() {
            let mut most = 0;
            for pid in &sessions {
                most = most.max(locks_held_by(&c, GROUP, *pid).await);
            }
            if most == PIPELINES as i64 {
                locked = Some(t.elapsed());
            }
        }
        let n = owned(&r2);
        if n == PIPELINES as u64 {
            break t.elapsed();
        }
        if t.elapsed() >= Duration::from_millis(500) * progress.len() as u32 {
            progress.push((t.elapsed().as_millis(), n));
        }
        assert!(t.elapsed() < WAIT, "the survivor owns {n} of {PIPELINES} after {:?}", t.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let locked = locked.unwrap_or(failover);
    eprintln!(
        "SIGKILLed the owner of {r1_owned} pipelines: the survivor's lock session held all {PIPELINES} locks after {locked:?}; its /health showed all {PIPELINES} owned after {failover:?} ((ms, owned) on the way: {progress:?})"
    );
    // Discovery interval (500 ms) + a margin for CI.
    assert!(failover <= Duration::from_secs(5), "take-over (/health pipelines_owned = {PIPELINES}) took {failover:?}");
    assert!(locked <= Duration::from_secs(5), "taking the locks took {locked:?}");
    let all_running = eventually(WAIT, "every pipeline running on the survivor", || async {
        let h = r2.health();
        let running = h["pipelines"].as_array()?.iter().filter(|p| p["state"] == "running").count();
        (running == PIPELINES).then_some(t.elapsed())
    })
    .await;
    eprintln!("all {PIPELINES} running on the survivor after {all_running:?}");

    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::SeqCst);
    let rounds = writer.await.unwrap().unwrap();
    let mut last = HashMap::new();
    let mut expected = HashSet::new();
    for (name, outbox) in names.iter().zip(&outboxes) {
        last.insert(name.clone(), max_id(&c, outbox).await);
        expected.extend(expected_keys(&c, outbox).await);
    }
    wait_offsets(&c, GROUP, &last, WAIT).await;
    let ids: Vec<String> =
        c.query("SELECT event_id FROM public.pair_inbox", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    let inbox = tally(&expected, &ids);
    eprintln!("{rounds} writer rounds, {} messages: inbox {inbox:?}", expected.len());
    assert!(inbox.lost == 0 && inbox.duplicates == 0 && inbox.unexpected == 0, "inbox: {inbox:?}");
    assert!(rounds >= 5, "the writer barely wrote: {rounds} rounds");
    let h = r2.health();
    assert_eq!(h["pipelines_owned"], PIPELINES, "{h}");
    assert_eq!(h["pipelines_unowned"], 0, "{h}");

    stop_sampling.store(true, Ordering::SeqCst);
    let peak = sampler.await.unwrap();
    eprintln!("relay connections of both instances (sink connections included): {peak:?}");
    assert!(peak.error.is_none() && peak.samples >= 10, "the sampler barely ran: {peak:?}");
    // The catalog connections, lock sessions and pools of two instances (default 10 each).
    assert!(peak.max_core <= 20, "two instances held {} core connections: {peak:?}", peak.max_core);
}

// ---------------------------------------------------------------------------------------------
// Setup

/// A database of its own in a private cluster, with the relay catalog installed; its URL.
/// The database refuses the relay's work connections (`53300`: the relay's role is at its
/// connection limit) while 30 pipelines have rows: the instance makes one connection attempt
/// per (doubling) interval — not one per pipeline — logs one warning, and once the database
/// accepts connections again every row lands once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_cost_the_database_one_attempt_per_interval_and_lose_nothing() {
    const PIPELINES: usize = 30;
    const REFUSED_FOR: Duration = Duration::from_secs(6);
    let pg = PrivatePostgres::start(60);
    let admin_url = private_db(&pg, "refused").await;
    let c = connect(&admin_url).await;
    // A role of its own, so that its connection limit refuses the relay alone; the catalog
    // connection and the lock session fit in it, the work pool does not.
    c.batch_execute(
        "CREATE ROLE relay LOGIN CONNECTION LIMIT 2;
         GRANT pg_read_all_data, pg_write_all_data TO relay;",
    )
    .await
    .unwrap();
    let stream_tables: Vec<String> = (0..PIPELINES).map(|i| format!("rf{i}")).collect();
    let outboxes = enable_outboxes(&c, &stream_tables).await;
    let files: Vec<PathBuf> = (0..PIPELINES).map(|i| temp_path(&format!("rf{i}.jsonl"))).collect();
    let configs: Vec<(String, Value)> = (0..PIPELINES)
        .map(|i| {
            (
                format!("rf-{i}"),
                json!({"stream_table": stream_tables[i], "sink_type": "file", "path": files[i].to_str().unwrap(),
                       "delta_mode": "snapshot"}),
            )
        })
        .collect();
    register_all(&c, &configs).await;
    for outbox in &outboxes {
        for o in 0..2 {
            write_inline(&c, outbox, Some(json!([{"o": o, "outbox": outbox}, {"o": o, "second": true}]))).await;
        }
    }

    let refusals = |log: &str| log.matches("too many connections for role \"relay\"").count();
    let before = refusals(&pg.server_log());
    let relay_url = admin_url.replacen("postgres://postgres@", "postgres://relay@", 1);
    let relay = Relay::start(&relay_url, "refused", &["--no-migrate"]);
    eventually(WAIT, "the instance owns every pipeline", || async {
        (relay.health()["pipelines_owned"] == PIPELINES).then_some(())
    })
    .await;
    tokio::time::sleep(REFUSED_FOR).await;
    let attempts = refusals(&pg.server_log()) - before;
    let warnings = relay
        .full_stderr()
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("the database refused a work connection"))
        .count();
    eprintln!("{attempts} refused connection attempts in {REFUSED_FOR:?}, {warnings} warning(s)");
    assert!(attempts >= 1, "the work pool was never refused: the test proves nothing\n{}", relay.stderr());
    // One attempt per doubling interval (250 ms … 10 s, jittered) for the whole instance, a few
    // at once when the interval ends: about 15 in 6 s — not 30 pipelines × their own retries.
    assert!(attempts <= 25, "{attempts} connection attempts in {REFUSED_FOR:?} for {PIPELINES} pipelines");
    assert_eq!(warnings, 1, "one warning per interval for the instance:\n{}", relay.stderr());

    c.batch_execute("ALTER ROLE relay CONNECTION LIMIT -1").await.unwrap();
    let mut last = HashMap::new();
    for (i, outbox) in outboxes.iter().enumerate() {
        last.insert(format!("rf-{i}"), max_id(&c, outbox).await);
    }
    wait_offsets(&c, "refused", &last, WAIT).await;
    for (outbox, file) in outboxes.iter().zip(&files) {
        let expected = expected_keys(&c, outbox).await;
        let t = tally(&expected, &file_keys(file));
        assert!(t.lost == 0 && t.duplicates == 0 && t.unexpected == 0, "{}: {t:?}", file.display());
        let _ = std::fs::remove_file(file);
    }
}

/// Fair share at the scale the issue names: three instances, 1,000 pipelines (idle, on real
/// outboxes) → each owns its third (at most ⌈1000 / 3⌉ = 334, all 1,000 owned), each within its
/// --max-db-connections, however the three start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_a_thousand_pipelines_about_a_third_each() {
    const PIPELINES: usize = 1_000;
    const INSTANCES: usize = 3;
    let pg = PrivatePostgres::start(100);
    let url = private_db(&pg, "trio").await;
    let c = connect(&url).await;
    let started = Instant::now();
    let stream_tables: Vec<String> = (0..PIPELINES).map(|i| format!("tr{i}")).collect();
    // A hundred outboxes per transaction (each holds its new tables' locks until it commits).
    for chunk in stream_tables.chunks(100) {
        enable_outboxes(&c, chunk).await;
    }
    let configs: Vec<(String, Value)> = stream_tables
        .iter()
        .map(|st| (format!("tr-{st}"), json!({"stream_table": st, "sink_type": "stdout", "delta_mode": "snapshot"})))
        .collect();
    register_all(&c, &configs).await;
    eprintln!("setup of {PIPELINES} outboxes and pipelines: {:?}", started.elapsed());

    let stop = Arc::new(AtomicBool::new(false));
    let sampler = spawn_connection_sampler(url.clone(), stop.clone());
    let started = Instant::now();
    let relays: Vec<Relay> = (0..INSTANCES).map(|_| Relay::start(&url, "trio", &[])).collect();
    let share = PIPELINES.div_ceil(INSTANCES) as u64;
    let owned = eventually(Duration::from_secs(90), "three instances own a third each", || async {
        let owned: Vec<u64> = relays.iter().map(|r| r.health()["pipelines_owned"].as_u64().unwrap_or(0)).collect();
        (owned.iter().sum::<u64>() == PIPELINES as u64 && owned.iter().all(|&n| n <= share)).then_some(owned)
    })
    .await;
    eprintln!("owned {owned:?} after {:?}", started.elapsed());
    // Every lock held by exactly one of the three lock sessions, and none unowned.
    let held: i64 = c
        .query_one(
            "SELECT count(DISTINCT objid) FROM pg_locks
              WHERE locktype = 'advisory' AND objsubid = 2 AND granted
                AND classid::int8 = (hashtext('trio')::int8 & 4294967295)
                AND pid IN (SELECT pid FROM pg_stat_activity WHERE application_name = 'pgtrickle-relay locks')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(held, PIPELINES as i64, "pipeline locks held");
    eventually(Duration::from_secs(10), "no instance sees unowned pipelines", || async {
        relays.iter().all(|r| r.health()["pipelines_unowned"] == 0).then_some(())
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let peak = sampler.await.unwrap();
    eprintln!("relay connections: {peak:?}");
    assert!(peak.max <= 3 * 10, "three instances held {} connections (10 each at most): {peak:?}", peak.max);
}

async fn private_db(pg: &PrivatePostgres, name: &str) -> String {
    connect(&pg.url()).await.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
    let url = format!("postgres://postgres@127.0.0.1:{}/{name}", pg.port);
    let (status, _, err) = run_cli(&url, &["migrate"]);
    assert!(status.success(), "migrate failed: {err}");
    url
}

/// The outboxes of `stream_tables`, created in one transaction; their names.
async fn enable_outboxes(c: &Client, stream_tables: &[String]) -> Vec<String> {
    c.batch_execute("BEGIN").await.unwrap();
    let mut outboxes = Vec::with_capacity(stream_tables.len());
    for st in stream_tables {
        outboxes.push(enable_outbox(c, st, None).await);
    }
    c.batch_execute("COMMIT").await.unwrap();
    outboxes
}

/// Registers and enables the pipelines `(name, config)` in one statement.
async fn register_all(c: &Client, pipelines: &[(String, Value)]) {
    let names: Vec<&str> = pipelines.iter().map(|(n, _)| n.as_str()).collect();
    let configs: Vec<&Value> = pipelines.iter().map(|(_, c)| c).collect();
    c.execute(
        "SELECT pgtrickle.set_relay_outbox(p.name, config => p.config)
           FROM unnest($1::text[], $2::jsonb[]) AS p(name, config)",
        &[&names, &configs],
    )
    .await
    .unwrap();
}

/// Writes one outbox row of `rows` rows to every outbox per round, `pause` between rounds,
/// until `stop`; returns the rounds written. Ground truth is what the outboxes hold afterwards.
fn spawn_writer(
    url: String,
    outboxes: Vec<String>,
    rows: usize,
    pause: Duration,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Result<usize, String>> {
    tokio::spawn(async move {
        let c = connect(&url).await;
        let mut round = 0;
        while !stop.load(Ordering::SeqCst) {
            for outbox in &outboxes {
                // What write_inline does, in one statement; an error ends the writer (the test
                // reports it) instead of panicking in a task.
                let payload = Value::Array((0..rows).map(|r| json!({"round": round, "r": r})).collect());
                let sql = format!(
                    "WITH w AS (INSERT INTO pgtrickle.\"{outbox}\" (inserted_count, payload) VALUES ($1, $2) RETURNING id)
                     SELECT pg_notify('pgtrickle_outbox_new', $3) FROM w"
                );
                c.execute(&sql, &[&(rows as i64), &payload, outbox])
                    .await
                    .map_err(|e| format!("writing to {outbox} in round {round}: {e}"))?;
            }
            round += 1;
            tokio::time::sleep(pause).await;
        }
        Ok(round)
    })
}

// ---------------------------------------------------------------------------------------------
// Watching the database

/// The most relay connections seen at once, with their names at that moment.
#[derive(Debug, Default)]
#[allow(dead_code)] // read through Debug
struct ConnectionPeak {
    /// All `pgtrickle-relay…` connections.
    max: i64,
    /// By application_name when `max` was seen.
    at_max: Vec<(String, i64)>,
    /// Only the pool, catalog and lock connections (`pgtrickle-relay` and `pgtrickle-relay locks`).
    max_core: i64,
    samples: usize,
    /// Why sampling stopped early, if it did.
    error: Option<String>,
}

/// Counts the relay's connections in `pg_stat_activity` every ~50 ms until `stop`.
fn spawn_connection_sampler(url: String, stop: Arc<AtomicBool>) -> JoinHandle<ConnectionPeak> {
    tokio::spawn(async move {
        let c = connect(&url).await;
        let mut peak = ConnectionPeak::default();
        while !stop.load(Ordering::SeqCst) {
            let rows = c
                .query(
                    &format!(
                        "SELECT application_name, count(*) FROM pg_stat_activity WHERE {RELAY_CONNECTIONS}
                          GROUP BY 1 ORDER BY 1"
                    ),
                    &[],
                )
                .await;
            let rows = match rows {
                Ok(rows) => rows,
                Err(e) => {
                    peak.error = Some(e.to_string());
                    break;
                }
            };
            let mut by_name: Vec<(String, i64)> = Vec::new();
            for r in &rows {
                // The pg-inbox sinks' connections (one per pipeline) as one entry.
                let name: String = r.get(0);
                let name = if name.ends_with(" inbox") { "pgtrickle-relay <pipeline> inbox".into() } else { name };
                match by_name.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, count)) => *count += r.get::<_, i64>(1),
                    None => by_name.push((name, r.get(1))),
                }
            }
            let total: i64 = by_name.iter().map(|(_, n)| n).sum();
            let core: i64 = by_name
                .iter()
                .filter(|(a, _)| a == "pgtrickle-relay" || a == "pgtrickle-relay locks")
                .map(|(_, n)| n)
                .sum();
            if total > peak.max {
                peak.max = total;
                peak.at_max = by_name;
            }
            peak.max_core = peak.max_core.max(core);
            peak.samples += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        peak
    })
}

#[derive(Debug, Default)]
struct Probes {
    ok: usize,
    failures: Vec<String>,
}

/// Another client: connects, runs `SELECT 1` and disconnects every ~50 ms until `stop` (the
/// relay relays 1800 messages in about 1.5 s: a slower rhythm tried only 9 times in CI).
fn spawn_prober(url: String, stop: Arc<AtomicBool>) -> JoinHandle<Probes> {
    tokio::spawn(async move {
        let mut probes = Probes::default();
        while !stop.load(Ordering::SeqCst) {
            let attempt = tokio::time::timeout(Duration::from_secs(5), async {
                let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
                let task = tokio::spawn(conn);
                let one: i32 = client.query_one("SELECT 1", &[]).await?.get(0);
                drop(client);
                let _ = task.await;
                Ok::<i32, tokio_postgres::Error>(one)
            })
            .await;
            match attempt {
                Ok(Ok(1)) => probes.ok += 1,
                Ok(Ok(other)) => probes.failures.push(format!("SELECT 1 returned {other}")),
                Ok(Err(e)) => probes.failures.push(e.to_string()),
                Err(_) => probes.failures.push("no answer within 5 s".into()),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        probes
    })
}

/// The backend pid of this database's relay lock session, if there is exactly one.
async fn lock_session_opt(c: &Client) -> Option<i32> {
    let rows = c
        .query(
            "SELECT pid FROM pg_stat_activity
              WHERE application_name = 'pgtrickle-relay locks' AND datname = current_database()",
            &[],
        )
        .await
        .unwrap();
    (rows.len() == 1).then(|| rows[0].get(0))
}

async fn lock_session(c: &Client) -> i32 {
    eventually(WAIT, "one lock session", || lock_session_opt(c)).await
}

/// Pipeline locks of `group` that backend `pid` holds.
async fn locks_held_by(c: &Client, group: &str, pid: i32) -> i64 {
    c.query_one(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2 AND granted AND pid = $2
            AND classid::int8 = (hashtext($1)::int8 & 4294967295)",
        &[&group, &pid],
    )
    .await
    .unwrap()
    .get(0)
}

async fn max_id(c: &Client, outbox: &str) -> i64 {
    c.query_one(&format!("SELECT coalesce(max(id), 0) FROM pgtrickle.\"{outbox}\""), &[]).await.unwrap().get(0)
}

/// Waits until every pipeline's committed offset is its `last` id.
async fn wait_offsets(c: &Client, group: &str, last: &HashMap<String, i64>, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let rows = c
            .query(
                "SELECT pipeline_id, last_change_id FROM pgtrickle.relay_consumer_offsets WHERE relay_group_id = $1",
                &[&group],
            )
            .await
            .unwrap();
        let committed: HashMap<String, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let mut behind: Vec<String> = last
            .iter()
            .filter(|(p, id)| committed.get(p.as_str()) != Some(id))
            .map(|(p, id)| format!("{p} at {:?} of {id}", committed.get(p.as_str())))
            .collect();
        if behind.is_empty() {
            return;
        }
        behind.sort();
        assert!(Instant::now() < deadline, "{} pipelines not committed to the end: {behind:?}", behind.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Counting at the targets

#[derive(Debug, Default)]
struct Tally {
    delivered: usize,
    lost: usize,
    duplicates: usize,
    unexpected: usize,
}

impl Tally {
    fn add(&mut self, t: &Tally) {
        self.delivered += t.delivered;
        self.lost += t.lost;
        self.duplicates += t.duplicates;
        self.unexpected += t.unexpected;
    }
}

fn tally(expected: &HashSet<String>, got: &[String]) -> Tally {
    let unique: HashSet<&String> = got.iter().collect();
    Tally {
        delivered: got.len(),
        lost: expected.iter().filter(|k| !unique.contains(k)).count(),
        duplicates: got.len() - unique.len(),
        unexpected: unique.iter().filter(|k| !expected.contains(k.as_str())).count(),
    }
}

fn file_keys(path: &std::path::Path) -> Vec<String> {
    read_jsonl(path).iter().map(|m| m["dedup_key"].as_str().unwrap().to_owned()).collect()
}

/// A metric's value (first series of that name).
fn gauge(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        let value = if rest.starts_with('{') { rest.split_once("} ")?.1 } else { rest.strip_prefix(' ')? };
        value.trim().parse().ok()
    })
}

/// Whether a log line says `what` about `pipeline` (the field `pipeline=<name>`, coloured or not).
fn log_mentions(log: &str, what: &str, pipeline: &str) -> bool {
    let field = format!("pipeline={pipeline}");
    log.lines().map(strip_ansi).any(|l| l.contains(what) && l.split_whitespace().any(|w| w == field))
}

/// A log line without its terminal colour codes (`ESC [ … m`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(ch) = chars.next() {
        if ch == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(ch);
        }
    }
    out
}
