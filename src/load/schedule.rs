//! Who sends to whom and where each connection goes: user ids, the URL of each connection
//! (round-robin, non-sticky), receiver picking per [`Pattern`], and the chat frame written
//! without building a JSON tree (reading is `wire`'s job).

use std::fmt::Write as _;

use rand::Rng;

use super::config::{LoadConfig, Pattern};

/// The users of this shard and how they map to targets. Indexes are local (0..users).
#[derive(Debug)]
pub struct Plan {
    /// Global index of local user 0.
    pub first_user: u32,
    pub users: u32,
    pub connections_per_user: u32,
    pub targets: usize,
    pub pattern: Pattern,
    pub hot_users: u32,
    /// User ids, by local index.
    pub names: Vec<Box<str>>,
    /// The same, as JSON string literals (quoted and escaped), ready to write into frames.
    pub names_json: Vec<Box<str>>,
    /// Local users by home target (the target of their first connection).
    by_home: Vec<Vec<u32>>,
    /// `Pattern::Room`: users per room (local user `u` is in local room `u / room_size`), and
    /// the rooms' names as JSON string literals, by local room index. Empty otherwise.
    pub room_size: u32,
    pub room_names_json: Vec<Box<str>>,
}

impl Plan {
    pub fn new(config: &LoadConfig) -> Plan {
        let range = config.user_range();
        let targets = config.urls.len();
        let names: Vec<Box<str>> = range.clone().map(|g| format!("{}{g}", config.user_prefix).into_boxed_str()).collect();
        let names_json = names.iter().map(|n| serde_json::to_string(n).expect("a string serializes").into_boxed_str()).collect();
        let mut by_home = vec![Vec::new(); targets];
        for (local, g) in range.clone().enumerate() {
            by_home[g as usize % targets].push(local as u32);
        }
        let (room_size, room_names_json) = if config.pattern == Pattern::Room {
            let names = config.room_range().map(|r| serde_json::to_string(&format!("{}{r}", config.room_prefix)).expect("a string serializes").into_boxed_str());
            (config.room_size, names.collect())
        } else {
            (0, Vec::new())
        };
        Plan {
            room_size,
            room_names_json,
            first_user: range.start,
            users: range.len() as u32,
            connections_per_user: config.connections_per_user,
            targets,
            pattern: config.pattern,
            hot_users: config.hot_users,
            names,
            names_json,
            by_home,
        }
    }

    /// Connection slots: user `u`'s `j`-th connection is slot `u * connections_per_user + j`.
    pub fn slots(&self) -> u32 {
        self.users * self.connections_per_user
    }

    pub fn user_of(&self, slot: u32) -> u32 {
        slot / self.connections_per_user
    }

    /// The target URL index of a slot: consecutive users and a user's connections rotate over
    /// the targets, so a user's connections land on different nodes (non-sticky).
    pub fn target_of(&self, slot: u32) -> usize {
        let g = u64::from(self.first_user + self.user_of(slot));
        let j = u64::from(slot % self.connections_per_user);
        ((g + j) % self.targets as u64) as usize
    }

    /// Rooms of this shard (0 without the room pattern).
    pub fn rooms(&self) -> u32 {
        self.room_names_json.len() as u32
    }

    /// The local room of local user `user` (`Pattern::Room`).
    pub fn room_of(&self, user: u32) -> u32 {
        user / self.room_size.max(1)
    }

    /// Whether this run's messages go to rooms (`Pattern::Room`).
    pub fn rooms_mode(&self) -> bool {
        self.room_size > 0
    }

    /// How many audiences there are: local users, or with rooms local rooms.
    pub fn audiences(&self) -> u32 {
        if self.rooms_mode() {
            self.rooms()
        } else {
            self.users
        }
    }

    /// The audience local user `user` receives as: itself, or with rooms its room.
    pub fn audience_of(&self, user: u32) -> u32 {
        if self.rooms_mode() {
            self.room_of(user)
        } else {
            user
        }
    }

