//! Embeds the git commit in `wsctl --version` (WSCTL_GIT_COMMIT): `git rev-parse --short HEAD`,
//! or "unknown" outside a git checkout (a crate tarball, a Docker context without .git).

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

fn main() {
    let commit = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=WSCTL_GIT_COMMIT={commit}");
    // Rebuild when HEAD moves: HEAD itself (checkout) and the ref it names (commit). --git-path
    // resolves both correctly inside a worktree, whose HEAD is not under ./.git.
    // A path that does not exist would make cargo rerun this script on every build: skip those
    // (a packed ref lives in packed-refs).
    let watched = [Some("HEAD".to_string()), git(&["symbolic-ref", "-q", "HEAD"]), Some("packed-refs".to_string())];
    for path in watched.into_iter().flatten() {
        match git(&["rev-parse", "--git-path", &path]) {
            Some(p) if std::path::Path::new(&p).exists() => println!("cargo:rerun-if-changed={p}"),
            _ => {}
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
