//! The load engine behind `wsctl load`: simulated users over real WebSocket connections,
//! an open-model send schedule (latency counted from the intended send time, so a slow server
//! cannot hide behind a slow client), HDR histograms, and a delivery audit. It returns data
//! ([`Report`], live counters in [`Live`]); the command draws it.
//!
//! A run: connect every slot at the ramp rate, wait until each slot made its first attempt,
//! start traffic for `duration`, wait for what is in flight (`drain`), close everything with 1000.
//!
//! # Layout
//! - [`config`]: [`LoadConfig`], profiles and value parsers.
//! - [`schedule`]: users, targets, receiver patterns, the chat frame written.
//! - [`wire`]: every frame from the server read with serde_json (any server of the protocol).
//! - `client`: one connection slot's task.
//! - [`audit`]: lost / duplicated / reordered per receiver connection, bounded against hostile
//!   numbers.
//! - [`acks`]: `--ack`: server answers per send, and what the audit must not call lost.
//! - `api`: `--api-publish`: publishes through the server's HTTP API, audited with the rest.
//! - [`report`]: [`Report`], merging, thresholds, the per-second series.
//! - [`plot`]: the series drawn as an SVG.

pub mod acks;
mod api;
pub mod audit;
mod client;
pub mod config;
mod driver;
mod frame;
mod peers;
pub mod plot;
pub mod report;
pub mod schedule;
pub mod wire;

use std::net::SocketAddr;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use audit::{AuditTotals, ConnectionAudit};
pub use config::{ConfigError, LoadConfig, Pattern, Profile, Rate};
pub use report::{AckStats, ApiStats, Assertion, AssertionResult, Diagnosis, FrameStats, Percentiles, Report, SeriesPoint};

use audit::{SenderAuditInput, SlotAuditInput, StampBounds};
use client::SlotOutcome;
use report::{count_bounded, encode_histogram, new_histogram, ConnectionStats, MessageStats, RunInfo, SerializedHistograms};
use schedule::Plan;

/// Cap on bytes waiting for one connection's socket: a tick's burst of max-size frames fits;
/// beyond it the connection counts as broken (`capacity`) rather than growing without end.
pub const MAX_WRITE_BUFFER: usize = 1024 * 1024;
/// WebSocket handshakes in flight at once (after the TCP connect; a slot past it waits its turn,
/// and its connect time includes the wait). Each holds its request and the answer read so far
/// (up to `frame::MAX_HANDSHAKE_ANSWER`) while it lasts, and the heap keeps its high-water mark.
/// Measured when the upgrade was tokio-tungstenite's (~10 KiB each): unbounded, a 20,000/s ramp
/// left 9.4-10.5 KiB of RSS per idle connection at 10,000 connections, against 7.6 KiB at 5,000/s.
pub const MAX_HANDSHAKES: usize = 256;
/// Largest frame, and largest message put together from fragments, accepted from the server;
/// a longer one breaks the connection (`capacity`).
pub const MAX_FRAME: usize = 64 * 1024;
/// Histogram shards: connections record their latency batches into `slot % SHARDS`, so two
/// threads rarely want the same lock.
const LATENCY_SHARDS: usize = 16;
/// Between the last first-connect attempt and the first send: the server registers a new
/// connection's route (in Redis, for a fleet) just after the upgrade, and a message sent before
/// that would be undeliverable.
pub const SETTLE: Duration = Duration::from_millis(200);
/// The drain ends only once nothing was delivered for this long (see `drain`).
const DRAIN_QUIET: Duration = Duration::from_millis(250);
/// How often the engine checks whether in-flight messages have all arrived during the drain.
const DRAIN_POLL: Duration = Duration::from_millis(10);
/// After the run closes its connections, how long the slot tasks get to finish before they are
/// aborted (their close handshakes have their own timeout inside).
const FINISH_TIMEOUT: Duration = Duration::from_secs(10);
/// Width of one point of the time series (`--json` `series`, `--csv`, `wsctl load plot`).
pub const SERIES_TICK: Duration = Duration::from_secs(1);
/// Longest series kept: a day of seconds (a point is ~100 bytes). Longer runs keep their first day.
const MAX_SERIES_POINTS: usize = 86_400;

/// A histogram shard: every sample of the run, and the samples of the current series second.
/// Each sample goes into both: folding a full-range histogram into another every second cost
/// the generator a few milliseconds of its one thread (late sends), a small one costs nothing.
pub struct LatencyShard {
    interval: Histogram<u64>,
    total: Histogram<u64>,
}

