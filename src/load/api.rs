//! `--api-publish`: messages published through the server's HTTP API (`POST /api/publish`) on
//! an open-model schedule beside the sockets. Each carries the same payload stamp as a socket
//! message, with the sender slot [`Plan::slots`](super::schedule::Plan::slots) (one past the
//! last connection), so the delivery audit checks them with everything else.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hdrhistogram::Histogram;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::audit::SentCounts;
use super::client::count_sequence;
use super::report::{count_bounded, new_histogram, ApiStats};
use super::schedule::{write_stamped, Stamp};
use super::Shared;

/// Requests waiting for their answer at once. A publish due while this many wait is skipped
/// (counted in `skipped`), so a slow server shows as a shortfall, not as a growing queue.
pub const API_INFLIGHT: usize = 256;
/// One request, connect to answer; past it the publish counts as failed (`timeout`).
pub const API_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest answer read: the API answers a publish with a small JSON object.
const MAX_ANSWER: usize = 64 * 1024;
/// The frame type published: a backend's own event, as the API is for.
pub const API_TYPE: &str = "notification";

/// What the publisher did, for the report and the audit.
#[derive(Debug, Default)]
pub(crate) struct ApiOutcome {
    pub stats: ApiStats,
    pub sent_counts: SentCounts,
    /// (audience, seq) of publishes not answered 200 reaching someone: owed to no one (the
    /// API's answer is definite, unlike a socket send's).
    pub not_accepted: Vec<(u32, u32)>,
    pub sent_to_offline: u64,
    pub latency: Option<Histogram<u64>>,
}

/// The parts of the API's answer the audit needs (`{"online":..,"nodes":..,"local":..}`).
#[derive(Deserialize)]
struct Answer {
    online: Option<bool>,
    #[serde(default)]
    local: u64,
    #[serde(default)]
    nodes: u64,
    error: Option<String>,
}

/// How one request ended.
enum Fate {
    Reached(bool),
    Refused(String),
    Failed(&'static str),
}

/// Publishes from the traffic start until `send_end` (or `stop`), then waits for the answers
/// still out (each bounded by [`API_TIMEOUT`]).
pub(crate) async fn run(sh: Arc<Shared>, start: Instant, send_end: Instant, stop: CancellationToken) -> ApiOutcome {
    let mut out = ApiOutcome { stats: ApiStats { rate: sh.config.api_publish, ..ApiStats::default() }, latency: Some(new_histogram()), ..ApiOutcome::default() };
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(API_TIMEOUT));
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let uris: Vec<hyper::Uri> = sh.bases.iter().map(publish_uri).collect();
    let key: Arc<str> = format!("Bearer {}", sh.config.api_key.as_deref().unwrap_or_default()).into();
    // Validated: within config::MIN_RATE..=MAX_RATE.
    let interval = Duration::from_secs_f64(1.0 / sh.config.api_publish);
    let mut rng = SmallRng::from_rng(&mut rand::rng());
    let mut next = start;
    let mut inflight: JoinSet<(Sent, Fate, Duration)> = JoinSet::new();
    let mut k = 0usize;
    while next < send_end && !stop.is_cancelled() {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            Some(done) = inflight.join_next() => { settle(&sh, &mut out, done); continue; }
            _ = stop.cancelled() => break,
        }
        while next <= Instant::now() && next < send_end {
            if inflight.len() >= API_INFLIGHT {
                out.stats.skipped += 1;
            } else {
                let (sent, body) = publish_body(&sh, &mut out, &mut rng, next);
                let req = request(&uris[k % uris.len()], &key, body);
                k += 1;
                out.stats.sent += 1;
                sh.live.acks_waiting.fetch_add(1, Relaxed);
                let client = client.clone();
                inflight.spawn(async move {
                    let t = Instant::now();
                    let fate = tokio::time::timeout(API_TIMEOUT, call(&client, req)).await.unwrap_or(Fate::Failed("timeout"));
                    (sent, fate, t.elapsed())
                });
            }
            next += interval;
        }
    }
    while let Some(done) = inflight.join_next().await {
        settle(&sh, &mut out, done);
    }
    out
}

