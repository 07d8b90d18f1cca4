//! Pure status mapping: the relay's status-table row for a pipeline → the RelayPipeline status,
//! and Kubernetes conditions that keep their transition time while unchanged.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use pgtrickle_relay_crds::{Phase, RelayPipelineStatus};
use relay_runtime::catalog::status::StatusRow;

/// A heartbeat older than this means the owner stopped reporting (the relay writes every few seconds).
pub const STALE_HEARTBEAT_SECONDS: f64 = 30.0;

/// Sets condition `type_` in `conditions`, keeping `lastTransitionTime` when its status did not change.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) {
    let status = if status { "True" } else { "False" }.to_owned();
    // Kubernetes requires a message string; older API servers reject an empty one as null.
    let message = if message.is_empty() { reason } else { message };
    let transition = conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    let cond = Condition {
        type_: type_.to_owned(),
        status,
        reason: reason.to_owned(),
        message: message.to_owned(),
        observed_generation: generation,
        last_transition_time: transition,
    };
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => *c = cond,
        None => conditions.push(cond),
    }
}

/// The pod (host) part of a relay worker id `<host>:<pid>`.
pub fn owner_pod(worker_id: &str) -> &str {
    worker_id.rsplit_once(':').map_or(worker_id, |(host, _)| host)
}

/// The phase of a pipeline from SQL's `enabled` and the relay's status row (if any).
pub fn phase(enabled: bool, row: Option<&StatusRow>) -> (Phase, String) {
    if !enabled {
        return (Phase::Disabled, "disabled in SQL (pgtrickle.enable_relay turns it on)".to_owned());
    }
    let Some(row) = row else {
        return (Phase::Pending, "no relay instance of the group has reported this pipeline yet".to_owned());
    };
    let owner = row.owner.as_deref().unwrap_or("");
    if row.heartbeat_age_seconds > STALE_HEARTBEAT_SECONDS {
        return (
            Phase::Pending,
            format!(
                "owner {owner} stopped reporting {:.0}s ago; waiting for another instance",
                row.heartbeat_age_seconds
            ),
        );
    }
    match row.state.as_str() {
        "running" => (Phase::Running, format!("relaying on {owner}")),
        "degraded" => (
            Phase::Degraded,
            format!("retrying on {owner}: {}", row.last_error.as_deref().unwrap_or("last attempt failed")),
        ),
        "failed" => (Phase::Failed, row.last_error.clone().unwrap_or_else(|| "failed".to_owned())),
        "starting" => (Phase::Pending, format!("starting on {owner}")),
        _ => (Phase::Pending, "released by its last owner; waiting for an instance".to_owned()),
    }
}

/// The whole RelayPipeline status, with conditions carried over from `previous`.
pub fn pipeline_status(
    enabled: bool,
    row: Option<&StatusRow>,
    generation: Option<i64>,
    previous: Option<&RelayPipelineStatus>,
    now: Timestamp,
) -> RelayPipelineStatus {
    let (phase, message) = phase(enabled, row);
    let mut conditions = previous.map(|p| p.conditions.clone()).unwrap_or_default();
    set_condition(
        &mut conditions,
        "Synced",
        true,
        "MirroredFromSql",
        "spec mirrors the SQL pipeline; SQL is the source of truth",
        generation,
        now,
    );
    set_condition(&mut conditions, "Ready", phase == Phase::Running, phase.as_str(), &message, generation, now);
    let degraded = matches!(phase, Phase::Degraded | Phase::Failed);
    set_condition(
        &mut conditions,
        "Degraded",
        degraded,
        if degraded { phase.as_str() } else { "Healthy" },
        if degraded { &message } else { "no error reported" },
        generation,
        now,
    );
    // An owner is shown only while it actually holds the pipeline.
    let owner =
        row.and_then(|r| r.owner.clone()).filter(|_| matches!(phase, Phase::Running | Phase::Degraded | Phase::Failed));
    RelayPipelineStatus {
        phase: Some(phase),
        owner_pod: owner.as_deref().map(|o| owner_pod(o).to_owned()),
        owner,
        committed_offset: row.and_then(|r| r.committed_offset),
        lag_rows: row.and_then(|r| r.lag_rows),
        messages_total: row.map(|r| r.messages_total),
        errors_total: row.map(|r| r.errors_total),
        last_error: row.and_then(|r| r.last_error.clone()),
        last_heartbeat: row.and_then(|r| heartbeat_time(r.heartbeat_at)),
        observed_generation: generation,
        conditions,
    }
}

