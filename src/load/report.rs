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
    /// This process's memory per connection: RSS growth from before the first connection to
    /// when all were up, divided by the connections up (Linux; absent elsewhere). Before any
    /// traffic, so it is the cost of an idle connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_kib_per_connection: Option<f64>,
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

/// What arrived, frame by frame: the evidence for "nothing recognized" (issue 12).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct FrameStats {
    /// Text and binary frames from the server (pings, pongs and closes aside).
    pub received: u64,
    /// Frames by their `type` field (at most [`MAX_CODES`] names; the rest as `(other)`).
    pub by_type: BTreeMap<String, u64>,
    /// Frames carrying a stamp of this run (delivered messages the audit counted).
    pub stamped: u64,
    /// Frames not counted, by reason.
    pub unrecognized: BTreeMap<String, u64>,
    /// The first frame of each reason, cut to 200 bytes.
    pub samples: BTreeMap<String, String>,
}

impl FrameStats {
    pub(super) fn add(&mut self, o: &FrameStats) {
        self.received += o.received;
        self.stamped += o.stamped;
        for (k, v) in &o.by_type {
            count_bounded(&mut self.by_type, k, *v);
        }
        add_map(&mut self.unrecognized, &o.unrecognized);
        add_samples(&mut self.samples, &o.samples);
    }
}

/// What a run could measure. Anything but `measured` and `idle` means the loss figures say
/// nothing about the server: the report says why instead.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Diagnosis {
    /// Messages arrived and were audited.
    #[default]
    Measured,
    /// Nothing was sent (idle connections, or none connected).
    Idle,
    /// Messages were sent and not one frame came back.
    NothingArrived,
    /// Frames came back, but none carried a stamp of this run.
    NothingRecognized,
}

impl Diagnosis {
    pub fn of(sent: u64, frames: &FrameStats) -> Diagnosis {
        if frames.stamped > 0 {
            Diagnosis::Measured
        } else if sent == 0 {
            Diagnosis::Idle
        } else if frames.received == 0 {
            Diagnosis::NothingArrived
        } else if frames.unrecognized.values().sum::<u64>() > 0 || frames.by_type.values().sum::<u64>() > 0 {
            Diagnosis::NothingRecognized
        } else {
            Diagnosis::NothingArrived
        }
    }
}

/// Server answers to sends that carried an `id` (`--ack`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AckStats {
    /// Sends that carried an id.
    pub sent_with_id: u64,
    /// Acked with `online:true`: the server took it for delivery.
    pub online: u64,
    /// Acked with `online:false` (or without `online`): accepted, receiver not online.
    pub offline: u64,
    /// `error` frames answering a send, by code (`unavailable`, `overloaded`, `rate_limited`...).
    pub refused: BTreeMap<String, u64>,
    /// Sends with no answer by the end of the drain, on a connection still up.
    pub unanswered: u64,
    /// Sends whose connection closed before an answer came.
    pub unanswered_closed: u64,
    /// Answers for an id we did not send or that was already answered.
    pub unknown_ids: u64,
    /// Send to ack or error.
    pub latency_ms: Percentiles,
    /// Acked `online:true` and never delivered to a receiver connection that was up: the
    /// figure that matters.
    pub lost_after_ack: u64,
    /// Refused, offline or unanswered sends that arrived anyway (e.g. `unavailable` after local
    /// delivery on the sender's node), per receiver connection: neither loss nor duplicates.
    pub refused_arrived: u64,
    /// Refused sends whose fate no receiver could tell (more than the tracking bound).
    pub untracked: u64,
}

impl AckStats {
    pub(super) fn add(&mut self, o: &AckStats) {
        self.sent_with_id += o.sent_with_id;
        self.online += o.online;
        self.offline += o.offline;
        add_map(&mut self.refused, &o.refused);
        self.unanswered += o.unanswered;
        self.unanswered_closed += o.unanswered_closed;
        self.unknown_ids += o.unknown_ids;
        self.lost_after_ack += o.lost_after_ack;
        self.refused_arrived += o.refused_arrived;
        self.untracked += o.untracked;
    }
}

