//! A connection's writer: drains the bounded send queue in batches (one flush per batch), pings,
//! closes idle connections, and writes the close frame when the connection ends. A resumed
//! connection's replay is written first ([`super::resume`]).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::stream::SplitSink;
use futures_util::SinkExt;
use tokio::sync::mpsc;
use tracing::debug;

use super::resume::{self, Replay};
use super::{Activity, CLOSE_TIMEOUT, SETTLE_TIMEOUT};
use crate::hub::{CloseReason, Frame, Queued, SessionCtl};

/// Frames written per flush at most: amortizes syscalls without starving the ping timer.
const WRITE_BATCH: usize = 64;
/// A write (batch, ping or close) that takes longer than this means the peer stopped reading
/// and its TCP window is full; the connection is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The sending half of a connection's socket.
pub(super) type Sink = SplitSink<WebSocket, Message>;

/// Writes queued frames in batches and pings; on close, flushes the queue when the reason says so
/// and sends the close frame.
/// Also the idle check: at each ping tick, a connection silent for longer than the idle timeout
/// is closed (so it closes between `idle_timeout` and `idle_timeout + ping_interval`). The tick
/// comes before the queue in the select: a connection with constant outbound traffic is still
/// pinged and checked.
pub(super) async fn write_loop(
    mut sink: Sink,
    mut rx: mpsc::Receiver<Queued>,
    ctl: Arc<SessionCtl>,
    seen: Arc<Activity>,
    limits: crate::server::Limits,
    replay: Option<Replay>,
) {
    // Grown by the first batch, not before: an idle connection should cost nothing here.
    let mut batch = Vec::new();
    // The last offset replayed, while live frames may still repeat it.
    let mut seam = None;
    if let Some(replay) = replay {
        match replay.write(&mut sink, &ctl).await {
            Ok(s) => seam = s,
            Err(()) => {
                ctl.close_with(CloseReason::PeerBroke);
                return;
            }
        }
    }
    let ping_every = limits.ping_interval;
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let closed = ctl.closed();
    tokio::pin!(closed);
    loop {
        tokio::select! {
            biased;
            _ = &mut closed => break,
            _ = ping.tick() => {
                if seen.silent_for() > limits.idle_timeout {
                    debug!(idle = ?limits.idle_timeout, "idle timeout");
                    ctl.close_with(CloseReason::Idle);
                    break;
                }
                if tokio::time::timeout(WRITE_TIMEOUT, sink.send(Message::Ping(Default::default()))).await.map_or(true, |r| r.is_err()) {
                    ctl.close_with(CloseReason::PeerBroke);
                    return;
                }
            }
            n = rx.recv_many(&mut batch, WRITE_BATCH) => {
                if n == 0 {
                    break;
                }
                if let Some(last) = seam {
                    seam = resume::skip_replayed(&mut batch, last, &ctl);
                }
                if write_batch(&mut sink, &mut batch, &ctl).await.is_err() {
                    ctl.close_with(CloseReason::PeerBroke);
                    return;
                }
            }
        }
    }
    finish(&mut sink, &mut rx, &mut batch, &ctl, &seen).await;
}

/// The end of a connection: on drain, keeps writing until the reader has answered its
/// publishes; flushes the queue when the reason says so; sends the close frame (or completes the
/// peer's closing handshake).
async fn finish(sink: &mut Sink, rx: &mut mpsc::Receiver<Queued>, batch: &mut Vec<Queued>, ctl: &SessionCtl, seen: &Activity) {
    let Some(reason) = ctl.reason() else { return };
    match reason.close_frame() {
        Some((code, why)) => {
            // On drain the reader first answers its publishes still in flight: keep writing
            // until it is done (bounded), then flush what is queued.
            if reason == CloseReason::Draining && !write_until(sink, rx, batch, ctl, &seen.reader_done).await {
                return;
            }
            // Nothing already queued is lost on drain; an error frame queued just before a
            // protocol close explains it.
            if reason.flushes_queue() {
                while let Ok(f) = rx.try_recv() {
                    batch.push(f);
                    if batch.len() == WRITE_BATCH && write_batch(sink, batch, ctl).await.is_err() {
                        return;
                    }
                }
                if write_batch(sink, batch, ctl).await.is_err() {
                    return;
                }
            }
            send_close(sink, code, why).await;
        }
        // The peer closed: tungstenite queued the echo of its close frame; flush it out so the
        // closing handshake completes (RFC 6455 5.5.1).
        None => {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.close()).await;
        }
    }
}

/// Writes queued frames until `done` fires (or [`SETTLE_TIMEOUT`] passes). False if the socket
/// broke.
async fn write_until(
    sink: &mut Sink,
    rx: &mut mpsc::Receiver<Queued>,
    batch: &mut Vec<Queued>,
    ctl: &SessionCtl,
    done: &tokio_util::sync::CancellationToken,
) -> bool {
    let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
    loop {
        tokio::select! {
            _ = done.cancelled() => return true,
            _ = tokio::time::sleep_until(deadline) => return true,
            n = rx.recv_many(batch, WRITE_BATCH) => {
                if n == 0 {
                    return true;
                }
                if write_batch(sink, batch, ctl).await.is_err() {
                    return false;
                }
            }
        }
    }
}

async fn write_batch(sink: &mut Sink, batch: &mut Vec<Queued>, ctl: &SessionCtl) -> Result<(), ()> {
    if batch.is_empty() {
        return Ok(());
    }
    write_frames(sink, batch.drain(..).map(|q| {
        ctl.dequeued(q.frame.len());
        q.frame
    }))
    .await
}

/// Writes `frames` and flushes, bounded by [`WRITE_TIMEOUT`].
pub(super) async fn write_frames(sink: &mut Sink, frames: impl Iterator<Item = Frame>) -> Result<(), ()> {
    let write = async {
        for frame in frames {
            sink.feed(Message::Text(frame)).await.map_err(|_| ())?;
        }
        sink.flush().await.map_err(|_| ())
    };
    tokio::time::timeout(WRITE_TIMEOUT, write).await.map_err(|_| ())?
}

async fn send_close(sink: &mut Sink, code: u16, reason: &'static str) {
    let frame = Message::Close(Some(CloseFrame { code, reason: Utf8Bytes::from_static(reason) }));
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        let _ = sink.send(frame).await;
        let _ = sink.close().await;
    })
    .await;
}

