//! Per-user history in Redis (`--history`): the keys, the Lua that appends to a history and
//! assigns offsets, and the bounded read behind a resume (`/ws?since=..&epoch=..`).
//!
//! A user's history is two keys in one Cluster slot (the `{user}` hash tag):
//! `history:{u}`, a LIST of final envelopes trimmed to the configured size, and
//! `history_meta:{u}`, a HASH with `epoch` (a random id made when the hash is created, so it
//! changes whenever the history was lost) and `offset` (the last offset given out). The offset of
//! each list entry is implied by its position: the last entry has offset `offset`. Both keys get
//! the same TTL on every write, so they expire together.
//!
//! On standalone Redis the append is part of the routing script (see `publisher`); on a Cluster
//! [`append_script`] runs on the history's slot, pipelined for a batch, before the route-set reads.

use std::time::Duration;

use fred::prelude::*;
use fred::types::scripts::Script;
use rand::distr::{Alphanumeric, SampleString};

use crate::broker::{HistoryConfig, Recovery, RecoveryGap, ReplayBudget};
use crate::protocol::Frame;

use super::script::evalsha;

/// History list key of `user`: `history:{u}` (see [`crate::routes::user_hash_tag`] for ids with
/// braces).
pub(crate) fn history_key(user: &str) -> String {
    format!("{HISTORY_PREFIX}{}", crate::routes::user_hash_tag(user))
}
/// History meta key of `user`, in the same slot as [`history_key`].
pub(crate) fn meta_key(user: &str) -> String {
    format!("{META_PREFIX}{}", crate::routes::user_hash_tag(user))
}
pub(crate) const HISTORY_PREFIX: &str = "history:";
pub(crate) const META_PREFIX: &str = "history_meta:";

/// Length of a new epoch id: 62^10 values, so two histories of one user never share one.
const EPOCH_LEN: usize = 10;

/// A candidate epoch for histories created by the next script call (the script keeps the
/// existing epoch when there is one). Made by the node: a script's randomness is not trusted
/// to differ between calls on every Redis version.
pub(crate) fn new_epoch() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), EPOCH_LEN)
}

/// The TTL as the scripts take it (PEXPIRE milliseconds, at least 1).
pub(crate) fn ttl_ms(cfg: &HistoryConfig) -> String {
    cfg.ttl.as_millis().max(1).to_string()
}

/// The Lua that appends envelope `env` (an envelope without its closing brace) to the history of
/// the user whose keys are `hk`/`mk`, and leaves the final envelope in `env` and its offset in
/// `off`. Shared by the standalone routing script and [`append_script`], so both write the same
/// bytes. Expects `hist_size`, `ttl_ms` and `new_epoch` in scope.
pub(crate) const APPEND_LUA: &str = r#"
    local epoch = redis.call('HGET', mk, 'epoch')
    if not epoch then
      epoch = new_epoch
      redis.call('HSET', mk, 'epoch', epoch)
    end
    off = redis.call('HINCRBY', mk, 'offset', 1)
    env = env .. ',"offset":' .. string.format('%d', off) .. ',"epoch":"' .. epoch .. '"}'
    redis.call('RPUSH', hk, env)
    redis.call('LTRIM', hk, -hist_size, -1)
    redis.call('PEXPIRE', hk, ttl_ms)
    redis.call('PEXPIRE', mk, ttl_ms)
"#;

