//! One simulated connection slot: connect (bound to a source address when asked), send on the
//! open-model schedule, receive and audit, heartbeat, report latency, reconnect with jittered
//! backoff. A task per slot connects and upgrades, then hands the socket and the slot's state to
//! a connection loop (`driver.rs`), which calls the functions here for its timers and frames.
//! One owner at a time, so the per-message path takes no lock: latency samples go to a shared
//! histogram shard in batches.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::net::TcpSocket;
use tokio::time::Instant;

use super::acks::{AckWindow, Verdict};
use super::audit::{ReceiverAudit, SentCounts, Seen};
use super::driver::Handoff;
use super::frame::Outbox;
use super::report::{count_bounded, FrameStats};
use super::schedule::{write_join, write_stamped, Stamp, JOIN_ID, OFFLINE_SEQ};
use super::wire::{self, Incoming, Unrecognized};
use super::Shared;

/// Latency samples a connection buffers before recording them into its histogram shard: one
/// lock per 64 messages instead of one per message.
const LATENCY_BATCH: usize = 64;
/// A batch older than this is recorded anyway, so the live p99 is never more than this stale.
const LATENCY_BATCH_AGE: Duration = Duration::from_millis(500);
/// Smallest gap between two send wake-ups of one connection. Messages due in between go out in
/// one write; their lateness is measured (latency counts from the intended time).
const MIN_SEND_TICK: Duration = Duration::from_millis(2);
/// A send that starts this long after its intended time counts as late in the report (epoll
/// waits in whole milliseconds, so a loop wakes up to ~1 ms after a deadline: anything under
/// 5 ms is just the timer).
const LATE_SEND: Duration = Duration::from_millis(5);
/// How long we wait for the server to answer our close frame.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// First reconnect delay; doubled per failed attempt up to [`RECONNECT_MAX`], with ±50% jitter
/// so a drained node's clients do not come back as one wave.
const RECONNECT_MIN: Duration = Duration::from_millis(100);
/// Longest reconnect delay: long enough to spare a struggling node, short enough for a test run.
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// What a slot did, handed back when it ends.
#[derive(Debug, Default)]
pub(crate) struct SlotOutcome {
    pub slot: u32,
    pub sent_counts: SentCounts,
    pub audit: ReceiverAudit,
    pub sent: u64,
    pub delivered: u64,
    pub missed_sends: u64,
    pub late_sends: u64,
    pub heartbeats: u64,
    pub latency_reports: u64,
    pub sent_to_offline: u64,
    pub failed_attempts: u64,
    pub reconnects: u64,
    pub ever_connected: bool,
    pub closed_by_us: bool,
    pub clean_close: bool,
    pub unexpected_closes: BTreeMap<String, u64>,
    pub connect_errors: BTreeMap<String, u64>,
    pub server_errors: BTreeMap<String, u64>,
    pub server_error_samples: BTreeMap<String, String>,
    pub other_frames: u64,
    pub frames: FrameStats,
    /// With `--ack`.
    pub acks: Option<AckWindow>,
}

/// How a connection ended.
pub(crate) enum End {
    /// We closed it (end of run).
    Ours { clean: bool },
    /// The server or the network did.
    Unexpected(String),
}

/// Per-slot state that lives across reconnects.
pub(crate) struct Slot {
    out: SlotOutcome,
    user: u32,
    rng: SmallRng,
    /// Next intended send; None until traffic starts or when not sending.
    next_send: Option<Instant>,
    interval: Duration,
    send_end: Instant,
    next_heartbeat: Instant,
    next_report: Option<Instant>,
    last_send_wake: Instant,
    connected_since: Instant,
    batch: Vec<u64>,
    batch_since: Instant,
    /// Latency since the last `latency_report`, for its mean.
    report_sum_us: u64,
    report_n: u64,
    /// Frames of type `chat_message` (see `on_data`).
    chat_frames: u64,
    /// `--resume`: the highest history offset delivered to this connection, and its epoch.
    resume_from: Option<(u64, String)>,
}

