//! The result of a load run: every figure, the HDR histograms serialized (so shards can be
//! merged exactly: histograms added, never percentiles averaged), and k6-style thresholds
//! (`p99<50ms`, `lost=0`) evaluated against it.

use std::collections::BTreeMap;

use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::audit::{AuditTotals, ConnectionAudit};

/// Highest latency or connect time recorded, in microseconds (1 hour): anything slower is
/// clamped here, it is a failure either way.
pub const HIST_MAX_US: u64 = 3_600_000_000;
/// Significant digits kept: 0.1% resolution, the HdrHistogram default for latency work.
pub const HIST_SIGFIG: u8 = 3;

/// An empty histogram in microseconds with the bounds above.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_US, HIST_SIGFIG).expect("static histogram bounds are valid")
}

/// Percentiles of a histogram in milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub min_ms: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            min_ms: ms(h.min()),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// Counts about connections.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ConnectionStats {
    /// Connections this run meant to hold.
    pub target: u64,
    /// Connections up when traffic started.
    pub connected_at_start: u64,
    /// Highest number up at once.
    pub peak: u64,
    /// Connection attempts that failed (TCP, handshake or timeout).
    pub failed_attempts: u64,
    /// Slots that never connected at all.
    pub never_connected: u64,
    pub reconnects: u64,
    /// Closes we did not ask for, by close code (`1012`, `4008`) or `error` / `eof`.
    pub unexpected_closes: BTreeMap<String, u64>,
    /// Failed connection attempts by cause (`connect 127.0.0.1:8081: Connection refused ...`).
    #[serde(default)]
    pub connect_errors: BTreeMap<String, u64>,
    /// Connections we closed with 1000 at the end of the run.
    pub closed_by_us: u64,
    /// Of those, the ones whose server answered with its own close frame in time (RFC 6455
    /// asks it to; a server that just drops the TCP connection shows here).
    pub clean_closes: u64,
}

/// Counts about messages.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct MessageStats {
    pub sent: u64,
    /// Chat frames received (every copy).
    pub delivered: u64,
    /// Seconds of the send window the rates are over (deliveries during the drain count: they
    /// were sent inside it).
    pub traffic_seconds: f64,
    pub sent_per_s: f64,
    pub delivered_per_s: f64,
    /// Scheduled sends skipped because the sender's connection was down.
    pub missed_sends: u64,
    /// Sends that started more than 5 ms after their intended time (the load generator lagged;
    /// the lag is inside the measured latency, as the open model requires).
    pub late_sends: u64,
    pub heartbeats: u64,
    pub latency_reports: u64,
    /// `error` frames from the server, by code.
    pub server_errors: BTreeMap<String, u64>,
    /// One message per error code, as the server worded it.
    #[serde(default)]
    pub server_error_samples: BTreeMap<String, String>,
    /// Frames that were not ours and not an `error`/`ack`.
    pub other_frames: u64,
}

/// The run's settings, as far as they matter to read the figures.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RunInfo {
    pub urls: Vec<String>,
    pub clients: u32,
    pub connections_per_user: u32,
    /// Shards this report covers, e.g. ["1/2", "2/2"] after a merge.
    pub shards: Vec<String>,
    pub pattern: String,
    pub rate_per_connection: f64,
    pub payload_size: usize,
    pub duration_s: f64,
}

/// Everything a run measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub run: RunInfo,
    pub connections: ConnectionStats,
    pub connect_ms: Percentiles,
    /// End-to-end: intended send time to receipt.
    pub latency_ms: Percentiles,
    pub messages: MessageStats,
    pub audit: AuditTotals,
    /// The receiver connections with the most issues.
    pub audit_receivers: Vec<ConnectionAudit>,
    pub histograms: SerializedHistograms,
}

/// HdrHistogram V2 encoding, hex, in microseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SerializedHistograms {
    pub latency_us: String,
    pub connect_us: String,
}

/// Why reports cannot be merged or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReportError {
    #[error("histogram {what}: {error}")]
    Histogram { what: &'static str, error: String },
    #[error("no reports to merge")]
    Empty,
}

