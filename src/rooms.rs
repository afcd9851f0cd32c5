//! Rooms on this node: room -> member connections (with their outboxes), and each connection's
//! set of rooms, with the caps that bound both. Delivery never waits, like the hub's: a member
//! whose queue is full is closed as a slow consumer (4008).
//!
//! The broker decides from [`Rooms::members`] whether this node subscribes to a room's channel:
//! membership changes mark the room *dirty* ([`Rooms::take_dirty`]), a set with at most one entry
//! per room, so the queue of pending subscription changes is bounded by the number of rooms and a
//! burst of joins and leaves of one room coalesces into one reconcile.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use uuid::Uuid;

use crate::hub::{Frame, Offer, Outbox};
use crate::metrics::Metrics;

/// Longest room name, in bytes. Room names go into a Redis channel (`room:<name>`) and a HASH key,
/// and into every delivered envelope: 128 bytes is room for `org:team:channel`-style names
/// while keeping every envelope's overhead small.
pub const MAX_ROOM_NAME: usize = 128;
/// Rooms one connection may be in at once. Each membership costs a set entry on the
/// connection and in the room; 64 covers a client with a lobby, a few chats and some topics, and
/// keeps a misbehaving client from creating (and subscribing the node to) thousands of channels.
pub const MAX_ROOMS_PER_CONN: usize = 64;
/// Member connections of one room on one node. One room message is one frame offered to each
/// member, under the room's lock: 10,000 keeps one delivery under a few milliseconds.
pub const MAX_ROOM_MEMBERS: usize = 10_000;

/// Why a join, leave or room message was refused. Each maps to an error code on the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RoomError {
    #[error("room name must be 1-{MAX_ROOM_NAME} bytes of [A-Za-z0-9_.:@-]")]
    BadName,
    #[error("this connection is already in {0} rooms, the limit")]
    TooManyRooms(usize),
    #[error("room is full ({0} connections on this node)")]
    Full(usize),
    #[error("this connection has not joined the room")]
    NotMember,
}

/// Whether `name` is a valid room name: 1..=[`MAX_ROOM_NAME`] bytes of `[A-Za-z0-9_.:@-]`.
/// The charset keeps names safe in channel names, keys, URLs and logs without escaping.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_ROOM_NAME && name.bytes().all(is_name_byte)
}

/// Whether `b` may stand in a room name: `[A-Za-z0-9_.:@-]`.
pub fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'@' | b'-')
}

/// The caps, [`MAX_ROOMS_PER_CONN`] and [`MAX_ROOM_MEMBERS`] by default (tests lower them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomLimits {
    pub rooms_per_conn: usize,
    pub members_per_room: usize,
}

impl Default for RoomLimits {
    fn default() -> Self {
        RoomLimits { rooms_per_conn: MAX_ROOMS_PER_CONN, members_per_room: MAX_ROOM_MEMBERS }
    }
}

#[derive(Default)]
struct State {
    rooms: HashMap<Arc<str>, Vec<(Uuid, Outbox)>>,
    by_conn: HashMap<Uuid, HashSet<Arc<str>>>,
    /// Rooms whose membership changed since the broker last looked.
    dirty: HashSet<Arc<str>>,
}

/// Every room with a member on this node.
pub struct Rooms {
    state: Mutex<State>,
    limits: RoomLimits,
    metrics: Metrics,
    /// Fires when a room becomes dirty.
    changed: Notify,
}