/// Highest latency the per-second window tells apart (60 s, 2 significant digits: ~27 KB per
/// shard instead of ~240 KB); slower samples are clamped to it in the window, not the total.
const WINDOW_MAX_US: u64 = 60_000_000;

fn new_window() -> Histogram<u64> {
    Histogram::new_with_bounds(1, WINDOW_MAX_US, 2).expect("static histogram bounds are valid")
}

/// The phase a run is in, for progress display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Phase {
    Connecting,
    Running,
    Draining,
    Closing,
    Done,
}

/// Counters shared with the command for live progress. Written with relaxed atomics.
pub struct Live {
    pub target: AtomicU64,
    pub connected: AtomicU64,
    pub peak: AtomicU64,
    pub sent: AtomicU64,
    pub delivered: AtomicU64,
    /// Distinct audited deliveries.
    pub audited: AtomicU64,
    /// Deliveries owed so far (audited messages times receiver connections up).
    pub expected: AtomicU64,
    pub errors: AtomicU64,
    pub reconnects: AtomicU64,
    /// `--ack`: sends waiting for an answer, and answers by verdict.
    pub acks_waiting: AtomicU64,
    pub acked_online: AtomicU64,
    pub acked_offline: AtomicU64,
    pub refused: AtomicU64,
    phase: AtomicU8,
    latency: Vec<Mutex<LatencyShard>>,
    ack_latency: Vec<Mutex<Histogram<u64>>>,
    connect_hist: Mutex<Histogram<u64>>,
    /// Errors by code since the last series point (bounded by `report::MAX_CODES`).
    error_codes: Mutex<BTreeMap<String, u64>>,
    series: Mutex<Series>,
}

/// The per-second series being built, and the counters at the previous point.
#[derive(Default)]
struct Series {
    points: Vec<SeriesPoint>,
    last: [u64; 6],
    last_t: f64,
}

/// A progress sample.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub phase: Phase,
    pub target: u64,
    pub connected: u64,
    pub sent: u64,
    pub delivered: u64,
    pub errors: u64,
    pub reconnects: u64,
    /// p99 of the latencies of the last second of the series, in ms.
    pub window_p99_ms: Option<f64>,
}

impl Default for Live {
    fn default() -> Self {
        Live {
            target: AtomicU64::new(0),
            connected: AtomicU64::new(0),
            peak: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            audited: AtomicU64::new(0),
            expected: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            acks_waiting: AtomicU64::new(0),
            acked_online: AtomicU64::new(0),
            acked_offline: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            phase: AtomicU8::new(0),
            latency: (0..LATENCY_SHARDS).map(|_| Mutex::new(LatencyShard { interval: new_window(), total: new_histogram() })).collect(),
            ack_latency: (0..LATENCY_SHARDS).map(|_| Mutex::new(new_histogram())).collect(),
            connect_hist: Mutex::new(new_histogram()),
            error_codes: Mutex::default(),
            series: Mutex::default(),
        }
    }
}

impl Live {
    pub fn new() -> Arc<Live> {
        Arc::new(Live::default())
    }

    pub fn phase(&self) -> Phase {
        match self.phase.load(Relaxed) {
            0 => Phase::Connecting,
            1 => Phase::Running,
            2 => Phase::Draining,
            3 => Phase::Closing,
            _ => Phase::Done,
        }
    }

    fn set_phase(&self, p: Phase) {
        self.phase.store(p as u8, Relaxed);
    }

    /// The counters now, and the p99 of the last series point.
    pub fn snapshot(&self) -> Snapshot {
        let series = lock(&self.series);
        let window_p99_ms = series.points.last().filter(|p| p.delivered > 0).map(|p| p.p99_ms);
        Snapshot {
            phase: self.phase(),
            target: self.target.load(Relaxed),
            connected: self.connected.load(Relaxed),
            sent: self.sent.load(Relaxed),
            delivered: self.delivered.load(Relaxed),
            errors: self.errors.load(Relaxed),
            reconnects: self.reconnects.load(Relaxed),
            window_p99_ms,
        }
    }

