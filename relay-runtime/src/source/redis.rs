//! Redis Streams source: a consumer group (created with `MKSTREAM` when missing).
//!
//! After a start (or a batch that was not stored) the consumer first re-reads its own pending
//! entries (`XREADGROUP … 0`), then takes over entries another consumer left pending for longer
//! than `claim_idle_ms` (`XAUTOCLAIM`), then reads new ones (`XREADGROUP … >`, blocking up to the
//! runner's wait). After the inbox commit every entry of the batch is acknowledged with one
//! `XACK`. Body: the `payload` field (what the Redis sink writes), else all fields as a JSON
//! object. Event ids: the `dedup_key` (or upstream `pgt_dedup_key`) field, else
//! `redis:<stream>:<entry id>`.

use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};

use super::{Incoming, Outcome, Source, SourceContext, SourceError};
use crate::backend::fields::Text;
use crate::backend::redis::RedisSourceConfig;
use crate::backend::BuildError;
use crate::redact::redact_url;

const BACKEND: &str = "redis";
/// How often pending entries of other (possibly dead) consumers are looked at.
const CLAIM_EVERY: Duration = Duration::from_secs(5);

pub struct RedisSource {
    url: String,
    client: redis::Client,
    conn: Option<redis::aio::MultiplexedConnection>,
    key: String,
    group: String,
    consumer: String,
    claim_idle_ms: u64,
    /// Re-read this consumer's own pending entries before new ones.
    recover: bool,
    last_claim: Option<Instant>,
    pending: Vec<String>,
}

fn retryable(url: &str, e: &redis::RedisError) -> SourceError {
    SourceError::retryable(BACKEND, format!("{}: {e}", redact_url(url)))
}

pub async fn build(cfg: &RedisSourceConfig, ctx: &SourceContext<'_>) -> Result<Box<dyn Source>, BuildError> {
    let url = cfg.connection.url.0.clone();
    let client = cfg.connection.client()?;
    let mut source = RedisSource {
        client,
        conn: None,
        key: cfg.stream_key.0.clone(),
        group: cfg.group_name.as_ref().map_or("pgtrickle-relay", Text::as_str).to_owned(),
        consumer: cfg.consumer_name.as_ref().map_or(ctx.pipeline, Text::as_str).to_owned(),
        claim_idle_ms: cfg.claim_idle_ms.map_or(60_000, |n| n.get()),
        recover: true,
        last_claim: None,
        pending: Vec::new(),
        url,
    };
    let start = cfg.start_id.as_ref().map_or("0", Text::as_str).to_owned();
    let mut conn = source
        .connection()
        .await
        .map_err(|e| BuildError::unreachable(BACKEND, "cannot connect to Redis").because(e))?;
    let created: Result<(), redis::RedisError> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&source.key)
        .arg(&source.group)
        .arg(&start)
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await;
    match created {
        Ok(()) => tracing::info!(stream = %source.key, group = %source.group, start, "created Redis consumer group"),
        Err(e) if e.to_string().contains("BUSYGROUP") => {}
        Err(e) => {
            return Err(BuildError::open(
                BACKEND,
                format!("cannot create consumer group '{}' on '{}'", source.group, source.key),
            )
            .because(e))
        }
    }
    Ok(Box::new(source))
}

