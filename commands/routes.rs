//! `wsctl routes`: the five route-table subcommands. Each parses its flags, calls
//! [`wsctl::routes::admin::RouteTable`], and draws the answer as a table or JSON; progress goes
//! to stderr so `--json` output stays clean on stdout.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use indicatif::{ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;
use wsctl::routes::admin::{PurgeOptions, PurgeReport, Route, RouteTable, ServerInfo, WalkOptions, WalkProgress, DEFAULT_RATE};

use crate::cli::RedisArgs;

/// Rows per table when `list` draws a table: a screenful, printed as soon as it is read.
const LIST_TABLE_ROWS: usize = 50;
/// How often the progress bar redraws: often enough to look alive, rarely enough to cost nothing.
const PROGRESS_TICK: Duration = Duration::from_millis(200);

#[derive(Debug, Args)]
#[command(after_help = "Every subcommand walks Redis with SCAN (never KEYS), on every master of a Cluster, \
at a bounded rate (--rate).\n\
Examples:\n  REDIS_URI=redis://127.0.0.1:6379 wsctl routes servers\n  \
wsctl routes show alice\n  wsctl routes list --match 'bot-*' --stale-only --json | jq .\n  \
wsctl routes stats --json\n  wsctl routes purge --dry-run\n  wsctl routes purge --server node-7 --yes --rate 20000")]
pub struct RoutesArgs {
    #[command(subcommand)]
    pub command: RoutesCommand,
}

#[derive(Debug, Subcommand)]
pub enum RoutesCommand {
    /// The nodes: from their server_alive leases and from the server ids in route sets, with
    /// live/dead, connections, address, version, age, and how many routes name them.
    Servers(WalkArgs),
    /// Every route of one user, with its user_online TTL and whether its node is alive.
    Show(ShowArgs),
    /// Routes, as tables of 50 rows printed as they are read, or one JSON object per line (--json).
    List(ListArgs),
    /// Totals: users routed, routes, stale routes, and per node.
    Stats(WalkArgs),
    /// Remove stale routes (entries whose user_online key is gone), or every route of a dead node
    /// (--server), without ever removing a live one; route sets left empty disappear.
    Purge(PurgeArgs),
}

/// Flags of every subcommand.
#[derive(Debug, Args)]
pub struct CommonArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
    /// Print JSON on stdout instead of tables.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub settings: crate::config::ConfigFileArgs,
}

#[derive(Debug, Args)]
pub struct WalkArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Keys walked per second at most ("5000" or "5000/s"), to spare a production Redis.
    #[arg(long, default_value_t = DEFAULT_RATE, value_parser = parse_rate)]
    pub rate: u32,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The user id.
    pub user: String,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub walk: WalkArgs,
    /// Only users whose id matches this glob (Redis MATCH syntax: *, ?, [abc]).
    #[arg(long = "match", value_name = "PATTERN")]
    pub pattern: Option<String>,
    /// Only stale routes (user_online key gone).
    #[arg(long)]
    pub stale_only: bool,
    /// Stop after this many routes.
    #[arg(long)]
    pub limit: Option<u64>,
}

#[derive(Debug, Args)]
pub struct PurgeArgs {
    #[command(flatten)]
    pub walk: WalkArgs,
    /// Report what would be removed; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Remove every route of this node, stale or not. Refused while its lease
    /// (server_alive:<ID>) exists, i.e. while the node is alive.
    #[arg(long, value_name = "ID")]
    pub server: Option<String>,
    /// Do not ask for confirmation (required when stdin is not a terminal).
    #[arg(long, short = 'y')]
    pub yes: bool,
}

/// "5000", "5000/s" -> 5000; at least 1.
fn parse_rate(s: &str) -> Result<u32, String> {
    let n = s.trim().strip_suffix("/s").unwrap_or(s.trim());
    match n.parse::<u32>() {
        Ok(0) => Err(format!("invalid rate {s:?}: must be at least 1 key per second")),
        Ok(v) => Ok(v),
        Err(e) => Err(format!("invalid rate {s:?}: {e} (examples: 5000, 20000/s)")),
    }
}

pub async fn run(args: RoutesArgs) -> anyhow::Result<ExitCode> {
    let cancel = CancellationToken::new();
    // Ctrl-C stops the walk cleanly; purge still finishes its re-checks before it reports.
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_signal.cancel();
        }
    });
    match args.command {
        RoutesCommand::Servers(a) => servers(a, &cancel).await,
        RoutesCommand::Show(a) => show(a).await,
        RoutesCommand::List(a) => list(a, &cancel).await,
        RoutesCommand::Stats(a) => stats(a, &cancel).await,
        RoutesCommand::Purge(a) => purge(a, &cancel).await,
    }
}