    /// Folds the latency samples since the previous call into the totals and appends a series
    /// point at `t` seconds. The engine calls it every [`SERIES_TICK`], and once at the end.
    fn tick(&self, t: f64) {
        let mut window = new_window();
        for shard in &self.latency {
            let mut g = lock(shard);
            // Same bounds on both sides: adding cannot fail.
            let _ = window.add(&g.interval);
            g.interval.reset();
        }
        let errors_by_code = std::mem::take(&mut *lock(&self.error_codes));
        let now = [&self.sent, &self.delivered, &self.errors, &self.acked_online, &self.acked_offline, &self.refused].map(|c| c.load(Relaxed));
        let mut series = lock(&self.series);
        let d: Vec<u64> = now.iter().zip(series.last).map(|(n, l)| n.saturating_sub(l)).collect();
        series.last = now;
        let dt_s = ((t - series.last_t) * 1000.0).round() / 1000.0;
        series.last_t = t;
        if series.points.len() >= MAX_SERIES_POINTS {
            return;
        }
        let q = |p: f64| if window.is_empty() { 0.0 } else { window.value_at_quantile(p) as f64 / 1000.0 };
        series.points.push(SeriesPoint {
            t: (t * 1000.0).round() / 1000.0,
            dt_s,
            sent: d[0],
            delivered: d[1],
            p50_ms: q(0.5),
            p99_ms: q(0.99),
            errors: d[2],
            errors_by_code,
            connections: self.connected.load(Relaxed),
            acked_online: d[3],
            acked_offline: d[4],
            refused: d[5],
        });
    }

    /// Counts an error for the series.
    fn count_error(&self, code: &str) {
        count_bounded(&mut lock(&self.error_codes), code, 1);
    }

    fn record_ack(&self, slot: u32, us: u64) {
        lock(&self.ack_latency[slot as usize % self.ack_latency.len()]).saturating_record(us);
    }

    fn total_latency(&self) -> Histogram<u64> {
        let mut all = new_histogram();
        for shard in &self.latency {
            let _ = all.add(&lock(shard).total);
        }
        all
    }

    fn total_ack_latency(&self) -> Histogram<u64> {
        let mut all = new_histogram();
        for shard in &self.ack_latency {
            let _ = all.add(&*lock(shard));
        }
        all
    }
}

/// A poisoned lock still holds valid counts: a panicking slot task cannot stop the report.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the slot tasks share (read-mostly).
pub(crate) struct Shared {
    config: LoadConfig,
    plan: Plan,
    addrs: Vec<SocketAddr>,
    /// `config.urls`, parsed: each connection's URL adds its user id to one.
    bases: Vec<url::Url>,
    /// What a delivered stamp must respect to be audited.
    bounds: StampBounds,
    /// Bytes of a chat frame, to allocate each one once at its final size.
    frame_capacity: usize,
    /// The process clock's zero: send times in payloads are nanoseconds since it.
    epoch: Instant,
    live: Arc<Live>,
    /// Per slot: connected now.
    online: Vec<AtomicBool>,
    /// Per slot: deliveries owed while it was down.
    missed: Vec<AtomicU64>,
    /// The connection loops (`driver.rs`), woken when `go` or `close` changes.
    loops: driver::Loops,
    /// Started when traffic begins; `traffic_start` is set just before.
    go: CancellationToken,
    traffic_start: OnceLock<Instant>,
    /// Started when every connection should close.
    close: CancellationToken,
    first_attempts: AtomicU64,
    /// [`MAX_HANDSHAKES`] permits.
    handshakes: tokio::sync::Semaphore,
    padding: String,
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot resolve {target}: {error}")]
    Resolve { target: String, error: String },
    #[error("cannot start a connection loop: {0}")]
    Loop(std::io::Error),
}

