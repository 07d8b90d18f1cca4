//! HTTP webhook receiver: senders POST JSON events; the relay answers **after** the inbox commit.
//!
//! A 2xx means the event is stored (or was already: a retried request is a duplicate); any
//! failure before the commit — the database is down, the relay is stopping or killed — gives
//! the sender a non-2xx or a broken connection, so it retries. Checks, in order: path (404),
//! method POST (405), bearer token / custom auth header (401), `Content-Type` JSON (415), body
//! size (413), HMAC signature (401). A JSON array body is a batch: one event per element.
//! Event ids: `Idempotency-Key` (`<key>:<index>` for array elements), else
//! `webhook:<sha256 of the body>`; an event whose body is not JSON is dead-lettered and answered
//! 422. With `tls_cert` + `tls_key` the receiver speaks HTTPS only.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use warp::http::{HeaderMap, Method, StatusCode};
use warp::Filter;

use super::{Incoming, Outcome, Source, SourceContext, SourceError};
use crate::backend::fields::Text;
use crate::backend::webhook::WebhookSourceConfig;
use crate::backend::BuildError;

const BACKEND: &str = "webhook";
/// Requests waiting for the runner; beyond this, senders get 503 and retry.
const QUEUE: usize = 1024;

type Answer = Result<Vec<Outcome>, String>;

struct Request {
    messages: Vec<Incoming>,
    respond: oneshot::Sender<Answer>,
}

struct Checks {
    path: String,
    bearer: Option<String>,
    auth_header: Option<(String, String)>,
    signing_secret: Option<Vec<u8>>,
    signature_header: String,
    max_body: usize,
}

pub struct WebhookSource {
    rx: mpsc::Receiver<Request>,
    /// Responders of the current batch, with how many messages each request contributed.
    pending: Vec<(oneshot::Sender<Answer>, usize)>,
    shutdown: CancellationToken,
    pub addr: SocketAddr,
}

pub async fn build(cfg: &WebhookSourceConfig, ctx: &SourceContext<'_>) -> Result<Box<dyn Source>, BuildError> {
    let err = |key: &str, m: String| BuildError::option(BACKEND, key, m);
    let bind = cfg.bind.as_ref().map_or("0.0.0.0:8080", Text::as_str);
    let addr: SocketAddr = bind.parse().map_err(|e| err("bind", format!("'{bind}' is not host:port ({e})")))?;
    let mut path = cfg.path.as_ref().map_or("/", Text::as_str).to_owned();
    if !path.starts_with('/') {
        path.insert(0, '/');
    }
    let auth_header = match (&cfg.auth_header, &cfg.auth_value) {
        (Some(h), Some(v)) => Some((h.0.clone(), v.expose().to_owned())),
        (None, None) => None,
        _ => return Err(err("auth_header", "auth_header and auth_value go together".into())),
    };
    let checks = std::sync::Arc::new(Checks {
        path,
        bearer: cfg.auth_token.as_ref().map(|t| t.expose().to_owned()),
        auth_header,
        signing_secret: cfg.signing_secret.as_ref().map(|s| s.expose().as_bytes().to_vec()),
        signature_header: cfg.signature_header.as_ref().map_or("X-Pgtrickle-Signature", Text::as_str).to_owned(),
        max_body: cfg.max_body_bytes.map_or(1_048_576, |n| n.get() as usize),
    });
    // HTTPS when a certificate and key (PEM files) are given.
    let tls = match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(cert), Some(key)) => {
            for (k, path) in [("tls_cert", cert.as_str()), ("tls_key", key.as_str())] {
                std::fs::metadata(path).map_err(|e| err(k, format!("cannot read {path}: {e}")))?;
            }
            Some((cert.0.clone(), key.0.clone()))
        }
        (None, None) => None,
        _ => return Err(err("tls_cert", "tls_cert and tls_key go together".into())),
    };
    let (tx, rx) = mpsc::channel(QUEUE);
    let shutdown = CancellationToken::new();
    let route = warp::any()
        .and(warp::method())
        .and(warp::path::full())
        .and(warp::header::headers_cloned())
        .and(warp::body::bytes())
        .then(move |method: Method, path: warp::path::FullPath, headers: HeaderMap, body: Bytes| {
            let checks = std::sync::Arc::clone(&checks);
            let tx = tx.clone();
            async move { handle(&checks, &tx, method, path.as_str(), &headers, body).await }
        });
    let stop = shutdown.clone();
    let cannot_listen = |e: warp::Error| {
        BuildError::open(
            BACKEND,
            format!("cannot listen on {addr}: {e}; check \"bind\" (and \"tls_cert\"/\"tls_key\")"),
        )
    };
    let bound = match tls {
        Some((cert, key)) => {
            let (bound, server) = warp::serve(route)
                .tls()
                .cert_path(cert)
                .key_path(key)
                .try_bind_with_graceful_shutdown(addr, async move { stop.cancelled().await })
                .map_err(cannot_listen)?;
            tokio::spawn(server);
            bound
        }
        None => {
            let (bound, server) = warp::serve(route)
                .try_bind_with_graceful_shutdown(addr, async move { stop.cancelled().await })
                .map_err(cannot_listen)?;
            tokio::spawn(server);
            bound
        }
    };
    tracing::info!(pipeline = ctx.pipeline, addr = %bound, "webhook receiver listening");
    Ok(Box::new(WebhookSource { rx, pending: Vec::new(), shutdown, addr: bound }))
}

