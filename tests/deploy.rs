//! deploy/: every file is checked against the binary as far as this machine allows. No Docker
//! engine, kubelet or nginx here, so files are parsed, and what they say about wsctl (flags,
//! environment variables, port, probe paths, stop signal, stop timeouts) is checked by running
//! `wsctl serve ... --print-config` with the same arguments and environment, and by starting a
//! node and requesting the probe paths. The systemd unit also goes through `systemd-analyze verify`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use wsctl::tail::prometheus::Scraper;

/// What may follow the drain before the process exits (docs/operations.md): the broker's
/// shutdown (2 s) and the last CloudWatch push (5 s).
const AFTER_DRAIN: f64 = 7.0;

/// What the README measured per idle connection (scripts/bench-idle-rss), KiB.
const PER_CONNECTION_KIB: f64 = 7.6;
/// An idle Redis-backed node's RSS before its first client, MiB (scripts/bench-idle-rss), rounded up.
const IDLE_RSS_MIB: f64 = 20.0;
/// Connections per pod the Kubernetes memory request is sized for.
const CONNECTIONS_PER_POD: f64 = 10_000.0;
/// How long a started node may take to answer /health (a debug build on a busy machine).
const START_TIMEOUT: Duration = Duration::from_secs(30);

fn deploy(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy").join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(deploy(rel)).unwrap_or_else(|e| panic!("deploy/{rel}: {e}"))
}

fn secs(text: &str) -> f64 {
    humantime::parse_duration(text.trim()).unwrap_or_else(|e| panic!("{text:?}: {e}")).as_secs_f64()
}

/// `wsctl <args> --print-config` under exactly `env`: setting -> (value, source). Fails the test
/// if the binary refuses the arguments or the environment.
fn effective(args: &[String], env: &[(String, String)]) -> BTreeMap<String, (String, String)> {
    let out = Command::new(env!("CARGO_BIN_EXE_wsctl"))
        .args(args)
        .arg("--print-config")
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "wsctl {args:?} with {env:?} refused: {}", String::from_utf8_lossy(&out.stderr));
    stdout
        .lines()
        .filter_map(|l| {
            let mut cols = l.split_whitespace();
            Some((cols.next()?.to_string(), (cols.next()?.to_string(), cols.collect::<Vec<_>>().join(" "))))
        })
        .collect()
}

/// Every environment variable the serve command reads (`config default` names each one).
fn serve_env_vars() -> Vec<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_wsctl")).args(["config", "default"]).output().unwrap();
    String::from_utf8(out.stdout).unwrap().lines().filter_map(|l| l.strip_prefix("# Environment: ")).map(str::to_string).collect()
}

/// Fails on a variable wsctl would silently ignore (a typo, a renamed flag).
fn assert_known_env(env: &[(String, String)]) {
    let known = serve_env_vars();
    assert!(known.len() > 10, "config default lists the variables");
    for (k, _) in env {
        assert!(known.contains(k) || k == "POD_IP", "{k} is not a variable `wsctl serve` reads");
    }
}

