//! NATS JetStream: the settings shared by the sink and the source, and each side's own.

use schemars::JsonSchema;
use serde::Deserialize;

use super::fields::{Choice, Flag, Int, List, Secret, Text};

/// How the NATS sink and source connect.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct NatsConnection {
    /// The server URL (`nats://host:4222`); several comma-separated for a cluster.
    #[serde(alias = "servers")]
    #[schemars(extend("x-aliases" = ["servers"]))]
    pub url: Text,
    /// Milliseconds to wait for the connection (default 5000).
    pub connect_timeout_ms: Option<Int<1, 3_600_000>>,
    /// A `.creds` file (user JWT and nkey seed).
    #[serde(alias = "creds")]
    #[schemars(extend("x-aliases" = ["creds"]))]
    pub credentials_file: Option<Text>,
    /// User name (with `password`).
    #[serde(alias = "username")]
    #[schemars(extend("x-aliases" = ["username"]))]
    pub user: Option<Text>,
    /// Password of `user`.
    pub password: Option<Secret>,
    /// Token authentication.
    pub token: Option<Secret>,
    /// An nkey seed (`SU…`).
    #[serde(alias = "nkey_seed")]
    #[schemars(extend("x-aliases" = ["nkey_seed"]))]
    pub nkey: Option<Secret>,
    /// A PEM file of CA certificates to verify the server.
    #[serde(alias = "tls_ca_file")]
    #[schemars(extend("x-aliases" = ["tls_ca_file"]))]
    pub tls_ca: Option<Text>,
    /// A PEM client certificate (with `tls_key`).
    #[serde(alias = "tls_cert_file")]
    #[schemars(extend("x-aliases" = ["tls_cert_file"]))]
    pub tls_cert: Option<Text>,
    /// The PEM private key of `tls_cert`.
    #[serde(alias = "tls_key_file")]
    #[schemars(extend("x-aliases" = ["tls_key_file"]))]
    pub tls_key: Option<Text>,
    /// Refuse a connection without TLS (default false).
    pub tls_required: Option<Flag>,
}

/// The NATS JetStream sink (`nats`, alias `jetstream`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NatsSinkConfig {
    #[serde(flatten)]
    pub connection: NatsConnection,
    /// A JetStream stream to check at start (created when `create_stream` is true).
    pub stream: Option<Text>,
    /// Create `stream` when it is missing (default false).
    pub create_stream: Option<Flag>,
    /// Subjects of a created stream (default: derived from the subject template).
    pub stream_subjects: Option<List>,
    /// Duplicate window of a created stream, in seconds (default 120).
    pub duplicate_window_seconds: Option<Int<1, 604_800>>,
    /// Publish acks outstanding at once (default 1024).
    #[serde(alias = "max_inflight")]
    #[schemars(extend("x-aliases" = ["max_inflight"]))]
    pub max_in_flight: Option<Int<1, 65_536>>,
    /// Milliseconds to wait for a publish ack (default 10000).
    pub ack_timeout_ms: Option<Int<1, 3_600_000>>,
    /// Each message's `Nats-Msg-Id`: `dedup_key` (default: the row's dedup key, the same through
    /// every pipeline) or `pipeline` (`<pipeline>/<dedup key>`: for pipelines from one outbox
    /// whose subjects one stream captures).
    pub msg_id: Option<Choice<MsgId>>,
}

crate::choices!(
    /// What a message's `Nats-Msg-Id` is made of.
    MsgId "MsgId" { DedupKey = "dedup_key", Pipeline = "pipeline" }
);

crate::choices!(
    /// Where a new JetStream consumer starts.
    DeliverPolicy "DeliverPolicy" { All = "all", New = "new", Last = "last" }
);

/// The NATS JetStream source.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NatsSourceConfig {
    #[serde(flatten)]
    pub connection: NatsConnection,
    /// The stream to consume (created when missing unless `create_stream` is false).
    pub stream: Text,
    /// Create `stream` when it is missing (default true), with `stream_subjects` or `subject`.
    pub create_stream: Option<Flag>,
    /// Subjects of a created stream (default `subject`, else `<stream>.>`).
    pub stream_subjects: Option<List>,
    /// The durable pull consumer (default the pipeline name; created when missing).
    #[serde(alias = "durable_name", alias = "durable")]
    #[schemars(extend("x-aliases" = ["durable_name", "durable"]))]
    pub consumer: Option<Text>,
    /// Filter subject of the consumer.
    #[serde(alias = "filter_subject")]
    #[schemars(extend("x-aliases" = ["filter_subject"]))]
    pub subject: Option<Text>,
    /// `all` (default), `new` or `last`.
    pub deliver_policy: Option<Choice<DeliverPolicy>>,
    /// Seconds before an unacknowledged message is delivered again (default 30).
    pub ack_wait_seconds: Option<Int<1, 86_400>>,
    /// Deliveries of one message at most (default 0: unlimited).
    pub max_deliver: Option<Int<0, 1_000_000>>,
    /// Messages delivered but not acknowledged at most (default 20000).
    pub max_ack_pending: Option<Int<1, 1_000_000>>,
}

#[cfg(feature = "nats")]
impl NatsConnection {
    /// Connects with these settings; `name` is the connection name the server shows.
    pub async fn connect(&self, name: String) -> Result<async_nats::Client, super::BuildError> {
        use super::BuildError;
        const BACKEND: &str = "nats";
        let timeout = self.connect_timeout_ms.map_or(std::time::Duration::from_secs(5), |n| n.millis());
        let mut connect = async_nats::ConnectOptions::new().name(name).connection_timeout(timeout);
        if let Some(path) = &self.credentials_file {
            connect = connect
                .credentials_file(path.as_str())
                .await
                .map_err(|e| BuildError::option(BACKEND, "credentials_file", format!("cannot read {}: {e}", path.0)))?;
        }
        if let Some(user) = &self.user {
            let password = self.password.as_ref().map(|p| p.expose().to_owned()).unwrap_or_default();
            connect = connect.user_and_password(user.0.clone(), password);
        }
        if let Some(token) = &self.token {
            connect = connect.token(token.expose().to_owned());
        }
        if let Some(seed) = &self.nkey {
            connect = connect.nkey(seed.expose().to_owned());
        }
        if let Some(ca) = &self.tls_ca {
            connect = connect.add_root_certificates(std::path::PathBuf::from(ca.as_str())).require_tls(true);
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                connect = connect.add_client_certificate(cert.as_str().into(), key.as_str().into());
            }
            (None, None) => {}
            _ => return Err(BuildError::option(BACKEND, "tls_cert", "tls_cert and tls_key go together")),
        }
        if self.tls_required.is_some_and(|f| f.0) {
            connect = connect.require_tls(true);
        }
        let url = self.url.as_str();
        connect.connect(url).await.map_err(|e| {
            BuildError::unreachable(BACKEND, format!("cannot connect to {}", crate::redact::redact_url(url))).because(e)
        })
    }
}
