//! A session's room frames: join, leave and room_message. A join must pass the connection's
//! [`RoomGate`](super::gate::RoomGate) (refused `forbidden`, with the room, and nothing of the
//! room reaches the connection). Local members are served straight from [`crate::rooms::Rooms`]
//! (unless an idempotency key sends them through Redis); the broker carries the message to the
//! other nodes with members, and the session answers once it knows where it went.

use std::sync::Arc;

use super::gate::{Admitted, Decision, RoomGate};
use super::reader::{Answer, InFlight};
use super::Registration;
use crate::hub::Outbox;
use crate::server::Node;
use crate::broker::{room_idem_key, RoomIdem};
use crate::protocol::{self, ClientFrame, ErrorCode, FrameError};
use crate::server::deliver;
use crate::rooms::RoomError;

/// Handles a join, leave or room_message frame (`frame.kind` is one of them).
pub(super) fn handle(reg: &Registration, frame: ClientFrame<'_>) -> Option<InFlight> {
    let node = &reg.node;
    let id = frame.id;
    let fail = |err: RoomError| {
        reg.reject(id, &frame_error(err));
        None
    };
    let Some(room) = frame.room.as_deref().filter(|r| crate::rooms::valid_name(r)) else {
        return fail(RoomError::BadName);
    };
    match frame.kind.as_ref() {
        protocol::TYPE_JOIN => {
            let admitted = match reg.gate.admit(node, &reg.user, room, frame.token.as_deref()) {
                Decision::Admit(a) => a,
                Decision::Refuse(e) => return refuse(reg, id, room, &e),
                Decision::AskProxy => {
                    node.sessions.spawn(join_by_proxy(Member::of(reg), room.to_string(), id.map(ToOwned::to_owned)));
                    return None;
                }
            };
            // Answered once this node receives the room's messages from other nodes.
            match Member::of(reg).enter(room, admitted) {
                Ok(ticket) => Some(InFlight { id: id.map(ToOwned::to_owned), local: 0, ticket, answer: Answer::Plain }),
                Err(e) => fail(e),
            }
        }
        protocol::TYPE_LEAVE => {
            if let Err(e) = node.rooms.leave(room, reg.conn) {
                return fail(e);
            }
            reg.gate.left(room);
            if let Some(id) = id {
                reg.outbox.offer(protocol::encode_ack(id, None), &node.metrics);
            }
            None
        }
        _ => {
            if !node.rooms.is_member(room, reg.conn) {
                return fail(RoomError::NotMember);
            }
            if let Err(e) = reg.gate.may_send(room) {
                return refuse(reg, id, room, &e);
            }
            let idem = match frame.idem.as_deref().map(protocol::check_idem_key) {
                Some(Err(e)) => {
                    reg.reject(id, &e);
                    return None;
                }
                Some(Ok(())) => frame.idem.as_deref().map(|k| RoomIdem { key: room_idem_key(room, &reg.user, k), except: Some(reg.conn) }),
                None => None,
            };
            node.metrics.messages.inc();
            let ts = protocol::timestamp_now();
            let envelope = protocol::encode_room_envelope(protocol::TYPE_ROOM_MESSAGE, room, frame.payload, &reg.user, &ts);
            let started = deliver::room(node, room, &envelope, idem, Some(reg.conn));
            Some(InFlight { id: id.map(ToOwned::to_owned), local: started.local, ticket: started.ticket, answer: Answer::Room })
        }
    }
}

/// What a join needs of the connection, owned (a join the proxy decides finishes in a task).
struct Member {
    node: Arc<Node>,
    user: Arc<str>,
    conn: uuid::Uuid,
    outbox: Outbox,
    gate: Arc<RoomGate>,
}

impl Member {
    fn of(reg: &Registration) -> Member {
        Member { node: reg.node.clone(), user: reg.user.clone(), conn: reg.conn, outbox: reg.outbox.clone(), gate: reg.gate.clone() }
    }

    /// Joins `room` as the gate admitted; returns the ticket of the node's subscription.
    fn enter(&self, room: &str, admitted: Admitted) -> Result<crate::broker::Ticket, RoomError> {
        self.node.rooms.join(room, self.conn, &self.outbox)?;
        if let (Some(n), Some(at)) = (self.gate.joined(room, admitted), admitted.until) {
            let (node, gate, outbox) = (self.node.clone(), self.gate.clone(), self.outbox.clone());
            self.node.sessions.spawn(super::gate::leave_at_expiry(node, gate, outbox, self.conn, room.to_string(), n, at));
        }
        Ok(self.node.broker.room_joined(room))
    }

    fn answer(&self, frame: crate::hub::Frame) {
        self.outbox.offer(frame, &self.node.metrics);
    }
}

/// A join no grant allows, decided by the join proxy (bounded by `--proxy-timeout`), then made
/// and answered as any join (ack once subscribed, within [`crate::broker::JOIN_DEADLINE`]).
async fn join_by_proxy(m: Member, room: String, id: Option<Box<serde_json::value::RawValue>>) {
    let Some(proxy) = m.node.join_proxy.as_ref() else { return };
    let id = id.as_deref();
    let admitted = match super::gate::ask_proxy(proxy, &m.user, &room, m.gate.ip).await {
        Ok(a) => a,
        Err(e) => return m.answer(protocol::encode_room_error(id, &room, &e)),
    };
    let joined = match m.enter(&room, admitted) {
        Ok(ticket) => ticket.await,
        Err(e) => return m.answer(protocol::encode_error(id, &frame_error(e))),
    };
    match (joined, id) {
        (Ok(_), Some(id)) => m.answer(protocol::encode_ack(id, None)),
        (Ok(_), None) => {}
        (Err(_), _) => {
            let e = FrameError::new(ErrorCode::Unavailable, "joined on this node; Redis did not confirm the room subscription, so messages from other nodes may not arrive until it does");
            m.answer(protocol::encode_error(id, &e));
        }
    }
}

/// Answers a frame the gate refused: `forbidden`, naming the room.
fn refuse(reg: &Registration, id: Option<&serde_json::value::RawValue>, room: &str, err: &FrameError) -> Option<InFlight> {
    reg.node.metrics.bad_frames.inc();
    reg.outbox.offer(protocol::encode_room_error(id, room, err), &reg.node.metrics);
    None
}

/// The wire error for a refused room operation.
pub(crate) fn frame_error(err: RoomError) -> FrameError {
    let code = match err {
        RoomError::BadName => ErrorCode::BadRoom,
        RoomError::TooManyRooms(_) => ErrorCode::TooManyRooms,
        RoomError::Full(_) => ErrorCode::RoomFull,
        RoomError::NotMember => ErrorCode::NotMember,
    };
    FrameError::new(code, err.to_string())
}
