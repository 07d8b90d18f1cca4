//! End-to-end tests on a real single-node Kubernetes (issue #17): the operator runs in the cluster
//! (`kubectl apply -k deploy/local/`, with `deploy/base/rbac.yaml`'s permissions) and the relay
//! pods it creates really run, from the images built from this working tree.
//!
//! Run them with `scripts/test-cluster` (cluster up, operator installed, then
//! `cargo test -p relay-e2e --test cluster -- --test-threads=1`); they read `KUBECONFIG` and
//! `HOST_IP` from the environment and fail, never skip, without them.

// Test code: a failed unwrap is a failed test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod disruption;
mod lifecycle;
mod relaying;
