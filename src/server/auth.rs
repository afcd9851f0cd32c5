//! Token authentication (spec Part B): which JWTs a node accepts, where a client may put one,
//! and minting them for `wsctl token`. Signatures are checked by `jsonwebtoken` (aws-lc-rs, the
//! crypto already in the tree for the AWS SDK); only the configured algorithm is accepted, so
//! `alg: none` and HS/RS confusion are refused before any signature check.
//!
//! The user is the `sub` claim; `exp` is required (a token that never expires cannot be
//! revoked by waiting) and `nbf` is honoured when present, both with [`TOKEN_LEEWAY`]. `aud` and
//! `iss` are checked when the node is given an audience or issuer.
//!
//! Expiry has one rule and one clock: [`expiry_deadline`] (`exp` plus the leeway, on the system
//! clock to the nanosecond) is when the handshake starts refusing the token *and* when a
//! connection holding it is closed with 1008. (jsonwebtoken's own `exp` check works in whole
//! seconds, so it kept accepting a token for up to a second after its connection was closed for
//! expiry: a client reconnecting with the same token looped, accepted and closed again.)

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{header, HeaderMap};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::hub::{CloseReason, SessionCtl};
use crate::room_access::{Access, Grants};

/// Clock skew allowed between the token issuer and this node, on `exp` and `nbf` alike. Fleet
/// clocks under NTP agree within milliseconds; the issuer may be another system, so allow a few
/// seconds, not jsonwebtoken's default minute (which would keep an expired token valid that long).
/// A connection is closed at `exp` plus this, the same instant a new connection stops being
/// accepted.
pub const TOKEN_LEEWAY: Duration = Duration::from_secs(5);
/// The `Sec-WebSocket-Protocol` entry that says the next entry is a token: a browser offers
/// `new WebSocket(url, ["wsctl.bearer", token])` and the server answers `wsctl.bearer` (a
/// browser fails a handshake whose answer names no protocol it offered).
pub const BEARER_PROTOCOL: &str = "wsctl.bearer";
/// The query parameter a token may come in: `/ws?token=<jwt>`.
pub const TOKEN_PARAM: &str = "token";
/// Latest `exp` taken at face value (9999-12-31T23:59:59Z); later ones are treated as this.
const MAX_EXP: u64 = 253_402_300_799;
/// Shortest HS256 secret accepted: RFC 7518 3.2 requires a key of at least the hash size.
pub const MIN_SECRET_BYTES: usize = 32;

/// When a token with this `exp` (seconds since the epoch) stops being valid: `exp` plus
/// [`TOKEN_LEEWAY`]. The handshake refuses the token from this instant on (`now >= deadline`),
/// and a connection holding it is closed at it: the same instant, on the same clock.
pub fn expiry_deadline(exp: u64) -> SystemTime {
    // Clamped: a validly signed exp of u64::MAX must not overflow SystemTime arithmetic.
    UNIX_EPOCH + Duration::from_secs(exp.min(MAX_EXP)) + TOKEN_LEEWAY
}

/// Why a key could not be loaded or a token could not be minted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    #[error("the HS256 secret must be at least {MIN_SECRET_BYTES} bytes (RFC 7518 3.2), got {0}")]
    ShortSecret(usize),
    #[error("not a PEM public key this server can use (RSA or EC P-256/P-384): {0}")]
    BadPublicKey(jsonwebtoken::errors::Error),
    #[error("not a PEM private key (RSA or EC, PKCS#8): {0}")]
    BadPrivateKey(jsonwebtoken::errors::Error),
    #[error("algorithm {alg:?} does not fit a {key} key")]
    AlgorithmMismatch { alg: Algorithm, key: &'static str },
    #[error("cannot sign the token: {0}")]
    Sign(jsonwebtoken::errors::Error),
    /// An empty or whitespace-only key (an empty secret mount): refused rather than read as
    /// "auth off", which is what an empty `JWT_SECRET` used to mean.
    #[error("the key is empty (or only whitespace); unset it to run without auth")]
    EmptyKey,
    /// An empty `--jwt-audience` / `--jwt-issuer`: it would match no token.
    #[error("the {0} must not be empty")]
    EmptyClaim(&'static str),
}

/// Why a token was refused: each is a `reason` label in `/metrics` and a short 401 body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// No token in the query, `Authorization` or `Sec-WebSocket-Protocol`.
    Missing,
    /// Malformed, wrong signature, wrong algorithm, or no usable `sub`.
    Invalid,
    /// Past `exp` (plus the leeway).
    Expired,
    /// Before `nbf` (minus the leeway).
    NotYetValid,
    /// `--jwt-audience` is set and the token's `aud` is missing or names another audience.
    Audience,
    /// `--jwt-issuer` is set and the token's `iss` is missing or another issuer.
    Issuer,
}

