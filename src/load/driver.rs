//! The generator's connection loops: each is one thread that runs every live connection handed
//! to it with one epoll (mio) and one timer heap. A message costs a write on the way out and a
//! share of a read on the way in, and no task wake-up, timer registration or allocation.
//! Connecting, the upgrade and reconnect backoff stay on the tokio runtime (`client.rs`), which
//! hands each connection over once upgraded and gets its slot back when it ends.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{ErrorKind, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::client::{self, End, Slot};
use super::frame::{self, FrameError, Header, Outbox};
use super::{Shared, MAX_FRAME, MAX_WRITE_BUFFER};

/// Bytes read from a socket at once, into the loop's one buffer. A connection keeps its own
/// copy only of a frame cut in two by a read.
const READ_CHUNK: usize = 64 * 1024;
/// Longest a loop sleeps without looking at the run's `go` and `close` signals (it is also woken
/// when they change; this bounds a missed wake-up).
const MAX_IDLE_WAIT: Duration = Duration::from_millis(20);
/// Reads of one socket per turn of the loop (4 MiB at most): a server that floods one
/// connection cannot hold up the others, or the end of the run. A socket left unread is
/// read again next turn (epoll is edge-triggered and would not say it again).
const READS_PER_TURN: usize = 64;
/// Readiness events taken from epoll per wait.
const EVENTS: usize = 1024;
/// Readiness events handled between two looks at the timers: reading a backlog of deliveries
/// makes no send late.
const TIMERS_EVERY: usize = 32;
const WAKER: Token = Token(usize::MAX);
/// RFC 6455's code for a close frame that carries none (reported as such, never sent).
const NO_STATUS: u16 = 1005;

/// A connection handed to a loop, and where its slot goes back when it ends.
pub(crate) struct Handoff {
    pub stream: std::net::TcpStream,
    /// Bytes the server sent right after its upgrade answer.
    pub early: Vec<u8>,
    pub slot: Box<Slot>,
    pub done: oneshot::Sender<(Box<Slot>, End)>,
}

/// The handles of every loop: where connections are handed over.
pub(crate) struct Loops {
    handles: Vec<(Sender<Handoff>, Waker)>,
    stop: AtomicBool,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

/// One loop's half, moved into its thread by [`Loops::start`].
pub(crate) struct Parts {
    poll: Poll,
    rx: Receiver<Handoff>,
}

impl Loops {
    /// `n` loops (at least one), not yet running.
    pub fn new(n: usize) -> std::io::Result<(Loops, Vec<Parts>)> {
        let (mut handles, mut parts) = (Vec::new(), Vec::new());
        for _ in 0..n.max(1) {
            let poll = Poll::new()?;
            let waker = Waker::new(poll.registry(), WAKER)?;
            // Unbounded, yet bounded by the run: one message per live connection of this loop.
            let (tx, rx) = std::sync::mpsc::channel();
            handles.push((tx, waker));
            parts.push(Parts { poll, rx });
        }
        Ok((Loops { handles, stop: AtomicBool::new(false), threads: Mutex::new(Vec::new()) }, parts))
    }

    /// Starts a thread per loop.
    pub fn start(sh: &Arc<Shared>, parts: Vec<Parts>) -> std::io::Result<()> {
        let mut threads = super::lock(&sh.loops.threads);
        for (i, p) in parts.into_iter().enumerate() {
            let sh = sh.clone();
            let t = std::thread::Builder::new().name(format!("wsctl-load-{i}")).spawn(move || Loop::new(sh, p).run())?;
            threads.push(t);
        }
        Ok(())
    }

    /// Hands a connection to loop `slot % loops`. A loop that is gone drops it, and its slot
    /// task then sees the connection end.
    pub fn hand_over(&self, slot: u32, h: Handoff) {
        let (tx, waker) = &self.handles[slot as usize % self.handles.len()];
        if tx.send(h).is_ok() {
            let _ = waker.wake();
        }
    }

    /// Tells the loops to end (they close what they still hold), without waiting.
    fn signal_stop(&self) {
        self.stop.store(true, Relaxed);
        self.wake_all();
    }

    /// Makes every loop look at the run's signals now.
    pub fn wake_all(&self) {
        self.handles.iter().for_each(|(_, w)| drop(w.wake()));
    }

    /// Ends the loops once every slot task has finished, and waits for their threads.
    pub fn stop(&self) {
        self.signal_stop();
        let threads = std::mem::take(&mut *super::lock(&self.threads));
        threads.into_iter().for_each(|t| drop(t.join()));
    }
}

/// Stops the loops when dropped: a run that ends early (its future dropped, or an error) leaves
/// no thread behind.
pub(crate) struct StopOnDrop(pub Arc<Shared>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.loops.signal_stop();
    }
}

