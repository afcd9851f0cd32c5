//! The readers behind `wsctl metrics tail`, outside the nodes: [`prometheus`] (scrape and parse a
//! node's `/metrics`), [`cloudwatch`] (ListMetrics / GetMetricData), and the tail engine here,
//! which turns CloudWatch readouts or successive scrapes into [`TailSnapshot`]s (one row per
//! server plus a fleet total, with recent history for a trend). It returns data only; the
//! command draws it (tables, sparklines). The node's own side, instrumentation and exporters,
//! is [`crate::metrics`].

pub mod cloudwatch;
pub mod prometheus;


use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::metrics::cloudwatch::{names, CloudWatchError};
use cloudwatch::{ReadQuery, Reader, Readout};
use prometheus::{Exposition, HistogramSample, ScrapeError, Scraper};

/// Points of history kept per row for the sparkline: a glance at the trend, narrow enough to sit
/// in a table column.
pub const HISTORY: usize = 16;

/// One server (or the fleet) over the last window.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Row {
    pub server: String,
    /// Open connections (CloudWatch: the period's average; Prometheus: now).
    pub active_connections: Option<f64>,
    /// Messages accepted in the window, and per second.
    pub messages: Option<f64>,
    pub messages_per_s: Option<f64>,
    pub delivered: Option<f64>,
    pub delivered_per_s: Option<f64>,
    pub unexpected_disconnects: Option<f64>,
    /// Mean client-reported latency in the window.
    pub avg_latency_ms: Option<f64>,
    /// 99th percentile (Prometheus only: estimated from the histogram buckets).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_latency_ms: Option<f64>,
    /// Latency reports in the window.
    pub latency_reports: Option<f64>,
    /// Running totals since the node started (Prometheus only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages_total: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered_total: Option<f64>,
    /// Messages per second over recent windows, oldest first.
    pub history: Vec<f64>,
    /// Why this row has no data (an unreachable node).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One refresh of the view.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TailSnapshot {
    /// When it was taken, RFC 3339.
    pub at: String,
    /// `cloudwatch` or `prometheus`.
    pub source: &'static str,
    /// The window the rates are over, seconds.
    pub window_s: f64,
    /// For CloudWatch: the start of the bucket the values come from, RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    pub servers: Vec<Row>,
    pub fleet: Row,
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn add(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x + y),
        (x, None) => x,
        (None, y) => y,
    }
}

/// The fleet row: sums, and the latency mean weighted by each server's report count.
fn fleet(rows: &[Row]) -> Row {
    let mut f = Row { server: "fleet".to_string(), ..Row::default() };
    let (mut lat_sum, mut lat_n) = (0.0, 0.0);
    for r in rows.iter().filter(|r| r.error.is_none()) {
        f.active_connections = add(f.active_connections, r.active_connections);
        f.messages = add(f.messages, r.messages);
        f.messages_per_s = add(f.messages_per_s, r.messages_per_s);
        f.delivered = add(f.delivered, r.delivered);
        f.delivered_per_s = add(f.delivered_per_s, r.delivered_per_s);
        f.unexpected_disconnects = add(f.unexpected_disconnects, r.unexpected_disconnects);
        f.latency_reports = add(f.latency_reports, r.latency_reports);
        f.messages_total = add(f.messages_total, r.messages_total);
        f.delivered_total = add(f.delivered_total, r.delivered_total);
        if let Some(avg) = r.avg_latency_ms {
            let n = r.latency_reports.unwrap_or(1.0).max(1.0);
            lat_sum += avg * n;
            lat_n += n;
        }
        if f.history.len() < r.history.len() {
            f.history.resize(r.history.len(), 0.0);
        }
        // Right-align histories of different lengths so the newest points add up.
        let off = f.history.len() - r.history.len();
        for (i, v) in r.history.iter().enumerate() {
            f.history[off + i] += v;
        }
    }
    f.avg_latency_ms = (lat_n > 0.0).then(|| lat_sum / lat_n);
    f
}

/// Turns a CloudWatch [`Readout`] into a snapshot: each server's row is its latest bucket with
/// data, its history the messages/s of every bucket in the window.
pub fn from_readout(r: &Readout) -> TailSnapshot {
    let period = r.period as f64;
    let mut rows = Vec::new();
    let mut latest_bucket = None;
    for (server, series) in &r.servers {
        let latest = series.values().filter_map(|s| s.keys().next_back().copied()).max();
        let at = |name: &str| latest.and_then(|t| series.get(name).and_then(|s| s.get(&t)).copied());
        let count = |name: &str| latest.map(|_| at(name).unwrap_or(0.0));
        let messages = count(names::MESSAGES);
        let delivered = count(names::DELIVERED);
        let history: Vec<f64> = {
            let msgs = series.get(names::MESSAGES);
            let first = (r.end - (HISTORY as i64 - 1) * r.period).max(r.start);
            (0..)
                .map(|i| first + i * r.period)
                .take_while(|t| *t <= r.end)
                .map(|t| msgs.and_then(|m| m.get(&t)).copied().unwrap_or(0.0) / period)
                .collect()
        };
        latest_bucket = latest_bucket.max(latest);
        rows.push(Row {
            server: server.clone(),
            active_connections: at(names::ACTIVE_CONNECTIONS),
            messages,
            messages_per_s: messages.map(|m| m / period),
            delivered,
            delivered_per_s: delivered.map(|d| d / period),
            unexpected_disconnects: count(names::UNEXPECTED_DISCONNECTS),
            avg_latency_ms: at(names::AVERAGE_LATENCY),
            latency_reports: count(names::LATENCY),
            history,
            ..Row::default()
        });
    }
    TailSnapshot {
        at: rfc3339(SystemTime::now()),
        source: "cloudwatch",
        window_s: period,
        bucket: latest_bucket.map(|t| rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(t.max(0) as u64))),
        fleet: fleet(&rows),
        servers: rows,
    }
}

