//! Metrics end to end: a real node's `/metrics` against the traffic sent to it, CloudWatch
//! publishing into a real `moto_server` and read back with GetMetricData, and the built
//! `wsctl metrics tail` against both.

mod support;

use std::process::Output;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_cloudwatch::primitives::DateTime;
use aws_sdk_cloudwatch::types::{Dimension, Metric, MetricDataQuery, MetricStat, StandardUnit};
use serde_json::{json, Value};
use support::moto::{self, Moto};
use support::*;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use wsctl::metrics::cloudwatch::{self, names, CloudWatchError, Publisher};
use wsctl::tail::prometheus::{self, Exposition};
use wsctl::tail::PrometheusTail;

/// Sends `n` chat messages from `from` to `to` and waits until `to` has them all.
async fn chat_n(from: &mut Client, to: &mut Client, to_user: &str, n: usize) {
    for i in 0..n {
        from.send(chat(to_user, json!({"i": i}))).await;
    }
    for _ in 0..n {
        assert_eq!(to.recv().await["type"], "chat_message");
    }
}

/// Sends a latency report and waits for its ack, so the node has counted it.
async fn report_latency(c: &mut Client, ms: f64) {
    c.send(json!({"type": "latency_report", "payload": ms, "id": "lat"})).await;
    assert_eq!(c.recv().await, json!({"type": "ack", "id": "lat"}));
}

