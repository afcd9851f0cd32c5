//! The `wsctl` command line: help texts with examples on every subcommand, `--version` with the
//! commit, the checked-in man pages and completions, colour only on a terminal, errors that say
//! what to do, and the exit codes.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long the binary may take to log its first line (a debug build on a busy machine).
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The one command that regenerates man/ and completions/.
const REGENERATE: &str = "cargo run -q -- generate .";

fn wsctl(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_wsctl")).args(args).env_remove("WSCTL_CONFIG").output().expect("wsctl runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Subcommand names listed under "Commands:" in a help text (without `help`).
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        // Names sit at two spaces; deeper lines continue a wrapped description.
        .filter(|l| !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| *n != "help")
        .map(str::to_string)
        .collect()
}

#[test]
fn every_subcommand_help_ends_with_examples() {
    let mut todo = vec![Vec::<String>::new()];
    let mut seen = 0;
    while let Some(path) = todo.pop() {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let out = wsctl(&args);
        assert!(out.status.success(), "wsctl {}", args.join(" "));
        let help = text(&out.stdout);
        let tail = help.rsplit_once("Examples:").map(|(_, t)| t).unwrap_or_else(|| panic!("`wsctl {}` has no Examples: section:\n{help}", args.join(" ")));
        assert!(tail.lines().filter(|l| l.trim_start().starts_with("wsctl") || l.contains(" wsctl ")).count() >= 1, "examples of wsctl {}:\n{tail}", path.join(" "));
        for sub in subcommands(&help) {
            todo.push(path.iter().cloned().chain([sub]).collect());
        }
        seen += 1;
    }
    assert!(seen >= 14, "walked {seen} commands");
}

#[test]
fn every_subcommand_explains_itself() {
    for sub in ["serve", "load", "routes", "metrics", "config"] {
        let out = wsctl(&[sub, "--help"]);
        assert!(out.status.success(), "{sub} --help");
        assert!(out.stdout.len() > 200, "{sub} --help is too thin:\n{}", text(&out.stdout));
    }
    let serve = text(&wsctl(&["serve", "--help"]).stdout);
    for flag in ["WSS_PORT", "REDIS_URI", "WSS_SERVER_ID", "--pubsub", "--send-queue", "--idle-timeout", "--config", "--print-config"] {
        assert!(serve.contains(flag), "serve --help mentions {flag}");
    }
}

#[test]
fn version_names_the_commit() {
    let out = text(&wsctl(&["--version"]).stdout);
    let commit = Command::new("git").args(["rev-parse", "--short", "HEAD"]).current_dir(env!("CARGO_MANIFEST_DIR")).output().ok();
    let commit = commit.filter(|o| o.status.success()).map(|o| text(&o.stdout).trim().to_string()).unwrap_or_else(|| "unknown".into());
    assert_eq!(out.trim(), format!("wsctl {} ({commit})", env!("CARGO_PKG_VERSION")));
}

/// Every file under `dir`, by name.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let Ok(entries) = std::fs::read_dir(dir) else { return BTreeMap::new() };
    entries.map(|e| e.unwrap().path()).map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap())).collect()
}

