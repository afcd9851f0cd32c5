//! `wsctl load` against servers that are not wsctl (issue 12): a small relay server in this
//! file routes chat messages between its users like a node of the original protocol, but writes
//! every envelope with another serializer (pretty-printed, Python's `json.dumps`, Go's
//! encoding/json, integral floats), answers ids like a node, or misbehaves on purpose (string
//! payloads, forged stamps). Plus ids with awkward characters against a real node, `--ack`
//! against a real node, and `load merge` / `load plot` / `--csv` through the binary.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use wsctl::load::{Diagnosis, Live, LoadConfig, Pattern, Rate};

use support::load::{run, FD_LIMIT};
use support::ws::{self, Outbox, Users};
use support::TestNode;

/// How the relay writes what it sends.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Style {
    /// Each message in the next of: pretty, Python, Go, integral floats.
    Mixed,
    /// The payload re-encoded as a JSON string (a server that stringifies payloads).
    StringPayload,
    /// Every message also delivered as a forged copy: sender slot and sequence out of bounds.
    Forged,
}

/// Python's `json.dumps` defaults: `", "` between items and `": "` after keys.
struct PythonFormatter;

impl serde_json::ser::Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W, first: bool) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }
    fn begin_object_key<W: ?Sized + std::io::Write>(&mut self, w: &mut W, first: bool) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }
    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }
}

fn python(v: &Value) -> String {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, PythonFormatter);
    serde::Serialize::serialize(v, &mut ser).unwrap();
    String::from_utf8(out).unwrap()
}

/// Go's encoding/json: struct field order, no spaces, `<`, `>`, `&` escaped in strings.
fn go(env: &Value) -> String {
    let mut out = String::from("{");
    for (i, k) in ["type", "payload", "receiverID", "senderId", "timestamp"].iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!("\"{k}\":{}", env[k]));
    }
    out.push('}');
    out.replace('<', "\\u003c").replace('>', "\\u003e").replace('&', "\\u0026")
}

/// The stamp's numbers written as floats (`7.0`), as a JavaScript or Python server may.
fn floats(env: &Value) -> String {
    let mut e = env.clone();
    if let Some(a) = e["payload"].as_array_mut() {
        for x in a.iter_mut().take(3) {
            if let Some(n) = x.as_i64() {
                *x = json!(n as f64);
            }
        }
    }
    python(&e)
}

fn write(style: Style, n: u64, env: &Value) -> Vec<String> {
    match style {
        Style::Mixed => vec![match n % 4 {
            0 => serde_json::to_string_pretty(env).unwrap(),
            1 => python(env),
            2 => go(env),
            _ => floats(env),
        }],
        Style::StringPayload => {
            let mut e = env.clone();
            e["payload"] = Value::String(env["payload"].to_string());
            vec![python(&e)]
        }
        Style::Forged => {
            let mut forged = env.clone();
            forged["payload"][0] = json!(1_000_000);
            let mut big_seq = env.clone();
            big_seq["payload"][1] = json!(4_000_000_000u64);
            // Forged copies first: when the genuine one arrives (and the drain may end), both were
            // read already on the same connection.
            vec![forged.to_string(), big_seq.to_string(), env.to_string()]
        }
    }
}

/// A relay server on a free port; `relayed` counts chat messages routed.
async fn relay(style: Style) -> (SocketAddr, Arc<AtomicU64>) {
    let users: Users = Arc::default();
    let relayed = Arc::new(AtomicU64::new(0));
    let r = relayed.clone();
    let addr = ws::serve(move |stream| relay_connection(stream, users.clone(), r.clone(), style)).await;
    (addr, relayed)
}