/// A live connection inside a loop.
struct Conn {
    stream: TcpStream,
    slot: Box<Slot>,
    done: Option<oneshot::Sender<(Box<Slot>, End)>>,
    /// The start of a frame that a read cut in two.
    partial: Vec<u8>,
    /// A fragmented message being put together: its opcode and bytes so far.
    fragment: Option<(u8, Vec<u8>)>,
    /// Bytes the socket did not take yet (bounded by [`MAX_WRITE_BUFFER`]).
    unsent: Vec<u8>,
    /// When its timer entry is due; entries with another `generation` are stale.
    wake_at: Instant,
    generation: u32,
    traffic_started: bool,
    /// Set once we sent our close frame: until when we wait for the answer.
    closing: Option<Instant>,
}

struct Loop {
    sh: Arc<Shared>,
    poll: Poll,
    rx: Receiver<Handoff>,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    timers: BinaryHeap<Reverse<(Instant, usize, u32)>>,
    read_buf: Box<[u8]>,
    /// Connections whose socket still had bytes after [`READS_PER_TURN`] reads.
    unread: Vec<usize>,
    out: Outbox,
    go_seen: bool,
    close_seen: bool,
}

impl Loop {
    fn new(sh: Arc<Shared>, p: Parts) -> Loop {
        let seed = sh.epoch.elapsed().as_nanos() as u64 ^ 0x9e37_79b9_7f4a_7c15;
        Loop {
            sh,
            poll: p.poll,
            rx: p.rx,
            conns: Vec::new(),
            free: Vec::new(),
            timers: BinaryHeap::new(),
            read_buf: vec![0; READ_CHUNK].into_boxed_slice(),
            unread: Vec::new(),
            out: Outbox::new(seed),
            go_seen: false,
            close_seen: false,
        }
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(EVENTS);
        loop {
            if self.sh.loops.stop.load(Relaxed) {
                break;
            }
            let now = Instant::now();
            let mut wait = self.timers.peek().map_or(MAX_IDLE_WAIT, |Reverse((at, ..))| at.saturating_duration_since(now)).min(MAX_IDLE_WAIT);
            if !self.unread.is_empty() {
                wait = Duration::ZERO;
            }
            if let Err(e) = self.poll.poll(&mut events, Some(wait)) {
                if e.kind() != ErrorKind::Interrupted {
                    break;
                }
            }
            // Sends first: their lateness is what the run measures; a read waits in its socket.
            self.run_timers();
            for (n, ev) in events.iter().enumerate() {
                match ev.token() {
                    WAKER => {}
                    Token(i) => self.on_ready(i, ev.is_readable() || ev.is_read_closed() || ev.is_error(), ev.is_writable()),
                }
                // A backlog of deliveries (after a stall of the server) does not hold sends up.
                if n % TIMERS_EVERY == TIMERS_EVERY - 1 {
                    self.run_timers();
                }
            }
            for i in std::mem::take(&mut self.unread) {
                self.read(i);
            }
            self.take_handoffs();
            self.check_signals();
            self.run_timers();
        }
        // Every slot task has ended (or was aborted): whatever is left just closes.
        for i in 0..self.conns.len() {
            self.end(i, End::Ours { clean: false });
        }
    }

    fn take_handoffs(&mut self) {
        while let Ok(h) = self.rx.try_recv() {
            self.adopt(h);
        }
    }