async fn connect(common: &CommonArgs) -> anyhow::Result<RouteTable> {
    let config = common
        .redis
        .config()
        .context("no Redis given: set REDIS_URI or pass --redis-uri (e.g. redis://127.0.0.1:6379)")?;
    RouteTable::connect(&config).await.context("cannot open the route table")
}

fn progress_bar(what: &str) -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {human_pos}/{human_len} keys, {per_sec}, ETA {eta}")
            .expect("template is valid")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar.enable_steady_tick(PROGRESS_TICK);
    bar
}

fn advance(bar: &ProgressBar) -> impl FnMut(WalkProgress) + '_ {
    move |p| {
        bar.set_length(p.total);
        bar.set_position(p.keys);
    }
}

fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY).set_header(header.to_vec());
    t
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

fn age(secs: Option<u64>) -> String {
    secs.map(|s| humantime::format_duration(Duration::from_secs(s)).to_string()).unwrap_or_else(|| "-".into())
}

fn ttl(route: &Route) -> String {
    match route.online_ttl {
        None => "gone (stale)".into(),
        Some(-1) => "no TTL".into(),
        Some(s) => format!("{s}s"),
    }
}

fn servers_table(servers: &[ServerInfo]) -> Table {
    let mut t = table(&["SERVER", "STATE", "CONNECTIONS", "ADDRESS", "VERSION", "AGE", "ROUTES", "STALE"]);
    for s in servers {
        t.add_row(vec![
            s.server.clone(),
            if s.alive { "live".into() } else { "dead".into() },
            opt(&s.connections),
            opt(&s.address),
            opt(&s.version),
            age(s.age_secs),
            s.routes.to_string(),
            s.stale_routes.to_string(),
        ]);
    }
    t
}

async fn servers(args: WalkArgs, cancel: &CancellationToken) -> anyhow::Result<ExitCode> {
    let routes = connect(&args.common).await?;
    let bar = progress_bar("walking");
    let survey = routes.survey(&WalkOptions { rate: args.rate, user_pattern: None }, cancel, advance(&bar)).await;
    bar.finish_and_clear();
    let survey = survey.context("cannot list the nodes")?;
    if args.common.json {
        print_json(&serde_json::json!({ "servers": survey.servers }))?;
    } else if survey.servers.is_empty() {
        println!("no nodes: no lease and no route in Redis");
    } else {
        println!("{}", servers_table(&survey.servers));
    }
    Ok(ExitCode::SUCCESS)
}