    /// Audience `to`: a local user, or with rooms a local room.
    pub fn audience(&self, to: u32) -> Audience<'_> {
        if self.rooms_mode() {
            Audience::Room(&self.room_names_json[to as usize])
        } else {
            Audience::User(&self.names_json[to as usize])
        }
    }

    /// The connection slots of audience `to` (see [`Plan::audience`]).
    pub fn audience_slots(&self, to: u32) -> std::ops::Range<u32> {
        if self.rooms_mode() {
            self.room_slots(to)
        } else {
            let c = self.connections_per_user;
            to * c..(to + 1) * c
        }
    }

    /// The connection slots of local room `room`'s members.
    pub fn room_slots(&self, room: u32) -> std::ops::Range<u32> {
        let c = self.connections_per_user;
        room * self.room_size * c..((room + 1) * self.room_size).min(self.users) * c
    }

    fn home(&self, user: u32) -> usize {
        (self.first_user + user) as usize % self.targets
    }

    /// A receiver for a message from local user `from`; never `from` itself.
    pub fn pick(&self, from: u32, rng: &mut impl Rng) -> u32 {
        let n = self.users;
        let other = |rng: &mut dyn rand::RngCore| {
            let v = rng.random_range(0..n - 1);
            if v >= from {
                v + 1
            } else {
                v
            }
        };
        match self.pattern {
            // Room senders address their room, not a user (see `room_of`).
            Pattern::Random | Pattern::Room => other(rng),
            Pattern::Ring => (from + 1) % n,
            Pattern::Hot => {
                let hot = self.hot_users.min(n);
                let v = rng.random_range(0..hot);
                if v == from {
                    // A hot user sends to the next hot one (or anyone, when only one is hot).
                    if hot > 1 {
                        (v + 1) % hot
                    } else {
                        other(rng)
                    }
                } else {
                    v
                }
            }
            Pattern::SelfNode => {
                let list = &self.by_home[self.home(from)];
                if list.len() < 2 {
                    return other(rng);
                }
                loop {
                    let v = list[rng.random_range(0..list.len())];
                    if v != from {
                        return v;
                    }
                }
            }
            Pattern::CrossNode => {
                let home = self.home(from);
                let others = self.targets - 1;
                let mut h = rng.random_range(0..others);
                if h >= home {
                    h += 1;
                }
                let list = &self.by_home[h];
                if list.is_empty() {
                    return other(rng);
                }
                list[rng.random_range(0..list.len())]
            }
        }
    }
}

/// Sequence written for a message sent while every connection of the receiver was offline:
/// it is counted apart and kept out of the loss audit.
pub const OFFLINE_SEQ: i64 = -1;

/// Whom a stamped message is for, with the name as a JSON string literal
/// ([`Plan::names_json`], [`Plan::room_names_json`]).
#[derive(Debug, Clone, Copy)]
pub enum Audience<'a> {
    User(&'a str),
    Room(&'a str),
}

impl Audience<'_> {
    /// The frame type a client sends to it.
    pub fn message_type(self) -> &'static str {
        match self {
            Audience::User(_) => "chat_message",
            Audience::Room(_) => "room_message",
        }
    }
}

/// What every message carries, read back by `wire`: the payload
/// `[sender_slot, seq, intended_ns, "padding"]`.
#[derive(Debug, Clone, Copy)]
pub struct Stamp<'a> {
    pub sender_slot: u32,
    pub seq: i64,
    pub intended_ns: u64,
    pub padding: &'a str,
}

