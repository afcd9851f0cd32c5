//! Read-only questions the HTTP API asks Redis: where a user is connected, and how many members a
//! room has on each node. Both answer only for live nodes (a `server_alive` lease, and for users a
//! `user_online` key), the same test routing applies, and both are bounded by [`LOOKUP_TIMEOUT`].

use std::time::Duration;

use fred::prelude::*;

use crate::routes;

use super::rooms::room_members_key;

/// A lookup not answered within this fails (the API answers 503).
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a lookup failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LookupError {
    #[error("Redis did not answer within {LOOKUP_TIMEOUT:?}")]
    Timeout,
    #[error("Redis: {0}")]
    Redis(#[from] fred::error::Error),
}

/// The live nodes holding `user` (route entry, presence key and lease all present), sorted, with
/// the user's connections on each as the node last wrote them (`user_conns:<u>`; None from a node
/// that writes none, e.g. a Go node).
pub(crate) async fn user_nodes(client: &Client, user: &str, require_lease: bool) -> Result<Vec<(String, Option<u64>)>, LookupError> {
    let lookup = async {
        let servers: Vec<String> = client.smembers(routes::user_servers_key(user)).await?;
        let alive = live(client, servers, |s| Some(routes::user_online_key(user, s)), require_lease).await?;
        if alive.is_empty() {
            return Ok(Vec::new());
        }
        let counts: Vec<Option<u64>> = client.hmget(routes::user_conns_key(user), alive.clone()).await?;
        Ok::<_, fred::error::Error>(alive.into_iter().zip(counts).collect())
    };
    Ok(tokio::time::timeout(LOOKUP_TIMEOUT, lookup).await.map_err(|_| LookupError::Timeout)??)
}

/// `room_members:<room>` for live nodes: (server, member connections), sorted by server.
pub(crate) async fn room_counts(client: &Client, room: &str) -> Result<Vec<(String, u64)>, LookupError> {
    let lookup = async {
        let all: std::collections::HashMap<String, u64> = client.hgetall(room_members_key(room)).await?;
        let alive = live(client, all.keys().cloned().collect(), |_| None, true).await?;
        Ok::<_, fred::error::Error>(alive.into_iter().map(|s| { let n = all[&s]; (s, n) }).collect())
    };
    Ok(tokio::time::timeout(LOOKUP_TIMEOUT, lookup).await.map_err(|_| LookupError::Timeout)??)
}

/// The servers whose `extra` key (if any) and lease (if required) exist, in one pipeline.
async fn live(
    client: &Client,
    mut servers: Vec<String>,
    extra: impl Fn(&str) -> Option<String>,
    require_lease: bool,
) -> Result<Vec<String>, fred::error::Error> {
    servers.sort_unstable();
    let keys: Vec<Vec<String>> = servers
        .iter()
        .map(|s| extra(s).into_iter().chain(require_lease.then(|| routes::server_alive_key(s))).collect())
        .collect();
    if keys.iter().all(Vec::is_empty) {
        return Ok(servers);
    }
    let p = client.pipeline();
    for k in keys.iter().flatten() {
        let _: () = p.exists(k.as_str()).await?;
    }
    let found = p.try_all::<i64>().await.into_iter().collect::<Result<Vec<_>, _>>()?;
    let mut found = found.into_iter();
    let mut out = Vec::with_capacity(servers.len());
    for (s, k) in servers.into_iter().zip(keys) {
        // Consume one answer per key, whatever the earlier ones said.
        let answers: Vec<bool> = k.iter().map(|_| found.next().unwrap_or(0) > 0).collect();
        if answers.iter().all(|p| *p) {
            out.push(s);
        }
    }
    Ok(out)
}
