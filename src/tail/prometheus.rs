//! Reading a node's `/metrics` from outside: an HTTP GET through hyper-util's pooled client
//! (hyper is already in the tree through axum), and a parser for the Prometheus / OpenMetrics
//! text exposition that checks its structure (HELP/TYPE before samples, histogram buckets
//! cumulative and ending in +Inf == count). `wsctl metrics tail --prometheus` and the tests use it.
//!
//! The parser is our own, on purpose. The maintained crate, `prometheus-parse` (0.2/0.3), does
//! not cover what `tail` and the tests need: it splits labels on `,` and `=` and stops at the
//! first `}` (a label value holding `,`, `=`, `}` or an escaped `\"` comes out mangled), skips a
//! sample whose value does not parse instead of failing, validates nothing (a TYPE after
//! samples, non-cumulative buckets or a missing +Inf all pass), ignores OpenMetrics' `# EOF`,
//! and would add chrono, regex, itertools and lazy_static for ~200 lines of ours. The unit tests
//! below pin each of those cases.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, LengthLimitError, Limited};
use hyper::header::{ACCEPT, USER_AGENT};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// A scrape (connect, send, read the whole answer) that takes longer than this fails: a node
/// renders /metrics in microseconds, so 5 s means it is wedged or the address is wrong.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest /metrics body accepted. A node's exposition is ~5 KiB; 4 MiB leaves room for
/// exporters with many series and stops a wrong URL from streaming without end.
pub const MAX_BODY: usize = 4 * 1024 * 1024;

/// Why a scrape failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScrapeError {
    #[error("bad URL {0:?}: expected http://host:port/path, e.g. http://127.0.0.1:8081/metrics (https is not supported)")]
    BadUrl(String),
    #[error("cannot reach {url} ({detail}): is the node running, and is that its address and port?")]
    Unreachable { url: String, detail: String },
    #[error("{url} did not answer within {SCRAPE_TIMEOUT:?}")]
    Timeout { url: String },
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: malformed HTTP response: {reason}")]
    BadResponse { url: String, reason: String },
    #[error("{url}: the body is larger than {MAX_BODY} bytes")]
    TooLarge { url: String },
    #[error("{url}: {source}")]
    Parse { url: String, source: ParseError },
}

/// A line of exposition text that does not follow the format.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("line {line}: {reason}: {text:?}")]
#[non_exhaustive]
pub struct ParseError {
    pub line: usize,
    pub reason: String,
    pub text: String,
}

/// One sample line: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// A metric family: its `# TYPE`, `# HELP` and samples.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Family {
    pub name: String,
    /// `counter`, `gauge`, `histogram`, `summary`, `info`, `unknown`, ...
    pub kind: String,
    pub help: Option<String>,
    pub samples: Vec<Sample>,
}

/// A histogram family read back: cumulative buckets by upper bound, sum and count.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSample {
    pub buckets: Vec<(f64, f64)>,
    pub sum: f64,
    pub count: f64,
}

impl HistogramSample {
    /// What was observed since `earlier` (same buckets): (count, sum, per-bucket cumulative).
    pub fn since(&self, earlier: &HistogramSample) -> HistogramSample {
        HistogramSample {
            buckets: self.buckets.iter().zip(&earlier.buckets).map(|(a, b)| (a.0, (a.1 - b.1).max(0.0))).collect(),
            sum: (self.sum - earlier.sum).max(0.0),
            count: (self.count - earlier.count).max(0.0),
        }
    }

    pub fn mean(&self) -> Option<f64> {
        (self.count > 0.0).then(|| self.sum / self.count)
    }

    /// The q-quantile (0..=1) by linear interpolation inside the bucket, as PromQL's
    /// `histogram_quantile` does; None without observations.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count <= 0.0 {
            return None;
        }
        let rank = q * self.count;
        let (mut lo, mut below) = (0.0, 0.0);
        for &(le, cum) in &self.buckets {
            if cum >= rank {
                if le.is_infinite() {
                    return Some(lo);
                }
                let inside = cum - below;
                return Some(if inside > 0.0 { lo + (le - lo) * (rank - below) / inside } else { le });
            }
            (lo, below) = (le, cum);
        }
        Some(lo)
    }
}