/// Runs a load test. `stop` ends the traffic early (Ctrl-C): the run still drains, closes and
/// reports. `fd_limit` is the open-file limit in force, `extra_fds` sockets used besides the
/// clients' (an embedded server's).
pub async fn run(config: LoadConfig, live: Arc<Live>, stop: CancellationToken, fd_limit: u64, extra_fds: u64) -> Result<Report, LoadError> {
    config.validate(fd_limit, extra_fds)?;
    let addrs = resolve(&config).await?;
    let rss_before = rss_kib();
    // As many connection loops as the runtime has threads (`wsctl --threads`).
    let (loops, parts) = driver::Loops::new(tokio::runtime::Handle::current().metrics().num_workers()).map_err(LoadError::Loop)?;
    let shared = Arc::new(Shared::new(config, addrs, live.clone(), loops));
    let _stop_loops = driver::StopOnDrop(shared.clone());
    driver::Loops::start(&shared, parts).map_err(LoadError::Loop)?;
    let run_start = Instant::now();
    let sampler = spawn_sampler(live.clone(), run_start);
    let tracker = TaskTracker::new();
    let handles = ramp(&shared, &tracker, &stop).await;
    let connected_at_start = live.connected.load(Relaxed);
    let rss_connected = rss_kib();

    // Traffic.
    let start = Instant::now() + SETTLE;
    let _ = shared.traffic_start.set(start);
    shared.go.cancel();
    shared.loops.wake_all();
    live.set_phase(Phase::Running);
    let send_end = start + shared.config.duration;
    let api = (shared.config.api_publish > 0.0).then(|| tokio::spawn(api::run(shared.clone(), start, send_end, stop.clone())));
    tokio::select! {
        _ = tokio::time::sleep_until(send_end) => {}
        _ = stop.cancelled() => {}
    }
    let sending_ended = Instant::now().min(send_end);
    drain(&shared, send_end).await;
    // Ends by itself: its last answers are bounded by api::API_TIMEOUT.
    let api = match api {
        Some(h) => h.await.ok(),
        None => None,
    };

    live.set_phase(Phase::Closing);
    shared.close.cancel();
    shared.loops.wake_all();
    tracker.close();
    let outcomes = finish(handles).await;
    // Every slot task has ended: the loops hold no connection of theirs any more.
    let stopping = shared.clone();
    let _ = tokio::task::spawn_blocking(move || stopping.loops.stop()).await;
    sampler.abort();
    live.tick(series_t(Instant::now(), run_start));
    live.set_phase(Phase::Done);
    // Rates are over the send window: what was delivered during the drain was sent inside it.
    let traffic_seconds = sending_ended.saturating_duration_since(start).as_secs_f64();
    let mut report = build_report(&shared, &live, outcomes, api, connected_at_start, traffic_seconds);
    report.run.traffic_start_s = start.saturating_duration_since(run_start).as_secs_f64();
    if let (Some(before), Some(after)) = (rss_before, rss_connected) {
        report.connections.rss_kib_per_connection = (connected_at_start > 0).then(|| after.saturating_sub(before) as f64 / connected_at_start as f64);
    }
    Ok(report)
}

async fn resolve(config: &LoadConfig) -> Result<Vec<SocketAddr>, LoadError> {
    let mut addrs = Vec::with_capacity(config.urls.len());
    for url in &config.urls {
        let target = config::target_addr(url)?;
        let addr = tokio::net::lookup_host(&target)
            .await
            .map_err(|e| LoadError::Resolve { target: target.clone(), error: e.to_string() })?
            .next()
            .ok_or_else(|| LoadError::Resolve { target: target.clone(), error: "no address".into() })?;
        addrs.push(addr);
    }
    Ok(addrs)
}

impl Shared {
    /// `config` was validated, so its URLs parse.
    fn new(config: LoadConfig, addrs: Vec<SocketAddr>, live: Arc<Live>, loops: driver::Loops) -> Shared {
        let plan = Plan::new(&config);
        let slots = plan.slots();
        live.target.store(u64::from(slots), Relaxed);
        let bases = config.urls.iter().map(|u| config::parse_url(u).expect("validated URL")).collect();
        let longest_name = plan.names_json.iter().map(|n| n.len()).max().unwrap_or(0);
        Shared {
            padding: "x".repeat(config.payload_size),
            frame_capacity: FRAME_OVERHEAD + longest_name + config.payload_size,
            // The API publisher stamps as one more sender, slot `slots`.
            bounds: StampBounds { slots: slots + u32::from(config.api_publish > 0.0), max_seq: config.max_sends_per_connection() },
            epoch: Instant::now(),
            live,
            online: (0..slots).map(|_| AtomicBool::new(false)).collect(),
            missed: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            loops,
            go: CancellationToken::new(),
            traffic_start: OnceLock::new(),
            close: CancellationToken::new(),
            first_attempts: AtomicU64::new(0),
            handshakes: tokio::sync::Semaphore::new(MAX_HANDSHAKES),
            addrs,
            bases,
            plan,
            config,
        }
    }
}

/// A chat frame's bytes besides the receiver id and the padding: keys, numbers, id (generous).
const FRAME_OVERHEAD: usize = 128;

/// This process's resident memory (VmRSS), where /proc tells it.
fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Seconds since the run started (the first connection attempt).
fn series_t(now: Instant, run_start: Instant) -> f64 {
    now.duration_since(run_start).as_secs_f64()
}

