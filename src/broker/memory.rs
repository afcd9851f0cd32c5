//! The in-process broker of a single node without Redis: every user is local, so there is no
//! route table and nothing to carry; it only answers the sender.

use crate::metrics::Metrics;

use super::PublishReq;

/// The broker of a node that is the whole fleet.
#[derive(Debug, Clone, Default)]
pub struct MemoryBroker;

impl MemoryBroker {
    /// There are no other nodes: the message reached whatever the hub delivered to.
    pub fn publish(&self, req: PublishReq, metrics: &Metrics) {
        req.finish(Ok(false), metrics);
    }
}
