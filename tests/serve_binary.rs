//! The `wsctl` binary itself: `serve` with JSON logs, a real Redis, and drain on SIGTERM.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

#[tokio::test]
async fn serve_binary_drains_on_sigterm_and_leaves_no_routes() {
    let redis = RedisServer::start();
    let mut child = Command::new(env!("CARGO_BIN_EXE_wsctl"))
        .args(["--log-format", "json", "serve", "--bind", "127.0.0.1", "--port", "0", "--server-id", "bin-node"])
        .env("REDIS_URI", redis.url())
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("wsctl binary runs");
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // The startup line says where it listens, with node id, broker mode and limits.
    let startup: serde_json::Value = loop {
        let line = rx.recv_timeout(Duration::from_secs(15)).expect("startup line");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("log line is JSON: {line}"));
        if v["message"].as_str().is_some_and(|m| m.contains("listening")) {
            break v;
        }
    };
    assert_eq!(startup["server_id"], "bin-node");
    assert!(startup["broker"].as_str().unwrap().contains("Redis standalone"), "{startup}");
    assert_eq!(startup["send_queue"], 1024);
    let addr = startup["address"].as_str().unwrap().to_string();

    let mut alice = Client::connect(&format!("ws://{addr}/ws?userId=alice")).await;
    let mut bob = Client::connect(&format!("ws://{addr}/ws?userId=bob")).await;
    assert_eq!(redis.cli(&["SMEMBERS", "user_servers:bob"]), "bin-node");
    for n in 0..50 {
        alice.send(json!({"type":"chat_message","receiverID":"bob","payload":n,"id":n})).await;
    }
    for n in 0..50 {
        assert_eq!(alice.recv().await["id"], n);
    }

    let started = Instant::now();
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let (frames, closed) = bob.until_closed(Duration::from_secs(10)).await;
    assert_eq!(frames.len(), 50, "every queued message is flushed before the close");
    assert_eq!(closed, Closed::Code(1012));
    let _ = alice.until_closed(Duration::from_secs(10)).await;
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "wsctl serve did not exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(code.success(), "exit status {code}");
    assert_eq!(redis.cli(&["EXISTS", "user_servers:bob", "user_servers:alice", "user_online:bob:bin-node", "server_alive:bin-node"]), "0");
}

#[test]
fn serve_rejects_bad_settings_with_the_offending_value() {
    let out = Command::new(env!("CARGO_BIN_EXE_wsctl"))
        .args(["serve", "--port", "0", "--ping-interval", "30s", "--idle-timeout", "10s"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--idle-timeout (10s)"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_wsctl")).args(["serve", "--ping-interval", "soon"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid duration \"soon\""));
    let out = Command::new(env!("CARGO_BIN_EXE_wsctl"))
        .args(["serve", "--port", "0", "--redis-uri", "redis://127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach Redis at redis://127.0.0.1:1 (Connection refused): is it running"), "{}", String::from_utf8_lossy(&out.stderr));
}
