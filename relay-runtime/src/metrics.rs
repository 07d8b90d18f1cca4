//! Prometheus metrics. Names keep the upstream relay's (contract §4.14) and add the documented
//! extras; labels stay low-cardinality (`pipeline`, `direction`, `error_kind`).

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub messages_published: IntCounterVec,
    pub messages_consumed: IntCounterVec,
    pub publish_errors: IntCounterVec,
    pub source_errors: IntCounterVec,
    pub dedup_skipped: IntCounterVec,
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
        Ok(Self {
            registry,
            messages_published,
            messages_consumed,
            publish_errors,
            source_errors,
            dedup_skipped,
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
        })
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
    pub fn forget_pipeline(&self, pipeline: &str, direction: &str) {
        let _ = self.pipeline_healthy.remove_label_values(&[pipeline, direction]);
        let _ = self.lag_rows.remove_label_values(&[pipeline]);
        let _ = self.lag_seconds.remove_label_values(&[pipeline]);
    }
}
