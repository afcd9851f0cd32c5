//! Brokers carry envelopes between nodes and keep this node's routes in the route table:
//! [`MemoryBroker`] for a single node with no Redis (the embedded default), [`RedisBroker`] for a
//! fleet sharing Redis standalone or Cluster. Local receivers never go through a broker.

mod memory;
mod redis;

use std::sync::Arc;

use bytes::Bytes;
use serde_json::value::RawValue;

use crate::hub::Outbox;
use crate::metrics::Metrics;
use crate::protocol::{self, ErrorCode, FrameError};

pub use memory::MemoryBroker;
pub use redis::{BrokerError, NodeInfo, RedisBroker, PUBLISH_QUEUE, ROUTE_QUEUE};

/// A chat envelope on its way to the receiver's other nodes.
#[derive(Debug)]
pub struct PublishReq {
    /// Receiver user id.
    pub receiver: Arc<str>,
    /// The encoded envelope, published as is.
    pub envelope: Bytes,
    /// Connections of the receiver reached on this node already.
    pub local: usize,
    /// The client's `id`, if it asked for an ack.
    pub id: Option<Box<RawValue>>,
    /// The sender's session, for the ack or the error.
    pub reply_to: Outbox,
}

impl PublishReq {
    /// Answers the sender once the fate of the message is known: an ack if asked for, and an
    /// error frame (always) if other nodes could not be reached.
    pub(crate) fn finish(self, remote: Result<bool, ()>, metrics: &Metrics) {
        let frame = match remote {
            Ok(remote_online) => {
                let online = self.local > 0 || remote_online;
                if !online {
                    metrics.undeliverable.inc();
                }
                match &self.id {
                    Some(id) => protocol::encode_ack(id, Some(online)),
                    None => return,
                }
            }
            Err(()) => {
                let msg = format!(
                    "delivered to {} connection(s) on this node; other nodes unreachable (Redis unavailable)",
                    self.local
                );
                protocol::encode_error(self.id.as_deref(), &FrameError::new(ErrorCode::Unavailable, msg))
            }
        };
        self.reply_to.offer(frame, metrics);
    }
}

/// Why a message could not be handed to the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnqueueError {
    /// The broker's bounded queue is full: the node is sending faster than Redis takes.
    #[error("broker queue full")]
    Overloaded,
    /// The broker has shut down.
    #[error("broker stopped")]
    Stopped,
}

/// The node's broker.
#[derive(Clone)]
pub enum Broker {
    Memory(MemoryBroker),
    Redis(Arc<RedisBroker>),
}

impl Broker {
    /// Makes the route table match the hub for `user` (after its first connection or its last
    /// disconnect) and waits until Redis has it, so a client that sees its upgrade is routable.
    pub async fn sync_user(&self, user: &Arc<str>) {
        if let Broker::Redis(b) = self {
            b.sync_user(user).await
        }
    }

    /// Like [`Broker::sync_user`] without waiting for Redis (on disconnect).
    pub async fn sync_user_nowait(&self, user: &Arc<str>) {
        if let Broker::Redis(b) = self {
            b.sync_user_nowait(user).await
        }
    }

    /// A client heartbeat: refresh the user's `user_online` key soon (coalesced, best effort).
    pub fn touch(&self, user: &Arc<str>) {
        if let Broker::Redis(b) = self {
            b.touch(user)
        }
    }

    /// Sends to the receiver's connections on other nodes and answers the sender.
    pub fn publish(&self, req: PublishReq, metrics: &Metrics) -> Result<(), (EnqueueError, PublishReq)> {
        match self {
            Broker::Memory(m) => {
                m.publish(req, metrics);
                Ok(())
            }
            Broker::Redis(b) => b.publish(req),
        }
    }

    /// Whether the node can reach every node it may need to: false while Redis is down.
    pub fn is_ready(&self) -> bool {
        match self {
            Broker::Memory(_) => true,
            Broker::Redis(b) => b.is_ready(),
        }
    }

    /// "memory" or the Redis mode, for the startup line.
    pub fn describe(&self) -> String {
        match self {
            Broker::Memory(_) => "memory (single node, no Redis)".to_string(),
            Broker::Redis(b) => b.describe(),
        }
    }

    /// Removes this node's routes and lease. Call after every session has ended.
    pub async fn shutdown(&self) {
        if let Broker::Redis(b) = self {
            b.shutdown().await
        }
    }
}
