//! `relay-bench`: forward throughput of each broker sink beside that sink's raw ceiling,
//! measured in the same run with the same client library, plus latency. Prints one JSON object
//! per line. Run through `scripts/bench` (it builds the release binaries and starts PostgreSQL).
//!
//! Rows: `outbox_to_nats` (ceiling: async-nats JetStream publish with the relay's ack window),
//! `nats_one_ack_at_a_time` (the naive design, as a baseline), `outbox_to_nats_latency` (outbox
//! commit → JetStream ack at half the measured rate), `outbox_to_nats_envelopes` (NATS per
//! `envelope`: native, CloudEvents structured and binary, Debezium, each with its message size;
//! ceiling per envelope: async-nats publishing the body and headers the relay stored, same
//! window; target: each envelope ≥ 0.90 of native), `outbox_to_pg_inbox` (ceiling: batched
//! `INSERT … ON CONFLICT` of the same rows), `outbox_to_webhook` (ceiling: the same request
//! bodies sent with reqwest to the same keep-alive server), `snapshot_diff` (diff mode on a
//! 100,000-row snapshot with 1 % changed rows, beside reading the snapshot alone),
//! `outbox_to_redis` (ceiling: pipelined XADD of the same entries with the same client),
//! `outbox_to_kafka` (ceiling: rdkafka's FutureProducer with the relay's settings and delivery
//! window sending the same records), `outbox_to_rabbitmq` (ceiling: lapin publishing the same
//! messages with confirms and the relay's window), `outbox_to_sqs` (ceiling: aws-sdk-sqs
//! `SendMessageBatch` of the same bodies, 10 calls in flight, same server), and the reverse
//! rows `nats_to_inbox`, `kafka_to_inbox`, `redis_to_inbox`, `rabbitmq_to_inbox`, `sqs_to_inbox`
//! (a backlog drained into an inbox; ceiling: one client inserting the same rows with the relay's
//! statement, 500 per call). `many_pipelines` (no ceiling; against targets): 1,000 pipelines ×
//! 100 rows on one instance with the default 10 database connections: drain time, peak
//! connections, peak RSS, idle CPU and an idle pipeline's NOTIFY wake-up latency.

// A benchmark harness: a failed unwrap is a failed run with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

// The same allocator as the relay binary (mimalloc, also serving librdkafka's C allocations),
// so the ceilings measure the client libraries under the same conditions as the relay.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::stream::FuturesOrdered;
use futures::StreamExt;
use relay_e2e::nats::NatsServer;
use relay_e2e::*;
use serde_json::{json, Value};
use std::future::IntoFuture;

/// Delta rows per outbox row in the throughput runs.
const PER_OUTBOX_ROW: i64 = 100;
/// The relay's default NATS ack window, used for the ceiling too.
const NATS_WINDOW: usize = 1024;

fn emit(v: Value) {
    println!("{v}");
}

fn rate(n: u64, d: Duration) -> f64 {
    (n as f64 / d.as_secs_f64()).round()
}

/// A ceiling's stand-in for the relay's dedup key of row `index` of outbox row `outbox_row`:
/// `outbox_bench:<pgt_id>:<index>`, with a uuid-shaped id (as long as a real one) per outbox row.
fn ceiling_key(outbox_row: i64, index: i64) -> String {
    format!("outbox_bench:00000000-0000-4000-8000-{outbox_row:012x}:{index}")
}

/// Fills an outbox with `rows` delta rows of about 200 bytes each (pg_trickle's inline snapshot
/// form, `__pgt_*` columns included); returns the last outbox id.
async fn fill_outbox(c: &tokio_postgres::Client, outbox: &str, rows: i64) -> i64 {
    let outbox_rows = (rows + PER_OUTBOX_ROW - 1) / PER_OUTBOX_ROW;
    c.batch_execute(&format!(
        "INSERT INTO pgtrickle.\"{outbox}\" (inserted_count, payload)
         SELECT {PER_OUTBOX_ROW}, (SELECT jsonb_agg(jsonb_build_object(
                    'order_id', o * {PER_OUTBOX_ROW} + r, 'customer_id', (o * 7 + r) % 1000, 'status', 'shipped',
                    'total', round(((o + r) % 10000) / 100.0, 2), 'currency', 'EUR',
                    'updated_at', '2026-11-27T12:00:00Z', 'note', repeat('x', 64),
                    '__pgt_row_id', (o * {PER_OUTBOX_ROW} + r) * 2654435761, '__pgt_count', 1))
                  FROM generate_series(1, {PER_OUTBOX_ROW}) r)
           FROM generate_series(1, {outbox_rows}) o"
    ))
    .await
    .unwrap();
    c.batch_execute(&format!("VACUUM ANALYZE pgtrickle.\"{outbox}\"")).await.unwrap();
    c.query_one(&format!("SELECT max(id) FROM pgtrickle.\"{outbox}\""), &[]).await.unwrap().get(0)
}

