//! `wsctl load` speaks WebSocket itself (src/load/frame.rs, driver.rs). A raw stand-in server in
//! this file does the upgrade and the framing by hand, so it can write what a library would
//! not: messages in fragments with pings between them, its bytes a few at a time, binary and text
//! frames that are not UTF-8, its own close code, a masked frame, a frame that claims 2^40 bytes.
//! The stand-in routes chat messages (ring pattern) like a node of the original protocol; in two
//! modes it floods every connection for ever, or never reads.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use wsctl::load::{Diagnosis, LoadConfig, Pattern, Rate, Report};

use support::load::run;

/// How the stand-in delivers a chat message to its receiver.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    /// In three fragments, a ping after the first and an unasked pong after the second, written
    /// [`CHUNK`] bytes at a time; each connection also gets one binary and one text frame that
    /// are not UTF-8.
    Fragmented,
    /// A connection's first message is answered with a close frame with code 4001.
    CloseWith4001,
    /// ... with a masked frame (servers must not mask).
    Masked,
    /// ... with a frame header that claims 2^40 bytes.
    Huge,
    /// Every connection gets small frames as fast as the stand-in can write them, for ever.
    Flood,
    /// The stand-in never reads what a connection sends.
    Deaf,
}

/// Bytes per write in `Fragmented` mode: frame headers and payloads arrive cut anywhere.
const CHUNK: usize = 5;

#[derive(Default)]
struct Stats {
    relayed: AtomicU64,
    pings: AtomicU64,
    /// Pongs whose payload matched a ping sent on that connection.
    pongs_matched: AtomicU64,
    /// Pings not answered yet, by the user they were sent to.
    unanswered: Mutex<HashMap<String, Vec<Vec<u8>>>>,
    /// Close codes the clients sent us, by code.
    closes: Mutex<HashMap<u16, u64>>,
}

type Users = Arc<Mutex<HashMap<String, mpsc::UnboundedSender<Vec<u8>>>>>;

/// A server frame: final, unmasked.
fn frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![if fin { 0x80 | opcode } else { opcode }];
    match payload.len() {
        n if n < 126 => f.push(n as u8),
        n if n <= 0xffff => {
            f.push(126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(payload);
    f
}

async fn serve(mode: Mode) -> (SocketAddr, Arc<Stats>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stats, users) = (Arc::new(Stats::default()), Users::default());
    let st = stats.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(connection(stream, mode, users.clone(), st.clone()));
        }
    });
    (addr, stats)
}

/// The upgrade by hand; returns the user id.
async fn upgrade(reader: &mut BufReader<OwnedReadHalf>) -> (String, String) {
    let (mut user, mut key, mut line) = (String::new(), String::new(), String::new());
    loop {
        line.clear();
        reader.read_line(&mut line).await.unwrap();
        if let Some(target) = line.strip_prefix("GET ") {
            let query = target.split(' ').next().unwrap().split_once('?').map(|(_, q)| q).unwrap_or_default();
            user = url::form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "userId").unwrap().1.into_owned();
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("sec-websocket-key") {
                key = value.trim().to_string();
            }
        }
        if line == "\r\n" {
            break;
        }
    }
    let answer = format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n", derive_accept_key(key.as_bytes()));
    (user, answer)
}

