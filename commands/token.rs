//! `wsctl token`: mints a JWT that `wsctl serve` accepts, for tests and demos (like Centrifugo's
//! `gentoken`). Production tokens come from your own auth service.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context;
use clap::Args;
use jsonwebtoken::Algorithm;
use wsctl::server::auth::Minter;

use crate::util::parse_duration;

#[derive(Debug, Args)]
#[command(after_help = "The secret comes from --secret or JWT_SECRET, the same variable `wsctl serve` reads.\n\
Examples:\n  JWT_SECRET=$(openssl rand -hex 32) wsctl token --user alice\n  \
wsctl token --user alice --ttl 15m --json\n  \
wsctl token --user bob --private-key key.pem          # RS256 or ES256, from the key\n  \
websocat \"ws://127.0.0.1:8081/ws?token=$(wsctl token --user alice)\"")]
pub struct TokenArgs {
    /// The user the token names (its `sub` claim).
    #[arg(long)]
    pub user: String,
    /// How long the token is valid.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub ttl: Duration,
    /// HS256 secret (at least 32 bytes).
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// PEM private key (RSA or EC, PKCS#8) to sign with instead of a secret.
    #[arg(long, value_name = "FILE", conflicts_with = "secret")]
    pub private_key: Option<PathBuf>,
    /// Algorithm for --private-key (default: RS256 for RSA, ES256 for EC).
    #[arg(long, requires = "private_key")]
    pub algorithm: Option<Algorithm>,
    /// `aud` claim to write, for a node run with --jwt-audience (the same variable).
    #[arg(long, env = "WSS_JWT_AUDIENCE")]
    pub audience: Option<String>,
    /// `iss` claim to write, for a node run with --jwt-issuer (the same variable).
    #[arg(long, env = "WSS_JWT_ISSUER")]
    pub issuer: Option<String>,
    /// Print {"token":..,"user":..,"expires_at":..} instead of the bare token.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: TokenArgs) -> anyhow::Result<ExitCode> {
    // Every error before minting is a setting that cannot work: a usage error (exit 2).
    let mut minter = minter(&args).map_err(crate::util::usage)?;
    minter.audience = args.audience.clone().filter(|a| !a.is_empty());
    minter.issuer = args.issuer.clone().filter(|i| !i.is_empty());
    let (token, exp) = minter.mint(&args.user, args.ttl)?;
    if args.json {
        let expires_at = exp.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let v = serde_json::json!({"token": token, "user": args.user, "expires_at": expires_at});
        println!("{v}");
    } else {
        println!("{token}");
    }
    Ok(ExitCode::SUCCESS)
}

fn minter(args: &TokenArgs) -> anyhow::Result<Minter> {
    wsctl::protocol::check_user_id(&args.user)
        .map_err(|e| anyhow::anyhow!("--user must be 1 to {} bytes without control characters ({e:?})", wsctl::protocol::MAX_USER_ID))?;
    let minter = match (&args.private_key, &args.secret) {
        (Some(path), _) => {
            let pem = std::fs::read(path).with_context(|| format!("--private-key {}", path.display()))?;
            Minter::from_private_pem(&pem, args.algorithm).with_context(|| format!("--private-key {}", path.display()))?
        }
        (None, Some(secret)) => Minter::hs256(secret.as_bytes()).context("--secret / JWT_SECRET")?,
        (None, None) => anyhow::bail!("no key: set JWT_SECRET (or --secret), or give --private-key"),
    };
    Ok(minter)
}
