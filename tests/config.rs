//! Settings files (`--config`, `wsctl config default|check`, `serve --print-config`), run through
//! the real binary with a cleared environment so the machine's variables cannot leak in.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn wsctl(args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wsctl"));
    cmd.args(args).env_clear().envs(env.iter().copied()).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("wsctl runs");
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn file(contents: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    f.write_all(contents.as_bytes()).unwrap();
    f
}

/// The `--print-config` row of one setting: (value, source).
fn setting(print: &str, name: &str) -> (String, String) {
    let line = print.lines().find(|l| l.split_whitespace().next() == Some(name)).unwrap_or_else(|| panic!("no {name} in:\n{print}"));
    let mut cols = line.split_whitespace().skip(1);
    let value = cols.next().unwrap().to_string();
    (value, cols.collect::<Vec<_>>().join(" "))
}

#[test]
fn config_default_round_trips_through_config_check() {
    let out = wsctl(&["config", "default"], &[], None);
    assert!(out.status.success());
    let default = text(&out.stdout);
    for key in ["port: 8081", "drain-timeout: 10s", "# redis-uri:", "# Environment: WSS_PORT", "pubsub: sharded", "cloudwatch: false"] {
        assert!(default.contains(key), "config default has {key:?}:\n{default}");
    }
    let check = wsctl(&["config", "check", "-"], &[], Some(&default));
    assert!(check.status.success(), "config default | config check -: {}", text(&check.stderr));
    // And serve reads it: every setting it holds comes from the file.
    let f = file(&default);
    let print = wsctl(&["serve", "--config", f.path().to_str().unwrap(), "--print-config"], &[], None);
    assert!(print.status.success(), "{}", text(&print.stderr));
    let print = text(&print.stdout);
    assert_eq!(setting(&print, "port"), ("8081".into(), "file".into()));
    assert_eq!(setting(&print, "server-id").1, "unset");
}

#[test]
fn config_check_reports_every_problem_with_its_line_and_field() {
    let f = file("port: 8082\nbogus: 1\nmax-frame: lots\nprometheus: x\nbind: [1, 2]\ncloudwatch: maybe\n");
    let out = wsctl(&["config", "check", f.path().to_str().unwrap()], &[], None);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    for want in [":2: bogus: unknown setting", ":3: max-frame: invalid value 'lots'", ":5: bind: expects a single value", ":6: cloudwatch: expects true or false", "4 problem(s)"] {
        assert!(err.contains(want), "{want:?} in:\n{err}");
    }
    // `prometheus` belongs to `metrics tail`: a file shared by the commands may hold it.
    assert!(!err.contains(":4: prometheus"), "{err}");
    let lines: Vec<usize> = err.lines().skip(1).filter_map(|l| l.split(':').nth(1)?.parse().ok()).collect();
    assert!(lines.windows(2).all(|w| w[0] <= w[1]), "problems in line order: {lines:?}");
    let bad_yaml = wsctl(&["config", "check", "-"], &[], Some("port: 1\nbind: [oops\n"));
    assert_eq!(bad_yaml.status.code(), Some(1));
    let err = text(&bad_yaml.stderr);
    assert!(err.contains("not a YAML mapping") && !err.contains("-:0:"), "a YAML error names its line: {err}");
}

#[test]
fn a_bad_config_file_is_a_usage_error_naming_the_line() {
    let f = file("port: 8081\nmax_frame: -5\n");
    let out = wsctl(&["serve", "--config", f.path().to_str().unwrap()], &[], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains(":2: max-frame"), "{}", text(&out.stderr));
}

#[test]
fn precedence_is_flag_then_env_then_file_then_default() {
    let f = file("port: 9001\nmax-frame: 4096\nsend_queue: 7\nserver-id: from-file\ncloudwatch: true\nlog-format: json\n");
    let path = f.path().to_str().unwrap();
    let out = wsctl(&["serve", "--config", path, "--send-queue", "9", "--print-config"], &[("WSS_MAX_FRAME", "8192")], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let print = text(&out.stdout);
    assert_eq!(setting(&print, "port"), ("9001".into(), "file".into()));
    assert_eq!(setting(&print, "max-frame"), ("8192".into(), "env WSS_MAX_FRAME".into()));
    assert_eq!(setting(&print, "send-queue"), ("9".into(), "flag".into()));
    assert_eq!(setting(&print, "server-id"), ("from-file".into(), "file".into()));
    assert_eq!(setting(&print, "cloudwatch"), ("true".into(), "file".into()));
    assert_eq!(setting(&print, "log-format"), ("json".into(), "file".into()), "a global flag");
    assert_eq!(setting(&print, "idle-timeout"), ("75s".into(), "default".into()));
    // WSCTL_CONFIG names the file when --config is absent.
    let out = wsctl(&["serve", "--print-config"], &[("WSCTL_CONFIG", path)], None);
    assert_eq!(setting(&text(&out.stdout), "port"), ("9001".into(), "file".into()));
}

#[test]
fn print_config_redacts_secrets() {
    let out = wsctl(
        &["serve", "--redis-uri", "redis://app:s3cret@10.0.0.1:6379/0", "--print-config"],
        &[("REDIS_PASSWORD", "hunter2")],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let print = text(&out.stdout);
    assert!(!print.contains("s3cret") && !print.contains("hunter2"), "{print}");
    assert_eq!(setting(&print, "redis-uri").0, "redis://app:***@10.0.0.1:6379/0");
    assert_eq!(setting(&print, "redis-password"), ("***".into(), "env REDIS_PASSWORD".into()));
}

#[test]
fn routes_read_the_same_file_and_skip_serve_only_keys() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let f = file(&format!("redis-uri: redis://127.0.0.1:{port}\nport: 8081\ndrain-timeout: 5s\n"));
    let out = wsctl(&["routes", "servers", "--config", f.path().to_str().unwrap()], &[], None);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains(&format!("redis://127.0.0.1:{port}")), "the file's redis-uri was used:\n{err}");
}
