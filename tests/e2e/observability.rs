//! /health, /metrics, /livez, /readyz, the status table, `check` and `pipelines`, with bad
//! pipelines beside a healthy one (each error reported for its pipeline alone), and no secret
//! anywhere a person or a scraper can see.

use std::time::Duration;

use relay_e2e::*;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_pipelines_are_reported_alone_and_healthy_ones_keep_running() {
    let (db, c, outbox) = db_with_outbox("good").await;
    c.batch_execute(
        r#"SELECT pgtrickle.set_relay_outbox('good', config => '{"stream_table": "good", "sink_type": "stdout"}'::jsonb);
           SELECT pgtrickle.set_relay_outbox('no-table', config => '{"stream_table": "does_not_exist", "sink_type": "stdout"}'::jsonb);"#,
    )
    .await
    .unwrap();
    // Configs the SQL call now refuses, stored as they could have been before it checked them.
    let bad = [
        ("bad-sink", r#"{"stream_table": "good", "sink_type": "carrier-pigeon"}"#),
        ("secret-nats", r#"{"stream_table": "good", "sink_type": "kafka", "kafka_sasl_password": "hunter2-secret"}"#),
        ("not-an-object", "[1, 2]"),
        ("typo", r#"{"stream_table": "good", "sink_type": "stdout", "formatt": "json"}"#),
    ];
    for (name, config) in bad {
        let refused = c
            .execute("SELECT pgtrickle.set_relay_outbox($1, config => $2::text::jsonb)", &[&name, &config])
            .await
            .expect_err("the SQL call refuses it");
        assert!(refused
            .as_db_error()
            .unwrap()
            .message()
            .starts_with(&format!("relay.invalid_config: pipeline '{name}': ")));
        store_unchecked(&c, "relay_outbox_config", name, config).await;
    }
    let relay = Relay::start(&db.url, "default", &[]);
    let id = write_inline(&c, &outbox, Some(json!([{"ok": true}]))).await;
    let msgs = relay.wait_for_messages(1, Duration::from_secs(10)).await;
    assert_eq!(msgs[0]["payload"], json!({"ok": true}));
    // Printed is not yet committed: the batch metrics are recorded at the commit.
    eventually(Duration::from_secs(10), "batch committed", || async {
        (committed_offset(&c, "default", "good").await == Some(id)).then_some(())
    })
    .await;

    let health = eventually(Duration::from_secs(10), "all six pipelines in /health", || async {
        let h = relay.health();
        (h["pipelines"].as_array().unwrap().len() == 6).then_some(h)
    })
    .await;
    assert_eq!(health["status"], "degraded");
    assert_eq!(health["pipelines_owned"], 6);
    assert!(health["uptime_seconds"].is_u64());
    let by_name =
        |n: &str| -> Value { health["pipelines"].as_array().unwrap().iter().find(|p| p["name"] == n).unwrap().clone() };
    assert_eq!(by_name("good")["state"], "running");
    assert_eq!(by_name("bad-sink")["state"], "failed");
    assert!(by_name("bad-sink")["last_error"].as_str().unwrap().contains("unknown sink type 'carrier-pigeon'"));
    assert!(by_name("no-table")["last_error"].as_str().unwrap().contains("outbox_does_not_exist does not exist"));
    assert!(by_name("not-an-object")["last_error"].as_str().unwrap().contains("JSON object"));
    assert!(by_name("secret-nats")["last_error"].as_str().unwrap().contains("kafka"));
    let typo = "unknown key 'formatt' for a stdout sink; did you mean 'format'?";
    assert_eq!(by_name("typo")["state"], "failed");
    assert!(by_name("typo")["last_error"].as_str().unwrap().contains(typo), "{health}");

    // The same errors are in the status table for operators and the Kubernetes operator.
    let rows = c
        .query("SELECT name, state, last_error FROM pgtrickle.relay_pipeline_status ORDER BY name", &[])
        .await
        .unwrap();
    let failed: Vec<String> = rows.iter().filter(|r| r.get::<_, String>(1) == "failed").map(|r| r.get(0)).collect();
    assert_eq!(failed, vec!["bad-sink", "no-table", "not-an-object", "secret-nats", "typo"]);

    let (code, metrics) = eventually(Duration::from_secs(10), "lag and batch metrics", || async {
        let (code, m) = relay.get("/metrics");
        (m.contains(r#"pgtrickle_relay_lag_rows{pipeline="good"} 0"#)
            && m.contains("pgtrickle_relay_batch_duration_seconds_bucket"))
        .then_some((code, m))
    })
    .await;
    assert_eq!(code, 200);
    assert!(
        metrics.contains(r#"pgtrickle_relay_messages_published_total{direction="forward",pipeline="good"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"pgtrickle_relay_pipeline_healthy{direction="forward",pipeline="bad-sink"} 0"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"pgtrickle_relay_pipeline_healthy{direction="forward",pipeline="good"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains("pgtrickle_relay_pipelines_owned 6"), "{metrics}");
    assert!(
        metrics.contains(r#"pgtrickle_relay_pipeline_healthy{direction="forward",pipeline="typo"} 0"#),
        "{metrics}"
    );
    assert!(metrics.contains("pgtrickle_relay_batch_duration_seconds_bucket"), "{metrics}");
    assert!(metrics.contains(r#"pgtrickle_relay_lag_rows{pipeline="good"} 0"#), "{metrics}");
    // Each pipeline's state (one-hot), its owner and why it could not start.
    let state = |p: &str, s: &str, v: u8| {
        format!(r#"pgtrickle_relay_pipeline_state{{direction="forward",pipeline="{p}",state="{s}"}} {v}"#)
    };
    for expected in [
        state("good", "running", 1),
        state("good", "failed", 0),
        state("bad-sink", "failed", 1),
        state("bad-sink", "running", 0),
        state("no-table", "failed", 1),
    ] {
        assert!(metrics.contains(&expected), "{expected}: {metrics}");
    }
    let owner = health["worker_id"].as_str().unwrap();
    assert!(
        metrics.contains(&format!(
            r#"pgtrickle_relay_pipeline_owner_info{{direction="forward",owner="{owner}",pipeline="good"}} 1"#
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"pgtrickle_relay_start_errors_total{direction="forward",error_kind="permanent",pipeline="no-table"}"#
        ),
        "{metrics}"
    );
    // The stdout sink confirmed the message: one broker-ack latency observed.
    assert!(
        metrics.contains(r#"pgtrickle_relay_broker_ack_duration_seconds_count{backend="stdout",pipeline="good"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains("process_resident_memory_bytes"), "{metrics}");
    assert_eq!(relay.get("/livez").0, 200);
    assert_eq!(relay.get("/readyz").0, 200);

    // `check` names each bad pipeline and exits non-zero.
    let (status, out, _) = run_cli(&db.url, &["check"]);
    assert!(!status.success());
    assert!(out.contains("ok     good"), "{out}");
    assert!(out.contains("ERROR  bad-sink") && out.contains("carrier-pigeon"), "{out}");
    assert!(out.contains(&format!("ERROR  typo (forward, enabled): pipeline 'typo': {typo}")), "{out}");
    assert!(out.contains("6 pipeline(s) checked, 5 invalid"), "{out}");

    // `pipelines list --json` shows state and errors; `show` redacts the secret.
    let (status, out, err) = run_cli(&db.url, &["pipelines", "list", "--json"]);
    assert!(status.success(), "{err}");
    let list: Value = serde_json::from_str(&out).unwrap();
    let good = list.as_array().unwrap().iter().find(|p| p["name"] == "good").unwrap();
    assert_eq!(good["state"], "running");
    assert_eq!(good["messages_total"], 1);
    let (_, shown, _) = run_cli(&db.url, &["pipelines", "show", "secret-nats"]);
    assert!(shown.contains("\"kafka_sasl_password\": \"***\""), "{shown}");

    // The secret never leaves the catalog table.
    let everything = format!("{}{}{}{}{}", relay.get("/health").1, metrics, relay.full_stderr(), out, shown);
    assert!(!everything.contains("hunter2"), "a secret leaked");

    // Fixing the config brings the pipeline up without a restart.
    c.batch_execute(r#"SELECT pgtrickle.set_relay_outbox('bad-sink', config => '{"stream_table": "good", "sink_type": "stdout", "subject_template": "fixed.{op}"}'::jsonb)"#)
        .await
        .unwrap();
    eventually(Duration::from_secs(5), "fixed pipeline running", || async {
        let h = relay.health();
        let p = h["pipelines"].as_array().unwrap().iter().find(|p| p["name"] == "bad-sink").cloned();
        p.filter(|p| p["state"] == "running").map(|_| ())
    })
    .await;
    let msgs = relay.wait_for_messages(2, Duration::from_secs(10)).await;
    assert!(msgs.iter().any(|m| m["subject"] == "fixed.insert"), "{msgs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_requires_a_postgres_url_and_reports_unreachable_databases() {
    let out = std::process::Command::new(relay_bin())
        .env_remove("PGTRICKLE_RELAY_POSTGRES_URL")
        .arg("check")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("--postgres-url is required (or set PGTRICKLE_RELAY_POSTGRES_URL)"));
    let port = free_port();
    let (status, _, err) = run_cli(&format!("postgres://relay:topsecret@127.0.0.1:{port}/x"), &["check"]);
    assert!(!status.success());
    assert!(err.contains("cannot connect to PostgreSQL at postgres://relay:***@127.0.0.1"), "{err}");
    assert!(!err.contains("topsecret"));
    let out = std::process::Command::new(relay_bin()).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("pgtrickle-relay "));
}

/// An idle, caught-up pipeline writes nothing itself; the coordinator renews its status row's
/// heartbeat (for every owned pipeline at once), so the operator does not count it as stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_pipelines_status_heartbeat_keeps_being_renewed() {
    let (db, c, outbox) = db_with_outbox("quiet").await;
    c.batch_execute(r#"SELECT pgtrickle.set_relay_outbox('quiet', config => '{"stream_table": "quiet", "sink_type": "stdout"}'::jsonb)"#)
        .await
        .unwrap();
    let relay = Relay::start(&db.url, "default", &[]);
    let id = write_inline(&c, &outbox, Some(json!([{"n": 1}]))).await;
    eventually(Duration::from_secs(10), "row committed", || async {
        (committed_offset(&c, "default", "quiet").await == Some(id)).then_some(())
    })
    .await;
    // The status row is written after the offset commit: it may not be there yet.
    let heartbeat = || async {
        let r = c
            .query_opt(
                "SELECT extract(epoch FROM heartbeat_at)::float8, state, lag_rows FROM pgtrickle.relay_pipeline_status
                  WHERE name = 'quiet' AND direction = 'forward'",
                &[],
            )
            .await
            .unwrap()?;
        Some((r.get::<_, f64>(0), r.get::<_, String>(1), r.get::<_, Option<i64>>(2)))
    };
    // Settled: the last status the worker wrote says caught up.
    let (first, _, _) = eventually(Duration::from_secs(10), "status caught up", || async {
        heartbeat().await.filter(|h| h.2 == Some(0))
    })
    .await;
    let (later, state, lag) = eventually(Duration::from_secs(15), "heartbeat renewed while idle", || async {
        heartbeat().await.filter(|h| h.0 > first)
    })
    .await;
    assert_eq!((state.as_str(), lag), ("running", Some(0)), "{}", relay.stderr());
    assert!(later - first <= 12.0, "renewed {:.1} s later", later - first);
}

/// The relay's stderr, run with `args` and stderr a pipe, once it has printed `until` (then it
/// is killed).
fn piped_stderr(args: &[&str], until: &str) -> String {
    let mut child = std::process::Command::new(relay_bin())
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = std::io::Read::read(&mut err, &mut buf) {
            if tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut out = Vec::new();
    while !String::from_utf8_lossy(&out).contains(until) {
        assert!(std::time::Instant::now() < deadline, "no '{until}' on stderr: {}", String::from_utf8_lossy(&out));
        if let Ok(chunk) = rx.recv_timeout(Duration::from_millis(100)) {
            out.extend(chunk);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    String::from_utf8(out).unwrap()
}

/// Logs written to a pipe or a file carry no ANSI colour escapes (log shippers and `grep` choke
/// on them); a terminal still gets colours; `--log-format json` stays one JSON object a line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_have_colour_escapes_only_on_a_terminal() {
    // A database that refuses the connection: the relay logs at once, at INFO and WARN.
    let unreachable = format!("postgres://relay@127.0.0.1:{}/x", free_port());
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let args = ["--postgres-url", &unreachable, "--metrics-addr", &metrics_addr, "run"];
    let until = "cannot connect to PostgreSQL";

    let text = piped_stderr(&args, until);
    assert!(text.contains("INFO") && text.contains("pgtrickle-relay starting"), "{text}");
    assert!(!text.contains("\x1b["), "escape codes in piped logs: {text:?}");

    let json_args = [&args[..4], &["--log-format", "json", "run"]].concat();
    let json = piped_stderr(&json_args, until);
    assert!(!json.contains('\x1b'), "escape codes in JSON logs: {json:?}");
    for line in json.lines().filter(|l| !l.is_empty()) {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{line}");
    }

    // On a terminal (a pseudo-terminal from util-linux `script`), the same logs are coloured.
    let command = format!("timeout 3 {} {}", relay_bin().display(), args.join(" "));
    let tty = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("util-linux `script` runs a command on a pseudo-terminal");
    let tty = String::from_utf8_lossy(&tty.stdout);
    assert!(tty.contains("pgtrickle-relay starting") && tty.contains("\x1b["), "no colours on a terminal: {tty:?}");

    // A relay whose stderr is a file (as the other tests start it), relaying a row.
    let (db, c, outbox) = db_with_outbox("plain_logs").await;
    c.batch_execute(r#"SELECT pgtrickle.set_relay_outbox('plain-logs', config => '{"stream_table": "plain_logs", "sink_type": "stdout"}'::jsonb)"#)
        .await
        .unwrap();
    let relay = Relay::start(&db.url, "default", &[]);
    write_inline(&c, &outbox, Some(json!([{"n": 1}]))).await;
    relay.wait_for_messages(1, Duration::from_secs(10)).await;
    let log = relay.full_stderr();
    assert!(log.contains("forward pipeline started"), "{log}");
    assert!(!log.contains('\x1b'), "escape codes in the log file: {log:?}");
}

/// Every forward message carries its outbox row's W3C trace context — a NATS header, a field of
/// a stdout line, the trace id of a pg inbox row — and a reverse source keeps an incoming
/// `traceparent`'s trace id in the inbox: one trace from the outbox row to the inbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_context_goes_from_the_outbox_row_through_nats_into_an_inbox() {
    let nats = relay_e2e::nats::NatsServer::start();
    nats.create_stream("TRACED", &["traced.>"]).await;
    let (db, c, outbox) = db_with_outbox("traced").await;
    create_inbox_table(&c, "public.direct_inbox").await;
    create_inbox_table(&c, "public.traced_inbox").await;
    let forward = [
        (
            "to-nats",
            json!({"stream_table": "traced", "sink_type": "nats", "nats_url": nats.url(), "subject_template": "traced.{op}"}),
        ),
        ("to-stdout", json!({"stream_table": "traced", "sink_type": "stdout"})),
        ("to-inbox", json!({"stream_table": "traced", "sink_type": "pg-inbox", "inbox_table": "public.direct_inbox"})),
    ];
    for (name, mut config) in forward {
        // One message per row written (not a diff between the rows as snapshots).
        config["delta_mode"] = json!("snapshot");
        c.execute("SELECT pgtrickle.set_relay_outbox($1, config => $2::jsonb)", &[&name, &config]).await.unwrap();
    }
    let back = json!({"source_type": "nats", "nats_url": nats.url(), "nats_stream": "TRACED", "inbox_table": "public.traced_inbox"});
    c.execute("SELECT pgtrickle.set_relay_inbox('back-in', config => $1::jsonb)", &[&back]).await.unwrap();
    let relay = Relay::start(&db.url, "default", &[]);
    write_inline(&c, &outbox, Some(json!([{"id": 1}, {"id": 2}, {"id": 3}]))).await;
    write_inline(&c, &outbox, Some(json!([{"id": 4}, {"id": 5}]))).await;

    let lines = relay.wait_for_messages(5, Duration::from_secs(15)).await;
    let stored = eventually(Duration::from_secs(15), "5 messages in JetStream", || async {
        let m = nats.stream_messages("TRACED").await;
        (m.len() == 5).then_some(m)
    })
    .await;
    let well_formed = |t: &str| {
        let parts: Vec<&str> = t.split('-').collect();
        parts.len() == 4
            && parts[0] == "00"
            && parts[1].len() == 32
            && parts[2].len() == 16
            && parts[3] == "01"
            && t.bytes().all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            && parts[1] != "0".repeat(32)
    };
    let mut by_key = std::collections::BTreeMap::new();
    for m in &stored {
        let tp = m.traceparent.clone().expect("a traceparent header on every NATS message");
        assert!(well_formed(&tp), "{tp}");
        by_key.insert(m.msg_id.clone().unwrap(), tp);
    }
    // One span per outbox row: its messages share it, the next row has its own.
    let row_of = |key: &str| key.rsplit_once(':').unwrap().0.to_owned();
    let rows: std::collections::BTreeMap<String, std::collections::BTreeSet<&String>> =
        by_key.iter().fold(Default::default(), |mut acc, (k, tp)| {
            acc.entry(row_of(k)).or_default().insert(tp);
            acc
        });
    assert_eq!(rows.len(), 2, "{by_key:#?}");
    assert!(rows.values().all(|tps| tps.len() == 1), "{by_key:#?}");
    let traces: std::collections::BTreeSet<_> = rows.values().flatten().collect();
    assert_eq!(traces.len(), 2, "each outbox row has its own trace: {by_key:#?}");
    // A stdout line has no headers: the same context is its last field.
    for line in &lines {
        let key = line["dedup_key"].as_str().unwrap();
        assert_eq!(line["traceparent"].as_str(), Some(by_key[key].as_str()), "{line}");
    }
    // The pg inbox sink and the NATS source into an inbox both keep the trace id.
    let trace_ids = |table: &'static str| {
        let c = &c;
        async move {
            eventually(Duration::from_secs(15), "5 inbox rows", || async move {
                let rows =
                    c.query(&format!("SELECT event_id, trace_id FROM {table} ORDER BY event_id"), &[]).await.unwrap();
                (rows.len() == 5).then(|| {
                    rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, Option<String>>(1))).collect::<Vec<_>>()
                })
            })
            .await
        }
    };
    for table in ["public.direct_inbox", "public.traced_inbox"] {
        for (event_id, trace_id) in trace_ids(table).await {
            let expected = by_key[&event_id].split('-').nth(1).unwrap().to_owned();
            assert_eq!(trace_id, Some(expected), "{table}: {event_id}");
        }
    }
}

/// `--otlp-endpoint`: the relay sends its spans (OTLP/HTTP JSON) to a real HTTP receiver, one
/// per outbox row published, with the trace and span ids of the `traceparent` its messages carry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_go_to_the_otlp_endpoint_with_the_ids_the_messages_carry() {
    let collector = relay_e2e::http::WebhookServer::start().await;
    let (db, c, outbox) = db_with_outbox("spanned").await;
    let config = json!({"stream_table": "spanned", "sink_type": "stdout", "delta_mode": "snapshot"});
    c.execute("SELECT pgtrickle.set_relay_outbox('spanned', config => $1::jsonb)", &[&config]).await.unwrap();
    let endpoint = format!("http://{}", collector.addr);
    let relay = Relay::start_with_env(
        &db.url,
        "default",
        &["--otlp-endpoint", &endpoint],
        &[("OTEL_BSP_SCHEDULE_DELAY", "200")],
    );
    write_inline(&c, &outbox, Some(json!([{"id": 1}, {"id": 2}]))).await;
    write_inline(&c, &outbox, Some(json!([{"id": 3}]))).await;
    let lines = relay.wait_for_messages(3, Duration::from_secs(15)).await;
    let carried: std::collections::BTreeSet<String> =
        lines.iter().map(|l| l["traceparent"].as_str().unwrap().to_owned()).collect();
    assert_eq!(carried.len(), 2, "one context per outbox row: {lines:?}");
    let exported = eventually(Duration::from_secs(15), "spans of both outbox rows at the collector", || {
        let spans: Vec<Value> = collector
            .accepted()
            .iter()
            .filter(|r| r.method == "POST")
            .flat_map(|r| {
                let body = r.json();
                body["resourceSpans"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|rs| rs["scopeSpans"].as_array().cloned().unwrap_or_default())
                    .flat_map(|ss| ss["spans"].as_array().cloned().unwrap_or_default())
                    .collect::<Vec<_>>()
            })
            .collect();
        let found: std::collections::BTreeSet<String> = spans
            .iter()
            .map(|s| format!("00-{}-{}-01", s["traceId"].as_str().unwrap_or(""), s["spanId"].as_str().unwrap_or("")))
            .collect();
        let complete = carried.is_subset(&found);
        async move { complete.then_some(spans) }
    })
    .await;
    let request = collector.accepted().into_iter().find(|r| r.method == "POST").unwrap();
    assert_eq!(request.header("content-type"), Some("application/json"));
    let span = &exported[0];
    assert_eq!(span["name"], "spanned publish", "{span:#}");
    let attribute =
        |key: &str| span["attributes"].as_array().unwrap().iter().find(|a| a["key"] == key).map(|a| a["value"].clone());
    assert_eq!(attribute("pgtrickle.pipeline"), Some(json!({"stringValue": "spanned"})), "{span:#}");
    assert_eq!(attribute("messaging.system"), Some(json!({"stringValue": "stdout"})), "{span:#}");
}
