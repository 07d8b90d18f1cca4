//! Redis Streams sink.
//!
//! Each batch is one pipelined round trip of script calls, each appending up to 500 consecutive
//! entries of one stream key (`XADD`, optionally `MAXLEN ~ n`). A pipeline's messages arrive in
//! (outbox id, row index) order, so the script keeps a per-pipeline high-water mark next to the
//! stream (`<key>:pgtrickle-marks`, field `<pipeline>@<epoch scope>`, written atomically with the
//! entries) and skips anything not above it — a batch relayed again after a crash leaves no second entry, at one hash field of
//! cost instead of a marker per message.
//!
//! Batches are pipelined: the next batch is sent while Redis still runs the previous one (the
//! runner commits a batch once a later one was accepted). So that a failed batch can never be
//! hidden by a later one moving the mark past it, every call names the position of the entry this
//! sink sent before it on the same stream; the script refuses the call (`PGTRICKLE_GAP`) when the
//! mark is below that position, and the runner resends from the failed batch. Entry
//! fields: `dedup_key`, `subject`, `op`, `payload` (the row as JSON), `outbox_id`, and `before`
//! on updates. The stream key is a template (`pgtrickle.{stream_table}` by default).

use std::collections::{HashMap, VecDeque};

use futures::future::BoxFuture;

use super::{BuildError, Published, Sink, SinkContext, SinkError};
use crate::backend::redis::RedisSinkConfig;
use crate::message::envelope::Envelope;
use crate::message::{RelayMessage, Template, TemplateNames};
use crate::redact::redact_url;

const BACKEND: &str = "redis";
/// Entries per script call: long enough to amortise the call, short enough not to block Redis.
const MAX_ENTRIES_PER_CALL: usize = 500;

/// (outbox id, row index) of a message, from its dedup key `<outbox>:<id>:<index>`.
fn position(m: &RelayMessage) -> (i64, i64) {
    let index = m.dedup_key.rsplit(':').next().and_then(|i| i.parse().ok()).unwrap_or(0);
    (m.outbox_id.unwrap_or(0), index)
}

/// Appends a run of entries to one stream, skipping those at or below the pipeline's high-water
/// mark (its messages arrive in (outbox id, row index) order, so anything not above the mark was
/// appended before). KEYS[1] stream, KEYS[2] the marks hash; ARGV[1] mark field (the pipeline;
/// '' appends everything), ARGV[2] maxlen ('' for none), ARGV[3] `<outbox id>:<row index>` of the
/// entry sent just before this call ('' for none: the mark must have reached it, else the call is
/// refused with `PGTRICKLE_GAP`), then per entry: outbox id, row index, field count, fields.
/// Returns how many entries were skipped as duplicates. Public so the benchmark measures its
/// ceiling with the relay's own commands.
pub const APPEND_ONCE: &str = r#"
local use_mark = ARGV[1] ~= ''
local mark = use_mark and redis.call('HGET', KEYS[2], ARGV[1])
local mo, mi = -1, -1
if mark then
  local sep = string.find(mark, ':', 1, true)
  mo = tonumber(string.sub(mark, 1, sep - 1)); mi = tonumber(string.sub(mark, sep + 1))
end
if use_mark and ARGV[3] ~= '' then
  local sep = string.find(ARGV[3], ':', 1, true)
  local eo, ex = tonumber(string.sub(ARGV[3], 1, sep - 1)), tonumber(string.sub(ARGV[3], sep + 1))
  if mo < eo or (mo == eo and mi < ex) then
    return redis.error_reply('PGTRICKLE_GAP an earlier batch of this pipeline did not reach the stream')
  end
end
local i, dup = 4, 0
while i <= #ARGV do
  local o, x, nf = tonumber(ARGV[i]), tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  if not use_mark or o > mo or (o == mo and x > mi) then
    local args = {KEYS[1]}
    if ARGV[2] ~= '' then
      table.insert(args, 'MAXLEN'); table.insert(args, '~'); table.insert(args, ARGV[2])
    end
    table.insert(args, '*')
    for j = i + 3, i + 2 + nf do table.insert(args, ARGV[j]) end
    redis.call('XADD', unpack(args))
    mo, mi = o, x
  else
    dup = dup + 1
  end
  i = i + 3 + nf
