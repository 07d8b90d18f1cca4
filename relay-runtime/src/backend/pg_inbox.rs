//! The PostgreSQL inbox sink's settings.

use schemars::JsonSchema;
use serde::Deserialize;

use super::fields::{Choice, Flag, Text};

crate::choices!(
    /// What the inbox's `event_type` column holds.
    InboxEventType "InboxEventType" { Subject = "subject", Op = "op" }
);

/// The PostgreSQL inbox sink (`pg-inbox`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PgInboxSinkConfig {
    /// The inbox table: `schema.table`, or bare in `schema`.
    #[serde(alias = "inbox", alias = "table")]
    #[schemars(extend("x-aliases" = ["inbox", "table"]))]
    pub inbox_table: Text,
    /// Schema of a bare `inbox_table` (default `pgtrickle`).
    pub schema: Option<Text>,
    /// Another database (default the relay's own).
    #[serde(alias = "url")]
    #[schemars(extend("x-aliases" = ["url"]))]
    pub postgres_url: Option<Text>,
    /// Create a missing inbox in pg_trickle's `create_inbox` shape (default false).
    pub create_inbox: Option<Flag>,
    /// `subject` (default) or `op`.
    pub event_type: Option<Choice<InboxEventType>>,
    /// A payload field for `aggregate_id`.
    #[serde(alias = "aggregate_id")]
    #[schemars(extend("x-aliases" = ["aggregate_id"]))]
    pub aggregate_id_field: Option<Text>,
}
