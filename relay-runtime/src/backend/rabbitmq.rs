//! RabbitMQ (AMQP 0-9-1): the sink's and the source's settings.

use schemars::JsonSchema;
use serde::Deserialize;

use super::fields::{AnyText, Choice, Flag, Int, TemplateText, Text};

crate::choices!(
    /// The type of a declared exchange.
    ExchangeType "ExchangeType" { Topic = "topic", Direct = "direct", Fanout = "fanout", Headers = "headers" }
);

/// The RabbitMQ sink (`rabbitmq`, alias `amqp`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RabbitmqSinkConfig {
    /// `amqp://user:password@host:5672/vhost`, or `amqps://` for TLS.
    pub url: Text,
    /// Exchange (default `pgtrickle`); `""` is the default exchange, where the routing key
    /// names a queue.
    pub exchange: Option<AnyText>,
    /// `topic` (default), `direct`, `fanout`, `headers`.
    pub exchange_type: Option<Choice<ExchangeType>>,
    /// Declare the exchange at start (default true); false: it must exist.
    pub declare_exchange: Option<Flag>,
    /// A declared exchange is durable (default true).
    pub durable: Option<Flag>,
    /// Routing key template (default the message subject).
    #[serde(alias = "routing_key")]
    #[schemars(extend("x-aliases" = ["routing_key"]))]
    pub routing_key_template: Option<TemplateText>,
    /// Unroutable messages come back and fail the pipeline (default true).
    pub mandatory: Option<Flag>,
    /// Publisher confirms outstanding across batches (default 1024).
    #[serde(alias = "max_inflight")]
    #[schemars(extend("x-aliases" = ["max_inflight"]))]
    pub max_in_flight: Option<Int<1, 65_535>>,
}

/// The RabbitMQ source.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RabbitmqSourceConfig {
    /// `amqp://user:password@host:5672/vhost`, or `amqps://` for TLS.
    pub url: Text,
    /// The queue to consume (declared durable when missing unless `declare_queue` is false).
    pub queue: Text,
    /// Declare the queue at start (default true).
    pub declare_queue: Option<Flag>,
    /// A declared queue is durable (default true).
    pub durable: Option<Flag>,
    /// Bind the queue to this exchange.
    pub exchange: Option<Text>,
    /// Binding key with `exchange` (default `#`).
    #[serde(alias = "binding_key")]
    #[schemars(extend("x-aliases" = ["binding_key"]))]
    pub routing_key: Option<Text>,
    /// Unacknowledged deliveries at most (default 4000).
    pub prefetch_count: Option<Int<1, 65_535>>,
    /// Consumer tag (default the pipeline name).
    pub consumer_tag: Option<Text>,
}
