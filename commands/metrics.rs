//! `wsctl metrics tail`: a live table of the fleet, read from CloudWatch (GetMetricData) or
//! scraped from the nodes' /metrics. The engine (wsctl::tail) returns snapshots; this
//! file validates the flags and draws them: a redrawn table on a terminal, appended plain tables
//! when piped, one JSON object per line with --json.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use comfy_table::{presets, CellAlignment, Table};
use wsctl::metrics::cloudwatch::{self, ClientOptions, DEFAULT_NAMESPACE};
use wsctl::tail::cloudwatch::{ReadQuery, Reader};
use wsctl::tail::{CloudWatchTail, PrometheusTail, Row, TailSnapshot};

use crate::util::{parse_duration, usage};

#[derive(Debug, Args)]
pub struct MetricsArgs {
    #[command(subcommand)]
    pub command: MetricsCommand,
}

#[derive(Debug, Subcommand)]
pub enum MetricsCommand {
    /// Watch the fleet live: one row per server and a fleet total, refreshed every period.
    Tail(TailArgs),
}

/// The CloudWatch-only flags, refused together with --prometheus.
const CLOUDWATCH_ONLY: [&str; 5] = ["since", "server", "namespace", "region", "endpoint"];
/// Refresh period when scraping nodes directly: often enough to see a load test move.
const PROMETHEUS_PERIOD: Duration = Duration::from_secs(5);
/// Refresh (and aggregation) period for CloudWatch: the nodes' default push interval, so every
/// bucket holds one push.
const CLOUDWATCH_PERIOD: Duration = Duration::from_secs(60);

#[derive(Debug, Args)]
#[command(after_help = "Counters are shown per second over the period (CloudWatch: the latest bucket with data; \
Prometheus: between two scrapes). Keep --period at or above the nodes' --cloudwatch-interval.\n\
Examples:\n  wsctl metrics tail --region eu-west-1\n  wsctl metrics tail --since 1h --period 5m --server node-a\n  \
wsctl metrics tail --endpoint http://127.0.0.1:5000 --region us-east-1 --once --json\n  \
wsctl metrics tail --prometheus http://10.0.0.5:8081/metrics --prometheus http://10.0.0.6:8081/metrics")]
pub struct TailArgs {
    /// Scrape this node's Prometheus endpoint instead of reading CloudWatch (repeatable). No AWS needed.
    #[arg(long, value_name = "URL", conflicts_with_all = CLOUDWATCH_ONLY)]
    pub prometheus: Vec<String>,
    /// How far back to read CloudWatch (the sparkline covers the most recent 16 periods of it).
    #[arg(long, default_value = "15m", value_parser = parse_duration)]
    pub since: Duration,
    /// Refresh period; for CloudWatch also the aggregation period (1s, 5s, 10s, 30s or a multiple
    /// of 60s). Default: 60s for CloudWatch, 5s with --prometheus.
    #[arg(long, value_parser = parse_duration)]
    pub period: Option<Duration>,
    /// Only this ServerID (default: every server found in the namespace).
    #[arg(long, value_name = "ID")]
    pub server: Option<String>,
    /// CloudWatch namespace the nodes publish to.
    #[arg(long, default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// AWS region (default: from AWS_REGION / the profile; us-east-1 with --endpoint).
    #[arg(long)]
    pub region: Option<String>,
    /// A CloudWatch-compatible endpoint URL (e.g. moto_server) instead of AWS's.
    #[arg(long, env = "WSS_CLOUDWATCH_ENDPOINT")]
    pub endpoint: Option<String>,
    /// Print one snapshot and exit (with --prometheus: two scrapes one period apart, for rates).
    #[arg(long)]
    pub once: bool,
    /// One JSON object per snapshot, one per line.
    #[arg(long)]
    pub json: bool,
    /// Stop after this many snapshots (default: until Ctrl-C).
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    #[command(flatten)]
    pub settings: crate::config::ConfigFileArgs,
}

/// The Prometheus state is boxed: it is large, and the enum is as large as its largest case.
enum Source {
    CloudWatch(CloudWatchTail),
    Prometheus(Box<PrometheusTail>),
}

impl Source {
    async fn sample(&mut self) -> anyhow::Result<TailSnapshot> {
        match self {
            Source::CloudWatch(t) => t.sample().await.context("reading CloudWatch"),
            Source::Prometheus(t) => t.sample().await.context("scraping"),
        }
    }
}

pub async fn run(args: MetricsArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        MetricsCommand::Tail(a) => tail(a).await,
    }
}

fn validate_period(p: Duration) -> anyhow::Result<()> {
    let s = p.as_secs();
    if p.subsec_nanos() != 0 || !(matches!(s, 1 | 5 | 10 | 30) || (s > 0 && s % 60 == 0)) {
        anyhow::bail!("--period for CloudWatch must be 1s, 5s, 10s, 30s or a multiple of 60s, got {}", humantime::format_duration(p));
    }
    Ok(())
}