async fn scrape_node(node: &TestNode) -> (String, Exposition) {
    let (status, body) = http_get(node.addr, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    let exp = prometheus::parse(&body).unwrap_or_else(|e| panic!("invalid exposition: {e}\n{body}"));
    (body, exp)
}

#[tokio::test]
async fn prometheus_exposition_is_valid_and_counts_traffic() {
    let node = TestNode::start("prom-node", None).await;
    let mut alice = node.connect("alice").await;
    let mut bob = node.connect("bob").await;
    chat_n(&mut alice, &mut bob, "bob", 7).await;
    chat_n(&mut bob, &mut alice, "alice", 2).await;
    report_latency(&mut bob, 3.0).await;
    report_latency(&mut bob, 40.0).await;
    report_latency(&mut alice, 0.1).await;

    let (text, exp) = scrape_node(&node).await;
    // The names the old dashboards expect, exactly.
    for line in ["wss_active_connections 2", "wss_messages_total 9", "wss_messages_delivered_total 9", "wss_unexpected_disconnects_total 0"] {
        assert!(text.lines().any(|l| l == line), "missing line {line:?} in\n{text}");
    }
    // Structure: OpenMetrics EOF, every family typed and documented with samples, histograms checked by the parser.
    assert!(exp.eof, "no # EOF");
    assert!(exp.families.len() >= 13, "families: {:?}", exp.families.keys());
    for f in exp.families.values() {
        assert!(!f.kind.is_empty() && f.help.is_some() && !f.samples.is_empty(), "incomplete family {f:?}");
    }
    assert_eq!(exp.family("wss_messages").unwrap().kind, "counter");
    assert_eq!(exp.family("wss_active_connections").unwrap().kind, "gauge");
    let lat = exp.histogram("wss_client_latency_ms").unwrap();
    assert_eq!((lat.count, lat.sum), (3.0, 43.1));
    assert_eq!(lat.buckets.len(), wsctl::metrics::LATENCY_BUCKETS_MS.len() + 1);
    assert_eq!(lat.buckets[0], (0.25, 1.0), "0.1 ms in the first bucket");
    assert_eq!(exp.histogram("wss_delivery_ms").unwrap().count, 0.0, "no broker deliveries on an embedded node");

    // A connection that vanishes without a close frame is unexpected; a clean close is not.
    drop(alice);
    bob.close().await;
    eventually(Duration::from_secs(5), "both disconnects counted", || async {
        let (_, exp) = scrape_node(&node).await;
        exp.gauge("wss_active_connections") == Some(0.0)
    })
    .await;
    let (_, exp) = scrape_node(&node).await;
    assert_eq!(exp.counter("wss_unexpected_disconnects"), Some(1.0));
    assert_eq!(exp.counter("wss_messages"), Some(9.0));
    node.stop().await;
}

#[tokio::test]
async fn separate_metrics_listener_and_tail_rates() {
    let node = TestNode::start("rates-node", None).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let maddr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let served = tokio::spawn(wsctl::metrics::serve_metrics(listener, node.metrics.clone(), Default::default(), stop.clone()));
    let url = format!("http://{maddr}/metrics");

    let mut a = node.connect("a").await;
    let mut b = node.connect("b").await;
    let mut tail = PrometheusTail::new(vec![url.clone()]);
    let first = tail.sample().await.unwrap();
    assert_eq!(first.servers[0].messages_per_s, None, "one scrape has no rate");
    assert_eq!(first.servers[0].active_connections, Some(2.0));
    chat_n(&mut a, &mut b, "b", 5).await;
    report_latency(&mut a, 10.0).await;
    let second = tail.sample().await.unwrap();
    let row = &second.servers[0];
    assert_eq!(row.messages, Some(5.0));
    assert_eq!(row.delivered, Some(5.0));
    assert!(row.messages_per_s.unwrap() > 0.0);
    assert_eq!(row.latency_reports, Some(1.0));
    assert_eq!(row.avg_latency_ms, Some(10.0));
    assert_eq!(row.messages_total, Some(5.0));
    assert_eq!(second.fleet.messages, Some(5.0));

    // The built binary, one snapshot as JSON.
    let out = wsctl_cmd(&["metrics", "tail", "--prometheus", &url, "--once", "--json", "--period", "200ms"], &[]).await;
    let snap = json_line(&out);
    assert_eq!(snap["source"], "prometheus");
    assert_eq!(snap["servers"][0]["server"], maddr.to_string());
    assert_eq!(snap["servers"][0]["messages_total"], 5.0);
    assert_eq!(snap["servers"][0]["active_connections"], 2.0);
    assert_eq!(snap["fleet"]["delivered_total"], 5.0);
    assert!(snap["servers"][0]["messages_per_s"].is_number());

    // The plain table when piped.
    let out = wsctl_cmd(&["metrics", "tail", "--prometheus", &url, "--once", "--period", "100ms"], &[]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("| SERVER") && text.contains(&maddr.to_string()) && text.contains("| fleet"), "{text}");
    assert!(!text.contains('\x1b'), "no terminal escapes when piped");

    // An unreachable node is a clear error.
    let dead = format!("http://127.0.0.1:{}/metrics", free_port());
    let out = wsctl_cmd(&["metrics", "tail", "--prometheus", &dead, "--once", "--period", "100ms"], &[]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach") && err.contains(&dead), "{err}");

    stop.cancel();
    served.await.unwrap().unwrap();
    node.stop().await;
}

/// Runs the built `wsctl` with AWS variables cleared (plus `env`), bounded in time.
async fn wsctl_cmd(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_wsctl"));
    cmd.args(args).kill_on_drop(true);
    for (k, _) in std::env::vars() {
        if k.starts_with("AWS_") || k.starts_with("WSS_") {
            cmd.env_remove(k);
        }
    }
    // Never ask an instance metadata service (a non-loopback address) for credentials or region,
    // and never read the developer's ~/.aws.
    cmd.env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/nonexistent/wsctl-test-aws-config")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/wsctl-test-aws-credentials");
    for (k, v) in env {
        cmd.env(k, v);
    }
    tokio::time::timeout(Duration::from_secs(60), cmd.output()).await.expect("wsctl finished in time").expect("wsctl runs")
}

fn json_line(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "wsctl failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON line: {stdout}");
    serde_json::from_str(lines[0]).unwrap()
}

const MOTO_CREDS: [(&str, &str); 2] = [("AWS_ACCESS_KEY_ID", moto::ACCESS_KEY), ("AWS_SECRET_ACCESS_KEY", moto::SECRET_KEY)];

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

/// Sum and datapoints of one metric over the last minutes, in `period` buckets.
async fn read_back(
    client: &aws_sdk_cloudwatch::Client,
    ns: &str,
    server: &str,
    name: &str,
    stat: &str,
    unit: Option<StandardUnit>,
    period: i32,
) -> Vec<f64> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let p = period as i64;
    let start = (now - 300).div_euclid(p) * p;
    let dim = Dimension::builder().name("ServerID").value(server).build();
    let metric = Metric::builder().namespace(ns).metric_name(name).dimensions(dim).build();
    let stat = MetricStat::builder().metric(metric).period(period).stat(stat).set_unit(unit).build();
    let q = MetricDataQuery::builder().id("q").metric_stat(stat).build();
    let out = client
        .get_metric_data()
        .metric_data_queries(q)
        .start_time(DateTime::from_secs(start))
        .end_time(DateTime::from_secs(now + 60))
        .send()
        .await
        .unwrap();
    out.metric_data_results().first().map(|r| r.values().to_vec()).unwrap_or_default()
}

