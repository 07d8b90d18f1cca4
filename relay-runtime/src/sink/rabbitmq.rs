//! RabbitMQ sink (AMQP 0-9-1 through `lapin`).
//!
//! The channel runs in publisher-confirm mode: every message is confirmed by the broker (it is
//! then routed and, for durable queues, written) before its batch counts as delivered, with up
//! to `max_in_flight` confirms outstanding across batches ([`AckWindow`]). Messages are
//! persistent, carry `message_id` = the dedup key and the `pgtrickle-*` headers, and are
//! published `mandatory` by default: a message no queue is bound for comes back and is an error
//! naming the exchange and routing key, instead of vanishing.

use futures::future::BoxFuture;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind};

use super::window::AckWindow;
use super::{BuildError, Published, Sink, SinkContext, SinkError};
use crate::backend::rabbitmq::RabbitmqSinkConfig;
use crate::error::report;
use crate::message::envelope::{Binding, Envelope};
use crate::message::{RelayMessage, Template, TemplateNames};
use crate::redact::redact_url;

const BACKEND: &str = "rabbitmq";

pub struct RabbitSink {
    url: String,
    pipeline: String,
    conn: Option<Connection>,
    channel: Option<Channel>,
    exchange: String,
    routing_key: Option<Template>,
    mandatory: bool,
    /// Names for the templates.
    names: TemplateNames,
    window: AckWindow,
    envelope: Envelope,
}

fn retryable(message: String) -> SinkError {
    SinkError::retryable(BACKEND, message)
}

fn exchange_kind(kind: &str) -> ExchangeKind {
    match kind {
        "direct" => ExchangeKind::Direct,
        "fanout" => ExchangeKind::Fanout,
        "headers" => ExchangeKind::Headers,
        "topic" => ExchangeKind::Topic,
        other => ExchangeKind::Custom(other.to_owned()),
    }
}

pub async fn build(cfg: &RabbitmqSinkConfig, ctx: &SinkContext<'_>) -> Result<Box<dyn Sink>, BuildError> {
    let url = cfg.url.0.clone();
    if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
        return Err(BuildError::option(
            BACKEND,
            "url",
            format!("expected amqp:// or amqps://, got '{}'", redact_url(&url)),
        ));
    }
    let exchange = cfg.exchange.as_ref().map_or_else(|| "pgtrickle".to_owned(), |x| x.0.clone());
    let kind = cfg.exchange_type.map_or("topic", |t| t.0.as_str());
    let routing_key = cfg.routing_key_template.as_ref().map(|t| t.0.clone());
    let mut sink = RabbitSink {
        url,
        pipeline: ctx.pipeline.to_owned(),
        conn: None,
        channel: None,
        exchange,
        routing_key,
        mandatory: cfg.mandatory.is_none_or(|f| f.0),
        names: ctx.names.clone(),
        window: AckWindow::new(cfg.max_in_flight.map_or(1024, |n| n.get() as usize)),
        envelope: ctx.envelope.clone(),
    };
    let channel = sink.channel().await.map_err(|e| BuildError::unreachable(BACKEND, report(&e)))?;
    // The default exchange ("") cannot be declared; it always exists.
    if cfg.declare_exchange.is_none_or(|f| f.0) && !sink.exchange.is_empty() {
        let opts = ExchangeDeclareOptions { durable: cfg.durable.is_none_or(|f| f.0), ..Default::default() };
        channel
            .exchange_declare(ShortString::from(sink.exchange.as_str()), exchange_kind(kind), opts, FieldTable::default())
            .await
            .map_err(|e| BuildError::open(BACKEND, format!(
                    "cannot declare {kind} exchange '{}' ({e}); an existing exchange of another type or durability needs \"exchange_type\"/\"durable\" to match, or \"declare_exchange\": false",
                    sink.exchange
                )))?;
    } else if !sink.exchange.is_empty() {
        let passive = ExchangeDeclareOptions { passive: true, ..Default::default() };
        channel
            .exchange_declare(
                ShortString::from(sink.exchange.as_str()),
                exchange_kind(kind),
                passive,
                FieldTable::default(),
            )
            .await
            .map_err(|e| {
                BuildError::open(
                    BACKEND,
                    format!(
                        "exchange '{}' does not exist ({e}); declare it or set \"declare_exchange\": true",
                        sink.exchange
                    ),
                )
            })?;
    }
    Ok(Box::new(sink))
}

