//! `wsctl serve` reaching Redis over TLS (`rediss://`): a real redis-server with `--tls-port`,
//! certificates made here with openssl, the CA trusted through SSL_CERT_FILE (read by the
//! rustls native-roots loader), so the binary is used (the variable is process-wide).

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;
use support::*;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().expect("openssl runs (apt-get install openssl)");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA and a server certificate for 127.0.0.1/localhost, in `dir`.
fn make_certs(dir: &Path) {
    openssl(dir, &["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=wsctl test CA"]);
    openssl(dir, &["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"]);
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
    openssl(
        dir,
        &["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "san.ext"],
    );
}

#[tokio::test]
async fn serve_reaches_redis_over_tls() {
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path());
    let c = |f: &str| certs.path().join(f).to_str().unwrap().to_string();
    let tls_port = free_port();
    let redis = RedisServer::start_with(vec![
        "--tls-port".into(),
        tls_port.to_string(),
        "--tls-cert-file".into(),
        c("server.pem"),
        "--tls-key-file".into(),
        c("server.key"),
        "--tls-ca-cert-file".into(),
        c("ca.pem"),
        "--tls-auth-clients".into(),
        "no".into(),
    ]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_wsctl"))
        .args(["--log-format", "json", "serve", "--bind", "127.0.0.1", "--port", "0", "--server-id", "tls-node"])
        .env("REDIS_URI", format!("rediss://127.0.0.1:{tls_port}"))
        .env("SSL_CERT_FILE", c("ca.pem"))
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("wsctl serve exited before listening").unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["message"].as_str().is_some_and(|m| m.contains("listening")) {
            break v["address"].as_str().unwrap().to_string();
        }
    };
    let mut bob = Client::connect(&format!("ws://{addr}/ws?userId=bob")).await;
    // The route went through the TLS port (the plain port of the same server shows it).
    assert_eq!(redis.cli(&["SMEMBERS", "user_servers:bob"]), "tls-node");
    let mut alice = Client::connect(&format!("ws://{addr}/ws?userId=alice")).await;
    alice.send(json!({"type":"chat_message","receiverID":"bob","payload":"over tls","id":1})).await;
    assert_eq!(bob.recv().await["payload"], "over tls");
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = bob.until_closed(Duration::from_secs(10)).await;
    assert!(child.wait().unwrap().success());
}
