//! `wsctl serve`'s security flags (auth key, origins, connection caps, rate limit, handshake
//! limits), flattened into `ServeArgs` and turned into the validated `SecurityConfig`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use jsonwebtoken::Algorithm;
use wsctl::server::admission::{self, Caps, OriginPattern, SecurityConfig};
use wsctl::server::auth::Authenticator;
use wsctl::server::http::{self, HttpLimits};
use wsctl::room_access::RoomPolicy;
use wsctl::server::ratelimit::{self, RateLimit};

use crate::util::parse_duration;

#[derive(Debug, Args)]
pub struct SecurityArgs {
    /// HS256 secret (at least 32 bytes): every connection then needs a JWT signed with it, in
    /// `?token=`, `Authorization: Bearer` or `Sec-WebSocket-Protocol: wsctl.bearer, <token>`; the
    /// user is its `sub`. Prefer the variable: a flag shows in `ps`. An empty value is refused
    /// (an empty secret mount must not turn auth off): unset it to run without auth.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true, help_heading = "Security")]
    pub jwt_secret: Option<String>,
    /// PEM public key (RSA or EC) to verify RS256/ES256 tokens with, instead of a secret.
    #[arg(long, env = "WSS_JWT_PUBLIC_KEY", value_name = "FILE", conflicts_with = "jwt_secret", help_heading = "Security")]
    pub jwt_public_key: Option<PathBuf>,
    /// The algorithm a --jwt-public-key signs with (default: RS256 for RSA, ES256 for EC keys).
    /// Only that one algorithm is accepted.
    #[arg(long, env = "WSS_JWT_ALGORITHM", value_parser = parse_algorithm, requires = "jwt_public_key", help_heading = "Security")]
    pub jwt_algorithm: Option<Algorithm>,
    /// Accept only tokens whose `aud` claim names this audience (a token without `aud` is refused
    /// too, 401). Needs a key. Default: `aud` is not checked.
    #[arg(long, env = "WSS_JWT_AUDIENCE", help_heading = "Security")]
    pub jwt_audience: Option<String>,
    /// Accept only tokens whose `iss` claim is this issuer (a token without `iss` is refused too,
    /// 401). Needs a key. Default: `iss` is not checked.
    #[arg(long, env = "WSS_JWT_ISSUER", help_heading = "Security")]
    pub jwt_issuer: Option<String>,
    /// Who may join a room with auth on: `claims` (a join needs a `rooms`/`rooms_read` claim in
    /// the connection's token, or a room token on the join; others are refused `forbidden`) or
    /// `open` (any connection joins any room). With auth off rooms are always open.
    #[arg(long, env = "WSS_ROOM_POLICY", value_enum, default_value_t = RoomPolicyArg::Claims, help_heading = "Security")]
    pub room_policy: RoomPolicyArg,
    /// Origin allowed to open sockets (repeatable, or comma-separated in the variable), e.g.
    /// https://app.example.com or https://*.example.com. Others get 403; requests without an
    /// Origin header (non-browser clients) are allowed. Default: any origin.
    #[arg(long = "allowed-origin", env = "WSS_ALLOWED_ORIGINS", value_delimiter = ',', help_heading = "Security")]
    pub allowed_origins: Vec<OriginPattern>,
    /// Connections this node accepts; past it, 503 before the upgrade (0 = no cap).
    #[arg(long, env = "WSS_MAX_CONNECTIONS", default_value_t = admission::MAX_CONNECTIONS, help_heading = "Security")]
    pub max_connections: usize,
    /// Connections one user may hold on this node; past it, 429 (0 = no cap).
    #[arg(long, env = "WSS_MAX_CONNS_PER_USER", default_value_t = admission::MAX_CONNS_PER_USER, help_heading = "Security")]
    pub max_conns_per_user: usize,
    /// Connections one client IP may hold on this node; past it, 429 (0 = no cap). Off by
    /// default: behind a proxy that hides client addresses it would cap the proxy.
    #[arg(long, env = "WSS_MAX_CONNS_PER_IP", default_value_t = admission::MAX_CONNS_PER_IP, help_heading = "Security")]
    pub max_conns_per_ip: usize,
    /// Frames per second one connection may send; excess frames are dropped with a
    /// `rate_limited` error, and 5 s of sustained excess closes it with 4029 (0 = no limit).
    #[arg(long, env = "WSS_RATE_LIMIT", default_value_t = ratelimit::RATE_LIMIT, help_heading = "Security")]
    pub rate_limit: f64,
    /// Frames a connection may send at once above --rate-limit.
    #[arg(long, env = "WSS_RATE_BURST", default_value_t = ratelimit::RATE_BURST, help_heading = "Security")]
    pub rate_burst: u32,
    /// Time a client has to send its whole HTTP request head (slowloris guard).
    #[arg(long, env = "WSS_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration, help_heading = "Security")]
    pub header_timeout: Duration,
    /// Sockets accepted but not yet upgraded (or answered and closed) at most, per listener;
    /// a new one past it closes the oldest (0 = no cap). --max-connections counts upgraded
    /// sockets only.
    #[arg(long, env = "WSS_MAX_PENDING_HANDSHAKES", default_value_t = http::MAX_PENDING_HANDSHAKES, help_heading = "Security")]
    pub max_pending_handshakes: usize,
}

