//! `wsctl load`: flags and profile merged into a validated [`LoadConfig`], live progress while
//! the engine runs, the summary table, `--json`, `--assert` thresholds (exit code 99 on failure,
//! as k6), `--spawn-local`, and `wsctl load merge` for shard reports.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, Table};
use indicatif::{ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;
use wsctl::load::config::{parse_rate, parse_shard, parse_source_ips};
use wsctl::load::{Assertion, AssertionResult, Diagnosis, Live, LoadConfig, Pattern, Phase, Profile, Rate, Report};

use crate::util::{parse_duration, raise_fd_limit, usage};

/// Exit code when a threshold fails (k6 uses the same).
const THRESHOLD_FAILED: u8 = 99;
/// Exit code when frames came back and not one carried a stamp of this run: the figures say
/// nothing about the server (issue 12), so the run must not pass as an ordinary one.
const NOTHING_RECOGNIZED: u8 = 3;
/// The smoke profile, built in for `--spawn-local`.
const SMOKE_PROFILE: &str = include_str!("../profiles/smoke.yaml");
/// How often the progress line refreshes.
const PROGRESS_TICK: Duration = Duration::from_secs(1);

#[derive(Debug, Args)]
#[command(
    args_conflicts_with_subcommands = true,
    after_help = "Flags override the profile; the profile overrides the defaults.\n\
Thresholds (--assert, repeatable): METRIC OP VALUE with OP one of < <= > >= = !=, durations in ms/s.\n\
  metrics: p50 p90 p99 p99.9 max mean connect_p50 connect_p99 connect_max lost refused_missing duplicated reordered\n\
           sent delivered delivered_per_s sent_per_s connected never_connected reconnects errors unexpected_closes\n\
           foreign echoed late_sends, and with --ack: lost_after_ack unanswered refused acked_offline ack_p50 ack_p99 ack_max\n\
Exit codes: 0 ok, 1 error, 3 frames arrived but none was a message of this run (the table shows\n\
  their types and an example), 99 a threshold failed.\n\
Examples:\n  wsctl load --spawn-local\n  \
wsctl load --url ws://127.0.0.1:8081/ws --clients 1000 --rate 5 --duration 30s --assert 'p99<50ms' --assert lost=0\n  \
wsctl load --profile profiles/chat-10k.yaml --url ws://127.0.0.1:8081/ws --url ws://127.0.0.1:8082/ws --json run.json\n  \
wsctl load --profile p.yaml --shard 1/2 --json a.json   (and 2/2 into b.json, then)  wsctl load merge a.json b.json\n  \
wsctl load --url ws://127.0.0.1:8081/ws --ack --assert lost_after_ack=0 --assert unanswered=0 --assert 'ack_max<3s'\n  \
wsctl load --url ws://127.0.0.1:8081/ws --duration 60s --json run.json --csv run.csv && wsctl load plot run.json -o run.svg\n  \
wsctl load --url ws://127.0.0.1:8081/ws --reconnect --resume --assert lost=0 --assert duplicated=0   (server with --history)\n  \
wsctl load --url ws://127.0.0.1:8081/ws --url ws://127.0.0.1:8082/ws --pattern room --rooms 100 --room-size 50 --rate 0.2 --assert lost=0 --assert echoed=0\n  \
WSS_API_KEY=secret wsctl load --url ws://127.0.0.1:8081/ws --api-publish 200/s --assert lost=0   (server with --api-key)"
)]
pub struct LoadArgs {
    #[command(subcommand)]
    pub command: Option<LoadCommand>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum LoadCommand {
    /// Merge the JSON reports of several shards (--shard I/N) into one: histograms are added, so
    /// percentiles are those of all samples, not averages.
    Merge(MergeArgs),
    /// Draw a --json report's per-second series (sent/s, delivered/s, p50/p99, connections) as
    /// an SVG.
    Plot(PlotArgs),
}

#[derive(Debug, Args)]
pub struct PlotArgs {
    /// A report written with --json (or by `wsctl load merge --json`).
    pub file: PathBuf,
    /// The SVG to write.
    #[arg(short = 'o', long)]
    pub output: PathBuf,
}

#[derive(Debug, Args)]
pub struct MergeArgs {
    /// Reports written with --json.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Write the merged report here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Thresholds checked against the merged report.
    #[arg(long = "assert")]
    pub asserts: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// YAML profile (see profiles/); flags given here override its values.
    #[arg(long)]
    pub profile: Option<PathBuf>,
    /// Target, e.g. ws://127.0.0.1:8081/ws (repeatable: connections go round-robin over them).
    #[arg(long = "url")]
    pub urls: Vec<String>,
    /// Start an embedded node in this process and run the smoke profile against it.
    #[arg(long)]
    pub spawn_local: bool,
    /// Simulated users in the whole run (all shards). [default: 50]
    #[arg(short = 'c', long)]
    pub clients: Option<u32>,
    /// WebSocket connections per user. [default: 1]
    #[arg(long)]
    pub connections_per_user: Option<u32>,
    /// Connection rate, e.g. 1000/s. [default: 1000/s]
    #[arg(long)]
    pub ramp: Option<String>,
    /// How long traffic runs once everyone is connected, e.g. 30s. [default: 5s]
    #[arg(short = 'd', long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Messages per second per connection (15, 15/s, 1/10s); 0 holds idle connections. [default: 2]
    #[arg(long)]
    pub rate: Option<String>,
    /// Messages per second for the whole run, split over the connections (overrides --rate).
    #[arg(long)]
    pub total_rate: Option<String>,
    /// Receivers: random, ring, hot, self-node, cross-node, room (with --rooms and --room-size). [default: random]
    #[arg(long)]
    pub pattern: Option<String>,
    /// With --pattern room: how many rooms. Users are --rooms x --room-size (--clients may be left out).
    #[arg(long)]
    pub rooms: Option<u32>,
    /// With --pattern room: users per room. Each connection joins its user's room and sends
    /// room_message; every other member connection must get each message once, the sender none.
    #[arg(long)]
    pub room_size: Option<u32>,
    /// Room names are PREFIX<index>. [default: load-room-]
    #[arg(long)]
    pub room_prefix: Option<String>,
    /// Also publish through the server's HTTP API (POST /api/publish) at this many messages per
    /// second for the whole run, to random users (or rooms with --pattern room); audited with the
    /// rest. Needs --api-key.
    #[arg(long)]
    pub api_publish: Option<String>,
    /// Bearer key of the server's HTTP API.
    #[arg(long, env = "WSS_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Receivers of the hot pattern. [default: 10]
    #[arg(long)]
    pub hot_users: Option<u32>,
    /// Bytes of padding per message payload. [default: 32]
    #[arg(long)]
    pub payload_size: Option<usize>,
    /// Heartbeat frame interval per connection. [default: 30s]
    #[arg(long, value_parser = parse_duration)]
    pub heartbeat: Option<Duration>,
    /// latency_report frame interval per connection; 0s turns them off. [default: 10s]
    #[arg(long, value_parser = parse_duration)]
    pub latency_report: Option<Duration>,
    /// Local source addresses for client sockets, e.g. 127.0.0.2-127.0.0.9 (more than ~28k
    /// connections to one target need several).
    #[arg(long)]
    pub source_ip: Option<String>,
    /// Reconnect closed connections (1012 drain, 4008, errors) with jittered backoff.
    #[arg(long)]
    pub reconnect: bool,
    /// With --reconnect, against a server with history: reconnect with since=<last offset>&epoch=<epoch>.
    /// Messages sent while a connection was down are then owed to it (replayed), and any
    /// duplicate is a failure.
    #[arg(long, requires = "reconnect")]
    pub resume: bool,
    /// After the last send, wait up to this long for messages in flight. [default: 2s]
    #[arg(long, value_parser = parse_duration)]
    pub drain: Option<Duration>,
    /// User ids are PREFIX<index>. [default: load-]
    #[arg(long)]
    pub user_prefix: Option<String>,
    /// Per connection attempt (TCP + handshake). [default: 10s]
    #[arg(long, value_parser = parse_duration)]
    pub connect_timeout: Option<Duration>,
    /// Run shard I of N (1-based): N processes split the users without overlap; merge their
    /// --json reports with `wsctl load merge`. Receivers are picked within the shard.
    #[arg(long)]
    pub shard: Option<String>,
    /// Every chat send carries an id; the server's ack or error is matched: the report separates
    /// sends the server refused (by code) or found offline from those lost after it accepted
    /// them, and gives the ack latency and the sends never answered.
    #[arg(long)]
    pub ack: bool,
    /// Write the full report (every figure, histograms serialized, per-second series) to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the per-second series as CSV to this file.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Threshold, e.g. 'p99<50ms' or 'lost=0' (repeatable); any failure exits with 99.
    #[arg(long = "assert")]
    pub asserts: Vec<String>,
    /// No live progress line.
    #[arg(long)]
    pub quiet: bool,
}

pub async fn run(args: LoadArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        Some(LoadCommand::Merge(m)) => merge(m),
        Some(LoadCommand::Plot(p)) => plot(p),
        None => run_load(args.run).await,
    }
}

