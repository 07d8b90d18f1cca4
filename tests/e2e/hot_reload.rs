//! Hot reload through `LISTEN pgtrickle_relay_config`: disable, enable, config change and
//! delete each take effect in under a second, without a restart.

use std::time::{Duration, Instant};

use relay_e2e::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_enable_change_delete_apply_within_a_second() {
    let (db, c, outbox) = db_with_outbox("reload").await;
    c.batch_execute(
        r#"SELECT pgtrickle.set_relay_outbox('reload', config => '{"stream_table": "reload", "sink_type": "stdout", "delta_mode": "snapshot"}'::jsonb);
           SELECT pgtrickle.enable_relay('reload');"#,
    )
    .await
    .unwrap();
    // A long discovery interval: only notifications can make these changes fast.
    let relay = Relay::start(&db.url, "default", &["--discovery-interval", "60s"]);
    write_inline(&c, &outbox, Some(json!([{"n": 1}]))).await;
    relay.wait_for_messages(1, Duration::from_secs(10)).await;
    assert!(lock_holder(&c, "default", "reload").await.is_some());

    // disable_relay: the worker stops and releases its lock.
    let disable_took = time_until_released(&c, "SELECT pgtrickle.disable_relay('reload')").await;
    assert!(disable_took < Duration::from_secs(1), "disable took {disable_took:?}");
    write_inline(&c, &outbox, Some(json!([{"n": 2}]))).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(relay.messages().len(), 1, "a disabled pipeline relays nothing");

    // enable_relay: resumes where it stopped.
    let t = Instant::now();
    c.execute("SELECT pgtrickle.enable_relay('reload')", &[]).await.unwrap();
    let msgs = relay.wait_for_messages(2, Duration::from_secs(5)).await;
    let enable_took = t.elapsed();
    assert!(enable_took < Duration::from_secs(1), "enable took {enable_took:?}\n{}", relay.stderr());
    assert_eq!(msgs[1]["payload"], json!({"n": 2}));

    // Config change: a new subject template applies to the next rows. A row written in the
    // same instant may still leave under the old config (the running worker can be mid-batch),
    // so rows keep coming until the new subject shows; that must happen within a second.
    let t = Instant::now();
    c.batch_execute(
        r#"SELECT pgtrickle.set_relay_outbox('reload', config => '{"stream_table": "reload", "sink_type": "stdout", "subject_template": "changed.{op}", "delta_mode": "snapshot"}'::jsonb)"#,
    )
    .await
    .unwrap();
    let mut n = 3;
    let change_took = loop {
        write_inline(&c, &outbox, Some(json!([{"n": n}]))).await;
        n += 1;
        tokio::time::sleep(Duration::from_millis(25)).await;
        if relay.messages().iter().any(|m| m["subject"] == "changed.insert") {
            break t.elapsed();
        }
        assert!(t.elapsed() < Duration::from_secs(5), "the new config never applied:\n{}", relay.stderr());
    };
    assert!(change_took < Duration::from_secs(1), "config change took {change_took:?}\n{}", relay.stderr());
    let msgs = relay.wait_for_messages(n as usize - 1, Duration::from_secs(5)).await;
    let keys: std::collections::BTreeSet<_> =
        msgs.iter().map(|m| m["dedup_key"].as_str().unwrap().to_owned()).collect();
    assert_eq!(keys.len(), msgs.len(), "no message relayed twice by the restart: {msgs:?}");
    // Once the new config is live it stays live: every later row has the new subject.
    let first_new = msgs.iter().position(|m| m["subject"] == "changed.insert").unwrap();
    assert!(msgs[first_new..].iter().all(|m| m["subject"] == "changed.insert"), "{msgs:?}");

    // delete_relay: stops, releases, and the status row goes away.
    let delete_took = time_until_released(&c, "SELECT pgtrickle.delete_relay('reload')").await;
    assert!(delete_took < Duration::from_secs(1), "delete took {delete_took:?}");
    eventually(Duration::from_secs(5), "status row removed", || async {
        let n: i64 = c
            .query_one("SELECT count(*) FROM pgtrickle.relay_pipeline_status WHERE name = 'reload'", &[])
            .await
            .unwrap()
            .get(0);
        (n == 0).then_some(())
    })
    .await;
    assert_eq!(relay.health()["pipelines_owned"], 0);
}

/// Runs `sql` and measures how long until no session holds the pipeline's lock.
async fn time_until_released(c: &tokio_postgres::Client, sql: &str) -> Duration {
    let t = Instant::now();
    c.execute(sql, &[]).await.unwrap();
    eventually(Duration::from_secs(5), "lock released", || async {
        lock_holder(c, "default", "reload").await.is_none().then_some(())
    })
    .await;
    t.elapsed()
}