async fn stats(args: WalkArgs, cancel: &CancellationToken) -> anyhow::Result<ExitCode> {
    let routes = connect(&args.common).await?;
    let bar = progress_bar("walking");
    let survey = routes.survey(&WalkOptions { rate: args.rate, user_pattern: None }, cancel, advance(&bar)).await;
    bar.finish_and_clear();
    let survey = survey.context("cannot count the routes")?;
    if args.common.json {
        print_json(&survey)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    t.add_row(vec!["keys walked".to_string(), survey.keys_walked.to_string()]);
    t.add_row(vec!["users routed".to_string(), survey.users.to_string()]);
    t.add_row(vec!["routes".to_string(), survey.routes.to_string()]);
    t.add_row(vec!["stale routes (user_online gone)".to_string(), survey.stale_routes.to_string()]);
    t.add_row(vec!["routes to dead nodes (no lease)".to_string(), survey.dead_node_routes.to_string()]);
    println!("{t}");
    if !survey.servers.is_empty() {
        println!("{}", servers_table(&survey.servers));
    }
    if cancel.is_cancelled() {
        eprintln!("interrupted: totals cover only the keys walked");
    }
    Ok(ExitCode::SUCCESS)
}

async fn show(args: ShowArgs) -> anyhow::Result<ExitCode> {
    let routes = connect(&args.common).await?;
    let found = routes.show(&args.user).await.with_context(|| format!("cannot read the routes of {:?}", args.user))?;
    if args.common.json {
        print_json(&serde_json::json!({ "user": args.user, "routes": found }))?;
    } else if found.is_empty() {
        println!("user {:?} has no route", args.user);
    } else {
        let mut t = table(&["SERVER", "USER_ONLINE TTL", "NODE"]);
        for r in &found {
            t.add_row(vec![r.server.clone(), ttl(r), if r.node_alive { "live".into() } else { "dead".into() }]);
        }
        println!("{t}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(args: ListArgs, cancel: &CancellationToken) -> anyhow::Result<ExitCode> {
    let routes = connect(&args.walk.common).await?;
    let json = args.walk.common.json;
    let opts = WalkOptions { rate: args.walk.rate, user_pattern: args.pattern.clone() };
    let bar = progress_bar("walking");
    let mut shown = 0u64;
    let mut rows: Vec<Route> = Vec::new();
    let mut write_err: Option<std::io::Error> = None;
    let limit = args.limit.unwrap_or(u64::MAX);
    let flush = |rows: &mut Vec<Route>, bar: &ProgressBar| -> std::io::Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut out = std::io::stdout().lock();
        if json {
            for r in rows.iter() {
                serde_json::to_writer(&mut out, r)?;
                writeln!(out)?;
            }
        } else {
            let mut t = table(&["USER", "SERVER", "USER_ONLINE TTL", "NODE"]);
            for r in rows.iter() {
                t.add_row(vec![r.user.clone(), r.server.clone(), ttl(r), if r.node_alive { "live".into() } else { "dead".into() }]);
            }
            bar.suspend(|| writeln!(out, "{t}"))?;
        }
        rows.clear();
        Ok(())
    };
    let walked = routes
        .walk_routes(&opts, cancel, advance(&bar), |page| {
            for r in page.into_iter().filter(|r| !args.stale_only || r.is_stale()) {
                if shown >= limit {
                    break;
                }
                shown += 1;
                rows.push(r);
                if json || rows.len() >= LIST_TABLE_ROWS {
                    if let Err(e) = flush(&mut rows, &bar) {
                        write_err = Some(e);
                        return false;
                    }
                }
            }
            shown < limit
        })
        .await;
    bar.finish_and_clear();
    if let Some(e) = write_err {
        return Err(e).context("cannot write the list");
    }
    walked.context("cannot list the routes")?;
    flush(&mut rows, &bar).context("cannot write the list")?;
    if !json {
        eprintln!("{shown} route(s)");
    }
    Ok(ExitCode::SUCCESS)
}

async fn purge(args: PurgeArgs, cancel: &CancellationToken) -> anyhow::Result<ExitCode> {
    if let Some(s) = &args.server {
        if s.trim().is_empty() {
            return Err(crate::util::usage(anyhow::anyhow!("invalid --server {s:?}: must not be empty")));
        }
    }
    let routes = connect(&args.walk.common).await?;
    let what = match &args.server {
        Some(s) => format!("every route of node {s:?} (refused if it is alive)"),
        None => "every stale route (entries whose user_online key is gone)".to_string(),
    };
    if !args.yes && !args.dry_run {
        if !std::io::stdin().is_terminal() {
            anyhow::bail!(
                "refusing to purge without --yes: stdin is not a terminal, so nobody can confirm \
                 (add --yes, or look first with --dry-run)"
            );
        }
        let keys = routes.key_count().await.context("cannot count the keys")?;
        eprint!(
            "This removes {what} from Redis, walking {keys} keys at up to {} keys/s. Continue? [y/N] ",
            args.walk.rate
        );
        std::io::stderr().flush().ok();
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer).context("cannot read the answer")?;
        if !matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
            eprintln!("nothing removed");
            return Ok(ExitCode::FAILURE);
        }
    }
    let opts = PurgeOptions {
        walk: WalkOptions { rate: args.walk.rate, user_pattern: None },
        dry_run: args.dry_run,
        server: args.server.clone(),
    };
    let bar = progress_bar(if args.dry_run { "looking (dry run)" } else { "purging" });
    let report = routes.purge(&opts, cancel, advance(&bar)).await;
    bar.finish_and_clear();
    let report = report.context("purge failed")?;
    if args.walk.common.json {
        print_json(&report)?;
    } else {
        print_report(&report)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn print_report(r: &PurgeReport) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let verb = if r.dry_run { "would remove" } else { "removed" };
    for route in &r.routes {
        writeln!(out, "{verb}\t{}\t{}", route.user, route.server)?;
    }
    if r.truncated {
        writeln!(out, "... list cut at {} routes", r.routes.len())?;
    }
    writeln!(
        out,
        "{}: {verb} {} route(s) from {} route set(s); {} set(s) {}; {} put back (went live meanwhile); {} keys in {:.1}s",
        if r.dry_run { "dry run" } else { "purge" },
        r.removed,
        r.route_sets,
        r.sets_deleted,
        if r.dry_run { "would be deleted" } else { "deleted" },
        r.restored,
        r.keys_walked,
        r.elapsed_ms as f64 / 1000.0
    )?;
    if let Some(server) = &r.server {
        writeln!(out, "{verb} {server}'s member count from {} room(s)", r.room_fields)?;
    }
    if r.interrupted {
        writeln!(out, "interrupted before the end of the keyspace")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_rate;

    #[test]
    fn rates_accept_per_second_suffix_and_reject_zero() {
        assert_eq!(parse_rate("5000"), Ok(5000));
        assert_eq!(parse_rate("20000/s"), Ok(20000));
        assert!(parse_rate("0").unwrap_err().contains("\"0\""));
        assert!(parse_rate("fast").unwrap_err().contains("\"fast\""));
    }
}