/// Appends a series point every [`SERIES_TICK`] until aborted.
fn spawn_sampler(live: Arc<Live>, run_start: Instant) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(run_start + SERIES_TICK, SERIES_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let at = tick.tick().await;
            live.tick(series_t(at, run_start));
        }
    })
}

/// Spawns the slots at the ramp rate and waits until each made its first connection attempt.
async fn ramp(shared: &Arc<Shared>, tracker: &TaskTracker, stop: &CancellationToken) -> Vec<tokio::task::JoinHandle<SlotOutcome>> {
    let slots = shared.plan.slots();
    let mut handles = Vec::with_capacity(slots as usize);
    let t0 = Instant::now();
    // Validated: ramp_per_s is within config::MIN_RATE..=MAX_RATE.
    let per = Duration::from_secs_f64(1.0 / shared.config.ramp_per_s);
    for slot in 0..slots {
        let due = t0 + per * slot;
        if due > Instant::now() {
            tokio::select! {
                _ = tokio::time::sleep_until(due) => {}
                _ = stop.cancelled() => break,
            }
        }
        handles.push(tracker.spawn(client::run_slot(shared.clone(), slot)));
    }
    let spawned = handles.len() as u64;
    // Every slot has made its first attempt (each bounded by connect_timeout).
    while shared.first_attempts.load(Relaxed) < spawned && !stop.is_cancelled() {
        tokio::select! {
            _ = tokio::time::sleep(DRAIN_POLL) => {}
            _ = stop.cancelled() => {}
        }
    }
    handles
}

/// Waits until every owed delivery arrived, every send with an id was answered and nothing
/// arrived for [`DRAIN_QUIET`], or the drain time is up.
///
/// The counters alone can say "settled" too early: a message counted as missed by a receiver
/// connection that was not up yet (a room member whose join ack its task had not read) still
/// reaches it and counts as audited, covering for a delivery still in flight.
async fn drain(shared: &Shared, send_end: Instant) {
    let live = &shared.live;
    live.set_phase(Phase::Draining);
    let drain_end = Instant::now().max(send_end) + shared.config.drain;
    let (mut delivered, mut changed) = (live.delivered.load(Relaxed), Instant::now());
    loop {
        let now = Instant::now();
        let d = live.delivered.load(Relaxed);
        if d != delivered {
            (delivered, changed) = (d, now);
        }
        let settled = live.audited.load(Relaxed) >= live.expected.load(Relaxed) && live.acks_waiting.load(Relaxed) == 0;
        let quiet = now.duration_since(changed) >= DRAIN_QUIET;
        if now >= drain_end || (now >= send_end && settled && quiet) {
            break;
        }
        tokio::time::sleep(DRAIN_POLL).await;
    }
}

/// Collects the slots' outcomes; a slot still running after [`FINISH_TIMEOUT`] is aborted, so
/// nothing of the run is left behind.
async fn finish(handles: Vec<tokio::task::JoinHandle<SlotOutcome>>) -> Vec<SlotOutcome> {
    let deadline = Instant::now() + FINISH_TIMEOUT;
    let mut outcomes = Vec::with_capacity(handles.len());
    for mut h in handles {
        match tokio::time::timeout_at(deadline, &mut h).await {
            Ok(Ok(o)) => outcomes.push(o),
            Ok(Err(_)) => {}
            Err(_) => {
                h.abort();
                let _ = h.await;
            }
        }
    }
    outcomes
}