impl TokenError {
    /// A short description, as in the handshake's 401 body.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenError::Missing => "missing token",
            TokenError::Invalid => "invalid token",
            TokenError::Expired => "token expired",
            TokenError::NotYetValid => "token not yet valid",
            TokenError::Audience => "token audience not accepted",
            TokenError::Issuer => "token issuer not accepted",
        }
    }
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who a valid token says the client is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    /// When the token stops being valid (`exp` plus the leeway): the connection closes then.
    pub expires_at: SystemTime,
    /// The rooms it may join (its `rooms` and `rooms_read` claims).
    pub grants: Grants,
}

/// What a valid room token (a join's `"token"`) grants: one room to one user, until it expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomGrant {
    pub user: String,
    pub room: String,
    pub access: Access,
    /// `exp` plus the leeway: the connection leaves the room then.
    pub expires_at: SystemTime,
}

/// The claims read from and written into tokens.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Room patterns the connection may join, receive from and send to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rooms: Vec<String>,
    /// Room patterns the connection may join and receive from only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rooms_read: Vec<String>,
    /// A room token's one room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    /// A room token that grants receiving only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
}

/// What `verify` reads from a token (jsonwebtoken checks the other claims on its own parse, so
/// an `aud` array or any other claim shape does not matter here).
#[derive(Deserialize)]
struct Verified {
    sub: String,
    exp: u64,
    #[serde(default)]
    rooms: Vec<String>,
    #[serde(default)]
    rooms_read: Vec<String>,
}

/// What `verify_room` reads from a room token.
#[derive(Deserialize)]
struct VerifiedRoom {
    sub: String,
    exp: u64,
    room: String,
    #[serde(default)]
    read_only: bool,
}

/// The room claims a minted token carries (all empty: none).
#[derive(Debug, Clone, Default)]
pub struct RoomClaims {
    pub rooms: Vec<String>,
    pub rooms_read: Vec<String>,
    pub room: Option<String>,
    pub read_only: bool,
}

/// The key and algorithm a node verifies tokens with.
#[derive(Clone)]
pub struct Authenticator {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("algorithm", &self.algorithm())
            .field("audience", &self.validation.aud)
            .field("issuer", &self.validation.iss)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// HS256 with a shared secret (`JWT_SECRET`, `--jwt-secret`).
    pub fn hs256(secret: &[u8]) -> Result<Self, AuthError> {
        check_secret(secret)?;
        Ok(Self::with(DecodingKey::from_secret(secret), Algorithm::HS256))
    }

    /// RS*/PS*/ES* with a PEM public key (`--jwt-public-key`). Without `alg`, an RSA key means
    /// RS256 and an EC key ES256.
    pub fn from_public_pem(pem: &[u8], alg: Option<Algorithm>) -> Result<Self, AuthError> {
        if pem.trim_ascii().is_empty() {
            return Err(AuthError::EmptyKey);
        }
        let (key, family) = match DecodingKey::from_rsa_pem(pem) {
            Ok(k) => (k, "RSA"),
            Err(_) => (DecodingKey::from_ec_pem(pem).map_err(AuthError::BadPublicKey)?, "EC"),
        };
        let alg = match (family, alg) {
            ("RSA", None) => Algorithm::RS256,
            ("EC", None) => Algorithm::ES256,
            ("RSA", Some(a @ (Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 | Algorithm::PS256 | Algorithm::PS384 | Algorithm::PS512))) => a,
            ("EC", Some(a @ (Algorithm::ES256 | Algorithm::ES384))) => a,
            (key, Some(alg)) => return Err(AuthError::AlgorithmMismatch { alg, key }),
            _ => unreachable!("family is RSA or EC"),
        };
        Ok(Self::with(key, alg))
    }