/// Like [`wait_committed`], polling every 5 ms; returns when the first offset was committed,
/// that offset, and when the last one was.
async fn wait_committed_timed(
    c: &tokio_postgres::Client,
    pipeline: &str,
    last: i64,
    relay: &Relay,
) -> (Instant, i64, Instant) {
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut first = None;
    loop {
        let offset = committed_offset(c, "bench", pipeline).await;
        if let Some(o) = offset.filter(|o| *o > 0) {
            let (t, o0) = *first.get_or_insert((Instant::now(), o));
            if o == last {
                return (t, o0, Instant::now());
            }
        }
        assert!(Instant::now() < deadline, "relay did not finish:\n{}", relay.stderr());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn wait_committed(c: &tokio_postgres::Client, group: &str, pipeline: &str, last: i64, relay: &Relay) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while committed_offset(c, group, pipeline).await != Some(last) {
        assert!(Instant::now() < deadline, "relay did not finish:\n{}", relay.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A database with an outbox, a pipeline configured with `sink`, and the relay started on it;
/// returns the elapsed time until every row was committed.
async fn relay_run(db: &TestDb, sink: Value, rows: i64) -> (Duration, Relay) {
    let c = db.client().await;
    assert!(run_cli(&db.url, &["migrate"]).0.success());
    let outbox = enable_outbox(&c, "bench", None).await;
    let last = fill_outbox(&c, &outbox, rows).await;
    let mut config = sink;
    config["stream_table"] = json!("bench");
    // BENCH_CONFIG='{"batch_size": 500}' overrides pipeline keys, for tuning experiments.
    if let Ok(extra) = std::env::var("BENCH_CONFIG") {
        let extra: Value = serde_json::from_str(&extra).expect("BENCH_CONFIG must be a JSON object");
        for (k, v) in extra.as_object().expect("BENCH_CONFIG must be a JSON object") {
            config[k] = v.clone();
        }
    }
    c.execute("SELECT pgtrickle.set_relay_outbox('bench', config => $1::jsonb)", &[&config]).await.unwrap();
    let t0 = Instant::now();
    let relay = Relay::start(&db.url, "bench", &["--log-level", "warn"]);
    wait_committed(&c, "bench", "bench", last, &relay).await;
    (t0.elapsed(), relay)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Registers `pipeline` (NATS sink `config`), runs the relay until it committed `last`, checks
/// that `stream` holds every message once and removes both; returns the time taken and the
/// stream's first message.
async fn relay_into_stream(
    db: &TestDb,
    c: &tokio_postgres::Client,
    js: &async_nats::jetstream::Context,
    (pipeline, stream): (&str, &str),
    config: &Value,
    last: i64,
    rows: i64,
) -> (Duration, async_nats::jetstream::message::StreamMessage) {
    c.execute("SELECT pgtrickle.set_relay_outbox($1, config => $2::jsonb)", &[&pipeline, config]).await.unwrap();
    let t0 = Instant::now();
    let mut relay = Relay::start(&db.url, "bench", &["--log-level", "warn"]);
    wait_committed(c, "bench", pipeline, last, &relay).await;
    let took = t0.elapsed();
    relay.terminate();
    c.execute("SELECT pgtrickle.delete_relay($1)", &[&pipeline]).await.unwrap();
    let s = js.get_stream(stream).await.unwrap();
    assert_eq!(s.get_info().await.unwrap().state.messages, rows as u64, "every message stored once");
    let sample = s.get_raw_message(1).await.unwrap();
    js.delete_stream(stream).await.unwrap();
    (took, sample)
}

async fn bench_nats(rows: i64, repeats: usize) {
    let nats = NatsServer::start();
    let (db, c, outbox) = db_with_outbox("bench").await;
    let last = fill_outbox(&c, &outbox, rows).await;
    let js = nats.jetstream().await;
    let (mut relay_rates, mut ceiling_rates) = (Vec::new(), Vec::new());
    let mut body = bytes::Bytes::new();
    // Relay and ceiling runs alternate, each on a fresh stream; medians are reported.
    for r in 0..repeats {
        let (stream, pipeline) = (format!("bench{r}"), format!("bench{r}"));
        nats.create_stream(&stream, &[&format!("{stream}.>")]).await;
        let config = json!({"stream_table": "bench", "sink_type": "nats", "nats_url": nats.url(),
                            "subject_template": format!("{stream}.{{op}}"), "delta_mode": "snapshot"});
        let (took, sample) = relay_into_stream(&db, &c, &js, (&pipeline, &stream), &config, last, rows).await;
        body = sample.payload;
        relay_rates.push(rate(rows as u64, took));

        // The same messages (body and headers) published straight with async-nats.
        let ceil = format!("ceil{r}");
        nats.create_stream(&ceil, &[&format!("{ceil}.>")]).await;
        let subject = format!("{ceil}.insert");
        let t0 = Instant::now();
        let mut acks = FuturesOrdered::new();
        for i in 0..rows {
            let mut h = async_nats::HeaderMap::new();
            h.insert(async_nats::header::NATS_MESSAGE_ID, ceiling_key(i, 0).as_str());
            h.insert("Pgtrickle-Op", "insert");
            h.insert("Pgtrickle-Full-Refresh", "true");
            h.insert("Pgtrickle-Outbox-Id", i.to_string().as_str());
            h.insert("Content-Type", "application/json");
            // The relay sends each message's trace context too.
            h.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
            acks.push_back(js.publish_with_headers(subject.clone(), h, body.clone()).await.unwrap().into_future());
            while acks.len() >= NATS_WINDOW {
                acks.next().await.unwrap().unwrap();
            }
        }
        while let Some(a) = acks.next().await {
            a.unwrap();
        }
        ceiling_rates.push(rate(rows as u64, t0.elapsed()));
        js.delete_stream(&ceil).await.unwrap();
    }
    let (relay_rate, ceiling) = (median(relay_rates.clone()), median(ceiling_rates.clone()));
    emit(json!({
        "bench": "outbox_to_nats", "delta_rows": rows, "message_bytes": body.len(), "runs": repeats,
        "relay_msgs_per_sec": relay_rate, "relay_runs": relay_rates,
        "ceiling": format!("async-nats JetStream publish, window {NATS_WINDOW}, same messages"),
        "ceiling_msgs_per_sec": ceiling, "ceiling_runs": ceiling_rates,
        "ratio_to_ceiling": (relay_rate / ceiling * 1000.0).round() / 1000.0,
    }));

    // The naive design: await every ack before the next publish.
    let naive_n = 20_000u64;
    nats.create_stream("naive", &["naive.>"]).await;
    let t0 = Instant::now();
    for i in 0..naive_n {
        let mut h = async_nats::HeaderMap::new();
        h.insert(async_nats::header::NATS_MESSAGE_ID, format!("naive:{i}").as_str());
        js.publish_with_headers("naive.insert", h, body.clone()).await.unwrap().await.unwrap();
    }
    emit(json!({"bench": "nats_one_ack_at_a_time", "messages": naive_n, "msgs_per_sec": rate(naive_n, t0.elapsed()),
                "note": "baseline: the publish-and-await-each-ack design this relay avoids"}));

    bench_nats_latency(&nats, relay_rate / 2.0).await;
}

/// The envelopes compared by `outbox_to_nats_envelopes`: row field name and pipeline keys.
const NATS_ENVELOPES: [(&str, &str); 4] = [
    ("native", r#"{"envelope": "native"}"#),
    ("cloudevents_structured", r#"{"envelope": "cloudevents", "cloudevents_mode": "structured"}"#),
    ("cloudevents_binary", r#"{"envelope": "cloudevents", "cloudevents_mode": "binary"}"#),
    ("debezium", r#"{"envelope": "debezium"}"#),
];

/// Bytes of a header block on the wire (`NATS/1.0\r\n`, `Name: value\r\n` each, `\r\n`).
fn nats_header_bytes(h: &async_nats::HeaderMap) -> usize {
    let fields: usize = h
        .iter()
        .map(|(k, vs)| vs.iter().map(|v| AsRef::<[u8]>::as_ref(k).len() + 2 + v.as_str().len() + 2).sum::<usize>())
        .sum();
    10 + fields + 2
}

/// NATS throughput per envelope (`native`, CloudEvents structured and binary, Debezium), each
/// beside async-nats publishing the same bodies and headers the relay stored: the ceiling of
/// what the client and JetStream take at that message size and header count, so that a slower envelope shows whether the relay
/// or the bytes cost the difference.
async fn bench_nats_envelopes(rows: i64, repeats: usize) {
    let nats = NatsServer::start();
    let (db, c, outbox) = db_with_outbox("bench").await;
    let last = fill_outbox(&c, &outbox, rows).await;
    let js = nats.jetstream().await;
    let n = NATS_ENVELOPES.len();
    let (mut relay_rates, mut ceiling_rates) = (vec![Vec::new(); n], vec![Vec::new(); n]);
    let mut sizes = vec![(0usize, 0usize); n];
    // Rounds of every envelope, each round starting one envelope later, so that drift (page
    // cache, broker storage, other load) touches all of them alike; each run on a fresh stream.
    for r in 0..repeats {
        for k in 0..n {
            let v = (r + k) % n;
            let (stream, pipeline) = (format!("env{v}r{r}"), format!("env{v}r{r}"));
            nats.create_stream(&stream, &[&format!("{stream}.>")]).await;
            let mut config = json!({"stream_table": "bench", "sink_type": "nats", "nats_url": nats.url(),
                                    "subject_template": format!("{stream}.{{op}}"), "delta_mode": "snapshot",
                                    // The rows' key (fill_outbox): the CloudEvents subject and Debezium
                                    // key are built from it; every variant pays for the key lookup.
                                    "key_columns": ["order_id"]});
            let keys: Value = serde_json::from_str(NATS_ENVELOPES[v].1).unwrap();
            for (key, val) in keys.as_object().unwrap() {
                config[key] = val.clone();
            }
            let (took, sample) = relay_into_stream(&db, &c, &js, (&pipeline, &stream), &config, last, rows).await;
            relay_rates[v].push(rate(rows as u64, took));
            let headers = sample.headers.clone();
            sizes[v] = (sample.payload.len(), nats_header_bytes(&headers));

            // The same messages (the stored body and headers, a unique message id each, as the
            // relay's dedup keys are) published straight with async-nats, the relay's window.
            let ceil = format!("cei{v}r{r}");
            nats.create_stream(&ceil, &[&format!("{ceil}.>")]).await;
            let subject = sample.subject.replacen(&stream, &ceil, 1);
            let binary = headers.get("ce-id").is_some();
            let t0 = Instant::now();
            let mut acks = FuturesOrdered::new();
            for i in 0..rows {
                let mut h = headers.clone();
                let id = ceiling_key(i / PER_OUTBOX_ROW, i % PER_OUTBOX_ROW);
                if binary {
                    h.insert("ce-id", id.as_str());
                }
                h.insert(async_nats::header::NATS_MESSAGE_ID, id);
                acks.push_back(
                    js.publish_with_headers(subject.clone(), h, sample.payload.clone()).await.unwrap().into_future(),
                );
                while acks.len() >= NATS_WINDOW {
                    acks.next().await.unwrap().unwrap();
                }
            }
            while let Some(a) = acks.next().await {
                a.unwrap();
            }
            ceiling_rates[v].push(rate(rows as u64, t0.elapsed()));
            let stored = js.get_stream(&ceil).await.unwrap().get_info().await.unwrap().state.messages;
            assert_eq!(stored, rows as u64, "the ceiling run stored every message once");
            js.delete_stream(&ceil).await.unwrap();
        }
    }
    let ratio = |a: f64, b: f64| (a / b * 1000.0).round() / 1000.0;
    let native = (median(relay_rates[0].clone()), median(ceiling_rates[0].clone()));
    let mut row = json!({
        "bench": "outbox_to_nats_envelopes", "delta_rows": rows, "runs": repeats, "key_columns": ["order_id"],
        "ceiling": format!("async-nats JetStream publish, window {NATS_WINDOW}, the body and headers the relay stored (one message id each), per envelope"),
    });
    for (v, (name, _)) in NATS_ENVELOPES.iter().enumerate() {
        let (relay_rate, ceiling) = (median(relay_rates[v].clone()), median(ceiling_rates[v].clone()));
        let (body, headers) = sizes[v];
        let mut entry = json!({
            "relay_msgs_per_sec": relay_rate, "relay_runs": relay_rates[v],
            "body_bytes": body, "header_bytes": headers, "message_bytes": body + headers,
            "same_body_ceiling_msgs_per_sec": ceiling, "same_body_ceiling_runs": ceiling_rates[v],
            "ratio_to_same_body_ceiling": ratio(relay_rate, ceiling),
        });
        if v > 0 {
            entry["ratio_to_native"] = json!(ratio(relay_rate, native.0));
            entry["ceiling_ratio_to_native"] = json!(ratio(ceiling, native.1));
        }
        row[*name] = entry;
    }
    row["target"] = json!("each envelope ≥ 0.90 of native");
    row["measured"] = json!("relay: start to the last committed offset, delta_mode snapshot, medians of rounds that rotate the envelope order; message_bytes: body + NATS header block of the first stored message; ceiling_ratio_to_native: what the messages alone (bytes, header count) cost async-nats and JetStream");
    emit(row);
}

/// Outbox commit → JetStream ack latency with the relay running and a writer at `msgs_per_sec`.
async fn bench_nats_latency(nats: &NatsServer, msgs_per_sec: f64) {
    const SECONDS: u64 = 5;
    const PER_ROW: i64 = 10;
    nats.create_stream("lat", &["lat.>"]).await;
    let (db, c, outbox) = db_with_outbox("lat").await;
    c.execute(
        "SELECT pgtrickle.set_relay_outbox('lat', config => $1::jsonb)",
        &[&json!({"stream_table": "lat", "sink_type": "nats", "nats_url": nats.url(), "subject_template": "lat.{op}",
                  "delta_mode": "snapshot"})],
    )
    .await
    .unwrap();
    let relay = Relay::start(&db.url, "lat", &["--log-level", "warn"]);
    // Every 10 ms, one transaction with this many outbox rows of PER_ROW messages.
    let rows_per_tick = ((msgs_per_sec / PER_ROW as f64) / 100.0).ceil().max(1.0) as i64;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(SECONDS) {
        tick.tick().await;
        c.execute(
            &format!(
                "WITH r AS (INSERT INTO pgtrickle.\"{outbox}\" (inserted_count, payload)
                     SELECT {PER_ROW}, (SELECT jsonb_agg(jsonb_build_object('k', g * 100 + x, 'note', repeat('x', 120)))
                                          FROM generate_series(1, {PER_ROW}) x)
                       FROM generate_series(1, $1::int8) g RETURNING 1)
                 SELECT pg_notify('pgtrickle_outbox_new', '{outbox}') FROM (SELECT count(*) FROM r) s"
            ),
            &[&rows_per_tick],
        )
        .await
        .unwrap();
    }
    let written_secs = t0.elapsed().as_secs_f64();
    let last: i64 = c.query_one(&format!("SELECT max(id) FROM pgtrickle.\"{outbox}\""), &[]).await.unwrap().get(0);
    wait_committed(&c, "lat", "lat", last, &relay).await;
    let created: HashMap<i64, f64> = c
        .query(&format!("SELECT id, extract(epoch FROM created_at)::float8 FROM pgtrickle.\"{outbox}\""), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let js = nats.jetstream().await;
    let stream = js.get_stream("lat").await.unwrap();
    let total = stream.get_info().await.unwrap().state.messages;
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: None,
            // Read-only pass over the stream: no acks, so no max-ack-pending stall.
            ack_policy: jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut latencies = Vec::with_capacity(total as usize);
    while (latencies.len() as u64) < total {
        let mut batch = consumer.fetch().max_messages(5_000).messages().await.unwrap();
        while let Some(Ok(m)) = batch.next().await {
            let published = m.info().unwrap().published.unix_timestamp_nanos() as f64 / 1e9;
            let body: Value = serde_json::from_slice(&m.payload).unwrap();
            let outbox_id = body["outbox_id"].as_i64().unwrap();
            latencies.push((published - created[&outbox_id]) * 1000.0);
        }
    }
    latencies.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| (latencies[((latencies.len() as f64 - 1.0) * p) as usize] * 100.0).round() / 100.0;
    emit(json!({
        "bench": "outbox_to_nats_latency", "target_msgs_per_sec": msgs_per_sec.round(),
        "achieved_msgs_per_sec": (total as f64 / written_secs).round(), "messages": total,
        "measured": "outbox row created_at (commit) to JetStream stored time",
        "p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": pct(1.0),
    }));
}

async fn bench_inbox(rows: i64) {
    let db = TestDb::new().await;
    let sink =
        json!({"sink_type": "pg-inbox", "inbox_table": "bench_inbox", "create_inbox": true, "delta_mode": "snapshot"});
    let (took, mut relay) = relay_run(&db, sink, rows).await;
    relay.terminate();
    let c = db.client().await;
    let stored: i64 = c.query_one("SELECT count(*) FROM pgtrickle.bench_inbox", &[]).await.unwrap().get(0);
    assert_eq!(stored, rows);
    let relay_rate = rate(rows as u64, took);

    // Ceiling: the same inbox rows inserted by one client, 1000 per statement.
    c.batch_execute("CREATE TABLE pgtrickle.ceiling_inbox (LIKE pgtrickle.bench_inbox INCLUDING ALL)").await.unwrap();
    let sample: Value = c.query_one("SELECT payload FROM pgtrickle.bench_inbox LIMIT 1", &[]).await.unwrap().get(0);
    let insert = "INSERT INTO pgtrickle.ceiling_inbox (event_id, event_type, source, aggregate_id, payload)
                  SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::jsonb[])
                  ON CONFLICT (event_id) DO NOTHING";
    let t0 = Instant::now();
    let mut n = 0i64;
    while n < rows {
        let k = 1000.min(rows - n);
        let ids: Vec<String> = (n..n + k).map(|i| ceiling_key(i, 0)).collect();
        let types = vec!["pgtrickle.bench.insert"; k as usize];
        let sources = vec!["bench"; k as usize];
        let aggs: Vec<Option<String>> = vec![None; k as usize];
        let payloads: Vec<Value> = (n..n + k)
            .map(|i| {
                let mut p = sample.clone();
                p["order_id"] = json!(i);
                p
            })
            .collect();
        c.execute(insert, &[&ids, &types, &sources, &aggs, &payloads]).await.unwrap();
        n += k;
    }
    let ceiling = rate(rows as u64, t0.elapsed());
    emit(json!({
        "bench": "outbox_to_pg_inbox", "delta_rows": rows, "relay_seconds": took.as_secs_f64(),
        "relay_msgs_per_sec": relay_rate, "ceiling": "one client, INSERT … SELECT unnest(…) ON CONFLICT DO NOTHING, 1000 rows per statement",
        "ceiling_msgs_per_sec": ceiling, "ratio_to_ceiling": (relay_rate / ceiling * 1000.0).round() / 1000.0,
    }));
}

/// The body of the `i`-th message of the reverse benchmarks (about 200 bytes).
fn order_body(i: i64) -> String {
    json!({"order_id": i, "customer_id": i % 1000, "status": "shipped", "total": 42.5, "currency": "EUR",
           "event_type": "OrderShipped", "note": "x".repeat(64)})
    .to_string()
}

/// Runs a reverse pipeline (`config`) over a source already holding `rows` messages until the
/// inbox holds them all, then inserts the same rows with the relay's statement from one client
/// (500 per statement) as the ceiling, and prints the row.
async fn reverse_run(bench: &str, config: Value, rows: i64) {
    reverse_run_with(bench, config, rows, None).await;
}

/// As [`reverse_run`], with another ceiling (name, msgs/s) in place of the inserts.
async fn reverse_run_with(bench: &str, mut config: Value, rows: i64, other_ceiling: Option<(&str, f64)>) {
    let db = TestDb::new().await;
    let c = db.client().await;
    assert!(run_cli(&db.url, &["migrate"]).0.success());
    config["inbox_table"] = json!("bench_inbox");
    config["create_inbox"] = json!(true);
    config["aggregate_id_field"] = json!("order_id");
    c.execute("SELECT pgtrickle.set_relay_inbox('bench-in', config => $1::jsonb)", &[&config]).await.unwrap();
    let t0 = Instant::now();
    let mut relay = Relay::start(&db.url, "default", &["--log-level", "warn"]);
    let deadline = Instant::now() + Duration::from_secs(600);
    // Steady state: from the first stored rows on (a Kafka group join, for one, takes seconds).
    let mut first: Option<(Instant, i64)> = None;
    loop {
        let n: i64 =
            c.query_one("SELECT count(*) FROM pgtrickle.bench_inbox", &[]).await.map(|r| r.get(0)).unwrap_or(0);
        if n > 0 && first.is_none() {
            first = Some((Instant::now(), n));
        }
        if n == rows {
            break;
        }
        assert!(Instant::now() < deadline, "relay did not finish ({n} of {rows}):\n{}", relay.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = t0.elapsed();
    let (t_first, n_first) = first.unwrap_or((t0, 0));
    let steady_rate = rate((rows - n_first) as u64, t_first.elapsed());
    let rss_kb = relay.peak_rss_kb();
    relay.terminate();
    let relay_rate = rate(rows as u64, took);

    c.batch_execute("CREATE TABLE pgtrickle.ceiling_inbox (LIKE pgtrickle.bench_inbox INCLUDING ALL)").await.unwrap();
    let insert = "INSERT INTO pgtrickle.ceiling_inbox (event_id, event_type, source, aggregate_id, payload, trace_id)
                  SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::jsonb[], $6::text[])
                  ON CONFLICT (event_id) DO NOTHING RETURNING event_id";
    let t0 = Instant::now();
    let mut n = 0i64;
    while n < rows {
        let k = 500.min(rows - n);
        let ids: Vec<String> = (n..n + k).map(|i| format!("src:bench:{}", i + 1)).collect();
        let types = vec!["OrderShipped"; k as usize];
        let sources = vec!["bench-in"; k as usize];
        let aggs: Vec<String> = (n..n + k).map(|i| i.to_string()).collect();
        let payloads: Vec<Value> = (n..n + k).map(|i| serde_json::from_str(&order_body(i)).unwrap()).collect();
        let traces: Vec<Option<String>> = vec![None; k as usize];
        c.query(insert, &[&ids, &types, &sources, &aggs, &payloads, &traces]).await.unwrap();
        n += k;
    }
    let mut ceiling = rate(rows as u64, t0.elapsed());
    let mut what = "one client, the relay's INSERT … SELECT unnest(…) ON CONFLICT DO NOTHING, 500 rows per statement";
    if let Some((w, c)) = other_ceiling {
        (what, ceiling) = (w, c);
    }
    emit(json!({
        "bench": bench, "messages": rows, "relay_seconds": took.as_secs_f64(), "relay_msgs_per_sec_with_start": relay_rate,
        "relay_msgs_per_sec": steady_rate,
        "ceiling": what,
        "ceiling_msgs_per_sec": ceiling, "ratio_to_ceiling": (steady_rate / ceiling * 1000.0).round() / 1000.0,
        "relay_peak_rss_mb": (rss_kb as f64 / 1024.0 * 10.0).round() / 10.0,
        "note": "relay_msgs_per_sec counts from the first stored row (start, connect and group join excluded; with them: relay_msgs_per_sec_with_start); acks follow every commit",
    }));
}

async fn bench_nats_to_inbox(rows: i64) {
    let nats = NatsServer::start();
    let js = nats.jetstream().await;
    nats.create_stream("cmds", &["cmds.>"]).await;
    let mut acks = FuturesOrdered::new();
    for i in 0..rows {
        acks.push_back(js.publish(format!("cmds.{}", i % 8), order_body(i).into()).await.unwrap().into_future());
        while acks.len() >= NATS_WINDOW {
            acks.next().await.unwrap().unwrap();
        }
    }
    while let Some(a) = acks.next().await {
        a.unwrap();
    }
    reverse_run("nats_to_inbox", json!({"source_type": "nats", "nats_url": nats.url(), "nats_stream": "cmds"}), rows)
        .await;
}

async fn bench_kafka_to_inbox(rows: i64) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let kafka = relay_e2e::kafka::KafkaBroker::start();
    kafka.create_topic("cmds", 3).await;
    let producer: FutureProducer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", kafka.brokers()).set("linger.ms", "5").create().unwrap();
    let mut acks = FuturesOrdered::new();
    for i in 0..rows {
        let (key, body) = (i.to_string(), order_body(i));
        acks.push_back(
            producer.send_result(FutureRecord::to("cmds").key(&key).payload(&body)).map_err(|(e, _)| e).unwrap(),
        );
        while acks.len() >= 10_000 {
            acks.next().await.unwrap().unwrap().unwrap();
        }
    }
    while let Some(a) = acks.next().await {
        a.unwrap().unwrap();
    }
    let config = json!({"source_type": "kafka", "kafka_brokers": kafka.brokers(), "kafka_topic": "cmds",
                        "kafka_session_timeout_ms": 6000});
    reverse_run("kafka_to_inbox", config, rows).await;
}

async fn bench_redis_to_inbox(rows: i64) {
    let redis_server = relay_e2e::redis_server::RedisServer::start();
    let mut conn = redis_server.client().get_multiplexed_async_connection().await.unwrap();
    let mut i = 0;
    while i < rows {
        let mut pipe = redis::pipe();
        for j in i..(i + 1000).min(rows) {
            pipe.cmd("XADD").arg("cmds").arg("*").arg("payload").arg(order_body(j));
        }
        let _: Vec<String> = pipe.query_async(&mut conn).await.unwrap();
        i += 1000;
    }
    let config = json!({"source_type": "redis", "redis_url": redis_server.url(), "redis_stream_key": "cmds"});
    reverse_run("redis_to_inbox", config, rows).await;
}

/// `rows` order messages into an SQS queue, 10 per call.
async fn fill_sqs(client: &aws_sdk_sqs::Client, queue_url: &str, rows: i64) {
    use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
    let mut i = 0;
    while i < rows {
        let entries: Vec<_> = (i..(i + 10).min(rows))
            .map(|j| {
                SendMessageBatchRequestEntry::builder().id(j.to_string()).message_body(order_body(j)).build().unwrap()
            })
            .collect();
        client.send_message_batch().queue_url(queue_url).set_entries(Some(entries)).send().await.unwrap();
        i += 10;
    }
}

async fn bench_sqs_to_inbox(rows: i64) {
    let server = relay_e2e::sqs::SqsServer::start();
    let url = server.create_queue("cmds").await;
    let client = server.client();
    fill_sqs(&client, &url, rows).await;
    // Ceiling: the same SDK draining the same backlog from another queue of the same server
    // (ReceiveMessage of 10, DeleteMessageBatch), nothing written anywhere.
    let ceiling_url = server.create_queue("ceiling").await;
    fill_sqs(&client, &ceiling_url, rows).await;
    let t0 = Instant::now();
    let mut drained = 0;
    while drained < rows {
        let r = client.receive_message().queue_url(&ceiling_url).max_number_of_messages(10).send().await.unwrap();
        let entries: Vec<_> = r
            .messages()
            .iter()
            .enumerate()
            .map(|(k, m)| {
                aws_sdk_sqs::types::DeleteMessageBatchRequestEntry::builder()
                    .id(k.to_string())
                    .receipt_handle(m.receipt_handle().unwrap())
                    .build()
                    .unwrap()
            })
            .collect();
        drained += entries.len() as i64;
        if !entries.is_empty() {
            client.delete_message_batch().queue_url(&ceiling_url).set_entries(Some(entries)).send().await.unwrap();
        }
    }
    let raw = rate(rows as u64, t0.elapsed());
    let config = json!({"source_type": "sqs", "sqs_queue_url": url, "sqs_region": "us-east-1", "sqs_endpoint_url": server.endpoint(),
                        "sqs_access_key_id": "test", "sqs_secret_access_key": "test"});
    let what = "aws-sdk-sqs ReceiveMessage of 10 + DeleteMessageBatch of the same backlog, same moto_server (moto bounds both)";
    reverse_run_with("sqs_to_inbox", config, rows, Some((what, raw))).await;
}

async fn bench_rabbitmq_to_inbox(rows: i64) {
    use lapin::options::QueueDeclareOptions;
    use relay_e2e::rabbitmq::{amqp_url, Rabbit};
    let rabbit = Rabbit::connect().await;
    let queue = rabbit.name("bench-src");
    rabbit.forget_queue_later(&queue);
    rabbit
        .channel()
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions { durable: true, ..Default::default() },
            Default::default(),
        )
        .await
        .unwrap();
    let bodies: Vec<String> = (0..rows).map(order_body).collect();
    let ids: Vec<Option<String>> = (0..rows).map(|i| Some(format!("m-{i}"))).collect();
    rabbit.publish(&queue, &bodies, &ids).await;
    let config = json!({"source_type": "rabbitmq", "rabbitmq_url": amqp_url(), "rabbitmq_queue": queue});
    reverse_run("rabbitmq_to_inbox", config, rows).await;
}

/// A counting keep-alive HTTP server (it keeps the first body, for the ceiling run).
async fn counting_server() -> (std::net::SocketAddr, Arc<AtomicU64>, Arc<Mutex<Option<bytes::Bytes>>>) {
    use warp::Filter;
    let count = Arc::new(AtomicU64::new(0));
    let first: Arc<Mutex<Option<bytes::Bytes>>> = Arc::default();
    let (c, f) = (count.clone(), first.clone());
    let route = warp::post().and(warp::body::bytes()).map(move |body: bytes::Bytes| {
        let items = if body.first() == Some(&b'[') {
            serde_json::from_slice::<Vec<Value>>(&body).map(|v| v.len()).unwrap_or(1)
        } else {
            1
        };
        c.fetch_add(items as u64, Ordering::SeqCst);
        f.lock().unwrap().get_or_insert(body);
        "ok"
    });
    let (addr, server) = warp::serve(route).bind_ephemeral(([127, 0, 0, 1], 0));
    tokio::spawn(server);
    (addr, count, first)
}

async fn bench_webhook(rows: i64) {
    let (addr, count, first) = counting_server().await;
    let db = TestDb::new().await;
    let sink = json!({"sink_type": "webhook", "webhook_url": format!("http://{addr}/hook"), "delta_mode": "snapshot"});
    let (took, mut relay) = relay_run(&db, sink, rows).await;
    relay.terminate();
    assert_eq!(count.load(Ordering::SeqCst), rows as u64);
    let relay_rate = rate(rows as u64, took);

    let body = first.lock().unwrap().clone().unwrap();
    let per_request = serde_json::from_slice::<Vec<Value>>(&body).unwrap().len() as i64;
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/ceiling");
    let t0 = Instant::now();
    let mut sent = 0;
    while sent < rows {
        let r = client.post(&url).header("content-type", "application/json").body(body.clone()).send().await.unwrap();
        assert!(r.status().is_success());
        sent += per_request;
    }
    let ceiling = rate(sent as u64, t0.elapsed());
    emit(json!({
        "bench": "outbox_to_webhook", "delta_rows": rows, "messages_per_request": per_request,
        "relay_seconds": took.as_secs_f64(), "relay_msgs_per_sec": relay_rate,
        "ceiling": "reqwest, the same request bodies, keep-alive, one request at a time, same server",
        "ceiling_msgs_per_sec": ceiling, "ratio_to_ceiling": (relay_rate / ceiling * 1000.0).round() / 1000.0,
    }));
}

async fn bench_redis(rows: i64) {
    let redis_server = relay_e2e::redis_server::RedisServer::start();
    let db = TestDb::new().await;
    let sink = json!({"sink_type": "redis", "redis_url": redis_server.url(), "redis_stream_key": "bench", "delta_mode": "snapshot"});
    let (took, mut relay) = relay_run(&db, sink, rows).await;
    relay.terminate();
    let client = redis::Client::open(redis_server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let len: i64 = redis::cmd("XLEN").arg("bench").query_async(&mut conn).await.unwrap();
    assert_eq!(len, rows, "every message appended once");
    let relay_rate = rate(rows as u64, took);
    // Ceiling: the same entries appended with plain pipelined XADD (no dedup), 1000 per round trip.
    let sample: Vec<(String, Vec<(String, String)>)> =
        redis::cmd("XRANGE").arg("bench").arg("-").arg("+").arg("COUNT").arg(1).query_async(&mut conn).await.unwrap();
    let fields = sample[0].1.clone();
    let t0 = Instant::now();
    let mut n = 0;
    while n < rows {
        let mut pipe = redis::pipe();
        for _ in 0..1000.min(rows - n) {
            let cmd = pipe.cmd("XADD").arg("ceiling").arg("*");
            for (k, v) in &fields {
                cmd.arg(k).arg(v);
            }
        }
        let _: Vec<String> = pipe.query_async(&mut conn).await.unwrap();
        n += 1000;
    }
    let plain = rate(rows as u64, t0.elapsed());
    // Ceiling with the relay's own commands: the same append-once script (high-water-mark dedup),
    // 500 entries per call and 20 calls per round trip, as the relay sends a 10,000-message batch.
    let script = redis::Script::new(relay_runtime::sink::redis::APPEND_ONCE);
    let _: () = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(relay_runtime::sink::redis::APPEND_ONCE)
        .query_async(&mut conn)
        .await
        .map(|_: String| ())
        .unwrap();
    let t0 = Instant::now();
    let mut n = 0i64;
    while n < rows {
        let mut pipe = redis::pipe();
        for _ in 0..20 {
            if n >= rows {
                break;
            }
            let cmd = pipe
                .cmd("EVALSHA")
                .arg(script.get_hash())
                .arg(2)
                .arg("ceiling2")
                .arg("ceiling2:pgtrickle-marks")
                .arg("bench")
                .arg("")
                .arg("");
            for _ in 0..500.min(rows - n) {
                cmd.arg(n / 100 + 1).arg(n % 100).arg(fields.len() * 2);
                for (k, v) in &fields {
                    cmd.arg(k).arg(v);
                }
                n += 1;
            }
        }
        let _: Vec<i64> = pipe.query_async(&mut conn).await.unwrap();
    }
    let same = rate(rows as u64, t0.elapsed());
    let len2: i64 = redis::cmd("XLEN").arg("ceiling2").query_async(&mut conn).await.unwrap();
    assert_eq!(len2, rows, "the ceiling run appended every entry once");
    emit(json!({
        "bench": "outbox_to_redis", "delta_rows": rows, "relay_seconds": took.as_secs_f64(), "relay_msgs_per_sec": relay_rate,
        "ceiling": "redis-rs, the relay's append-once script (XADD behind a high-water-mark check, for dedup), the same entries, 500 per call, 20 calls per round trip",
        "ceiling_msgs_per_sec": same, "ratio_to_ceiling": (relay_rate / same * 1000.0).round() / 1000.0,
        "plain_xadd_msgs_per_sec": plain, "ratio_to_plain_xadd": (relay_rate / plain * 1000.0).round() / 1000.0,
        "note": "plain XADD (no dedup, 1000 per round trip) shows what the exactly-once check costs",
    }));
}

async fn bench_kafka(rows: i64, repeats: usize) {
    let kafka = relay_e2e::kafka::KafkaBroker::start();
    let (db, c, outbox) = db_with_outbox("bench").await;
    let last = fill_outbox(&c, &outbox, rows).await;
    let (mut relay_rates, mut ceiling_rates, mut rss, mut steady_rates) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // Relay and ceiling runs alternate, each to a fresh topic; medians are reported.
    for r in 0..repeats {
        let (topic, pipeline, ceiling_topic) = (format!("bench{r}"), format!("bench{r}"), format!("ceiling{r}"));
        kafka.create_topic(&topic, 3).await;
        kafka.create_topic(&ceiling_topic, 3).await;
        let mut config = json!({"stream_table": "bench", "sink_type": "kafka", "kafka_brokers": kafka.brokers(),
                                "kafka_topic": topic, "delta_mode": "snapshot"});
        // BENCH_CONFIG='{"batch_size": 500}' overrides pipeline keys, for tuning experiments.
        if let Ok(extra) = std::env::var("BENCH_CONFIG") {
            let extra: Value = serde_json::from_str(&extra).expect("BENCH_CONFIG must be a JSON object");
            for (k, v) in extra.as_object().expect("BENCH_CONFIG must be a JSON object") {
                config[k] = v.clone();
            }
        }
        c.execute("SELECT pgtrickle.set_relay_outbox($1, config => $2::jsonb)", &[&pipeline, &config]).await.unwrap();
        let t0 = Instant::now();
        let mut relay = Relay::start(&db.url, "bench", &["--log-level", "warn"]);
        let (t_first, first_offset, t_last) = wait_committed_timed(&c, &pipeline, last, &relay).await;
        let took = t_last - t0;
        let steady_rows = (last - first_offset) * PER_OUTBOX_ROW;
        steady_rates.push(rate(steady_rows as u64, t_last - t_first));
        rss.push(relay.peak_rss_kb() as f64 / 1024.0);
        relay.terminate();
        c.execute("SELECT pgtrickle.delete_relay($1)", &[&pipeline]).await.unwrap();
        let (n, first) = kafka.count(&topic).await;
        assert_eq!(n as i64, rows, "every message delivered once");
        relay_rates.push(rate(rows as u64, took));

        // Ceiling: the same client library, settings and window, producing the same records
        // (body, key, the relay's five headers) as fast as it can: a ThreadedProducer whose
        // delivery callback counts reports (the cheapest way rdkafka offers; the relay does
        // the same).
        let body = serde_json::to_vec(&first.unwrap().value).unwrap();
        let producer = KafkaCeiling::new(&kafka.brokers());
        let t0 = Instant::now();
        let sent = tokio::task::spawn_blocking(move || producer.run(&ceiling_topic, rows, &body)).await.unwrap();
        ceiling_rates.push(rate(rows as u64, t0.elapsed()));
        assert_eq!(sent, rows as u64, "the ceiling run delivered every record");
    }
    let (relay_rate, ceiling) = (median(steady_rates.clone()), median(ceiling_rates.clone()));
    emit(json!({
        "bench": "outbox_to_kafka", "delta_rows": rows, "runs": repeats,
        "relay_msgs_per_sec": relay_rate, "relay_runs": steady_rates,
        "relay_msgs_per_sec_with_start": median(relay_rates.clone()), "relay_runs_with_start": relay_rates,
        "ceiling": "rdkafka ThreadedProducer with a counting delivery callback, the relay's producer settings and 50,000-report window, the same records (body, key, headers)",
        "ceiling_msgs_per_sec": ceiling, "ceiling_runs": ceiling_rates,
        "ratio_to_ceiling": (relay_rate / ceiling * 1000.0).round() / 1000.0,
        "ratio_with_start": (median(relay_rates) / ceiling * 1000.0).round() / 1000.0,
        "relay_peak_rss_mb": (median(rss) * 10.0).round() / 10.0,
        "broker": "tansu 0.6 (in-memory), 3 partitions, idempotent producer, acks=all, lz4",
        "measured": "relay: steady state, first to last committed offset (with_start: from process start); ceiling: first send to the last delivery report; ratio of the steady rate",
    }));
}

/// The Kafka ceiling's producer: delivery reports counted by the callback.
struct KafkaCeiling {
    producer: rdkafka::producer::ThreadedProducer<CountReports>,
    delivered: Arc<AtomicU64>,
}

struct CountReports(Arc<AtomicU64>);

impl rdkafka::client::ClientContext for CountReports {}

impl rdkafka::producer::ProducerContext for CountReports {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &rdkafka::message::DeliveryResult<'_>, _: ()) {
        assert!(result.is_ok(), "ceiling delivery failed");
        self.0.fetch_add(1, Ordering::Release);
    }
}

impl KafkaCeiling {
    fn new(brokers: &str) -> Self {
        let delivered = Arc::new(AtomicU64::new(0));
        let producer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", "lz4")
            .set("linger.ms", "5")
            .set("batch.num.messages", "10000")
            .set("queue.buffering.max.messages", "100000")
            .create_with_context(CountReports(delivered.clone()))
            .unwrap();
        Self { producer, delivered }
    }

    /// Produces `rows` records to `topic`, at most 50,000 unreported; returns how many were
    /// reported delivered.
    fn run(self, topic: &str, rows: i64, body: &[u8]) -> u64 {
        use rdkafka::message::{Header, OwnedHeaders};
        use rdkafka::producer::BaseRecord;
        for i in 0..rows {
            let key = ceiling_key(i / PER_OUTBOX_ROW, i % PER_OUTBOX_ROW);
            let outbox_id = (i / PER_OUTBOX_ROW).to_string();
            let headers = OwnedHeaders::new_with_capacity(5)
                .insert(Header { key: "pgtrickle-op", value: Some("insert") })
                .insert(Header { key: "pgtrickle-dedup-key", value: Some(key.as_str()) })
                .insert(Header { key: "pgtrickle-full-refresh", value: Some("true") })
                .insert(Header { key: "content-type", value: Some("application/json") })
                .insert(Header { key: "pgtrickle-outbox-id", value: Some(outbox_id.as_str()) });
            let mut record = BaseRecord::to(topic).payload(body).key(&key).headers(headers);
            while i as u64 - self.delivered.load(Ordering::Acquire) >= 50_000 {
                std::thread::sleep(Duration::from_micros(100));
            }
            while let Err((_, r)) = self.producer.send(record) {
                record = r;
                std::thread::sleep(Duration::from_micros(100));
            }
        }
        while self.delivered.load(Ordering::Acquire) < rows as u64 {
            std::thread::sleep(Duration::from_micros(100));
        }
        self.delivered.load(Ordering::Acquire)
    }
}

async fn bench_rabbitmq(rows: i64) {
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    use lapin::types::FieldTable;
    use relay_e2e::rabbitmq::{amqp_url, Rabbit};
    let rabbit = Rabbit::connect().await;
    let (exchange, queue) = (rabbit.name("x"), rabbit.name("bench"));
    rabbit.bind_queue(&exchange, lapin::ExchangeKind::Topic, &queue, "#").await;
    let db = TestDb::new().await;
    let sink = json!({"sink_type": "rabbitmq", "rabbitmq_url": amqp_url(), "rabbitmq_exchange": exchange, "delta_mode": "snapshot"});
    let (took, mut relay) = relay_run(&db, sink, rows).await;
    let rss_kb = relay.peak_rss_kb();
    relay.terminate();
    let relay_rate = rate(rows as u64, took);
    let first = rabbit.drain_count(&queue).await;
    assert_eq!(first.0 as i64, rows, "every message delivered once");
    let body = serde_json::to_vec(&first.1.unwrap().body).unwrap();

    // Ceiling: the same client, confirms and window, the same bodies and properties.
    let conn = lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default()).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    // The relay's four headers, so both sides send the same frames.
    let mut headers = FieldTable::default();
    let sample_key = ceiling_key(1, 0);
    for (k, v) in [("pgtrickle-op", "insert"), ("pgtrickle-dedup-key", sample_key.as_str())] {
        headers.insert(k.into(), lapin::types::AMQPValue::LongString(v.into()));
    }
    headers.insert("pgtrickle-full-refresh".into(), lapin::types::AMQPValue::Boolean(true));
    headers.insert("pgtrickle-outbox-id".into(), lapin::types::AMQPValue::LongLongInt(1));
    let t0 = Instant::now();
    let mut acks = FuturesOrdered::new();
    for i in 0..rows {
        let props = lapin::BasicProperties::default()
            .with_message_id(ceiling_key(i / PER_OUTBOX_ROW, i % PER_OUTBOX_ROW).as_str().into())
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_app_id("pgtrickle-relay".into())
            .with_headers(headers.clone());
        let confirm = ch
            .basic_publish(
                exchange.as_str().into(),
                "pgtrickle.bench.insert".into(),
                BasicPublishOptions { mandatory: true, ..Default::default() },
                &body,
                props,
            )
            .await
            .unwrap();
        acks.push_back(confirm);
        while acks.len() >= 1024 {
            assert!(acks.next().await.unwrap().unwrap().is_ack());
        }
    }
    while let Some(a) = acks.next().await {
        assert!(a.unwrap().is_ack());
    }
    let ceiling = rate(rows as u64, t0.elapsed());
    assert_eq!(rabbit.drain_count(&queue).await.0 as i64, rows);
    emit(json!({
        "bench": "outbox_to_rabbitmq", "delta_rows": rows, "relay_seconds": took.as_secs_f64(), "relay_msgs_per_sec": relay_rate,
        "ceiling": "lapin, publisher confirms with the relay's 1024 window, persistent, mandatory, the same bodies, same broker",
        "ceiling_msgs_per_sec": ceiling, "ratio_to_ceiling": (relay_rate / ceiling * 1000.0).round() / 1000.0,
        "relay_peak_rss_mb": (rss_kb as f64 / 1024.0 * 10.0).round() / 10.0,
    }));
}

async fn bench_sqs(rows: i64) {
    use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
    use relay_e2e::sqs::SqsServer;
    let server = SqsServer::start();
    let url = server.create_queue("bench").await;
    let ceiling_url = server.create_queue("ceiling").await;
    let db = TestDb::new().await;
    let sink = json!({"sink_type": "sqs", "sqs_queue_url": url, "sqs_region": "us-east-1", "sqs_endpoint_url": server.endpoint(),
                      "sqs_access_key_id": "test", "sqs_secret_access_key": "test", "delta_mode": "snapshot"});
    let (took, mut relay) = relay_run(&db, sink, rows).await;
    relay.terminate();
    let relay_rate = rate(rows as u64, took);
    let client = server.client();
    let attrs = client
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
        .send()
        .await
        .unwrap();
    let stored: i64 = attrs.attributes().unwrap().values().next().unwrap().parse().unwrap();
    assert_eq!(stored, rows, "every message stored once");
    let sample = server.drain_one(&url).await.unwrap();
    let body = serde_json::to_string(&sample).unwrap();

    // Ceiling: the same SDK, 10 entries per call, 10 calls in flight, the same bodies.
    let t0 = Instant::now();
    let mut calls = futures::stream::FuturesUnordered::new();
    let mut sent = 0;
    while sent < rows {
        let entries: Vec<_> = (0..10.min(rows - sent))
            .map(|i| {
                SendMessageBatchRequestEntry::builder().id(i.to_string()).message_body(body.clone()).build().unwrap()
            })
            .collect();
        sent += entries.len() as i64;
        calls.push(client.send_message_batch().queue_url(&ceiling_url).set_entries(Some(entries)).send());
        while calls.len() >= 10 {
            assert!(calls.next().await.unwrap().unwrap().failed().is_empty());
        }
    }
    while let Some(r) = calls.next().await {
        assert!(r.unwrap().failed().is_empty());
    }
    let ceiling = rate(rows as u64, t0.elapsed());
    emit(json!({
        "bench": "outbox_to_sqs", "delta_rows": rows, "relay_seconds": took.as_secs_f64(), "relay_msgs_per_sec": relay_rate,
        "ceiling": "aws-sdk-sqs SendMessageBatch of 10, 10 calls in flight, the same bodies, same moto_server",
        "ceiling_msgs_per_sec": ceiling, "ratio_to_ceiling": (relay_rate / ceiling * 1000.0).round() / 1000.0,
        "server": "moto_server 5.2.1 (Python): the server, not the relay, bounds both numbers",
    }));
}

/// Diff mode: a claim-check snapshot (pg_trickle's form above 10,000 rows) of `rows` rows, then
/// the same snapshot with 1 % of the rows changed; the second one is timed, beside reading the
/// snapshot's rows alone.
async fn bench_diff(rows: i64) {
    let (db, c, outbox) = db_with_outbox("diffbench").await;
    let path = temp_path("diff.jsonl");
    c.execute(
        "SELECT pgtrickle.set_relay_outbox('diffbench', config => $1::jsonb)",
        &[&json!({"stream_table": "diffbench", "sink_type": "file", "path": path.to_str().unwrap(), "initial_snapshot": "skip"})],
    )
    .await
    .unwrap();
    // Header and delta rows in one transaction, as pg_trickle's refresh writes them.
    let write_snapshot = |changed_every: i64| {
        let (c, outbox) = (&c, outbox.clone());
        async move {
            let id: i64 = c
                .query_one(
                    &format!(
                        "WITH h AS (INSERT INTO pgtrickle.\"{outbox}\" (inserted_count, is_claim_check) VALUES ($3::int8, true) RETURNING id),
                              d AS (INSERT INTO pgtrickle.outbox_delta_rows_diffbench (outbox_id, row_num, row_op, row_data)
                                    SELECT h.id, g, 'INSERT', jsonb_build_object('order_id', g, 'customer_id', g % 1000,
                                           'status', 'shipped',
                                           'total', CASE WHEN $1::int8 > 0 AND g % $1::int8 = 0 THEN 99.99 ELSE round((g % 10000) / 100.0, 2) END,
                                           'note', repeat('x', 64), '__pgt_row_id', g * 2654435761, '__pgt_count', 1)
                                      FROM h, generate_series(1, $3::int8) g)
                         SELECT id, pg_notify('pgtrickle_outbox_new', $2) FROM h"
                    ),
                    &[&changed_every, &outbox, &rows],
                )
                .await
                .unwrap()
                .get(0);
            id
        }
    };
    let relay = Relay::start(&db.url, "diffbench", &["--log-level", "warn"]);
    let s1 = write_snapshot(0).await;
    wait_committed(&c, "diffbench", "diffbench", s1, &relay).await;
    let s2 = write_snapshot(100).await;
    let t0 = Instant::now();
    wait_committed(&c, "diffbench", "diffbench", s2, &relay).await;
    let took = t0.elapsed();
    let rss_kb = relay.peak_rss_kb();
    let events = read_jsonl(&path).len();
    let t0 = Instant::now();
    let read = c
        .query(
            "SELECT row_data FROM pgtrickle.outbox_delta_rows_diffbench WHERE outbox_id = $1 ORDER BY row_num",
            &[&s2],
        )
        .await
        .unwrap()
        .len();
    let read_took = t0.elapsed();
    assert_eq!(read as i64, rows);
    emit(json!({
        "bench": "snapshot_diff", "snapshot_rows": rows, "changed_rows": rows / 100, "events_emitted": events,
        "diff_seconds": took.as_secs_f64(), "read_snapshot_alone_seconds": read_took.as_secs_f64(),
        "relay_peak_rss_mb": (rss_kb as f64 / 1024.0 * 10.0).round() / 10.0,
        "form": "claim-check rows, keyed by __pgt_row_id",
    }));
    let _ = std::fs::remove_file(path);
}

/// The `many_pipelines` row: outbox tables and pipelines of one relay instance.
const MANY_PIPELINES: usize = 1_000;
/// Outbox rows per outbox before the relay starts, and delta rows in each (100 per pipeline).
const MANY_OUTBOX_ROWS: i64 = 10;
const MANY_ROWS_PER_OUTBOX_ROW: i64 = 10;
/// The relay's default `--max-db-connections`.
const MANY_MAX_DB_CONNECTIONS: i64 = 10;
const MANY_WAKEUP_SAMPLES: usize = 100;
const MANY_IDLE_SECONDS: u64 = 30;

/// A database of its own for a row, dropped afterwards. Not a [`TestDb`]: `scripts/test` drops
/// every `relay_e2e_*` database when it starts, which would end a run sharing the machine.
struct BenchDb {
    name: String,
    url: String,
}

impl BenchDb {
    async fn new(name: &str) -> Self {
        let admin = connect(&admin_url()).await;
        // Each on its own: neither may run in a multi-statement string.
        admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await.unwrap();
        admin.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
        let base = admin_url();
        let (head, tail) = base.rsplit_once('/').expect("PGTRICKLE_TEST_POSTGRES_URL must be a postgres:// URL");
        let query = tail.find('?').map(|q| &tail[q..]).unwrap_or("");
        Self { name: name.to_owned(), url: format!("{head}/{name}{query}") }
    }
}

impl Drop for BenchDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                if let Ok((c, conn)) = tokio_postgres::connect(&admin_url(), tokio_postgres::NoTls).await {
                    tokio::spawn(conn);
                    let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
                }
            });
        })
        .join();
    }
}