impl RedisSource {
    async fn connection(&mut self) -> Result<redis::aio::MultiplexedConnection, SourceError> {
        if let Some(c) = &self.conn {
            return Ok(c.clone());
        }
        // Blocking reads wait up to the runner's wait: more than the client's 500 ms default.
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(30)));
        let c = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| retryable(&self.url, &e))?;
        self.conn = Some(c.clone());
        Ok(c)
    }

    fn incoming(&self, entry: &StreamId) -> Incoming {
        // One pass: the `payload` field is the body, every other field a header.
        let mut body = None;
        let mut headers = Vec::with_capacity(entry.map.len());
        for (k, v) in &entry.map {
            let Ok(bytes) = redis::from_redis_value::<Vec<u8>>(v.clone()) else { continue };
            if k == "payload" {
                body = Some(bytes);
            } else {
                headers.push((k.clone(), String::from_utf8_lossy(&bytes).into_owned()));
            }
        }
        let field = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let body = body.unwrap_or_else(|| {
            let obj: serde_json::Map<String, serde_json::Value> =
                headers.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
            serde_json::Value::Object(obj).to_string().into_bytes()
        });
        Incoming {
            id: field("dedup_key").or_else(|| field("pgt_dedup_key")),
            coordinate: format!("redis:{}:{}", self.key, entry.id),
            subject: field("subject"),
            key: None,
            headers,
            body,
            null_body: false,
        }
    }

    async fn read(&mut self, id: &str, max: usize, block: Option<Duration>) -> Result<Vec<StreamId>, SourceError> {
        let mut conn = self.connection().await?;
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP").arg(&self.group).arg(&self.consumer).arg("COUNT").arg(max);
        if let Some(b) = block {
            cmd.arg("BLOCK").arg(b.as_millis().max(1) as u64);
        }
        cmd.arg("STREAMS").arg(&self.key).arg(id);
        let reply: Option<StreamReadReply> = cmd.query_async(&mut conn).await.map_err(|e| {
            self.conn = None;
            retryable(&self.url, &e)
        })?;
        Ok(reply.map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect()).unwrap_or_default())
    }
}

impl Source for RedisSource {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn receive(&mut self, max: usize, wait: Duration) -> BoxFuture<'_, Result<Vec<Incoming>, SourceError>> {
        Box::pin(async move {
            let mut entries = Vec::new();
            if self.recover {
                entries = self.read("0", max, None).await?;
                // Entries trimmed from the stream since come back without fields: nothing to
                // store; acknowledge them so they leave the pending list.
                let gone: Vec<String> = entries.iter().filter(|e| e.map.is_empty()).map(|e| e.id.clone()).collect();
                if !gone.is_empty() {
                    let mut conn = self.connection().await?;
                    let _: i64 = redis::cmd("XACK")
                        .arg(&self.key)
                        .arg(&self.group)
                        .arg(&gone)
                        .query_async(&mut conn)
                        .await
                        .map_err(|e| retryable(&self.url, &e))?;
                    entries.retain(|e| !e.map.is_empty());
                }
                if entries.is_empty() {
                    self.recover = false;
                }
            }
            if entries.is_empty() && self.last_claim.is_none_or(|t| t.elapsed() > CLAIM_EVERY) {
                self.last_claim = Some(Instant::now());
                let mut conn = self.connection().await?;
                let claimed: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                    .arg(&self.key)
                    .arg(&self.group)
                    .arg(&self.consumer)
                    .arg(self.claim_idle_ms)
                    .arg("0-0")
                    .arg("COUNT")
                    .arg(max)
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| retryable(&self.url, &e))?;
                if !claimed.claimed.is_empty() {
                    tracing::info!(stream = %self.key, claimed = claimed.claimed.len(), "took over entries left pending by another consumer");
                }
                entries = claimed.claimed;
            }
            if entries.is_empty() {
                entries = self.read(">", max, Some(wait)).await?;
            }
            self.pending = entries.iter().map(|e| e.id.clone()).collect();
            Ok(entries.iter().map(|e| self.incoming(e)).collect())
        })
    }

    fn ack<'a>(&'a mut self, _outcomes: &'a [Outcome]) -> BoxFuture<'a, Result<(), SourceError>> {
        Box::pin(async move {
            if self.pending.is_empty() {
                return Ok(());
            }
            let mut conn = self.connection().await?;
            let ids = std::mem::take(&mut self.pending);
            let _: i64 = redis::cmd("XACK")
                .arg(&self.key)
                .arg(&self.group)
                .arg(&ids)
                .query_async(&mut conn)
                .await
                .map_err(|e| retryable(&self.url, &e))?;
            Ok(())
        })
    }

    fn nack<'a>(&'a mut self, _reason: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            // The entries stay in this consumer's pending list: read them again first.
            self.pending.clear();
            self.recover = true;
        })
    }
}