/// One second of the run, for `--json`, `--csv` and `wsctl load plot`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SeriesPoint {
    /// End of this second, in seconds since the run started (traffic starts at
    /// `run.traffic_start_s`).
    pub t: f64,
    /// This point's width in seconds: 1, unless the runtime was too busy to sample on time
    /// (then the counts cover `dt_s` seconds).
    #[serde(default)]
    pub dt_s: f64,
    pub sent: u64,
    pub delivered: u64,
    /// End-to-end latency of the deliveries in this second, in ms (0 when none).
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Connection failures and error frames in this second.
    pub errors: u64,
    /// Error frames in this second by code (failed connects as `connect`, closes as `close`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub errors_by_code: BTreeMap<String, u64>,
    /// Connections up at the end of this second.
    pub connections: u64,
    pub acked_online: u64,
    pub acked_offline: u64,
    pub refused: u64,
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
    /// When traffic started, in seconds since the run started (the series' time base).
    #[serde(default)]
    pub traffic_start_s: f64,
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
    /// What the figures can be trusted for.
    #[serde(default)]
    pub diagnosis: Diagnosis,
    #[serde(default)]
    pub frames: FrameStats,
    /// Present with `--ack`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acks: Option<AckStats>,
    /// Present with `--api-publish`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<ApiStats>,
    /// Per second of the run.
    #[serde(default)]
    pub series: Vec<SeriesPoint>,
    pub histograms: SerializedHistograms,
}

/// HdrHistogram V2 encoding, hex, in microseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SerializedHistograms {
    pub latency_us: String,
    pub connect_us: String,
    /// Send to ack (`--ack`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ack_us: String,
    /// Request to answer of `POST /api/publish` (`--api-publish`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub api_us: String,
}

/// `--api-publish`: messages published through the server's HTTP API (`POST /api/publish`)
/// while the sockets run. Their deliveries are audited with the rest (sender `api`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ApiStats {
    /// Publishes per second asked for.
    pub rate: f64,
    /// Requests made.
    pub sent: u64,
    /// Answered 200, and reaching someone (a user online; a room with members).
    pub online: u64,
    /// Answered 200, reaching no one.
    pub offline: u64,
    /// Answered with an error, by its `error` code (or `http_<status>` without one).
    pub refused: BTreeMap<String, u64>,
    /// No answer: connect or transport errors, timeouts.
    pub failed: BTreeMap<String, u64>,
    /// Due while the most requests allowed in flight were waiting: not made.
    pub skipped: u64,
    /// Not accepted beyond the tracking bound (`acks::MAX_REFUSED_TRACKED`): still owed in the
    /// audit, which cannot tell them apart.
    #[serde(default)]
    pub untracked: u64,
    /// Request to answer.
    pub latency_ms: Percentiles,
}

impl ApiStats {
    pub(super) fn add(&mut self, o: &ApiStats) {
        self.rate += o.rate;
        self.sent += o.sent;
        self.online += o.online;
        self.offline += o.offline;
        add_map(&mut self.refused, &o.refused);
        add_map(&mut self.failed, &o.failed);
        self.skipped += o.skipped;
        self.untracked += o.untracked;
    }
}

/// Why reports cannot be merged or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReportError {
    /// `field` is the JSON path of the bad value, e.g. `histograms.latency_us`.
    #[error("field {field}: {error}")]
    Histogram { field: &'static str, error: String },
    #[error("no reports to merge")]
    Empty,
}

/// V2-serialized, then hex (the `hex` crate).
pub fn encode_histogram(h: &Histogram<u64>) -> String {
    let mut buf = Vec::new();
    V2Serializer::new().serialize(h, &mut buf).expect("serializing into a Vec");
    hex::encode(buf)
}

/// The inverse of [`encode_histogram`]; `field` names the value in errors. An empty string is
/// an empty histogram.
pub fn decode_histogram(field: &'static str, text: &str) -> Result<Histogram<u64>, ReportError> {
    let err = |error: String| ReportError::Histogram { field, error };
    if text.is_empty() {
        return Ok(new_histogram());
    }
    let bytes = hex::decode(text).map_err(|e| err(format!("not hex: {e}")))?;
    let h: Histogram<u64> = Deserializer::new().deserialize(&mut bytes.as_slice()).map_err(|e| err(format!("not an HdrHistogram: {e:?}")))?;
    let mut out = new_histogram();
    out.add(&h).map_err(|e| err(format!("{e:?}")))?;
    Ok(out)
}

const LATENCY_FIELD: &str = "histograms.latency_us";
const CONNECT_FIELD: &str = "histograms.connect_us";
const ACK_FIELD: &str = "histograms.ack_us";
const API_FIELD: &str = "histograms.api_us";

impl Report {
    /// Decodes every serialized histogram, so a bad one is named before anything is merged.
    pub fn check_histograms(&self) -> Result<(), ReportError> {
        decode_histogram(LATENCY_FIELD, &self.histograms.latency_us)?;
        decode_histogram(CONNECT_FIELD, &self.histograms.connect_us)?;
        decode_histogram(ACK_FIELD, &self.histograms.ack_us)?;
        decode_histogram(API_FIELD, &self.histograms.api_us)?;
        Ok(())
    }