async fn relay_connection(stream: tokio::net::TcpStream, users: Users, relayed: Arc<AtomicU64>, style: Style) {
    let Some(mut conn) = ws::Conn::accept(stream).await else { return };
    let user = conn.join(&users);
    while let Some((to, v)) = conn.next_chat().await {
        let env = json!({"type": "chat_message", "payload": v["payload"], "receiverID": to, "senderId": user, "timestamp": "2026-01-02T03:04:05.123456789Z"});
        let n = relayed.fetch_add(1, Ordering::SeqCst);
        let target = users.lock().unwrap().get(&to).cloned();
        if let Some(target) = &target {
            for text in write(style, n, &env) {
                let _ = target.send(Message::text(text));
            }
        }
        if !v["id"].is_null() {
            // Python-style, with a field wsctl does not know.
            let ack = json!({"type": "ack", "id": v["id"], "online": target.is_some(), "stored": true});
            let _ = conn.outbox.send(Message::text(python(&ack)));
        }
    }
    users.lock().unwrap().remove(&user);
    conn.finish().await;
}

fn quick(addr: SocketAddr, clients: u32, rate: f64) -> LoadConfig {
    let mut c = LoadConfig::new(vec![format!("ws://{addr}/ws")]);
    c.clients = clients;
    c.rate = Rate::PerConnection(rate);
    c.duration = Duration::from_millis(1500);
    c.drain = Duration::from_secs(2);
    c.latency_report = Duration::ZERO;
    c.pattern = Pattern::Ring;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_writing_json_its_own_way_loses_nothing() {
    let (addr, relayed) = relay(Style::Mixed).await;
    let mut c = quick(addr, 10, 20.0);
    c.ack = true;
    let r = run(c).await;
    assert!(relayed.load(Ordering::SeqCst) > 100);
    assert_eq!(r.diagnosis, Diagnosis::Measured);
    assert_eq!((r.audit.lost, r.audit.duplicated, r.audit.foreign), (0, 0, 0), "{:?} {:?}", r.audit, r.frames);
    assert_eq!(r.messages.delivered, r.messages.sent);
    assert_eq!(r.frames.stamped, r.messages.sent);
    assert!(r.frames.unrecognized.is_empty(), "{:?}", r.frames);
    let a = r.acks.as_ref().expect("--ack figures");
    assert_eq!((a.sent_with_id, a.online, a.lost_after_ack, a.unanswered, a.unknown_ids), (r.messages.sent, r.messages.sent, 0, 0, 0), "{a:?}");
    assert_eq!(a.latency_ms.count, r.messages.sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_stamps_are_foreign_and_cost_nothing() {
    let (addr, _) = relay(Style::Forged).await;
    let r = run(quick(addr, 10, 20.0)).await;
    assert_eq!(r.diagnosis, Diagnosis::Measured);
    assert_eq!(r.audit.lost, 0, "{:?}", r.audit);
    assert_eq!(r.audit.foreign, 2 * r.messages.sent, "{:?}", r.audit);
    assert_eq!(r.messages.delivered, r.messages.sent, "forged copies are not deliveries");
    assert!(r.frames.samples.keys().any(|k| k.contains("foreign")), "{:?}", r.frames);
}

fn wsctl() -> tokio::process::Command {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_wsctl"))
}

async fn output(cmd: &mut tokio::process::Command) -> (i32, String, String) {
    let out = cmd.output().await.expect("wsctl runs");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_that_carry_no_stamp_are_reported_as_such_and_exit_3() {
    let (addr, relayed) = relay(Style::StringPayload).await;
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("run.json");
    let url = format!("ws://{addr}/ws");
    let args = ["load", "--quiet", "--url", &url, "--clients", "6", "--rate", "10", "--duration", "1s", "--drain", "500ms", "--pattern", "ring"];
    let (code, stdout, stderr) = output(wsctl().args(args).arg("--json").arg(&json)).await;
    assert!(relayed.load(Ordering::SeqCst) > 0);
    assert_eq!(code, 3, "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("NOT MEASURED") && stdout.contains("chat_message"), "{stdout}");
    assert!(stdout.contains("payload is not a [sender, seq, time, ...] stamp") && stdout.contains(r#"e.g. {"payload": "["#), "{stdout}");
    assert!(stderr.contains("none was a message of this run"), "{stderr}");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["diagnosis"], "nothing_recognized");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_ids_with_query_characters_arrive_intact() {
    let node = TestNode::start("load-prefix", None).await;
    let mut c = quick(node.addr, 10, 10.0);
    c.user_prefix = "a+b %&#/é=".to_string();
    c.pattern = Pattern::Random;
    let r = run(c).await;
    assert!(r.messages.sent > 50);
    // Each user connected as itself: every message reached its receiver, once.
    assert_eq!((r.messages.delivered, r.audit.lost, r.audit.duplicated), (r.messages.sent, 0, 0), "{:?}", r.audit);
    assert!(r.messages.server_errors.is_empty(), "{:?}", r.messages.server_error_samples);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_from_a_real_node_are_matched_and_timed() {
    let node = TestNode::start("load-ack", None).await;
    let mut c = quick(node.addr, 20, 20.0);
    c.ack = true;
    c.pattern = Pattern::Random;
    let r = run(c).await;
    let a = r.acks.as_ref().expect("--ack figures");
    assert!(r.messages.sent > 300);
    assert_eq!((a.sent_with_id, a.online, a.offline, a.unanswered, a.unanswered_closed), (r.messages.sent, r.messages.sent, 0, 0, 0), "{a:?}");
    assert_eq!((a.lost_after_ack, a.unknown_ids), (0, 0));
    assert!(a.refused.is_empty(), "{:?}", a.refused);
    assert_eq!(a.latency_ms.count, r.messages.sent);
    assert!(a.latency_ms.max_ms < 3_000.0, "{:?}", a.latency_ms);
    for (m, want) in [("lost_after_ack", 0.0), ("unanswered", 0.0)] {
        assert_eq!(r.metric(m), Some(want), "{m}");
    }
    assert!(r.metric("ack_p99").unwrap() > 0.0);
    // The per-second series adds up to the totals.
    assert_eq!(r.series.iter().map(|p| p.sent).sum::<u64>(), r.messages.sent);
    assert_eq!(r.series.iter().map(|p| p.delivered).sum::<u64>(), r.messages.delivered);
    assert_eq!(r.series.iter().map(|p| p.acked_online).sum::<u64>(), a.online);
    assert!(r.series.iter().any(|p| p.connections == 20 && p.p99_ms > 0.0), "{:?}", r.series);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_plot_and_a_bad_report_through_the_binary() {
    let node = TestNode::start("load-csv", None).await;
    let dir = tempfile::tempdir().unwrap();
    let (json, csv, svg) = (dir.path().join("run.json"), dir.path().join("run.csv"), dir.path().join("run.svg"));
    let url = format!("ws://{}/ws", node.addr);
    let args = ["load", "--quiet", "--url", &url, "--clients", "10", "--rate", "10", "--duration", "2s", "--drain", "1s"];
    let (code, stdout, stderr) = output(wsctl().args(args).arg("--json").arg(&json).arg("--csv").arg(&csv)).await;
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines = text.lines();
    assert!(lines.next().unwrap().starts_with("t_s,dt_s,sent,delivered,p50_ms,p99_ms,errors,"));
    let sent: u64 = lines.map(|l| l.split(',').nth(2).unwrap().parse::<u64>().unwrap()).sum();
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(sent, v["messages"]["sent"].as_u64().unwrap());

    let (code, _, stderr) = output(wsctl().args(["load", "plot"]).arg(&json).arg("-o").arg(&svg)).await;
    assert_eq!(code, 0, "{stderr}");
    let drawn = std::fs::read_to_string(&svg).unwrap();
    assert!(drawn.starts_with("<svg") && drawn.contains("delivered/s"));

    // A report whose histogram is not hex (here non-ASCII, which once panicked the merge).
    let mut bad = v.clone();
    bad["histograms"]["latency_us"] = json!("zé");
    let bad_path = dir.path().join("bad.json");
    std::fs::write(&bad_path, bad.to_string()).unwrap();
    let (code, _, stderr) = output(wsctl().args(["load", "merge"]).arg(&json).arg(&bad_path)).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("bad.json") && stderr.contains("histograms.latency_us") && stderr.contains("not hex"), "{stderr}");
    node.stop().await;
}

/// A server with history (spec Part B): every envelope to a user gets `offset` (per user,
/// increasing) and `epoch`; `since`/`epoch` on connect replays the kept messages after `since`,
/// then `{"type":"recovery",...}`, then live ones, with no gap or duplicate at the seam (both
/// happen under one lock). `kick` closes every connection once with 1012, mid-run.
#[derive(Default)]
struct History {
    live: HashMap<String, Outbox>,
    kept: HashMap<String, Vec<(u64, String)>>,
    resumed: u64,
}

async fn history_server() -> (SocketAddr, Arc<Mutex<History>>) {
    let state: Arc<Mutex<History>> = Arc::default();
    let st = state.clone();
    let addr = ws::serve(move |stream| history_connection(stream, st.clone())).await;
    (addr, state)
}

async fn history_connection(stream: tokio::net::TcpStream, state: Arc<Mutex<History>>) {
    let Some(mut conn) = ws::Conn::accept(stream).await else { return };
    let user = conn.param("userId").unwrap_or_default().to_string();
    let since: Option<u64> = conn.param("since").and_then(|s| s.parse().ok());
    {
        let mut h = state.lock().unwrap();
        if let (Some(since), Some("e1")) = (since, conn.param("epoch")) {
            let replay: Vec<String> = h.kept.get(&user).into_iter().flatten().filter(|(o, _)| *o > since).map(|(_, t)| t.clone()).collect();
            for t in &replay {
                let _ = conn.outbox.send(Message::text(t.clone()));
            }
            let _ = conn.outbox.send(Message::text(json!({"type": "recovery", "complete": true, "count": replay.len()}).to_string()));
            h.resumed += 1;
        }
        h.live.insert(user.clone(), conn.outbox.clone());
    }
    while let Some(t) = conn.next_text().await {
        let v: Value = serde_json::from_str(&t).unwrap();
        if v["type"] != "chat_message" {
            continue;
        }
        let to = v["receiverID"].as_str().unwrap().to_string();
        {
            let mut h = state.lock().unwrap();
            let kept = h.kept.entry(to.clone()).or_default();
            let offset = kept.len() as u64 + 1;
            let env = json!({"type": "chat_message", "payload": v["payload"], "receiverID": to, "senderId": user, "offset": offset, "epoch": "e1"});
            kept.push((offset, python(&env)));
            if let Some(target) = h.live.get(&to) {
                let _ = target.send(Message::text(python(&env)));
            }
        }
    }
    {
        let mut h = state.lock().unwrap();
        if h.live.get(&user).is_some_and(|t| t.same_channel(&conn.outbox)) {
            h.live.remove(&user);
        }
    }
    conn.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_connections_get_what_they_missed_once() {
    let (addr, state) = history_server().await;
    let mut c = quick(addr, 10, 20.0);
    c.duration = Duration::from_secs(3);
    c.reconnect = true;
    c.resume = true;
    let live = Live::new();
    let handle = tokio::spawn(wsctl::load::run(c, live.clone(), CancellationToken::new(), FD_LIMIT, 0));
    support::eventually(Duration::from_secs(10), "traffic flowing", || {
        let live = live.clone();
        async move { live.snapshot().delivered > 100 }
    })
    .await;
    // Drain every connection once: the clients reconnect with since/epoch.
    let kicked: Vec<_> = state.lock().unwrap().live.drain().map(|(_, tx)| tx).collect();
    for tx in kicked {
        let _ = tx.send(Message::Close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame { code: 1012.into(), reason: "".into() })));
    }
    let r = handle.await.unwrap().unwrap();
    assert_eq!(r.connections.unexpected_closes.get("1012"), Some(&10), "{:?}", r.connections);
    assert!(state.lock().unwrap().resumed >= 10, "every connection came back with since");
    assert_eq!((r.audit.lost, r.audit.duplicated, r.audit.missed_while_offline, r.audit.sent_to_offline), (0, 0, 0, 0), "{:?}", r.audit);
    assert_eq!(r.audit.expected, r.messages.sent, "everything sent is owed, down or not");
    assert!(r.frames.by_type.get("recovery").is_some_and(|n| *n >= 10), "{:?}", r.frames.by_type);
}
