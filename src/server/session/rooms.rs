//! A session's room frames: join, leave and room_message. A join must pass the connection's
//! [`RoomGate`](super::gate::RoomGate) (refused `forbidden`, with the room, and nothing of the
//! room reaches the connection). Local members are served straight from [`crate::rooms::Rooms`]
//! (unless an idempotency key sends them through Redis); the broker carries the message to the
//! other nodes with members, and the session answers once it knows where it went.

use super::reader::{Answer, InFlight};
use super::Registration;
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
                Ok(a) => a,
                Err(e) => return refuse(reg, id, room, &e),
            };
            if let Err(e) = node.rooms.join(room, reg.conn, &reg.outbox) {
                return fail(e);
            }
            if let (Some(n), Some(at)) = (reg.gate.joined(room, admitted), admitted.until) {
                let (gate, outbox) = (reg.gate.clone(), reg.outbox.clone());
                node.sessions.spawn(super::gate::leave_at_expiry(node.clone(), gate, outbox, reg.conn, room.to_string(), n, at));
            }
            // Answered once this node receives the room's messages from other nodes.
            let ticket = node.broker.room_joined(room);
            Some(InFlight { id: id.map(ToOwned::to_owned), local: 0, ticket, answer: Answer::Plain })
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
