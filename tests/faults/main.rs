//! `relay-faults`: the fault-injection suite at full scale (`--ci` for the bounded variant).
//! Prints one JSON line per scenario, then the summary; exits non-zero if anything was lost or
//! doubled. Needs PostgreSQL and the nats-server binary (`scripts/faults` makes sure of both).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::ExitCode;

use relay_e2e::fault_sources::{self, SOURCES};
use relay_e2e::fault_targets::{self, Backend};
use relay_e2e::faults::{self, Scale};
use serde_json::{json, Value};

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let scale = if args.iter().any(|a| a == "--ci") { Scale::ci() } else { Scale::full() };
    // `--backend kafka,redis`: the per-backend scenarios towards those targets only.
    let backend_arg = args.iter().position(|a| a == "--backend").map(|i| i + 1);
    let backends: Vec<Backend> = match backend_arg.and_then(|i| args.get(i)) {
        Some(list) => list
            .split(',')
            .map(|b| {
                Backend::parse(b).unwrap_or_else(|| {
                    panic!("unknown backend '{b}' (nats, kafka, redis, sqs, rabbitmq, webhook, pg-inbox)")
                })
            })
            .collect(),
        None => Backend::ALL.to_vec(),
    };
    let only: Vec<&String> = args
        .iter()
        .enumerate()
        .filter(|(i, a)| !a.starts_with("--") && Some(*i) != backend_arg)
        .map(|(_, a)| a)
        .collect();
    let wanted = |name: &str| only.is_empty() || only.iter().any(|o| *o == name);
    let started = std::time::Instant::now();
    let mut results: Vec<Value> = Vec::new();
    macro_rules! scenario {
        ($name:literal, $f:path) => {
            if wanted($name) {
                eprintln!("== {} ({} scale)", $name, scale.name);
                let v = $f(&scale).await;
                println!("{v}");
                results.push(v);
            }
        };
    }
    // Per backend: `sigkill_owner` and `broker_restart` towards every target, and from every
    // source into an inbox together with `postgres_restart`.
    macro_rules! per_backend {
        ($name:literal, $direction:literal, $backends:expr, $f:path) => {
            if wanted($name) {
                for backend in $backends.iter().filter(|b| backends.contains(b)) {
                    eprintln!("== {} {} {} ({} scale)", $name, $direction, backend.name(), scale.name);
                    let v = $f(*backend, &scale).await;
                    println!("{v}");
                    results.push(v);
                }
            }
        };
    }
    scenario!("sigkill_owner", faults::sigkill_owner);
    per_backend!("sigkill_owner", "→", Backend::ALL, fault_targets::sigkill_owner_to);
    per_backend!("sigkill_owner", "←", SOURCES, fault_sources::sigkill_owner_from);
    scenario!("broker_outage", faults::broker_outage);
    per_backend!("broker_restart", "→", Backend::ALL, fault_targets::broker_restart_to);
    // The webhook source has no broker of its own: the relay is the receiver.
    per_backend!("broker_restart", "←", SOURCES[..5], fault_sources::broker_restart_from);
    scenario!("postgres_restart", faults::postgres_restart);
    per_backend!("postgres_restart", "←", SOURCES, fault_sources::postgres_restart_from);
    scenario!("config_churn", faults::config_churn);
    scenario!("concurrent_writers", faults::concurrent_writers);
    scenario!("malformed_beside_healthy", faults::malformed_beside_healthy);
    // Nothing lost anywhere; no duplicate where the target deduplicates (elsewhere duplicates
    // are reported, each carrying its original's dedup id: `unexpected` is 0).
    let clean = |v: &Value| {
        v["lost"] == 0
            && v["unexpected"].as_u64().unwrap_or(0) == 0
            && (v["duplicates"] == 0 || v["target_deduplicates"] == false)
    };
    let passed = results.iter().all(clean);
    let lost: u64 = results.iter().map(|v| v["lost"].as_u64().unwrap_or(0)).sum();
    let duplicates: u64 = results.iter().map(|v| v["duplicates"].as_u64().unwrap_or(0)).sum();
    let summary = json!({
        "suite": "faults", "scale": scale.name, "passed": passed, "lost": lost, "duplicates": duplicates,
        "seconds": started.elapsed().as_secs(), "scenarios": results,
    });
    println!("{}", serde_json::to_string_pretty(&summary).unwrap());
    if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
