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

use super::audit::{ReceiverAudit, SentCounts, Seen};
use super::schedule::{read_stamp, write_chat, OFFLINE_SEQ};
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
    frame: String,
}

pub(crate) async fn run_slot(sh: Arc<Shared>, slot: u32) -> SlotOutcome {
    let now = Instant::now();
    let cfg = &sh.config;
    let rate = cfg.rate_per_connection();
    let mut rng = SmallRng::from_rng(&mut rand::rng());
    let hb_phase = cfg.heartbeat.mul_f64(rng.random::<f64>());
    let mut s = Slot {
        out: SlotOutcome { slot, ..SlotOutcome::default() },
        user: sh.plan.user_of(slot),
        rng,
        next_send: None,
        interval: if rate > 0.0 { Duration::from_secs_f64(1.0 / rate) } else { Duration::ZERO },
        send_end: now,
        next_heartbeat: now + hb_phase,
        next_report: None,
        last_send_wake: now,
        connected_since: now,
        batch: Vec::with_capacity(LATENCY_BATCH),
        batch_since: now,
        report_sum_us: 0,
        report_n: 0,
        frame: String::new(),
    };
    let mut first = true;
    let mut backoff = RECONNECT_MIN;
    loop {
        if sh.close.is_cancelled() {
            break;
        }
        let attempt = tokio::select! {
            r = connect(&sh, slot, s.out.failed_attempts + s.out.reconnects) => Some(r),
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
                s.out.ever_connected = true;
                s.connected_since = Instant::now();
                sh.online[slot as usize].store(true, Relaxed);
                let up = sh.live.connected.fetch_add(1, Relaxed) + 1;
                sh.live.peak.fetch_max(up, Relaxed);
                let end = drive(&mut ws, &sh, &mut s).await;
                sh.online[slot as usize].store(false, Relaxed);
                sh.live.connected.fetch_sub(1, Relaxed);
                flush_batch(&sh, &mut s);
                match end {
                    End::Ours { clean } => {
                        s.out.closed_by_us = true;
                        s.out.clean_close = clean;
                        break;
                    }
                    End::Unexpected(why) => {
                        *s.out.unexpected_closes.entry(why).or_default() += 1;
                        sh.live.errors.fetch_add(1, Relaxed);
                    }
                }
            }
            Err(why) => {
                *s.out.connect_errors.entry(why).or_default() += 1;
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
    s.out
}

/// `retry` counts earlier attempts: each retry moves to the next target, as a real client
/// behind a load balancer would land anywhere (a drained node's users move to the others).
async fn connect(sh: &Shared, slot: u32, retry: u64) -> Result<Ws, String> {
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
        // Small frames: Nagle plus delayed ACKs would add tens of ms to every message.
        let _ = stream.set_nodelay(true);
        let base = &sh.config.urls[target];
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}userId={}", sh.plan.names[sh.plan.user_of(slot) as usize]);
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
    let mut fed = 0u32;
    if let Some(mut next) = s.next_send {
        if next <= now && next < s.send_end {
            s.last_send_wake = now;
            let c = sh.plan.connections_per_user;
            let mut sent = 0u64;
            let mut owed = 0u64;
            while next <= now && next < s.send_end {
                if next < s.connected_since {
                    // This user was offline then: a real client would not have sent it.
                    s.out.missed_sends += 1;
                } else {
                    let to = sh.plan.pick(s.user, &mut s.rng);
                    let first = to * c;
                    let up = (first..first + c).filter(|&k| sh.online[k as usize].load(Relaxed)).count() as u32;
                    let seq = if up == 0 {
                        s.out.sent_to_offline += 1;
                        OFFLINE_SEQ
                    } else {
                        if up < c {
                            for k in first..first + c {
                                if !sh.online[k as usize].load(Relaxed) {
                                    sh.missed[k as usize].fetch_add(1, Relaxed);
                                }
                            }
                        }
                        owed += u64::from(up);
                        let n = s.out.sent_counts.entry(to).or_insert(0);
                        *n += 1;
                        i64::from(*n - 1)
                    };
                    if now.duration_since(next) > LATE_SEND {
                        s.out.late_sends += 1;
                    }
                    let intended = next.duration_since(sh.epoch).as_nanos() as u64;
                    write_chat(&mut s.frame, &sh.plan.names[to as usize], s.out.slot, seq, intended, &sh.padding);
                    ws.feed(Message::text(s.frame.as_str())).await?;
                    sent += 1;
                    fed += 1;
                }
                next += s.interval;
            }
            s.next_send = Some(next);
            s.out.sent += sent;
            sh.live.sent.fetch_add(sent, Relaxed);
            sh.live.expected.fetch_add(owed, Relaxed);
        }
    }
    if s.next_heartbeat <= now {
        ws.feed(Message::text(r#"{"type":"heartbeat"}"#)).await?;
        s.out.heartbeats += 1;
        fed += 1;
        while s.next_heartbeat <= now {
            s.next_heartbeat += sh.config.heartbeat;
        }
    }
    if let Some(r) = s.next_report {
        if r <= now {
            if s.report_n > 0 {
                let ms = s.report_sum_us as f64 / s.report_n as f64 / 1000.0;
                s.frame.clear();
                s.frame.push_str(&format!(r#"{{"type":"latency_report","payload":{ms:.3}}}"#));
                ws.feed(Message::text(s.frame.as_str())).await?;
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
    }
    if fed > 0 {
        ws.flush().await?;
    }
    if !s.batch.is_empty() && now.duration_since(s.batch_since) >= LATENCY_BATCH_AGE {
        flush_batch(sh, s);
    }
    Ok(())
}

/// Handles one incoming frame; returns the close code if the server closed.
fn on_message(sh: &Shared, s: &mut Slot, m: Message) -> Option<u16> {
    let text: &str = match &m {
        Message::Text(t) => t.as_str(),
        Message::Binary(b) => match std::str::from_utf8(b) {
            Ok(t) => t,
            Err(_) => {
                s.out.other_frames += 1;
                return None;
            }
        },
        Message::Close(f) => return Some(f.as_ref().map_or(1005, |f| u16::from(f.code))),
        _ => return None,
    };
    if let Some(stamp) = read_stamp(text) {
        let now = sh.epoch.elapsed().as_nanos() as u64;
        let us = (now.saturating_sub(stamp.intended_ns) / 1000).max(1);
        s.out.delivered += 1;
        sh.live.delivered.fetch_add(1, Relaxed);
        match s.out.audit.record(stamp.sender_slot, stamp.seq) {
            Seen::InOrder | Seen::Reordered => {
                sh.live.audited.fetch_add(1, Relaxed);
            }
            Seen::Duplicate | Seen::Offline => {}
        }
        if s.batch.is_empty() {
            s.batch_since = Instant::now();
        }
        s.batch.push(us);
        s.report_sum_us += us;
        s.report_n += 1;
        if s.batch.len() >= LATENCY_BATCH {
            flush_batch(sh, s);
        }
    } else if text.contains(r#""type":"error""#) {
        let v = serde_json::from_str::<serde_json::Value>(text).ok();
        let field = |k: &str| v.as_ref().and_then(|v| v.get(k)).and_then(|c| c.as_str()).map(str::to_string);
        let code = field("code").unwrap_or_else(|| "unknown".to_string());
        if !s.out.server_error_samples.contains_key(&code) {
            s.out.server_error_samples.insert(code.clone(), field("message").unwrap_or_default());
        }
        *s.out.server_errors.entry(code).or_default() += 1;
        sh.live.errors.fetch_add(1, Relaxed);
    } else if !text.contains(r#""type":"ack""#) {
        s.out.other_frames += 1;
    }
    None
}

fn flush_batch(sh: &Shared, s: &mut Slot) {
    if s.batch.is_empty() {
        return;
    }
    let shard = &sh.live.latency[s.out.slot as usize % sh.live.latency.len()];
    let mut g = shard.lock().unwrap_or_else(|p| p.into_inner());
    for &us in &s.batch {
        g.interval.saturating_record(us);
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
