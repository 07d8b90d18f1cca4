//! Optional OTLP export (`--otlp-endpoint`, off by default) of the relay spans whose W3C
//! context every forward message carries ([`crate::message::traceparent`]): one span per outbox
//! row and publish call, from the hand-over to the sink until the target confirmed it, with the
//! row's own trace and span ids — so the span a tracing backend shows is the one a consumer's
//! `traceparent` points at. Sent as OTLP/HTTP JSON by a batch processor on its own thread.

use std::sync::Arc;
use std::time::SystemTime;

use opentelemetry::trace::{Span as _, SpanBuilder, SpanId, SpanKind, TraceId, Tracer as _, TracerProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;

/// The relay's span exporter; [`Spans::disabled`] costs nothing.
#[derive(Default)]
pub struct Spans {
    inner: Option<(SdkTracerProvider, SdkTracer)>,
}

/// One outbox row's share of a publish call.
#[derive(Debug, Clone)]
pub struct RowSpan {
    pub traceparent: Arc<str>,
    pub outbox_id: Option<i64>,
    pub messages: u64,
}

/// The OTLP/HTTP traces URL of an endpoint: the collector's base URL (`http://host:4318`) gets
/// `/v1/traces`; a URL that already names a path is kept.
pub fn traces_url(endpoint: &str) -> String {
    let trimmed = endpoint.trim_end_matches('/');
    let has_path = trimmed.split_once("://").is_some_and(|(_, rest)| rest.contains('/'));
    if has_path {
        trimmed.to_owned()
    } else {
        format!("{trimmed}/v1/traces")
    }
}

impl Spans {
    pub fn disabled() -> Self {
        Self::default()
    }

    /// Exports to `endpoint` (OTLP/HTTP JSON); `worker_id` and `group` describe this instance.
    pub fn otlp(endpoint: &str, worker_id: &str, group: &str) -> Result<Self, String> {
        let url = traces_url(endpoint);
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpJson)
            .with_endpoint(url.as_str())
            .build()
            .map_err(|e| format!("--otlp-endpoint {}: {e}", crate::redact::redact_url(&url)))?;
        let resource = Resource::builder()
            .with_service_name("pgtrickle-relay")
            .with_attributes([
                KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
                KeyValue::new("service.instance.id", worker_id.to_owned()),
                KeyValue::new("pgtrickle.relay_group", group.to_owned()),
            ])
            .build();
        let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build();
        let tracer = provider.tracer("pgtrickle-relay");
        Ok(Self { inner: Some((provider, tracer)) })
    }

    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Records the span of one outbox row's messages in a publish call, confirmed at `ended`.
    pub fn row_published(&self, pipeline: &str, backend: &str, row: &RowSpan, started: SystemTime, ended: SystemTime) {
        let Some((_, tracer)) = &self.inner else { return };
        let Some((trace_id, span_id)) = ids(&row.traceparent) else { return };
        let mut attributes = vec![
            KeyValue::new("pgtrickle.pipeline", pipeline.to_owned()),
            KeyValue::new("messaging.system", backend.to_owned()),
            KeyValue::new("messaging.batch.message_count", row.messages as i64),
        ];
        if let Some(id) = row.outbox_id {
            attributes.push(KeyValue::new("pgtrickle.outbox_id", id));
        }
        let builder = SpanBuilder {
            trace_id: Some(trace_id),
            span_id: Some(span_id),
            span_kind: Some(SpanKind::Producer),
            start_time: Some(started),
            attributes: Some(attributes),
            ..SpanBuilder::from_name(format!("{pipeline} publish"))
        };
        tracer.build(builder).end_with_timestamp(ended);
    }

    /// Sends what is buffered (at shutdown).
    pub fn shutdown(&self) {
        if let Some((provider, _)) = &self.inner {
            if let Err(e) = provider.shutdown() {
                tracing::warn!(error = %e, "could not send the last spans to the OTLP endpoint");
            }
        }
    }
}

/// The trace and span ids of a `00-<trace>-<span>-<flags>` context.
fn ids(traceparent: &str) -> Option<(TraceId, SpanId)> {
    let mut parts = traceparent.split('-');
    let (_version, trace, span) = (parts.next()?, parts.next()?, parts.next()?);
    Some((TraceId::from_hex(trace).ok()?, SpanId::from_hex(span).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_base_url_gets_the_traces_path_and_a_full_one_is_kept() {
        assert_eq!(traces_url("http://otel:4318"), "http://otel:4318/v1/traces");
        assert_eq!(traces_url("http://otel:4318/"), "http://otel:4318/v1/traces");
        assert_eq!(traces_url("https://otel.example/custom/traces"), "https://otel.example/custom/traces");
    }

    #[test]
    fn ids_come_from_the_traceparent() {
        let tp = crate::message::traceparent("outbox_orders:1");
        let (t, s) = ids(&tp).unwrap();
        assert_eq!(format!("00-{t}-{s}-01"), &*tp);
        assert!(ids("garbage").is_none());
    }
}