async fn connection(stream: TcpStream, mode: Mode, users: Users, stats: Arc<Stats>) {
    stream.set_nodelay(true).unwrap();
    let (r, mut w) = stream.into_split();
    let mut reader = BufReader::new(r);
    let (user, answer) = upgrade(&mut reader).await;
    w.write_all(answer.as_bytes()).await.unwrap();
    if mode == Mode::Deaf {
        // Holds the socket open and reads nothing, for as long as the test runs.
        let _hold = (reader, w);
        return std::future::pending().await;
    }
    let (tx, rx) = mpsc::unbounded_channel::<Vec<u8>>();
    if mode == Mode::Fragmented {
        tx.send(frame(0x2, true, &[0xff, 0xfe, 0xfd])).unwrap();
        tx.send(frame(0x1, true, &[b'{', 0xc3, 0x28, b'}'])).unwrap();
    }
    users.lock().unwrap().insert(user.clone(), tx.clone());
    if mode == Mode::Flood {
        tokio::spawn(flood(w, rx));
    } else {
        tokio::spawn(write_out(w, rx, mode));
    }
    let (mut delivered, mut sent) = (0u64, 0u64);
    while let Some((opcode, payload)) = read_client_frame(&mut reader).await {
        match opcode {
            0x1 => {
                let v: Value = serde_json::from_slice(&payload).unwrap();
                if v["type"] != "chat_message" {
                    continue;
                }
                sent += 1;
                if let (Some(fault), 1) = (fault(mode), sent) {
                    // Answered on the sender's own connection: every connection gets it once.
                    let _ = tx.send(fault);
                    continue;
                }
                let to = v["receiverID"].as_str().unwrap().to_string();
                let Some(out) = users.lock().unwrap().get(&to).cloned() else { continue };
                let envelope = json!({"type": "chat_message", "senderId": user, "payload": v["payload"]}).to_string();
                stats.relayed.fetch_add(1, SeqCst);
                delivered += 1;
                let ping = format!("p{user}-{delivered}").into_bytes();
                // Logged first: the receiver's pong comes in on its own connection.
                stats.unanswered.lock().unwrap().entry(to).or_default().push(ping.clone());
                let _ = out.send(deliver(mode, envelope.as_bytes(), &ping, &stats));
            }
            0xA => {
                let mut unanswered = stats.unanswered.lock().unwrap();
                let mine = unanswered.entry(user.clone()).or_default();
                if let Some(at) = mine.iter().position(|p| *p == payload) {
                    mine.remove(at);
                    stats.pongs_matched.fetch_add(1, SeqCst);
                }
            }
            0x8 => {
                let code = payload.get(..2).map_or(1005, |b| u16::from_be_bytes([b[0], b[1]]));
                *stats.closes.lock().unwrap().entry(code).or_default() += 1;
                let _ = tx.send(frame(0x8, true, &payload[..payload.len().min(2)]));
                break;
            }
            _ => {}
        }
    }
    users.lock().unwrap().remove(&user);
}

/// Writes what the connection is sent, [`CHUNK`] bytes at a time in `Fragmented` mode.
async fn write_out(mut w: tokio::net::tcp::OwnedWriteHalf, mut rx: mpsc::UnboundedReceiver<Vec<u8>>, mode: Mode) {
    while let Some(bytes) = rx.recv().await {
        let chunk = if mode == Mode::Fragmented { CHUNK } else { bytes.len().max(1) };
        for part in bytes.chunks(chunk) {
            if w.write_all(part).await.is_err() {
                return;
            }
            tokio::task::yield_now().await;
        }
    }
}

/// Writes 1 MiB of small frames at a time until the client goes away, with what the
/// connection is sent in between.
async fn flood(mut w: tokio::net::tcp::OwnedWriteHalf, mut rx: mpsc::UnboundedReceiver<Vec<u8>>) {
    let noise = frame(0x1, true, br#"{"type":"noise"}"#).repeat(1 << 20 >> 4);
    loop {
        while let Ok(bytes) = rx.try_recv() {
            if w.write_all(&bytes).await.is_err() {
                return;
            }
        }
        if w.write_all(&noise).await.is_err() {
            return;
        }
    }
}

/// The bytes that deliver `text` in `mode`.
fn deliver(mode: Mode, text: &[u8], ping: &[u8], stats: &Stats) -> Vec<u8> {
    if mode != Mode::Fragmented {
        return frame(0x1, true, text);
    }
    let (a, rest) = text.split_at(text.len() / 3);
    let (b, c) = rest.split_at(rest.len() / 2);
    stats.pings.fetch_add(1, SeqCst);
    [frame(0x1, false, a), frame(0x9, true, ping), frame(0x0, false, b), frame(0xA, true, b"unasked"), frame(0x0, true, c)].concat()
}

/// What a connection gets in answer to its first message in the fault modes.
fn fault(mode: Mode) -> Option<Vec<u8>> {
    match mode {
        Mode::Fragmented | Mode::Flood | Mode::Deaf => None,
        Mode::CloseWith4001 => Some(frame(0x8, true, &[&4001u16.to_be_bytes()[..], b"bye"].concat())),
        Mode::Masked => {
            let mut f = frame(0x1, true, br#"{"type":"chat_message","payload":[0,0,0,""]}"#);
            f[1] |= 0x80;
            f.splice(2..2, [0u8; 4]);
            Some(f)
        }
        Mode::Huge => Some([0x82, 127, 0, 0, 1, 0, 0, 0, 0, 0].to_vec()),
    }
}

/// One client frame, unmasked; None at the end of the stream.
async fn read_client_frame(r: &mut BufReader<OwnedReadHalf>) -> Option<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    r.read_exact(&mut h).await.ok()?;
    assert_eq!(h[1] & 0x80, 0x80, "client frames are masked");
    assert_eq!(h[0] & 0x80, 0x80, "the generator writes final frames only");
    let len = match h[1] & 0x7f {
        126 => u64::from(r.read_u16().await.ok()?),
        127 => r.read_u64().await.ok()?,
        n => u64::from(n),
    };
    let mut key = [0u8; 4];
    r.read_exact(&mut key).await.ok()?;
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload).await.ok()?;
    payload.iter_mut().enumerate().for_each(|(i, b)| *b ^= key[i & 3]);
    Some((h[0] & 0x0f, payload))
}

