//! `wsctl token`: mints a JWT that `wsctl serve` accepts, for tests and demos (like Centrifugo's
//! `gentoken`). Production tokens come from your own auth service.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context;
use clap::Args;
use jsonwebtoken::Algorithm;
use wsctl::server::auth::{Minter, RoomClaims};

use crate::util::parse_duration;

#[derive(Debug, Args)]
#[command(after_help = "The secret comes from --secret or JWT_SECRET, the same variable `wsctl serve` reads.\n\
Examples:\n  JWT_SECRET=$(openssl rand -hex 32) wsctl token --user alice\n  \
wsctl token --user alice --ttl 15m --json\n  \
wsctl token --user bob --private-key key.pem          # RS256 or ES256, from the key\n  \
wsctl token --user alice --rooms 'team:42:*' --rooms-read news   # a connection token with room grants\n  \
wsctl token --user alice --room team:42 --read-only --ttl 10m   # a room token, for a join's \"token\"\n  \
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
    /// A room pattern the connection may join, receive from and send to (`rooms` claim; an exact
    /// name or a prefix ending in `*`). Repeatable.
    #[arg(long = "rooms", value_name = "PATTERN")]
    pub rooms: Vec<String>,
    /// A room pattern the connection may join and receive from only (`rooms_read`). Repeatable.
    #[arg(long = "rooms-read", value_name = "PATTERN")]
    pub rooms_read: Vec<String>,
    /// Mint a room token instead: it grants this one room to --user (a join's `"token"`).
    #[arg(long, conflicts_with_all = ["rooms", "rooms_read"])]
    pub room: Option<String>,
    /// With --room: the room token grants receiving only.
    #[arg(long, requires = "room")]
    pub read_only: bool,
    /// Print {"token":..,"user":..,"expires_at":..} instead of the bare token.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: TokenArgs) -> anyhow::Result<ExitCode> {
    // Every error before minting is a setting that cannot work: a usage error (exit 2).
    let mut minter = minter(&args).map_err(crate::util::usage)?;
    minter.audience = args.audience.clone().filter(|a| !a.is_empty());
    minter.issuer = args.issuer.clone().filter(|i| !i.is_empty());
    if let Some(bad) = args.room.iter().find(|r| !wsctl::rooms::valid_name(r)) {
        return Err(crate::util::usage(anyhow::anyhow!("--room {bad:?}: a room name is 1-128 bytes of [A-Za-z0-9_.:@-]")));
    }
    if let Some(bad) = args.rooms.iter().chain(&args.rooms_read).find(|p| wsctl::room_access::RoomPattern::parse(p).is_none()) {
        return Err(crate::util::usage(anyhow::anyhow!("room pattern {bad:?} matches no room: an exact name, or a prefix ending in `*`")));
    }
    let claims = RoomClaims { rooms: args.rooms.clone(), rooms_read: args.rooms_read.clone(), room: args.room.clone(), read_only: args.read_only };
    let (token, exp) = minter.mint_with(&args.user, args.ttl, claims)?;
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
