//! A connection's room permissions: whether a join is allowed (the token's `rooms` and
//! `rooms_read` claims, a room token on the join, or an open policy), which rooms it joined
//! read-only, and the expiry of the rooms it joined by room token.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use crate::hub::Outbox;
use crate::protocol::{self, ErrorCode, FrameError};
use crate::room_access::{Access, Grants, RoomPolicy};
use crate::server::Node;

/// `reason` of the `left` frame sent when a room token expires.
pub const TOKEN_EXPIRED: &str = "token_expired";

/// What a join was allowed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Admitted {
    pub(crate) access: Access,
    /// A room token's deadline: the connection leaves the room then.
    pub(crate) until: Option<SystemTime>,
}

/// One connection's room permissions.
#[derive(Debug, Default)]
pub(crate) struct RoomGate {
    /// None: every room is open (auth off, or `--room-policy open`).
    grants: Option<Grants>,
    state: Mutex<GateState>,
    next: AtomicU64,
}

#[derive(Debug, Default)]
struct GateState {
    read_only: HashSet<Arc<str>>,
    /// Rooms joined by a room token, with the join's number (a later join replaces it).
    by_token: HashMap<Arc<str>, u64>,
}

impl RoomGate {
    /// The gate of a connection with `grants` (None: auth off) under `policy`.
    pub(crate) fn new(grants: Option<Grants>, policy: RoomPolicy) -> Self {
        RoomGate { grants: grants.filter(|_| policy == RoomPolicy::Claims), ..Default::default() }
    }

    /// Whether `user` may join `room`: a grant, else the join's room token, else refused
    /// `forbidden`.
    pub(crate) fn admit(&self, node: &Node, user: &str, room: &str, token: Option<&str>) -> Result<Admitted, FrameError> {
        let Some(grants) = &self.grants else { return Ok(Admitted { access: Access::Write, until: None }) };
        if let Some(access) = grants.access(room) {
            return Ok(Admitted { access, until: None });
        }
        let forbidden = |why: String| FrameError::new(ErrorCode::Forbidden, why);
        let (Some(token), Some(auth)) = (token, node.security.auth.as_ref()) else {
            return Err(forbidden("no grant for this room: a `rooms` or `rooms_read` claim, or a room token on the join".into()));
        };
        match auth.verify_room(token) {
            Ok(g) if g.user == user && g.room == room => Ok(Admitted { access: g.access, until: Some(g.expires_at) }),
            Ok(_) => Err(forbidden("the room token is for another user or room".into())),
            Err(e) => Err(forbidden(format!("room token: {e}"))),
        }
    }

    /// Records a join; returns the join's number when it came with a room token's deadline.
    pub(crate) fn joined(&self, room: &str, a: Admitted) -> Option<u64> {
        let mut st = self.lock();
        let room: Arc<str> = Arc::from(room);
        if a.access == Access::Read {
            st.read_only.insert(room.clone());
        } else {
            st.read_only.remove(&room);
        }
        st.by_token.remove(&room);
        a.until?;
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        st.by_token.insert(room, n);
        Some(n)
    }

    /// The connection left `room`.
    pub(crate) fn left(&self, room: &str) {
        let mut st = self.lock();
        st.read_only.remove(room);
        st.by_token.remove(room);
    }

    /// A `room_message` to `room` is refused `forbidden` when it was joined read-only.
    pub(crate) fn may_send(&self, room: &str) -> Result<(), FrameError> {
        if self.lock().read_only.contains(room) {
            return Err(FrameError::new(ErrorCode::Forbidden, "this room was joined read-only (`rooms_read`, or a read-only room token)"));
        }
        Ok(())
    }

    /// Whether join number `n` of `room` (by room token) still stands: taken out of the record.
    fn expire(&self, room: &str, n: u64) -> bool {
        let mut st = self.lock();
        if st.by_token.get(room) != Some(&n) {
            return false;
        }
        st.by_token.remove(room);
        st.read_only.remove(room);
        true
    }

    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Takes the connection out of `room` when its room token expires (unless it left, or joined
/// again, before), with a `left` frame saying why. One timer per room joined by token, at most
/// the rooms-per-connection cap, gone with the session.
pub(crate) async fn leave_at_expiry(node: Arc<Node>, gate: Arc<RoomGate>, outbox: Outbox, conn: uuid::Uuid, room: String, n: u64, at: SystemTime) {
    let left = at.duration_since(SystemTime::now()).unwrap_or_default();
    tokio::select! {
        _ = tokio::time::sleep(left) => {}
        _ = outbox.ctl().closed() => return,
    }
    if gate.expire(&room, n) && node.rooms.leave(&room, conn).is_ok() {
        outbox.offer(protocol::encode_left(&room, TOKEN_EXPIRED), &node.metrics);
    }
}