impl RabbitSink {
    /// The confirm-mode channel, (re)opening the connection and channel when they were lost.
    async fn channel(&mut self) -> Result<Channel, SinkError> {
        if let Some(ch) = &self.channel {
            if ch.status().connected() {
                return Ok(ch.clone());
            }
        }
        self.channel = None;
        if !self.conn.as_ref().is_some_and(|c| c.status().connected()) {
            let props = ConnectionProperties::default()
                .with_connection_name(LongString::from(format!("pgtrickle-relay {}", self.pipeline)));
            let conn = Connection::connect(&self.url, props)
                .await
                .map_err(|e| retryable(format!("cannot connect to {}: {e}", redact_url(&self.url))))?;
            self.conn = Some(conn);
        }
        let conn = self.conn.as_ref().ok_or_else(|| retryable("not connected".into()))?;
        let ch = conn.create_channel().await.map_err(|e| retryable(format!("cannot open a channel: {e}")))?;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| retryable(format!("cannot enable publisher confirms: {e}")))?;
        self.channel = Some(ch.clone());
        Ok(ch)
    }

    fn routing_key(&self, m: &RelayMessage) -> String {
        match &self.routing_key {
            Some(t) => t.render(&m.vars(&self.names)),
            None => m.subject.clone(),
        }
    }
}

fn properties(m: &RelayMessage, envelope: &Envelope) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert("pgtrickle-op".into(), AMQPValue::LongString(m.op.as_str().into()));
    headers.insert("pgtrickle-dedup-key".into(), AMQPValue::LongString(m.dedup_key.as_str().into()));
    headers.insert("pgtrickle-full-refresh".into(), AMQPValue::Boolean(m.is_full_refresh));
    headers.insert("traceparent".into(), AMQPValue::LongString((&*m.traceparent).into()));
    if let Some(id) = m.outbox_id {
        headers.insert("pgtrickle-outbox-id".into(), AMQPValue::LongLongInt(id));
    }
    // CloudEvents binary mode: `cloudEvents:*` application properties, as canonical strings.
    envelope.attributes(m, Binding::Amqp, |k, v| {
        headers.insert(k.into(), AMQPValue::LongString(v.into()));
    });
    BasicProperties::default()
        .with_message_id(ShortString::from(m.dedup_key.as_str()))
        .with_content_type(envelope.content_type().into())
        .with_delivery_mode(2)
        .with_app_id("pgtrickle-relay".into())
        .with_headers(headers)
}

impl Sink for RabbitSink {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn publish<'a>(&'a mut self, batch: &'a [RelayMessage]) -> BoxFuture<'a, Result<Published, SinkError>> {
        Box::pin(async move {
            let channel = self.channel().await?;
            let call = self.window.begin();
            let mut done = Published::default();
            let options = BasicPublishOptions { mandatory: self.mandatory, ..Default::default() };
            for m in batch {
                let body = self.envelope.body(m);
                let key = self.routing_key(m);
                let confirm = channel
                    .basic_publish(
                        ShortString::from(self.exchange.as_str()),
                        ShortString::from(key.as_str()),
                        options,
                        &body,
                        properties(m, &self.envelope),
                    )
                    .await
                    .map_err(|e| {
                        self.channel = None;
                        retryable(format!("publish to exchange '{}' failed: {e}", self.exchange))
                    })?;
                let exchange = self.exchange.clone();
                let ack = Box::pin(async move {
                    match confirm.await {
                        Ok(Confirmation::Ack(None)) | Ok(Confirmation::NotRequested) => Ok(false),
                        Ok(Confirmation::Ack(Some(returned))) => Err(SinkError::permanent(BACKEND, format!(
                                "no queue is bound to exchange '{exchange}' for routing key '{key}' ({} {}); bind one, or set \"mandatory\": false to let the broker drop such messages",
                                returned.reply_code, returned.reply_text
                            ))),
                        Ok(Confirmation::Nack(_)) => {
                            Err(retryable(format!("the broker refused a message for exchange '{exchange}' (nack)")))
                        }
                        Err(e) => Err(retryable(format!("no confirm for a message to exchange '{exchange}': {e}"))),
                    }
                });
                if let Err(e) = self.window.push(call, ack, &mut done).await {
                    self.channel = None;
                    return Err(e);
                }
            }
            if let Err(e) = self.window.settle_before(call, &mut done).await {
                self.channel = None;
                return Err(e);
            }
            Ok(done)
        })
    }

    fn pipelined(&self) -> bool {
        true
    }

    fn flush(&mut self) -> BoxFuture<'_, Result<Published, SinkError>> {
        Box::pin(self.window.flush())
    }

    fn reset(&mut self) {
        self.window.reset();
        // Confirms still due on the old channel must not be counted later: start a new one.
        self.channel = None;
    }

    fn health(&mut self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move { self.channel().await.map(|_| ()) })
    }

    fn close(&mut self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            if let Some(conn) = self.conn.take() {
                let _ = conn.close(200, "pgtrickle-relay stopping".into()).await;
            }
            self.channel = None;
            Ok(())
        })
    }
}
