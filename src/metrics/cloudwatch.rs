//! CloudWatch, the node's side: the client settings shared with the reader (`crate::tail`), and
//! the publisher a node runs next to its server (`wsctl serve --cloudwatch`). It pushes six
//! metrics per interval under one `ServerID` dimension: the original server's five, as counts for
//! the interval (not running totals, so `Sum` over any period is meaningful), and a sixth,
//! `LatencyMs`, the latency distribution as Values/Counts so CloudWatch can compute percentiles. A failed push is logged, counted in
//! `wss_cloudwatch_push_errors_total`, and its counts are carried into the next interval's push.

use std::time::{Duration, SystemTime};

use aws_sdk_cloudwatch::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_cloudwatch::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_cloudwatch::primitives::DateTime;
use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit};
use aws_sdk_cloudwatch::Client;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{Metrics, Snapshot};

/// The original server's namespace; dashboards and alarms use it.
pub const DEFAULT_NAMESPACE: &str = "wss/metrics";
/// The dimension that tells nodes apart.
pub const DIMENSION: &str = "ServerID";
/// The original server pushed every 60 s, CloudWatch's standard resolution.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
/// One push is one small request; if it takes longer than this the endpoint is in trouble, and
/// giving up lets the next interval retry with the carried-over counts.
pub const PUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// The push made after the drain: short, because it holds up the process exit.
pub const FINAL_PUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// GetMetricData accepts at most 500 queries per call.
pub const MAX_QUERIES_PER_CALL: usize = 500;
/// ... and returns at most 100,800 data points per call.
pub const MAX_POINTS_PER_CALL: usize = 100_800;
/// Pages of ListMetrics / GetMetricData read before giving up: each page holds 500 metrics or
/// 500 query results, so this is far past any fleet, and a looping NextToken cannot spin forever.
pub(crate) const MAX_PAGES: usize = 1000;

/// The names the publisher writes (and the reader asks for).
pub mod names {
    pub const ACTIVE_CONNECTIONS: &str = "ActiveConnections";
    pub const MESSAGES: &str = "MessagesTotal";
    pub const DELIVERED: &str = "MessagesDelivered";
    pub const UNEXPECTED_DISCONNECTS: &str = "UnexpectedDisconnects";
    pub const AVERAGE_LATENCY: &str = "AverageLatencyMs";
    /// The latency distribution (Values/Counts) for percentiles; not one of the original five.
    pub const LATENCY: &str = "LatencyMs";
}

/// Why a CloudWatch call failed, sorted into what the user can fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CloudWatchError {
    #[error(
        "no AWS credentials: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run where an \
         instance role is available ({0})"
    )]
    Credentials(String),
    #[error("no AWS region: pass one (--region / --cloudwatch-region) or set AWS_REGION")]
    NoRegion,
    #[error("cannot reach CloudWatch at {endpoint} ({detail}): check the region (AWS_REGION, --region / --cloudwatch-region) and the network, or pass --endpoint for an emulator")]
    Unreachable { endpoint: String, detail: String },
    #[error("no metrics found in namespace {namespace:?}{}: is a node publishing there (wsctl serve --cloudwatch), and is the region right?", server.as_ref().map(|s| format!(" for ServerID {s:?}")).unwrap_or_default())]
    NoMetrics { namespace: String, server: Option<String> },
    #[error("CloudWatch {call} failed: {detail}")]
    Api { call: &'static str, detail: String },
    #[error("CloudWatch {call} timed out after {after:?}")]
    Timeout { call: &'static str, after: Duration },
}

/// Where and as whom to talk to CloudWatch. Unset fields come from the AWS config chain
/// (environment, profile files, instance role).
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    pub region: Option<String>,
    /// A compatible endpoint (e.g. moto_server on loopback) instead of AWS's.
    pub endpoint: Option<String>,
    /// Fixed credentials, bypassing the chain (tests pass dummy ones here, not in the process
    /// environment, because tests run in parallel).
    pub credentials: Option<Credentials>,
}

