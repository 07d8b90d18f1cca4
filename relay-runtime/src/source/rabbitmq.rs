//! RabbitMQ source: a manual-ack consumer on a queue, with a prefetch window.
//!
//! After the inbox commit the whole batch is acknowledged with one `basic.ack` (`multiple` up to
//! its last delivery tag); a batch that was not stored is `basic.nack`ed with `requeue`. The queue
//! is declared durable when missing (`declare_queue`), and bound to `exchange` with
//! `routing_key` when given. Event ids: the `message_id` property (what the RabbitMQ sink sets),
//! else `amqp:<queue>:<sha256 of the body>` — AMQP has no delivery coordinate that survives a
//! redelivery, so identical bodies without a `message_id` count as one event.

use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection, ConnectionProperties, Consumer};
use sha2::{Digest, Sha256};

use super::{Incoming, Outcome, Source, SourceContext, SourceError};
use crate::backend::fields::Text;
use crate::backend::rabbitmq::RabbitmqSourceConfig;
use crate::backend::BuildError;
use crate::redact::redact_url;

const BACKEND: &str = "rabbitmq";

pub struct RabbitSource {
    url: String,
    queue: String,
    tag: String,
    prefetch: u16,
    declare: bool,
    durable: bool,
    binding: Option<(String, String)>,
    conn: Option<Connection>,
    channel: Option<Channel>,
    consumer: Option<Consumer>,
    /// The last delivery tag of the current batch, on `channel`.
    last_tag: Option<u64>,
}

fn retryable(message: String) -> SourceError {
    SourceError::retryable(BACKEND, message)
}

pub async fn build(cfg: &RabbitmqSourceConfig, ctx: &SourceContext<'_>) -> Result<Box<dyn Source>, BuildError> {
    let url = cfg.url.0.clone();
    if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
        return Err(BuildError::option(
            BACKEND,
            "url",
            format!("expected amqp:// or amqps://, got '{}'", redact_url(&url)),
        ));
    }
    let binding =
        cfg.exchange.as_ref().map(|x| (x.0.clone(), cfg.routing_key.as_ref().map_or("#", Text::as_str).to_owned()));
    let mut source = RabbitSource {
        url,
        queue: cfg.queue.0.clone(),
        tag: cfg.consumer_tag.as_ref().map_or(ctx.pipeline, Text::as_str).to_owned(),
        prefetch: cfg.prefetch_count.map_or(4000, |n| n.get() as u16),
        declare: cfg.declare_queue.is_none_or(|f| f.0),
        durable: cfg.durable.is_none_or(|f| f.0),
        binding,
        conn: None,
        channel: None,
        consumer: None,
        last_tag: None,
    };
    source.consume().await.map_err(|e| match e {
        SourceError::Retryable { message, cause, .. } => BuildError::Unreachable { backend: BACKEND, message, cause },
        SourceError::Permanent { message, cause, .. } => BuildError::Open { backend: BACKEND, message, cause },
    })?;
    Ok(Box::new(source))
}

impl RabbitSource {
    /// (Re)opens the connection, channel and consumer.
    async fn consume(&mut self) -> Result<(), SourceError> {
        self.consumer = None;
        self.channel = None;
        self.last_tag = None;
        if !self.conn.as_ref().is_some_and(|c| c.status().connected()) {
            let props = ConnectionProperties::default()
                .with_connection_name(LongString::from(format!("pgtrickle-relay {}", self.tag)));
            self.conn = Some(
                Connection::connect(&self.url, props)
                    .await
                    .map_err(|e| retryable(format!("cannot connect to {}: {e}", redact_url(&self.url))))?,
            );
        }
        let conn = self.conn.as_ref().ok_or_else(|| retryable("not connected".into()))?;
        let ch = conn.create_channel().await.map_err(|e| retryable(format!("cannot open a channel: {e}")))?;
        if self.declare {
            let opts = QueueDeclareOptions { durable: self.durable, ..Default::default() };
            ch.queue_declare(self.queue.as_str().into(), opts, FieldTable::default()).await.map_err(|e| SourceError::permanent(BACKEND, format!("cannot declare queue '{}' ({e}); an existing queue with other settings needs \"durable\" to match, or \"declare_queue\": false", self.queue)))?;
        }
        if let Some((exchange, key)) = &self.binding {
            ch.queue_bind(
                self.queue.as_str().into(),
                exchange.as_str().into(),
                key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| {
                SourceError::permanent(
                    BACKEND,
                    format!("cannot bind queue '{}' to exchange '{exchange}' with '{key}'", self.queue),
                )
                .because(e)
            })?;
        }
        ch.basic_qos(self.prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| retryable(format!("basic.qos failed: {e}")))?;
        let consumer = ch
            .basic_consume(
                self.queue.as_str().into(),
                self.tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| {
                SourceError::permanent(BACKEND, format!("cannot consume from queue '{}'", self.queue)).because(e)
            })?;
        self.channel = Some(ch);
        self.consumer = Some(consumer);
        Ok(())
    }

