//! The fault-injection suite at CI scale (`scripts/faults` runs the same scenarios at full scale
//! and prints their JSON summary): every scenario counts at the destination.

use relay_e2e::fault_sources::{broker_restart_from, postgres_restart_from, sigkill_owner_from};
use relay_e2e::fault_targets::{broker_restart_to, sigkill_owner_to, Backend};
use relay_e2e::faults::{self, Scale};
use serde_json::Value;

fn no_loss_no_duplicates(v: &Value) {
    eprintln!("{v}");
    assert_eq!(v["lost"], 0, "rows lost: {v:#}");
    assert_eq!(v["duplicates"], 0, "visible duplicates: {v:#}");
    assert!(v["rows"].as_u64().unwrap_or(0) > 0, "nothing was streamed: {v:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_of_the_owner_repeatedly_loses_and_doubles_nothing() {
    let v = faults::sigkill_owner(&Scale::ci()).await;
    no_loss_no_duplicates(&v);
    assert_eq!(v["inbox"]["lost"], 0, "{v:#}");
    // Failover within the discovery interval (500 ms) + 1 s.
    let worst = v["failover_ms"]["max"].as_u64().unwrap();
    assert!(worst <= 1500, "failover took {worst} ms: {v:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_outage_degrades_then_resumes_without_a_restart() {
    let v = faults::broker_outage(&Scale::ci()).await;
    no_loss_no_duplicates(&v);
    assert!(v["degraded_after_ms"].is_u64(), "never reported degraded: {v:#}");
    assert_eq!(v["state_after"], "running", "{v:#}");
}

/// Where a 6 s outage is noticed well within it (NATS, Redis, the inbox's database: about 2 s
/// in, with room for a loaded machine), the pipeline showed `degraded` meanwhile, in either
/// direction.
fn outage_was_reported(backend: Backend, v: &Value) {
    if matches!(backend, Backend::Nats | Backend::Redis | Backend::PgInbox) {
        assert!(v["degraded_after_ms"].is_u64(), "the outage never showed as degraded: {v:#}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_postgres_crash_mid_stream_loses_nothing() {
    let v = faults::postgres_restart(&Scale::ci()).await;
    no_loss_no_duplicates(&v);
    assert_eq!(v["relay_process_survived"], true, "{v:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn config_churn_under_load_applies_within_a_second() {
    let v = faults::config_churn(&Scale::ci()).await;
    no_loss_no_duplicates(&v);
    for (step, ms) in v["applied_ms"].as_object().unwrap() {
        assert!(ms.as_u64().unwrap() < 1000, "{step} took {ms} ms: {v:#}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_concurrent_writers_with_out_of_order_commits_lose_nothing() {
    let v = faults::concurrent_writers(&Scale::ci()).await;
    no_loss_no_duplicates(&v);
    assert_eq!(v["relayed_rolled_back_rows"], 0, "{v:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_pipelines_beside_healthy_ones_only_fail_themselves() {
    let v = faults::malformed_beside_healthy(&Scale::ci()).await;
    no_loss_no_duplicates(&v);
    assert_eq!(v["healthy_running"], true, "{v:#}");
    let p = &v["pipelines"];
    let failed_with = |name: &str, needle: &str| {
        assert_eq!(p[name]["state"], "failed", "{name}: {v:#}");
        let err = p[name]["error"].as_str().unwrap_or("");
        assert!(err.contains(needle), "{name}: error {err:?} does not mention {needle:?}");
    };
    failed_with("bad-sink-type", "carrier-pigeon");
    failed_with("bad-batch-size", "batch_size");
    failed_with("missing-outbox", "no_such_table");
    failed_with("not-an-object", "object");
    assert_eq!(p["unreachable-broker"]["state"], "degraded", "{v:#}");
    assert_eq!(v["health_status"], "degraded", "{v:#}");
}

/// A forward scenario's count at `backend`: nothing lost; no duplicate where the target
/// deduplicates; elsewhere every copy carries its original's dedup id (`unexpected` is 0).
fn counted_at_the_target(backend: Backend, v: &Value) {
    eprintln!("{v}");
    assert_eq!(v["lost"], 0, "rows lost at {}: {v:#}", backend.name());
    assert_eq!(v["unexpected"], 0, "messages without a known dedup id at {}: {v:#}", backend.name());
    assert!(v["rows"].as_u64().unwrap_or(0) > 0, "nothing was streamed: {v:#}");
    if backend.deduplicates() {
        assert_eq!(v["duplicates"], 0, "{} deduplicates, yet: {v:#}", backend.name());
    }
}

/// SIGKILL the owner of a pipeline towards each backend: nothing lost; no duplicate where the
/// target deduplicates; elsewhere every copy carries its original's dedup id.
async fn sigkill_towards(backend: Backend) {
    let v = sigkill_owner_to(backend, &Scale::ci()).await;
    counted_at_the_target(backend, &v);
    let worst = v["failover_ms"]["max"].as_u64().unwrap();
    assert!(worst <= 1500, "failover took {worst} ms: {v:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_of_the_owner_towards_kafka_loses_nothing() {
    sigkill_towards(Backend::Kafka).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_of_the_owner_towards_redis_loses_and_doubles_nothing() {
    sigkill_towards(Backend::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_of_the_owner_towards_sqs_fifo_loses_and_doubles_nothing() {
    sigkill_towards(Backend::Sqs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_of_the_owner_towards_rabbitmq_loses_nothing() {
    sigkill_towards(Backend::Rabbitmq).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_of_the_owner_towards_a_webhook_loses_nothing() {
    sigkill_towards(Backend::Webhook).await;
}

/// Takes the broker of a pipeline towards each backend away and brings it back: nothing lost;
/// no duplicate where the target deduplicates; the pipeline runs again by itself.
async fn broker_restart_towards(backend: Backend) {
    let v = broker_restart_to(backend, &Scale::ci()).await;
    counted_at_the_target(backend, &v);
    assert_eq!(v["state_after"], "running", "{v:#}");
    outage_was_reported(backend, &v);
}

macro_rules! broker_restart_tests {
    ($($name:ident => $backend:expr),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $name() {
            broker_restart_towards($backend).await;
        }
    )*};
}

broker_restart_tests! {
    a_nats_restart_under_a_forward_pipeline_loses_and_doubles_nothing => Backend::Nats,
    a_kafka_outage_under_a_forward_pipeline_loses_nothing => Backend::Kafka,
    a_redis_restart_under_a_forward_pipeline_loses_and_doubles_nothing => Backend::Redis,
    an_sqs_outage_under_a_forward_pipeline_loses_and_doubles_nothing => Backend::Sqs,
    rabbitmq_connections_closed_under_a_forward_pipeline_lose_nothing => Backend::Rabbitmq,
    a_webhook_outage_under_a_forward_pipeline_loses_nothing => Backend::Webhook,
    an_inbox_database_crash_under_a_forward_pipeline_loses_and_doubles_nothing => Backend::PgInbox,
}

/// A reverse scenario's count: every message once in the inbox.
fn every_message_once_in_the_inbox(v: &serde_json::Value) {
    eprintln!("{v}");
    assert!(v["messages"].as_u64().unwrap_or(0) > 0, "nothing was published: {v:#}");
    assert_eq!(v["lost"], 0, "messages lost: {v:#}");
    assert_eq!(v["duplicates"], 0, "inbox rows doubled: {v:#}");
    assert_eq!(v["dead_letters"], 0, "{v:#}");
}

macro_rules! reverse_tests {
    ($scenario:ident: $($name:ident => $backend:expr),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $name() {
            let v = $scenario($backend, &Scale::ci()).await;
            every_message_once_in_the_inbox(&v);
            if let Some(state) = v.get("state_after") {
                assert_eq!(state, "running", "{v:#}");
                outage_was_reported($backend, &v);
            }
            if let Some(worst) = v["failover_ms"]["max"].as_u64() {
                assert!(worst <= 1500, "failover took {worst} ms: {v:#}");
            }
        }
    )*};
}

reverse_tests! { sigkill_owner_from:
    sigkill_of_the_owner_of_a_nats_inbox_pipeline_lands_every_message_once => Backend::Nats,
    sigkill_of_the_owner_of_a_kafka_inbox_pipeline_lands_every_message_once => Backend::Kafka,
    sigkill_of_the_owner_of_a_redis_inbox_pipeline_lands_every_message_once => Backend::Redis,
    sigkill_of_the_owner_of_an_sqs_inbox_pipeline_lands_every_message_once => Backend::Sqs,
    sigkill_of_the_owner_of_a_rabbitmq_inbox_pipeline_lands_every_message_once => Backend::Rabbitmq,
    sigkill_of_the_owner_of_a_webhook_receiver_lands_every_event_once => Backend::Webhook,
}

reverse_tests! { broker_restart_from:
    a_nats_restart_under_an_inbox_pipeline_lands_every_message_once => Backend::Nats,
    a_kafka_outage_under_an_inbox_pipeline_lands_every_message_once => Backend::Kafka,
    a_redis_restart_under_an_inbox_pipeline_lands_every_message_once => Backend::Redis,
    an_sqs_outage_under_an_inbox_pipeline_lands_every_message_once => Backend::Sqs,
    rabbitmq_connections_closed_under_an_inbox_pipeline_land_every_message_once => Backend::Rabbitmq,
}

reverse_tests! { postgres_restart_from:
    a_postgres_crash_under_a_nats_inbox_pipeline_lands_every_message_once => Backend::Nats,
    a_postgres_crash_under_a_kafka_inbox_pipeline_lands_every_message_once => Backend::Kafka,
    a_postgres_crash_under_a_redis_inbox_pipeline_lands_every_message_once => Backend::Redis,
    a_postgres_crash_under_an_sqs_inbox_pipeline_lands_every_message_once => Backend::Sqs,
    a_postgres_crash_under_a_rabbitmq_inbox_pipeline_lands_every_message_once => Backend::Rabbitmq,
    a_postgres_crash_under_a_webhook_receiver_lands_every_event_once => Backend::Webhook,
}
