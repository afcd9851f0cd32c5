//! A node's metrics: one registry per node (tests run several nodes in one process, so nothing
//! is global), updated from the hot path with single atomic operations, rendered as Prometheus
//! text by prometheus-client and served by [`serve_metrics`], and read as [`Snapshot`]s by the
//! [`cloudwatch`] publisher. This is what `serve` runs; the readers behind `wsctl metrics tail`
//! (scrape, CloudWatch queries, the tail engine) are [`crate::tail`].
//!
//! Counters and histograms are this module's own thin types so that [`Metrics::disabled`] can
//! turn every per-message update into a predicted branch: that is how the hot-path cost of the
//! metrics is measured (scripts/bench-metrics-cost), in the same binary and the same run.

pub mod cloudwatch;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Upper bounds of the latency histogram buckets, milliseconds: 0.25 ms to ~8 s, doubling (16
/// buckets plus +Inf). Doubling keeps the relative error of a bucket-estimated percentile under
/// 2x across four orders of magnitude with few enough buckets for one CloudWatch datum (<= 150).
pub const LATENCY_BUCKETS_MS: [f64; 16] =
    [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0];

/// A monotonic counter: one relaxed atomic add per update, or nothing when its [`Metrics`] is
/// [`Metrics::disabled`].
#[derive(Clone, Debug, Default)]
pub struct Counter {
    value: Arc<AtomicU64>,
    off: bool,
}

impl Counter {
    #[inline]
    pub fn inc(&self) {
        self.inc_by(1);
    }

    #[inline]
    pub fn inc_by(&self, n: u64) {
        if !self.off {
            self.value.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
}

impl TypedMetric for Counter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for Counter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// A fixed-bucket histogram without a lock (prometheus-client's takes a mutex per observation):
/// one atomic add for the bucket and one for the sum. The sum is kept in integer microunits so
/// that it is a single `fetch_add` and exact.
#[derive(Clone, Debug)]
pub struct Histogram {
    inner: Arc<HistogramInner>,
    off: bool,
}

#[derive(Debug)]
struct HistogramInner {
    bounds: &'static [f64],
    /// Per-bucket (not cumulative) counts; the last one is +Inf.
    buckets: Box<[AtomicU64]>,
    /// Sum of observations in millionths of the unit.
    sum_micro: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64], off: bool) -> Self {
        let buckets = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Histogram { inner: Arc::new(HistogramInner { bounds, buckets, sum_micro: AtomicU64::new(0) }), off }
    }

    /// Records one observation; negative and NaN values count as 0.
    #[inline]
    pub fn observe(&self, v: f64) {
        if self.off {
            return;
        }
        let v = if v.is_nan() || v < 0.0 { 0.0 } else { v };
        let i = self.inner.bounds.partition_point(|b| *b < v);
        self.inner.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.inner.sum_micro.fetch_add((v * 1e6) as u64, Ordering::Relaxed);
    }

    /// Observations so far (the sum of the buckets, so it always agrees with them).
    pub fn count(&self) -> u64 {
        self.snapshot().count
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let counts: Vec<u64> = self.inner.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        HistogramSnapshot {
            bounds: self.inner.bounds,
            count: counts.iter().sum(),
            counts,
            sum: self.inner.sum_micro.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let s = self.snapshot();
        // The encoder accumulates the per-bucket counts itself and writes INFINITY as +Inf.
        let buckets: Vec<(f64, u64)> =
            s.bounds.iter().copied().chain(std::iter::once(f64::INFINITY)).zip(s.counts.iter().copied()).collect();
        encoder.encode_histogram::<NoLabelSet>(s.sum, s.count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// A histogram read at one instant, or the difference of two such reads.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramSnapshot {
    /// Upper bounds of the finite buckets.
    pub bounds: &'static [f64],
    /// Per-bucket counts (not cumulative), `bounds.len() + 1` of them: the last is +Inf.
    pub counts: Vec<u64>,
    pub count: u64,
    pub sum: f64,
}

impl HistogramSnapshot {
    /// What was observed since `earlier`.
    pub fn since(&self, earlier: &HistogramSnapshot) -> HistogramSnapshot {
        let counts: Vec<u64> = self.counts.iter().zip(&earlier.counts).map(|(a, b)| a.saturating_sub(*b)).collect();
        HistogramSnapshot {
            bounds: self.bounds,
            count: counts.iter().sum(),
            counts,
            sum: (self.sum - earlier.sum).max(0.0),
        }
    }

    /// Mean of the observations, or None without any.
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / self.count as f64)
    }

    /// One representative value per non-empty bucket with its count, for CloudWatch's
    /// Values/Counts: the bucket's midpoint (its upper bound for the first, twice the last
    /// finite bound for +Inf), so percentiles computed from them are off by at most half a bucket.
    pub fn values_counts(&self) -> Vec<(f64, u64)> {
        let mut out = Vec::new();
        for (i, &c) in self.counts.iter().enumerate() {
            if c == 0 {
                continue;
            }
            let v = match (i.checked_sub(1).map(|j| self.bounds[j]), self.bounds.get(i)) {
                (None, Some(hi)) => *hi / 2.0,
                (Some(lo), Some(hi)) => (lo + hi) / 2.0,
                (Some(lo), None) => lo * 2.0,
                (None, None) => 0.0,
            };
            out.push((v, c));
        }
        out
    }
}

/// Every metric a node keeps. Cloning is cheap (each metric is an `Arc` inside).
#[derive(Clone)]
pub struct Metrics {
    /// Open WebSocket connections on this node. Always live, even when disabled: the hub reads
    /// it as its connection count.
    pub active_connections: Gauge,
    /// `chat_message` frames accepted from clients on this node.
    pub messages: Counter,
    /// Frames queued to a receiver connection on this node (one per connection reached).
    pub messages_delivered: Counter,
    /// Connections that ended without a 1000/1001 close from the client.
    pub unexpected_disconnects: Counter,
    /// Connections closed because their send queue overflowed (4008).
    pub slow_consumer_closes: Counter,
    /// `chat_message`s for which no connection of the receiver was found on any node.
    pub undeliverable: Counter,
    /// Redis commands or pipelines that failed.
    pub redis_errors: Counter,
    /// Times the Redis connection came back after being lost.
    pub redis_reconnects: Counter,
    /// Broker messages this node's subscriber dropped because it fell behind (fred's broadcast lag).
    pub broker_lagged: Counter,
    /// Bad client frames answered with an `error` frame.
    pub bad_frames: Counter,
    /// Messages from Redis dropped because they were not a deliverable envelope (not UTF-8, too
    /// large, no receiver).
    pub broker_bad_envelopes: Counter,
    /// New connections whose route Redis did not confirm within the wait (accepted anyway,
    /// registered once Redis answered).
    pub route_registrations_delayed: Counter,
    /// Broker tasks that ended unexpectedly (a panic) and were started again.
    pub task_restarts: Counter,
    /// CloudWatch PutMetricData calls that failed (their interval is carried to the next push).
    pub cloudwatch_push_errors: Counter,
    /// Connections refused before the upgrade, by `reason` (see `server::admission::Refusal`,
    /// and `server::http` for the refusals of the accept loop: `headers_too_large`,
    /// `pending_handshakes`).
    pub connections_refused: Family<ReasonLabel, prometheus_client::metrics::counter::Counter>,
    /// Sockets accepted and still in their HTTP phase (not upgraded, not closed), on every
    /// listener of the node; capped by `server::http::MAX_PENDING_HANDSHAKES`.
    pub pending_handshakes: Gauge,
    /// Client frames dropped by the per-connection rate limit.
    pub rate_limited_frames: Counter,
    /// Client-reported latency (`latency_report`), milliseconds.
    pub client_latency_ms: Histogram,
    /// Server-side delivery time: ingress on the sending node to queueing on the receiving node, ms.
    pub delivery_ms: Histogram,
    registry: Arc<Registry>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The `reason` label of a refusal counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// The values CloudWatch publishing needs, read at one instant.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    pub active_connections: i64,
    pub messages: u64,
    pub messages_delivered: u64,
    pub unexpected_disconnects: u64,
    pub client_latency_ms: HistogramSnapshot,
}

impl Snapshot {
    /// Counts since `earlier` (the gauge stays a point value).
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        Snapshot {
            active_connections: self.active_connections,
            messages: self.messages.saturating_sub(earlier.messages),
            messages_delivered: self.messages_delivered.saturating_sub(earlier.messages_delivered),
            unexpected_disconnects: self.unexpected_disconnects.saturating_sub(earlier.unexpected_disconnects),
            client_latency_ms: self.client_latency_ms.since(&earlier.client_latency_ms),
        }
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self::build(false)
    }

    /// A registry whose counters and histograms ignore updates (the gauge stays live). Only for
    /// measuring what the metrics cost the hot path; a node running with it reports zeros.
    pub fn disabled() -> Self {
        Self::build(true)
    }

    fn build(off: bool) -> Self {
        let counter = || Counter { value: Arc::default(), off };
        let mut registry = Registry::default();
        let m = Metrics {
            active_connections: Gauge::default(),
            messages: counter(),
            messages_delivered: counter(),
            unexpected_disconnects: counter(),
            slow_consumer_closes: counter(),
            undeliverable: counter(),
            redis_errors: counter(),
            redis_reconnects: counter(),
            broker_lagged: counter(),
            bad_frames: counter(),
            broker_bad_envelopes: counter(),
            route_registrations_delayed: counter(),
            task_restarts: counter(),
            cloudwatch_push_errors: Counter::default(),
            connections_refused: Family::default(),
            pending_handshakes: Gauge::default(),
            rate_limited_frames: counter(),
            client_latency_ms: Histogram::new(&LATENCY_BUCKETS_MS, off),
            delivery_ms: Histogram::new(&LATENCY_BUCKETS_MS, off),
            registry: Default::default(),
        };
        // prometheus-client appends `_total` to counter names.
        registry.register("wss_active_connections", "Open WebSocket connections", m.active_connections.clone());
        registry.register("wss_messages", "chat_message frames accepted from clients", m.messages.clone());
        registry.register("wss_messages_delivered", "Frames queued to receiver connections", m.messages_delivered.clone());
        registry.register(
            "wss_unexpected_disconnects",
            "Connections closed other than with 1000/1001",
            m.unexpected_disconnects.clone(),
        );
        registry.register("wss_slow_consumer_closes", "Connections closed 4008 (send queue full)", m.slow_consumer_closes.clone());
        registry.register("wss_undeliverable_messages", "Messages whose receiver was offline everywhere", m.undeliverable.clone());
        registry.register("wss_redis_errors", "Failed Redis commands or pipelines", m.redis_errors.clone());
        registry.register("wss_redis_reconnects", "Redis reconnections", m.redis_reconnects.clone());
        registry.register("wss_broker_lagged_messages", "Broker messages dropped by a lagging subscriber", m.broker_lagged.clone());
        registry.register("wss_bad_frames", "Client frames answered with an error", m.bad_frames.clone());
        registry.register("wss_broker_bad_envelopes", "Messages from Redis that were not a deliverable envelope", m.broker_bad_envelopes.clone());
        registry.register(
            "wss_route_registrations_delayed",
            "Connections accepted before Redis confirmed their route",
            m.route_registrations_delayed.clone(),
        );
        registry.register("wss_task_restarts", "Broker tasks restarted after a panic", m.task_restarts.clone());
        registry.register(
            "wss_cloudwatch_push_errors",
            "Failed CloudWatch pushes (retried with the next interval)",
            m.cloudwatch_push_errors.clone(),
        );
        registry.register("wss_connections_refused", "Connections refused before the upgrade, by reason", m.connections_refused.clone());
        registry.register("wss_pending_handshakes", "Sockets accepted and not yet upgraded or closed", m.pending_handshakes.clone());
        registry.register("wss_rate_limited_frames", "Client frames dropped by the rate limit", m.rate_limited_frames.clone());
        registry.register("wss_client_latency_ms", "Client-reported latency, ms", m.client_latency_ms.clone());
        registry.register("wss_delivery_ms", "Ingress on the sending node to queueing on the receiving node, ms", m.delivery_ms.clone());
        Metrics { registry: Arc::new(registry), ..m }
    }

    /// The Prometheus (OpenMetrics) text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        encode(&mut out, &self.registry).expect("writing to a String");
        out
    }

    /// The values CloudWatch publishing reads, now.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            active_connections: self.active_connections.get(),
            messages: self.messages.get(),
            messages_delivered: self.messages_delivered.get(),
            unexpected_disconnects: self.unexpected_disconnects.get(),
            client_latency_ms: self.client_latency_ms.snapshot(),
        }
    }
}

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `GET /metrics` (and `/health`) for `metrics` on its own listener until `shutdown` is
/// cancelled: `wsctl serve --metrics-addr`, to keep scrapes off the client-facing port. The
/// node's accept loop (`server::http`), so the same request-head deadline, size limits and
/// pending cap (`limits`, the main listener's); on shutdown it returns at once, dropping any
/// connection still open: a scrape, or a socket that never sends one, never holds up the exit.
pub async fn serve_metrics(
    listener: TcpListener,
    metrics: Metrics,
    limits: crate::server::http::HttpLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    use axum::http::header;
    use axum::routing::get;
    let registry = metrics.clone();
    let app = axum::Router::new()
        .route("/metrics", get(move || async move { ([(header::CONTENT_TYPE, CONTENT_TYPE)], registry.render()) }))
        .route("/health", get(|| async { "ok" }));
    crate::server::http::serve(listener, app, limits, metrics, shutdown, std::time::Duration::ZERO).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_deltas_and_values() {
        let m = Metrics::new();
        let before = m.snapshot();
        for v in [0.1, 0.3, 3.0, 3.5, 10_000.0] {
            m.client_latency_ms.observe(v);
        }
        let d = m.snapshot().since(&before).client_latency_ms;
        assert_eq!(d.count, 5);
        assert!((d.sum - 10_006.9).abs() < 1e-6, "{}", d.sum);
        assert_eq!(d.values_counts(), vec![(0.125, 1), (0.375, 1), (3.0, 2), (16384.0, 1)]);
    }

    #[test]
    fn disabled_ignores_updates() {
        let m = Metrics::disabled();
        m.messages.inc();
        m.delivery_ms.observe(1.0);
        assert_eq!((m.messages.get(), m.delivery_ms.count()), (0, 0));
    }
}