impl Slot {
    fn new(sh: &Shared, slot: u32) -> Box<Slot> {
        let now = Instant::now();
        let cfg = &sh.config;
        let rate = cfg.rate_per_connection();
        let mut rng = SmallRng::from_rng(&mut rand::rng());
        let hb_phase = cfg.heartbeat.mul_f64(rng.random::<f64>());
        Box::new(Slot {
            out: SlotOutcome { slot, acks: cfg.ack.then(AckWindow::new), ..SlotOutcome::default() },
            user: sh.plan.user_of(slot),
            rng,
            next_send: None,
            // Validated: a rate > 0 is within config::MIN_RATE..=MAX_RATE.
            interval: if rate > 0.0 { Duration::from_secs_f64(1.0 / rate) } else { Duration::ZERO },
            send_end: now,
            next_heartbeat: now + hb_phase,
            next_report: None,
            last_send_wake: now,
            connected_since: now,
            // Allocated on the first delivery: an idle connection does not pay for it.
            batch: Vec::new(),
            batch_since: now,
            report_sum_us: 0,
            report_n: 0,
            chat_frames: 0,
            resume_from: None,
        })
    }
}

pub(crate) async fn run_slot(sh: Arc<Shared>, slot: u32) -> SlotOutcome {
    let mut s = Slot::new(&sh, slot);
    let mut first = true;
    let mut backoff = RECONNECT_MIN;
    loop {
        if sh.close.is_cancelled() {
            break;
        }
        let attempt = tokio::select! {
            // Boxed: the handshake's state is large and short-lived; inline, it would size every
            // slot's task for the whole run (~2 KiB of RSS per idle connection).
            r = Box::pin(connect(&sh, slot, s.out.failed_attempts + s.out.reconnects, s.resume_from.as_ref())) => Some(r),
            _ = sh.close.cancelled() => None,
        };
        if first {
            first = false;
            sh.first_attempts.fetch_add(1, Relaxed);
        }
        let Some(attempt) = attempt else { break };
        match attempt {
            Ok((stream, early)) => {
                backoff = RECONNECT_MIN;
                let ours;
                (s, ours) = connected(&sh, s, stream, early).await;
                if ours {
                    break;
                }
            }
            Err(why) => {
                *s.out.connect_errors.entry(why).or_default() += 1;
                sh.live.count_error("connect");
                s.out.failed_attempts += 1;
                sh.live.errors.fetch_add(1, Relaxed);
            }
        }
        if !sh.config.reconnect || sh.close.is_cancelled() {
            break;
        }
        let delay = backoff.mul_f64(s.rng.random_range(0.5..1.5));
        backoff = (backoff * 2).min(RECONNECT_MAX);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = sh.close.cancelled() => break,
        }
        s.out.reconnects += 1;
        sh.live.reconnects.fetch_add(1, Relaxed);
    }
    flush_batch(&sh, &mut s);
    if s.chat_frames > 0 {
        count_bounded(&mut s.out.frames.by_type, "chat_message", s.chat_frames);
    }
    s.out
}

/// Hands one live connection to its loop and counts how it ended; true when the run closed it
/// (no retry).
async fn connected(sh: &Shared, mut s: Box<Slot>, stream: std::net::TcpStream, early: Vec<u8>) -> (Box<Slot>, bool) {
    let slot = s.out.slot;
    s.out.ever_connected = true;
    s.connected_since = Instant::now();
    // A room member is online once its join is acked (`on_data`).
    if !sh.plan.rooms_mode() {
        sh.online[slot as usize].store(true, Relaxed);
    }
    let up = sh.live.connected.fetch_add(1, Relaxed) + 1;
    sh.live.peak.fetch_max(up, Relaxed);
    let (done, ended) = tokio::sync::oneshot::channel();
    sh.loops.hand_over(slot, Handoff { stream, early, slot: s, done });
    let ended = ended.await;
    sh.online[slot as usize].store(false, Relaxed);
    sh.live.connected.fetch_sub(1, Relaxed);
    let Ok((mut s, end)) = ended else {
        // The loop is gone (it ended or panicked) with this slot's state.
        let mut s = Slot::new(sh, slot);
        s.out.ever_connected = true;
        return (s, true);
    };
    flush_batch(sh, &mut s);
    if let Some(a) = &mut s.out.acks {
        let n = a.connection_closed(matches!(end, End::Ours { .. }));
        sh.live.acks_waiting.fetch_sub(n, Relaxed);
    }
    let ours = match end {
        End::Ours { clean } => {
            s.out.closed_by_us = true;
            s.out.clean_close = clean;
            true
        }
        End::Unexpected(why) => {
            sh.live.count_error("close");
            *s.out.unexpected_closes.entry(why).or_default() += 1;
            sh.live.errors.fetch_add(1, Relaxed);
            false
        }
    };
    (s, ours)
}