/// A parsed exposition.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Exposition {
    pub families: BTreeMap<String, Family>,
    /// Whether it ended with OpenMetrics' `# EOF`.
    pub eof: bool,
}

impl Exposition {
    pub fn family(&self, name: &str) -> Option<&Family> {
        self.families.get(name)
    }

    /// A counter's value (the `_total` sample, or a bare one as in Prometheus 0.0.4 text).
    pub fn counter(&self, name: &str) -> Option<f64> {
        let f = self.families.get(name)?;
        let total = format!("{name}_total");
        f.samples.iter().find(|s| s.name == total || s.name == name).map(|s| s.value)
    }

    /// A gauge's value (its first sample).
    pub fn gauge(&self, name: &str) -> Option<f64> {
        self.families.get(name)?.samples.iter().find(|s| s.name == name).map(|s| s.value)
    }

    pub fn histogram(&self, name: &str) -> Option<HistogramSample> {
        let f = self.families.get(name)?;
        let (bucket, sum, count) = (format!("{name}_bucket"), format!("{name}_sum"), format!("{name}_count"));
        let mut h = HistogramSample { buckets: Vec::new(), sum: 0.0, count: 0.0 };
        for s in &f.samples {
            if s.name == bucket {
                let le = s.labels.iter().find(|(k, _)| k == "le")?.1.as_str();
                h.buckets.push((parse_value(le)?, s.value));
            } else if s.name == sum {
                h.sum = s.value;
            } else if s.name == count {
                h.count = s.value;
            }
        }
        Some(h)
    }
}

/// Parses Prometheus text (0.0.4) or OpenMetrics text and checks its structure. Samples must
/// follow the `# TYPE` of their family (sample names may add `_total`, `_bucket`, `_sum`,
/// `_count`, `_created`, `_info`); histogram buckets must be cumulative, end with `+Inf`, and
/// `+Inf` must equal `_count`; nothing may follow `# EOF`.
pub fn parse(text: &str) -> Result<Exposition, ParseError> {
    let mut exp = Exposition::default();
    let mut current: Option<String> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let err = |reason: &str| ParseError { line, reason: reason.to_string(), text: raw.to_string() };
        if exp.eof {
            return Err(err("content after # EOF"));
        }
        if raw.trim().is_empty() {
            continue;
        }
        if let Some(rest) = raw.strip_prefix('#') {
            let rest = rest.trim_start();
            if rest == "EOF" {
                exp.eof = true;
                continue;
            }
            let mut parts = rest.splitn(3, ' ');
            let (keyword, name, tail) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            match keyword {
                "TYPE" | "HELP" | "UNIT" => {
                    if !valid_name(name) {
                        return Err(err("bad metric name"));
                    }
                    let fam = exp.families.entry(name.to_string()).or_insert_with(|| Family { name: name.to_string(), ..Default::default() });
                    if keyword == "TYPE" {
                        if tail.is_empty() {
                            return Err(err("TYPE without a type"));
                        }
                        if !fam.kind.is_empty() || !fam.samples.is_empty() {
                            return Err(err("TYPE repeated or after samples"));
                        }
                        fam.kind = tail.to_string();
                    } else if keyword == "HELP" {
                        fam.help = Some(tail.to_string());
                    }
                    current = Some(name.to_string());
                }
                _ => {} // other comments are allowed
            }
            continue;
        }
        let sample = parse_sample(raw).ok_or_else(|| err("not a sample line"))?;
        let family = family_of(&exp, current.as_deref(), &sample.name).ok_or_else(|| err("sample without a # TYPE for its family"))?;
        exp.families.get_mut(&family).expect("family exists").samples.push(sample);
    }
    for fam in exp.families.values() {
        if fam.kind == "histogram" {
            check_histogram(&exp, fam).map_err(|reason| ParseError { line: 0, reason, text: fam.name.clone() })?;
        }
    }
    Ok(exp)
}

fn family_of(exp: &Exposition, current: Option<&str>, sample: &str) -> Option<String> {
    const SUFFIXES: [&str; 7] = ["", "_total", "_bucket", "_sum", "_count", "_created", "_info"];
    let cur = current?;
    let fam = exp.families.get(cur)?;
    SUFFIXES.iter().any(|s| sample.strip_suffix(s).is_some_and(|base| base == cur)).then(|| fam.name.clone())
}

