//! A node's metrics: one registry per node (tests run several nodes in one process, so nothing
//! is global), updated from the hot path with single atomic operations, rendered as Prometheus
//! text and read by the CloudWatch publisher.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Histogram buckets for latencies in milliseconds: 0.25 ms to ~8 s, doubling.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.25, 2.0, 16)
}

/// Every metric a node keeps. Cloning is cheap (each metric is an `Arc` inside).
#[derive(Clone)]
pub struct Metrics {
    /// Open WebSocket connections on this node.
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
    /// Client-reported latency (`latency_report`), milliseconds.
    pub client_latency_ms: Histogram,
    /// Server-side delivery time: ingress on the sending node to queueing on the receiving node, ms.
    pub delivery_ms: Histogram,
    registry: std::sync::Arc<Registry>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = Metrics {
            active_connections: Gauge::default(),
            messages: Counter::default(),
            messages_delivered: Counter::default(),
            unexpected_disconnects: Counter::default(),
            slow_consumer_closes: Counter::default(),
            undeliverable: Counter::default(),
            redis_errors: Counter::default(),
            redis_reconnects: Counter::default(),
            broker_lagged: Counter::default(),
            bad_frames: Counter::default(),
            client_latency_ms: Histogram::new(latency_buckets()),
            delivery_ms: Histogram::new(latency_buckets()),
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
        registry.register("wss_client_latency_ms", "Client-reported latency, ms", m.client_latency_ms.clone());
        registry.register("wss_delivery_ms", "Ingress on the sending node to queueing on the receiving node, ms", m.delivery_ms.clone());
        Metrics { registry: std::sync::Arc::new(registry), ..m }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}
