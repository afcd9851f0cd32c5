//! One simulated connection slot: connect (bound to a source address when asked), send on the
//! open-model schedule, receive and audit, heartbeat, report latency, reconnect with jittered
//! backoff, close cleanly. One task per slot owns its socket, its schedule and its audit, so the
//! per-message path takes no lock: latency samples go to a shared histogram shard in batches.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::acks::{AckWindow, Verdict};
use super::audit::{ReceiverAudit, SentCounts, Seen};
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
/// A send that starts this long after its intended time counts as late in the report (tokio
/// timers fire up to ~1 ms after their deadline, so anything under 5 ms is just the timer).
const LATE_SEND: Duration = Duration::from_millis(5);
/// How long we wait for the server to answer our close frame.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// First reconnect delay; doubled per failed attempt up to [`RECONNECT_MAX`], with ±50% jitter
/// so a drained node's clients do not come back as one wave.
const RECONNECT_MIN: Duration = Duration::from_millis(100);
/// Longest reconnect delay: long enough to spare a struggling node, short enough for a test run.
const RECONNECT_MAX: Duration = Duration::from_secs(5);

type Ws = WebSocketStream<TcpStream>;

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
enum End {
    /// We closed it (end of run).
    Ours { clean: bool },
    /// The server or the network did.
    Unexpected(String),
}

/// Per-slot state that lives across reconnects.
struct Slot {
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
    /// Frames of type `chat_message` (see `on_message`).
    chat_frames: u64,
    /// `--resume`: the highest history offset delivered to this connection, and its epoch.
    resume_from: Option<(u64, String)>,
}