/// `retry` counts earlier attempts: each retry moves to the next target, as a real client
/// behind a load balancer would land anywhere (a drained node's users move to the others).
/// `resume` adds `since` and `epoch` to the URL (`--resume`).
async fn connect(sh: &Shared, slot: u32, retry: u64, resume: Option<&(u64, String)>) -> Result<(std::net::TcpStream, Vec<u8>), String> {
    let target = ((sh.plan.target_of(slot) as u64 + retry) % sh.plan.targets as u64) as usize;
    let addr = sh.addrs[target];
    let started = Instant::now();
    let work = async {
        let sock = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }.map_err(|e| format!("socket: {e}"))?;
        if !sh.config.source_ips.is_empty() {
            let ip = sh.config.source_ips[slot as usize % sh.config.source_ips.len()];
            sock.bind(SocketAddr::new(ip, 0)).map_err(|e| format!("bind {ip}: {e}"))?;
        }
        let mut stream = sock.connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
        // Closed only at the end of the run, and the run waits for its slots first.
        let _turn = sh.handshakes.acquire().await.map_err(|_| "closed".to_string())?;
        // Small frames: Nagle plus delayed ACKs would add tens of ms to every message.
        let _ = stream.set_nodelay(true);
        let since = resume.map(|(offset, _)| offset.to_string());
        let extra: Vec<(&str, &str)> = match (resume, &since) {
            (Some((_, epoch)), Some(since)) => vec![("since", since.as_str()), ("epoch", epoch.as_str())],
            _ => Vec::new(),
        };
        let url = super::config::connection_url(&sh.bases[target], &sh.plan.names[sh.plan.user_of(slot) as usize], &extra);
        let early = super::frame::handshake(&mut stream, &url).await?;
        // Still non-blocking: the loop registers it with its own epoll.
        let stream = stream.into_std().map_err(|e| format!("socket: {e}"))?;
        Ok::<_, String>((stream, early))
    };
    let done = tokio::time::timeout(sh.config.connect_timeout, work).await.map_err(|_| "timeout".to_string())??;
    let us = started.elapsed().as_micros() as u64;
    sh.live.connect_hist.lock().unwrap_or_else(|p| p.into_inner()).saturating_record(us.max(1));
    Ok(done)
}

/// A connection just handed to its loop: a room member asks to join its room.
pub(crate) fn on_open(sh: &Shared, s: &mut Slot, out: &mut Outbox) {
    if sh.plan.rooms_mode() {
        let room = &sh.plan.room_names_json[sh.plan.room_of(s.user) as usize];
        out.text(&write_join(room));
    }
}

pub(crate) fn start_traffic(sh: &Shared, s: &mut Slot) {
    let Some(&start) = sh.traffic_start.get() else { return };
    // Sized once for the peers this run can reach, so the tables do not grow (and fault in
    // fresh pages) while traffic runs.
    let sends = sh.config.max_sends_per_connection();
    s.out.sent_counts.prepare(sh.plan.audiences(), sends);
    s.out.audit.pairs.prepare(sh.bounds.slots, sends);
    s.send_end = start + sh.config.duration;
    if !s.interval.is_zero() {
        // A random phase spreads the connections' sends evenly over each interval.
        s.next_send = Some(start + s.interval.mul_f64(s.rng.random::<f64>()));
    }
    if !sh.config.latency_report.is_zero() {
        s.next_report = Some(start + sh.config.latency_report.mul_f64(0.5 + s.rng.random::<f64>() * 0.5));
    }
}