    fn with(key: DecodingKey, alg: Algorithm) -> Self {
        let mut validation = Validation::new(alg);
        validation.leeway = TOKEN_LEEWAY.as_secs();
        validation.validate_nbf = true;
        // `exp` is checked in `verify`, against `expiry_deadline` (see the module docs); it is
        // still required.
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Authenticator { key, validation }
    }

    /// Accept only tokens whose `aud` names `audience` (`--jwt-audience`); a token without `aud`
    /// is refused too.
    pub fn require_audience(mut self, audience: &str) -> Result<Self, AuthError> {
        if audience.trim().is_empty() {
            return Err(AuthError::EmptyClaim("audience"));
        }
        self.validation.set_audience(&[audience]);
        self.validation.validate_aud = true;
        self.validation.required_spec_claims.insert("aud".into());
        Ok(self)
    }

    /// Accept only tokens whose `iss` is `issuer` (`--jwt-issuer`); a token without `iss` is
    /// refused too.
    pub fn require_issuer(mut self, issuer: &str) -> Result<Self, AuthError> {
        if issuer.trim().is_empty() {
            return Err(AuthError::EmptyClaim("issuer"));
        }
        self.validation.set_issuer(&[issuer]);
        self.validation.required_spec_claims.insert("iss".into());
        Ok(self)
    }

    /// The audience and issuer required, if any.
    pub fn audience(&self) -> Option<String> {
        self.validation.aud.as_ref().and_then(|a| a.iter().next().cloned())
    }

    pub fn issuer(&self) -> Option<String> {
        self.validation.iss.as_ref().and_then(|a| a.iter().next().cloned())
    }

    /// The one algorithm accepted.
    pub fn algorithm(&self) -> Algorithm {
        self.validation.algorithms[0]
    }

    /// Checks a token now; the user is its `sub`.
    pub fn verify(&self, token: &str) -> Result<Identity, TokenError> {
        self.verify_at(token, SystemTime::now())
    }

    /// Checks a token as of `now`: expired from [`expiry_deadline`] on.
    pub fn verify_at(&self, token: &str, now: SystemTime) -> Result<Identity, TokenError> {
        let c: Verified = self.decode(token)?;
        let expires_at = valid_until(c.exp, now)?;
        Ok(Identity { user: c.sub, expires_at, grants: Grants::from_claims(&c.rooms, &c.rooms_read) })
    }

    /// Checks a room token (a join's `"token"`: `sub`, `room`, `exp`, optional `read_only`),
    /// signed with the same key and checked by the same rules as a connection's token.
    pub fn verify_room(&self, token: &str) -> Result<RoomGrant, TokenError> {
        let c: VerifiedRoom = self.decode(token)?;
        let expires_at = valid_until(c.exp, SystemTime::now())?;
        let access = if c.read_only { Access::Read } else { Access::Write };
        Ok(RoomGrant { user: c.sub, room: c.room, access, expires_at })
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, token: &str) -> Result<T, TokenError> {
        let data = jsonwebtoken::decode::<T>(token, &self.key, &self.validation).map_err(|e| match e.kind() {
            ErrorKind::ImmatureSignature => TokenError::NotYetValid,
            ErrorKind::InvalidAudience => TokenError::Audience,
            ErrorKind::InvalidIssuer => TokenError::Issuer,
            ErrorKind::MissingRequiredClaim(c) if c == "aud" => TokenError::Audience,
            ErrorKind::MissingRequiredClaim(c) if c == "iss" => TokenError::Issuer,
            _ => TokenError::Invalid,
        })?;
        Ok(data.claims)
    }
}