impl ClientOptions {
    pub(crate) fn describe_endpoint(&self) -> String {
        match (&self.endpoint, &self.region) {
            (Some(e), _) => e.clone(),
            (None, Some(r)) => format!("monitoring.{r}.amazonaws.com"),
            (None, None) => "the region's CloudWatch endpoint".to_string(),
        }
    }
}

/// Region used with a custom endpoint when none is configured: local emulators ignore it, but
/// request signing needs one.
pub const ENDPOINT_DEFAULT_REGION: &str = "us-east-1";

/// A CloudWatch client built from `opts` and the AWS config chain.
pub async fn client(opts: &ClientOptions) -> Result<Client, CloudWatchError> {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(r) = &opts.region {
        loader = loader.region(Region::new(r.clone()));
    } else if opts.endpoint.is_some() {
        // Environment only: the full chain would also ask the instance metadata service.
        let chain = aws_config::meta::region::RegionProviderChain::first_try(
            aws_config::environment::EnvironmentVariableRegionProvider::new(),
        )
        .or_else(ENDPOINT_DEFAULT_REGION);
        loader = loader.region(chain);
    }
    if let Some(e) = &opts.endpoint {
        loader = loader.endpoint_url(e.clone());
    }
    if let Some(c) = &opts.credentials {
        loader = loader.credentials_provider(c.clone());
    }
    let config = loader.load().await;
    if config.region().is_none() {
        return Err(CloudWatchError::NoRegion);
    }
    Ok(Client::new(&config))
}

/// An error and its sources as one line, "a: b: c" (the SDK's own Display says only "dispatch
/// failure"; its `DisplayErrorContext` appends a Debug dump).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !parts.last().is_some_and(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = s.source();
    }
    parts.join(": ")
}

pub(crate) fn sdk_error<E, R>(call: &'static str, endpoint: &str, e: SdkError<E, R>) -> CloudWatchError
where
    E: std::error::Error + ProvideErrorMetadata + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let detail = error_chain(&e);
    if let Some(code) = e.code() {
        if matches!(code, "InvalidClientTokenId" | "UnrecognizedClientException" | "SignatureDoesNotMatch" | "ExpiredToken") {
            return CloudWatchError::Credentials(detail);
        }
    }
    // The SDK reports a failed credential lookup only as text inside its dispatch error.
    if detail.contains("credentials") && detail.to_ascii_lowercase().contains("no credentials")
        || detail.contains("failed to load credentials")
        || detail.contains("the credential provider was not enabled")
    {
        return CloudWatchError::Credentials(detail);
    }
    match &e {
        SdkError::DispatchFailure(d) if d.is_io() || d.is_timeout() => {
            CloudWatchError::Unreachable { endpoint: endpoint.to_string(), detail }
        }
        SdkError::TimeoutError(_) => CloudWatchError::Unreachable { endpoint: endpoint.to_string(), detail },
        _ => CloudWatchError::Api { call, detail },
    }
}

pub(crate) fn dimension(server_id: &str) -> Dimension {
    Dimension::builder().name(DIMENSION).value(server_id).build()
}

/// What one push sent.
#[derive(Debug, Clone, PartialEq)]
pub struct PushReport {
    /// The counts pushed (since the last successful push).
    pub pushed: Snapshot,
    pub datums: usize,
}

/// Pushes a node's metrics to CloudWatch every interval. Runs as its own task: a slow or failing
/// endpoint delays only the publisher, never the server.
pub struct Publisher {
    client: Client,
    endpoint: String,
    namespace: String,
    server_id: String,
    metrics: Metrics,
    interval: Duration,
    /// The snapshot at the last successful push: the next push sends the counts since then, so a
    /// failed interval's counts are carried over, not lost.
    published: Snapshot,
}

impl Publisher {
    /// The first push covers everything since `metrics` was created (its counters start at 0).
    pub fn new(client: Client, opts: &ClientOptions, namespace: &str, server_id: &str, metrics: Metrics, interval: Duration) -> Self {
        let published = Metrics::disabled().snapshot();
        Publisher {
            client,
            endpoint: opts.describe_endpoint(),
            namespace: namespace.to_string(),
            server_id: server_id.to_string(),
            metrics,
            interval,
            published,
        }
    }

