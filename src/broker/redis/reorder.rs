//! Per-user reordering of history messages arriving on a Cluster node. On a Cluster a message's
//! offset is assigned on its history's shard and published afterwards by a pipeline on the
//! sender's node, so two nodes sending to one user can publish offsets 5 and 6 in the wrong
//! order. The receiving node puts them back: offset `last + 1` goes out at once (with any held
//! successors); a later one is held up to [`REORDER_WAIT`] for the gap to fill, then delivered
//! anyway (a client that sees a gap may resume from its last contiguous offset). Memory is
//! bounded per user and in total; past a bound, the user's held messages go out at once, in
//! order. Pure state, no I/O: the subscriber feeds it and delivers what it returns.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use uuid::Uuid;

use crate::protocol::Frame;

/// How long a message waits for an earlier offset of its user to arrive. Publishes of one
/// batch leave a node within a few ms of each other; 100 ms covers a slow pipeline round trip
/// on a loaded node while staying below what a chat user notices.
pub const REORDER_WAIT: Duration = Duration::from_millis(100);
/// Messages held for one user at most: past it, they go out at once, in order.
pub const REORDER_PER_USER: usize = 256;
/// Messages held for all users of the node at most.
pub const REORDER_TOTAL: usize = 16_384;
/// A user's order state is forgotten after this long without a message (the next message
/// starts a fresh baseline).
pub const REORDER_IDLE: Duration = Duration::from_secs(60);
/// Users whose order state is kept at most. Forgetting a user costs nothing but its baseline (its
/// next message goes out at once and starts a new one), so past this the users with nothing held
/// are dropped; at most [`REORDER_TOTAL`] users hold something, so a prune always frees room.
/// 65,536 users' states are a few MiB.
pub const REORDER_USERS: usize = 65_536;

/// A message to hand to the hub: its receiver, the connection to skip, the frame.
pub(crate) type Ready = (Arc<str>, Option<Uuid>, Frame);

struct UserOrder {
    name: Arc<str>,
    epoch: Box<str>,
    last: u64,
    held: BTreeMap<u64, (Option<Uuid>, Frame)>,
    /// When the oldest held message must go out.
    deadline: Option<Instant>,
    touched: Instant,
}

#[derive(Default)]
pub(crate) struct Reorder {
    users: HashMap<Arc<str>, UserOrder>,
    held: usize,
    /// Users' deadlines in the order they were set. Every deadline is "now + REORDER_WAIT", so
    /// this is sorted: the next one is at the front, found without a scan of every user. An
    /// entry whose user's deadline has since moved or cleared is skipped.
    deadlines: VecDeque<(Instant, Arc<str>)>,
    last_prune: Option<Instant>,
}

impl Reorder {
    /// Takes a message with an offset; appends to `out` what can be delivered now, in order.
    // The message's parts arrive separately from the subscriber's parse; bundling them into a
    // struct for this one call would only move the list.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn accept(&mut self, user: &str, epoch: &str, offset: u64, except: Option<Uuid>, frame: Frame, now: Instant, out: &mut Vec<Ready>) {
        self.prune(now);
        let Some(st) = self.users.get_mut(user) else {
            if self.users.len() >= REORDER_USERS {
                // Only users with messages held are kept: fewer than REORDER_TOTAL.
                self.users.retain(|_, st| !st.held.is_empty());
            }
            // The first message seen for the user sets the baseline.
            let name: Arc<str> = Arc::from(user);
            let st = UserOrder { name: name.clone(), epoch: epoch.into(), last: offset, held: BTreeMap::new(), deadline: None, touched: now };
            self.users.insert(name.clone(), st);
            out.push((name, except, frame));
            return;
        };
        let name = &st.name.clone();
        st.touched = now;
        if *st.epoch != *epoch {
            // A new history (Redis lost the old one): what is held belongs to the old one.
            self.held -= st.held.len();
            flush(st, out);
            st.epoch = epoch.into();
            st.last = offset.saturating_sub(1);
        }
        if offset <= st.last {
            // Late (its wait ran out) or repeated: delivered anyway, never dropped.
            out.push((name.clone(), except, frame));
            return;
        }
        if offset == st.last + 1 {
            st.last = offset;
            out.push((name.clone(), except, frame));
            while let Some(entry) = st.held.first_entry().filter(|e| *e.key() == st.last + 1) {
                let (off, (ex, f)) = entry.remove_entry();
                st.last = off;
                self.held -= 1;
                out.push((name.clone(), ex, f));
            }
            st.deadline = None;
            if !st.held.is_empty() {
                st.deadline = Some(now + REORDER_WAIT);
                self.deadlines.push_back((now + REORDER_WAIT, name.clone()));
            }
            return;
        }
        st.held.insert(offset, (except, frame));
        self.held += 1;
        if st.deadline.is_none() {
            st.deadline = Some(now + REORDER_WAIT);
            self.deadlines.push_back((now + REORDER_WAIT, name.clone()));
        }
        if st.held.len() > REORDER_PER_USER || self.held > REORDER_TOTAL {
            self.held -= st.held.len();
            flush(st, out);
        }
    }

    /// The next time [`Reorder::expire`] has work, if any message is held.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        if self.held == 0 {
            return None;
        }
        self.deadlines.front().map(|(d, _)| *d)
    }

    /// Delivers what waited its full time, in order, and forgets idle users.
    pub(crate) fn expire(&mut self, now: Instant, out: &mut Vec<Ready>) {
        while let Some((d, user)) = self.deadlines.front().filter(|(d, _)| *d <= now).cloned() {
            self.deadlines.pop_front();
            if let Some(st) = self.users.get_mut(&user).filter(|st| st.deadline == Some(d)) {
                self.held -= st.held.len();
                flush(st, out);
            }
        }
        if self.held == 0 {
            self.deadlines.clear();
        }
        self.prune(now);
    }

    /// Forgets users idle past [`REORDER_IDLE`] with nothing held; a full pass at most once per
    /// [`REORDER_IDLE`], so a user is forgotten between one and two idle periods after its last
    /// message.
    fn prune(&mut self, now: Instant) {
        match self.last_prune {
            None => self.last_prune = Some(now),
            Some(t) if now.duration_since(t) >= REORDER_IDLE => {
                self.last_prune = Some(now);
                self.users.retain(|_, st| !st.held.is_empty() || now.duration_since(st.touched) < REORDER_IDLE);
            }
            Some(_) => {}
        }
    }

    /// Users whose order state is kept.
    #[cfg(test)]
    fn users(&self) -> usize {
        self.users.len()
    }
}