fn check_histogram(exp: &Exposition, fam: &Family) -> Result<(), String> {
    let h = exp.histogram(&fam.name).ok_or("histogram with a bucket lacking `le`")?;
    let mut prev: Option<(f64, f64)> = None;
    for &(le, c) in &h.buckets {
        if let Some((ple, pc)) = prev {
            if le <= ple {
                return Err(format!("bucket bounds not increasing ({ple} then {le})"));
            }
            if c < pc {
                return Err(format!("bucket counts not cumulative ({pc} then {c} at le={le})"));
            }
        }
        prev = Some((le, c));
    }
    match prev {
        Some((le, c)) if le.is_infinite() && c == h.count => Ok(()),
        Some((le, c)) if le.is_infinite() => Err(format!("+Inf bucket {c} differs from _count {}", h.count)),
        _ => Err("no +Inf bucket".to_string()),
    }
}

fn valid_name(n: &str) -> bool {
    let mut chars = n.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn parse_value(v: &str) -> Option<f64> {
    match v {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => v.parse().ok(),
    }
}

/// `name{a="x",b="y"} value [timestamp]`.
fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    if !valid_name(name) {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let mut s = inner;
        loop {
            s = s.trim_start_matches([',', ' ']);
            if let Some(after) = s.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = s.find('=')?;
            let key = s[..eq].trim();
            if !valid_name(key) {
                return None;
            }
            let body = s[eq + 1..].strip_prefix('"')?;
            let mut value = String::new();
            let mut chars = body.char_indices();
            let end = loop {
                let (i, c) = chars.next()?;
                match c {
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    '"' => break i,
                    c => value.push(c),
                }
            };
            labels.push((key.to_string(), value));
            s = &body[end + 1..];
        }
    }
    let mut fields = rest.split_whitespace();
    let value = parse_value(fields.next()?)?;
    if let Some(ts) = fields.next() {
        ts.parse::<f64>().ok()?;
    }
    Some(Sample { name: name.to_string(), labels, value })
}

/// How long an idle pooled connection to a node is kept: past one refresh period of `tail`
/// (5 s by default), so successive scrapes reuse it.
const POOL_IDLE: Duration = Duration::from_secs(30);
/// What the scraper asks for: OpenMetrics first (what a wsctl node renders), then Prometheus text.
const ACCEPT_EXPOSITION: &str = "application/openmetrics-text;version=1.0.0, text/plain;version=0.0.4";

/// Scrapes `/metrics` endpoints over pooled HTTP/1.1 connections.
#[derive(Clone)]
pub struct Scraper {
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Default for Scraper {
    fn default() -> Self {
        Self::new()
    }
}

impl Scraper {
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(SCRAPE_TIMEOUT));
        connector.set_nodelay(true);
        Scraper { client: Client::builder(TokioExecutor::new()).pool_idle_timeout(POOL_IDLE).build(connector) }
    }

    /// GETs `url` (http://host:port/path) and parses the body.
    pub async fn scrape(&self, url: &str) -> Result<Exposition, ScrapeError> {
        let body = self.get(url).await?;
        parse(&body).map_err(|source| ScrapeError::Parse { url: url.to_string(), source })
    }

    /// GETs `url` and returns the body of a 200 answer, within [`SCRAPE_TIMEOUT`] and
    /// [`MAX_BODY`]. A URL without a path means `/metrics`.
    pub async fn get(&self, url: &str) -> Result<String, ScrapeError> {
        match tokio::time::timeout(SCRAPE_TIMEOUT, self.get_inner(url)).await {
            Ok(r) => r,
            Err(_) => Err(ScrapeError::Timeout { url: url.to_string() }),
        }
    }

    async fn get_inner(&self, url: &str) -> Result<String, ScrapeError> {
        let uri = metrics_uri(url)?;
        let req = hyper::Request::get(uri)
            .header(ACCEPT, ACCEPT_EXPOSITION)
            .header(USER_AGENT, concat!("wsctl/", env!("CARGO_PKG_VERSION")))
            .body(Empty::new())
            .map_err(|_| ScrapeError::BadUrl(url.to_string()))?;
        let resp = self.client.request(req).await.map_err(|e| ScrapeError::Unreachable { url: url.to_string(), detail: error_chain(&e) })?;
        if resp.status() != hyper::StatusCode::OK {
            return Err(ScrapeError::Status { url: url.to_string(), status: resp.status().as_u16() });
        }
        let body = Limited::new(resp.into_body(), MAX_BODY).collect().await.map_err(|e| {
            if e.downcast_ref::<LengthLimitError>().is_some() {
                ScrapeError::TooLarge { url: url.to_string() }
            } else {
                ScrapeError::BadResponse { url: url.to_string(), reason: e.to_string() }
            }
        })?;
        String::from_utf8(body.to_bytes().to_vec()).map_err(|_| ScrapeError::BadResponse { url: url.to_string(), reason: "body is not UTF-8".to_string() })
    }
}