/// A node started with the binary on a free port; killed on drop.
struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts an embedded node and checks that each path answers 200.
async fn assert_paths_answer(paths: &[&str]) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(env!("CARGO_BIN_EXE_wsctl"))
        .args(["serve", "--bind", "127.0.0.1", "--port", &port.to_string()])
        .env_clear()
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _node = Node(child);
    let scraper = Scraper::new();
    let started = Instant::now();
    for path in paths {
        let url = format!("http://127.0.0.1:{port}{path}");
        loop {
            match scraper.get(&url).await {
                Ok(_) => break,
                Err(e) if started.elapsed() > START_TIMEOUT => panic!("{path} does not answer 200: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}

/// `KEY=VALUE` pairs of one systemd Environment= line (no quoting used in our unit).
fn env_pairs(line: &str) -> Vec<(String, String)> {
    line.split_whitespace().filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn systemd_unit_stops_with_sigterm_after_the_drain() {
    let unit = read("wsctl.service");
    let service: BTreeMap<&str, &str> = unit
        .lines()
        .skip_while(|l| l.trim() != "[Service]")
        .take_while(|l| !l.starts_with("[Install]"))
        .filter_map(|l| l.split_once('='))
        .collect();
    assert_eq!(service["KillSignal"], "SIGTERM");
    let exec: Vec<String> = service["ExecStart"].split_whitespace().map(str::to_string).collect();
    assert_eq!(exec[0], "/usr/local/bin/wsctl");
    let env = env_pairs(service["Environment"]);
    assert_known_env(&env);
    let settings = effective(&exec[1..], &env);
    let drain = secs(&settings["drain-timeout"].0);
    assert!(secs(service["TimeoutStopSec"]) > drain + AFTER_DRAIN, "TimeoutStopSec must exceed the drain ({drain} s) and what follows it");
    assert_eq!(settings["port"].0, "8081");

    // systemd's own check, with the binary under test in place of the installed one.
    let dir = tempfile::tempdir().unwrap();
    let copy = unit
        .replace("/usr/local/bin/wsctl", env!("CARGO_BIN_EXE_wsctl"))
        .lines()
        .filter(|l| !l.starts_with("Documentation="))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(dir.path().join("wsctl.service"), copy).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(dir.path().join("wsctl.service"))
        .output()
        .expect("systemd-analyze (apt-get install -y systemd) checks the unit");
    assert!(out.status.success(), "systemd-analyze verify: {}", String::from_utf8_lossy(&out.stderr));
}

/// Dockerfile instructions, continuation lines joined.
fn instructions(text: &str) -> Vec<(String, String)> {
    let joined = text.lines().filter(|l| !l.trim_start().starts_with('#')).collect::<Vec<_>>().join("\n").replace("\\\n", " ");
    joined
        .lines()
        .filter_map(|l| l.trim().split_once(char::is_whitespace))
        .map(|(k, v)| (k.to_uppercase(), v.trim().to_string()))
        .collect()
}

#[test]
fn dockerfile_builds_in_stages_and_runs_unprivileged() {
    let ins = instructions(&read("Dockerfile"));
    let all = |k: &str| ins.iter().filter(|(i, _)| i == k).map(|(_, v)| v.clone()).collect::<Vec<_>>();
    let one = |k: &str| all(k).pop().unwrap_or_else(|| panic!("no {k}"));
    let froms = all("FROM");
    assert!(froms.len() >= 2, "multi-stage");
    let runtime = froms.last().unwrap();
    assert!(runtime.contains("distroless") || runtime.contains("-slim"), "small runtime image, got {runtime}");
    let user = one("USER");
    assert!(!user.starts_with("root") && !user.starts_with("0"), "non-root, got {user}");
    assert_eq!(one("STOPSIGNAL"), "SIGTERM");
    let entry: Vec<String> = serde_json::from_str(&one("ENTRYPOINT")).expect("ENTRYPOINT in exec form (wsctl is PID 1 and gets SIGTERM)");
    let cmd: Vec<String> = serde_json::from_str(&one("CMD")).expect("CMD in exec form");
    assert!(all("COPY").iter().any(|c| c.starts_with("--from=") && c.ends_with(&entry[0])), "the binary is copied to {}", entry[0]);
    let env = env_pairs(&one("ENV"));
    assert_known_env(&env);
    let settings = effective(&cmd, &env);
    assert_eq!(one("EXPOSE"), settings["port"].0, "EXPOSE matches WSS_PORT");
    assert!(std::fs::read_to_string(deploy("Dockerfile.dockerignore")).unwrap().lines().any(|l| l == "target"));
}

fn yaml(rel: &str) -> Value {
    serde_saphyr::from_str(&read(rel)).unwrap_or_else(|e| panic!("deploy/{rel}: {e}"))
}

fn string_map(v: &Value) -> Vec<(String, String)> {
    v.as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_string))).collect()
}

#[test]
fn compose_runs_two_nodes_behind_nginx_without_stickiness() {
    let compose = yaml("compose.yaml");
    let services = compose["services"].as_object().unwrap();
    assert!(services.contains_key("redis"));
    // Directives only: the comments may name what is not used.
    let nginx: String = read("nginx.conf").lines().map(|l| l.split('#').next().unwrap()).collect::<Vec<_>>().join("\n");
    let mut upstreams = Vec::new();
    for name in ["node-a", "node-b"] {
        let node = &services[name];
        let env = string_map(&node["environment"]);
        assert_known_env(&env);
        let settings = effective(&["serve".to_string()], &env);
        assert_eq!(settings["redis-uri"].0, "redis://redis:6379", "{name} uses the compose Redis");
        assert_eq!(node["stop_signal"], "SIGTERM");
        let drain = secs(&settings["drain-timeout"].0);
        assert!(secs(node["stop_grace_period"].as_str().unwrap()) > drain + AFTER_DRAIN, "{name}: stop_grace_period must exceed the drain and what follows it");
        upstreams.push(format!("server {name}:{}", settings["port"].0));
    }
    for u in &upstreams {
        assert!(nginx.contains(u.as_str()), "nginx.conf has `{u}`");
    }
    for sticky in ["ip_hash", "hash ", "sticky"] {
        assert!(!nginx.split_whitespace().any(|w| w == sticky.trim()), "nginx.conf must not pin clients ({sticky})");
    }
    for header in ["proxy_http_version 1.1;", "proxy_set_header Upgrade $http_upgrade;", "proxy_set_header Connection $connection_upgrade;"] {
        assert!(nginx.contains(header), "nginx.conf passes the WebSocket upgrade: {header}");
    }
    let read_timeout = nginx.lines().find_map(|l| l.trim().strip_prefix("proxy_read_timeout ")).expect("proxy_read_timeout");
    let ping = secs(&effective(&["serve".to_string()], &[])["ping-interval"].0);
    assert!(secs(read_timeout.trim_end_matches(';')) > ping, "the proxy must outlast the server's ping interval");
    let volumes = services["lb"]["volumes"].as_array().unwrap();
    assert!(volumes.iter().any(|v| v.as_str().unwrap().starts_with("./nginx.conf:")));
}

fn mib(quantity: &str) -> f64 {
    let (n, unit) = quantity.split_at(quantity.find(|c: char| c.is_alphabetic()).unwrap_or(quantity.len()));
    let n: f64 = n.parse().unwrap();
    match unit {
        "Mi" => n,
        "Gi" => n * 1024.0,
        other => panic!("memory in Mi or Gi, got {other:?}"),
    }
}

#[tokio::test]
async fn kubernetes_probes_ports_and_grace_period_match_the_binary() {
    let docs: Vec<Value> = serde_saphyr::from_multiple(&read("kubernetes/wsctl.yaml")).unwrap();
    let kind = |k: &str| docs.iter().find(|d| d["kind"] == k).unwrap_or_else(|| panic!("no {k}"));
    let (deployment, service, pdb) = (kind("Deployment"), kind("Service"), kind("PodDisruptionBudget"));
    let pod = &deployment["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let env: Vec<(String, String)> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| Some((e["name"].as_str()?.to_string(), e["value"].as_str()?.to_string())))
        .collect();
    assert_known_env(&env);
    let args: Vec<String> = serde_json::from_value(c["args"].clone()).unwrap();
    let settings = effective(&args, &env);
    let port = &c["ports"][0];
    assert_eq!(port["containerPort"].to_string(), settings["port"].0, "containerPort matches WSS_PORT");
    for (probe, path) in [("readinessProbe", "/ready"), ("livenessProbe", "/health")] {
        assert_eq!(c[probe]["httpGet"]["path"], path);
        assert_eq!(c[probe]["httpGet"]["port"], port["name"]);
    }
    let drain = secs(&settings["drain-timeout"].0);
    assert!(pod["terminationGracePeriodSeconds"].as_f64().unwrap() > drain + AFTER_DRAIN, "grace period must exceed the drain and what follows it");
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    assert_eq!(&service["spec"]["selector"], labels);
    assert_eq!(&pdb["spec"]["selector"]["matchLabels"], labels);
    assert_eq!(service["spec"]["ports"][0]["targetPort"], port["name"]);
    assert_eq!(service["spec"]["sessionAffinity"], "None", "no stickiness");
    let request = mib(c["resources"]["requests"]["memory"].as_str().unwrap());
    let needed = IDLE_RSS_MIB + CONNECTIONS_PER_POD * PER_CONNECTION_KIB / 1024.0;
    assert!(request >= needed, "memory request {request} Mi < idle RSS + {CONNECTIONS_PER_POD} connections = {needed:.0} Mi");
    assert!(mib(c["resources"]["limits"]["memory"].as_str().unwrap()) >= request);
    assert!(read("kubernetes/wsctl.yaml").contains("Redis Cluster"));
    assert_paths_answer(&["/ready", "/health"]).await;
}