/// Everything held for one user goes out, in offset order.
fn flush(st: &mut UserOrder, out: &mut Vec<Ready>) {
    for (off, (ex, f)) in std::mem::take(&mut st.held) {
        st.last = st.last.max(off);
        out.push((st.name.clone(), ex, f));
    }
    st.deadline = None;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(out: &[Ready]) -> Vec<String> {
        out.iter().map(|(_, _, f)| f.to_string()).collect()
    }

    #[test]
    fn a_gap_is_held_until_filled_or_until_the_wait_ends() {
        let mut r = Reorder::default();
        let mut out = Vec::new();
        let t = Instant::now();
        let take = |r: &mut Reorder, off: u64, out: &mut Vec<Ready>| r.accept("u", "e", off, None, Frame::from(off.to_string()), t, out);
        take(&mut r, 1, &mut out);
        take(&mut r, 3, &mut out);
        take(&mut r, 4, &mut out);
        assert_eq!(offsets(&out), ["1"]);
        take(&mut r, 2, &mut out);
        assert_eq!(offsets(&out), ["1", "2", "3", "4"]);
        take(&mut r, 6, &mut out);
        assert_eq!(r.next_deadline(), Some(t + REORDER_WAIT));
        r.expire(t + REORDER_WAIT, &mut out);
        assert_eq!(offsets(&out), ["1", "2", "3", "4", "6"]);
        // The late one is still delivered.
        take(&mut r, 5, &mut out);
        assert_eq!(offsets(&out).last().unwrap(), "5");
        assert_eq!(r.next_deadline(), None);
    }

    #[test]
    fn the_order_state_stays_bounded_whatever_the_receivers() {
        let mut r = Reorder::default();
        let mut out = Vec::new();
        let t = Instant::now();
        // Receivers that each get one message and are never seen again (nothing is ever held,
        // so `expire` never runs: the subscriber calls it only for a deadline).
        for i in 0..(REORDER_USERS * 3) {
            r.accept(&format!("u{i}"), "e", 1, None, Frame::from("1"), t, &mut out);
            assert!(r.users() <= REORDER_USERS, "{} users kept after {i}", r.users());
        }
        assert_eq!(out.len(), REORDER_USERS * 3, "every message delivered");
        // A user with messages held survives a prune; the held ones still go out in order.
        r.accept("held", "e", 1, None, Frame::from("1"), t, &mut out);
        r.accept("held", "e", 3, None, Frame::from("3"), t, &mut out);
        for i in 0..REORDER_USERS {
            r.accept(&format!("v{i}"), "e", 1, None, Frame::from("1"), t, &mut out);
        }
        out.clear();
        r.accept("held", "e", 2, None, Frame::from("2"), t, &mut out);
        assert_eq!(offsets(&out), ["2", "3"]);
        // Idle users are forgotten as traffic goes on, with nothing held and no `expire` call.
        let later = t + REORDER_IDLE * 2;
        r.accept("fresh", "e", 1, None, Frame::from("1"), later, &mut out);
        assert_eq!(r.users(), 1, "only the receiver seen within the idle time is kept");
    }

    #[test]
    fn a_new_epoch_starts_a_new_baseline() {
        let mut r = Reorder::default();
        let mut out = Vec::new();
        let t = Instant::now();
        r.accept("u", "e", 10, None, Frame::from("10"), t, &mut out);
        r.accept("u", "f", 1, None, Frame::from("1"), t, &mut out);
        r.accept("u", "f", 2, None, Frame::from("2"), t, &mut out);
        assert_eq!(offsets(&out), ["10", "1", "2"]);
        assert_eq!(r.next_deadline(), None);
    }
}
