//! HTTP: the webhook sink's and the receiver's settings.

use schemars::JsonSchema;
use serde::Deserialize;

use super::fields::{Choice, Flag, Int, Secret, Settings, Text};

crate::choices!(
    /// The request method of the webhook sink.
    Method "Method" { Post = "POST", Put = "PUT", Patch = "PATCH" }
);

/// The HTTP webhook sink (`webhook`, alias `http`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookSinkConfig {
    /// The `http://` or `https://` URL.
    #[serde(alias = "endpoint")]
    #[schemars(extend("x-aliases" = ["endpoint"]))]
    pub url: Text,
    /// `POST` (default), `PUT`, `PATCH`.
    pub method: Option<Choice<Method>>,
    /// Extra request headers (names to strings).
    pub headers: Option<Settings>,
    /// Request timeout in milliseconds (default 10000).
    pub timeout_ms: Option<Int<1, 3_600_000>>,
    /// A JSON array of messages per request (default true; false under `envelope: cloudevents`);
    /// false: one message per request.
    pub batch_mode: Option<Flag>,
    /// Messages per request in batch mode (default 100).
    pub max_batch_messages: Option<Int<1, 100_000>>,
    /// Concurrent requests (default 1, so the receiver sees outbox order).
    #[serde(alias = "max_inflight")]
    #[schemars(extend("x-aliases" = ["max_inflight"]))]
    pub max_in_flight: Option<Int<1, 1024>>,
    /// Retries of a failed request within a batch (default 3).
    pub max_retries: Option<Int<0, 100>>,
    /// Adds `X-Pgtrickle-Signature: sha256=<hex HMAC of the body>`.
    #[serde(alias = "hmac_secret")]
    #[schemars(extend("x-aliases" = ["hmac_secret"]))]
    pub signing_secret: Option<Secret>,
    /// The signature header's name (default `X-Pgtrickle-Signature`).
    pub signature_header: Option<Text>,
    /// A PEM file of CA certificates.
    #[serde(alias = "tls_ca_file")]
    #[schemars(extend("x-aliases" = ["tls_ca_file"]))]
    pub tls_ca: Option<Text>,
}

/// The HTTP webhook receiver (source `webhook`, alias `http`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookSourceConfig {
    /// `host:port` to listen on (default `0.0.0.0:8080`).
    #[serde(alias = "listen_addr", alias = "listen")]
    #[schemars(extend("x-aliases" = ["listen_addr", "listen"]))]
    pub bind: Option<Text>,
    /// The path events are posted to (default `/`).
    pub path: Option<Text>,
    /// Requires `Authorization: Bearer <token>`.
    #[serde(alias = "bearer_token", alias = "token")]
    #[schemars(extend("x-aliases" = ["bearer_token", "token"]))]
    pub auth_token: Option<Secret>,
    /// A header that must carry `auth_value`.
    pub auth_header: Option<Text>,
    /// The value `auth_header` must carry.
    pub auth_value: Option<Secret>,
    /// Requires `X-Pgtrickle-Signature: sha256=<hex HMAC of the body>`.
    #[serde(alias = "hmac_secret")]
    #[schemars(extend("x-aliases" = ["hmac_secret"]))]
    pub signing_secret: Option<Secret>,
    /// The signature header's name (default `X-Pgtrickle-Signature`).
    pub signature_header: Option<Text>,
    /// Largest request body in bytes (default 1048576).
    pub max_body_bytes: Option<Int<1, 268_435_456>>,
    /// A PEM certificate: the receiver speaks HTTPS only (with `tls_key`).
    pub tls_cert: Option<Text>,
    /// The PEM private key of `tls_cert`.
    pub tls_key: Option<Text>,
}
