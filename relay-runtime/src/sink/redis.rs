//! Redis Streams sink.
//!
//! Each batch is one pipelined round trip. Every message goes through a small Lua script that
//! appends the entry (`XADD`, optionally `MAXLEN ~ n`) only if its dedup key was not seen within
//! `dedup_window_seconds` (a `SET NX EX` marker, written atomically with the entry) — so a batch
//! relayed again after a crash leaves no second entry, like JetStream's duplicate window. Entry
//! fields: `dedup_key`, `subject`, `op`, `payload` (the row as JSON), `outbox_id`, and `before`
//! on updates. The stream key is a template (`pgtrickle.{stream_table}` by default).

use futures::future::BoxFuture;

use super::options::Options;
use super::{BuildError, Published, Sink, SinkContext, SinkError};
use crate::catalog::redact_url;
use crate::message::{RelayMessage, Template, TemplateVars};

const BACKEND: &str = "redis";

/// KEYS[1] stream, KEYS[2] dedup marker; ARGV[1] window seconds (0: no dedup), ARGV[2] maxlen
/// ('' for none), ARGV[3..] field/value pairs. Returns the entry id, or nil for a duplicate.
const XADD_ONCE: &str = r#"
if tonumber(ARGV[1]) > 0 then
  if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[1]) then
    return false
  end
end
local args = {KEYS[1]}
if ARGV[2] ~= '' then
  table.insert(args, 'MAXLEN'); table.insert(args, '~'); table.insert(args, ARGV[2])
end
table.insert(args, '*')
for i = 3, #ARGV do table.insert(args, ARGV[i]) end
return redis.call('XADD', unpack(args))
"#;

pub struct RedisSink {
    client: redis::Client,
    url: String,
    conn: Option<redis::aio::MultiplexedConnection>,
    script: redis::Script,
    stream_key: Template,
    stream_table: String,
    outbox_table: String,
    maxlen: String,
    window: u64,
}

fn unreachable(url: &str, e: &redis::RedisError) -> SinkError {
    SinkError::Retryable { backend: BACKEND, message: format!("{}: {e}", redact_url(url)) }
}

pub async fn build(
    options: &serde_json::Map<String, serde_json::Value>,
    ctx: &SinkContext<'_>,
) -> Result<Box<dyn Sink>, BuildError> {
    let o = Options::new(BACKEND, options);
    let url = o.required_str(&["url"])?.to_owned();
    let stream_key = Template::parse(o.str(&["stream_key", "stream"])?.unwrap_or("pgtrickle.{stream_table}"))
        .map_err(|e| BuildError::Option { backend: BACKEND, key: "stream_key".into(), message: e.to_string() })?;
    let maxlen = match o.u64("maxlen", 0, 0, u64::MAX >> 1)? {
        0 => String::new(),
        n => n.to_string(),
    };
    let client = redis::Client::open(url.as_str()).map_err(|e| BuildError::Option {
        backend: BACKEND,
        key: "url".into(),
        message: format!("not a Redis URL ({}): {e}", redact_url(&url)),
    })?;
    let mut sink = RedisSink {
        client,
        url: url.clone(),
        conn: None,
        script: redis::Script::new(XADD_ONCE),
        stream_key,
        stream_table: ctx.stream_table.to_owned(),
        outbox_table: ctx.outbox_table.to_owned(),
        maxlen,
        window: o.u64("dedup_window_seconds", 120, 0, 86_400 * 7)?,
    };
    sink.connection()
        .await
        .map_err(|e| BuildError::Unreachable { backend: BACKEND, message: format!("cannot connect to Redis: {e}") })?;
    Ok(Box::new(sink))
}

impl RedisSink {
    async fn connection(&mut self) -> Result<redis::aio::MultiplexedConnection, SinkError> {
        if let Some(c) = &self.conn {
            return Ok(c.clone());
        }
        let mut c = self.client.get_multiplexed_async_connection().await.map_err(|e| unreachable(&self.url, &e))?;
        // A (re)started server has no scripts: load ours on every new connection.
        self.script.load_async(&mut c).await.map_err(|e| unreachable(&self.url, &e))?;
        self.conn = Some(c.clone());
        Ok(c)
    }

    fn key(&self, m: &RelayMessage) -> String {
        self.stream_key.render(&TemplateVars {
            stream_table: &self.stream_table,
            outbox_table: &self.outbox_table,
            op: m.op,
            outbox_id: m.outbox_id.unwrap_or(0),
            refresh_id: m.refresh_id.as_deref(),
        })
    }
}

impl Sink for RedisSink {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn publish<'a>(&'a mut self, batch: &'a [RelayMessage]) -> BoxFuture<'a, Result<Published, SinkError>> {
        Box::pin(async move {
            let mut conn = self.connection().await?;
            let mut pipe = redis::pipe();
            for m in batch {
                let key = self.key(m);
                let marker = format!("{key}:pgtrickle-dedup:{}", m.dedup_key);
                let cmd = pipe
                    .cmd("EVALSHA")
                    .arg(self.script.get_hash())
                    .arg(2)
                    .arg(&key)
                    .arg(&marker)
                    .arg(self.window)
                    .arg(&self.maxlen)
                    .arg("dedup_key")
                    .arg(&m.dedup_key)
                    .arg("subject")
                    .arg(&m.subject)
                    .arg("op")
                    .arg(m.op.as_str())
                    .arg("payload")
                    .arg(m.payload.to_string())
                    .arg("outbox_id")
                    .arg(m.outbox_id.unwrap_or(0));
                if let Some(before) = &m.before {
                    cmd.arg("before").arg(before.to_string());
                }
            }
            let ids: Vec<Option<String>> = match pipe.query_async(&mut conn).await {
                Ok(ids) => ids,
                Err(e) => {
                    // The connection may be dead; the next attempt opens a new one.
                    self.conn = None;
                    return Err(
                        if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError)
                            && !e.to_string().contains("NOSCRIPT")
                        {
                            SinkError::Permanent { backend: BACKEND, message: format!("Redis rejected a write: {e}") }
                        } else {
                            unreachable(&self.url, &e)
                        },
                    );
                }
            };
            let duplicates = ids.iter().filter(|id| id.is_none()).count() as u64;
            Ok(Published { confirmed: batch.len() as u64, duplicates })
        })
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
