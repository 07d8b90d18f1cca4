//! The stdout and file sinks' settings.

use schemars::JsonSchema;
use serde::Deserialize;

use super::fields::{Choice, Text};

crate::choices!(
    /// How messages are written.
    Format "Format" { Jsonl = "jsonl", JsonLines = "json_lines", Ndjson = "ndjson", Json = "json", Pretty = "pretty", JsonPretty = "json_pretty" }
);

impl Format {
    /// Whether each message is pretty-printed over several lines.
    pub fn pretty(self) -> bool {
        matches!(self, Format::Json | Format::Pretty | Format::JsonPretty)
    }
}

/// The stdout sink (`path` appends to a file instead, as the file sink does).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StdoutSinkConfig {
    /// `jsonl` (default: one message per line) or `json` (pretty-printed).
    pub format: Option<Choice<Format>>,
    /// A file to append to instead (`-` or `stdout`: standard output).
    #[serde(alias = "output", alias = "file")]
    #[schemars(extend("x-aliases" = ["output", "file"]))]
    pub path: Option<Text>,
}

/// The file sink: appends to `path`, fsynced before the offset moves past a batch.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// `jsonl` (default: one message per line) or `json` (pretty-printed).
    pub format: Option<Choice<Format>>,
    /// The file to append to.
    #[serde(alias = "output", alias = "file")]
    #[schemars(extend("x-aliases" = ["output", "file"]))]
    pub path: Text,
}
