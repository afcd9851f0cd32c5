//! Settings from a YAML file, generic over the clap definition: a file key is a flag's long name
//! (`redis-uri`, `max-frame`; snake_case accepted), and its value becomes that flag's default
//! before argv is parsed, so the precedence is flag > environment > file > built-in default for
//! every flag of every subcommand that takes `--config`, including flags added later. Also
//! `wsctl config default|check` and `wsctl serve --print-config`.
//!
//! A file may be shared by `serve`, `routes` and `metrics tail`: a key that one of them does
//! not take but another does is ignored there; a key no subcommand takes is an error.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches, Subcommand};
use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::cli::Cli;

/// Environment variable naming the settings file when `--config` is not given.
pub const CONFIG_ENV: &str = "WSCTL_CONFIG";
/// Width the help text of `config default` is wrapped to, comment marker included.
const COMMENT_WIDTH: usize = 96;
/// Flags that are about the run itself, never settings: not read from a file, not printed.
const NOT_SETTINGS: [&str; 4] = ["help", "version", "config", "print-config"];
/// Words that mark a setting as a secret in `--print-config` (besides `hide_env_values`).
const SECRET_WORDS: [&str; 4] = ["secret", "password", "key", "token"];

/// `--config`, for subcommands that read settings from a file.
#[derive(Debug, Clone, Args)]
pub struct ConfigFileArgs {
    /// YAML settings file: keys are this command's long flag names (`redis-uri: ...`). Flags and
    /// environment variables override it. `wsctl config default` prints a complete one.
    #[arg(long, env = CONFIG_ENV, value_name = "FILE", help_heading = "Settings")]
    pub config: Option<PathBuf>,
}

/// `--config` and `--print-config`, for `serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeConfigArgs {
    #[command(flatten)]
    pub file: ConfigFileArgs,
    /// Print the effective settings and where each came from (flag, env, file, default), with
    /// secrets redacted, then exit.
    #[arg(long, help_heading = "Settings")]
    pub print_config: bool,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  wsctl config default > wsctl.yaml\n  wsctl config check wsctl.yaml\n  \
wsctl config default | wsctl config check -\n  wsctl serve --config wsctl.yaml --print-config")]
pub struct ConfigArgs {
    #[command(subcommand)]
    pub command: ConfigCommand,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print a settings file for `serve` with every setting, its default and its help.
    Default,
    /// Check a settings file ("-" reads stdin): report every problem with its line and field.
    Check {
        /// The file to check, or "-" for stdin.
        file: PathBuf,
    },
}

/// What the command line and the settings file amount to.
pub struct Parsed {
    pub cli: Cli,
    pub matches: ArgMatches,
    /// Names of the subcommands run, e.g. ["routes", "servers"].
    pub path: Vec<String>,
    /// Ids of the args whose value came from the file (clap sees them as defaults).
    pub from_file: BTreeSet<String>,
}

/// One value in a settings file.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Value {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
    List(Vec<Value>),
}

impl Value {
    fn scalar(&self) -> Option<String> {
        match self {
            Value::Bool(b) => Some(b.to_string()),
            Value::Int(i) => Some(i.to_string()),
            Value::Float(f) => Some(f.to_string()),
            Value::Text(s) => Some(s.clone()),
            Value::List(_) => None,
        }
    }
}

/// A settings file read as YAML: key -> (line, value), keys normalised to kebab-case.
struct Settings {
    entries: BTreeMap<String, (usize, Option<Value>)>,
}

/// A problem with one line of a settings file.
struct Problem {
    line: usize,
    field: String,
    message: String,
}

impl Settings {
    fn parse(text: &str) -> Result<Settings, Problem> {
        let map: Option<BTreeMap<String, Spanned<Option<Value>>>> = serde_saphyr::from_str(text).map_err(|e| {
            let line = e.location().map_or(0, |l| l.line() as usize);
            let message = e.to_string().lines().next().unwrap_or_default().trim_start_matches("error: ").to_string();
            Problem { line, field: "-".to_string(), message: format!("not a YAML mapping of settings: {message}") }
        })?;
        let entries = map
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k.replace('_', "-"), (v.referenced.line() as usize, v.value)))
            .collect();
        Ok(Settings { entries })
    }
}