/// The profile's values, then the flags', into a config.
fn build_config(args: &RunArgs, profile: &Profile, file: &Path) -> anyhow::Result<(LoadConfig, Vec<String>)> {
    let mut urls = args.urls.clone();
    if urls.is_empty() {
        urls = profile.url.clone();
    }
    let mut c = LoadConfig::new(urls);
    let p = profile;
    macro_rules! set {
        ($field:ident, $flag:expr, $prof:expr) => {
            if let Some(v) = $flag {
                c.$field = v;
            } else if let Some(v) = $prof {
                c.$field = v;
            }
        };
    }
    let dur = |s: &str| humantime::parse_duration(s).map_err(|_| wsctl::load::ConfigError::Invalid { what: "duration", value: s.to_string(), hint: "e.g. 500ms, 30s, 2m" });
    set!(clients, args.clients, p.clients);
    set!(connections_per_user, args.connections_per_user, p.connections_per_user);
    set!(ramp_per_s, args.ramp.as_deref().map(parse_rate).transpose()?, p.field(file, "ramp", &p.ramp, parse_rate)?);
    set!(duration, args.duration, p.field(file, "duration", &p.duration, dur)?);
    set!(hot_users, args.hot_users, p.hot_users);
    set!(payload_size, args.payload_size, p.payload_size);
    set!(heartbeat, args.heartbeat, p.field(file, "heartbeat", &p.heartbeat, dur)?);
    set!(latency_report, args.latency_report, p.field(file, "latency-report", &p.latency_report, dur)?);
    set!(drain, args.drain, p.field(file, "drain", &p.drain, dur)?);
    set!(user_prefix, args.user_prefix.clone(), p.user_prefix.clone());
    set!(connect_timeout, args.connect_timeout, p.field(file, "connect-timeout", &p.connect_timeout, dur)?);
    set!(pattern, args.pattern.as_deref().map(Pattern::parse).transpose()?, p.field(file, "pattern", &p.pattern, Pattern::parse)?);
    set!(rooms, args.rooms, p.rooms);
    set!(room_size, args.room_size, p.room_size);
    set!(room_prefix, args.room_prefix.clone(), p.room_prefix.clone());
    set!(api_publish, args.api_publish.as_deref().map(parse_rate).transpose()?, p.field(file, "api-publish", &p.api_publish, parse_rate)?);
    c.api_key = args.api_key.clone();
    if c.pattern == Pattern::Room && args.clients.is_none() && p.clients.is_none() {
        // A room run's users are its rooms' members.
        c.clients = c.rooms.saturating_mul(c.room_size);
    }
    set!(source_ips, args.source_ip.as_deref().map(parse_source_ips).transpose()?, p.field(file, "source-ip", &p.source_ip, parse_source_ips)?);
    if let Some(s) = &args.shard {
        c.shard = parse_shard(s)?;
    }
    c.reconnect = args.reconnect || p.reconnect.unwrap_or(false);
    c.ack = args.ack || p.ack.unwrap_or(false);
    c.resume = args.resume || p.resume.unwrap_or(false);
    // A flag rate beats any profile rate; a total beats a per-connection rate at the same level.
    let flag_rate = match (&args.total_rate, &args.rate) {
        (Some(t), _) => Some(Rate::Total(parse_rate(t)?)),
        (None, Some(r)) => Some(Rate::PerConnection(parse_rate(r)?)),
        _ => None,
    };
    let prof_rate = match (&p.total_rate, &p.rate) {
        (Some(_), _) => p.field(file, "total-rate", &p.total_rate, parse_rate)?.map(Rate::Total),
        (None, Some(_)) => p.field(file, "rate", &p.rate, parse_rate)?.map(Rate::PerConnection),
        _ => None,
    };
    set!(rate, flag_rate, prof_rate);
    let mut asserts = p.assert.clone();
    asserts.extend(args.asserts.iter().cloned());
    Ok((c, asserts))
}

