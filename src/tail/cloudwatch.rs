//! Reading the fleet's metrics back from CloudWatch for `wsctl metrics tail`: the ServerIDs that
//! publish to a namespace (ListMetrics) and their series, bucket-aligned (GetMetricData, batched
//! within its per-call limits). The publishing side is [`crate::metrics::cloudwatch`].

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_cloudwatch::primitives::DateTime;
use aws_sdk_cloudwatch::types::{Metric, MetricDataQuery, MetricStat};
use aws_sdk_cloudwatch::Client;

use crate::metrics::cloudwatch::{dimension, names, sdk_error, ClientOptions, CloudWatchError, MAX_PAGES, MAX_POINTS_PER_CALL, MAX_QUERIES_PER_CALL, DIMENSION};

/// What `metrics tail` asks CloudWatch for.
#[derive(Debug, Clone)]
pub struct ReadQuery {
    pub namespace: String,
    /// Only this server; otherwise every ServerID found in the namespace.
    pub server: Option<String>,
    pub since: Duration,
    pub period: Duration,
}

/// The statistic read for each metric; `key` names the series in [`ServerSeries`].
pub const READ_STATS: [(&str, &str); 6] = [
    (names::ACTIVE_CONNECTIONS, "Average"),
    (names::MESSAGES, "Sum"),
    (names::DELIVERED, "Sum"),
    (names::UNEXPECTED_DISCONNECTS, "Sum"),
    (names::AVERAGE_LATENCY, "Average"),
    (names::LATENCY, "SampleCount"),
];

/// One server's series: metric name -> bucket start (Unix seconds) -> value.
pub type ServerSeries = BTreeMap<&'static str, BTreeMap<i64, f64>>;

/// The result of one read: aligned buckets per server.
#[derive(Debug, Clone)]
pub struct Readout {
    /// First bucket start, Unix seconds (a multiple of the period).
    pub start: i64,
    /// Last bucket start, Unix seconds.
    pub end: i64,
    pub period: i64,
    pub servers: BTreeMap<String, ServerSeries>,
}

/// Reads metrics back from CloudWatch.
pub struct Reader {
    client: Client,
    endpoint: String,
}

impl Reader {
    pub fn new(client: Client, opts: &ClientOptions) -> Self {
        Reader { client, endpoint: opts.describe_endpoint() }
    }

    /// Every ServerID that published `MessagesTotal` to `namespace`.
    pub async fn servers(&self, namespace: &str) -> Result<Vec<String>, CloudWatchError> {
        let mut out = std::collections::BTreeSet::new();
        let mut token = None;
        for _ in 0..MAX_PAGES {
            let page = self
                .client
                .list_metrics()
                .namespace(namespace)
                .metric_name(names::MESSAGES)
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| sdk_error("ListMetrics", &self.endpoint, e))?;
            for m in page.metrics() {
                for d in m.dimensions() {
                    if d.name() == Some(DIMENSION) {
                        out.extend(d.value().map(str::to_string));
                    }
                }
            }
            token = page.next_token().map(str::to_string);
            if token.is_none() {
                break;
            }
        }
        Ok(out.into_iter().collect())
    }

    /// Reads [`READ_STATS`] for every server over `q.since`, in as few GetMetricData calls as its
    /// limits allow.
    pub async fn read(&self, q: &ReadQuery) -> Result<Readout, CloudWatchError> {
        let servers = match &q.server {
            Some(s) => vec![s.clone()],
            None => self.servers(&q.namespace).await?,
        };
        if servers.is_empty() {
            return Err(CloudWatchError::NoMetrics { namespace: q.namespace.clone(), server: None });
        }
        let period = q.period.as_secs().max(1) as i64;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
        // Bucket starts are multiples of the period (moto starts buckets at StartTime, AWS aligns
        // them itself), and the window ends after the bucket in progress.
        let start = (now - q.since.as_secs() as i64).div_euclid(period) * period;
        let end = (now.div_euclid(period) + 1) * period;
        let points = ((end - start) / period).max(1) as usize;
        let per_call = MAX_QUERIES_PER_CALL.min(MAX_POINTS_PER_CALL / points).max(1);

        let mut queries = Vec::new();
        for (si, server) in servers.iter().enumerate() {
            for (mi, (name, stat)) in READ_STATS.iter().enumerate() {
                let metric = Metric::builder().namespace(&q.namespace).metric_name(*name).dimensions(dimension(server)).build();
                let stat = MetricStat::builder().metric(metric).period(period as i32).stat(*stat).build();
                queries.push(((si, *name), MetricDataQuery::builder().id(format!("s{si}m{mi}")).metric_stat(stat).return_data(true).build()));
            }
        }
        let mut readout = Readout { start, end: end - period, period, servers: BTreeMap::new() };
        let mut found = false;
        for batch in queries.chunks(per_call) {
            let ids: BTreeMap<String, (usize, &'static str)> =
                batch.iter().map(|(k, q)| (q.id().unwrap_or_default().to_string(), *k)).collect();
            let mut token = None;
            for _ in 0..MAX_PAGES {
                let out = self
                    .client
                    .get_metric_data()
                    .set_metric_data_queries(Some(batch.iter().map(|(_, q)| q.clone()).collect()))
                    .start_time(DateTime::from_secs(start))
                    .end_time(DateTime::from_secs(end))
                    .set_next_token(token)
                    .send()
                    .await
                    .map_err(|e| sdk_error("GetMetricData", &self.endpoint, e))?;
                for r in out.metric_data_results() {
                    let Some(&(si, name)) = r.id().and_then(|id| ids.get(id)) else { continue };
                    let series = readout.servers.entry(servers[si].clone()).or_default().entry(name).or_default();
                    for (t, v) in r.timestamps().iter().zip(r.values()) {
                        found = true;
                        series.insert(t.secs().div_euclid(period) * period, *v);
                    }
                }
                token = out.next_token().map(str::to_string);
                if token.is_none() {
                    break;
                }
            }
        }
        if !found {
            return Err(CloudWatchError::NoMetrics { namespace: q.namespace.clone(), server: q.server.clone() });
        }
        Ok(readout)
    }
}
