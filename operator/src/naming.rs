//! Kubernetes names for mirrored pipelines: DNS-safe, unique per (direction, SQL name), stable.

use pgtrickle_relay_crds::PipelineDirection;
use sha2::{Digest, Sha256};

/// Longest name we produce: fits a label value, so the name can be selected on.
const MAX_NAME: usize = 63;

/// The RelayPipeline name for a SQL pipeline of a RelayGroup: `<group>-<pipeline>`, lowercased,
/// with anything outside `[a-z0-9-]` turned into `-`. When that loses information (case, other
/// characters, truncation) or the pipeline is a reverse one (a forward and a reverse pipeline may
/// share a SQL name), a short hash of the direction and exact name keeps it unique.
pub fn pipeline_object_name(relay_group: &str, direction: PipelineDirection, sql_name: &str) -> String {
    let safe = dns_label(sql_name);
    let lossless = safe == sql_name;
    let base = format!("{relay_group}-{safe}");
    if lossless && direction == PipelineDirection::Forward && base.len() <= MAX_NAME {
        return base;
    }
    let digest = Sha256::digest(format!("{}/{sql_name}", direction.as_str()).as_bytes());
    let suffix = hex::encode(&digest[..4]);
    let keep = MAX_NAME - suffix.len() - 1;
    let mut head: String = base.chars().take(keep).collect();
    while head.ends_with('-') {
        head.pop();
    }
    format!("{head}-{suffix}")
}

/// `s` lowercased with runs of characters outside `[a-z0-9]` turned into one `-`, trimmed.
pub fn dns_label(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let trimmed = out.trim_matches('-');
    if trimmed.is_empty() {
        "pipeline".to_owned()
    } else {
        trimmed.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn is_dns_label(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= 63
            && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    }

    #[test]
    fn plain_names_stay_readable() {
        assert_eq!(pipeline_object_name("prod", PipelineDirection::Forward, "orders-to-nats"), "prod-orders-to-nats");
    }

    #[test]
    fn lossy_or_reverse_names_get_a_hash_and_stay_unique() {
        let names = ["orders_to_nats", "orders.to.nats", "Orders-To-Nats", "orders to nats", "orders-to-nats"];
        let mut seen = HashSet::new();
        for n in names {
            for d in [PipelineDirection::Forward, PipelineDirection::Reverse] {
                let k = pipeline_object_name("prod", d, n);
                assert!(is_dns_label(&k), "{k}");
                assert!(k.starts_with("prod-orders-to-nats"), "{k}");
                assert!(seen.insert(k.clone()), "collision: {k}");
            }
        }
    }

    #[test]
    fn long_and_odd_names_fit() {
        let long = "x".repeat(300);
        for n in [long.as_str(), "___", "ünïcode", ""] {
            let k = pipeline_object_name("group", PipelineDirection::Forward, n);
            assert!(is_dns_label(&k), "{k:?}");
        }
        assert_ne!(
            pipeline_object_name("g", PipelineDirection::Forward, &"a".repeat(100)),
            pipeline_object_name("g", PipelineDirection::Forward, &"a".repeat(101))
        );
    }
}