async fn run_load(args: RunArgs) -> anyhow::Result<ExitCode> {
    let fd_limit = raise_fd_limit();
    // A profile, flag or threshold that cannot work is a usage error (exit 2), before anything runs.
    let (profile, file) = match (&args.profile, args.spawn_local) {
        (Some(path), _) => (Profile::load(path).map_err(usage)?, path.clone()),
        (None, true) => (Profile::parse(SMOKE_PROFILE, Path::new("profiles/smoke.yaml (built in)"))?, PathBuf::from("profiles/smoke.yaml")),
        (None, false) => (Profile::default(), PathBuf::from("<no profile>")),
    };
    let (mut config, assert_texts) = build_config(&args, &profile, &file).map_err(usage)?;
    let asserts = assert_texts.iter().map(|a| Assertion::parse(a)).collect::<Result<Vec<_>, _>>().map_err(usage)?;

    // The embedded node, when asked for: its side of every connection is ours to count too.
    let local = CancellationToken::new();
    let mut server = None;
    let mut extra_fds = 0;
    if args.spawn_local {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("binding the embedded node")?;
        let addr = listener.local_addr()?;
        config.urls = vec![format!("ws://{addr}/ws")];
        extra_fds = config.connections();
        let shutdown = local.clone();
        server = Some(tokio::spawn(wsctl::serve(listener, wsctl::ServerConfig::embedded("local"), shutdown)));
        eprintln!("wsctl load: embedded node on ws://{addr}/ws");
    }

    let live = Live::new();
    let stop = CancellationToken::new();
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                stop.cancel();
            }
        });
    }
    let progress = (!args.quiet).then(|| spawn_progress(live.clone(), config.duration));
    let result = wsctl::load::run(config, live, stop, fd_limit, extra_fds).await;
    if let Some((bar, task)) = progress {
        task.abort();
        bar.finish_and_clear();
    }
    if let Some(server) = server {
        local.cancel();
        let _ = server.await;
    }
    let report = result.context("load run")?;
    if let Some(path) = &args.csv {
        std::fs::write(path, series_csv(&report)).with_context(|| format!("writing {}", path.display()))?;
    }
    finish(&report, &asserts, args.json.as_deref())
}

