//! Apache Kafka: the client settings shared by the sink and the source, and each side's own.

use schemars::JsonSchema;
use serde::Deserialize;

use super::fields::{Choice, Flag, Int, List, Secret, Settings, TemplateText, Text};

/// Brokers and security settings shared by the Kafka sink and source.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct KafkaClient {
    /// Bootstrap brokers: a comma-separated string or a JSON array.
    #[serde(alias = "bootstrap_servers")]
    #[schemars(extend("x-aliases" = ["bootstrap_servers"]))]
    pub brokers: List,
    /// librdkafka's `security.protocol` (`plaintext`, `ssl`, `sasl_plaintext`, `sasl_ssl`).
    pub security_protocol: Option<Text>,
    /// `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`, …
    #[serde(alias = "sasl_mechanisms")]
    #[schemars(extend("x-aliases" = ["sasl_mechanisms"]))]
    pub sasl_mechanism: Option<Text>,
    /// SASL user name.
    pub sasl_username: Option<Text>,
    /// SASL password.
    pub sasl_password: Option<Secret>,
    /// A PEM file of CA certificates.
    #[serde(alias = "ssl_ca_location")]
    #[schemars(extend("x-aliases" = ["ssl_ca_location"]))]
    pub tls_ca: Option<Text>,
    /// A PEM client certificate.
    #[serde(alias = "ssl_certificate_location")]
    #[schemars(extend("x-aliases" = ["ssl_certificate_location"]))]
    pub tls_cert: Option<Text>,
    /// The PEM private key of `tls_cert`.
    #[serde(alias = "ssl_key_location")]
    #[schemars(extend("x-aliases" = ["ssl_key_location"]))]
    pub tls_key: Option<Text>,
    /// librdkafka properties passed as they are, applied last.
    pub rdkafka: Option<Settings>,
}

crate::choices!(
    /// The producer's `acks`.
    Acks "Acks" { All = "all", One = "1", Zero = "0", MinusOne = "-1" }
);
crate::choices!(
    /// The producer's `compression.type`.
    Compression "Compression" { None = "none", Gzip = "gzip", Snappy = "snappy", Lz4 = "lz4", Zstd = "zstd" }
);
crate::choices!(
    /// Where a consumer group without committed offsets starts.
    OffsetReset "OffsetReset" { Earliest = "earliest", Latest = "latest" }
);

/// The Kafka sink.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    #[serde(flatten)]
    pub client: KafkaClient,
    /// Topic template (default `pgtrickle.{stream_table}`).
    #[serde(alias = "topic_template")]
    #[schemars(extend("x-aliases" = ["topic_template"]))]
    pub topic: Option<TemplateText>,
    /// A payload column whose value becomes the record key.
    pub key_field: Option<Text>,
    /// A template for the record key (instead of `key_field`).
    pub key_template: Option<TemplateText>,
    /// Idempotent producer (default true).
    pub idempotent: Option<Flag>,
    /// `all` (default), `1`, `0`, `-1`.
    pub acks: Option<Choice<Acks>>,
    /// `lz4` (default), `none`, `gzip`, `snappy`, `zstd`.
    pub compression: Option<Choice<Compression>>,
    /// librdkafka `linger.ms` (default 5).
    pub linger_ms: Option<Int<0, 900_000>>,
    /// librdkafka `batch.num.messages` (default 10000).
    pub batch_num_messages: Option<Int<1, 1_000_000>>,
    /// Milliseconds before an unacknowledged record fails (default 30000).
    pub delivery_timeout_ms: Option<Int<1_000, 3_600_000>>,
    /// librdkafka `queue.buffering.max.messages` (default 100000).
    pub queue_max_messages: Option<Int<1, 10_000_000>>,
    /// Delivery reports outstanding across batches (default 50000).
    #[serde(alias = "max_inflight")]
    #[schemars(extend("x-aliases" = ["max_inflight"]))]
    pub max_in_flight: Option<Int<1, 1_000_000>>,
    /// Milliseconds to wait for the brokers at start (default 10000).
    pub connect_timeout_ms: Option<Int<1, 3_600_000>>,
    /// Create a missing fixed topic (default false).
    pub create_topic: Option<Flag>,
    /// Partitions of a created topic (default 3).
    pub partitions: Option<Int<1, 100_000>>,
    /// Replication factor of a created topic (default 1).
    pub replication_factor: Option<Int<1, 100>>,
    /// With `envelope: debezium`: a tombstone (same key, no value) after each delete, so log
    /// compaction can drop the key (default true).
    pub tombstones: Option<Flag>,
}

