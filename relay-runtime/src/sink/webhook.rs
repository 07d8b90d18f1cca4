//! HTTP webhook sink.
//!
//! `batch_mode: true` (the default, as the upstream relay, but for `envelope: cloudevents`,
//! whose HTTP binding sends batches only when asked for) sends a JSON array of up to
//! `max_batch_messages` messages per request; `false` sends one message per request. Requests
//! go out one at a time by default so the receiver sees outbox order; `max_in_flight` above 1
//! trades order for throughput. Every request carries an `Idempotency-Key` (per-message mode:
//! the dedup key; batch mode: `<first key>..<last key>`, with each item's own `dedup_key` in the
//! body) so a receiver can drop redeliveries, and, with `signing_secret`, an HMAC-SHA256
//! signature of the body. 408, 429 and 5xx are retried (honouring `Retry-After`); any other
//! 4xx is a permanent error. Connections are kept alive and reused.

use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use futures::StreamExt;
use hmac::{Hmac, Mac};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use reqwest::{Method, StatusCode};
use sha2::Sha256;

use super::{BuildError, Published, Sink, SinkContext, SinkError};
use crate::backend::fields::Text;
use crate::backend::webhook::{Method as HttpMethod, WebhookSinkConfig};
use crate::backoff::Backoff;
use crate::message::envelope::{Binding, Envelope, CLOUDEVENTS_BATCH_JSON, JSON};
use crate::message::RelayMessage;
use crate::redact::redact_url;

const BACKEND: &str = "webhook";
/// Longest `Retry-After` honoured inside one publish; longer waits go back to the runner.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

pub struct WebhookSink {
    client: reqwest::Client,
    url: String,
    method: Method,
    headers: HeaderMap,
    batch_mode: bool,
    max_batch: usize,
    in_flight: usize,
    retries: u32,
    signing_secret: Option<Vec<u8>>,
    signature_header: HeaderName,
    envelope: Envelope,
}

fn opt_err(key: &str, message: impl Into<String>) -> BuildError {
    BuildError::option(BACKEND, key, message)
}

pub async fn build(cfg: &WebhookSinkConfig, ctx: &SinkContext<'_>) -> Result<Box<dyn Sink>, BuildError> {
    let url = cfg.url.0.clone();
    let parsed = reqwest::Url::parse(&url).map_err(|e| opt_err("url", format!("not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(opt_err("url", "must be an http:// or https:// URL"));
    }
    let method = match cfg.method.map(|m| m.0) {
        None | Some(HttpMethod::Post) => Method::POST,
        Some(HttpMethod::Put) => Method::PUT,
        Some(HttpMethod::Patch) => Method::PATCH,
    };
    let mut headers = HeaderMap::new();
    headers.insert(USER_AGENT, HeaderValue::from_static(concat!("pgtrickle-relay/", env!("CARGO_PKG_VERSION"))));
    for (k, v) in cfg.headers.iter().flat_map(|h| &h.0) {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| opt_err("headers", format!("'{k}' is not a header name")))?;
        let value = HeaderValue::from_str(v)
            .map_err(|_| opt_err("headers", format!("value of '{k}' must be a string without newlines")))?;
        headers.insert(name, value);
    }
    let timeout = cfg.timeout_ms.map_or(Duration::from_secs(10), |n| n.millis());
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true);
    if let Some(ca) = &cfg.tls_ca {
        let ca = ca.as_str();
        let pem = std::fs::read(ca).map_err(|e| opt_err("tls_ca", format!("cannot read {ca}: {e}")))?;
        let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| opt_err("tls_ca", format!("{ca}: {e}")))?;
        builder = builder.add_root_certificate(cert);
    }
    let client = builder.build().map_err(|e| BuildError::open(BACKEND, e.to_string()))?;
    let signature_header =
        HeaderName::from_bytes(cfg.signature_header.as_ref().map_or("X-Pgtrickle-Signature", Text::as_str).as_bytes())
            .map_err(|_| opt_err("signature_header", "not a header name"))?;
    Ok(Box::new(WebhookSink {
        client,
        url,
        method,
        headers,
        // CloudEvents batches "MUST NOT be used unless solicited" (HTTP binding §3.3): one event
        // per request unless `batch_mode` asks for arrays.
        batch_mode: cfg.batch_mode.map_or(!ctx.envelope.is_cloudevents(), |f| f.0),
        max_batch: cfg.max_batch_messages.map_or(100, |n| n.get() as usize),
        in_flight: cfg.max_in_flight.map_or(1, |n| n.get() as usize),
        retries: cfg.max_retries.map_or(3, |n| n.get() as u32),
        signing_secret: cfg.signing_secret.as_ref().map(|s| s.expose().as_bytes().to_vec()),
        signature_header,
        envelope: ctx.envelope.clone(),
    }))
}

/// One HTTP request's worth of messages.
struct Request {
    body: Vec<u8>,
    idempotency_key: String,
    /// The first message's trace context (a batch carries its first outbox row's).
    traceparent: std::sync::Arc<str>,
    op: Option<&'static str>,
    full_refresh: bool,
    content_type: &'static str,
    /// CloudEvents binary mode: the event's attributes as `ce-*` headers.
    attributes: Vec<(HeaderName, HeaderValue)>,
}