/// When the loop should next call [`on_timer`] for this slot.
pub(crate) fn next_wake(s: &Slot) -> Instant {
    let mut at = s.next_heartbeat;
    if let Some(n) = s.next_send {
        if n < s.send_end {
            at = at.min(n.max(s.last_send_wake + MIN_SEND_TICK));
        }
    }
    if let Some(r) = s.next_report {
        at = at.min(r);
    }
    if !s.batch.is_empty() {
        at = at.min(s.batch_since + LATENCY_BATCH_AGE);
    }
    at
}

/// Writes into `out` what is due by `now`: messages, a heartbeat, a latency report.
pub(crate) fn on_timer(sh: &Shared, s: &mut Slot, out: &mut Outbox, now: Instant) {
    send_due(sh, s, out, now);
    if s.next_heartbeat <= now {
        out.text(r#"{"type":"heartbeat"}"#);
        s.out.heartbeats += 1;
        while s.next_heartbeat <= now {
            s.next_heartbeat += sh.config.heartbeat;
        }
    }
    if let Some(r) = s.next_report.filter(|&r| r <= now) {
        if s.report_n > 0 {
            let ms = s.report_sum_us as f64 / s.report_n as f64 / 1000.0;
            out.scratch.clear();
            // Infallible: writing to a String.
            let _ = write!(out.scratch, r#"{{"type":"latency_report","payload":{ms:.3}}}"#);
            out.text_from_scratch();
            s.out.latency_reports += 1;
            s.report_sum_us = 0;
            s.report_n = 0;
        }
        let mut next = r;
        while next <= now {
            next += sh.config.latency_report;
        }
        s.next_report = Some(next);
    }
    if !s.batch.is_empty() && now.duration_since(s.batch_since) >= LATENCY_BATCH_AGE {
        flush_batch(sh, s);
    }
}

/// Writes every chat message due by `now` into `out` (one write for all of them).
fn send_due(sh: &Shared, s: &mut Slot, out: &mut Outbox, now: Instant) {
    let Some(mut next) = s.next_send.filter(|&n| n <= now && n < s.send_end) else { return };
    s.last_send_wake = now;
    let (mut sent, mut owed) = (0u32, 0u64);
    while next <= now && next < s.send_end {
        let not_member = sh.plan.rooms_mode() && !sh.online[s.out.slot as usize].load(Relaxed);
        if next < s.connected_since || not_member {
            // This user was offline then (or not yet in its room): a real client would not have
            // sent it.
            s.out.missed_sends += 1;
        } else {
            let (to, seq, up) = pick_and_count(sh, s);
            owed += u64::from(up);
            if now.duration_since(next) > LATE_SEND {
                s.out.late_sends += 1;
            }
            let id = s.out.acks.as_mut().map(|a| a.send(to, seq, now));
            let intended = next.duration_since(sh.epoch).as_nanos() as u64;
            let audience = sh.plan.audience(to);
            let stamp = Stamp { sender_slot: s.out.slot, seq, intended_ns: intended, padding: &sh.padding };
            write_stamped(&mut out.scratch, audience.message_type(), audience, stamp, id);
            out.text_from_scratch();
            sent += 1;
        }
        next += s.interval;
    }
    s.next_send = Some(next);
    s.out.sent += u64::from(sent);
    sh.live.sent.fetch_add(u64::from(sent), Relaxed);
    sh.live.expected.fetch_add(owed, Relaxed);
    if s.out.acks.is_some() {
        sh.live.acks_waiting.fetch_add(u64::from(sent), Relaxed);
    }
}

/// Picks a receiver and its audit sequence; returns (receiver, seq, its connections up). A
/// receiver with every connection down gets [`OFFLINE_SEQ`], kept out of the audit. With rooms
/// the receiver is the sender's room, and the connections up its other joined members.
fn pick_and_count(sh: &Shared, s: &mut Slot) -> (u32, i64, u32) {
    let plan = &sh.plan;
    if plan.rooms_mode() {
        let room = plan.room_of(s.user);
        let except = Some(s.out.slot);
        return count_sequence(sh, &mut s.out.sent_counts, &mut s.out.sent_to_offline, room, plan.room_slots(room), except);
    }
    let to = plan.pick(s.user, &mut s.rng);
    if sh.config.resume {
        // History replays what a resuming connection missed: every connection is owed it.
        let n = s.out.sent_counts.entry(to);
        *n += 1;
        return (to, i64::from(*n - 1), plan.connections_per_user);
    }
    count_sequence(sh, &mut s.out.sent_counts, &mut s.out.sent_to_offline, to, plan.audience_slots(to), None)
}

/// The next sequence for audience `to` (a user, or a room) whose connections are `slots`, less
/// the sender's own (`except`); every connection down is owed it as missed while offline.
pub(crate) fn count_sequence(
    sh: &Shared,
    counts: &mut SentCounts,
    sent_to_offline: &mut u64,
    to: u32,
    slots: std::ops::Range<u32>,
    except: Option<u32>,
) -> (u32, i64, u32) {
    let slots = slots.filter(|&k| Some(k) != except);
    let (mut all, mut up) = (0u32, 0u32);
    for k in slots.clone() {
        all += 1;
        up += u32::from(sh.online[k as usize].load(Relaxed));
    }
    if up == 0 {
        *sent_to_offline += 1;
        return (to, OFFLINE_SEQ, 0);
    }
    if up < all {
        for k in slots.filter(|&k| !sh.online[k as usize].load(Relaxed)) {
            sh.missed[k as usize].fetch_add(1, Relaxed);
        }
    }
    let n = counts.entry(to);
    *n += 1;
    (to, i64::from(*n - 1), up)
}

/// Handles one incoming message (a text or binary frame, or a fragmented one put together).
/// Its bytes are read as UTF-8 JSON either way; what is not UTF-8 is counted, not fatal.
pub(crate) fn on_data(sh: &Shared, s: &mut Slot, is_text: bool, payload: &[u8]) {
    s.out.frames.received += 1;
    let Ok(text) = std::str::from_utf8(payload) else {
        unrecognized(s, Unrecognized::NotUtf8, if is_text { "(text, not UTF-8)" } else { "(binary)" });
        return;
    };
    match wire::parse(text) {
        Incoming::Stamped { kind, sender_slot, seq, intended_ns, offset, epoch } => {
            if let (true, Some(offset)) = (sh.config.resume, offset) {
                note_offset(s, offset, epoch.as_deref());
            }
            // The common case without a map lookup: folded into `by_type` at the end.
            if kind == "chat_message" {
                s.chat_frames += 1;
            } else {
                count_bounded(&mut s.out.frames.by_type, &kind, 1);
            }
            on_stamp(sh, s, sender_slot, seq, intended_ns, text);
        }
        Incoming::Ack { id, online } => {
            count_bounded(&mut s.out.frames.by_type, "ack", 1);
            if sh.plan.rooms_mode() && id == Some(i128::from(JOIN_ID)) {
                sh.online[s.out.slot as usize].store(true, Relaxed);
            } else if let Some(id) = id {
                on_answer(sh, s, id, Verdict::Ack { online }, text);
            }
        }
        Incoming::Error { id, code, message } => {
            count_bounded(&mut s.out.frames.by_type, "error", 1);
            if !s.out.server_error_samples.contains_key(code.as_ref()) && s.out.server_error_samples.len() < super::report::MAX_CODES {
                s.out.server_error_samples.insert(code.to_string(), message.chars().take(200).collect());
            }
            count_bounded(&mut s.out.server_errors, &code, 1);
            sh.live.errors.fetch_add(1, Relaxed);
            sh.live.count_error(&code);
            if let Some(id) = id.filter(|&id| !sh.plan.rooms_mode() || id != i128::from(JOIN_ID)) {
                on_answer(sh, s, id, Verdict::Refused(&code), text);
            }
        }
        Incoming::Recovery { .. } => count_bounded(&mut s.out.frames.by_type, "recovery", 1),
        Incoming::Other { kind } => {
            count_bounded(&mut s.out.frames.by_type, &kind, 1);
            s.out.other_frames += 1;
        }
        Incoming::Unrecognized(why, kind) => {
            if let Some(kind) = kind {
                count_bounded(&mut s.out.frames.by_type, &kind, 1);
            }
            unrecognized(s, why, text);
        }
    }
}

/// Keeps the highest offset seen (and its epoch) to resume from. A new epoch replaces the old
/// one whatever its offsets: the server lost that history and numbers afresh.
fn note_offset(s: &mut Slot, offset: u64, epoch: Option<&str>) {
    let epoch = epoch.unwrap_or_default();
    match &mut s.resume_from {
        Some((o, e)) if e == epoch => *o = (*o).max(offset),
        _ => s.resume_from = Some((offset, epoch.chars().take(MAX_EPOCH).collect())),
    }
}

/// Longest epoch kept (a server's epoch is an id, not a document).
const MAX_EPOCH: usize = 256;

fn unrecognized(s: &mut Slot, why: Unrecognized, text: &str) {
    let f = &mut s.out.frames;
    *f.unrecognized.entry(why.as_str().to_string()).or_default() += 1;
    f.samples.entry(why.as_str().to_string()).or_insert_with(|| wire::sample(text));
}

/// A delivered message: bounds-checked, audited, timed.
fn on_stamp(sh: &Shared, s: &mut Slot, sender_slot: i128, seq: i128, intended_ns: i128, text: &str) {
    if sh.plan.rooms_mode() && sender_slot == i128::from(s.out.slot) {
        // A room message is never for the connection that sent it.
        s.out.audit.echoed += 1;
        return;
    }
    let now = sh.epoch.elapsed().as_nanos() as u64;
    // A send time in the future (or not a time) is no stamp of ours either.
    let Some(intended) = u64::try_from(intended_ns).ok().filter(|&t| t <= now) else {
        s.out.audit.foreign += 1;
        unrecognized(s, Unrecognized::Foreign, text);
        return;
    };
    match s.out.audit.record(sh.bounds, sender_slot, seq) {
        Seen::Foreign => {
            unrecognized(s, Unrecognized::Foreign, text);
            return;
        }
        Seen::InOrder | Seen::Reordered => {
            sh.live.audited.fetch_add(1, Relaxed);
        }
        Seen::Duplicate | Seen::Offline => {}
    }
    s.out.frames.stamped += 1;
    let us = ((now - intended) / 1000).max(1);
    s.out.delivered += 1;
    sh.live.delivered.fetch_add(1, Relaxed);
    if s.batch.is_empty() {
        s.batch_since = Instant::now();
    }
    s.batch.push(us);
    s.report_sum_us += us;
    s.report_n += 1;
    if s.batch.len() >= LATENCY_BATCH {
        flush_batch(sh, s);
    }
}

/// An `ack` or an `error` with an id.
fn on_answer(sh: &Shared, s: &mut Slot, id: i128, verdict: Verdict<'_>, text: &str) {
    let Some(acks) = &mut s.out.acks else { return };
    let online = matches!(verdict, Verdict::Ack { online: Some(true) });
    let refused = matches!(verdict, Verdict::Refused(_));
    match acks.answer(id, verdict, Instant::now()) {
        Some(took) => {
            sh.live.acks_waiting.fetch_sub(1, Relaxed);
            let counter = if refused {
                &sh.live.refused
            } else if online {
                &sh.live.acked_online
            } else {
                &sh.live.acked_offline
            };
            counter.fetch_add(1, Relaxed);
            let us = (took.as_micros() as u64).max(1);
            sh.live.record_ack(s.out.slot, us);
        }
        None => unrecognized(s, Unrecognized::UnknownId, text),
    }
}

fn flush_batch(sh: &Shared, s: &mut Slot) {
    if s.batch.is_empty() {
        return;
    }
    let shard = &sh.live.latency[s.out.slot as usize % sh.live.latency.len()];
    let mut g = shard.lock().unwrap_or_else(|p| p.into_inner());
    for &us in &s.batch {
        g.total.saturating_record(us);
        g.interval.saturating_record(us.min(super::WINDOW_MAX_US));
    }
    drop(g);
    s.batch.clear();
}
