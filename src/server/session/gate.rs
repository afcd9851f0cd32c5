//! A connection's room permissions: whether a join is allowed (the token's `rooms` and
//! `rooms_read` claims, a room token on the join, the join proxy's answer, or an open policy),
//! which rooms it joined read-only, and the expiry of the rooms it joined by room token.

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

/// What the gate says of a join.
#[derive(Debug)]
pub(crate) enum Decision {
    Admit(Admitted),
    Refuse(FrameError),
    /// No grant, no room token: the join proxy decides.
    AskProxy,
}

/// One connection's room permissions.
#[derive(Debug)]
pub(crate) struct RoomGate {
    /// None: every room is open (auth off, or `--room-policy open`).
    grants: Option<Grants>,
    /// The client's address, told to the join proxy.
    pub(crate) ip: std::net::IpAddr,
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
    pub(crate) fn new(grants: Option<Grants>, policy: RoomPolicy, ip: std::net::IpAddr) -> Self {
        RoomGate { grants: grants.filter(|_| policy == RoomPolicy::Claims), ip, state: Mutex::default(), next: AtomicU64::new(0) }
    }

    /// Whether `user` may join `room`: a grant, else the join's room token, else the join proxy
    /// (when there is one), else refused `forbidden`.
    pub(crate) fn admit(&self, node: &Node, user: &str, room: &str, token: Option<&str>) -> Decision {
        let Some(grants) = &self.grants else { return Decision::Admit(Admitted { access: Access::Write, until: None }) };
        if let Some(access) = grants.access(room) {
            return Decision::Admit(Admitted { access, until: None });
        }
        let forbidden = |why: String| Decision::Refuse(FrameError::new(ErrorCode::Forbidden, why));
        match (token, node.security.auth.as_ref()) {
            (Some(token), Some(auth)) => match auth.verify_room(token) {
                Ok(g) if g.user == user && g.room == room => Decision::Admit(Admitted { access: g.access, until: Some(g.expires_at) }),
                Ok(_) => forbidden("the room token is for another user or room".into()),
                Err(e) => forbidden(format!("room token: {e}")),
            },
            _ if node.join_proxy.is_some() => Decision::AskProxy,
            _ => forbidden("no grant for this room: a `rooms` or `rooms_read` claim, or a room token on the join".into()),
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

/// The join proxy's answer to `{"user":..,"room":..,"client_ip":..}`: 200
/// `{"allow":true,"read_only":false}` admits, 200 `{"allow":false}` or 403 refuses `forbidden`;
/// anything else (another status, garbage, a timeout, the backend down or busy) refuses
/// `unavailable`. Never an allow by default.
pub(crate) async fn ask_proxy(proxy: &crate::hooks::HookClient, user: &str, room: &str, ip: std::net::IpAddr) -> Result<Admitted, FrameError> {
    #[derive(serde::Deserialize)]
    struct Answer {
        allow: bool,
        #[serde(default)]
        read_only: bool,
    }
    let body = serde_json::json!({"user": user, "room": room, "client_ip": ip.to_string()}).to_string().into_bytes();
    let unavailable = |why: String| FrameError::new(ErrorCode::Unavailable, format!("join proxy: {why}; not joined"));
    let forbidden = || FrameError::new(ErrorCode::Forbidden, "the join proxy refused this join");
    match proxy.post(body).await {
        Ok((200, body)) => match serde_json::from_slice::<Answer>(&body) {
            Ok(Answer { allow: true, read_only }) => {
                Ok(Admitted { access: if read_only { Access::Read } else { Access::Write }, until: None })
            }
            Ok(_) => Err(forbidden()),
            Err(_) => Err(unavailable("its answer is not {\"allow\":bool}".into())),
        },
        Ok((403, _)) => Err(forbidden()),
        Ok((status, _)) => Err(unavailable(format!("answered {status}"))),
        Err(e) => Err(unavailable(e.to_string())),
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