    /// The datums for `delta` (counts for the interval; the gauge as read now).
    pub fn datums(&self, delta: &Snapshot, at: SystemTime) -> Vec<MetricDatum> {
        // Sub-minute intervals need high-resolution storage, or CloudWatch folds them per minute.
        let resolution = if self.interval < Duration::from_secs(60) { 1 } else { 60 };
        let base = |name: &str, unit: StandardUnit| {
            MetricDatum::builder()
                .metric_name(name)
                .dimensions(dimension(&self.server_id))
                .unit(unit)
                .timestamp(DateTime::from(at))
                .storage_resolution(resolution)
        };
        let mut out = vec![
            base(names::ACTIVE_CONNECTIONS, StandardUnit::Count).value(delta.active_connections.max(0) as f64).build(),
            base(names::MESSAGES, StandardUnit::Count).value(delta.messages as f64).build(),
            base(names::DELIVERED, StandardUnit::Count).value(delta.messages_delivered as f64).build(),
            base(names::UNEXPECTED_DISCONNECTS, StandardUnit::Count).value(delta.unexpected_disconnects as f64).build(),
        ];
        // No reports in the interval: no latency datapoint (a 0 would drag the average down).
        if let Some(mean) = delta.client_latency_ms.mean() {
            out.push(base(names::AVERAGE_LATENCY, StandardUnit::Milliseconds).value(mean).build());
            let mut dist = base(names::LATENCY, StandardUnit::Milliseconds);
            for (v, c) in delta.client_latency_ms.values_counts() {
                dist = dist.values(v).counts(c as f64);
            }
            out.push(dist.build());
        }
        out
    }

    /// Pushes the counts since the last successful push.
    pub async fn push(&mut self) -> Result<PushReport, CloudWatchError> {
        let now = self.metrics.snapshot();
        let delta = now.since(&self.published);
        let datums = self.datums(&delta, SystemTime::now());
        let n = datums.len();
        self.client
            .put_metric_data()
            .namespace(&self.namespace)
            .set_metric_data(Some(datums))
            .send()
            .await
            .map_err(|e| sdk_error("PutMetricData", &self.endpoint, e))?;
        self.published = now;
        Ok(PushReport { pushed: delta, datums: n })
    }

    async fn push_logged(&mut self, timeout: Duration) -> bool {
        let result = match tokio::time::timeout(timeout, self.push()).await {
            Ok(r) => r,
            Err(_) => Err(CloudWatchError::Timeout { call: "PutMetricData", after: timeout }),
        };
        match result {
            Ok(r) => {
                debug!(messages = r.pushed.messages, datums = r.datums, "pushed metrics to CloudWatch");
                true
            }
            Err(e) => {
                self.metrics.cloudwatch_push_errors.inc();
                warn!(error = %e, "CloudWatch push failed; its counts go out with the next push");
                false
            }
        }
    }

    /// Pushes every interval until `shutdown` is cancelled (an in-flight push is abandoned; its
    /// counts stay pending). Returns itself so the caller can [`finish`](Self::finish) after the
    /// server drained.
    pub async fn run(mut self, shutdown: CancellationToken) -> Self {
        info!(namespace = %self.namespace, server_id = %self.server_id, interval = ?self.interval, endpoint = %self.endpoint, "publishing metrics to CloudWatch");
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + self.interval, self.interval);
        // A push that overran its interval is not followed by a burst of catch-up pushes.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return self,
                _ = tick.tick() => {}
            }
            tokio::select! {
                _ = shutdown.cancelled() => return self,
                _ = self.push_logged(PUSH_TIMEOUT) => {}
            }
        }
    }

    /// The final push (what is left since the last one), bounded by [`FINAL_PUSH_TIMEOUT`].
    pub async fn finish(mut self) {
        if self.push_logged(FINAL_PUSH_TIMEOUT).await {
            info!("pushed the final interval to CloudWatch");
        }
    }
}
