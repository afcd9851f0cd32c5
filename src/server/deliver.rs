//! The first step of every message, from a client or from the HTTP API: local receivers served
//! straight from the hub or the room table (unless the broker serves them: history on, or an
//! idempotency key whose verdict the local copy must wait for), then the broker. One place, so
//! the socket and the API can never deliver differently.

use std::sync::Arc;

use uuid::Uuid;

use super::Node;
use crate::broker::{Publish, RoomIdem, Routed, Ticket};
use crate::protocol::Frame;

/// What a publish did locally, and its ticket.
pub(crate) struct Started {
    /// Connections reached on this node now.
    pub(crate) local: usize,
    pub(crate) ticket: Ticket,
}

/// The answer of a retry a single node recognised: nothing delivered.
fn duplicate() -> Started {
    Started { local: 0, ticket: Ticket::ready(Ok(Routed { duplicate: true, ..Routed::default() })) }
}

/// A direct message from `sender`; `except`: the sending connection, never delivered to (it
/// can only be among the receiver's for a message to oneself, which alone marks the broker's
/// copy to this node).
pub(crate) fn direct(node: &Node, msg: Publish, sender: &str, except: Option<Uuid>) -> Started {
    if node.broker.seen_locally(msg.idem.as_deref()) {
        return duplicate();
    }
    let local = if node.broker.delivers_locally_for(&msg) { 0 } else { node.hub.deliver(&msg.receiver, &msg.envelope, None, except) };
    let except = except.filter(|_| *msg.receiver == *sender);
    Started { local, ticket: node.broker.publish_except(msg, except) }
}

/// A room message; `idem.except` (or `except` without a key): the sending connection.
pub(crate) fn room(node: &Node, room: &str, envelope: &Frame, idem: Option<RoomIdem>, except: Option<Uuid>) -> Started {
    if node.broker.seen_locally(idem.as_ref().map(|i| i.key.as_str())) {
        return duplicate();
    }
    let local = if node.broker.delivers_room_locally(idem.as_ref().map(|i| i.key.as_str())) { 0 } else { node.rooms.deliver(room, envelope, except) };
    Started { local, ticket: node.broker.publish_room(&Arc::from(room), envelope, idem) }
}