end
if use_mark and mo >= 0 then redis.call('HSET', KEYS[2], ARGV[1], mo .. ':' .. mi) end
return dup
"#;

pub struct RedisSink {
    client: redis::Client,
    url: String,
    conn: Option<redis::aio::MultiplexedConnection>,
    script: redis::Script,
    /// Hash field of this pipeline's high-water mark: `<pipeline>@<epoch scope>`, so a recreated
    /// outbox, another database or relay group starts a mark of its own.
    mark_field: String,
    stream_key: Template,
    /// Names for the templates.
    names: TemplateNames,
    envelope: Envelope,
    maxlen: String,
    /// Skip entries at or below the pipeline's high-water mark (on by default).
    dedup: bool,
    /// Batches sent and not yet answered, oldest first (at most two: see `publish`).
    inflight: VecDeque<InFlight>,
    /// Per stream key, the position of the last entry sent on the current connection.
    last_sent: HashMap<String, (i64, i64)>,
}

/// A batch sent to Redis whose answer is still outstanding.
struct InFlight {
    messages: u64,
    reply: BoxFuture<'static, redis::RedisResult<Vec<i64>>>,
}

fn unreachable(url: &str, e: &redis::RedisError) -> SinkError {
    SinkError::retryable(BACKEND, format!("{}: {e}", redact_url(url)))
}

pub async fn build(cfg: &RedisSinkConfig, ctx: &SinkContext<'_>) -> Result<Box<dyn Sink>, BuildError> {
    let url = cfg.connection.url.0.clone();
    let stream_key = match &cfg.stream_key {
        Some(t) => t.0.clone(),
        None => Template::parse("pgtrickle.{stream_table}")
            .map_err(|e| BuildError::option(BACKEND, "stream_key", e.to_string()))?,
    };
    let maxlen = match cfg.maxlen.map_or(0, |n| n.get()) {
        0 => String::new(),
        n => n.to_string(),
    };
    let client = cfg.connection.client()?;
    let mut sink = RedisSink {
        client,
        url: url.clone(),
        conn: None,
        script: redis::Script::new(APPEND_ONCE),
        mark_field: format!("{}@{}", ctx.pipeline, ctx.dedup_scope),
        stream_key,
        names: ctx.names.clone(),
        envelope: ctx.envelope.clone(),
        maxlen,
        dedup: cfg.dedup.is_none_or(|f| f.0),
        inflight: VecDeque::new(),
        last_sent: HashMap::new(),
    };
    sink.connection().await.map_err(|e| BuildError::unreachable(BACKEND, "cannot connect to Redis").because(e))?;
    Ok(Box::new(sink))
}

impl RedisSink {
    async fn connection(&mut self) -> Result<redis::aio::MultiplexedConnection, SinkError> {
        if let Some(c) = &self.conn {
            return Ok(c.clone());
        }
        // A batch of script calls may take longer than the client's 500 ms default to answer.
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(std::time::Duration::from_secs(30)));
        let mut c = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| unreachable(&self.url, &e))?;
        // A (re)started server has no scripts: load ours on every new connection.
        self.script.load_async(&mut c).await.map_err(|e| unreachable(&self.url, &e))?;
        self.conn = Some(c.clone());
        Ok(c)
    }

    /// Waits for the oldest batch in flight and counts it; on failure forgets every batch in
    /// flight (the runner resends from the oldest unconfirmed one) and the connection.
    async fn settle_oldest(&mut self, done: &mut Published) -> Result<(), SinkError> {
        let Some(f) = self.inflight.pop_front() else { return Ok(()) };
        match f.reply.await {
            Ok(skipped) => {
                done.confirmed += f.messages;
                done.duplicates += skipped.iter().sum::<i64>().max(0) as u64;
                Ok(())
            }
            Err(e) => {
                self.reset();
                self.conn = None;
                let message = e.to_string();
                Err(if message.contains("PGTRICKLE_GAP") {
                    SinkError::retryable(BACKEND, "a batch sent before this one failed; resending from it")
                } else if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError)
                    && !message.contains("NOSCRIPT")
                {
                    SinkError::permanent(BACKEND, "Redis rejected a write").because(e)
                } else {
                    unreachable(&self.url, &e)
                })
            }
        }
    }

    fn key(&self, m: &RelayMessage) -> String {
        self.stream_key.render(&m.vars(&self.names))
    }
}

