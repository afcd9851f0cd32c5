//! The in-process broker of a single node without Redis: every user is local, so there is no
//! route table and nothing to carry; a publish reaches no other node. Idempotency keys are kept
//! here, in a bounded map, instead of in Redis.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::{Publish, Routed, Ticket};

/// Idempotency keys a single node remembers at most; past it the oldest are forgotten before
/// their window ends (a retry of those would be delivered again). 100,000 keys of ~80 bytes.
pub const MAX_LOCAL_IDEM: usize = 100_000;

/// The broker of a node that is the whole fleet.
#[derive(Debug, Clone)]
pub struct MemoryBroker {
    idem: Arc<Mutex<Seen>>,
    window: Duration,
}

#[derive(Debug, Default)]
struct Seen {
    keys: HashMap<String, Instant>,
    order: VecDeque<(Instant, String)>,
}

impl Default for MemoryBroker {
    fn default() -> Self {
        MemoryBroker::new(super::DEFAULT_IDEM_WINDOW)
    }
}

impl MemoryBroker {
    /// A broker that remembers idempotency keys for `window`.
    pub fn new(window: Duration) -> Self {
        MemoryBroker { idem: Arc::default(), window }
    }

    /// There are no other nodes: the message reached whatever the hub delivered to.
    pub fn publish(&self, _msg: Publish) -> Ticket {
        Ticket::ready(Ok(Routed::default()))
    }

    /// Records `key`; true if it was already seen within the window.
    pub(crate) fn seen(&self, key: &str) -> bool {
        self.seen_at(key, Instant::now())
    }

    fn seen_at(&self, key: &str, now: Instant) -> bool {
        let mut st = self.idem.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((at, k)) = st.order.front().filter(|(at, _)| now.duration_since(*at) >= self.window || st.keys.len() >= MAX_LOCAL_IDEM).cloned() {
            st.order.pop_front();
            if st.keys.get(&k) == Some(&at) {
                st.keys.remove(&k);
            }
        }
        if st.keys.contains_key(key) {
            return true;
        }
        st.keys.insert(key.to_string(), now);
        st.order.push_back((now, key.to_string()));
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_seen_once_within_its_window() {
        let b = MemoryBroker::new(Duration::from_secs(10));
        let t = Instant::now();
        assert!(!b.seen_at("k", t));
        assert!(b.seen_at("k", t + Duration::from_secs(9)));
        assert!(!b.seen_at("other", t));
        assert!(!b.seen_at("k", t + Duration::from_secs(11)), "forgotten after the window");
    }

    #[test]
    fn the_map_is_bounded() {
        let b = MemoryBroker::new(Duration::from_secs(10));
        let t = Instant::now();
        for i in 0..MAX_LOCAL_IDEM + 10 {
            b.seen_at(&i.to_string(), t);
        }
        let st = b.idem.lock().unwrap();
        assert!(st.keys.len() <= MAX_LOCAL_IDEM && st.order.len() <= MAX_LOCAL_IDEM);
    }
}