fn reply(code: StatusCode, body: serde_json::Value) -> warp::reply::Response {
    use warp::Reply;
    warp::reply::with_status(warp::reply::json(&body), code).into_response()
}

fn error(code: StatusCode, message: &str) -> warp::reply::Response {
    reply(code, serde_json::json!({ "error": message }))
}

/// Constant-time comparison of two secrets.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

async fn handle(
    checks: &Checks,
    tx: &mpsc::Sender<Request>,
    method: Method,
    path: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> warp::reply::Response {
    if path != checks.path {
        return error(StatusCode::NOT_FOUND, "no webhook receiver on this path");
    }
    if method != Method::POST {
        return error(StatusCode::METHOD_NOT_ALLOWED, "use POST");
    }
    if let Some(token) = &checks.bearer {
        let given = header(headers, "authorization").and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("");
        if !same(given.as_bytes(), token.as_bytes()) {
            return error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        }
    }
    if let Some((name, value)) = &checks.auth_header {
        if !same(header(headers, name).unwrap_or("").as_bytes(), value.as_bytes()) {
            return error(StatusCode::UNAUTHORIZED, &format!("missing or wrong {name} header"));
        }
    }
    let content_type = header(headers, "content-type").unwrap_or("");
    if !content_type.to_ascii_lowercase().contains("json") {
        return error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "Content-Type must be application/json");
    }
    if body.len() > checks.max_body {
        return error(StatusCode::PAYLOAD_TOO_LARGE, &format!("body over {} bytes", checks.max_body));
    }
    if let Some(secret) = &checks.signing_secret {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
            return error(StatusCode::INTERNAL_SERVER_ERROR, "bad signing secret");
        };
        mac.update(&body);
        let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        if !same(header(headers, &checks.signature_header).unwrap_or("").as_bytes(), expected.as_bytes()) {
            return error(StatusCode::UNAUTHORIZED, &format!("missing or wrong {} signature", checks.signature_header));
        }
    }
    let messages = incoming(headers, &body);
    let count = messages.len();
    let (respond, answer) = oneshot::channel();
    if tx.try_send(Request { messages, respond }).is_err() {
        use warp::Reply;
        let mut r = error(StatusCode::SERVICE_UNAVAILABLE, "receiver busy; retry");
        r.headers_mut().insert("retry-after", warp::http::HeaderValue::from_static("1"));
        return r.into_response();
    }
    match answer.await {
        Ok(Ok(outcomes)) => {
            let stored = outcomes.iter().filter(|o| **o == Outcome::Stored).count();
            let duplicates = outcomes.iter().filter(|o| **o == Outcome::Duplicate).count();
            let dead: Vec<&str> = outcomes
                .iter()
                .filter_map(|o| match o {
                    Outcome::DeadLettered(e) => Some(e.as_str()),
                    _ => None,
                })
                .collect();
            if dead.is_empty() {
                reply(StatusCode::OK, serde_json::json!({"stored": stored, "duplicates": duplicates, "events": count}))
            } else {
                reply(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    serde_json::json!({"stored": stored, "duplicates": duplicates, "dead_lettered": dead.len(),
                                       "error": dead[0], "events": count}),
                )
            }
        }
        Ok(Err(reason)) => error(StatusCode::SERVICE_UNAVAILABLE, &format!("not stored: {reason}; retry")),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "the receiver is stopping; retry"),
    }
}