    /// Merges shard reports: counts added, histograms added, rates added (shards run at once),
    /// series added second by second.
    pub fn merge(reports: &[Report]) -> Result<Report, ReportError> {
        let first = reports.first().ok_or(ReportError::Empty)?;
        let (mut lat, mut con, mut ack, mut api) = (new_histogram(), new_histogram(), new_histogram(), new_histogram());
        let mut out = Report { run: first.run.clone(), ..Report::default() };
        out.run.shards.clear();
        for r in reports {
            r.check_histograms()?;
            let add = |into: &mut Histogram<u64>, field: &'static str, text: &str| {
                into.add(decode_histogram(field, text)?).map_err(|e| ReportError::Histogram { field, error: format!("{e:?}") })
            };
            add(&mut lat, LATENCY_FIELD, &r.histograms.latency_us)?;
            add(&mut con, CONNECT_FIELD, &r.histograms.connect_us)?;
            add(&mut ack, ACK_FIELD, &r.histograms.ack_us)?;
            add(&mut api, API_FIELD, &r.histograms.api_us)?;
            out.run.shards.extend(r.run.shards.iter().cloned());
            for u in &r.run.urls {
                if !out.run.urls.contains(u) {
                    out.run.urls.push(u.clone());
                }
            }
            out.connections.add(&r.connections);
            out.messages.add(&r.messages);
            out.audit.add(&r.audit);
            out.frames.add(&r.frames);
            if let Some(a) = &r.acks {
                out.acks.get_or_insert_with(AckStats::default).add(a);
            }
            if let Some(a) = &r.api {
                out.api.get_or_insert_with(ApiStats::default).add(a);
            }
            merge_series(&mut out.series, &r.series);
            out.audit_receivers.extend(r.audit_receivers.iter().cloned());
        }
        out.audit_receivers.sort_by_key(|c| std::cmp::Reverse(c.lost + c.duplicated + c.reordered));
        out.audit_receivers.truncate(super::audit::MAX_LISTED_RECEIVERS);
        if let Some(a) = &mut out.api {
            a.latency_ms = Percentiles::of(&api);
        }
        out.latency_ms = Percentiles::of(&lat);
        out.connect_ms = Percentiles::of(&con);
        if let Some(a) = &mut out.acks {
            a.latency_ms = Percentiles::of(&ack);
        }
        out.diagnosis = Diagnosis::of(out.messages.sent, &out.frames);
        let ack_us = if out.acks.is_some() { encode_histogram(&ack) } else { String::new() };
        let api_us = if out.api.is_some() { encode_histogram(&api) } else { String::new() };
        out.histograms = SerializedHistograms { latency_us: encode_histogram(&lat), connect_us: encode_histogram(&con), ack_us, api_us };
        Ok(out)
    }

    /// `--ack` figures; 0 for a run without acks (nothing was refused or lost after an ack).
    fn ack_metric(&self, name: &str) -> Option<f64> {
        let d = AckStats::default();
        let a = self.acks.as_ref().unwrap_or(&d);
        Some(match name {
            "lost_after_ack" => a.lost_after_ack as f64,
            "unanswered" => (a.unanswered + a.unanswered_closed) as f64,
            "refused" => a.refused.values().sum::<u64>() as f64,
            "acked_offline" => a.offline as f64,
            "ack_p50" => a.latency_ms.p50_ms,
            "ack_p99" => a.latency_ms.p99_ms,
            "ack_max" => a.latency_ms.max_ms,
            _ => return None,
        })
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
            "refused_missing" => self.audit.refused_missing as f64,
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
            "foreign" => self.audit.foreign as f64,
            "echoed" => self.audit.echoed as f64,
            "late_sends" => self.messages.late_sends as f64,
            _ => return self.ack_metric(name),
        })
    }
}

/// Adds a shard's series into `into`, second by second (each shard counts from its own traffic
/// start; shards started together line up). Percentiles take the worse of the two: the exact
/// figure needs the histograms, which are not kept per second.
fn merge_series(into: &mut Vec<SeriesPoint>, from: &[SeriesPoint]) {
    for p in from {
        match into.iter_mut().find(|q| (q.t - p.t).abs() < 0.5) {
            Some(q) => {
                q.dt_s = q.dt_s.max(p.dt_s);
                q.sent += p.sent;
                q.delivered += p.delivered;
                q.p50_ms = q.p50_ms.max(p.p50_ms);
                q.p99_ms = q.p99_ms.max(p.p99_ms);
                q.errors += p.errors;
                add_map(&mut q.errors_by_code, &p.errors_by_code);
                q.connections += p.connections;
                q.acked_online += p.acked_online;
                q.acked_offline += p.acked_offline;
                q.refused += p.refused;
            }
            None => into.push(p.clone()),
        }
    }
    into.sort_by(|a, b| a.t.total_cmp(&b.t));
}