/// GETs `url` once with a fresh [`Scraper`] and parses the body.
pub async fn scrape(url: &str) -> Result<Exposition, ScrapeError> {
    Scraper::new().scrape(url).await
}

/// `url` checked (http, a host) with `/metrics` as the path when it has none.
fn metrics_uri(url: &str) -> Result<hyper::Uri, ScrapeError> {
    let bad = || ScrapeError::BadUrl(url.to_string());
    let mut parsed = url::Url::parse(url).map_err(|_| bad())?;
    if parsed.scheme() != "http" || parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad());
    }
    if parsed.path() == "/" {
        parsed.set_path("/metrics");
    }
    parsed.as_str().parse().map_err(|_| bad())
}

/// An error and its sources as one line: hyper-util's own Display says only "client error".
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        parts.push(s.to_string());
        cur = s.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_a_node_renders() {
        let m = crate::Metrics::new();
        m.messages.inc_by(3);
        m.client_latency_ms.observe(1.5);
        m.client_latency_ms.observe(100.0);
        let exp = parse(&m.render()).unwrap();
        assert!(exp.eof);
        assert_eq!(exp.counter("wss_messages"), Some(3.0));
        let h = exp.histogram("wss_client_latency_ms").unwrap();
        assert_eq!((h.count, h.sum), (2.0, 101.5));
        assert_eq!(h.quantile(0.5), Some(2.0));
    }

    #[test]
    fn rejects_bad_structure() {
        assert!(parse("foo 1\n").is_err(), "sample without TYPE");
        let bad = "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\nh_sum 1\n";
        assert!(parse(bad).is_err(), "non-cumulative buckets");
        assert!(parse("# TYPE c counter\nc_total 1\n# EOF\nc_total 2\n").is_err());
    }

    #[test]
    fn the_cases_prometheus_parse_gets_wrong() {
        let text = "# TYPE h histogram\nh_bucket{path=\"/a,b=c}\",le=\"1\"} 1\nh_bucket{path=\"/a,b=c}\",le=\"+Inf\"} 2\n\
                    h_sum{path=\"/a,b=c}\"} 3.5\nh_count{path=\"/a,b=c}\"} 2\n# TYPE g gauge\ng{q=\"say \\\"hi\\\"\\n\"} NaN\n# EOF\n";
        let exp = parse(text).unwrap();
        assert!(exp.eof);
        let h = exp.histogram("h").unwrap();
        assert_eq!(h.buckets, vec![(1.0, 1.0), (f64::INFINITY, 2.0)]);
        assert_eq!((h.sum, h.count), (3.5, 2.0));
        assert_eq!(exp.family("h").unwrap().samples[0].labels[0], ("path".to_string(), "/a,b=c}".to_string()));
        assert_eq!(exp.family("g").unwrap().samples[0].labels[0].1, "say \"hi\"\n");
        assert!(parse("# TYPE c counter\nc_total one\n").is_err(), "a value that is not a number fails");
        assert!(parse("# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_count 1\nh_sum 1\n").is_err(), "no +Inf");
        assert!(parse("# TYPE c counter\nc_total 1\n# TYPE c counter\n").is_err(), "TYPE after samples");
    }

    #[test]
    fn urls_are_checked_and_default_to_metrics() {
        assert_eq!(metrics_uri("http://127.0.0.1:9090").unwrap().path(), "/metrics");
        assert_eq!(metrics_uri("http://[::1]:9090/x").unwrap().to_string(), "http://[::1]:9090/x");
        for bad in ["https://h/metrics", "127.0.0.1:9090", "http://", "ftp://h/"] {
            assert!(matches!(metrics_uri(bad), Err(ScrapeError::BadUrl(_))), "{bad}");
        }
    }
}