#[tokio::test]
async fn cloudwatch_publishes_interval_counts_to_moto() {
    let moto = Moto::start();
    let opts = moto.options();
    let client = cloudwatch::client(&opts).await.unwrap();
    let (ns, server) = (unique("wsctl-test/metrics"), unique("cw-node"));
    let node = TestNode::start(&server, None).await;
    let stop = CancellationToken::new();
    let publisher = Publisher::new(client.clone(), &opts, &ns, &server, node.metrics.clone(), Duration::from_secs(1));
    let running = tokio::spawn(publisher.run(stop.clone()));

    let mut alice = node.connect("alice").await;
    let mut bob = node.connect("bob").await;
    chat_n(&mut alice, &mut bob, "bob", 5).await;
    report_latency(&mut alice, 2.0).await;
    report_latency(&mut alice, 6.0).await;
    // Let at least one push go out between the two bursts, so they land in different intervals.
    let sum = |values: Vec<f64>| values.iter().sum::<f64>();
    eventually(Duration::from_secs(10), "first burst published", || async {
        sum(read_back(&client, &ns, &server, names::MESSAGES, "Sum", None, 1).await) >= 5.0
    })
    .await;
    chat_n(&mut bob, &mut alice, "alice", 7).await;
    eventually(Duration::from_secs(10), "second burst published", || async {
        sum(read_back(&client, &ns, &server, names::MESSAGES, "Sum", None, 1).await) >= 12.0
    })
    .await;
    stop.cancel();
    let publisher = running.await.unwrap();
    publisher.finish().await;

    // Per-interval counts: running totals would sum past 12 once two pushes followed the first burst.
    let points = read_back(&client, &ns, &server, names::MESSAGES, "Sum", Some(StandardUnit::Count), 1).await;
    assert_eq!(sum(points.clone()), 12.0, "datapoints {points:?}");
    assert!(points.len() >= 2 && points.iter().all(|v| *v < 12.0), "deltas, not totals: {points:?}");
    assert_eq!(sum(read_back(&client, &ns, &server, names::DELIVERED, "Sum", Some(StandardUnit::Count), 60).await), 12.0);
    // Units: the same data asked with another unit is not there.
    assert!(read_back(&client, &ns, &server, names::MESSAGES, "Sum", Some(StandardUnit::Milliseconds), 60).await.is_empty());
    let conns = read_back(&client, &ns, &server, names::ACTIVE_CONNECTIONS, "Maximum", Some(StandardUnit::Count), 60).await;
    assert_eq!(conns.iter().copied().fold(0.0, f64::max), 2.0);
    assert_eq!(sum(read_back(&client, &ns, &server, names::UNEXPECTED_DISCONNECTS, "Sum", Some(StandardUnit::Count), 60).await), 0.0);
    let avg = read_back(&client, &ns, &server, names::AVERAGE_LATENCY, "Average", Some(StandardUnit::Milliseconds), 60).await;
    assert_eq!(avg, vec![4.0], "one interval had the two reports, mean 4 ms");
    let reports = read_back(&client, &ns, &server, names::LATENCY, "SampleCount", Some(StandardUnit::Milliseconds), 60).await;
    assert_eq!(sum(reports), 2.0, "Values/Counts carry each report");
    // The dimension, as ListMetrics sees it.
    let listed = client.list_metrics().namespace(&ns).send().await.unwrap();
    let mut names_seen: Vec<&str> = listed.metrics().iter().filter_map(|m| m.metric_name()).collect();
    names_seen.sort();
    names_seen.dedup();
    assert_eq!(names_seen, ["ActiveConnections", "AverageLatencyMs", "LatencyMs", "MessagesDelivered", "MessagesTotal", "UnexpectedDisconnects"]);
    for m in listed.metrics() {
        let dims: Vec<(&str, &str)> = m.dimensions().iter().map(|d| (d.name().unwrap(), d.value().unwrap())).collect();
        assert_eq!(dims, [("ServerID", server.as_str())]);
    }
    assert_eq!(node.metrics.cloudwatch_push_errors.get(), 0);
    node.stop().await;
}