impl Sink for RedisSink {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn publish<'a>(&'a mut self, batch: &'a [RelayMessage]) -> BoxFuture<'a, Result<Published, SinkError>> {
        Box::pin(async move {
            let mut conn = self.connection().await?;
            // Consecutive messages for the same stream key go in one script call.
            let mut pipe = redis::pipe();
            let mut start = 0;
            while start < batch.len() {
                let key = self.key(&batch[start]);
                let mut end = start + 1;
                while end < batch.len() && end - start < MAX_ENTRIES_PER_CALL && self.key(&batch[end]) == key {
                    end += 1;
                }
                let expected = match (self.dedup, self.last_sent.get(&key)) {
                    (true, Some((o, x))) => format!("{o}:{x}"),
                    _ => String::new(),
                };
                let cmd = pipe
                    .cmd("EVALSHA")
                    .arg(self.script.get_hash())
                    .arg(2)
                    .arg(&key)
                    .arg(format!("{key}:pgtrickle-marks"))
                    .arg(if self.dedup { self.mark_field.as_str() } else { "" })
                    .arg(&self.maxlen)
                    .arg(expected);
                for m in &batch[start..end] {
                    let (outbox_id, index) = position(m);
                    // An envelope carries `before` itself and says what `payload` is.
                    let native = self.envelope.is_native();
                    let nf = if !native || m.before.is_some() { 14 } else { 12 };
                    cmd.arg(outbox_id)
                        .arg(index)
                        .arg(nf)
                        .arg("dedup_key")
                        .arg(&m.dedup_key)
                        .arg("subject")
                        .arg(&m.subject)
                        .arg("op")
                        .arg(m.op.as_str())
                        .arg("payload");
                    if native {
                        cmd.arg(m.payload.json());
                    } else {
                        cmd.arg(self.envelope.body(m));
                    }
                    cmd.arg("outbox_id").arg(m.outbox_id.unwrap_or(0)).arg("traceparent").arg(&*m.traceparent);
                    if !native {
                        cmd.arg("content-type").arg(self.envelope.content_type());
                    } else if let Some(before) = &m.before {
                        cmd.arg("before").arg(before.json());
                    }
                }
                self.last_sent.insert(key, position(&batch[end - 1]));
                start = end;
            }
            let mut reply: BoxFuture<'static, redis::RedisResult<Vec<i64>>> =
                Box::pin(async move { pipe.query_async(&mut conn).await });
            // One poll hands the commands to the connection, so batches reach Redis in order.
            if let std::task::Poll::Ready(r) = futures::poll!(reply.as_mut()) {
                reply = Box::pin(std::future::ready(r));
            }
            self.inflight.push_back(InFlight { messages: batch.len() as u64, reply });
            // Pipelined: wait for every earlier batch, not for this one.
            let mut done = Published::default();
            while self.inflight.len() > 1 {
                self.settle_oldest(&mut done).await?;
            }
            Ok(done)
        })
    }

    fn pipelined(&self) -> bool {
        true
    }

    fn flush(&mut self) -> BoxFuture<'_, Result<Published, SinkError>> {
        Box::pin(async move {
            let mut done = Published::default();
            while !self.inflight.is_empty() {
                self.settle_oldest(&mut done).await?;
            }
            Ok(done)
        })
    }

    fn reset(&mut self) {
        self.inflight.clear();
        self.last_sent.clear();
    }

    fn health(&mut self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            let mut conn = self.connection().await?;
            let pong: Result<String, _> = redis::cmd("PING").query_async(&mut conn).await;
            pong.map(|_| ()).map_err(|e| {
                self.conn = None;
                unreachable(&self.url, &e)
            })
        })
    }

    fn close(&mut self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            self.conn = None;
            Ok(())
        })
    }
}