/// utime + stime of a process, in seconds (`/proc/<pid>/stat`, fields 14 and 15).
fn cpu_seconds(pid: u32, ticks_per_sec: f64) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let (utime, stime): (f64, f64) = (fields.get(11)?.parse().ok()?, fields.get(12)?.parse().ok()?);
    Some((utime + stime) / ticks_per_sec)
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// A sample's value in the relay's `/metrics` text (the first series of that name).
fn metric(relay: &Relay, name: &str) -> f64 {
    relay
        .get("/metrics")
        .1
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(f64::NAN)
}

fn newlines(path: &std::path::Path) -> usize {
    std::fs::read(path).map(|b| b.iter().filter(|&&c| c == b'\n').count()).unwrap_or(0)
}

/// 1,000 pipelines on one relay instance with the default connection budget: drain time of a
/// pre-filled backlog, peak connections, peak RSS, idle CPU and the NOTIFY wake-up latency of
/// an idle pipeline.
async fn bench_many_pipelines() {
    let n = MANY_PIPELINES;
    // The row shares the machine with PostgreSQL (and whatever else runs): note how busy it was.
    let loadavg = || {
        std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()))
            .unwrap_or(-1.0)
    };
    let load_at_start = loadavg();
    let r1 = |x: f64| (x * 10.0).round() / 10.0;
    let r2 = |x: f64| (x * 100.0).round() / 100.0;
    let db = BenchDb::new("pgtrickle_relay_bench_many").await;
    let c = connect(&db.url).await;
    assert!(run_cli(&db.url, &["migrate"]).0.success());
    let dir = std::env::temp_dir().join(format!("pgtrickle-relay-bench-{}-many", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let files: Vec<std::path::PathBuf> = (0..n).map(|i| dir.join(format!("mp{i}.jsonl"))).collect();
    let outboxes: Vec<String> = (0..n).map(|i| format!("outbox_mp{i}")).collect();

    // Setup in few round trips: pg_trickle's outbox shape (as `enable_outbox` creates it), 100
    // outboxes per transaction (each holds its new tables' locks until commit).
    let setup = Instant::now();
    c.batch_execute(
        "CREATE TABLE IF NOT EXISTS pgtrickle.pgt_outbox_config (
             stream_table_oid oid PRIMARY KEY, stream_table_name text NOT NULL,
             outbox_table_name text NOT NULL UNIQUE, retention_hours int NOT NULL DEFAULT 24,
             created_at timestamptz NOT NULL DEFAULT now(), last_drained_at timestamptz,
             last_drained_count bigint NOT NULL DEFAULT 0)",
    )
    .await
    .unwrap();
    for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
        let mut sql = String::new();
        for &i in chunk {
            sql.push_str(&format!(
                r#"CREATE TABLE pgtrickle."outbox_mp{i}" (
                       id bigserial PRIMARY KEY, pgt_id uuid NOT NULL DEFAULT gen_random_uuid(), refresh_id uuid,
                       created_at timestamptz NOT NULL DEFAULT now(), inserted_count bigint NOT NULL DEFAULT 0,
                       deleted_count bigint NOT NULL DEFAULT 0, is_claim_check boolean NOT NULL DEFAULT false, payload jsonb);
                   CREATE TABLE pgtrickle."outbox_delta_rows_mp{i}" (
                       outbox_id bigint NOT NULL, row_num bigint NOT NULL,
                       row_op text NOT NULL CHECK (row_op IN ('INSERT', 'DELETE')), row_data jsonb NOT NULL,
                       PRIMARY KEY (outbox_id, row_num));
                   INSERT INTO pgtrickle.pgt_outbox_config (stream_table_oid, stream_table_name, outbox_table_name)
                   VALUES ({}::int8::text::oid, 'mp{i}', 'outbox_mp{i}');
                "#,
                i + 1
            ));
        }
        c.batch_execute(&sql).await.unwrap();
    }
    eprintln!("[bench] many_pipelines: {n} outbox tables created after {:.1} s", setup.elapsed().as_secs_f64());
    // The backlog: MANY_OUTBOX_ROWS outbox rows of MANY_ROWS_PER_OUTBOX_ROW delta rows each, in
    // every outbox (pg_trickle's inline form), written in one round trip.
    c.batch_execute(&format!(
        "DO $$
         BEGIN
           FOR i IN 0..{last} LOOP
             EXECUTE format($f$INSERT INTO pgtrickle.%I (inserted_count, payload)
               SELECT {per}, (SELECT jsonb_agg(jsonb_build_object(
                          'order_id', (%s * {outbox_rows} + o) * {per} + r, 'customer_id', (o * 7 + r) %% 1000,
                          'status', 'shipped', 'total', round(((o + r) %% 10000) / 100.0, 2), 'currency', 'EUR',
                          'updated_at', '2026-11-27T12:00:00Z', 'note', repeat('x', 64),
                          '__pgt_row_id', ((%s * {outbox_rows} + o) * {per} + r) * 2654435761, '__pgt_count', 1))
                        FROM generate_series(1, {per}) r)
                 FROM generate_series(1, {outbox_rows}) o$f$, 'outbox_mp' || i, i, i);
           END LOOP;
         END $$",
        last = n - 1,
        per = MANY_ROWS_PER_OUTBOX_ROW,
        outbox_rows = MANY_OUTBOX_ROWS,
    ))
    .await
    .unwrap();
    eprintln!("[bench] many_pipelines: outboxes filled after {:.1} s", setup.elapsed().as_secs_f64());
    c.batch_execute("ANALYZE").await.unwrap();
    eprintln!("[bench] many_pipelines: analyzed after {:.1} s", setup.elapsed().as_secs_f64());
    // Every outbox is fresh: its last id is MANY_OUTBOX_ROWS.
    let last_ids: Vec<i64> = c
        .query_one(
            "SELECT array_agg(coalesce(pg_sequence_last_value(to_regclass(format('pgtrickle.%I', 'outbox_mp' || i || '_id_seq'))), 0)::int8)
               FROM generate_series(0, $1::int8 - 1) i",
            &[&(n as i64)],
        )
        .await
        .unwrap()
        .get(0);
    assert!(last_ids.iter().all(|&l| l == MANY_OUTBOX_ROWS), "every outbox holds its backlog");
    // The pipelines, registered and enabled in one round trip.
    let names: Vec<String> = (0..n).map(|i| format!("mp-{i}")).collect();
    let configs: Vec<Value> = (0..n)
        .map(|i| {
            json!({"stream_table": format!("mp{i}"), "sink_type": "file", "path": files[i].to_str().unwrap(),
                   "delta_mode": "snapshot"})
        })
        .collect();
    c.batch_execute("BEGIN").await.unwrap();
    c.execute(
        "SELECT pgtrickle.set_relay_outbox(p.name, config => p.config) FROM unnest($1::text[], $2::jsonb[]) AS p(name, config)",
        &[&names, &configs],
    )
    .await
    .unwrap();
    c.execute("SELECT pgtrickle.enable_relay(p.name) FROM unnest($1::text[]) AS p(name)", &[&names]).await.unwrap();
    c.batch_execute("COMMIT").await.unwrap();
    let setup_secs = setup.elapsed().as_secs_f64();
    eprintln!("[bench] many_pipelines: {n} outboxes and pipelines set up in {setup_secs:.1} s");

    // The relay's connections to this database, every ~100 ms for the whole run.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let peak = Arc::new(Mutex::new((0i64, Vec::<(String, i64)>::new(), 0u64)));
    let sampler = {
        let (url, stop, peak) = (db.url.clone(), stop.clone(), peak.clone());
        tokio::spawn(async move {
            let c = connect(&url).await;
            while !stop.load(Ordering::SeqCst) {
                let rows = c
                    .query(
                        "SELECT application_name, count(*) FROM pg_stat_activity
                          WHERE application_name LIKE 'pgtrickle-relay%' AND datname = current_database()
                          GROUP BY 1 ORDER BY 1",
                        &[],
                    )
                    .await
                    .unwrap();
                let by_name: Vec<(String, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
                let total: i64 = by_name.iter().map(|(_, k)| k).sum();
                {
                    let mut p = peak.lock().unwrap();
                    if total > p.0 {
                        (p.0, p.1) = (total, by_name);
                    }
                    p.2 += 1;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    // Drain: from the relay's start until every committed offset reached its outbox's last id.
    let t0 = Instant::now();
    // Relay::start polls /readyz with thread sleeps: off the runtime, so the sampler keeps going.
    let url = db.url.clone();
    let mut relay = tokio::task::spawn_blocking(move || {
        // Defaults for an instance (Relay::start's test settings put back): discovery every 5 s.
        Relay::start(&url, "many", &["--log-level", "warn", "--discovery-interval", "5s"])
    })
    .await
    .unwrap();
    let ready_secs = t0.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(120);
    // Where the drain time goes: when /health showed every pipeline owned, and the progress
    // every second (stderr).
    let (mut owned_all_secs, mut owned) = (None, 0);
    let (mut last_health, mut last_progress) = (Instant::now() - Duration::from_secs(1), Instant::now());
    loop {
        let done: i64 = c
            .query_one(
                "SELECT count(*) FROM pgtrickle.relay_consumer_offsets WHERE relay_group_id = 'many' AND last_change_id >= $1",
                &[&MANY_OUTBOX_ROWS],
            )
            .await
            .unwrap()
            .get(0);
        if owned_all_secs.is_none() && last_health.elapsed() >= Duration::from_millis(200) {
            last_health = Instant::now();
            owned = relay.health()["pipelines_owned"].as_u64().unwrap_or(0);
            if owned == n as u64 {
                owned_all_secs = Some(t0.elapsed().as_secs_f64());
            }
        }
        if last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = Instant::now();
            eprintln!(
                "[bench] many_pipelines: {:.1} s: {done} of {n} pipelines drained, {owned} owned (/health)",
                t0.elapsed().as_secs_f64()
            );
        }
        if done == n as i64 {
            break;
        }
        assert!(Instant::now() < deadline, "relay did not drain ({done} of {n} pipelines):\n{}", relay.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain_secs = t0.elapsed().as_secs_f64();
    let drain_cpu = cpu_seconds(relay.pid, clock_ticks()).unwrap();
    let drain_borrows = metric(&relay, "pgtrickle_relay_db_pool_wait_seconds_count");
    let drain_wait = metric(&relay, "pgtrickle_relay_db_pool_wait_seconds_sum");
    let expected_lines = (MANY_OUTBOX_ROWS * MANY_ROWS_PER_OUTBOX_ROW) as usize;
    let short: Vec<usize> = (0..n).filter(|&i| newlines(&files[i]) != expected_lines).collect();
    assert!(short.is_empty(), "{} files without exactly {expected_lines} lines, e.g. mp{}", short.len(), short[0]);
    let health = eventually(Duration::from_secs(30), "the instance owns every pipeline", || async {
        let h = relay.health();
        (h["pipelines_owned"] == n).then_some(h)
    })
    .await;
    eprintln!("[bench] many_pipelines: drained in {drain_secs:.2} s");

    // Idle: everything owned and relayed; the relay's CPU over MANY_IDLE_SECONDS (and that of
    // its PostgreSQL backends, for the database side of being idle).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ticks = clock_ticks();
    let pg_before: HashMap<u32, f64> = c
        .query(
            "SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'pgtrickle-relay%' AND datname = current_database()",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .filter_map(|r| {
            let pid = r.get::<_, i32>(0) as u32;
            cpu_seconds(pid, ticks).map(|s| (pid, s))
        })
        .collect();
    let borrows0 = metric(&relay, "pgtrickle_relay_db_pool_wait_seconds_count");
    let (cpu0, w0) = (cpu_seconds(relay.pid, ticks).unwrap(), Instant::now());
    tokio::time::sleep(Duration::from_secs(MANY_IDLE_SECONDS)).await;
    let (cpu1, wall) = (cpu_seconds(relay.pid, ticks).unwrap(), w0.elapsed().as_secs_f64());
    let idle_borrows = (metric(&relay, "pgtrickle_relay_db_pool_wait_seconds_count") - borrows0) / wall;
    // Resident memory now, beside the peak (VmHWM): what idling with every pipeline owned costs.
    let idle_rss_kb: f64 = std::fs::read_to_string(format!("/proc/{}/status", relay.pid))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:").and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()))
        .unwrap_or(f64::NAN);
    let pg_cpu: f64 = pg_before.iter().filter_map(|(p, s0)| cpu_seconds(*p, ticks).map(|s1| s1 - s0)).sum();
    let idle_cpu = (cpu1 - cpu0) / wall * 100.0;
    let idle_pg_cpu = (pg_cpu / wall * 100.0).max(0.0);
    eprintln!("[bench] many_pipelines: idle CPU {idle_cpu:.2} % (PostgreSQL backends {idle_pg_cpu:.2} %)");

    // Wake-up: one new outbox row (with its NOTIFY, as a refresh writes it) in a random idle
    // outbox, until the pipeline's file has the new line; a different pipeline every time.
    let mut order: Vec<usize> = (0..n).collect();
    fastrand::shuffle(&mut order);
    let mut wakeups = Vec::with_capacity(MANY_WAKEUP_SAMPLES);
    for &i in order.iter().take(MANY_WAKEUP_SAMPLES) {
        tokio::time::sleep(Duration::from_millis(fastrand::u64(50..150))).await;
        let (outbox, file) = (&outboxes[i], &files[i]);
        let before = std::fs::metadata(file).unwrap().len();
        let t = Instant::now();
        c.execute(
            &format!(
                "WITH w AS (INSERT INTO pgtrickle.\"{outbox}\" (inserted_count, payload) VALUES (1, $1) RETURNING id)
                 SELECT pg_notify('pgtrickle_outbox_new', $2) FROM w"
            ),
            &[&json!([{"order_id": i, "status": "woken", "__pgt_row_id": i, "__pgt_count": 1}]), outbox],
        )
        .await
        .unwrap();
        let deadline = t + Duration::from_secs(60);
        while std::fs::metadata(file).unwrap().len() == before {
            assert!(Instant::now() < deadline, "pipeline mp-{i} did not relay its new row:\n{}", relay.stderr());
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        wakeups.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let rss_kb = relay.peak_rss_kb();
    stop.store(true, Ordering::SeqCst);
    sampler.await.unwrap();
    relay.terminate();
    // Every woken pipeline wrote exactly its one new line.
    for &i in order.iter().take(MANY_WAKEUP_SAMPLES) {
        assert_eq!(newlines(&files[i]), expected_lines + 1, "mp{i}: one new line");
    }
    let _ = std::fs::remove_dir_all(&dir);
    wakeups.sort_by(|a, b| a.total_cmp(b));
    eprintln!(
        "[bench] many_pipelines: wake-ups (ms, sorted): {:?}",
        wakeups.iter().map(|w| r1(*w)).collect::<Vec<_>>()
    );
    let pct = |p: f64| (wakeups[((wakeups.len() as f64 - 1.0) * p).round() as usize] * 10.0).round() / 10.0;
    let (peak_connections, at_peak, samples) = peak.lock().unwrap().clone();
    emit(json!({
        "bench": "many_pipelines", "pipelines": n, "rows_per_pipeline": MANY_OUTBOX_ROWS * MANY_ROWS_PER_OUTBOX_ROW,
        "outbox_rows_per_pipeline": MANY_OUTBOX_ROWS, "setup_seconds": r1(setup_secs),
        "drain_seconds": (drain_secs * 1000.0).round() / 1000.0,
        "drain_breakdown_seconds": {"ready": r2(ready_secs), "owned_all": owned_all_secs.map(r2)},
        "drain_relay_cpu_seconds": r2(drain_cpu),
        "drain_pool_borrows": drain_borrows, "drain_pool_wait_mean_ms": r2(drain_wait / drain_borrows * 1000.0),
        "peak_connections": peak_connections,
        "peak_connections_by_application_name": at_peak.into_iter().map(|(a, k)| (a, json!(k))).collect::<serde_json::Map<String, Value>>(),
        "connection_samples": samples,
        "max_db_connections": MANY_MAX_DB_CONNECTIONS,
        "peak_rss_mb": r1(rss_kb as f64 / 1024.0), "idle_rss_mb": r1(idle_rss_kb / 1024.0),
        "idle_cpu_percent": r2(idle_cpu), "idle_seconds": MANY_IDLE_SECONDS,
        "idle_pg_backends_cpu_percent": r2(idle_pg_cpu), "idle_pool_borrows_per_sec": r1(idle_borrows),
        "wakeup_ms": {"p50": pct(0.50), "p99": pct(0.99), "max": pct(1.0), "samples": wakeups.len()},
        "pipelines_owned": health["pipelines_owned"], "pipelines_unowned": health["pipelines_unowned"],
        "host": {"cpus": std::thread::available_parallelism().map(|c| c.get()).unwrap_or(0),
                 "loadavg_1m_at_start": load_at_start, "loadavg_1m_at_end": loadavg()},
        "targets": {"connections": MANY_MAX_DB_CONNECTIONS, "drain_seconds": 10, "idle_cpu_percent": 1,
                    "wakeup_p99_ms": 100, "rss_mb": 128},
        "measured": "drain: relay start to every committed offset at its outbox's last id; connections: pg_stat_activity of this database, application_name pgtrickle-relay%, every 100 ms; idle CPU: utime+stime of the relay over the idle window after the drain, % of one core; wake-up: INSERT + NOTIFY sent to the new line in the pipeline's file (polled every 0.5 ms), 100 distinct random idle pipelines",
    }));
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rows: i64 = std::env::var("BENCH_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let which: Vec<String> = std::env::args().skip(1).collect();
    let wants = |name: &str| which.is_empty() || which.iter().any(|w| w == name || w == "all");
    let repeats: usize = std::env::var("BENCH_REPEATS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    if wants("nats") {
        bench_nats(rows, repeats).await;
    }
    if wants("nats-envelopes") {
        bench_nats_envelopes(rows, repeats).await;
    }
    if wants("inbox") {
        bench_inbox(rows).await;
    }
    if wants("webhook") {
        bench_webhook(rows).await;
    }
    if wants("redis") {
        bench_redis(rows).await;
    }
    if wants("kafka") {
        bench_kafka(rows, repeats).await;
    }
    if wants("nats-inbox") {
        bench_nats_to_inbox(rows.min(200_000)).await;
    }
    if wants("kafka-inbox") {
        bench_kafka_to_inbox(rows.min(200_000)).await;
    }
    if wants("redis-inbox") {
        bench_redis_to_inbox(rows.min(200_000)).await;
    }
    if wants("sqs-inbox") {
        // moto is the bound here (see bench_sqs): a small backlog.
        bench_sqs_to_inbox(
            std::env::var("BENCH_SQS_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(rows.min(2_000)),
        )
        .await;
    }
    if wants("rabbitmq-inbox") {
        bench_rabbitmq_to_inbox(rows.min(100_000)).await;
    }
    if wants("rabbitmq") {
        bench_rabbitmq(rows).await;
    }
    if wants("sqs") {
        // moto stores a queue in a Python list and slows down as it grows (~250 msg/s empty,
        // ~25 msg/s at 5,000 messages): a small run keeps the row minutes, not hours.
        bench_sqs(std::env::var("BENCH_SQS_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(rows.min(2_000))).await;
    }
    if wants("diff") {
        bench_diff(std::env::var("BENCH_DIFF_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000)).await;
    }
    if wants("many_pipelines") {
        bench_many_pipelines().await;
    }
}