    fn incoming(&self, d: &lapin::message::Delivery) -> Incoming {
        let mut headers = Vec::new();
        if let Some(h) = d.properties.headers() {
            for (k, v) in h.inner() {
                let text = match v {
                    AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                    AMQPValue::ShortString(s) => s.to_string(),
                    AMQPValue::Boolean(b) => b.to_string(),
                    AMQPValue::LongLongInt(i) => i.to_string(),
                    AMQPValue::LongInt(i) => i.to_string(),
                    other => format!("{other:?}"),
                };
                headers.push((k.to_string(), text));
            }
        }
        if let Some(t) = d.properties.kind() {
            headers.push(("x-event-type".to_owned(), t.to_string()));
        }
        // What the body is (CloudEvents structured mode says so here).
        if let Some(ct) = d.properties.content_type() {
            headers.push(("content-type".to_owned(), ct.to_string()));
        }
        Incoming {
            id: d.properties.message_id().as_ref().map(|s| s.to_string()),
            coordinate: format!("amqp:{}:{}", self.queue, hex::encode(Sha256::digest(&d.data))),
            subject: Some(d.routing_key.to_string()).filter(|s| !s.is_empty()),
            key: None,
            headers,
            body: d.data.clone(),
            null_body: false,
        }
    }
}

impl Source for RabbitSource {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn receive(&mut self, max: usize, wait: Duration) -> BoxFuture<'_, Result<Vec<Incoming>, SourceError>> {
        Box::pin(async move {
            if self.consumer.is_none() || !self.channel.as_ref().is_some_and(|c| c.status().connected()) {
                self.consume().await?;
            }
            let Some(consumer) = self.consumer.as_mut() else { return Ok(Vec::new()) };
            let mut deliveries = Vec::new();
            match tokio::time::timeout(wait, consumer.next()).await {
                Err(_) => return Ok(Vec::new()),
                Ok(None) => {
                    self.consumer = None;
                    return Err(retryable(format!("the consumer on queue '{}' was cancelled", self.queue)));
                }
                Ok(Some(d)) => deliveries.push(d),
            }
            // Then whatever is already here, without waiting.
            while deliveries.len() < max {
                match consumer.next().now_or_never() {
                    Some(Some(d)) => deliveries.push(d),
                    _ => break,
                }
            }
            let mut out = Vec::with_capacity(deliveries.len());
            for d in deliveries {
                let d = d.map_err(|e| {
                    self.consumer = None;
                    retryable(format!("delivery failed: {e}"))
                })?;
                self.last_tag = Some(d.delivery_tag);
                out.push(self.incoming(&d));
            }
            Ok(out)
        })
    }

    fn ack<'a>(&'a mut self, _outcomes: &'a [Outcome]) -> BoxFuture<'a, Result<(), SourceError>> {
        Box::pin(async move {
            if let (Some(tag), Some(ch)) = (self.last_tag.take(), &self.channel) {
                ch.basic_ack(tag, BasicAckOptions { multiple: true }).await.map_err(|e| {
                    self.consumer = None;
                    retryable(format!("basic.ack failed: {e}"))
                })?;
            }
            Ok(())
        })
    }

    fn nack<'a>(&'a mut self, _reason: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if let (Some(tag), Some(ch)) = (self.last_tag.take(), &self.channel) {
                if ch.basic_nack(tag, BasicNackOptions { multiple: true, requeue: true }).await.is_err() {
                    // A new channel gets every unacknowledged message again anyway.
                    self.consumer = None;
                }
            }
        })
    }

    fn close(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.consumer = None;
            self.channel = None;
            if let Some(conn) = self.conn.take() {
                let _ = conn.close(200, "pgtrickle-relay stopping".into()).await;
            }
        })
    }
}