pub fn encode_histogram(h: &Histogram<u64>) -> String {
    let mut buf = Vec::new();
    V2Serializer::new().serialize(h, &mut buf).expect("serializing into a Vec");
    let mut s = String::with_capacity(buf.len() * 2);
    for b in buf {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

pub fn decode_histogram(what: &'static str, hex: &str) -> Result<Histogram<u64>, ReportError> {
    let err = |error: String| ReportError::Histogram { what, error };
    if hex.is_empty() {
        return Ok(new_histogram());
    }
    if hex.len() % 2 != 0 {
        return Err(err("odd number of hex digits".into()));
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|e| err(e.to_string()))?;
    let h: Histogram<u64> = Deserializer::new().deserialize(&mut bytes.as_slice()).map_err(|e| err(format!("{e:?}")))?;
    let mut out = new_histogram();
    out.add(&h).map_err(|e| err(format!("{e:?}")))?;
    Ok(out)
}

impl Report {
    /// Merges shard reports: counts added, histograms added, rates added (shards run at once).
    pub fn merge(reports: &[Report]) -> Result<Report, ReportError> {
        let first = reports.first().ok_or(ReportError::Empty)?;
        let mut lat = new_histogram();
        let mut con = new_histogram();
        let mut out = Report { run: first.run.clone(), ..Report::default() };
        out.run.shards.clear();
        for r in reports {
            lat.add(decode_histogram("latency_us", &r.histograms.latency_us)?).map_err(|e| ReportError::Histogram { what: "latency_us", error: format!("{e:?}") })?;
            con.add(decode_histogram("connect_us", &r.histograms.connect_us)?).map_err(|e| ReportError::Histogram { what: "connect_us", error: format!("{e:?}") })?;
            out.run.shards.extend(r.run.shards.iter().cloned());
            for u in &r.run.urls {
                if !out.run.urls.contains(u) {
                    out.run.urls.push(u.clone());
                }
            }
            let c = &mut out.connections;
            let rc = &r.connections;
            c.target += rc.target;
            c.connected_at_start += rc.connected_at_start;
            c.peak += rc.peak;
            c.failed_attempts += rc.failed_attempts;
            c.never_connected += rc.never_connected;
            c.reconnects += rc.reconnects;
            c.clean_closes += rc.clean_closes;
            c.closed_by_us += rc.closed_by_us;
            add_map(&mut c.unexpected_closes, &rc.unexpected_closes);
            add_map(&mut c.connect_errors, &rc.connect_errors);
            let m = &mut out.messages;
            let rm = &r.messages;
            m.sent += rm.sent;
            m.delivered += rm.delivered;
            m.traffic_seconds = m.traffic_seconds.max(rm.traffic_seconds);
            m.sent_per_s += rm.sent_per_s;
            m.delivered_per_s += rm.delivered_per_s;
            m.missed_sends += rm.missed_sends;
            m.late_sends += rm.late_sends;
            m.heartbeats += rm.heartbeats;
            m.latency_reports += rm.latency_reports;
            m.other_frames += rm.other_frames;
            add_map(&mut m.server_errors, &rm.server_errors);
            add_samples(&mut m.server_error_samples, &rm.server_error_samples);
            let a = &mut out.audit;
            let ra = &r.audit;
            a.expected += ra.expected;
            a.received += ra.received;
            a.lost += ra.lost;
            a.duplicated += ra.duplicated;
            a.reordered += ra.reordered;
            a.missed_while_offline += ra.missed_while_offline;
            a.sent_to_offline += ra.sent_to_offline;
            a.offline_delivered += ra.offline_delivered;
            a.receivers_with_issues += ra.receivers_with_issues;
            out.audit_receivers.extend(r.audit_receivers.iter().cloned());
        }
        out.audit_receivers.sort_by_key(|c| std::cmp::Reverse(c.lost + c.duplicated + c.reordered));
        out.audit_receivers.truncate(super::audit::MAX_LISTED_RECEIVERS);
        out.latency_ms = Percentiles::of(&lat);
        out.connect_ms = Percentiles::of(&con);
        out.histograms = SerializedHistograms { latency_us: encode_histogram(&lat), connect_us: encode_histogram(&con) };
        Ok(out)
    }

    /// The value a threshold names, or None for an unknown metric.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let l = &self.latency_ms;
        let c = &self.connect_ms;
        let errors: u64 = self.messages.server_errors.values().sum::<u64>() + self.connections.failed_attempts;
        Some(match name {
            "p50" => l.p50_ms,
            "p90" => l.p90_ms,
            "p99" => l.p99_ms,
            "p99.9" | "p999" => l.p999_ms,
            "max" => l.max_ms,
            "mean" | "avg" => l.mean_ms,
            "connect_p50" => c.p50_ms,
            "connect_p99" => c.p99_ms,
            "connect_max" => c.max_ms,
            "lost" => self.audit.lost as f64,
            "duplicated" | "dup" => self.audit.duplicated as f64,
            "reordered" => self.audit.reordered as f64,
            "sent" => self.messages.sent as f64,
            "delivered" => self.messages.delivered as f64,
            "delivered_per_s" | "throughput" | "rate" => self.messages.delivered_per_s,
            "sent_per_s" => self.messages.sent_per_s,
            "connected" => self.connections.connected_at_start as f64,
            "never_connected" => self.connections.never_connected as f64,
            "reconnects" => self.connections.reconnects as f64,
            "errors" => errors as f64,
            "unexpected_closes" => self.connections.unexpected_closes.values().sum::<u64>() as f64,
            _ => return None,
        })
    }
}

/// Adds per-key counts (close codes, error codes) into `into`.
pub(super) fn add_map(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (k, v) in from {
        *into.entry(k.clone()).or_default() += v;
    }
}

/// Keeps the first sample message seen for each error code.
pub(super) fn add_samples(into: &mut BTreeMap<String, String>, from: &BTreeMap<String, String>) {
    for (k, v) in from {
        into.entry(k.clone()).or_insert_with(|| v.clone());
    }
}

/// Metric names a threshold may use.
pub const METRICS: &str = "p50 p90 p99 p99.9 max mean connect_p50 connect_p99 connect_max lost duplicated reordered \
     sent delivered delivered_per_s sent_per_s connected never_connected reconnects errors unexpected_closes";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

/// A threshold such as `p99<50ms` or `lost=0`. Durations are compared in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assertion {
    pub text: String,
    pub metric: String,
    pub op: Op,
    pub value: f64,
}