#[tokio::test]
async fn failed_push_is_counted_and_carried_over() {
    let port = free_port();
    let opts = moto::options(port);
    let client = cloudwatch::client(&opts).await.unwrap();
    let (ns, server) = (unique("wsctl-test/carry"), unique("carry-node"));
    let metrics = wsctl::Metrics::new();
    let mut publisher = Publisher::new(client.clone(), &opts, &ns, &server, metrics.clone(), Duration::from_secs(60));
    metrics.messages.inc_by(4);
    let err = publisher.push().await.unwrap_err();
    assert!(matches!(err, CloudWatchError::Unreachable { .. }), "{err:?}");
    assert!(err.to_string().contains(&format!("127.0.0.1:{port}")), "{err}");

    // The loop counts the failure in the registry (and keeps the server untouched).
    let stop = CancellationToken::new();
    let looping = Publisher::new(client.clone(), &opts, &ns, &server, metrics.clone(), Duration::from_secs(1));
    let running = tokio::spawn(looping.run(stop.clone()));
    eventually(Duration::from_secs(15), "a failed push counted", || async { metrics.cloudwatch_push_errors.get() >= 1 }).await;
    stop.cancel();
    drop(running.await.unwrap());
    assert!(metrics.render().lines().any(|l| l.starts_with("wss_cloudwatch_push_errors_total ") && !l.ends_with(" 0")));

    // The endpoint comes back: the next push carries the failed interval's counts.
    let _moto = Moto::start_on(port);
    metrics.messages.inc_by(3);
    let report = publisher.push().await.unwrap();
    assert_eq!(report.pushed.messages, 7);
    let points = read_back(&client, &ns, &server, names::MESSAGES, "Sum", None, 60).await;
    assert_eq!(points.iter().sum::<f64>(), 7.0);
    metrics.messages.inc_by(1);
    assert_eq!(publisher.push().await.unwrap().pushed.messages, 1, "a successful push resets the interval");
}

#[tokio::test]
async fn tail_reads_cloudwatch_and_explains_failures() {
    let moto = Moto::start();
    let opts = moto.options();
    let client = cloudwatch::client(&opts).await.unwrap();
    let ns = unique("wsctl-test/tail");
    // Two servers, one push each, with known counts.
    for (server, msgs, lat) in [("tail-a", 30u64, 5.0), ("tail-b", 12, 11.0)] {
        let m = wsctl::Metrics::new();
        m.messages.inc_by(msgs);
        m.messages_delivered.inc_by(msgs * 2);
        m.active_connections.set(3);
        m.client_latency_ms.observe(lat);
        Publisher::new(client.clone(), &opts, &ns, server, m, Duration::from_secs(60)).push().await.unwrap();
    }
    let endpoint = moto.endpoint();
    let base = ["metrics", "tail", "--endpoint", endpoint.as_str(), "--region", moto::REGION, "--since", "10m", "--period", "60s"];
    let args: Vec<&str> = base.iter().copied().chain(["--namespace", ns.as_str(), "--once", "--json"]).collect();
    let snap = json_line(&wsctl_cmd(&args, &MOTO_CREDS).await);
    assert_eq!(snap["source"], "cloudwatch");
    let servers: Vec<&str> = snap["servers"].as_array().unwrap().iter().map(|s| s["server"].as_str().unwrap()).collect();
    assert_eq!(servers, ["tail-a", "tail-b"]);
    assert_eq!(snap["servers"][0]["messages"], 30.0);
    assert_eq!(snap["servers"][0]["messages_per_s"], 0.5);
    assert_eq!(snap["servers"][1]["delivered"], 24.0);
    assert_eq!(snap["fleet"]["messages"], 42.0);
    assert_eq!(snap["fleet"]["active_connections"], 6.0);
    assert_eq!(snap["fleet"]["avg_latency_ms"], 8.0);
    assert!(snap["servers"][0]["history"].as_array().unwrap().len() > 1);

    // --server narrows to one row.
    let args: Vec<&str> = base.iter().copied().chain(["--namespace", ns.as_str(), "--server", "tail-b", "--once", "--json"]).collect();
    let snap = json_line(&wsctl_cmd(&args, &MOTO_CREDS).await);
    assert_eq!(snap["servers"].as_array().unwrap().len(), 1);
    assert_eq!(snap["fleet"]["messages"], 12.0);

    // Unknown namespace, missing credentials, unreachable endpoint: each a clear error.
    let args: Vec<&str> = base.iter().copied().chain(["--namespace", "no/such-namespace", "--once"]).collect();
    let out = wsctl_cmd(&args, &MOTO_CREDS).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("no metrics found in namespace \"no/such-namespace\""), "{err}");
    let args: Vec<&str> = base.iter().copied().chain(["--namespace", ns.as_str(), "--once"]).collect();
    let out = wsctl_cmd(&args, &[]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("no AWS credentials"), "{err}");
    let dead = moto::endpoint(free_port());
    let args = ["metrics", "tail", "--endpoint", dead.as_str(), "--region", moto::REGION, "--once"];
    let out = wsctl_cmd(&args, &MOTO_CREDS).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("cannot reach CloudWatch at") && err.contains(&dead), "{err}");
}