async fn tail(args: TailArgs) -> anyhow::Result<ExitCode> {
    let prometheus = !args.prometheus.is_empty();
    let period = args.period.unwrap_or(if prometheus { PROMETHEUS_PERIOD } else { CLOUDWATCH_PERIOD });
    if period.is_zero() {
        return Err(usage(anyhow::anyhow!("--period must be positive")));
    }
    let mut source = if prometheus {
        for u in &args.prometheus {
            if url::Url::parse(u).map_or(true, |p| p.scheme() != "http" || p.host_str().is_none()) {
                return Err(usage(anyhow::anyhow!("--prometheus wants http://host:port/metrics, got {u:?}")));
            }
        }
        Source::Prometheus(Box::new(PrometheusTail::new(args.prometheus.clone())))
    } else {
        validate_period(period).map_err(usage)?;
        if args.since < period {
            let why = anyhow::anyhow!("--since ({}) must be at least --period ({})", humantime::format_duration(args.since), humantime::format_duration(period));
            return Err(usage(why));
        }
        let opts = ClientOptions { region: args.region.clone(), endpoint: args.endpoint.clone(), credentials: None };
        let client = cloudwatch::client(&opts).await?;
        let query = ReadQuery { namespace: args.namespace.clone(), server: args.server.clone(), since: args.since, period };
        Source::CloudWatch(CloudWatchTail { reader: Reader::new(client, &opts), query })
    };

    let mut out = std::io::stdout().lock();
    let live = out.is_terminal() && !args.json && !args.once;
    let limit = if args.once { 1 } else { args.count.unwrap_or(u64::MAX) };
    let mut snap = source.sample().await?;
    if prometheus && args.once {
        // Rates need a second scrape.
        tokio::time::sleep(period).await;
        snap = source.sample().await?;
    }
    let mut shown = 0u64;
    loop {
        draw(&mut out, &snap, args.json, live)?;
        shown += 1;
        if shown >= limit {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        snap = match source.sample().await {
            Ok(s) => s,
            // A refresh that fails after the first one is shown, not fatal: the fleet may recover.
            Err(e) if !args.json => {
                writeln!(out, "wsctl: {e:#}")?;
                continue;
            }
            Err(e) => return Err(e),
        };
    }
    Ok(ExitCode::SUCCESS)
}

fn draw(out: &mut impl Write, snap: &TailSnapshot, json: bool, live: bool) -> anyhow::Result<()> {
    if json {
        writeln!(out, "{}", serde_json::to_string(snap)?)?;
        return Ok(out.flush()?);
    }
    if live {
        // Clear the screen and home the cursor: the table is redrawn in place.
        write!(out, "\x1b[H\x1b[2J")?;
    }
    let window = if snap.window_s > 0.0 {
        humantime::format_duration(Duration::from_secs_f64(snap.window_s.round())).to_string()
    } else {
        "- (first scrape: totals only)".to_string()
    };
    let bucket = snap.bucket.as_deref().map(|b| format!(", bucket {b}")).unwrap_or_default();
    writeln!(out, "{}  source {}  window {window}{bucket}", snap.at, snap.source)?;
    writeln!(out, "{}", table(snap, live))?;
    Ok(out.flush()?)
}

fn num(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.decimals$}"))
}

fn table(snap: &TailSnapshot, live: bool) -> Table {
    let prom = snap.source == "prometheus";
    let errors = snap.servers.iter().any(|r| r.error.is_some());
    let mut t = Table::new();
    t.load_preset(if live { presets::UTF8_HORIZONTAL_ONLY } else { presets::ASCII_MARKDOWN });
    let mut header = vec!["SERVER", "CONN", "MSG/S", "DELIV/S", "UNEXP DISC", "AVG LAT ms"];
    if prom {
        header.extend(["P99 LAT ms", "MSGS TOTAL"]);
    }
    header.push("MSG/S TREND");
    if errors {
        header.push("ERROR");
    }
    t.set_header(header);
    let row = |r: &Row| {
        let mut cells = vec![
            r.server.clone(),
            num(r.active_connections, 0),
            num(r.messages_per_s, 1),
            num(r.delivered_per_s, 1),
            num(r.unexpected_disconnects, 0),
            num(r.avg_latency_ms, 2),
        ];
        if prom {
            cells.extend([num(r.p99_latency_ms, 2), num(r.messages_total, 0)]);
        }
        cells.push(sparkline(&r.history));
        if errors {
            cells.push(r.error.clone().unwrap_or_default());
        }
        cells
    };
    for r in &snap.servers {
        t.add_row(row(r));
    }
    t.add_row(row(&snap.fleet));
    let numeric = if prom { 1..8 } else { 1..6 };
    for i in numeric {
        if let Some(c) = t.column_mut(i) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
    t
}

/// Eight-level sparkline of `values` scaled to their maximum.
fn sparkline(values: &[f64]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let max = values.iter().copied().fold(0.0f64, f64::max);
    values
        .iter()
        .map(|v| if max <= 0.0 { BARS[0] } else { BARS[((v / max) * 7.0).round().clamp(0.0, 7.0) as usize] })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparkline_scales() {
        assert_eq!(sparkline(&[0.0, 1.0, 2.0]), "▁▅█");
        assert_eq!(sparkline(&[0.0, 0.0]), "▁▁");
    }
}
