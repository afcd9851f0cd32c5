//! Room fan-out benchmark client, run by `scripts/bench-rooms` against two running `wsctl serve`
//! nodes (ignored in the normal test run). Members are spread evenly over the nodes; one member
//! of each room sends `{"t":<unix ns>}` at a fixed rate; every other member measures delivery
//! latency from that timestamp (same machine, same clock). Server CPU is read from
//! /proc/<pid>/stat right before the first send and right after the last delivery (or the
//! grace period), so connection setup is not counted.
//!
//! Settings (environment): BENCH_NODES (comma-separated host:port), BENCH_PIDS (the nodes'
//! pids), BENCH_ROOMS, BENCH_MEMBERS (per room), BENCH_RATE (messages/s per room),
//! BENCH_SECS. Prints one line `BENCH {json}`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// After the last send, how long stragglers may take to arrive before the run ends.
const GRACE: Duration = Duration::from_secs(3);
/// Connections opened at once while setting up.
const CONNECT_CONCURRENCY: usize = 200;

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

/// utime + stime of a process, in clock ticks (/proc/<pid>/stat fields 14 and 15).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_comm = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = after_comm.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
    // After the comm field: state is index 0, so utime (field 14) is index 11.
    f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects and joins; returns once the join is acked (the node is subscribed).
async fn member(addr: &str, user: &str, room: &str) -> Ws {
    let url = format!("ws://{addr}/ws?userId={user}");
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap_or_else(|e| panic!("connect {url}: {e}"));
    ws.send(Message::text(json!({"type":"join","room":room,"id":1}).to_string())).await.unwrap();
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.contains("\"ack\"") => return ws,
            Some(Ok(Message::Text(t))) => panic!("join {room}: {t}"),
            Some(Ok(_)) => continue,
            other => panic!("join {room}: {other:?}"),
        }
    }
}

/// Reads room messages until `stop`, recording latency (µs) of each.
async fn receive(mut ws: Ws, stop: CancellationToken, hist: Arc<std::sync::Mutex<Histogram<u64>>>, got: Arc<AtomicU64>) {
    let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    loop {
        let msg = tokio::select! {
            m = ws.next() => m,
            _ = stop.cancelled() => break,
        };
        let t = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(_)) => continue,
            _ => break,
        };
        let v: Value = serde_json::from_str(&t).unwrap_or(Value::Null);
        if let Some(sent) = v["payload"]["t"].as_u64() {
            local.saturating_record(now_ns().saturating_sub(sent) / 1_000);
            got.fetch_add(1, Ordering::Relaxed);
        }
    }
    hist.lock().unwrap().add(&local).unwrap();
    let _ = ws.close(None).await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark: run by scripts/bench-rooms against running nodes"]
async fn bench_rooms() {
    let nodes: Vec<String> = env("BENCH_NODES", String::new()).split(',').filter(|s| !s.is_empty()).map(String::from).collect();
    assert!(!nodes.is_empty(), "set BENCH_NODES=host:port,host:port");
    let pids: Vec<u32> = env("BENCH_PIDS", String::new()).split(',').filter_map(|p| p.parse().ok()).collect();
    let (rooms, members, rate, secs) = (env("BENCH_ROOMS", 1usize), env("BENCH_MEMBERS", 1000usize), env("BENCH_RATE", 1.0f64), env("BENCH_SECS", 10u64));

    // Set up: member i of room r on node (r + i) % nodes, so every room spans every node.
    let setup = Instant::now();
    let specs: Vec<(usize, usize)> = (0..rooms).flat_map(|r| (0..members).map(move |i| (r, i))).collect();
    let mut conns: Vec<((usize, usize), Ws)> = Vec::with_capacity(specs.len());
    for chunk in specs.chunks(CONNECT_CONCURRENCY) {
        let joins = chunk.iter().map(|&(r, i)| {
            let addr = nodes[(r + i) % nodes.len()].clone();
            async move { ((r, i), member(&addr, &format!("u{r}-{i}"), &format!("bench-{r}")).await) }
        });
        conns.extend(futures_util::future::join_all(joins).await);
    }
    let setup = setup.elapsed();

    let stop = CancellationToken::new();
    let hist = Arc::new(std::sync::Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap()));
    let got = Arc::new(AtomicU64::new(0));
    let mut senders = Vec::new();
    let mut readers = Vec::new();
    for ((r, i), ws) in conns {
        if i == 0 {
            senders.push((r, ws));
        } else {
            readers.push(tokio::spawn(receive(ws, stop.clone(), hist.clone(), got.clone())));
        }
    }
    let cpu_before: Vec<u64> = pids.iter().map(|p| cpu_ticks(*p)).collect();
    let start = Instant::now();
    let per_room = (rate * secs as f64).round() as u64;
    let send_tasks: Vec<_> = senders
        .into_iter()
        .map(|(r, mut ws)| {
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
                // Spread the rooms' sends over the first interval.
                tokio::time::sleep(Duration::from_secs_f64(r as f64 / rate / rooms.max(1) as f64)).await;
                for _ in 0..per_room {
                    tick.tick().await;
                    let frame = json!({"type":"room_message","room":format!("bench-{r}"),"payload":{"t":now_ns()}});
                    ws.send(Message::text(frame.to_string())).await.unwrap();
                }
                ws
            })
        })
        .collect();
    let mut held = Vec::new();
    for t in send_tasks {
        held.push(t.await.unwrap());
    }
    let sending = start.elapsed();
    let expected = per_room * rooms as u64 * (members as u64 - 1);
    let deadline = Instant::now() + GRACE;
    while got.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = start.elapsed();
    let cpu_after: Vec<u64> = pids.iter().map(|p| cpu_ticks(*p)).collect();
    stop.cancel();
    for r in readers {
        let _ = r.await;
    }
    drop(held);

    let h = hist.lock().unwrap();
    let delivered = got.load(Ordering::Relaxed);
    let ticks: u64 = cpu_after.iter().zip(&cpu_before).map(|(a, b)| a - b).sum();
    let clk_tck = env("BENCH_CLK_TCK", 100.0f64);
    let cpu_s = ticks as f64 / clk_tck;
    let report = json!({
        "rooms": rooms, "members_per_room": members, "rate_per_room": rate, "secs": secs,
        "setup_s": setup.as_secs_f64(), "sending_s": sending.as_secs_f64(),
        "sent": per_room * rooms as u64, "expected": expected, "delivered": delivered,
        "deliveries_per_s": delivered as f64 / sending.as_secs_f64().max(1e-9),
        "p50_ms": h.value_at_quantile(0.50) as f64 / 1e3, "p99_ms": h.value_at_quantile(0.99) as f64 / 1e3,
        "max_ms": h.max() as f64 / 1e3,
        "server_cpu_s": cpu_s, "cpu_ms_per_1k_deliveries": if delivered > 0 { cpu_s * 1e3 / (delivered as f64 / 1e3) } else { 0.0 },
        "wall_s": elapsed.as_secs_f64(),
    });
    println!("BENCH {report}");
    assert_eq!(delivered, expected, "every room message reached every other member");
}