fn config(addr: SocketAddr, clients: u32) -> LoadConfig {
    let mut c = LoadConfig::new(vec![format!("ws://{addr}/ws")]);
    c.clients = clients;
    c.rate = Rate::PerConnection(20.0);
    c.duration = Duration::from_millis(1500);
    c.drain = Duration::from_secs(2);
    c.latency_report = Duration::ZERO;
    c.pattern = Pattern::Ring;
    c.reconnect = false;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragments_pings_and_bytes_cut_anywhere_lose_nothing() {
    let (addr, stats) = serve(Mode::Fragmented).await;
    let mut c = config(addr, 6);
    // Frames of ~2 KB, so a frame spans many of the stand-in's 5-byte writes.
    c.payload_size = 2000;
    let r: Report = run(c).await;
    assert!(stats.relayed.load(SeqCst) > 50, "{}", stats.relayed.load(SeqCst));
    assert_eq!(r.diagnosis, Diagnosis::Measured);
    assert_eq!((r.audit.lost, r.audit.duplicated, r.audit.foreign), (0, 0, 0), "{:?} {:?}", r.audit, r.frames);
    assert_eq!(r.messages.delivered, r.messages.sent);
    // One binary and one text frame per connection; neither ends it.
    assert_eq!(r.frames.unrecognized.get("binary, not UTF-8"), Some(&12), "{:?}", r.frames);
    assert!(r.connections.unexpected_closes.is_empty(), "{:?}", r.connections);
    assert_eq!(r.connections.clean_closes, 6, "{:?}", r.connections);
    // Every ping was answered with its own payload before the close (frames are in order).
    assert_eq!(stats.pongs_matched.load(SeqCst), stats.pings.load(SeqCst));
    assert!(stats.unanswered.lock().unwrap().values().all(Vec::is_empty));
    assert_eq!(stats.closes.lock().unwrap().get(&1000), Some(&6));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_code_from_the_server_is_reported_and_echoed() {
    let (addr, stats) = serve(Mode::CloseWith4001).await;
    let r = run(config(addr, 4)).await;
    assert_eq!(r.connections.unexpected_closes.get("4001"), Some(&4), "{:?}", r.connections);
    assert_eq!(stats.closes.lock().unwrap().get(&4001), Some(&4), "the client answers with the server's code");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_masked_frame_and_a_huge_claim_break_the_connection_by_name() {
    for (mode, why) in [(Mode::Masked, "protocol"), (Mode::Huge, "capacity")] {
        let (addr, _) = serve(mode).await;
        let r = run(config(addr, 4)).await;
        assert_eq!(r.connections.unexpected_closes.get(why), Some(&4), "{mode:?}: {:?}", r.connections);
        assert_eq!(r.connections.unexpected_closes.len(), 1, "{mode:?}: {:?}", r.connections);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_floods_every_connection_cannot_hold_the_run() {
    let (addr, _) = serve(Mode::Flood).await;
    let c = config(addr, 2);
    // Sending 1.5 s, a drain of 2 s, a close handshake of at most 2 s: a loop stuck reading one
    // socket would never see the end of the run.
    let bound = c.duration + c.drain + Duration::from_secs(2) + Duration::from_secs(10);
    let started = std::time::Instant::now();
    let r = tokio::time::timeout(bound, run(c)).await.expect("the run ends despite the flood");
    assert!(r.frames.by_type.get("noise").copied().unwrap_or(0) > 10_000, "{:?}", r.frames.by_type);
    assert!(r.messages.sent > 0);
    eprintln!("flooded run took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_reads_breaks_the_connection_at_the_write_bound() {
    let (addr, _) = serve(Mode::Deaf).await;
    let mut c = config(addr, 2);
    // ~12 MB/s per connection: past the kernel's buffers, then past load::MAX_WRITE_BUFFER.
    c.rate = Rate::PerConnection(200.0);
    c.payload_size = 60 * 1024;
    let r = run(c).await;
    assert_eq!(r.connections.unexpected_closes.get("capacity"), Some(&2), "{:?}", r.connections);
}