/// Reads CloudWatch once per call.
pub struct CloudWatchTail {
    pub reader: Reader,
    pub query: ReadQuery,
}

impl CloudWatchTail {
    pub async fn sample(&self) -> Result<TailSnapshot, CloudWatchError> {
        Ok(from_readout(&self.reader.read(&self.query).await?))
    }
}

/// What one scrape left for the next one to difference against.
struct Scraped {
    at: Instant,
    messages: f64,
    delivered: f64,
    unexpected: f64,
    latency: Option<HistogramSample>,
}

fn read_scrape(e: &Exposition) -> Scraped {
    Scraped {
        at: Instant::now(),
        messages: e.counter("wss_messages").unwrap_or(0.0),
        delivered: e.counter("wss_messages_delivered").unwrap_or(0.0),
        unexpected: e.counter("wss_unexpected_disconnects").unwrap_or(0.0),
        latency: e.histogram("wss_client_latency_ms"),
    }
}

/// Scrapes nodes' `/metrics` and turns counters into rates between successive scrapes.
pub struct PrometheusTail {
    urls: Vec<String>,
    scraper: Scraper,
    prev: BTreeMap<String, Scraped>,
    history: BTreeMap<String, VecDeque<f64>>,
}

impl PrometheusTail {
    pub fn new(urls: Vec<String>) -> Self {
        PrometheusTail { urls, scraper: Scraper::new(), prev: BTreeMap::new(), history: BTreeMap::new() }
    }

    /// A row's name: the URL's host:port (a node's exposition does not carry its id).
    fn server_name(url: &str) -> String {
        let rest = url.split_once("://").map_or(url, |(_, r)| r);
        rest.split('/').next().unwrap_or(rest).to_string()
    }

    /// Scrapes every node; fails only if none answered (each failure is in its row).
    /// The first call has totals but no rates: rates need two scrapes.
    pub async fn sample(&mut self) -> Result<TailSnapshot, ScrapeError> {
        let results = futures_util::future::join_all(self.urls.iter().map(|u| self.scraper.scrape(u))).await;
        let mut rows = Vec::new();
        let mut window = 0.0f64;
        let mut first_error = None;
        let mut any_ok = false;
        for (url, result) in self.urls.iter().zip(results) {
            let server = Self::server_name(url);
            let exp = match result {
                Ok(e) => e,
                Err(e) => {
                    rows.push(Row { server, error: Some(e.to_string()), ..Row::default() });
                    first_error.get_or_insert(e);
                    continue;
                }
            };
            any_ok = true;
            let now = read_scrape(&exp);
            let mut row = Row {
                server,
                active_connections: exp.gauge("wss_active_connections"),
                messages_total: Some(now.messages),
                delivered_total: Some(now.delivered),
                ..Row::default()
            };
            if let Some(prev) = self.prev.get(url) {
                let secs = now.at.duration_since(prev.at).as_secs_f64().max(1e-3);
                window = window.max(secs);
                let d = |a: f64, b: f64| (a - b).max(0.0);
                row.messages = Some(d(now.messages, prev.messages));
                row.messages_per_s = Some(d(now.messages, prev.messages) / secs);
                row.delivered = Some(d(now.delivered, prev.delivered));
                row.delivered_per_s = Some(d(now.delivered, prev.delivered) / secs);
                row.unexpected_disconnects = Some(d(now.unexpected, prev.unexpected));
                if let (Some(a), Some(b)) = (&now.latency, &prev.latency) {
                    let delta = a.since(b);
                    row.latency_reports = Some(delta.count);
                    row.avg_latency_ms = delta.mean();
                    row.p99_latency_ms = delta.quantile(0.99);
                }
                let h = self.history.entry(url.clone()).or_default();
                h.push_back(row.messages_per_s.unwrap_or(0.0));
                while h.len() > HISTORY {
                    h.pop_front();
                }
                row.history = h.iter().copied().collect();
            }
            self.prev.insert(url.clone(), now);
            rows.push(row);
        }
        if !any_ok {
            if let Some(e) = first_error {
                return Err(e);
            }
        }
        Ok(TailSnapshot {
            at: rfc3339(SystemTime::now()),
            source: "prometheus",
            window_s: window,
            bucket: None,
            fleet: fleet(&rows),
            servers: rows,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readout_rows_and_fleet() {
        let mut servers = BTreeMap::new();
        for (id, msgs, lat, n) in [("a", 120.0, 2.0, 10.0), ("b", 60.0, 5.0, 30.0)] {
            let mut s: cloudwatch::ServerSeries = BTreeMap::new();
            s.entry(names::MESSAGES).or_default().insert(60, msgs / 2.0);
            s.entry(names::MESSAGES).or_default().insert(120, msgs);
            s.entry(names::AVERAGE_LATENCY).or_default().insert(120, lat);
            s.entry(names::LATENCY).or_default().insert(120, n);
            servers.insert(id.to_string(), s);
        }
        let snap = from_readout(&Readout { start: 0, end: 120, period: 60, servers });
        assert_eq!(snap.servers[0].messages_per_s, Some(2.0));
        assert_eq!(snap.servers[0].history, vec![0.0, 1.0, 2.0]);
        assert_eq!(snap.fleet.messages, Some(180.0));
        assert_eq!(snap.fleet.avg_latency_ms, Some((2.0 * 10.0 + 5.0 * 30.0) / 40.0));
        assert_eq!(snap.fleet.unexpected_disconnects, Some(0.0));
    }
}