fn parse_algorithm(s: &str) -> Result<Algorithm, String> {
    match s.parse::<Algorithm>() {
        Ok(Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) | Err(_) => {
            Err(format!("{s:?}: expected RS256, RS384, RS512, PS256, PS384, PS512, ES256 or ES384"))
        }
        Ok(a) => Ok(a),
    }
}

impl SecurityArgs {
    pub fn config(&self) -> anyhow::Result<SecurityConfig> {
        let auth = match (&self.jwt_secret, &self.jwt_public_key) {
            (_, Some(path)) => {
                let what = || format!("--jwt-public-key / WSS_JWT_PUBLIC_KEY {}", path.display());
                let pem = std::fs::read(path).with_context(what)?;
                Some(Authenticator::from_public_pem(&pem, self.jwt_algorithm).with_context(what)?)
            }
            // Empty or whitespace-only is refused by `hs256` (AuthError::EmptyKey), not read as
            // "auth off".
            (Some(secret), None) => Some(Authenticator::hs256(secret.as_bytes()).context("JWT_SECRET / --jwt-secret")?),
            (None, None) => None,
        };
        let auth = match auth {
            Some(mut a) => {
                if let Some(aud) = &self.jwt_audience {
                    a = a.require_audience(aud).context("--jwt-audience / WSS_JWT_AUDIENCE")?;
                }
                if let Some(iss) = &self.jwt_issuer {
                    a = a.require_issuer(iss).context("--jwt-issuer / WSS_JWT_ISSUER")?;
                }
                Some(Arc::new(a))
            }
            None if self.jwt_audience.is_some() || self.jwt_issuer.is_some() => {
                anyhow::bail!("--jwt-audience / --jwt-issuer need a key to check tokens with: set JWT_SECRET or --jwt-public-key");
            }
            None => None,
        };
        if !(self.rate_limit >= 0.0 && self.rate_limit.is_finite()) {
            anyhow::bail!("--rate-limit must be a number >= 0, got {}", self.rate_limit);
        }
        if self.rate_limit > 0.0 && self.rate_burst == 0 {
            anyhow::bail!("--rate-burst must be at least 1 when --rate-limit is on");
        }
        if self.header_timeout.is_zero() {
            anyhow::bail!("--header-timeout must be non-zero");
        }
        Ok(SecurityConfig {
            auth,
            origins: self.allowed_origins.clone(),
            caps: Caps { max_connections: self.max_connections, per_user: self.max_conns_per_user, per_ip: self.max_conns_per_ip },
            rate: RateLimit { per_second: self.rate_limit, burst: self.rate_burst, ..RateLimit::recommended() },
            http: HttpLimits {
                header_read_timeout: self.header_timeout,
                max_header_bytes: http::MAX_HEADER_BYTES,
                max_pending: self.max_pending_handshakes,
            },
            room_policy: match self.room_policy {
                RoomPolicyArg::Claims => RoomPolicy::Claims,
                RoomPolicyArg::Open => RoomPolicy::Open,
            },
        })
    }
}

/// `--room-policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RoomPolicyArg {
    Claims,
    Open,
}