impl Slot {
    fn new(sh: &Shared, slot: u32) -> Slot {
        let now = Instant::now();
        let cfg = &sh.config;
        let rate = cfg.rate_per_connection();
        let mut rng = SmallRng::from_rng(&mut rand::rng());
        let hb_phase = cfg.heartbeat.mul_f64(rng.random::<f64>());
        Slot {
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
        }
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
            Ok(mut ws) => {
                backoff = RECONNECT_MIN;
                if connected(&mut ws, &sh, &mut s).await {
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

/// Runs one live connection and counts how it ended; true when the run closed it (no retry).
async fn connected(ws: &mut Ws, sh: &Shared, s: &mut Slot) -> bool {
    let slot = s.out.slot as usize;
    s.out.ever_connected = true;
    s.connected_since = Instant::now();
    // A room member is online once its join is acked (`on_message`).
    if !sh.plan.rooms_mode() {
        sh.online[slot].store(true, Relaxed);
    }
    let up = sh.live.connected.fetch_add(1, Relaxed) + 1;
    sh.live.peak.fetch_max(up, Relaxed);
    let end = drive(ws, sh, s).await;
    sh.online[slot].store(false, Relaxed);
    sh.live.connected.fetch_sub(1, Relaxed);
    flush_batch(sh, s);
    if let Some(a) = &mut s.out.acks {
        let n = a.connection_closed(matches!(end, End::Ours { .. }));
        sh.live.acks_waiting.fetch_sub(n, Relaxed);
    }
    match end {
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
    }
}

/// `retry` counts earlier attempts: each retry moves to the next target, as a real client
/// behind a load balancer would land anywhere (a drained node's users move to the others).
/// `resume` adds `since` and `epoch` to the URL (`--resume`).
async fn connect(sh: &Shared, slot: u32, retry: u64, resume: Option<&(u64, String)>) -> Result<Ws, String> {
    let target = ((sh.plan.target_of(slot) as u64 + retry) % sh.plan.targets as u64) as usize;
    let addr = sh.addrs[target];
    let started = Instant::now();
    let work = async {
        let sock = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }.map_err(|e| format!("socket: {e}"))?;
        if !sh.config.source_ips.is_empty() {
            let ip = sh.config.source_ips[slot as usize % sh.config.source_ips.len()];
            sock.bind(SocketAddr::new(ip, 0)).map_err(|e| format!("bind {ip}: {e}"))?;
        }
        let stream = sock.connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
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
        let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(sh.ws_config))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        Ok::<Ws, String>(ws)
    };
    let ws = tokio::time::timeout(sh.config.connect_timeout, work).await.map_err(|_| "timeout".to_string())??;
    let us = started.elapsed().as_micros() as u64;
    sh.live.connect_hist.lock().unwrap_or_else(|p| p.into_inner()).saturating_record(us.max(1));
    Ok(ws)
}

/// Runs one live connection until the run closes it or it breaks.
async fn drive(ws: &mut Ws, sh: &Shared, s: &mut Slot) -> End {
    // Run-wide signals arrive through this slot's own Notify: polling a shared token's future
    // in every loop turn would take the token's one waiter lock per message, from every thread.
    let notify = &sh.control[s.out.slot as usize];
    let control = notify.notified();
    tokio::pin!(control);
    let mut traffic_known = false;
    let sleep = tokio::time::sleep_until(Instant::now());
    tokio::pin!(sleep);
    let mut check = true;
    if sh.plan.rooms_mode() {
        let room = &sh.plan.room_names_json[sh.plan.room_of(s.user) as usize];
        if let Err(e) = ws.send(Message::text(write_join(room))).await {
            return End::Unexpected(classify(&e));
        }
    }
    loop {
        if check {
            check = false;
            if sh.close.is_cancelled() {
                return close_clean(ws).await;
            }
            if !traffic_known && sh.go.is_cancelled() {
                traffic_known = true;
                start_traffic(sh, s);
            }
            sleep.as_mut().reset(next_wake(sh, s));
        }
        tokio::select! {
            biased;
            _ = &mut control => {
                control.set(notify.notified());
                check = true;
            }
            msg = ws.next() => match msg {
                Some(Ok(m)) => {
                    if let Some(code) = on_message(sh, s, m) {
                        return End::Unexpected(code.to_string());
                    }
                }
                Some(Err(e)) => return End::Unexpected(classify(&e)),
                None => return End::Unexpected("eof".to_string()),
            },
            _ = &mut sleep => {
                if let Err(e) = on_timer(ws, sh, s).await {
                    return End::Unexpected(classify(&e));
                }
                sleep.as_mut().reset(next_wake(sh, s));
            }
        }
    }
}

fn classify(e: &tokio_tungstenite::tungstenite::Error) -> String {
    use tokio_tungstenite::tungstenite::Error as E;
    match e {
        E::ConnectionClosed | E::AlreadyClosed => "eof".into(),
        E::Io(io) => format!("io:{:?}", io.kind()),
        E::Protocol(_) => "protocol".into(),
        E::Capacity(_) => "capacity".into(),
        _ => "error".into(),
    }
}

fn start_traffic(sh: &Shared, s: &mut Slot) {
    let Some(&start) = sh.traffic_start.get() else { return };
    s.send_end = start + sh.config.duration;
    if !s.interval.is_zero() {
        // A random phase spreads the connections' sends evenly over each interval.
        s.next_send = Some(start + s.interval.mul_f64(s.rng.random::<f64>()));
    }
    if !sh.config.latency_report.is_zero() {
        s.next_report = Some(start + sh.config.latency_report.mul_f64(0.5 + s.rng.random::<f64>() * 0.5));
    }
}

fn next_wake(sh: &Shared, s: &Slot) -> Instant {
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
    let _ = sh;
    at
}

async fn on_timer(ws: &mut Ws, sh: &Shared, s: &mut Slot) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    let now = Instant::now();
    let mut fed = send_due(ws, sh, s, now).await?;
    if s.next_heartbeat <= now {
        ws.feed(Message::text(r#"{"type":"heartbeat"}"#)).await?;
        s.out.heartbeats += 1;
        fed += 1;
        while s.next_heartbeat <= now {
            s.next_heartbeat += sh.config.heartbeat;
        }
    }
    if let Some(r) = s.next_report.filter(|&r| r <= now) {
        if s.report_n > 0 {
            let ms = s.report_sum_us as f64 / s.report_n as f64 / 1000.0;
            let text = format!(r#"{{"type":"latency_report","payload":{ms:.3}}}"#);
            ws.feed(Message::text(text)).await?;
            s.out.latency_reports += 1;
            fed += 1;
            s.report_sum_us = 0;
            s.report_n = 0;
        }
        let mut next = r;
        while next <= now {
            next += sh.config.latency_report;
        }
        s.next_report = Some(next);
    }
    if fed > 0 {
        ws.flush().await?;
    }
    if !s.batch.is_empty() && now.duration_since(s.batch_since) >= LATENCY_BATCH_AGE {
        flush_batch(sh, s);
    }
    Ok(())
}

/// Feeds every chat message due by `now` (one write for all of them); returns how many.
async fn send_due(ws: &mut Ws, sh: &Shared, s: &mut Slot, now: Instant) -> Result<u32, tokio_tungstenite::tungstenite::Error> {
    let Some(mut next) = s.next_send.filter(|&n| n <= now && n < s.send_end) else { return Ok(0) };
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
            let mut frame = String::with_capacity(sh.frame_capacity);
            let audience = sh.plan.audience(to);
            let stamp = Stamp { sender_slot: s.out.slot, seq, intended_ns: intended, padding: &sh.padding };
            write_stamped(&mut frame, audience.message_type(), audience, stamp, id);
            ws.feed(Message::text(frame)).await?;
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
    Ok(sent)
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
        let n = s.out.sent_counts.entry(to).or_insert(0);
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
    let n = counts.entry(to).or_insert(0);
    *n += 1;
    (to, i64::from(*n - 1), up)
}

/// Handles one incoming frame; returns the close code if the server closed.
fn on_message(sh: &Shared, s: &mut Slot, m: Message) -> Option<u16> {
    let text: &str = match &m {
        Message::Text(t) => t.as_str(),
        Message::Binary(b) => match std::str::from_utf8(b) {
            Ok(t) => t,
            Err(_) => {
                s.out.frames.received += 1;
                unrecognized(s, Unrecognized::NotUtf8, "(binary)");
                return None;
            }
        },
        Message::Close(f) => return Some(f.as_ref().map_or(1005, |f| u16::from(f.code))),
        _ => return None,
    };
    s.out.frames.received += 1;
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
    None
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

async fn close_clean(ws: &mut Ws) -> End {
    let frame = CloseFrame { code: CloseCode::Normal, reason: "".into() };
    if ws.close(Some(frame)).await.is_err() {
        return End::Ours { clean: false };
    }
    let answered = tokio::time::timeout(CLOSE_TIMEOUT, async {
        while let Some(m) = ws.next().await {
            match m {
                Ok(Message::Close(_)) => return true,
                Ok(_) => continue,
                Err(_) => return false,
            }
        }
        // tungstenite ends the stream once the close handshake completes.
        true
    })
    .await
    .unwrap_or(false);
    End::Ours { clean: answered }
}
