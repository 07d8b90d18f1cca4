//! `relay-faults`: the fault-injection suite at full scale (`--ci` for the bounded variant).
//! Prints one JSON line per scenario, then the summary; exits non-zero if anything was lost or
//! doubled. Needs PostgreSQL and the nats-server binary (`scripts/faults` makes sure of both).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::ExitCode;

use relay_e2e::faults::{self, Scale};
use serde_json::{json, Value};

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let scale = if args.iter().any(|a| a == "--ci") { Scale::ci() } else { Scale::full() };
    let only: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
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
    scenario!("sigkill_owner", faults::sigkill_owner);
    scenario!("sigkill_owner_reverse", faults::sigkill_owner_reverse);
    scenario!("broker_outage", faults::broker_outage);
    scenario!("postgres_restart", faults::postgres_restart);
    scenario!("config_churn", faults::config_churn);
    scenario!("concurrent_writers", faults::concurrent_writers);
    scenario!("malformed_beside_healthy", faults::malformed_beside_healthy);
    let passed = results.iter().all(|v| v["lost"] == 0 && v["duplicates"] == 0);
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