impl Rooms {
    pub fn new(limits: RoomLimits, metrics: Metrics) -> Self {
        Rooms { state: Mutex::new(State::default()), limits, metrics, changed: Notify::new() }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update completes before anything can panic, so a poisoned lock is consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds `conn` to `room`. Joining a room twice is not an error (and changes nothing).
    pub fn join(&self, room: &str, conn: Uuid, outbox: &Outbox) -> Result<(), RoomError> {
        if !valid_name(room) {
            return Err(RoomError::BadName);
        }
        let mut st = self.lock();
        let mine = st.by_conn.get(&conn);
        if mine.is_some_and(|m| m.contains(room)) {
            return Ok(());
        }
        if mine.map_or(0, HashSet::len) >= self.limits.rooms_per_conn {
            return Err(RoomError::TooManyRooms(self.limits.rooms_per_conn));
        }
        if st.rooms.get(room).map_or(0, Vec::len) >= self.limits.members_per_room {
            return Err(RoomError::Full(self.limits.members_per_room));
        }
        let room: Arc<str> = st.rooms.get_key_value(room).map_or_else(|| Arc::from(room), |(k, _)| k.clone());
        st.rooms.entry(room.clone()).or_default().push((conn, outbox.clone()));
        st.by_conn.entry(conn).or_default().insert(room.clone());
        st.dirty.insert(room);
        drop(st);
        self.changed.notify_one();
        Ok(())
    }

    /// Removes `conn` from `room`.
    pub fn leave(&self, room: &str, conn: Uuid) -> Result<(), RoomError> {
        let mut st = self.lock();
        let Some(mine) = st.by_conn.get_mut(&conn) else { return Err(RoomError::NotMember) };
        let Some(room) = mine.take(room) else { return Err(RoomError::NotMember) };
        if mine.is_empty() {
            st.by_conn.remove(&conn);
        }
        remove_member(&mut st, room, conn);
        drop(st);
        self.changed.notify_one();
        Ok(())
    }

    /// Removes `conn` from every room it is in (it disconnected).
    pub fn leave_all(&self, conn: Uuid) {
        let mut st = self.lock();
        let Some(mine) = st.by_conn.remove(&conn) else { return };
        for room in mine {
            remove_member(&mut st, room, conn);
        }
        drop(st);
        self.changed.notify_one();
    }

    /// Whether `conn` is in `room`.
    pub fn is_member(&self, room: &str, conn: Uuid) -> bool {
        self.lock().by_conn.get(&conn).is_some_and(|m| m.contains(room))
    }

    /// Queues `frame` to every member of `room` on this node except `except`. Returns how many
    /// took it.
    pub fn deliver(&self, room: &str, frame: &Frame, except: Option<Uuid>) -> usize {
        let st = self.lock();
        let Some(members) = st.rooms.get(room) else { return 0 };
        let mut queued = 0;
        for (_, outbox) in members.iter().filter(|(c, _)| Some(*c) != except) {
            if outbox.offer(frame.clone(), &self.metrics) == Offer::Queued {
                queued += 1;
            }
        }
        drop(st);
        self.metrics.messages_delivered.inc_by(queued as u64);
        queued
    }

    /// Member connections of `room` on this node, now.
    pub fn members(&self, room: &str) -> usize {
        self.lock().rooms.get(room).map_or(0, Vec::len)
    }

    /// Every room with a member here, with its member count.
    pub fn counts(&self) -> Vec<(Arc<str>, usize)> {
        self.lock().rooms.iter().map(|(r, m)| (r.clone(), m.len())).collect()
    }

    /// The rooms whose membership changed since the last call (each once).
    pub fn take_dirty(&self) -> Vec<Arc<str>> {
        self.lock().dirty.drain().collect()
    }

    /// Resolves once a room became dirty (or had, since the last call returned).
    pub async fn changed(&self) {
        self.changed.notified().await
    }
}

fn remove_member(st: &mut State, room: Arc<str>, conn: Uuid) {
    if let Some(members) = st.rooms.get_mut(&room) {
        members.retain(|(c, _)| *c != conn);
        if members.is_empty() {
            st.rooms.remove(&room);
        }
    }
    st.dirty.insert(room);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbox() -> Outbox {
        Outbox::new(8, 1 << 20).0
    }

    #[test]
    fn names_are_bounded_and_plain() {
        assert!(valid_name("lobby") && valid_name("org:team.a@x-1_2"));
        assert!(!valid_name("") && !valid_name("a b") && !valid_name("é") && !valid_name("a\nb"));
        assert!(valid_name(&"a".repeat(MAX_ROOM_NAME)) && !valid_name(&"a".repeat(MAX_ROOM_NAME + 1)));
    }

    #[test]
    fn caps_and_membership() {
        let rooms = Rooms::new(RoomLimits { rooms_per_conn: 2, members_per_room: 2 }, Metrics::new());
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        rooms.join("r1", a, &outbox()).unwrap();
        rooms.join("r1", a, &outbox()).unwrap();
        rooms.join("r2", a, &outbox()).unwrap();
        assert_eq!(rooms.join("r3", a, &outbox()), Err(RoomError::TooManyRooms(2)));
        rooms.join("r1", b, &outbox()).unwrap();
        assert_eq!(rooms.join("r1", c, &outbox()), Err(RoomError::Full(2)));
        assert_eq!(rooms.members("r1"), 2);
        assert_eq!(rooms.leave("r2", b), Err(RoomError::NotMember));
        rooms.leave("r1", b).unwrap();
        rooms.leave_all(a);
        assert_eq!(rooms.members("r1"), 0);
        assert!(rooms.counts().is_empty());
        let mut dirty = rooms.take_dirty();
        dirty.sort();
        assert_eq!(dirty, [Arc::from("r1"), Arc::from("r2")]);
    }
}