/// Cluster: appends ARGV[4..] (envelopes without their closing brace, in order) to the history of
/// one user (KEYS[1] list, KEYS[2] meta). ARGV[1] size, ARGV[2] TTL ms, ARGV[3] a new epoch.
/// Returns the final envelopes, in order.
pub(crate) fn append_script() -> Script {
    Script::from_lua(format!(
        r#"local hk, mk = KEYS[1], KEYS[2]
local hist_size, ttl_ms, new_epoch = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local out = {{}}
for i = 4, #ARGV do
  local env, off = ARGV[i], 0
  {APPEND_LUA}
  out[#out + 1] = env
end
return out"#
    ))
}

/// Reads one page of what a resume needs, atomically (both keys are in one slot): KEYS[1] list,
/// KEYS[2] meta; ARGV[1] the client's `since` (0 when its epoch is not the current one), ARGV[2]
/// the client's epoch, ARGV[3] a new epoch (used to create the meta when there is none, so the
/// client learns the epoch its next messages will carry), ARGV[4] TTL ms, ARGV[5] the most
/// entries to reach back, ARGV[6] the page's byte budget. Returns {epoch, offset, from, entries}:
/// the kept entries from offset `from` on (after `since`, the newest ARGV[5] at most), in order,
/// as many as fit in the budget (one at least).
fn read_script() -> Script {
    Script::from_lua(
        r#"local hk, mk = KEYS[1], KEYS[2]
local since = tonumber(ARGV[1])
local epoch = redis.call('HGET', mk, 'epoch')
local offset = tonumber(redis.call('HGET', mk, 'offset') or '0')
if not epoch then
  epoch = ARGV[3]
  offset = 0
  redis.call('DEL', hk)
  redis.call('HSET', mk, 'epoch', epoch, 'offset', 0)
  redis.call('PEXPIRE', mk, ARGV[4])
end
if epoch ~= ARGV[2] then since = 0 end
local len = redis.call('LLEN', hk)
local first = offset - len + 1
local from = math.max(since + 1, first)
local max = tonumber(ARGV[5])
if offset - from + 1 > max then from = offset - max + 1 end
local budget, used, entries = tonumber(ARGV[6]), 0, {}
local i = from
while i <= offset do
  local last = math.min(offset, i + 63)
  for _, e in ipairs(redis.call('LRANGE', hk, i - first, last - first)) do
    if #entries > 0 and used + #e > budget then return {epoch, offset, from, entries} end
    used = used + #e
    entries[#entries + 1] = e
  end
  i = last + 1
end
return {epoch, offset, from, entries}"#,
    )
}

/// Replays at most this many messages on one resume; a client further behind gets the newest
/// this many and `complete:false` (`too_far_behind`). Bounds the work of one handshake.
pub const REPLAY_MAX: usize = 1_000;
/// One page of a resume's history read not answered within this gives `complete:false`
/// (`unavailable`): the connection stays up with live messages, and the client may resume again
/// later.
pub const REPLAY_DEADLINE: Duration = Duration::from_secs(2);

/// Reads one page of the history of `user` after `since` (bounded by [`REPLAY_DEADLINE`]): at
/// most `budget.count` entries back and `budget.bytes` of them (one at least), and says whether
/// they reach back far enough and whether more follow.
pub(crate) async fn recover(client: &Client, cfg: &HistoryConfig, user: &str, since: u64, epoch: Option<&str>, budget: ReplayBudget) -> Recovery {
    let script = read_script();
    let call = || {
        let keys = vec![history_key(user), meta_key(user)];
        let args: Vec<Value> = vec![
            Value::from(since as i64),
            Value::from(epoch.unwrap_or("")),
            Value::from(new_epoch()),
            Value::from(ttl_ms(cfg)),
            Value::from(budget.count.max(1) as i64),
            Value::from(budget.bytes as i64),
        ];
        (keys, args)
    };
    let read = tokio::time::timeout(REPLAY_DEADLINE, evalsha::<Value, _>(client, &script, call)).await;
    let value = match read {
        Ok(Ok(v)) => v,
        _ => return Recovery::failed(since, RecoveryGap::Unavailable),
    };
    decide(value, since, epoch, budget.count).unwrap_or_else(|| Recovery::failed(since, RecoveryGap::Unavailable))
}

/// Turns the read script's reply into the client's answer.
fn decide(value: Value, since: u64, epoch: Option<&str>, max: usize) -> Option<Recovery> {
    let mut parts = value.into_array().into_iter();
    let current = parts.next()?.as_string()?;
    let offset = parts.next()?.as_u64()?;
    let from = parts.next()?.as_u64()?;
    let entries: Vec<Frame> = parts
        .next()?
        .into_array()
        .into_iter()
        .filter_map(|v| v.into_bytes().and_then(|b| Frame::try_from(b).ok()))
        .collect();
    // A client that has nothing yet (since 0, no epoch) misses nothing by not knowing the epoch.
    let same_epoch = epoch.map_or(since == 0, |e| e == current);
    let since = if same_epoch { since } else { 0 };
    let gap = if !same_epoch {
        Some(RecoveryGap::EpochChanged)
    } else if since > offset {
        Some(RecoveryGap::Ahead)
    } else if from > since + 1 {
        Some(if offset - since > max as u64 { RecoveryGap::TooFarBehind } else { RecoveryGap::Trimmed })
    } else {
        None
    };
    let last = if entries.is_empty() { offset } else { from + entries.len() as u64 - 1 };
    Some(Recovery { entries, epoch: current, offset: last, gap, more: last < offset })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The script's reply: `n` entries from offset `from`, the history ending at `offset`.
    fn reply(epoch: &str, offset: i64, from: i64, n: usize) -> Value {
        let entries: Vec<Value> = (0..n).map(|i| Value::from(format!("{{\"n\":{i}}}"))).collect();
        Value::Array(vec![Value::from(epoch), Value::from(offset), Value::from(from), Value::Array(entries)])
    }

    #[test]
    fn complete_only_when_every_missed_offset_is_replayed() {
        let gap = |v, since, epoch| decide(v, since, epoch, REPLAY_MAX).unwrap().gap;
        assert_eq!(gap(reply("e", 10, 7, 4), 6, Some("e")), None);
        assert_eq!(gap(reply("e", 10, 8, 3), 6, Some("e")), Some(RecoveryGap::Trimmed));
        assert_eq!(gap(reply("f", 10, 1, 10), 6, Some("e")), Some(RecoveryGap::EpochChanged));
        assert_eq!(gap(reply("e", 3, 7, 0), 6, Some("e")), Some(RecoveryGap::Ahead));
        assert_eq!(gap(reply("e", 0, 1, 0), 0, None), None);
        assert_eq!(gap(reply("e", 5000, 4001, REPLAY_MAX), 0, Some("e")), Some(RecoveryGap::TooFarBehind));
    }

    #[test]
    fn a_page_that_stops_short_of_the_end_says_more_follow() {
        let page = decide(reply("e", 10, 7, 2), 6, Some("e"), REPLAY_MAX).unwrap();
        assert_eq!((page.gap, page.offset, page.more), (None, 8, true));
        let page = decide(reply("e", 10, 9, 2), 8, Some("e"), REPLAY_MAX).unwrap();
        assert_eq!((page.gap, page.offset, page.more), (None, 10, false));
    }
}