/// The per-second series as CSV: one row per second, the columns of `SeriesPoint`.
fn series_csv(r: &Report) -> String {
    let mut out = String::from("t_s,dt_s,sent,delivered,p50_ms,p99_ms,errors,errors_by_code,connections,acked_online,acked_offline,refused\n");
    for p in &r.series {
        let codes = p.errors_by_code.iter().map(|(k, v)| format!("{k}:{v}")).collect::<Vec<_>>().join(";");
        out.push_str(&format!(
            "{:.3},{:.3},{},{},{:.3},{:.3},{},\"{}\",{},{},{},{}\n",
            p.t,
            p.dt_s,
            p.sent,
            p.delivered,
            p.p50_ms,
            p.p99_ms,
            p.errors,
            codes.replace('"', "'"),
            p.connections,
            p.acked_online,
            p.acked_offline,
            p.refused
        ));
    }
    out
}

fn plot(args: PlotArgs) -> anyhow::Result<ExitCode> {
    let r = read_report(&args.file)?;
    let svg = wsctl::load::plot::svg(&r);
    std::fs::write(&args.output, svg).with_context(|| format!("writing {}", args.output.display()))?;
    Ok(ExitCode::SUCCESS)
}

fn read_report(f: &Path) -> anyhow::Result<Report> {
    let text = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a wsctl load --json report", f.display()))
}

/// Draws the summary, writes the JSON, checks the thresholds.
fn finish(report: &Report, asserts: &[Assertion], json: Option<&Path>) -> anyhow::Result<ExitCode> {
    let results: Vec<AssertionResult> = asserts.iter().map(|a| a.check(report)).collect();
    println!("{}", summary(report));
    if !results.is_empty() {
        let mut t = Table::new();
        t.load_preset(UTF8_FULL_CONDENSED).set_header(vec!["threshold", "actual", "result"]);
        for r in &results {
            t.add_row(vec![Cell::new(&r.assertion), Cell::new(format!("{:.3}", r.actual)), Cell::new(if r.passed { "ok" } else { "FAILED" })]);
        }
        println!("{t}");
    }
    if let Some(path) = json {
        #[derive(serde::Serialize)]
        struct Out<'a> {
            #[serde(flatten)]
            report: &'a Report,
            assertions: &'a [AssertionResult],
        }
        let text = serde_json::to_string_pretty(&Out { report, assertions: &results })?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    if results.iter().any(|r| !r.passed) {
        eprintln!("wsctl load: {} of {} thresholds failed", results.iter().filter(|r| !r.passed).count(), results.len());
        return Ok(ExitCode::from(THRESHOLD_FAILED));
    }
    if report.diagnosis == Diagnosis::NothingRecognized {
        eprintln!("wsctl load: {} frames arrived and none was a message of this run: nothing was measured (see \"frames\" above)", report.frames.received);
        return Ok(ExitCode::from(NOTHING_RECOGNIZED));
    }
    Ok(ExitCode::SUCCESS)
}

