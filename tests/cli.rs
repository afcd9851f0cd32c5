//! The `wsctl` command line: help texts and the shell completions checked into completions/.

use std::process::Command;

fn wsctl(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_wsctl")).args(args).output().expect("wsctl runs")
}

#[test]
fn checked_in_completions_match_the_cli() {
    for (shell, file) in [("bash", "wsctl.bash"), ("zsh", "_wsctl"), ("fish", "wsctl.fish")] {
        let out = wsctl(&["completions", shell]);
        assert!(out.status.success());
        let path = format!("{}/completions/{file}", env!("CARGO_MANIFEST_DIR"));
        let checked_in = std::fs::read(&path).unwrap_or_default();
        assert!(
            checked_in == out.stdout,
            "{path} is out of date: regenerate with `cargo run -q -- completions {shell} > completions/{file}`"
        );
    }
}

#[test]
fn every_subcommand_explains_itself() {
    for sub in ["serve", "load", "routes", "metrics"] {
        let out = wsctl(&[sub, "--help"]);
        assert!(out.status.success(), "{sub} --help");
        assert!(out.stdout.len() > 200, "{sub} --help is too thin:\n{}", String::from_utf8_lossy(&out.stdout));
    }
    let serve = String::from_utf8_lossy(&wsctl(&["serve", "--help"]).stdout).into_owned();
    for flag in ["WSS_PORT", "REDIS_URI", "WSS_SERVER_ID", "--pubsub", "--send-queue", "--idle-timeout"] {
        assert!(serve.contains(flag), "serve --help mentions {flag}");
    }
}