fn build_report(sh: &Shared, live: &Live, outcomes: Vec<SlotOutcome>, api: Option<api::ApiOutcome>, connected_at_start: u64, traffic_seconds: f64) -> Report {
    let cfg = &sh.config;
    let (connections, mut messages, frames, mut acks) = fold_outcomes(sh, live, &outcomes, connected_at_start);
    messages.traffic_seconds = traffic_seconds;
    if traffic_seconds > 0.0 {
        messages.sent_per_s = messages.sent as f64 / traffic_seconds;
        messages.delivered_per_s = messages.delivered as f64 / traffic_seconds;
    }
    let sent_to_offline = outcomes.iter().map(|o| o.sent_to_offline).sum::<u64>() + api.as_ref().map_or(0, |a| a.sent_to_offline);
    let api_sender = api.as_ref().map(|a| SenderAuditInput { slot: sh.plan.slots(), counts: &a.sent_counts, not_accepted: &a.not_accepted, refused: &[], unowed_when_refused: true });
    let conclusion = audit::conclude(
        sh.plan.audiences(),
        sh.plan.connections_per_user,
        outcomes
            .iter()
            .map(|o| SenderAuditInput {
                slot: o.slot,
                counts: &o.sent_counts,
                not_accepted: o.acks.as_ref().map_or(&[][..], |a| &a.not_accepted[..]),
                refused: o.acks.as_ref().map_or(&[][..], |a| &a.refused[..]),
                unowed_when_refused: false,
            })
            .chain(api_sender),
        outcomes.iter().map(|o| SlotAuditInput {
            slot: o.slot,
            user: sh.plan.user_of(o.slot),
            audience: sh.plan.audience_of(sh.plan.user_of(o.slot)),
            audit: &o.audit,
            missed_while_offline: sh.missed[o.slot as usize].load(Relaxed),
        }),
        &sh.plan.names,
        sent_to_offline,
    );
    let latency = live.total_latency();
    let connect = lock(&live.connect_hist).clone();
    let ack_hist = live.total_ack_latency();
    if let Some(a) = &mut acks {
        a.lost_after_ack = conclusion.lost_after_ack;
        a.refused_arrived = conclusion.refused_arrived;
        a.latency_ms = Percentiles::of(&ack_hist);
    }
    let api_hist = api.as_ref().and_then(|a| a.latency.clone());
    let api_stats = api.map(|a| ApiStats { latency_ms: a.latency.as_ref().map(Percentiles::of).unwrap_or_default(), ..a.stats });
    let (i, n) = cfg.shard;
    Report {
        run: RunInfo {
            urls: cfg.urls.clone(),
            clients: cfg.clients,
            connections_per_user: cfg.connections_per_user,
            shards: vec![format!("{}/{n}", i + 1)],
            pattern: cfg.pattern.as_str().to_string(),
            rate_per_connection: cfg.rate_per_connection(),
            payload_size: cfg.payload_size,
            duration_s: cfg.duration.as_secs_f64(),
            traffic_start_s: 0.0,
        },
        connections,
        connect_ms: Percentiles::of(&connect),
        latency_ms: Percentiles::of(&latency),
        diagnosis: Diagnosis::of(messages.sent, &frames),
        messages,
        audit: conclusion.totals,
        audit_receivers: conclusion.listed,
        frames,
        histograms: SerializedHistograms {
            latency_us: encode_histogram(&latency),
            connect_us: encode_histogram(&connect),
            ack_us: if acks.is_some() { encode_histogram(&ack_hist) } else { String::new() },
            api_us: api_hist.as_ref().map(encode_histogram).unwrap_or_default(),
        },
        acks,
        api: api_stats,
        series: std::mem::take(&mut lock(&live.series).points),
    }
}

/// Adds up what the slots counted.
fn fold_outcomes(sh: &Shared, live: &Live, outcomes: &[SlotOutcome], connected_at_start: u64) -> (ConnectionStats, MessageStats, FrameStats, Option<AckStats>) {
    let mut connections = ConnectionStats {
        target: u64::from(sh.plan.slots()),
        connected_at_start,
        peak: live.peak.load(Relaxed),
        ..ConnectionStats::default()
    };
    let mut messages = MessageStats::default();
    let mut frames = FrameStats::default();
    let mut acks = sh.config.ack.then(AckStats::default);
    for o in outcomes {
        connections.failed_attempts += o.failed_attempts;
        connections.never_connected += u64::from(!o.ever_connected);
        connections.reconnects += o.reconnects;
        connections.clean_closes += u64::from(o.clean_close);
        connections.closed_by_us += u64::from(o.closed_by_us);
        report::add_map(&mut connections.unexpected_closes, &o.unexpected_closes);
        report::add_map(&mut connections.connect_errors, &o.connect_errors);
        messages.sent += o.sent;
        messages.delivered += o.delivered;
        messages.missed_sends += o.missed_sends;
        messages.late_sends += o.late_sends;
        messages.heartbeats += o.heartbeats;
        messages.latency_reports += o.latency_reports;
        messages.other_frames += o.other_frames;
        acks::add_refused(&mut messages.server_errors, &o.server_errors);
        report::add_samples(&mut messages.server_error_samples, &o.server_error_samples);
        frames.add(&o.frames);
        if let (Some(into), Some(a)) = (&mut acks, &o.acks) {
            into.add(&a.stats);
        }
    }
    // Slots whose task never reported (aborted at the finish timeout) never connected as far
    // as the report can tell.
    connections.never_connected += u64::from(sh.plan.slots()).saturating_sub(outcomes.len() as u64);
    (connections, messages, frames, acks)
}