#[test]
fn checked_in_man_pages_and_completions_match_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let out = wsctl(&["generate", tmp.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for dir in ["man", "completions"] {
        let (fresh, checked_in) = (files(&tmp.path().join(dir)), files(&root.join(dir)));
        assert!(fresh.len() >= 3, "generate wrote {dir}/");
        let names = |m: &BTreeMap<String, Vec<u8>>| m.keys().cloned().collect::<Vec<_>>();
        assert_eq!(names(&checked_in), names(&fresh), "{dir}/ lists other files than the CLI has: regenerate with `{REGENERATE}`");
        for (name, bytes) in &fresh {
            assert!(checked_in[name] == *bytes, "{dir}/{name} is out of date: regenerate with `{REGENERATE}`");
        }
    }
    // `wsctl completions SHELL` prints what is checked in.
    let bash = wsctl(&["completions", "bash"]);
    assert_eq!(bash.stdout, std::fs::read(root.join("completions/wsctl.bash")).unwrap());
}

/// `wsctl serve` on a free loopback port, alone (no Redis, no settings file), its logs on a pipe;
/// `env` adjusts its environment. Returns the port and the child.
fn serve_logging_to_a_pipe(env: impl FnOnce(&mut Command) -> &mut Command) -> (u16, std::process::Child) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wsctl"));
    cmd.args(["serve", "--bind", "127.0.0.1", "--port", &port.to_string(), "--drain-timeout", "1s"])
        .env_remove("REDIS_URI")
        .env_remove("WSCTL_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    (port, env(&mut cmd).spawn().unwrap())
}

#[test]
fn logs_to_a_pipe_carry_no_colour() {
    let (_, mut child) = serve_logging_to_a_pipe(|c| c.env_remove("NO_COLOR"));
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let started = Instant::now();
    let mut log = String::new();
    while let Some(Ok(line)) = lines.next() {
        log.push_str(&line);
        log.push('\n');
        if line.contains("listening") || started.elapsed() > START_TIMEOUT {
            break;
        }
    }
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    for line in lines.map_while(Result::ok) {
        log.push_str(&line);
        log.push('\n');
    }
    assert!(child.wait().unwrap().success(), "SIGTERM drains and exits 0:\n{log}");
    assert!(log.contains("INFO"), "serve logged:\n{log}");
    assert!(!log.contains("\x1b["), "ANSI escapes in piped logs:\n{log:?}");
}

/// A log reader that goes away (a log shipper restarting, `wsctl serve 2>&1 | head`) must not take
/// the node with it: logging to a closed pipe used to panic (exit 101) on the next line. The node
/// keeps serving and still drains and exits 0 on SIGTERM.
#[test]
fn a_closed_log_pipe_does_not_stop_the_node() {
    let (port, mut child) = serve_logging_to_a_pipe(|c| c.env("RUST_LOG", "debug").env_remove("JWT_SECRET"));
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let started = Instant::now();
    while let Some(Ok(line)) = lines.next() {
        if line.contains("admission limits") || started.elapsed() > START_TIMEOUT {
            break;
        }
    }
    drop(lines);
    // Requests make the node log (at debug) into the closed pipe.
    for _ in 0..3 {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("the node still serves after its log reader left");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        use std::io::{Read, Write};
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut resp = String::new();
        let _ = s.read_to_string(&mut resp);
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp:?}");
    }
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no exit within 10 s of SIGTERM with the log pipe closed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "SIGTERM drains and exits 0 with its log pipe closed: {status}");
}

#[test]
fn an_unreachable_redis_says_what_to_do() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out = wsctl(&["routes", "servers", "--redis-uri", &format!("redis://app:s3cret@127.0.0.1:{port}")]);
    assert_eq!(out.status.code(), Some(1), "a failure, not a usage error");
    let err = text(&out.stderr);
    assert!(err.contains(&format!("cannot reach Redis at redis://app:***@127.0.0.1:{port}")), "{err}");
    assert!(err.contains("is it running") && err.contains("REDIS_URI") && err.contains("--redis-uri"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");
}

#[test]
fn exit_codes_follow_the_table() {
    assert_eq!(wsctl(&["serve", "--no-such-flag"]).status.code(), Some(2), "usage");
    assert_eq!(wsctl(&["serve", "--port", "notaport"]).status.code(), Some(2), "usage");
    assert_eq!(wsctl(&["--version"]).status.code(), Some(0));
    // Values that parse but cannot work are usage errors too, found before anything runs.
    for bad in [
        &["serve", "--header-timeout", "0s"][..],
        &["serve", "--rate-limit=-1"],
        &["serve", "--max-frame", "10"],
        &["serve", "--jwt-secret", " "],
        &["serve", "--bind", "127.0.0.1", "--port", "0", "--server-id", "a b"],
        &["serve", "--bind", "127.0.0.1", "--port", "0", "--history"],
        &["metrics", "tail", "--prometheus", "ftp://x/metrics", "--once"],
        &["token", "--user", "alice", "--secret", "short"],
        &["load", "--url", "ws://127.0.0.1:9/ws", "--assert", "latency<5"],
    ] {
        let out = wsctl(bad);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", text(&out.stderr));
    }
    // A failure: the port is taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = wsctl(&["serve", "--bind", "127.0.0.1", "--port", &port]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    // The root --help lists every code.
    let help = text(&wsctl(&["--help"]).stdout);
    for code in ["0 ok", "1 failure", "2 usage", "3 `wsctl load`", "99 a load"] {
        assert!(help.contains(code), "{code:?} in --help:\n{help}");
    }
}

/// How long the tour may take: ~15 s of steps, with room for a debug build on a busy machine.
const TOUR_TIMEOUT: &str = "90";

#[test]
fn the_readme_tour_runs() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/tour");
    let out = Command::new("timeout")
        .args(["--signal=TERM", TOUR_TIMEOUT])
        .arg(&script)
        .env("WSCTL", env!("CARGO_BIN_EXE_wsctl"))
        .env_remove("REDIS_URI")
        .env_remove("WSCTL_CONFIG")
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "scripts/tour failed:\n{stdout}\n{}", text(&out.stderr));
    for step in ["$ wsctl load", "$ wsctl routes servers", "$ wsctl routes show load-1", "$ wsctl metrics tail", "tour: every step passed"] {
        assert!(stdout.contains(step), "the tour shows {step:?}:\n{stdout}");
    }
}