/// The Kafka source.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceConfig {
    #[serde(flatten)]
    pub client: KafkaClient,
    /// The topic, or several (a JSON array or a comma-separated string).
    #[serde(alias = "topics")]
    #[schemars(extend("x-aliases" = ["topics"]))]
    pub topic: List,
    /// Consumer group (default the pipeline name).
    #[serde(alias = "group")]
    #[schemars(extend("x-aliases" = ["group"]))]
    pub group_id: Option<Text>,
    /// `earliest` (default) or `latest`.
    pub auto_offset_reset: Option<Choice<OffsetReset>>,
    /// Consumer session timeout in milliseconds (default 10000).
    pub session_timeout_ms: Option<Int<1_000, 3_600_000>>,
}

/// librdkafka settings that may carry secrets: never echoed in errors or logs.
#[cfg(feature = "kafka")]
const SECRET_SETTINGS: &[&str] =
    &["sasl.password", "ssl.key.password", "ssl.keystore.password", "sasl.oauthbearer.client.secret"];

#[cfg(feature = "kafka")]
impl KafkaClient {
    /// Brokers, client id and security settings (the `rdkafka` object is applied by
    /// [`KafkaClient::passthrough`], after the side's own settings).
    pub fn base_config(&self, pipeline: &str) -> rdkafka::config::ClientConfig {
        let mut c = rdkafka::config::ClientConfig::new();
        c.set("bootstrap.servers", self.brokers.0.join(",")).set("client.id", format!("pgtrickle-relay-{pipeline}"));
        // librdkafka's default backs reconnects off to 10 s: after an outage a broker that is
        // back would wait that long for the relay. 2 s still spares a broker that is down
        // (`rdkafka` can set it back).
        c.set("reconnect.backoff.max.ms", "2000");
        let settings = [
            ("security.protocol", self.security_protocol.as_ref().map(Text::as_str)),
            ("sasl.mechanism", self.sasl_mechanism.as_ref().map(Text::as_str)),
            ("sasl.username", self.sasl_username.as_ref().map(Text::as_str)),
            ("sasl.password", self.sasl_password.as_ref().map(Secret::expose)),
            ("ssl.ca.location", self.tls_ca.as_ref().map(Text::as_str)),
            ("ssl.certificate.location", self.tls_cert.as_ref().map(Text::as_str)),
            ("ssl.key.location", self.tls_key.as_ref().map(Text::as_str)),
        ];
        for (name, value) in settings {
            if let Some(v) = value {
                c.set(name, v);
            }
        }
        c
    }

    /// The `rdkafka` object, applied last: it can override anything.
    pub fn passthrough(&self, c: &mut rdkafka::config::ClientConfig) {
        for (k, v) in self.rdkafka.iter().flat_map(|s| &s.0) {
            c.set(k, v);
        }
    }
}

/// A librdkafka error with any secret setting's value removed.
#[cfg(feature = "kafka")]
pub fn scrub(message: String, config: &rdkafka::config::ClientConfig) -> String {
    SECRET_SETTINGS
        .iter()
        .filter_map(|k| config.get(k))
        .filter(|v| !v.is_empty())
        .fold(message, |m, v| m.replace(v, "****"))
}
