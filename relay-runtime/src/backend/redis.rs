//! Redis Streams: the TLS settings shared by the sink and the source, and each side's own.

use schemars::JsonSchema;
use serde::Deserialize;

use super::fields::{Flag, Int, TemplateText, Text};

/// How the Redis sink and source connect.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct RedisConnection {
    /// `redis://[user:password@]host:6379[/db]`, or `rediss://` for TLS.
    pub url: Text,
    /// A PEM file of CA certificates (`rediss://`).
    pub tls_ca: Option<Text>,
    /// A PEM client certificate (with `tls_key`).
    pub tls_cert: Option<Text>,
    /// The PEM private key of `tls_cert`.
    pub tls_key: Option<Text>,
}

/// The Redis Streams sink.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisSinkConfig {
    #[serde(flatten)]
    pub connection: RedisConnection,
    /// Stream key template (default `pgtrickle.{stream_table}`).
    #[serde(alias = "stream")]
    #[schemars(extend("x-aliases" = ["stream"]))]
    pub stream_key: Option<TemplateText>,
    /// Approximate trimming (`MAXLEN ~ n`; default 0: none).
    pub maxlen: Option<Int<0, 9_223_372_036_854_775_807>>,
    /// Skip redelivered entries by the pipeline's high-water mark (default true).
    pub dedup: Option<Flag>,
}

/// The Redis Streams source.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisSourceConfig {
    #[serde(flatten)]
    pub connection: RedisConnection,
    /// The stream to read.
    #[serde(alias = "stream")]
    #[schemars(extend("x-aliases" = ["stream"]))]
    pub stream_key: Text,
    /// Consumer group (default `pgtrickle-relay`; created when missing).
    #[serde(alias = "group")]
    #[schemars(extend("x-aliases" = ["group"]))]
    pub group_name: Option<Text>,
    /// Consumer name (default the pipeline name).
    #[serde(alias = "consumer")]
    #[schemars(extend("x-aliases" = ["consumer"]))]
    pub consumer_name: Option<Text>,
    /// Where a created group starts (default `0`: the whole stream).
    pub start_id: Option<Text>,
    /// Milliseconds after which another consumer's pending entries are taken over (default 60000).
    pub claim_idle_ms: Option<Int<1, 86_400_000>>,
}

#[cfg(feature = "redis")]
impl RedisConnection {
    /// A client for `url`; `rediss://` is TLS, verified against the system's roots or `tls_ca`
    /// (a PEM file), with `tls_cert` + `tls_key` for client certificates.
    pub fn client(&self) -> Result<::redis::Client, super::BuildError> {
        use super::BuildError;
        let err = |key: &str, m: String| BuildError::option("redis", key, m);
        let read = |key: &str, path: &Option<Text>| -> Result<Option<Vec<u8>>, BuildError> {
            match path {
                None => Ok(None),
                Some(p) => {
                    std::fs::read(p.as_str()).map(Some).map_err(|e| err(key, format!("cannot read {}: {e}", p.0)))
                }
            }
        };
        let url = self.url.as_str();
        let not_a_url =
            |e: ::redis::RedisError| err("url", format!("not a Redis URL ({}): {e}", crate::redact::redact_url(url)));
        let ca = read("tls_ca", &self.tls_ca)?;
        let client_tls = match (read("tls_cert", &self.tls_cert)?, read("tls_key", &self.tls_key)?) {
            (Some(client_cert), Some(client_key)) => Some(::redis::ClientTlsConfig { client_cert, client_key }),
            (None, None) => None,
            _ => return Err(err("tls_cert", "tls_cert and tls_key go together".into())),
        };
        if ca.is_none() && client_tls.is_none() {
            return ::redis::Client::open(url).map_err(not_a_url);
        }
        if !url.starts_with("rediss://") {
            return Err(err("tls_ca", "TLS settings need a rediss:// URL".into()));
        }
        ::redis::Client::build_with_tls(url, ::redis::TlsCertificates { client_tls, root_cert: ca }).map_err(not_a_url)
    }
}
