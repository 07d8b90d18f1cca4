//! Prometheus metrics. Names keep the upstream relay's (contract §4.14) and add the documented
//! extras; labels stay low-cardinality (`pipeline`, `direction`, `backend`, `error_kind`, and the
//! five pipeline `state`s). The relay group is not a label here: it is a property of the scrape
//! target, added by the PodMonitor (`deploy/monitoring/`) or the scrape config.
//! The standard `process_*` metrics (CPU, resident memory, file descriptors) come from the
//! `prometheus` crate's process collector on Linux.

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::catalog::status::PipelineState;

pub struct Metrics {
    registry: Registry,
    pub messages_published: IntCounterVec,
    pub messages_consumed: IntCounterVec,
    pub publish_errors: IntCounterVec,
    pub source_errors: IntCounterVec,
    pub dedup_skipped: IntCounterVec,
    /// Messages that have nothing to deliver, by `reason` (`summary`: a counts-only outbox row
    /// under the Debezium envelope; `tombstone`: a Kafka tombstone into an inbox).
    pub messages_skipped: IntCounterVec,
    pub dead_letters: IntCounterVec,
    pub outbox_recreated: IntCounterVec,
    pub pipeline_healthy: IntGaugeVec,
    pub pipelines_owned: IntGauge,
    pub pipelines_unowned: IntGauge,
    pub db_connections: IntGaugeVec,
    pub db_pool_wait: prometheus::Histogram,
    pub lag_rows: IntGaugeVec,
    pub lag_seconds: GaugeVec,
    pub committed_offset: IntGaugeVec,
    pub batch_duration: HistogramVec,
    /// One-hot: 1 for the pipeline's current state, 0 for the four others.
    pub pipeline_state: IntGaugeVec,
    /// 1 per owned pipeline, labelled with its owner (`worker_id`, as in the status table).
    pub pipeline_owner: IntGaugeVec,
    pub start_errors: IntCounterVec,
    pub broker_ack: HistogramVec,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let pd = &["pipeline", "direction"];
        let counter = |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let messages_published = counter(
            "pgtrickle_relay_messages_published_total",
            "Messages confirmed by the sink (forward) or committed to the inbox (reverse).",
            pd,
        )?;
        let messages_consumed = counter(
            "pgtrickle_relay_messages_consumed_total",
            "Messages read from the source (outbox rows decoded, or broker messages received).",
            pd,
        )?;
        let publish_errors = counter(
            "pgtrickle_relay_publish_errors_total",
            "Failed publish attempts (each retried or reported).",
            &["pipeline", "direction", "error_kind"],
        )?;
        let source_errors = counter(
            "pgtrickle_relay_source_errors_total",
            "Errors reading the source (outbox queries, undecodable rows, broker receive errors).",
            &["pipeline", "direction", "error_kind"],
        )?;
        let dedup_skipped = counter(
            "pgtrickle_relay_dedup_skipped_total",
            "Messages skipped as duplicates by the target.",
            &["pipeline"],
        )?;
        let messages_skipped = counter(
            "pgtrickle_relay_messages_skipped_total",
            "Messages with nothing to deliver, by reason (summary: a counts-only outbox row under the Debezium envelope; tombstone: a Kafka tombstone into an inbox).",
            &["pipeline", "direction", "reason"],
        )?;
        let dead_letters = counter(
            "pgtrickle_relay_dead_letters_total",
            "Rows or messages moved to pgtrickle.relay_dead_letters.",
            pd,
        )?;
        let outbox_recreated = counter(
            "pgtrickle_relay_outbox_recreated_total",
            "Times a forward pipeline found its outbox recreated or its ids reset, and started a new epoch at the new outbox's beginning.",
            &["pipeline"],
        )?;
        let pipeline_healthy = IntGaugeVec::new(
            Opts::new("pgtrickle_relay_pipeline_healthy", "1 while an owned pipeline runs without error, else 0."),
            &["pipeline", "direction"],
        )?;
        registry.register(Box::new(pipeline_healthy.clone()))?;
        let pipelines_owned =
            IntGauge::new("pgtrickle_relay_pipelines_owned", "Pipelines owned by this relay instance.")?;
        registry.register(Box::new(pipelines_owned.clone()))?;
        let pipelines_unowned = IntGauge::new(
            "pgtrickle_relay_pipelines_unowned",
            "Enabled pipelines of this relay group that no live instance owns (as of the last discovery).",
        )?;
        registry.register(Box::new(pipelines_unowned.clone()))?;
        let db_connections = IntGaugeVec::new(
            Opts::new("pgtrickle_relay_db_connections", "Work connections of the shared pool, busy or idle."),
            &["state"],
        )?;
        registry.register(Box::new(db_connections.clone()))?;
        let db_pool_wait = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "pgtrickle_relay_db_pool_wait_seconds",
                "Time a pipeline waited for a work connection from the pool.",
            )
            .buckets(vec![0.0001, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0]),
        )?;
        registry.register(Box::new(db_pool_wait.clone()))?;
        let lag_rows = IntGaugeVec::new(
            Opts::new("pgtrickle_relay_lag_rows", "Outbox rows written but not yet relayed."),
            &["pipeline"],
        )?;
        registry.register(Box::new(lag_rows.clone()))?;
        let lag_seconds = GaugeVec::new(
            Opts::new(
                "pgtrickle_relay_lag_seconds",
                "Age of the oldest outbox row not yet relayed (0 when caught up).",
            ),
            &["pipeline"],
        )?;
        registry.register(Box::new(lag_seconds.clone()))?;
        let committed_offset = IntGaugeVec::new(
            Opts::new("pgtrickle_relay_committed_offset", "Last committed outbox id."),
            &["pipeline"],
        )?;
        registry.register(Box::new(committed_offset.clone()))?;
        let batch_duration = HistogramVec::new(
            HistogramOpts::new(
                "pgtrickle_relay_batch_duration_seconds",
                "Time from reading a batch to committing its offset.",
            )
            .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            pd,
        )?;
        registry.register(Box::new(batch_duration.clone()))?;
        let pipeline_state = IntGaugeVec::new(
            Opts::new(
                "pgtrickle_relay_pipeline_state",
                "1 for the state an owned pipeline is in (starting, running, degraded, failed, stopped), 0 for the others.",
            ),
            &["pipeline", "direction", "state"],
        )?;
        registry.register(Box::new(pipeline_state.clone()))?;
        let pipeline_owner = IntGaugeVec::new(
            Opts::new(
                "pgtrickle_relay_pipeline_owner_info",
                "1 for each pipeline this instance owns; `owner` is its worker id.",
            ),
            &["pipeline", "direction", "owner"],
        )?;
        registry.register(Box::new(pipeline_owner.clone()))?;
        let start_errors = counter(
            "pgtrickle_relay_start_errors_total",
            "Failed attempts to start a pipeline (invalid config, missing outbox or inbox, target unreachable at start).",
            &["pipeline", "direction", "error_kind"],
        )?;
        let broker_ack = HistogramVec::new(
            HistogramOpts::new(
                "pgtrickle_relay_broker_ack_duration_seconds",
                "Forward: time from handing a publish call to the sink until the target confirmed all of its messages (broker ack, HTTP 2xx, inbox commit), as seen by the relay.",
            )
            .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            &["pipeline", "backend"],
        )?;
        registry.register(Box::new(broker_ack.clone()))?;
        #[cfg(target_os = "linux")]
        registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
        Ok(Self {
            registry,
            messages_published,
            messages_consumed,
            publish_errors,
            source_errors,
            dedup_skipped,
            messages_skipped,
            dead_letters,
            outbox_recreated,
            pipeline_healthy,
            pipelines_owned,
            pipelines_unowned,
            db_connections,
            db_pool_wait,
            lag_rows,
            lag_seconds,
            committed_offset,
            batch_duration,
            pipeline_state,
            pipeline_owner,
            start_errors,
            broker_ack,
        })
    }

    /// Exports a newly owned pipeline's message, dead-letter and dedup counters at 0, so that
    /// `rate()` and `increase()` see its first message or dead letter (a series that appears at
    /// 1 hides that increment from them).
    pub fn init_pipeline(&self, pipeline: &str, direction: &str) {
        self.messages_published.with_label_values(&[pipeline, direction]);
        self.messages_consumed.with_label_values(&[pipeline, direction]);
        self.dead_letters.with_label_values(&[pipeline, direction]);
        self.dedup_skipped.with_label_values(&[pipeline]);
    }

    /// Mirrors a pipeline's state (one-hot) and its owner.
    pub fn set_pipeline_state(&self, pipeline: &str, direction: &str, state: PipelineState, owner: Option<&str>) {
        for s in PipelineState::ALL {
            self.pipeline_state.with_label_values(&[pipeline, direction, s.as_str()]).set(i64::from(s == state));
        }
        if let Some(owner) = owner {
            self.pipeline_owner.with_label_values(&[pipeline, direction, owner]).set(1);
        }
    }

    /// The text exposition format served on `/metrics`.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Drops the per-pipeline series of a pipeline this instance no longer owns.
    pub fn forget_pipeline(&self, pipeline: &str, direction: &str, owner: &str) {
        let _ = self.pipeline_healthy.remove_label_values(&[pipeline, direction]);
        for s in PipelineState::ALL {
            let _ = self.pipeline_state.remove_label_values(&[pipeline, direction, s.as_str()]);
        }
        let _ = self.pipeline_owner.remove_label_values(&[pipeline, direction, owner]);
        let _ = self.lag_rows.remove_label_values(&[pipeline]);
        let _ = self.lag_seconds.remove_label_values(&[pipeline]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of one series of the text exposition (`name{labels}`), if present.
    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn pipeline_state_is_one_hot_and_forgotten_with_the_pipeline() {
        let m = Metrics::new().unwrap();
        m.set_pipeline_state("orders", "forward", PipelineState::Starting, Some("host:1"));
        m.set_pipeline_state("orders", "forward", PipelineState::Degraded, Some("host:1"));
        let text = m.render();
        let state = |s: &str| {
            value(
                &text,
                &format!(r#"pgtrickle_relay_pipeline_state{{direction="forward",pipeline="orders",state="{s}"}}"#),
            )
        };
        assert_eq!(state("degraded"), Some(1.0), "{text}");
        for s in ["starting", "running", "failed", "stopped"] {
            assert_eq!(state(s), Some(0.0), "{s}: {text}");
        }
        m.forget_pipeline("orders", "forward", "host:1");
        assert!(!m.render().contains("pgtrickle_relay_pipeline_state{"), "{}", m.render());
    }

    #[test]
    fn owner_info_names_the_owner_until_the_pipeline_is_released() {
        let m = Metrics::new().unwrap();
        m.set_pipeline_state("orders", "forward", PipelineState::Running, Some("relay-7f9c:1"));
        // A released pipeline's last status has no owner: nothing new is exported for it.
        m.set_pipeline_state("inbox", "reverse", PipelineState::Stopped, None);
        let text = m.render();
        assert_eq!(
            value(
                &text,
                r#"pgtrickle_relay_pipeline_owner_info{direction="forward",owner="relay-7f9c:1",pipeline="orders"}"#
            ),
            Some(1.0),
            "{text}"
        );
        assert!(!text.contains(r#"pipeline_owner_info{direction="reverse""#), "{text}");
        m.forget_pipeline("orders", "forward", "relay-7f9c:1");
        assert!(!m.render().contains("pgtrickle_relay_pipeline_owner_info{"), "{}", m.render());
    }

    #[test]
    fn start_errors_are_counted_by_kind() {
        let m = Metrics::new().unwrap();
        m.start_errors.with_label_values(&["orders", "forward", "retryable"]).inc();
        m.start_errors.with_label_values(&["orders", "forward", "retryable"]).inc();
        m.start_errors.with_label_values(&["orders", "forward", "permanent"]).inc();
        let text = m.render();
        let series = |kind: &str| {
            format!(
                r#"pgtrickle_relay_start_errors_total{{direction="forward",error_kind="{kind}",pipeline="orders"}}"#
            )
        };
        assert_eq!(value(&text, &series("retryable")), Some(2.0), "{text}");
        assert_eq!(value(&text, &series("permanent")), Some(1.0), "{text}");
    }

    #[test]
    fn broker_ack_latency_is_a_histogram_per_pipeline_and_backend() {
        let m = Metrics::new().unwrap();
        m.broker_ack.with_label_values(&["orders", "nats"]).observe(0.003);
        m.broker_ack.with_label_values(&["orders", "nats"]).observe(0.2);
        let text = m.render();
        let labels = r#"backend="nats",pipeline="orders""#;
        assert_eq!(value(&text, &format!("pgtrickle_relay_broker_ack_duration_seconds_count{{{labels}}}")), Some(2.0));
        assert_eq!(
            value(&text, &format!(r#"pgtrickle_relay_broker_ack_duration_seconds_bucket{{{labels},le="0.005"}}"#)),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            value(&text, &format!(r#"pgtrickle_relay_broker_ack_duration_seconds_bucket{{{labels},le="0.25"}}"#)),
            Some(2.0),
            "{text}"
        );
    }

    #[test]
    fn a_new_pipelines_counters_start_at_zero() {
        let m = Metrics::new().unwrap();
        m.init_pipeline("orders", "forward");
        let text = m.render();
        let pd = r#"{direction="forward",pipeline="orders"}"#;
        for name in ["messages_published_total", "messages_consumed_total", "dead_letters_total"] {
            assert_eq!(value(&text, &format!("pgtrickle_relay_{name}{pd}")), Some(0.0), "{name}: {text}");
        }
        assert_eq!(value(&text, r#"pgtrickle_relay_dedup_skipped_total{pipeline="orders"}"#), Some(0.0), "{text}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn process_memory_and_cpu_are_exported() {
        let text = Metrics::new().unwrap().render();
        let rss = value(&text, "process_resident_memory_bytes").unwrap_or_default();
        assert!(rss > 1_000_000.0, "a test process holds more than 1 MB: {text}");
        assert!(value(&text, "process_cpu_seconds_total").is_some(), "{text}");
        assert!(value(&text, "process_open_fds").is_some_and(|n| n >= 3.0), "{text}");
    }
}
