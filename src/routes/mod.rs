//! The Redis route table's vocabulary, shared by `serve` and `routes`: key and channel names
//! (exactly the original Go server's, spec Part A), their TTLs and refresh periods, and the node
//! lease (Part B). It performs no Redis operation itself: a node's writes (route add/remove,
//! presence refresh, lease, publish) are the broker's (`broker/redis.rs`), and the walks and
//! purge behind `wsctl routes` are [`admin`]'s.

pub mod admin;

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Prefix of the route sets: `user_servers:<user>` is the SET of server ids holding the user.
pub const USER_SERVERS_PREFIX: &str = "user_servers:";
/// Prefix of the presence keys: `user_online:<user>:<server>` = "1", with [`ONLINE_TTL`].
pub const USER_ONLINE_PREFIX: &str = "user_online:";
/// Prefix of the per-node pub/sub channels: `server:<server>`.
pub const SERVER_CHANNEL_PREFIX: &str = "server:";
/// Prefix of the node leases: `server_alive:<server>` = JSON [`Lease`], with [`LEASE_TTL`].
pub const SERVER_ALIVE_PREFIX: &str = "server_alive:";

/// TTL of `user_online` keys: 60 s, as the original server (spec Part A).
pub const ONLINE_TTL: Duration = Duration::from_secs(60);
/// How often a node refreshes the `user_online` keys of every user it holds: 30 s (spec Part A),
/// half the TTL, so one missed refresh does not expire a live route.
pub const PRESENCE_REFRESH: Duration = Duration::from_secs(30);
/// TTL of a node's lease. Short, so `wsctl routes` sees a dead node within seconds.
pub const LEASE_TTL: Duration = Duration::from_secs(15);
/// How often a node rewrites its lease: a third of the TTL, so two refreshes may be missed.
pub const LEASE_REFRESH: Duration = Duration::from_secs(5);

/// `user_servers:<user>`.
pub fn user_servers_key(user: &str) -> String {
    let mut k = String::with_capacity(USER_SERVERS_PREFIX.len() + user.len());
    k.push_str(USER_SERVERS_PREFIX);
    k.push_str(user);
    k
}

/// `user_conns:<user>`: a HASH of server id -> this user's connections on that node, written by
/// wsctl nodes beside the route (Go nodes write none) and read by `GET /api/presence/{user}`.
/// Informational only: routing never reads it.
pub const USER_CONNS_PREFIX: &str = "user_conns:";

/// `user_conns:<user>`.
pub fn user_conns_key(user: &str) -> String {
    let mut k = String::with_capacity(USER_CONNS_PREFIX.len() + user.len());
    k.push_str(USER_CONNS_PREFIX);
    k.push_str(user);
    k
}

/// `user_online:<user>:<server>`.
pub fn user_online_key(user: &str, server: &str) -> String {
    let mut k = String::with_capacity(USER_ONLINE_PREFIX.len() + user.len() + 1 + server.len());
    k.push_str(USER_ONLINE_PREFIX);
    k.push_str(user);
    k.push(':');
    k.push_str(server);
    k
}

/// `server:<server>`: the channel carrying envelopes for users on that node.
pub fn server_channel(server: &str) -> String {
    format!("{SERVER_CHANNEL_PREFIX}{server}")
}

/// `server_alive:<server>`.
pub fn server_alive_key(server: &str) -> String {
    format!("{SERVER_ALIVE_PREFIX}{server}")
}

/// The user id of a `user_servers:` key, if it is one.
pub fn user_of_servers_key(key: &str) -> Option<&str> {
    key.strip_prefix(USER_SERVERS_PREFIX)
}

/// The server id of a `server_alive:` key, if it is one.
pub fn server_of_alive_key(key: &str) -> Option<&str> {
    key.strip_prefix(SERVER_ALIVE_PREFIX)
}

/// `{<tag>}` for keys of `user` that a multi-key command on a Cluster uses together
/// (`history:{u}` and `history_meta:{u}`): Redis Cluster hashes only what is between the first
/// `{` and the first `}` after it, so both keys land in one slot. An id without braces is its
/// own tag (`{alice}`, the keys of before). An id with a `{` or `}` (or an empty one) would cut
/// the tag short or leave it empty (then each whole key is hashed, to different slots, and the
/// command fails CROSSSLOT): its tag is `x` and the id's bytes in hex, followed by `{hex}`
/// outside the tag, so it is never empty, never equals the tag of an id without braces (whose
/// keys hold no second `{`), and two ids never share one.
pub fn user_hash_tag(user: &str) -> String {
    if !user.is_empty() && !user.contains(['{', '}']) {
        return format!("{{{user}}}");
    }
    format!("{{x{}}}{{hex}}", hex::encode(user.as_bytes()))
}

/// [`user_hash_tag`] in Lua, for scripts that build a user's tagged keys themselves (the
/// standalone routing script): defines `local function user_tag(u)`.
pub const USER_HASH_TAG_LUA: &str = r#"
local function user_tag(u)
  if u ~= '' and not string.find(u, '[{}]') then
    return '{' .. u .. '}'
  end
  return '{x' .. string.gsub(u, '.', function(c) return string.format('%02x', string.byte(c)) end) .. '}{hex}'
end
"#;

/// A node's lease value: what `wsctl routes servers` shows about a live node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    /// The address the node listens on, as it printed at startup.
    pub address: String,
    /// wsctl version of the node.
    pub version: String,
    /// Unix time (seconds) the node started.
    pub started_at: u64,
    /// Open connections at the last refresh.
    pub connections: u64,
}

#[cfg(test)]
mod tests {
    use super::user_hash_tag;

    /// What Redis Cluster hashes of `key`: the tag when there is a non-empty one, else the key.
    fn hashed(key: &str) -> &str {
        match key.find('{') {
            Some(open) => match key[open + 1..].find('}') {
                Some(len) if len > 0 => &key[open + 1..open + 1 + len],
                _ => key,
            },
            None => key,
        }
    }

    #[test]
    fn a_users_tagged_keys_share_one_slot_whatever_the_id() {
        for user in ["alice", "}x{y", "{a}", "a{b", "{}", "}", "{", "", "a}b{c}"] {
            let (a, b) = (format!("history:{}", user_hash_tag(user)), format!("history_meta:{}", user_hash_tag(user)));
            assert_eq!(hashed(&a), hashed(&b), "{user:?}: {a} / {b}");
            assert!(hashed(&a) != a, "{user:?} has a tag");
        }
        assert_eq!(user_hash_tag("alice"), "{alice}", "ids without braces keep their keys");
        // No two ids share a tag: an id without braces never yields `{hex}`.
        assert_ne!(user_hash_tag("7d"), user_hash_tag("}"));
        assert_ne!(user_hash_tag("7d}{hex"), user_hash_tag("}"));
    }
}
