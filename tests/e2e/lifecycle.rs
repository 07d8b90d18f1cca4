//! Outboxes and inboxes that are recreated, truncated or duplicated in another database lose
//! nothing: every row of the old and of the new table arrives, counted at each target.
//!
//! pg_trickle's `disable_outbox` + `enable_outbox` drop the outbox (and its claim-check table)
//! and create a new one whose ids start at 1 again; `TRUNCATE … RESTART IDENTITY` reuses ids;
//! two databases hold outboxes of the same name with the same ids. An offset that counted in
//! the old outbox must not make the relay wait for ids the new one will not reach, and a dedup
//! key must never repeat across them, or deduplicating targets (an inbox, JetStream's duplicate
//! window, Redis's append-once mark) silently drop the new rows. So every target is read back
//! and compared key by key with what was written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use relay_e2e::nats::NatsServer;
use relay_e2e::redis_server::RedisServer;
use relay_e2e::*;
use serde_json::{json, Value};
use tokio_postgres::Client;

/// What a target must hold: dedup key → message payload.
type Expected = BTreeMap<String, Value>;

const WAIT: Duration = Duration::from_secs(30);

/// Pipelines of [`ThreeTargets`]: a file (keeps every copy, so a repeat shows), a pg-inbox table
/// (drops a repeated event_id) and JetStream (drops a repeated Nats-Msg-Id).
const FILE: &str = "lc-file";
const INBOX: &str = "lc-inbox";
const NATS: &str = "lc-nats";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbox_recreated_under_a_running_relay_is_relayed_from_its_beginning_to_every_target() {
    let (db, c, outbox) = db_with_outbox("lc").await;
    let targets = ThreeTargets::register(&c, "lc").await;
    let relay = Relay::start(&db.url, "default", &[]);

    let mut expected = write_generation(&c, &outbox, "lc", "old", 3).await;
    for p in [FILE, INBOX, NATS] {
        wait_committed(&c, p, 3).await;
    }
    targets.assert_holds(&c, &expected).await;

    // What disable_outbox + enable_outbox do, in one transaction, under the running relay.
    recreate_outbox(&c, "lc").await;
    let new = write_generation(&c, &outbox, "lc", "new", 3).await;
    assert_eq!(max_id(&c, &outbox).await, 3, "the new outbox's ids start at 1 again");
    expected.extend(new);

    // Ids 1..3 again: a pipeline still counting in the old outbox would wait for id 4 forever,
    // and `outbox_lc:<id>:<row>` keys would be dropped as duplicates by the inbox and JetStream.
    targets.assert_holds(&c, &expected).await;
    let last_uid = uid_of(&c, &outbox, 3).await;
    for p in [FILE, INBOX, NATS] {
        let e = wait_new_epoch(&c, p, 2, 3, &last_uid).await;
        assert_eq!(e.recreated_total, 1, "{p}: {e:?}");
        assert!(e.last_reason.is_some(), "{p}: {e:?}");
        assert_eq!(recreated_metric(&relay, p), Some(1), "{p}");
        let h = relay.health();
        let entry = h["pipelines"].as_array().unwrap().iter().find(|e| e["name"] == p).cloned().unwrap();
        assert_eq!(entry["outbox_epoch"], 2, "{p}: {entry}");
    }
    let shown = show(&db.url, INBOX);
    assert_eq!(shown["outbox"]["epoch"], 2, "{shown}");
    assert_eq!(shown["outbox"]["recreated_total"], 1, "{shown}");
    assert!(shown["outbox"]["last_reason"].as_str().is_some_and(|r| !r.is_empty()), "{shown}");
    assert!(relay.full_stderr().contains("the pipeline's outbox is a new one"), "the new epoch is logged");
    // Nothing more arrives once everything is committed.
    targets.assert_holds(&c, &expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbox_recreated_while_the_relay_is_stopped_loses_none_of_its_rows() {
    let (db, c, outbox) = db_with_outbox("lcs").await;
    let targets = ThreeTargets::register(&c, "lcs").await;
    let mut relay = Relay::start(&db.url, "default", &[]);
    let mut expected = write_generation(&c, &outbox, "lcs", "old", 3).await;
    for p in [FILE, INBOX, NATS] {
        wait_committed(&c, p, 3).await;
    }
    assert!(relay.terminate().success(), "{}", relay.stderr());

    // While no relay runs: recreated, and more rows than the old offset, so the new ids pass
    // it (1..5 against an offset of 3) and nothing in the id sequence looks wrong.
    recreate_outbox(&c, "lcs").await;
    expected.extend(write_generation(&c, &outbox, "lcs", "new", 5).await);

    let relay = Relay::start(&db.url, "default", &[]);
    targets.assert_holds(&c, &expected).await;
    let last_uid = uid_of(&c, &outbox, 5).await;
    for p in [FILE, INBOX, NATS] {
        let e = wait_new_epoch(&c, p, 2, 5, &last_uid).await;
        assert_eq!(e.recreated_total, 1, "{p}: {e:?}");
        assert_eq!(recreated_metric(&relay, p), Some(1), "{p}");
    }
    targets.assert_holds(&c, &expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_restart_identity_then_new_rows_under_a_running_relay_loses_none() {
    let (db, c, outbox) = db_with_outbox("lt").await;
    let path = temp_path("lt.jsonl");
    register(&c, FILE, file_config("lt", &path)).await;
    register(&c, INBOX, inbox_config("lt", "lt_inbox")).await;
    let _relay = Relay::start(&db.url, "default", &[]);
    let mut expected = write_generation(&c, &outbox, "lt", "old", 3).await;
    for p in [FILE, INBOX] {
        wait_committed(&c, p, 3).await;
    }

    truncate_restart_identity(&c, "lt").await;
    expected.extend(write_generation(&c, &outbox, "lt", "new", 3).await);

    assert_file_and_inbox_hold(&c, &path, "pgtrickle.lt_inbox", &expected).await;
    let last_uid = uid_of(&c, &outbox, 3).await;
    for p in [FILE, INBOX] {
        let e = wait_new_epoch(&c, p, 2, 3, &last_uid).await;
        assert_eq!(e.recreated_total, 1, "{p}: {e:?}");
    }
    assert_file_and_inbox_hold(&c, &path, "pgtrickle.lt_inbox", &expected).await;
    let _ = std::fs::remove_file(&path);
}

/// The same, timed the other way: the running relay notices the truncation while the outbox is
/// still empty, and only then do refreshes commit new rows, several at once. Their ids (1..3)
/// never pass the old offset (3), and the id sequence never shows the reader a value below it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_restart_identity_noticed_while_empty_then_a_burst_of_rows_loses_none() {
    let (db, c, outbox) = db_with_outbox("lb").await;
    let path = temp_path("lb.jsonl");
    register(&c, FILE, file_config("lb", &path)).await;
    register(&c, INBOX, inbox_config("lb", "lb_inbox")).await;
    let _relay = Relay::start(&db.url, "default", &[]);
    let mut expected = write_generation(&c, &outbox, "lb", "old", 3).await;
    for p in [FILE, INBOX] {
        wait_committed(&c, p, 3).await;
    }

    truncate_restart_identity(&c, "lb").await;
    // The relay records the table's new relfilenode once it has checked the truncated outbox.
    let relfilenode: i64 = c
        .query_one(
            &format!("SELECT relfilenode::int8 FROM pg_class WHERE oid = 'pgtrickle.\"{outbox}\"'::regclass"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    for p in [FILE, INBOX] {
        eventually(WAIT, &format!("{p} checked the truncated outbox"), || async {
            let seen: Option<i64> = c
                .query_opt("SELECT relfilenode FROM pgtrickle.relay_outbox_epochs WHERE pipeline_id = $1", &[&p])
                .await
                .unwrap()
                .map(|r| r.get(0));
            (seen == Some(relfilenode)).then_some(())
        })
        .await;
    }
    c.batch_execute("BEGIN").await.unwrap();
    expected.extend(write_generation(&c, &outbox, "lb", "new", 3).await);
    c.batch_execute("COMMIT").await.unwrap();

    assert_file_and_inbox_hold(&c, &path, "pgtrickle.lb_inbox", &expected).await;
    let last_uid = uid_of(&c, &outbox, 3).await;
    for p in [FILE, INBOX] {
        let e = wait_new_epoch(&c, p, 2, 3, &last_uid).await;
        assert_eq!(e.recreated_total, 1, "{p}: {e:?}");
    }
    let _ = std::fs::remove_file(&path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_databases_with_a_pipeline_of_the_same_name_fill_one_redis_stream_and_one_inbox() {
    let redis = RedisServer::start();
    let inbox_db = TestDb::new().await;
    let ic = inbox_db.client().await;
    ic.batch_execute("CREATE SCHEMA app").await.unwrap();
    create_inbox_table(&ic, "app.shared_inbox").await;

    // Two databases, each with `outbox_orders` (ids 1..3) and the same two pipeline names in
    // the same relay group, one after the other: the second's ids, keys and Redis positions are
    // the first's again, and must not be taken for redeliveries of them.
    let mut expected = Expected::new();
    let mut running = Vec::new();
    for region in ["east", "west"] {
        let (db, c, outbox) = db_with_outbox("orders").await;
        register(
            &c,
            "orders-to-redis",
            json!({"stream_table": "orders", "sink_type": "redis", "redis_url": redis.url(),
                   "redis_stream_key": "orders.events", "delta_mode": "snapshot"}),
        )
        .await;
        register(
            &c,
            "orders-to-inbox",
            json!({"stream_table": "orders", "sink_type": "pg-inbox", "postgres_url": inbox_db.url,
                   "inbox_table": "app.shared_inbox", "delta_mode": "snapshot"}),
        )
        .await;
        let relay = Relay::start(&db.url, "default", &[]);
        expected.extend(write_generation(&c, &outbox, "orders", region, 3).await);
        for p in ["orders-to-redis", "orders-to-inbox"] {
            wait_committed(&c, p, 3).await;
        }
        running.push((db, c, relay));
    }
    assert_eq!(expected.len(), 12);

    let read_redis = || redis_entries(&redis, "orders.events");
    let read_inbox = || inbox_entries(&ic, "app.shared_inbox");
    wait_holds("redis stream", &expected, read_redis).await;
    wait_holds("shared inbox", &expected, read_inbox).await;
    assert_exactly("redis stream", &read_redis().await, &expected);
    assert_exactly("shared inbox", &read_inbox().await, &expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_mode_relays_only_the_true_changes_of_a_recreated_outboxs_first_snapshot() {
    let (db, c, outbox) = db_with_outbox("totals").await;
    // The default delta_mode: diff.
    register(&c, "totals", json!({"stream_table": "totals", "sink_type": "stdout"})).await;
    let relay = Relay::start(&db.url, "default", &[]);
    write_inline(&c, &outbox, Some(json!([diff_row(1, "a", 1), diff_row(2, "b", 2), diff_row(3, "c", 3)]))).await;
    let msgs = relay.wait_for_messages(3, WAIT).await;
    assert_eq!(
        events(&msgs),
        vec![
            ("insert".into(), json!({"name": "a", "total": 1}), Value::Null),
            ("insert".into(), json!({"name": "b", "total": 2}), Value::Null),
            ("insert".into(), json!({"name": "c", "total": 3}), Value::Null),
        ]
    );
    wait_committed(&c, "totals", 1).await;

    // The stream table lives on; only its outbox is recreated. Its first snapshot is the table
    // as it is now, with the same row ids: a unchanged, b changed, c gone, d new.
    recreate_outbox(&c, "totals").await;
    let s =
        write_inline(&c, &outbox, Some(json!([diff_row(1, "a", 1), diff_row(2, "b", 20), diff_row(4, "d", 4)]))).await;
    assert_eq!(s, 1);
    let uid = uid_of(&c, &outbox, 1).await;
    wait_new_epoch(&c, "totals", 2, 1, &uid).await;
    let msgs = relay.wait_for_messages(6, WAIT).await;
    assert_eq!(
        events(&msgs[3..]),
        vec![
            ("update".into(), json!({"name": "b", "total": 20}), json!({"name": "b", "total": 2})),
            ("insert".into(), json!({"name": "d", "total": 4}), Value::Null),
            ("delete".into(), json!({"name": "c", "total": 3}), Value::Null),
        ],
        "no re-insert of a, no insert of b"
    );
    let prefix = format!("{outbox}:{uid}:");
    for m in &msgs[3..] {
        assert!(m["dedup_key"].as_str().unwrap().starts_with(&prefix), "keyed by the new outbox row: {m}");
        assert_eq!(m["is_full_refresh"], false, "{m}");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(relay.messages().len(), 6, "nothing else: {:#?}", relay.messages());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inbox_recreated_under_a_running_reverse_pipeline_gets_every_later_message() {
    let nats = NatsServer::start();
    nats.create_stream("rin", &["rin.>"]).await;
    let js = nats.jetstream().await;
    let db = TestDb::new().await;
    let c = db.client().await;
    assert!(run_cli(&db.url, &["migrate"]).0.success());
    create_inbox_table(&c, "pgtrickle.rin_inbox").await;
    c.execute(
        "SELECT pgtrickle.set_relay_inbox('rin', config => $1::jsonb)",
        &[&json!({"source_type": "nats", "nats_url": nats.url(), "nats_stream": "rin", "inbox_table": "rin_inbox"})],
    )
    .await
    .unwrap();
    let relay = Relay::start(&db.url, "default", &[]);
    let ids = |from: usize, to: usize| (from..to).map(|i| format!("m-{i}")).collect::<Vec<_>>();
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let inbox_ids = || async {
        match c.query("SELECT event_id FROM pgtrickle.rin_inbox", &[]).await {
            Ok(rows) => sorted(rows.iter().map(|r| r.get::<_, String>(0)).collect()),
            Err(_) => Vec::new(), // the table is being recreated
        }
    };

    publish(&js, "rin.orders", 0, 5).await;
    eventually(WAIT, "the first 5 messages in the inbox", || async {
        (inbox_ids().await == sorted(ids(0, 5))).then_some(())
    })
    .await;

    // The inbox is dropped: messages that come in now cannot be stored, so they must not be
    // acked (nor dead-lettered) but come back once the table exists again.
    c.batch_execute("DROP TABLE pgtrickle.rin_inbox").await.unwrap();
    publish(&js, "rin.orders", 5, 3).await;
    let error = eventually(WAIT, "the missing inbox reported", || async {
        let h = relay.health();
        let p = h["pipelines"].as_array().unwrap().iter().find(|p| p["name"] == "rin").cloned()?;
        (p["state"] != "running").then(|| p["last_error"].clone())
    })
    .await;
    assert!(error.as_str().is_some_and(|e| e.contains("rin_inbox")), "{error}");
    create_inbox_table(&c, "pgtrickle.rin_inbox").await;
    publish(&js, "rin.orders", 8, 4).await;

    // The write is retried slowly after a permanent error (START_RETRY, 10 s), and NATS
    // redelivers what was not acked: allow for both.
    eventually(Duration::from_secs(60), "every message since the drop in the new inbox", || async {
        (inbox_ids().await == sorted(ids(5, 12))).then_some(())
    })
    .await;
    let dead: i64 = c.query_one("SELECT count(*) FROM pgtrickle.relay_dead_letters", &[]).await.unwrap().get(0);
    assert_eq!(dead, 0, "a missing inbox is not the messages' fault");
    let consumer: async_nats::jetstream::consumer::PullConsumer =
        js.get_stream("rin").await.unwrap().get_consumer("rin").await.unwrap();
    eventually(WAIT, "every message acknowledged", || {
        let mut consumer = consumer.clone();
        async move {
            let info = consumer.info().await.unwrap().clone();
            (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
        }
    })
    .await;
    assert_eq!(inbox_ids().await, sorted(ids(5, 12)), "stored once each");
}

// ---------------------------------------------------------------------------------------------
// Writing outboxes

/// Does what pg_trickle's `disable_outbox` + `enable_outbox` do, in one transaction: drops the
/// outbox and its claim-check table, deletes the catalog row, and creates all three again (new
/// table OIDs, a new `created_at`, ids from 1).
async fn recreate_outbox(c: &Client, stream_table: &str) {
    c.batch_execute(&format!(
        r#"BEGIN;
           DROP TABLE pgtrickle."outbox_{stream_table}", pgtrickle."outbox_delta_rows_{stream_table}";
           DELETE FROM pgtrickle.pgt_outbox_config WHERE outbox_table_name = 'outbox_{stream_table}';"#
    ))
    .await
    .unwrap();
    enable_outbox(c, stream_table, None).await;
    c.batch_execute("COMMIT").await.unwrap();
}

/// Writes `n` outbox rows of two rows each (even ones inline, odd ones claim-check, as
/// pg_trickle picks by size), payloads `{"gen", "o", "r"}`; returns what their messages must
/// carry, by dedup key (snapshot mode: one insert per row).
async fn write_generation(c: &Client, outbox: &str, stream_table: &str, generation: &str, n: usize) -> Expected {
    let mut ids = Vec::new();
    for o in 0..n {
        let rows: Vec<Value> = (0..2).map(|r| json!({"gen": generation, "o": o, "r": r})).collect();
        let id = if o % 2 == 0 {
            write_inline(c, outbox, Some(Value::Array(rows))).await
        } else {
            let rows: Vec<(bool, Value)> = rows.into_iter().map(|r| (false, r)).collect();
            write_claim_check(c, outbox, stream_table, &rows).await
        };
        ids.push(id);
    }
    let refs = row_refs(c, outbox).await;
    let mut expected = Expected::new();
    for (o, id) in ids.iter().enumerate() {
        for r in 0..2 {
            expected.insert(format!("{}:{r}", refs[id]), json!({"gen": generation, "o": o, "r": r}));
        }
    }
    expected
}

async fn truncate_restart_identity(c: &Client, stream_table: &str) {
    c.batch_execute(&format!(
        r#"TRUNCATE pgtrickle."outbox_{stream_table}", pgtrickle."outbox_delta_rows_{stream_table}" RESTART IDENTITY"#
    ))
    .await
    .unwrap();
}

async fn register(c: &Client, name: &str, config: Value) {
    c.execute("SELECT pgtrickle.set_relay_outbox($1, config => $2::jsonb)", &[&name, &config]).await.unwrap();
}

fn file_config(stream_table: &str, path: &Path) -> Value {
    json!({"stream_table": stream_table, "sink_type": "file", "path": path.to_str().unwrap(), "delta_mode": "snapshot"})
}

fn inbox_config(stream_table: &str, inbox: &str) -> Value {
    json!({"stream_table": stream_table, "sink_type": "pg-inbox", "inbox_table": inbox, "create_inbox": true,
           "delta_mode": "snapshot"})
}

/// A diff-mode row of the stream table (`__pgt_row_id` identifies it across snapshots).
fn diff_row(id: i64, name: &str, total: i64) -> Value {
    json!({"name": name, "total": total, "__pgt_row_id": 1000 + id, "__pgt_count": 1})
}

async fn publish(js: &async_nats::jetstream::Context, subject: &str, from: usize, n: usize) {
    for i in from..from + n {
        let mut h = async_nats::HeaderMap::new();
        h.insert("Nats-Msg-Id", format!("m-{i}").as_str());
        let body = json!({"seq": i, "event_type": "OrderPlaced"}).to_string();
        js.publish_with_headers(subject.to_owned(), h, body.into()).await.unwrap().await.unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// Reading targets

/// One outbox relayed to three targets at once, one pipeline each.
struct ThreeTargets {
    nats: NatsServer,
    /// The JetStream stream, named after the stream table.
    stream: String,
    file: PathBuf,
    inbox: String,
}

impl ThreeTargets {
    async fn register(c: &Client, stream_table: &str) -> Self {
        let nats = NatsServer::start();
        nats.create_stream(stream_table, &[&format!("{stream_table}.>")]).await;
        let file = temp_path(&format!("{stream_table}.jsonl"));
        let inbox = format!("{stream_table}_inbox");
        register(c, FILE, file_config(stream_table, &file)).await;
        register(c, INBOX, inbox_config(stream_table, &inbox)).await;
        register(
            c,
            NATS,
            json!({"stream_table": stream_table, "sink_type": "nats", "nats_url": nats.url(),
                   "nats_stream": stream_table, "subject_template": format!("{stream_table}.{{op}}"),
                   "delta_mode": "snapshot"}),
        )
        .await;
        Self { nats, stream: stream_table.to_owned(), file, inbox: format!("pgtrickle.{inbox}") }
    }

    /// Waits until every target holds as many messages as expected, then checks each holds
    /// exactly the expected ones.
    async fn assert_holds(&self, c: &Client, expected: &Expected) {
        let stream = &self.stream;
        wait_holds("file", expected, || async { file_entries(&self.file) }).await;
        wait_holds("inbox", expected, || inbox_entries(c, &self.inbox)).await;
        wait_holds("JetStream", expected, || nats_entries(&self.nats, stream)).await;
        assert_exactly("file", &file_entries(&self.file), expected);
        assert_exactly("inbox", &inbox_entries(c, &self.inbox).await, expected);
        assert_exactly("JetStream", &nats_entries(&self.nats, stream).await, expected);
    }
}

impl Drop for ThreeTargets {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.file);
    }
}

/// [`ThreeTargets::assert_holds`] for a file and an inbox.
async fn assert_file_and_inbox_hold(c: &Client, file: &Path, inbox: &str, expected: &Expected) {
    wait_holds("file", expected, || async { file_entries(file) }).await;
    wait_holds("inbox", expected, || inbox_entries(c, inbox)).await;
    assert_exactly("file", &file_entries(file), expected);
    assert_exactly("inbox", &inbox_entries(c, inbox).await, expected);
}

/// Waits until `read` returns at least as many entries as expected (at most [`WAIT`]).
async fn wait_holds<F, Fut>(target: &str, expected: &Expected, mut read: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Vec<(String, Value)>>,
{
    let what = format!("{} messages in the {target}", expected.len());
    eventually(WAIT, &what, || {
        let got = read();
        async move { (got.await.len() >= expected.len()).then_some(()) }
    })
    .await;
}

/// Every expected key once, with its payload; nothing else, nothing twice.
fn assert_exactly(target: &str, got: &[(String, Value)], expected: &Expected) {
    let mut held = Expected::new();
    let mut repeated = Vec::new();
    for (key, payload) in got {
        if held.insert(key.clone(), payload.clone()).is_some() {
            repeated.push(key.as_str());
        }
    }
    let missing: Vec<&String> = expected.keys().filter(|k| !held.contains_key(*k)).collect();
    let unexpected: Vec<&String> = held.keys().filter(|k| !expected.contains_key(*k)).collect();
    assert!(
        missing.is_empty() && unexpected.is_empty() && repeated.is_empty(),
        "{target}: {} held, {} expected; missing {missing:?}, unexpected {unexpected:?}, repeated {repeated:?}",
        got.len(),
        expected.len()
    );
    assert_eq!(&held, expected, "{target}: payloads");
}

fn file_entries(path: &Path) -> Vec<(String, Value)> {
    read_jsonl(path).into_iter().map(|m| (m["dedup_key"].as_str().unwrap().to_owned(), m["payload"].clone())).collect()
}

async fn inbox_entries(c: &Client, qualified: &str) -> Vec<(String, Value)> {
    match c.query(&format!("SELECT event_id, payload FROM {qualified}"), &[]).await {
        Ok(rows) => rows.iter().map(|r| (r.get(0), r.get(1))).collect(),
        Err(_) => Vec::new(), // not created yet (create_inbox)
    }
}

async fn nats_entries(nats: &NatsServer, stream: &str) -> Vec<(String, Value)> {
    nats.stream_messages(stream)
        .await
        .into_iter()
        .map(|m| (m.msg_id.unwrap_or_default(), m.body["payload"].clone()))
        .collect()
}

async fn redis_entries(redis: &RedisServer, key: &str) -> Vec<(String, Value)> {
    redis
        .entries(key)
        .await
        .into_iter()
        .map(|(_, f)| (f["dedup_key"].clone(), serde_json::from_str(&f["payload"]).unwrap()))
        .collect()
}

/// (op, payload, before) of each message, in order.
fn events(msgs: &[Value]) -> Vec<(String, Value, Value)> {
    msgs.iter().map(|m| (m["op"].as_str().unwrap().to_owned(), m["payload"].clone(), m["before"].clone())).collect()
}

// ---------------------------------------------------------------------------------------------
// Reading the relay's state

async fn wait_committed(c: &Client, pipeline: &str, id: i64) {
    eventually(WAIT, &format!("{pipeline} committed up to {id}"), || async {
        (committed_offset(c, "default", pipeline).await == Some(id)).then_some(())
    })
    .await;
}

async fn max_id(c: &Client, outbox: &str) -> i64 {
    c.query_one(&format!("SELECT max(id) FROM pgtrickle.\"{outbox}\""), &[]).await.unwrap().get(0)
}

async fn uid_of(c: &Client, outbox: &str, id: i64) -> String {
    c.query_one(&format!("SELECT pgt_id::text FROM pgtrickle.\"{outbox}\" WHERE id = $1"), &[&id]).await.unwrap().get(0)
}

/// A pipeline's row of `pgtrickle.relay_outbox_epochs`.
#[derive(Debug)]
#[allow(dead_code)] // read through Debug in failure messages
struct EpochRow {
    epoch: i32,
    recreated_total: i64,
    last_reason: Option<String>,
    anchor_id: Option<i64>,
    anchor_uid: Option<String>,
}

async fn epoch_row(c: &Client, pipeline: &str) -> Option<EpochRow> {
    c.query_opt(
        "SELECT epoch, recreated_total, last_reason, anchor_id, anchor_uid FROM pgtrickle.relay_outbox_epochs
          WHERE relay_group_id = 'default' AND pipeline_id = $1",
        &[&pipeline],
    )
    .await
    .unwrap()
    .map(|r| EpochRow {
        epoch: r.get(0),
        recreated_total: r.get(1),
        last_reason: r.get(2),
        anchor_id: r.get(3),
        anchor_uid: r.get(4),
    })
}

/// Waits until the pipeline runs in `epoch` with its offset committed at `id` of the NEW outbox:
/// the recorded anchor is that row's `pgt_id` (an offset of the same number in the old outbox
/// would name another row).
async fn wait_new_epoch(c: &Client, pipeline: &str, epoch: i32, id: i64, uid: &str) -> EpochRow {
    let what = format!("{pipeline} in epoch {epoch}, committed up to id {id} of the new outbox");
    eventually(WAIT, &what, || async {
        let row = epoch_row(c, pipeline).await?;
        let committed = committed_offset(c, "default", pipeline).await == Some(id);
        (row.epoch == epoch && committed && row.anchor_id == Some(id) && row.anchor_uid.as_deref() == Some(uid))
            .then_some(row)
    })
    .await
}

/// `pgtrickle_relay_outbox_recreated_total` of a pipeline on /metrics.
fn recreated_metric(relay: &Relay, pipeline: &str) -> Option<i64> {
    let series = format!("pgtrickle_relay_outbox_recreated_total{{pipeline=\"{pipeline}\"}}");
    relay.get("/metrics").1.lines().find_map(|l| l.strip_prefix(&series).and_then(|v| v.trim().parse().ok()))
}

/// `pgtrickle-relay pipelines show <name>` as JSON.
fn show(url: &str, pipeline: &str) -> Value {
    let (status, out, err) = run_cli(url, &["pipelines", "show", pipeline]);
    assert!(status.success(), "{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("pipelines show is not JSON ({e}): {out}"))
}