/// An HS256 secret both sides accept: not empty or whitespace (an empty secret mount must not
/// turn auth off), at least [`MIN_SECRET_BYTES`].
fn check_secret(secret: &[u8]) -> Result<(), AuthError> {
    if secret.trim_ascii().is_empty() {
        return Err(AuthError::EmptyKey);
    }
    if secret.len() < MIN_SECRET_BYTES {
        return Err(AuthError::ShortSecret(secret.len()));
    }
    Ok(())
}

/// A token's deadline ([`expiry_deadline`]), or `Expired` when `now` is past it.
fn valid_until(exp: u64, now: SystemTime) -> Result<SystemTime, TokenError> {
    let at = expiry_deadline(exp);
    if now >= at {
        return Err(TokenError::Expired);
    }
    Ok(at)
}

/// Closes the session with 1008 ("token expired") once its token is no longer valid, unless it
/// ended before. The client reconnects with a fresh token. One timer per authenticated
/// connection, gone with the session.
pub(crate) async fn close_at_expiry(ctl: Arc<SessionCtl>, at: SystemTime) {
    let left = at.duration_since(SystemTime::now()).unwrap_or_default();
    tokio::select! {
        _ = tokio::time::sleep(left) => {
            if ctl.close_with(CloseReason::Policy) {
                tracing::debug!("token expired: closing with 1008");
            }
        }
        _ = ctl.closed() => {}
    }
}

/// Where the client put its token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    /// `Authorization: Bearer <token>`.
    Header,
    /// `Sec-WebSocket-Protocol: wsctl.bearer, <token>`: the upgrade must answer [`BEARER_PROTOCOL`].
    Protocol,
    /// `?token=<token>`.
    Query,
}

/// The client's token, looked for in this order: `Authorization: Bearer`, then
/// `Sec-WebSocket-Protocol` (`wsctl.bearer` followed by the token), then `?token=`. The first
/// found is the one checked; the others are ignored.
pub fn find_token<'a>(headers: &'a HeaderMap, query_token: Option<&'a str>) -> Option<(Cow<'a, str>, TokenSource)> {
    let bearer = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| {
        let (scheme, rest) = v.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
    });
    if let Some(t) = bearer.filter(|t| !t.is_empty()) {
        return Some((Cow::Borrowed(t), TokenSource::Header));
    }
    if let Some(t) = protocol_token(headers) {
        return Some((Cow::Owned(t), TokenSource::Protocol));
    }
    query_token.filter(|t| !t.is_empty()).map(|t| (Cow::Borrowed(t), TokenSource::Query))
}

/// The entry after `wsctl.bearer` in the offered subprotocols (one header or several).
fn protocol_token(headers: &HeaderMap) -> Option<String> {
    let mut offered = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim);
    offered.by_ref().find(|p| *p == BEARER_PROTOCOL)?;
    offered.next().filter(|t| !t.is_empty()).map(str::to_owned)
}

/// How `wsctl token` signs: a secret (HS256) or a PEM private key (RS256/ES256, or `alg`).
pub struct Minter {
    key: EncodingKey,
    alg: Algorithm,
    /// `aud` and `iss` written into every token, when set.
    pub audience: Option<String>,
    pub issuer: Option<String>,
}

impl Minter {
    pub fn hs256(secret: &[u8]) -> Result<Self, AuthError> {
        check_secret(secret)?;
        Ok(Minter { key: EncodingKey::from_secret(secret), alg: Algorithm::HS256, audience: None, issuer: None })
    }

    pub fn from_private_pem(pem: &[u8], alg: Option<Algorithm>) -> Result<Self, AuthError> {
        let (key, family) = match EncodingKey::from_rsa_pem(pem) {
            Ok(k) => (k, "RSA"),
            Err(_) => (EncodingKey::from_ec_pem(pem).map_err(AuthError::BadPrivateKey)?, "EC"),
        };
        let alg = match (family, alg) {
            ("RSA", None) => Algorithm::RS256,
            ("EC", None) => Algorithm::ES256,
            (_, Some(a)) => a,
            _ => unreachable!("family is RSA or EC"),
        };
        Ok(Minter { key, alg, audience: None, issuer: None })
    }

