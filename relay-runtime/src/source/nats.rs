//! NATS JetStream source: a durable pull consumer on a stream.
//!
//! The consumer is created when missing (durable name `consumer`, default the pipeline name;
//! explicit acks). A batch is fetched, written to the inbox, and only then is every message of
//! it acknowledged; a batch that was not stored is nak'ed for immediate redelivery. Event ids:
//! `Nats-Msg-Id` when the publisher set one, else `nats:<stream>:<stream sequence>`.

use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::{self, stream, AckKind};
use futures::future::BoxFuture;
use futures::StreamExt;

use super::{Incoming, Outcome, Source, SourceContext, SourceError};
use crate::backend::fields::Text;
use crate::backend::nats::{DeliverPolicy as Policy, NatsSourceConfig};
use crate::backend::BuildError;

const BACKEND: &str = "nats";
/// How long an ack flush may wait for the server.
const ACK_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

pub struct NatsSource {
    client: async_nats::Client,
    stream: String,
    consumer: jetstream::consumer::Consumer<pull::Config>,
    pending: Vec<jetstream::Message>,
}

fn retryable(message: String) -> SourceError {
    SourceError::retryable(BACKEND, message)
}

pub async fn build(cfg: &NatsSourceConfig, ctx: &SourceContext<'_>) -> Result<Box<dyn Source>, BuildError> {
    let stream_name = cfg.stream.0.clone();
    let durable = cfg.consumer.as_ref().map_or(ctx.pipeline, Text::as_str).to_owned();
    let filter = cfg.subject.as_ref().map(|s| s.0.clone());
    let deliver_policy = match cfg.deliver_policy.map(|c| c.0) {
        Some(Policy::New) => DeliverPolicy::New,
        Some(Policy::Last) => DeliverPolicy::Last,
        None | Some(Policy::All) => DeliverPolicy::All,
    };
    let ack_wait = Duration::from_secs(cfg.ack_wait_seconds.map_or(30, |n| n.get()));
    let max_deliver = match cfg.max_deliver.map_or(0, |n| n.get()) {
        0 => -1,
        n => n as i64,
    };
    let client = cfg.connection.connect(format!("pgtrickle-relay {} (source)", ctx.pipeline)).await?;
    let js = jetstream::new(client.clone());
    let stream = match js.get_stream(&stream_name).await {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(ref j) if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
        {
            if !cfg.create_stream.is_none_or(|f| f.0) {
                return Err(BuildError::open(
                    BACKEND,
                    format!(
                        "JetStream stream '{stream_name}' does not exist; create it or set \"create_stream\": true"
                    ),
                ));
            }
            let subjects = match &cfg.stream_subjects {
                Some(s) => s.0.clone(),
                None => vec![filter.clone().unwrap_or_else(|| format!("{stream_name}.>"))],
            };
            let config = stream::Config { name: stream_name.clone(), subjects: subjects.clone(), ..Default::default() };
            let created = js.create_stream(config).await;
            match created {
                Ok(s) => {
                    tracing::info!(stream = %stream_name, ?subjects, "created JetStream stream for the source");
                    s
                }
                // Another relay created it meanwhile.
                Err(_) => js.get_stream(&stream_name).await.map_err(|e| {
                    BuildError::open(
                        BACKEND,
                        format!("cannot create stream '{stream_name}' with subjects {subjects:?}"),
                    )
                    .because(e)
                })?,
            }
        }
        Err(e) => {
            return Err(BuildError::unreachable(BACKEND, format!("cannot look up stream '{stream_name}'")).because(e))
        }
    };
    let config = pull::Config {
        durable_name: Some(durable.clone()),
        filter_subject: filter.clone().unwrap_or_default(),
        deliver_policy,
        ack_policy: AckPolicy::Explicit,
        ack_wait,
        max_deliver,
        max_ack_pending: cfg.max_ack_pending.map_or(20_000, |n| n.get() as i64),
        ..Default::default()
    };
    let consumer = stream.get_or_create_consumer(&durable, config).await.map_err(|e| {
        BuildError::open(BACKEND, format!("cannot create durable consumer '{durable}' on stream '{stream_name}'"))
            .because(e)
    })?;
    Ok(Box::new(NatsSource { client, stream: stream_name, consumer, pending: Vec::new() }))
}