    /// Registers a new connection, sends its join, and reads what came with the upgrade.
    fn adopt(&mut self, h: Handoff) {
        let i = self.free.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.conns.len() - 1
        });
        let mut stream = TcpStream::from_std(h.stream);
        if let Err(e) = self.poll.registry().register(&mut stream, Token(i), Interest::READABLE | Interest::WRITABLE) {
            let _ = h.done.send((h.slot, End::Unexpected(format!("io:{:?}", e.kind()))));
            self.free.push(i);
            return;
        }
        let now = Instant::now();
        let conn = Conn {
            stream,
            slot: h.slot,
            done: Some(h.done),
            partial: Vec::new(),
            fragment: None,
            unsent: Vec::new(),
            wake_at: now,
            generation: 0,
            traffic_started: false,
            closing: None,
        };
        self.conns[i] = Some(conn);
        let c = self.conns[i].as_mut().expect("just set");
        client::on_open(&self.sh, &mut c.slot, &mut self.out);
        if self.go_seen {
            c.traffic_started = true;
            client::start_traffic(&self.sh, &mut c.slot);
        }
        if self.close_seen {
            self.begin_close(i);
        } else {
            self.flush(i);
        }
        if !h.early.is_empty() {
            self.on_bytes(i, &h.early);
        }
        self.schedule(i, true);
    }

    fn check_signals(&mut self) {
        if !self.go_seen && self.sh.go.is_cancelled() {
            self.go_seen = true;
            for i in 0..self.conns.len() {
                let Some(c) = self.conns[i].as_mut() else { continue };
                if !c.traffic_started {
                    c.traffic_started = true;
                    client::start_traffic(&self.sh, &mut c.slot);
                    self.schedule(i, true);
                }
            }
        }
        if !self.close_seen && self.sh.close.is_cancelled() {
            self.close_seen = true;
            for i in 0..self.conns.len() {
                if self.conns[i].is_some() {
                    self.begin_close(i);
                }
            }
        }
    }

    /// Puts connection `i`'s next wake-up on the heap when it moved earlier (or `force`).
    fn schedule(&mut self, i: usize, force: bool) {
        let Some(c) = self.conns[i].as_mut() else { return };
        let at = match c.closing {
            Some(deadline) => deadline,
            None => client::next_wake(&c.slot),
        };
        if force || at < c.wake_at {
            c.generation = c.generation.wrapping_add(1);
            c.wake_at = at;
            self.timers.push(Reverse((at, i, c.generation)));
        }
    }

    fn run_timers(&mut self) {
        let now = Instant::now();
        while let Some(&Reverse((at, i, generation))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(c) = self.conns[i].as_mut() else { continue };
            if c.generation != generation {
                continue;
            }
            if c.closing.is_some() {
                self.end(i, End::Ours { clean: false });
                continue;
            }
            client::on_timer(&self.sh, &mut c.slot, &mut self.out, now);
            self.flush(i);
            self.schedule(i, true);
        }
    }

    fn on_ready(&mut self, i: usize, readable: bool, writable: bool) {
        if writable && self.conns.get(i).is_some_and(Option::is_some) {
            self.flush(i);
        }
        if readable {
            self.read(i);
        }
    }

    /// Reads until the socket is drained (mio is edge-triggered: a read shorter than the
    /// buffer means it was), or [`READS_PER_TURN`] times.
    fn read(&mut self, i: usize) {
        let mut buf = std::mem::take(&mut self.read_buf);
        let mut reads = 0;
        while let Some(c) = self.conns.get_mut(i).and_then(Option::as_mut) {
            if reads == READS_PER_TURN {
                self.unread.push(i);
                break;
            }
            reads += 1;
            let n = match c.stream.read(&mut buf) {
                Ok(0) => {
                    let end = if c.closing.is_some() { End::Ours { clean: false } } else { End::Unexpected("eof".into()) };
                    self.end(i, end);
                    break;
                }
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.end(i, End::Unexpected(format!("io:{:?}", e.kind())));
                    break;
                }
            };
            self.on_bytes(i, &buf[..n]);
            if n < buf.len() {
                break;
            }
        }
        self.read_buf = buf;
    }

    /// Handles the whole frames in `bytes` (after any kept partial frame); keeps the rest.
    fn on_bytes(&mut self, i: usize, bytes: &[u8]) {
        let Some(c) = self.conns[i].as_mut() else { return };
        let mut partial = std::mem::take(&mut c.partial);
        let result = if partial.is_empty() {
            self.frames(i, bytes).map(|used| partial.extend_from_slice(&bytes[used..]))
        } else {
            partial.extend_from_slice(bytes);
            self.frames(i, &partial).map(|used| drop(partial.drain(..used)))
        };
        match result {
            Ok(()) => {
                let Some(c) = self.conns[i].as_mut() else { return };
                // Emptied, it is dropped: one large frame does not leave its size behind.
                c.partial = if partial.is_empty() { Vec::new() } else { partial };
                self.flush(i);
                self.schedule(i, false);
            }
            Err(end) => self.end(i, end),
        }
    }

    /// Handles each whole frame at the start of `bytes`; returns the bytes used.
    fn frames(&mut self, i: usize, bytes: &[u8]) -> Result<usize, End> {
        let mut at = 0;
        loop {
            let h = match frame::parse_header(&bytes[at..], MAX_FRAME) {
                Ok(Some(h)) => h,
                Ok(None) => return Ok(at),
                Err(e) => return Err(frame_error(e)),
            };
            let end = at + h.header_len + h.payload_len;
            if end > bytes.len() {
                return Ok(at);
            }
            self.on_frame(i, h, &bytes[at + h.header_len..end])?;
            at = end;
            if self.conns[i].is_none() {
                return Ok(at);
            }
        }
    }

    fn on_frame(&mut self, i: usize, h: Header, payload: &[u8]) -> Result<(), End> {
        let c = self.conns[i].as_mut().expect("caller checked");
        match h.opcode {
            frame::OP_TEXT | frame::OP_BINARY if c.fragment.is_some() => Err(frame_error(FrameError::Protocol("new message inside a fragmented one"))),
            frame::OP_TEXT | frame::OP_BINARY if !h.fin => {
                c.fragment = Some((h.opcode, payload.to_vec()));
                Ok(())
            }
            frame::OP_TEXT | frame::OP_BINARY => {
                if c.closing.is_none() {
                    client::on_data(&self.sh, &mut c.slot, h.opcode == frame::OP_TEXT, payload);
                }
                Ok(())
            }
            frame::OP_CONTINUATION => self.on_continuation(i, h.fin, payload),
            frame::OP_PING => {
                if c.closing.is_none() {
                    self.out.frame(frame::OP_PONG, payload);
                }
                Ok(())
            }
            frame::OP_CLOSE => Err(self.on_close(i, payload)),
            _ => Ok(()),
        }
    }

    fn on_continuation(&mut self, i: usize, fin: bool, payload: &[u8]) -> Result<(), End> {
        let c = self.conns[i].as_mut().expect("caller checked");
        let Some((_, so_far)) = c.fragment.as_mut() else {
            return Err(frame_error(FrameError::Protocol("continuation without a message")));
        };
        if so_far.len() + payload.len() > MAX_FRAME {
            return Err(frame_error(FrameError::TooLarge));
        }
        so_far.extend_from_slice(payload);
        if fin {
            let (opcode, whole) = c.fragment.take().expect("checked above");
            if c.closing.is_none() {
                client::on_data(&self.sh, &mut c.slot, opcode == frame::OP_TEXT, &whole);
            }
        }
        Ok(())
    }

    /// The server's close frame: the answer to ours, or its own (answered with its code).
    fn on_close(&mut self, i: usize, payload: &[u8]) -> End {
        let c = self.conns[i].as_mut().expect("caller checked");
        if c.closing.is_some() {
            return End::Ours { clean: true };
        }
        let code = match payload {
            [] => NO_STATUS,
            [a, b, ..] => u16::from_be_bytes([*a, *b]),
            [_] => return frame_error(FrameError::Protocol("close frame of one byte")),
        };
        if code != NO_STATUS {
            self.out.close(code);
        } else {
            self.out.frame(frame::OP_CLOSE, &[]);
        }
        self.flush(i);
        End::Unexpected(code.to_string())
    }

    /// Sends our close frame; the connection ends on the answer or at [`client::CLOSE_TIMEOUT`].
    fn begin_close(&mut self, i: usize) {
        let Some(c) = self.conns[i].as_mut() else { return };
        if c.closing.is_some() {
            return;
        }
        c.closing = Some(Instant::now() + client::CLOSE_TIMEOUT);
        self.out.close(crate::protocol::close::NORMAL);
        self.flush(i);
        self.schedule(i, true);
    }

    /// Writes what `out` holds for connection `i`, and what it could not take before.
    fn flush(&mut self, i: usize) {
        let Some(c) = self.conns[i].as_mut() else {
            self.out.bytes.clear();
            return;
        };
        if !c.unsent.is_empty() || !self.out.bytes.is_empty() {
            let result = if c.unsent.is_empty() {
                write_some(&mut c.stream, &self.out.bytes).map(|n| c.unsent.extend_from_slice(&self.out.bytes[n..]))
            } else {
                c.unsent.extend_from_slice(&self.out.bytes);
                write_some(&mut c.stream, &c.unsent).map(|n| drop(c.unsent.drain(..n)))
            };
            self.out.bytes.clear();
            let end = match result {
                Err(e) => Some(End::Unexpected(format!("io:{:?}", e.kind()))),
                Ok(()) if c.unsent.len() > MAX_WRITE_BUFFER => Some(End::Unexpected("capacity".into())),
                Ok(()) => None,
            };
            if let Some(end) = end {
                self.end(i, end);
            }
        }
    }

    /// Ends connection `i`: deregisters and closes its socket, and hands its slot back.
    fn end(&mut self, i: usize, end: End) {
        let Some(mut c) = self.conns.get_mut(i).and_then(Option::take) else { return };
        let _ = self.poll.registry().deregister(&mut c.stream);
        if let Some(done) = c.done.take() {
            let _ = done.send((c.slot, end));
        }
        self.free.push(i);
    }
}

/// Writes as much of `bytes` as the socket takes now; returns how much that was.
fn write_some(stream: &mut TcpStream, bytes: &[u8]) -> std::io::Result<usize> {
    let mut at = 0;
    while at < bytes.len() {
        match stream.write(&bytes[at..]) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => at += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(at)
}

fn frame_error(e: FrameError) -> End {
    End::Unexpected(e.as_str().to_string())
}