fn heartbeat_time(epoch_seconds: f64) -> Option<Time> {
    // Whole seconds: the status only changes when the heartbeat does, not on every read.
    Timestamp::from_second(epoch_seconds.floor() as i64).ok().map(Time)
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay_runtime::config::Direction;

    fn row(state: &str, age: f64) -> StatusRow {
        StatusRow {
            direction: Direction::Forward,
            name: "p".into(),
            state: state.into(),
            owner: Some("relay-7d9f-abc:42".into()),
            committed_offset: Some(17),
            lag_rows: Some(3),
            messages_total: 100,
            errors_total: 2,
            last_error: (state != "running").then(|| "nats: connection refused".to_owned()),
            heartbeat_age_seconds: age,
            heartbeat_at: 1_800_000_000.75,
        }
    }

    #[test]
    fn phases_follow_sql_and_the_status_row() {
        assert_eq!(phase(false, Some(&row("running", 1.0))).0, Phase::Disabled);
        assert_eq!(phase(true, None).0, Phase::Pending);
        assert_eq!(phase(true, Some(&row("running", 1.0))).0, Phase::Running);
        assert_eq!(phase(true, Some(&row("degraded", 1.0))).0, Phase::Degraded);
        assert_eq!(phase(true, Some(&row("failed", 1.0))).0, Phase::Failed);
        assert_eq!(phase(true, Some(&row("starting", 1.0))).0, Phase::Pending);
        assert_eq!(phase(true, Some(&row("stopped", 1.0))).0, Phase::Pending);
        let (p, msg) = phase(true, Some(&row("running", 120.0)));
        assert_eq!(p, Phase::Pending, "a silent owner is not Running");
        assert!(msg.contains("stopped reporting"), "{msg}");
    }

    #[test]
    fn status_carries_owner_pod_offset_lag_and_conditions() {
        let now = Timestamp::from_second(1_800_000_100).unwrap_or(Timestamp::UNIX_EPOCH);
        let s = pipeline_status(true, Some(&row("running", 1.0)), Some(3), None, now);
        assert_eq!(s.phase, Some(Phase::Running));
        assert_eq!(s.owner_pod.as_deref(), Some("relay-7d9f-abc"));
        assert_eq!((s.committed_offset, s.lag_rows, s.messages_total), (Some(17), Some(3), Some(100)));
        assert_eq!(s.last_heartbeat.as_ref().map(|t| t.0.as_second()), Some(1_800_000_000));
        let ready = s.conditions.iter().find(|c| c.type_ == "Ready").map(|c| c.status.as_str());
        assert_eq!(ready, Some("True"));
        assert!(s.conditions.iter().all(|c| c.observed_generation == Some(3)));

        // Degraded: Ready flips (new transition time), Synced keeps its old one.
        let later = Timestamp::from_second(1_800_000_200).unwrap_or(Timestamp::UNIX_EPOCH);
        let d = pipeline_status(true, Some(&row("degraded", 1.0)), Some(3), Some(&s), later);
        let get = |st: &RelayPipelineStatus, t: &str| st.conditions.iter().find(|c| c.type_ == t).cloned();
        assert_eq!(get(&d, "Synced").map(|c| c.last_transition_time.0), Some(now));
        assert_eq!(get(&d, "Ready").map(|c| (c.status, c.last_transition_time.0)), Some(("False".into(), later)));
        let deg = get(&d, "Degraded");
        assert_eq!(deg.as_ref().map(|c| c.status.as_str()), Some("True"));
        assert!(deg.is_some_and(|c| c.message.contains("connection refused")));

        // Disabled: no owner shown.
        let off = pipeline_status(false, Some(&row("stopped", 1.0)), Some(4), Some(&d), later);
        assert_eq!((off.phase, off.owner_pod), (Some(Phase::Disabled), None));
    }

    #[test]
    fn owner_pod_is_the_host_part() {
        assert_eq!(owner_pod("relay-0:12"), "relay-0");
        assert_eq!(owner_pod("plain"), "plain");
    }
}