impl WebhookSink {
    fn requests(&self, batch: &[RelayMessage]) -> Result<Vec<Request>, SinkError> {
        if self.batch_mode {
            batch
                .chunks(self.max_batch)
                .map(|chunk| {
                    let (first, last) = (&chunk[0].dedup_key, &chunk[chunk.len() - 1].dedup_key);
                    let mut body = Vec::with_capacity(chunk.iter().map(|m| m.payload.json().len() + 320).sum());
                    body.push(b'[');
                    for (i, m) in chunk.iter().enumerate() {
                        if i > 0 {
                            body.push(b',');
                        }
                        self.envelope.write_body(m, &mut body);
                    }
                    body.push(b']');
                    Ok(Request {
                        body,
                        idempotency_key: if chunk.len() == 1 { first.clone() } else { format!("{first}..{last}") },
                        traceparent: chunk[0].traceparent.clone(),
                        op: None,
                        full_refresh: false,
                        content_type: if self.envelope.is_cloudevents() { CLOUDEVENTS_BATCH_JSON } else { JSON },
                        attributes: Vec::new(),
                    })
                })
                .collect()
        } else {
            batch
                .iter()
                .map(|m| {
                    let mut attributes = Vec::new();
                    let mut bad = None;
                    self.envelope.attributes(m, Binding::Http, |k, v| {
                        // Names are the binding's fixed lower-case `ce-*` names; values are
                        // percent-encoded, so always valid too.
                        match HeaderValue::from_str(v) {
                            Ok(v) => attributes.push((HeaderName::from_static(k), v)),
                            Err(_) => bad = Some(k),
                        }
                    });
                    if let Some(k) = bad {
                        return Err(SinkError::permanent(
                            BACKEND,
                            format!("attribute '{k}' of message {} is not a valid header", m.dedup_key),
                        ));
                    }
                    Ok(Request {
                        body: self.envelope.body(m),
                        idempotency_key: m.dedup_key.clone(),
                        traceparent: m.traceparent.clone(),
                        op: Some(m.op.as_str()),
                        full_refresh: m.is_full_refresh,
                        content_type: self.envelope.content_type(),
                        attributes,
                    })
                })
                .collect()
        }
    }

    fn signature(&self, body: &[u8]) -> Option<String> {
        let secret = self.signing_secret.as_ref()?;
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).ok()?;
        mac.update(body);
        Some(format!("sha256={}", hex::encode(mac.finalize().into_bytes())))
    }

    /// Sends one request until it succeeds, fails permanently, or runs out of retries.
    async fn send(&self, req: &Request) -> Result<(), SinkError> {
        let mut headers = self.headers.clone();
        let value = |s: &str| HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"));
        // A `Content-Type` among the configured headers wins.
        if !self.headers.contains_key(CONTENT_TYPE) {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(req.content_type));
        }
        headers.extend(req.attributes.iter().map(|(k, v)| (k.clone(), v.clone())));
        headers.insert(HeaderName::from_static("idempotency-key"), value(&req.idempotency_key));
        headers.insert(HeaderName::from_static("traceparent"), value(&req.traceparent));
        if let Some(op) = req.op {
            headers.insert(HeaderName::from_static("pgtrickle-op"), value(op));
        }
        if req.full_refresh {
            headers.insert(HeaderName::from_static("pgtrickle-full-refresh"), HeaderValue::from_static("true"));
        }
        if let Some(sig) = self.signature(&req.body) {
            headers.insert(self.signature_header.clone(), value(&sig));
        }
        let mut attempt = 0;
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_millis(6400));
        loop {
            let sent = self
                .client
                .request(self.method.clone(), &self.url)
                .headers(headers.clone())
                .body(req.body.clone())
                .send()
                .await;
            let (error, retry_after) = match sent {
                Ok(resp) if resp.status().is_success() => return Ok(()),
                Ok(resp) => {
                    let status = resp.status();
                    let retry_after = resp
                        .headers()
                        .get(RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    let body: String = resp.text().await.unwrap_or_default().chars().take(200).collect();
                    let message = format!("{} answered {status}: {body}", redact_url(&self.url));
                    if !retryable_status(status) {
                        return Err(SinkError::permanent(BACKEND, message));
                    }
                    (message, retry_after)
                }
                Err(e) => (format!("request to {} failed: {e}", redact_url(&self.url)), None),
            };
            attempt += 1;
            let wait = retry_after.unwrap_or_else(|| backoff.next_wait());
            if attempt > self.retries || wait > MAX_RETRY_AFTER {
                return Err(SinkError::retryable(BACKEND, error));
            }
            tracing::debug!(error = %error, attempt, wait_ms = wait.as_millis() as u64, "webhook request will be retried");
            tokio::time::sleep(wait).await;
        }
    }
}

/// 408, 429 and 5xx may succeed later; other statuses will not.
fn retryable_status(s: StatusCode) -> bool {
    s == StatusCode::REQUEST_TIMEOUT || s == StatusCode::TOO_MANY_REQUESTS || s.is_server_error()
}

impl Sink for WebhookSink {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn publish<'a>(&'a mut self, batch: &'a [RelayMessage]) -> BoxFuture<'a, Result<Published, SinkError>> {
        Box::pin(async move {
            let requests = self.requests(batch)?;
            let this = &*self;
            let mut pending = FuturesOrdered::new();
            for req in &requests {
                pending.push_back(this.send(req));
                while pending.len() >= this.in_flight {
                    if let Some(r) = pending.next().await {
                        r?;
                    }
                }
            }
            while let Some(r) = pending.next().await {
                r?;
            }
            Ok(Published { confirmed: batch.len() as u64, duplicates: 0 })
        })
    }

    fn close(&mut self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_timeouts_rate_limits_and_server_errors_are_retried() {
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(retryable_status(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        for s in [400, 401, 403, 404, 409, 410, 413, 422] {
            assert!(!retryable_status(StatusCode::from_u16(s).unwrap()), "{s}");
        }
    }
}