#[tokio::test]
async fn serve_binary_publishes_and_pushes_on_drain() {
    let moto = Moto::start();
    let (ns, server) = (unique("wsctl-test/serve"), unique("serve-node"));
    let (port, mport) = (free_port(), free_port());
    let endpoint = moto.endpoint();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_wsctl"));
    cmd.args(["serve", "--bind", "127.0.0.1", "--port", &port.to_string(), "--server-id", &server])
        .args(["--metrics-addr", &format!("127.0.0.1:{mport}"), "--cloudwatch", "--cloudwatch-interval", "1h"])
        .args(["--cloudwatch-namespace", &ns, "--cloudwatch-endpoint", &endpoint, "--cloudwatch-region", moto::REGION])
        .envs(MOTO_CREDS)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().expect("wsctl serve starts");
    let maddr: std::net::SocketAddr = format!("127.0.0.1:{mport}").parse().unwrap();
    eventually(Duration::from_secs(10), "--metrics-addr answers", || async { http_get(maddr, "/metrics").await.is_ok_and(|(s, _)| s == 200) }).await;
    let mut a = Client::connect(&format!("ws://127.0.0.1:{port}/ws?userId=a")).await;
    let mut b = Client::connect(&format!("ws://127.0.0.1:{port}/ws?userId=b")).await;
    chat_n(&mut a, &mut b, "b", 3).await;
    let exp = prometheus::parse(&http_get(maddr, "/metrics").await.unwrap().1).unwrap();
    assert_eq!(exp.counter("wss_messages"), Some(3.0));

    // The interval is an hour: only the push made after the drain can carry these counts.
    let status = tokio::process::Command::new("kill").args(["-TERM", &child.id().unwrap().to_string()]).status().await.unwrap();
    assert!(status.success());
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output()).await.expect("serve exits").unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && log.contains("pushed the final interval"), "{log}");
    let client = cloudwatch::client(&moto.options()).await.unwrap();
    assert_eq!(read_back(&client, &ns, &server, names::MESSAGES, "Sum", None, 60).await.iter().sum::<f64>(), 3.0);
}