/// The events of one request: a JSON array is one event per element.
fn incoming(headers: &HeaderMap, body: &Bytes) -> Vec<Incoming> {
    let key = header(headers, "idempotency-key").filter(|k| !k.is_empty()).map(str::to_owned);
    let mut kept: Vec<(String, String)> = ["traceparent", "content-type", "user-agent", "x-event-type"]
        .iter()
        .filter_map(|n| header(headers, n).map(|v| ((*n).to_owned(), v.to_owned())))
        .collect();
    // CloudEvents binary mode: every attribute is a `ce-` header.
    kept.extend(
        headers
            .iter()
            .filter(|(k, _)| k.as_str().starts_with("ce-"))
            .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned()))),
    );
    // One CloudEvent whose data is an array stays one event; a CloudEvents batch is split.
    let content_type = header(headers, "content-type").unwrap_or_default().to_ascii_lowercase();
    let one_event = header(headers, "ce-specversion").is_some()
        || (content_type.starts_with("application/cloudevents")
            && !content_type.starts_with("application/cloudevents-batch"));
    let items = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Array(items)) if !one_event => Some(items),
        _ => None,
    };
    if let Some(items) = items {
        return items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let bytes = item.to_string().into_bytes();
                Incoming {
                    id: key.as_ref().map(|k| format!("{k}:{i}")),
                    coordinate: format!("webhook:{}", sha256_hex(&bytes)),
                    subject: None,
                    key: None,
                    headers: kept.clone(),
                    body: bytes,
                    null_body: false,
                }
            })
            .collect();
    }
    vec![Incoming {
        id: key,
        coordinate: format!("webhook:{}", sha256_hex(body)),
        subject: None,
        key: None,
        headers: kept,
        body: body.to_vec(),
        null_body: false,
    }]
}

impl Source for WebhookSource {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn receive(&mut self, max: usize, wait: Duration) -> BoxFuture<'_, Result<Vec<Incoming>, SourceError>> {
        Box::pin(async move {
            let mut out = Vec::new();
            let first = match tokio::time::timeout(wait, self.rx.recv()).await {
                Ok(Some(r)) => r,
                Ok(None) => return Err(SourceError::permanent(BACKEND, "the receiver stopped")),
                Err(_) => return Ok(out),
            };
            let mut next = Some(first);
            while let Some(r) = next.take() {
                self.pending.push((r.respond, r.messages.len()));
                out.extend(r.messages);
                if out.len() < max {
                    next = self.rx.try_recv().ok();
                }
            }
            Ok(out)
        })
    }

    fn ack<'a>(&'a mut self, outcomes: &'a [Outcome]) -> BoxFuture<'a, Result<(), SourceError>> {
        Box::pin(async move {
            let mut rest = outcomes;
            for (respond, n) in self.pending.drain(..) {
                let (mine, tail) = rest.split_at(n.min(rest.len()));
                rest = tail;
                // A sender that gave up (timeout) learns nothing; its retry is a duplicate.
                let _ = respond.send(Ok(mine.to_vec()));
            }
            Ok(())
        })
    }

    fn nack<'a>(&'a mut self, reason: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            for (respond, _) in self.pending.drain(..) {
                let _ = respond.send(Err(reason.to_owned()));
            }
        })
    }

    fn close(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.shutdown.cancel();
        })
    }
}

impl Drop for WebhookSource {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