/// Writes `{"type":kind,"receiverID"|"room":..,"payload":[stamp]}` into `out` (cleared first),
/// with `"id"` when given (it asks the server for an ack).
pub fn write_stamped(out: &mut String, kind: &str, to: Audience<'_>, stamp: Stamp<'_>, id: Option<u64>) {
    out.clear();
    let (key, name) = match to {
        Audience::User(n) => ("receiverID", n),
        Audience::Room(n) => ("room", n),
    };
    let Stamp { sender_slot, seq, intended_ns, padding } = stamp;
    // Infallible: writing to a String.
    let _ = write!(out, "{{\"type\":\"{kind}\",\"{key}\":{name},\"payload\":[{sender_slot},{seq},{intended_ns},\"{padding}\"]");
    if let Some(id) = id {
        let _ = write!(out, ",\"id\":{id}");
    }
    out.push('}');
}

/// Id of a connection's `join` (acks of sends count from 1, so it never collides).
pub const JOIN_ID: u64 = 0;

/// Writes the `join` frame for `room_json` (a JSON string literal), asking for an ack.
pub fn write_join(room_json: &str) -> String {
    format!("{{\"type\":\"join\",\"room\":{room_json},\"id\":{JOIN_ID}}}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_frames_are_json_whatever_the_user_id() {
        let mut c = LoadConfig::new(vec!["ws://a:1/ws".into()]);
        c.user_prefix = "q\"\\ é+%&#".to_string();
        c.clients = 2;
        let plan = Plan::new(&c);
        let mut s = String::new();
        let stamp = Stamp { sender_slot: 7, seq: 42, intended_ns: 123456789, padding: "xx" };
        write_stamped(&mut s, "chat_message", plan.audience(1), stamp, Some(9));
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["receiverID"], "q\"\\ é+%&#1");
        assert_eq!((v["id"].as_u64(), &v["payload"]), (Some(9), &serde_json::json!([7, 42, 123456789, "xx"])));
        let env = format!(r#"{{"type":"chat_message","payload":{},"senderId":"x"}}"#, v["payload"]);
        assert!(matches!(crate::load::wire::parse(&env), crate::load::wire::Incoming::Stamped { sender_slot: 7, seq: 42, .. }));
    }

    #[test]
    fn rooms_split_users_and_shards_never_share_a_room() {
        let mut c = LoadConfig::new(vec!["ws://a:1/ws".into(), "ws://b:1/ws".into()]);
        (c.pattern, c.rooms, c.room_size, c.clients, c.connections_per_user) = (Pattern::Room, 5, 4, 20, 2);
        c.shard = (1, 2);
        let plan = Plan::new(&c);
        // Shard 2 of 2 owns rooms 2..5, users 8..20.
        assert_eq!((plan.first_user, plan.users, plan.rooms()), (8, 12, 3));
        assert_eq!(&*plan.room_names_json[0], "\"load-room-2\"");
        assert_eq!((plan.room_of(0), plan.room_of(3), plan.room_of(4), plan.room_of(11)), (0, 0, 1, 2));
        assert_eq!((plan.room_slots(0), plan.room_slots(2)), (0..8, 16..24));
        let mut s = String::new();
        let stamp = Stamp { sender_slot: 3, seq: 4, intended_ns: 5, padding: "xx" };
        write_stamped(&mut s, plan.audience(1).message_type(), plan.audience(1), stamp, Some(6));
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v, serde_json::json!({"type":"room_message","room":"load-room-3","payload":[3,4,5,"xx"],"id":6}));
        let j: serde_json::Value = serde_json::from_str(&write_join(&plan.room_names_json[2])).unwrap();
        assert_eq!(j, serde_json::json!({"type":"join","room":"load-room-4","id":0}));
    }

    #[test]
    fn cross_node_always_picks_another_home() {
        let mut c = LoadConfig::new(vec!["ws://a:1/ws".into(), "ws://b:1/ws".into()]);
        c.clients = 20;
        c.pattern = Pattern::CrossNode;
        let plan = Plan::new(&c);
        let mut rng = rand::rng();
        for from in 0..20 {
            for _ in 0..50 {
                let to = plan.pick(from, &mut rng);
                assert_ne!(plan.home(to), plan.home(from));
            }
        }
    }
}