fn merge(args: MergeArgs) -> anyhow::Result<ExitCode> {
    let asserts = args.asserts.iter().map(|a| Assertion::parse(a)).collect::<Result<Vec<_>, _>>().map_err(usage)?;
    let mut reports = Vec::new();
    for f in &args.files {
        let r = read_report(f)?;
        r.check_histograms().with_context(|| format!("{} is not a usable report", f.display()))?;
        reports.push(r);
    }
    let merged = Report::merge(&reports)?;
    finish(&merged, &asserts, args.json.as_deref())
}

fn spawn_progress(live: Arc<Live>, duration: Duration) -> (ProgressBar, tokio::task::JoinHandle<()>) {
    let bar = ProgressBar::new_spinner();
    bar.set_style(ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}").unwrap_or_else(|_| ProgressStyle::default_spinner()));
    bar.enable_steady_tick(Duration::from_millis(200));
    let b = bar.clone();
    let task = tokio::spawn(async move {
        let mut last = live.snapshot();
        let mut tick = tokio::time::interval(PROGRESS_TICK);
        tick.tick().await;
        loop {
            tick.tick().await;
            let s = live.snapshot();
            let rate = (s.delivered - last.delivered) as f64 / PROGRESS_TICK.as_secs_f64();
            let phase = match s.phase {
                Phase::Connecting => "connecting".to_string(),
                Phase::Running => format!("running ({}s of traffic)", duration.as_secs()),
                Phase::Draining => "draining".to_string(),
                Phase::Closing => "closing".to_string(),
                _ => "done".to_string(),
            };
            let p99 = s.window_p99_ms.map_or("-".to_string(), |v| format!("{v:.1} ms"));
            b.set_message(format!(
                "{phase}  connected {}/{}  {rate:.0} msgs/s  p99 {p99}  sent {}  delivered {}  errors {}  reconnects {}",
                s.connected, s.target, s.sent, s.delivered, s.errors, s.reconnects
            ));
            last = s;
        }
    });
    (bar, task)
}

fn summary(r: &Report) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED).set_header(vec!["", "figure"]);
    let c = &r.connections;
    let m = &r.messages;
    let a = &r.audit;
    let pct = |p: &wsctl::load::Percentiles| {
        format!("p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2} ms  (n={})", p.p50_ms, p.p90_ms, p.p99_ms, p.p999_ms, p.max_ms, p.count)
    };
    let closes = if c.unexpected_closes.is_empty() {
        "none".to_string()
    } else {
        c.unexpected_closes.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", ")
    };
    let errors = if m.server_errors.is_empty() {
        "none".to_string()
    } else {
        m.server_errors
            .iter()
            .map(|(k, v)| format!("{k}: {v} ({})", m.server_error_samples.get(k).map_or("", String::as_str)))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let mut rows: Vec<(&str, String)> = vec![
        ("run", format!("{} users x {} conn, {} pattern, {:.2} msgs/s per conn, shards {}", r.run.clients, r.run.connections_per_user, r.run.pattern, r.run.rate_per_connection, r.run.shards.join(","))),
        ("connections", format!("{} target, {} up at start, {} peak, {} never connected", c.target, c.connected_at_start, c.peak, c.never_connected)),
        ("connect time", pct(&r.connect_ms)),
        ("memory (this process)", c.rss_kib_per_connection.map_or("-".to_string(), |k| format!("{k:.1} KiB RSS per idle connection"))),
        ("failed attempts / reconnects", format!("{} / {}", c.failed_attempts, c.reconnects)),
        ("unexpected closes", closes),
        ("connect errors", if c.connect_errors.is_empty() { "none".to_string() } else { c.connect_errors.iter().map(|(k, v)| format!("{v} x {k}")).collect::<Vec<_>>().join("\n") }),
        ("our closes (1000)", format!("{} sent, {} answered by the server", c.closed_by_us, c.clean_closes)),
        ("messages", format!("{} sent, {} delivered in {:.1} s", m.sent, m.delivered, m.traffic_seconds)),
        ("throughput", format!("{:.0} sent/s, {:.0} delivered/s", m.sent_per_s, m.delivered_per_s)),
        ("latency (end to end)", pct(&r.latency_ms)),
    ];
    match r.diagnosis {
        Diagnosis::NothingArrived => rows.push(("audit", format!("NOT MEASURED: {} messages sent and not one frame came back from the server", m.sent))),
        Diagnosis::NothingRecognized => rows.push(("audit", "NOT MEASURED: frames came back, but none was a message of this run (see frames)".to_string())),
        _ => rows.push(("audit", audit_row(r))),
    }
    rows.push(("frames", frames_row(&r.frames)));
    if let Some(k) = &r.acks {
        rows.push(("acks (--ack)", acks_row(k)));
    }
    if let Some(k) = &r.api {
        rows.push(("API publishes", api_row(k)));
    }
    rows.extend([
        ("offline", format!("{} sent to offline users ({} arrived anyway), {} owed to reconnecting connections, {} sends missed", a.sent_to_offline, a.offline_delivered, a.missed_while_offline, m.missed_sends)),
        ("late sends", format!("{} (sender lag, counted in latency)", m.late_sends)),
        ("heartbeats / latency reports", format!("{} / {}", m.heartbeats, m.latency_reports)),
        ("server errors", errors),
    ]);
    for (k, v) in rows {
        t.add_row(vec![Cell::new(k), Cell::new(v)]);
    }
    t
}