/// Parses argv with the settings file (from `--config` or WSCTL_CONFIG) applied as defaults.
/// Exits as clap does on help, version and usage errors; an Err is a bad settings file.
pub fn parse() -> anyhow::Result<Parsed> {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let mut cmd = crate::cli::command();
    let path = subcommand_path(&cmd, &argv);
    let takes_config = leaf(&cmd, &path).is_some_and(|c| c.get_arguments().any(|a| a.get_long() == Some("config")));
    let file = takes_config.then(|| config_path(&argv)).flatten();
    let mut from_file = BTreeSet::new();
    if let Some(file) = &file {
        let text = read(file)?;
        let settings = Settings::parse(&text).map_err(|p| anyhow::anyhow!(render(file, &[p])))?;
        let problems;
        (cmd, problems) = apply(cmd, &path, &settings, &mut from_file);
        if !problems.is_empty() {
            anyhow::bail!("{}", render(file, &problems));
        }
    }
    let matches = cmd.try_get_matches_from_mut(argv).unwrap_or_else(|e| e.exit());
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    Ok(Parsed { cli, matches, path, from_file })
}

fn read(file: &Path) -> anyhow::Result<String> {
    if file == Path::new("-") {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).context("reading settings from stdin")?;
        return Ok(s);
    }
    std::fs::read_to_string(file).with_context(|| format!("cannot read settings file {}", file.display()))
}

fn render(file: &Path, problems: &[Problem]) -> String {
    let mut out = format!("{} problem(s) in settings file {}:", problems.len(), file.display());
    for p in problems {
        let _ = write!(out, "\n  {}:{}: {}: {}", file.display(), p.line, p.field, p.message);
    }
    out
}

/// The subcommand names in argv, walking clap's tree (flags and their values are skipped).
fn subcommand_path(cmd: &Command, argv: &[OsString]) -> Vec<String> {
    let mut path = Vec::new();
    let mut cur = cmd;
    for tok in argv.iter().skip(1).filter_map(|t| t.to_str()) {
        if tok == "--" || !cur.has_subcommands() {
            break;
        }
        if let Some(sub) = cur.find_subcommand(tok) {
            path.push(sub.get_name().to_string());
            cur = sub;
        }
    }
    path
}

fn leaf<'a>(cmd: &'a Command, path: &[String]) -> Option<&'a Command> {
    path.iter().try_fold(cmd, |c, name| c.find_subcommand(name))
}

