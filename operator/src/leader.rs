//! Lease-based leader election (`coordination.k8s.io/v1` Lease): one replica of the operator acts,
//! the others wait; a leader that cannot renew within the lease duration steps down (exits), and
//! a standby takes over once the lease expires.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

#[derive(Debug, Clone)]
pub struct LeaderConfig {
    pub namespace: String,
    pub lease_name: String,
    pub identity: String,
    pub lease_duration: Duration,
}

/// Whether a lease held by `holder`, last renewed at `renewed` for `duration_s`, can be taken by `me` at `now`.
pub fn can_take(holder: Option<&str>, renewed: Option<Timestamp>, duration_s: i32, me: &str, now: Timestamp) -> bool {
    match holder {
        None | Some("") => true,
        Some(h) if h == me => true,
        Some(_) => renewed.is_none_or(|r| r + SignedDuration::from_secs(i64::from(duration_s.max(1))) < now),
    }
}

/// One attempt to acquire or renew; `Ok(true)` when we hold the lease afterwards.
async fn try_hold(api: &Api<Lease>, cfg: &LeaderConfig) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let duration_s = cfg.lease_duration.as_secs().clamp(1, i32::MAX as u64) as i32;
    match api.get_opt(&cfg.lease_name).await? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(cfg.lease_name.clone()), ..ObjectMeta::default() },
                spec: Some(LeaseSpec {
                    holder_identity: Some(cfg.identity.clone()),
                    lease_duration_seconds: Some(duration_s),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
        Some(mut lease) => {
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            let holder = spec.holder_identity.clone();
            let renewed = spec.renew_time.as_ref().map(|t| t.0);
            let held_duration = spec.lease_duration_seconds.unwrap_or(duration_s);
            if !can_take(holder.as_deref(), renewed, held_duration, &cfg.identity, now) {
                return Ok(false);
            }
            if holder.as_deref() != Some(cfg.identity.as_str()) {
                spec.acquire_time = Some(MicroTime(now));
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                spec.holder_identity = Some(cfg.identity.clone());
            }
            spec.renew_time = Some(MicroTime(now));
            spec.lease_duration_seconds = Some(duration_s);
            // The resourceVersion read above makes this a compare-and-swap.
            match api.replace(&cfg.lease_name, &PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
    }
}

/// Waits until this replica holds the lease, then keeps renewing it in the background; `lost`
/// is cancelled when renewal fails for longer than the lease duration.
pub async fn lead(client: kube::Client, cfg: LeaderConfig, lost: CancellationToken) -> Result<(), kube::Error> {
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    let retry = (cfg.lease_duration / 3).max(Duration::from_millis(200));
    let mut waiting_logged = false;
    loop {
        match try_hold(&api, &cfg).await {
            Ok(true) => break,
            Ok(false) => {
                if !waiting_logged {
                    info!(lease = %cfg.lease_name, "another replica leads; standing by");
                    waiting_logged = true;
                }
            }
            Err(e) => warn!(lease = %cfg.lease_name, "leader election: {e}"),
        }
        tokio::select! {
            () = lost.cancelled() => return Ok(()),
            () = tokio::time::sleep(retry) => {}
        }
    }
    info!(lease = %cfg.lease_name, identity = %cfg.identity, "became the leader");
    tokio::spawn(async move {
        let mut last_ok = tokio::time::Instant::now();
        loop {
            tokio::select! {
                () = lost.cancelled() => return,
                () = tokio::time::sleep(retry) => {}
            }
            match try_hold(&api, &cfg).await {
                Ok(true) => last_ok = tokio::time::Instant::now(),
                Ok(false) => {
                    warn!(lease = %cfg.lease_name, "lost the lease to another replica; stepping down");
                    lost.cancel();
                    return;
                }
                Err(e) => {
                    warn!(lease = %cfg.lease_name, "cannot renew the lease: {e}");
                    if last_ok.elapsed() > cfg.lease_duration {
                        lost.cancel();
                        return;
                    }
                }
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_taken_only_when_free_ours_or_expired() {
        let now = Timestamp::from_second(1_000).unwrap_or(Timestamp::UNIX_EPOCH);
        let ago = |s: i64| Some(now - SignedDuration::from_secs(s));
        assert!(can_take(None, None, 15, "a", now));
        assert!(can_take(Some("a"), ago(1), 15, "a", now));
        assert!(!can_take(Some("b"), ago(5), 15, "a", now));
        assert!(can_take(Some("b"), ago(16), 15, "a", now));
        assert!(can_take(Some("b"), None, 15, "a", now));
    }
}