/// `ws://host:port/ws` becomes `http://host:port/api/publish`.
fn publish_uri(base: &url::Url) -> hyper::Uri {
    let mut u = base.clone();
    // ws -> http: both special schemes, so the change is allowed; the URL was validated as ws://.
    let _ = u.set_scheme("http");
    u.set_path("/api/publish");
    u.set_query(None);
    u.as_str().parse().expect("a valid URL is a valid URI")
}

/// One publish's audit entry: audience, sequence, connections owed it.
type Sent = (u32, i64, u32);

/// Picks an audience (a random user, or room), counts its sequence and writes the body.
fn publish_body(sh: &Shared, out: &mut ApiOutcome, rng: &mut SmallRng, intended: Instant) -> (Sent, String) {
    let plan = &sh.plan;
    let to = rng.random_range(0..plan.audiences());
    let (to, seq, up) = count_sequence(sh, &mut out.sent_counts, &mut out.sent_to_offline, to, plan.audience_slots(to), None);
    sh.live.expected.fetch_add(u64::from(up), Relaxed);
    let stamp = Stamp { sender_slot: plan.slots(), seq, intended_ns: intended.duration_since(sh.epoch).as_nanos() as u64, padding: &sh.padding };
    let mut body = String::with_capacity(sh.frame_capacity);
    write_stamped(&mut body, API_TYPE, plan.audience(to), stamp, None);
    ((to, seq, up), body)
}

fn request(uri: &hyper::Uri, key: &str, body: String) -> hyper::Request<Full<Bytes>> {
    hyper::Request::post(uri.clone())
        .header(AUTHORIZATION, key)
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("static method, parsed URI and valid headers")
}

async fn call(client: &Client<HttpConnector, Full<Bytes>>, req: hyper::Request<Full<Bytes>>) -> Fate {
    let Ok(resp) = client.request(req).await else { return Fate::Failed("connect") };
    let status = resp.status();
    let Ok(body) = Limited::new(resp.into_body(), MAX_ANSWER).collect().await else { return Fate::Failed("body") };
    let answer = serde_json::from_slice::<Answer>(&body.to_bytes()).ok();
    match answer {
        Some(a) if status.is_success() => Fate::Reached(a.online.unwrap_or(a.local + a.nodes > 0)),
        Some(Answer { error: Some(code), .. }) => Fate::Refused(code),
        _ => Fate::Refused(format!("http_{}", status.as_u16())),
    }
}

/// Books one answered (or failed) publish.
fn settle(sh: &Shared, out: &mut ApiOutcome, done: Result<(Sent, Fate, Duration), tokio::task::JoinError>) {
    sh.live.acks_waiting.fetch_sub(1, Relaxed);
    let Ok(((to, seq, up), fate, took)) = done else { return };
    if let Some(h) = &mut out.latency {
        h.saturating_record((took.as_micros() as u64).max(1));
    }
    let accepted = match fate {
        Fate::Reached(true) => {
            out.stats.online += 1;
            true
        }
        Fate::Reached(false) => {
            out.stats.offline += 1;
            false
        }
        Fate::Refused(code) => {
            count_bounded(&mut out.stats.refused, &code, 1);
            false
        }
        Fate::Failed(why) => {
            count_bounded(&mut out.stats.failed, why, 1);
            false
        }
    };
    if !accepted {
        // Owed to no one now (an unaudited publish was owed to no one anyway: up is 0): the drain
        // need not wait for it.
        sh.live.expected.fetch_sub(u64::from(up), Relaxed);
        super::acks::remember(&mut out.not_accepted, &mut out.stats.untracked, to, seq);
    }
}