/// The hot-path cost of the metrics, for scripts/bench-metrics-cost (ignored in normal runs; it
/// prints figures and asserts only that every message arrived). Two embedded nodes in this
/// process, one with live metrics and one with [`wsctl::Metrics::disabled`], driven by the same
/// real WebSocket clients in alternating rounds; then the metric updates alone in a tight loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run through scripts/bench-metrics-cost (release build)"]
async fn bench_metrics_cost() {
    use std::sync::Arc;
    use std::time::Instant;
    let env = |k: &str, d: usize| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let (pairs, msgs, rounds) = (env("BENCH_PAIRS", 16), env("BENCH_MSGS", 5_000), env("BENCH_ROUNDS", 5));

    async fn start(id: &str, metrics: wsctl::Metrics) -> (std::net::SocketAddr, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let config = wsctl::ServerConfig { limits: test_limits(), ..wsctl::ServerConfig::embedded(id) };
        tokio::spawn(wsctl::server::serve_with_metrics(listener, config, metrics, stop.clone()));
        eventually(Duration::from_secs(10), "bench node up", || async { http_get(addr, "/health").await.is_ok() }).await;
        (addr, stop)
    }

    /// msgs/s for `pairs` sender->receiver pairs sending `msgs` each, at most WINDOW in flight per pair
    /// (well under the send queue, so nobody is closed as a slow consumer).
    async fn round(addr: std::net::SocketAddr, pairs: usize, msgs: usize) -> f64 {
        const WINDOW: usize = 256;
        let mut clients = Vec::new();
        for p in 0..pairs {
            let tx = Client::connect(&format!("ws://{addr}/ws?userId=s{p}")).await;
            let rx = Client::connect(&format!("ws://{addr}/ws?userId=r{p}")).await;
            clients.push((tx, rx));
        }
        let start = Instant::now();
        let mut tasks = Vec::new();
        for (p, (mut tx, mut rx)) in clients.into_iter().enumerate() {
            let credit = Arc::new(tokio::sync::Semaphore::new(WINDOW));
            let c2 = credit.clone();
            tasks.push(tokio::spawn(async move {
                let frame = chat(&format!("r{p}"), json!("x".repeat(64))).to_string();
                for _ in 0..msgs {
                    c2.acquire().await.unwrap().forget();
                    tx.send_raw(tokio_tungstenite::tungstenite::Message::text(frame.clone())).await;
                }
                tx
            }));
            tasks.push(tokio::spawn(async move {
                for _ in 0..msgs {
                    rx.recv().await;
                    credit.add_permits(1);
                }
                rx
            }));
        }
        let mut done = Vec::new();
        for t in tasks {
            done.push(tokio::time::timeout(Duration::from_secs(120), t).await.expect("round finished").unwrap());
        }
        let rate = (pairs * msgs) as f64 / start.elapsed().as_secs_f64();
        for c in done {
            c.close().await;
        }
        rate
    }

    let on = wsctl::Metrics::new();
    let (addr_on, stop_on) = start("bench-on", on.clone()).await;
    let (addr_off, stop_off) = start("bench-off", wsctl::Metrics::disabled()).await;
    round(addr_on, pairs, msgs / 10).await; // warm-up
    round(addr_off, pairs, msgs / 10).await;
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        // Alternate which goes first, so drift (thermal, neighbours) hits both alike.
        if r % 2 == 0 {
            with.push(round(addr_on, pairs, msgs).await);
            without.push(round(addr_off, pairs, msgs).await);
        } else {
            without.push(round(addr_off, pairs, msgs).await);
            with.push(round(addr_on, pairs, msgs).await);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (m_with, m_without) = (median(&mut with), median(&mut without));
    assert_eq!(on.messages.get() as usize, pairs * (msgs / 10 + msgs * rounds), "every message counted");
    stop_on.cancel();
    stop_off.cancel();

    // The per-message updates alone: one chat message on an embedded node does messages.inc(),
    // messages_delivered.inc_by(1); a Redis-fed delivery also observes delivery_ms.
    let m = wsctl::Metrics::new();
    let n = 20_000_000u64;
    let mut per_msg = Vec::new();
    for threads in [1usize, 2] {
        let t0 = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..threads {
                let m = m.clone();
                s.spawn(move || {
                    for i in 0..n / threads as u64 {
                        m.messages.inc();
                        m.messages_delivered.inc_by(1);
                        m.delivery_ms.observe(std::hint::black_box((i % 50) as f64 * 0.1));
                    }
                });
            }
        });
        per_msg.push(t0.elapsed().as_nanos() as f64 / n as f64 * threads as f64);
    }
    println!(
        "BENCH pairs={pairs} msgs_per_pair={msgs} rounds={rounds}\n\
         BENCH with_metrics_msgs_per_s_median={m_with:.0} all={with:.0?}\n\
         BENCH without_metrics_msgs_per_s_median={m_without:.0} all={without:.0?}\n\
         BENCH cost_percent={:.2}\n\
         BENCH updates_ns_per_message_1thread={:.1} 2threads_contended={:.1}",
        (m_without - m_with) / m_without * 100.0,
        per_msg[0],
        per_msg[1]
    );
}
