//! The in-process broker of a single node without Redis: every user is local, so there is no
//! route table and nothing to carry; a publish reaches no other node.

use super::{Publish, Routed, Ticket};

/// The broker of a node that is the whole fleet.
#[derive(Debug, Clone, Default)]
pub struct MemoryBroker;

impl MemoryBroker {
    /// There are no other nodes: the message reached whatever the hub delivered to.
    pub fn publish(&self, _msg: Publish) -> Ticket {
        Ticket::ready(Ok(Routed { nodes: 0, offset: None }))
    }
}