impl NatsSource {
    fn incoming(&self, m: &jetstream::Message, seq: u64) -> Incoming {
        let headers: Vec<(String, String)> = m
            .headers
            .iter()
            .flat_map(|h| h.iter())
            .flat_map(|(k, vs)| vs.iter().map(move |v| (k.to_string(), v.to_string())))
            .collect();
        let id = headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("Nats-Msg-Id")).map(|(_, v)| v.clone());
        Incoming {
            id,
            coordinate: format!("nats:{}:{seq}", self.stream),
            subject: Some(m.subject.to_string()),
            key: None,
            headers,
            body: m.payload.to_vec(),
            null_body: false,
        }
    }
}

impl Source for NatsSource {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn receive(&mut self, max: usize, wait: Duration) -> BoxFuture<'_, Result<Vec<Incoming>, SourceError>> {
        Box::pin(async move {
            // While the client reconnects a fetch only times out, which would look like an idle
            // stream: say that the server is gone, so the pipeline shows `degraded`.
            let gone = |state: async_nats::connection::State, stream: &str| {
                retryable(format!("not connected to NATS ({state}); stream '{stream}'"))
            };
            let state = self.client.connection_state();
            if state != async_nats::connection::State::Connected {
                tokio::time::sleep(wait.min(Duration::from_millis(500))).await;
                return Err(gone(state, &self.stream));
            }
            // The fetch expires after `wait` at the server; a server that went away answers
            // nothing, so the client gives up a little later.
            let deadline = tokio::time::Instant::now() + wait + Duration::from_secs(1);
            let fetched =
                tokio::time::timeout_at(deadline, self.consumer.fetch().max_messages(max).expires(wait).messages())
                    .await;
            let mut batch = match fetched {
                Ok(b) => b.map_err(|e| retryable(format!("fetch from stream '{}' failed: {e}", self.stream)))?,
                Err(_) => return Err(gone(self.client.connection_state(), &self.stream)),
            };
            let mut out = Vec::new();
            loop {
                // Every message handed out is in `pending` and in `out`, or in neither: an error
                // after some messages ends the batch with those (the next receive reports it).
                let failed = match tokio::time::timeout_at(deadline, batch.next()).await {
                    Ok(None) => break,
                    Ok(Some(Ok(m))) => match m.info().map(|i| i.stream_sequence) {
                        Ok(seq) => {
                            out.push(self.incoming(&m, seq));
                            self.pending.push(m);
                            continue;
                        }
                        Err(e) => retryable(format!("bad message metadata: {e}")),
                    },
                    Ok(Some(Err(e))) => retryable(format!("fetch from stream '{}' failed: {e}", self.stream)),
                    Err(_) => gone(self.client.connection_state(), &self.stream),
                };
                if out.is_empty() {
                    return Err(failed);
                }
                break;
            }
            Ok(out)
        })
    }

    fn ack<'a>(&'a mut self, _outcomes: &'a [Outcome]) -> BoxFuture<'a, Result<(), SourceError>> {
        Box::pin(async move {
            for m in self.pending.drain(..) {
                m.ack().await.map_err(|e| retryable(format!("ack failed: {e}")))?;
            }
            // A flush waits for the server: while it is gone the acks stay buffered (sent on
            // reconnect, or the messages come back and the event ids absorb them) and the next
            // receive reports the outage.
            match tokio::time::timeout(ACK_FLUSH_TIMEOUT, self.client.flush()).await {
                Ok(flushed) => flushed.map_err(|e| retryable(format!("ack flush failed: {e}"))),
                Err(_) => Err(retryable(format!(
                    "acks not confirmed by the server within {} s ({})",
                    ACK_FLUSH_TIMEOUT.as_secs(),
                    self.client.connection_state()
                ))),
            }
        })
    }

    fn nack<'a>(&'a mut self, _reason: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            for m in self.pending.drain(..) {
                let _ = m.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
            }
            let _ = self.client.flush().await;
        })
    }
}