/// The outcome of one threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssertionResult {
    pub assertion: String,
    pub actual: f64,
    pub passed: bool,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AssertionError {
    #[error("invalid --assert {0:?}: expected METRIC OP VALUE, e.g. 'p99<50ms' or 'lost=0' (OP: < <= > >= = !=)")]
    Syntax(String),
    #[error("invalid --assert {text:?}: unknown metric {metric:?} (known: {METRICS})")]
    Metric { text: String, metric: String },
    #[error("invalid --assert {0:?}: the value is not a number or a duration (50ms, 1.5s)")]
    Value(String),
}

impl Assertion {
    pub fn parse(text: &str) -> Result<Assertion, AssertionError> {
        let t: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        let ops: [(&str, Op); 7] = [("<=", Op::Le), (">=", Op::Ge), ("!=", Op::Ne), ("==", Op::Eq), ("<", Op::Lt), (">", Op::Gt), ("=", Op::Eq)];
        let (at, len, op) = ops
            .iter()
            .filter_map(|(s, op)| t.find(s).map(|i| (i, s.len(), *op)))
            .min_by_key(|(i, len, _)| (*i, std::cmp::Reverse(*len)))
            .ok_or_else(|| AssertionError::Syntax(text.to_string()))?;
        let metric = t[..at].to_ascii_lowercase();
        let raw = &t[at + len..];
        if metric.is_empty() || raw.is_empty() {
            return Err(AssertionError::Syntax(text.to_string()));
        }
        if Report::default().metric(&metric).is_none() {
            return Err(AssertionError::Metric { text: text.to_string(), metric });
        }
        let value = match raw.parse::<f64>() {
            Ok(v) => v,
            Err(_) => humantime::parse_duration(raw).map_err(|_| AssertionError::Value(text.to_string()))?.as_secs_f64() * 1000.0,
        };
        Ok(Assertion { text: text.to_string(), metric, op, value })
    }

    pub fn check(&self, report: &Report) -> AssertionResult {
        let actual = report.metric(&self.metric).unwrap_or(f64::NAN);
        let v = self.value;
        let passed = match self.op {
            Op::Lt => actual < v,
            Op::Le => actual <= v,
            Op::Gt => actual > v,
            Op::Ge => actual >= v,
            Op::Eq => actual == v,
            Op::Ne => actual != v,
        };
        AssertionResult { assertion: self.text.clone(), actual, passed }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_parse_and_compare() {
        let a = Assertion::parse("p99 < 50ms").unwrap();
        assert_eq!((a.metric.as_str(), a.op, a.value), ("p99", Op::Lt, 50.0));
        let b = Assertion::parse("lost=0").unwrap();
        assert_eq!((b.op, b.value), (Op::Eq, 0.0));
        assert_eq!(Assertion::parse("p99<=1.5s").unwrap().value, 1500.0);
        assert!(Assertion::parse("latency<5").is_err());
        assert!(Assertion::parse("p99").is_err());
        let mut r = Report::default();
        r.latency_ms.p99_ms = 60.0;
        assert!(!a.check(&r).passed);
        assert!(b.check(&r).passed);
    }

    #[test]
    fn merge_adds_histograms() {
        let mut a = new_histogram();
        let mut b = new_histogram();
        for v in 1..=100 {
            a.record(v * 1000).unwrap();
        }
        b.record(1_000_000).unwrap();
        let ra = Report { histograms: SerializedHistograms { latency_us: encode_histogram(&a), connect_us: String::new() }, ..Report::default() };
        let rb = Report { histograms: SerializedHistograms { latency_us: encode_histogram(&b), connect_us: String::new() }, ..Report::default() };
        let m = Report::merge(&[ra, rb]).unwrap();
        assert_eq!(m.latency_ms.count, 101);
        assert!((m.latency_ms.max_ms - 1000.0).abs() < 1.0);
    }
}
