//! Who may join and send to a room: the grants a connection's token carries (`rooms`: join,
//! receive and send; `rooms_read`: join and receive only), as room patterns (an exact name, or a
//! prefix ending in `*`), and the node's room policy. Pure: no I/O, no clock.

use serde::{Deserialize, Serialize};

/// Patterns a token may carry at most per claim: each join is checked against every one.
pub const MAX_ROOM_PATTERNS: usize = 256;

/// What a connection may do in a room it joined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Join, receive and send.
    Write,
    /// Join and receive; a `room_message` is refused `forbidden`.
    Read,
}

/// One room pattern: `team:42` (that room) or `team:42:*` (every room whose name starts with
/// `team:42:`). `*` alone matches every room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RoomPattern(String);

impl RoomPattern {
    /// A pattern from a claim; None for one that can match no valid room name.
    pub fn parse(p: &str) -> Option<RoomPattern> {
        let ok = match p.strip_suffix('*') {
            // `*` alone: every room.
            Some("") => true,
            Some(prefix) => prefix.len() < crate::rooms::MAX_ROOM_NAME && prefix.bytes().all(crate::rooms::is_name_byte),
            None => crate::rooms::valid_name(p),
        };
        ok.then(|| RoomPattern(p.to_string()))
    }

    pub fn matches(&self, room: &str) -> bool {
        match self.0.strip_suffix('*') {
            Some(prefix) => room.starts_with(prefix),
            None => self.0 == room,
        }
    }
}

/// The room grants of one connection (from its JWT, or a connect proxy's answer).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    pub write: Vec<RoomPattern>,
    pub read: Vec<RoomPattern>,
}

impl Grants {
    /// The grants of the claims `rooms` and `rooms_read`; patterns that can match nothing are
    /// dropped, and at most [`MAX_ROOM_PATTERNS`] of each are kept.
    pub fn from_claims(rooms: &[String], rooms_read: &[String]) -> Grants {
        let parse = |v: &[String]| v.iter().filter_map(|p| RoomPattern::parse(p)).take(MAX_ROOM_PATTERNS).collect();
        Grants { write: parse(rooms), read: parse(rooms_read) }
    }

    /// What these grants allow in `room`: write wins over read.
    pub fn access(&self, room: &str) -> Option<Access> {
        if self.write.iter().any(|p| p.matches(room)) {
            Some(Access::Write)
        } else if self.read.iter().any(|p| p.matches(room)) {
            Some(Access::Read)
        } else {
            None
        }
    }
}

/// The node's room policy (`--room-policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RoomPolicy {
    /// A join needs a grant: a claim, a room token, or the join proxy's yes. The default with
    /// auth on.
    #[default]
    Claims,
    /// Any connection may join any room and send to it (the behaviour before grants; always so
    /// with auth off, where there is no identity to check).
    Open,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants(write: &[&str], read: &[&str]) -> Grants {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        Grants::from_claims(&v(write), &v(read))
    }

    #[test]
    fn exact_names_and_prefixes_match_what_they_say() {
        let g = grants(&["lobby", "team:42:*"], &["news:*"]);
        assert_eq!(g.access("lobby"), Some(Access::Write));
        assert_eq!(g.access("lobby2"), None, "an exact name is not a prefix");
        assert_eq!(g.access("team:42:general"), Some(Access::Write));
        assert_eq!(g.access("team:42"), None, "the prefix includes its last colon");
        assert_eq!(g.access("team:421:x"), None);
        assert_eq!(g.access("news:today"), Some(Access::Read));
        assert_eq!(g.access("dm:alice:bob"), None);
    }

    #[test]
    fn write_wins_over_read_and_star_is_everything() {
        assert_eq!(grants(&["a"], &["a"]).access("a"), Some(Access::Write));
        assert_eq!(grants(&[], &["*"]).access("anything"), Some(Access::Read));
    }

    #[test]
    fn patterns_that_match_nothing_are_dropped() {
        let g = grants(&["", "bad name", "x*y", "ok"], &[]);
        assert_eq!(g.write, vec![RoomPattern("ok".into())]);
        let many: Vec<String> = (0..MAX_ROOM_PATTERNS + 5).map(|i| format!("r{i}")).collect();
        assert_eq!(Grants::from_claims(&many, &[]).write.len(), MAX_ROOM_PATTERNS);
    }
}