fn audit_row(r: &Report) -> String {
    let a = &r.audit;
    let mut out = format!("{} owed, {} received, {} lost, {} duplicated, {} reordered", a.expected, a.received, a.lost, a.duplicated, a.reordered);
    if a.refused_missing > 0 {
        out.push_str(&format!("; {} refused or acked offline (the sender was told: not lost)", a.refused_missing));
    }
    if r.run.pattern == "room" {
        out.push_str(&format!("\n{} echoed back to their sender (must be 0)", a.echoed));
    }
    out
}

fn api_row(k: &wsctl::load::ApiStats) -> String {
    let map = |m: &std::collections::BTreeMap<String, u64>| if m.is_empty() { "none".to_string() } else { m.iter().map(|(c, n)| format!("{c}: {n}")).collect::<Vec<_>>().join(", ") };
    let l = &k.latency_ms;
    format!(
        "{} of {:.1}/s made: {} reached someone, {} no one, refused {}, failed {}, {} skipped (too many waiting), {} untracked\n\
         request latency p50 {:.2}  p99 {:.2}  max {:.2} ms",
        k.sent, k.rate, k.online, k.offline, map(&k.refused), map(&k.failed), k.skipped, k.untracked, l.p50_ms, l.p99_ms, l.max_ms
    )
}

fn frames_row(f: &wsctl::load::FrameStats) -> String {
    let types = f.by_type.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", ");
    let mut out = format!("{} received ({}), {} with a stamp of this run", f.received, if types.is_empty() { "none" } else { &types }, f.stamped);
    for (why, n) in &f.unrecognized {
        out.push_str(&format!("\n{n} not counted: {why}"));
        if let Some(sample) = f.samples.get(why) {
            out.push_str(&format!("\n  e.g. {sample}"));
        }
    }
    out
}

fn acks_row(k: &wsctl::load::AckStats) -> String {
    let refused = if k.refused.is_empty() { "none".to_string() } else { k.refused.iter().map(|(c, n)| format!("{c}: {n}")).collect::<Vec<_>>().join(", ") };
    let l = &k.latency_ms;
    format!(
        "{} sent with an id: {} online, {} offline, refused {refused}\n\
         {} unanswered ({} more on connections that closed), {} answers for unknown ids\n\
         LOST AFTER ACK: {} (accepted online, never delivered to a receiver connection that was up)\n\
         {} refused/offline/unanswered sends arrived anyway, {} untracked\n\
         ack latency p50 {:.2}  p99 {:.2}  max {:.2} ms (n={})",
        k.sent_with_id, k.online, k.offline, k.unanswered, k.unanswered_closed, k.unknown_ids, k.lost_after_ack, k.refused_arrived, k.untracked, l.p50_ms, l.p99_ms, l.max_ms, l.count
    )
}