    /// A token for `user` valid for `ttl` from now; returns it with its `exp`.
    pub fn mint(&self, user: &str, ttl: Duration) -> Result<(String, SystemTime), AuthError> {
        self.mint_with(user, ttl, RoomClaims::default())
    }

    /// [`Minter::mint`] with room claims: grants for a connection's token, or the one room of a
    /// room token.
    pub fn mint_with(&self, user: &str, ttl: Duration, r: RoomClaims) -> Result<(String, SystemTime), AuthError> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let exp = now.saturating_add(ttl.as_secs().max(1)).min(MAX_EXP);
        let claims = Claims {
            sub: user.to_owned(),
            exp,
            iat: Some(now),
            nbf: None,
            aud: self.audience.clone(),
            iss: self.issuer.clone(),
            rooms: r.rooms,
            rooms_read: r.rooms_read,
            room: r.room,
            read_only: r.read_only,
        };
        let token = jsonwebtoken::encode(&Header::new(self.alg), &claims, &self.key).map_err(AuthError::Sign)?;
        Ok((token, UNIX_EPOCH + Duration::from_secs(exp)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn a_minted_token_verifies_and_names_its_user() {
        let (t, exp) = Minter::hs256(SECRET).unwrap().mint("alice", Duration::from_secs(60)).unwrap();
        let id = Authenticator::hs256(SECRET).unwrap().verify(&t).unwrap();
        assert_eq!(id.user, "alice");
        assert_eq!(id.expires_at, exp + TOKEN_LEEWAY);
    }

    #[test]
    fn wrong_key_and_short_secret_are_refused() {
        let (t, _) = Minter::hs256(SECRET).unwrap().mint("alice", Duration::from_secs(60)).unwrap();
        let other = Authenticator::hs256(b"another secret of at least 32 bytes!").unwrap();
        assert_eq!(other.verify(&t), Err(TokenError::Invalid));
        assert!(matches!(Authenticator::hs256(b"short"), Err(AuthError::ShortSecret(5))));
    }

    #[test]
    fn an_exp_at_the_end_of_time_does_not_overflow() {
        let claims = serde_json::json!({"sub":"alice","exp":u64::MAX});
        let t = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET)).unwrap();
        let id = Authenticator::hs256(SECRET).unwrap().verify(&t).unwrap();
        assert_eq!(id.expires_at, UNIX_EPOCH + Duration::from_secs(MAX_EXP) + TOKEN_LEEWAY);
        assert!(Minter::hs256(SECRET).unwrap().mint("alice", Duration::MAX).is_ok());
    }

    #[test]
    fn the_handshake_refuses_a_token_at_the_instant_its_connection_closes() {
        let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 60;
        let claims = serde_json::json!({"sub":"alice","exp":exp});
        let t = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET)).unwrap();
        let auth = Authenticator::hs256(SECRET).unwrap();
        let deadline = expiry_deadline(exp);
        assert_eq!(auth.verify_at(&t, deadline - Duration::from_nanos(1)).unwrap().expires_at, deadline);
        assert_eq!(auth.verify_at(&t, deadline), Err(TokenError::Expired));
        assert!(matches!(Authenticator::hs256(b"  \n"), Err(AuthError::EmptyKey)));
        assert!(matches!(Authenticator::from_public_pem(b"", None), Err(AuthError::EmptyKey)));
    }

    #[test]
    fn token_sources_in_order() {
        let mut h = HeaderMap::new();
        assert_eq!(find_token(&h, Some("q")), Some((Cow::Borrowed("q"), TokenSource::Query)));
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static("chat, wsctl.bearer, p.q.r"));
        assert_eq!(find_token(&h, Some("q")).unwrap(), (Cow::Borrowed("p.q.r"), TokenSource::Protocol));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer h.h.h"));
        assert_eq!(find_token(&h, Some("q")).unwrap(), (Cow::Borrowed("h.h.h"), TokenSource::Header));
        let mut only_marker = HeaderMap::new();
        only_marker.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static("wsctl.bearer"));
        assert_eq!(find_token(&only_marker, None), None);
    }
}
