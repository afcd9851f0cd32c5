//! The subscriber side: delivers envelopes arriving on this node's channel to the local sessions
//! of their receiver. What comes off Redis is checked once here (UTF-8, size, a receiver), so a
//! bad envelope published by anyone is dropped and counted, and never reaches a connection.

use std::sync::Arc;
use std::time::SystemTime;

use fred::prelude::*;
use fred::types::Message;
use tokio::sync::{broadcast, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::protocol::{self, Frame};

pub(crate) struct Receiver {
    pub(crate) hub: Arc<Hub>,
    pub(crate) metrics: Metrics,
    /// Largest envelope delivered: larger ones could not be written to a client
    /// ([`crate::server::Limits::max_outgoing_frame`]).
    pub(crate) max_envelope: usize,
    /// This node's drain fence, and who waits for it.
    pub(crate) fence: String,
    pub(crate) fence_seen: Arc<Notify>,
    /// Room channels' messages go there.
    pub(crate) rooms: super::rooms::RoomInbound,
}

impl Receiver {
    pub(crate) async fn run(self, mut rx: broadcast::Receiver<Message>, stop: CancellationToken) {
        loop {
            let msg = tokio::select! {
                m = rx.recv() => m,
                _ = stop.cancelled() => return,
            };
            match msg {
                Ok(m) if self.rooms.handle(&m) => {}
                Ok(m) => self.deliver(m.value),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    self.metrics.broker_lagged.inc_by(n);
                    warn!(lost = n, "subscriber fell behind; messages were dropped");
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    fn deliver(&self, value: Value) {
        let Some(frame) = self.checked(value) else {
            self.metrics.broker_bad_envelopes.inc();
            return;
        };
        let Some(env) = protocol::parse_routed(frame.as_bytes()) else {
            if *frame == *self.fence {
                self.fence_seen.notify_waiters();
            } else {
                debug!("ignoring a broker message that is not an envelope with a receiverID");
                self.metrics.broker_bad_envelopes.inc();
            }
            return;
        };
        if self.hub.deliver(&env.receiver, &frame, None) > 0 {
            if let Some(sent) = env.timestamp.as_deref().and_then(protocol::parse_timestamp) {
                if let Ok(d) = SystemTime::now().duration_since(sent) {
                    self.metrics.delivery_ms.observe(d.as_secs_f64() * 1e3);
                }
            }
        }
    }

    /// The message as a frame, if it is text within the size limit.
    fn checked(&self, value: Value) -> Option<Frame> {
        let bytes = match value {
            Value::Bytes(b) => b,
            Value::String(s) => s.into_inner(),
            _ => return None,
        };
        if bytes.len() > self.max_envelope {
            warn!(bytes = bytes.len(), limit = self.max_envelope, "dropping an envelope larger than a client frame may be");
            return None;
        }
        Frame::try_from(bytes).ok()
    }
}