/// `--config FILE` / `--config=FILE` from argv, else WSCTL_CONFIG.
fn config_path(argv: &[OsString]) -> Option<PathBuf> {
    let mut it = argv.iter().skip(1).take_while(|t| *t != "--");
    while let Some(tok) = it.next() {
        let tok = tok.to_string_lossy();
        if tok == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(v) = tok.strip_prefix("--config=") {
            return Some(PathBuf::from(v));
        }
    }
    std::env::var_os(CONFIG_ENV).filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// Every long flag of every subcommand that takes `--config`, with the root's global flags.
fn known_elsewhere(cmd: &Command) -> BTreeSet<String> {
    fn walk(c: &Command, out: &mut BTreeSet<String>) {
        if c.get_arguments().any(|a| a.get_long() == Some("config")) {
            out.extend(c.get_arguments().filter_map(|a| a.get_long()).map(str::to_string));
        }
        c.get_subcommands().for_each(|s| walk(s, out));
    }
    let mut out = BTreeSet::new();
    walk(cmd, &mut out);
    out
}

/// Where a file key goes: an arg of the leaf subcommand, or a global arg of the root.
enum Target {
    Leaf(Arg),
    Root(Arg),
}

fn find_target(cmd: &Command, path: &[String], key: &str) -> Option<Target> {
    let by_long = |a: &&Arg| a.get_long() == Some(key) && !NOT_SETTINGS.contains(&key);
    if let Some(a) = leaf(cmd, path).and_then(|l| l.get_arguments().find(by_long)) {
        return Some(Target::Leaf(a.clone()));
    }
    cmd.get_arguments().filter(|a| a.is_global_set()).find(by_long).map(|a| Target::Root(a.clone()))
}

/// Makes each file value its arg's default; returns the command and every problem found.
fn apply(mut cmd: Command, path: &[String], settings: &Settings, from_file: &mut BTreeSet<String>) -> (Command, Vec<Problem>) {
    let elsewhere = known_elsewhere(&cmd);
    let mut problems = Vec::new();
    for (key, (line, value)) in &settings.entries {
        let problem = |message: String| Problem { line: *line, field: key.clone(), message };
        let Some(target) = find_target(&cmd, path, key) else {
            if !elsewhere.contains(key) || NOT_SETTINGS.contains(&key.as_str()) {
                problems.push(problem(format!("unknown setting (known: the long flags of `wsctl {} --help`)", path.join(" "))));
            }
            continue;
        };
        let Some(value) = value else { continue }; // `key:` with no value keeps the default
        let (arg, owner) = match &target {
            Target::Leaf(a) => (a, leaf(&cmd, path).expect("leaf exists")),
            Target::Root(a) => (a, &cmd),
        };
        let values = match check_value(owner, arg, value) {
            Ok(v) => v,
            Err(message) => {
                problems.push(problem(message));
                continue;
            }
        };
        from_file.insert(arg.get_id().to_string());
        let id = arg.get_id().to_string();
        let set = move |a: Arg| a.default_values(values.clone());
        cmd = match target {
            Target::Leaf(_) => mut_leaf(cmd, path, &mut |c| c.mut_arg(&id, set.clone())),
            Target::Root(_) => cmd.mut_arg(&id, set),
        };
    }
    problems.sort_by_key(|p| p.line);
    (cmd, problems)
}

fn mut_leaf(cmd: Command, path: &[String], f: &mut dyn FnMut(Command) -> Command) -> Command {
    match path.split_first() {
        None => f(cmd),
        Some((head, rest)) => cmd.mut_subcommand(head, |s| mut_leaf(s, rest, f)),
    }
}

/// The value(s) a file entry gives `arg`, checked by clap's own parser for that arg.
fn check_value(owner: &Command, arg: &Arg, value: &Value) -> Result<Vec<String>, String> {
    let long = arg.get_long().unwrap_or_default();
    match arg.get_action() {
        ArgAction::SetTrue | ArgAction::SetFalse => {
            return match value {
                Value::Bool(b) => Ok(vec![b.to_string()]),
                _ => Err("expects true or false".to_string()),
            }
        }
        ArgAction::Set | ArgAction::Append => {}
        other => return Err(format!("cannot be set from a file (action {other:?})")),
    }
    let values: Vec<String> = match (value, arg.get_action()) {
        (Value::List(items), ArgAction::Append) => items.iter().map(|v| v.scalar().ok_or("expects a list of plain values")).collect::<Result<_, _>>()?,
        (Value::List(_), _) => return Err("expects a single value, not a list".to_string()),
        (v, _) => vec![v.scalar().expect("not a list")],
    };
    // Parse `--long=value` with a copy of the command, environment ignored, so the message is
    // clap's own ("invalid value '7x' for '--max-frame <MAX_FRAME>': invalid digit ...").
    let probe = owner.clone().mut_args(|a| a.env(None)).no_binary_name(true);
    let argv: Vec<String> = values.iter().map(|v| format!("--{long}={v}")).collect();
    match probe.try_get_matches_from(argv) {
        Ok(_) => Ok(values),
        Err(e) if is_unrelated(e.kind()) => Ok(values),
        Err(e) => Err(e.to_string().lines().next().unwrap_or_default().trim_start_matches("error: ").to_string()),
    }
}

/// Errors the probe parse raises about other args, not about the value under test.
fn is_unrelated(kind: clap::error::ErrorKind) -> bool {
    use clap::error::ErrorKind::*;
    matches!(kind, MissingRequiredArgument | MissingSubcommand | DisplayHelpOnMissingArgumentOrSubcommand)
}

/// `wsctl config default|check`.
pub fn run(args: ConfigArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        ConfigCommand::Default => {
            print!("{}", default_file());
            Ok(ExitCode::SUCCESS)
        }
        ConfigCommand::Check { file } => check(&file),
    }
}

fn check(file: &Path) -> anyhow::Result<ExitCode> {
    let text = read(file)?;
    let settings = match Settings::parse(&text) {
        Ok(s) => s,
        Err(p) => {
            eprintln!("{}", render(file, &[p]));
            return Ok(ExitCode::FAILURE);
        }
    };
    let (_, problems) = apply(crate::cli::command(), &["serve".to_string()], &settings, &mut BTreeSet::new());
    if problems.is_empty() {
        println!("{}: ok, {} setting(s) for `wsctl serve`", file.display(), settings.entries.len());
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("{}", render(file, &problems));
    Ok(ExitCode::FAILURE)
}

/// The args of `path` that are settings, globals included (after clap's build).
fn setting_args(path: &[&str]) -> (Command, Vec<Arg>) {
    let mut root = crate::cli::command();
    root.build();
    let mut cur = &root;
    for name in path {
        cur = cur.find_subcommand(name).expect("subcommand exists");
    }
    let args = cur
        .get_arguments()
        .filter(|a| !a.is_positional() && a.get_long().is_some_and(|l| !NOT_SETTINGS.contains(&l)))
        .cloned()
        .collect();
    (cur.clone(), args)
}

/// A settings file for `serve`: every setting with its default, its help as a comment.
pub fn default_file() -> String {
    let (_, args) = setting_args(&["serve"]);
    let mut out = String::from(
        "# wsctl serve settings (`wsctl serve --config FILE`, or WSCTL_CONFIG=FILE).\n\
         # Keys are the long flag names of `wsctl serve --help`. Precedence: flag > environment\n\
         # variable > this file > built-in default. Settings without a default are commented out.\n",
    );
    for arg in args {
        out.push('\n');
        let help = arg.get_long_help().or(arg.get_help()).map(|h| h.to_string()).unwrap_or_default();
        for line in wrap(&help, COMMENT_WIDTH - 2) {
            let _ = writeln!(out, "{}", format!("# {line}").trim_end());
        }
        let possible: Vec<String> = arg.get_possible_values().iter().filter(|p| !p.is_hide_set()).map(|p| p.get_name().to_string()).collect();
        if !possible.is_empty() && !matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse) {
            let _ = writeln!(out, "# One of: {}.", possible.join(", "));
        }
        if let Some(env) = arg.get_env() {
            let _ = writeln!(out, "# Environment: {}", env.to_string_lossy());
        }
        let long = arg.get_long().expect("filtered on long");
        let defaults: Vec<String> = arg.get_default_values().iter().map(|v| yaml_scalar(&v.to_string_lossy())).collect();
        let _ = match (defaults.as_slice(), arg.get_action()) {
            ([], ArgAction::Append) => writeln!(out, "# {long}: []"),
            ([], _) => writeln!(out, "# {long}:"),
            ([one], ArgAction::Set | ArgAction::SetTrue | ArgAction::SetFalse) => writeln!(out, "{long}: {one}"),
            (many, _) => writeln!(out, "{long}: [{}]", many.join(", ")),
        };
    }
    out
}

fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    for para in text.lines() {
        let mut cur = String::new();
        for word in para.split_whitespace() {
            if !cur.is_empty() && cur.len() + 1 + word.len() > width {
                lines.push(std::mem::take(&mut cur));
            }
            if !cur.is_empty() {
                cur.push(' ');
            }
            cur.push_str(word);
        }
        lines.push(cur);
    }
    lines
}

/// A YAML plain scalar when that reads back as the same text, else a double-quoted one (JSON
/// string syntax is valid YAML).
fn yaml_scalar(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "._/-".contains(c))
        && !matches!(s, "null" | "Null" | "NULL" | "~" | "yes" | "no" | "on" | "off" | "y" | "n");
    if plain {
        s.to_string()
    } else {
        serde_json::to_string(s).expect("a string serialises")
    }
}

/// `wsctl serve --print-config`: each setting's effective value and its source.
pub fn print_effective(parsed: &Parsed) -> anyhow::Result<ExitCode> {
    let path: Vec<&str> = parsed.path.iter().map(String::as_str).collect();
    let (_, args) = setting_args(&path);
    let mut m = &parsed.matches;
    for name in &path {
        m = m.subcommand_matches(name).context("subcommand matches")?;
    }
    let rows: Vec<[String; 3]> = args.iter().map(|a| effective_row(a, m, &parsed.from_file)).collect();
    let w0 = rows.iter().map(|r| r[0].len()).max().unwrap_or(0);
    let w1 = rows.iter().map(|r| r[1].len()).max().unwrap_or(0);
    let mut out = std::io::stdout().lock();
    for [name, value, source] in rows {
        use std::io::Write;
        writeln!(out, "{name:<w0$}  {value:<w1$}  {source}")?;
    }
    Ok(ExitCode::SUCCESS)
}

fn effective_row(arg: &Arg, m: &ArgMatches, from_file: &BTreeSet<String>) -> [String; 3] {
    let id = arg.get_id().as_str();
    let long = arg.get_long().unwrap_or(id).to_string();
    let raw: Option<Vec<String>> = m.try_get_raw(id).ok().flatten().map(|vs| vs.map(|v| v.to_string_lossy().into_owned()).collect());
    let source = match (m.value_source(id), from_file.contains(id)) {
        (Some(ValueSource::CommandLine), _) => "flag".to_string(),
        (Some(ValueSource::EnvVariable), _) => format!("env {}", arg.get_env().map(|e| e.to_string_lossy()).unwrap_or_default()),
        (Some(ValueSource::DefaultValue), true) => "file".to_string(),
        (Some(_), _) => "default".to_string(),
        (None, _) => "unset".to_string(),
    };
    let secret = arg.is_hide_env_values_set() || SECRET_WORDS.iter().any(|w| long.contains(w));
    let value = match raw {
        None => "-".to_string(),
        Some(vs) => vs.iter().map(|v| redact(v, secret)).collect::<Vec<_>>().join(","),
    };
    [long, value, source]
}

/// A URL keeps its shape with the password hidden; any other secret is hidden whole.
fn redact(value: &str, secret: bool) -> String {
    if value.contains("://") {
        wsctl::redis::redact_url(value)
    } else if secret && !value.is_empty() {
        "***".to_string()
    } else {
        value.to_string()
    }
}
