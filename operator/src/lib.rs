//! pgtrickle-relay-operator: runs RelayGroups as relay pods and mirrors the SQL pipelines of each
//! group's database into RelayPipeline custom resources, with the relay's live status written
//! back. SQL stays the source of truth; the relay keeps advisory-lock ownership.

pub mod children;
pub mod controller;
pub mod leader;
pub mod metrics;
pub mod mirror;
pub mod naming;
pub mod status;