impl ConnectionStats {
    fn add(&mut self, o: &ConnectionStats) {
        self.target += o.target;
        self.connected_at_start += o.connected_at_start;
        self.peak += o.peak;
        self.failed_attempts += o.failed_attempts;
        self.never_connected += o.never_connected;
        self.reconnects += o.reconnects;
        self.clean_closes += o.clean_closes;
        self.closed_by_us += o.closed_by_us;
        add_map(&mut self.unexpected_closes, &o.unexpected_closes);
        add_map(&mut self.connect_errors, &o.connect_errors);
        // Shards are separate processes: the figure of one is as good as any.
        self.rss_kib_per_connection = self.rss_kib_per_connection.or(o.rss_kib_per_connection);
    }
}

impl MessageStats {
    fn add(&mut self, o: &MessageStats) {
        self.sent += o.sent;
        self.delivered += o.delivered;
        self.traffic_seconds = self.traffic_seconds.max(o.traffic_seconds);
        self.sent_per_s += o.sent_per_s;
        self.delivered_per_s += o.delivered_per_s;
        self.missed_sends += o.missed_sends;
        self.late_sends += o.late_sends;
        self.heartbeats += o.heartbeats;
        self.latency_reports += o.latency_reports;
        self.other_frames += o.other_frames;
        add_map(&mut self.server_errors, &o.server_errors);
        add_samples(&mut self.server_error_samples, &o.server_error_samples);
    }
}

impl AuditTotals {
    fn add(&mut self, o: &AuditTotals) {
        self.expected += o.expected;
        self.received += o.received;
        self.lost += o.lost;
        self.refused_missing += o.refused_missing;
        self.duplicated += o.duplicated;
        self.reordered += o.reordered;
        self.missed_while_offline += o.missed_while_offline;
        self.sent_to_offline += o.sent_to_offline;
        self.offline_delivered += o.offline_delivered;
        self.foreign += o.foreign;
        self.echoed += o.echoed;
        self.receivers_with_issues += o.receivers_with_issues;
    }
}

/// Adds per-key counts (close codes, error codes) into `into`.
pub(super) fn add_map(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (k, v) in from {
        *into.entry(k.clone()).or_default() += v;
    }
}

/// Distinct error codes (and close reasons) counted one by one; the rest go under `(other)`, so
/// a server inventing codes cannot grow the report without end.
pub const MAX_CODES: usize = 32;

/// Adds `n` under `key`, within [`MAX_CODES`] keys.
pub fn count_bounded(into: &mut BTreeMap<String, u64>, key: &str, n: u64) {
    if let Some(v) = into.get_mut(key) {
        *v += n;
    } else if into.len() < MAX_CODES {
        into.insert(key.chars().take(64).collect(), n);
    } else {
        *into.entry("(other)".to_string()).or_default() += n;
    }
}

/// Keeps the first sample message seen for each error code.
pub(super) fn add_samples(into: &mut BTreeMap<String, String>, from: &BTreeMap<String, String>) {
    for (k, v) in from {
        into.entry(k.clone()).or_insert_with(|| v.clone());
    }
}

/// Metric names a threshold may use.
pub const METRICS: &str = "p50 p90 p99 p99.9 max mean connect_p50 connect_p99 connect_max lost refused_missing duplicated reordered \
     sent delivered delivered_per_s sent_per_s connected never_connected reconnects errors unexpected_closes foreign echoed late_sends \
     lost_after_ack unanswered refused acked_offline ack_p50 ack_p99 ack_max";

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
        let ra = Report { histograms: SerializedHistograms { latency_us: encode_histogram(&a), connect_us: String::new(), ack_us: String::new(), api_us: String::new() }, ..Report::default() };
        let rb = Report { histograms: SerializedHistograms { latency_us: encode_histogram(&b), connect_us: String::new(), ack_us: String::new(), api_us: String::new() }, ..Report::default() };
        let m = Report::merge(&[ra, rb]).unwrap();
        assert_eq!(m.latency_ms.count, 101);
        assert!((m.latency_ms.max_ms - 1000.0).abs() < 1.0);
    }

    #[test]
    fn bad_histogram_text_is_an_error_naming_the_field() {
        for bad in ["zz", "é0", "abc", "00ff"] {
            let r = Report { histograms: SerializedHistograms { latency_us: String::new(), connect_us: bad.to_string(), ack_us: String::new(), api_us: String::new() }, ..Report::default() };
            let e = Report::merge(&[r]).unwrap_err().to_string();
            assert!(e.starts_with("field histograms.connect_us: "), "{bad}: {e}");
        }
    }
}
