//! The delivery audit. Every message carries its sender's connection slot and a sequence number
//! per (sender connection, receiver user) pair, counted only while the receiver had at least one
//! connection up. Each receiver connection tracks what it saw per sender; at the end the senders'
//! counts say what every receiver connection should have seen, and the difference is exact:
//! lost, duplicated, reordered, and, apart, messages sent while a receiver was offline.
//!
//! Rooms (`--pattern room`) use the same books with the room in place of the receiver user:
//! a sequence per (sender connection, room), owed to every other member connection up when it
//! was sent. A sender's own message coming back to it is counted as `echoed`.

use super::peers::PeerTable;

use serde::{Deserialize, Serialize};

/// Sequences remembered behind the highest one seen, per (sender, receiver connection) pair:
/// a gap older than this is taken as lost for good, and a late copy of it then counts as a
/// duplicate. 4096 covers a minute of reordering at 60 msgs/s per pair; the window costs
/// 512 bytes, allocated only for a pair that has a gap.
pub const GAP_WINDOW: u32 = 4096;
const WORDS: usize = (GAP_WINDOW / 64) as usize;

/// The missing sequences in `[next - GAP_WINDOW, next)`, one bit each, in a ring indexed by
/// `seq % GAP_WINDOW`. Every operation touches at most [`GAP_WINDOW`] bits, word by word,
/// whatever sequence numbers a server sends: a hostile `seq` cannot make a message cost O(seq).
#[derive(Debug, Clone, PartialEq)]
struct GapWindow {
    bits: [u64; WORDS],
    /// Bits set.
    open: u32,
}

impl GapWindow {
    fn new() -> GapWindow {
        GapWindow { bits: [0; WORDS], open: 0 }
    }

    fn get(&self, seq: u32) -> bool {
        let i = seq % GAP_WINDOW;
        self.bits[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    fn clear(&mut self, seq: u32) {
        let i = seq % GAP_WINDOW;
        self.bits[(i / 64) as usize] &= !(1 << (i % 64));
        self.open -= 1;
    }

    /// Sets (`missing`) or clears the bits of `[from, to)`, `to - from <= GAP_WINDOW`.
    fn fill(&mut self, from: u32, to: u32, missing: bool) {
        debug_assert!(to - from <= GAP_WINDOW);
        let mut s = from;
        while s < to {
            let i = s % GAP_WINDOW;
            let (w, b) = ((i / 64) as usize, i % 64);
            let n = (64 - b).min(to - s);
            let mask = if n == 64 { u64::MAX } else { ((1u64 << n) - 1) << b };
            let before = (self.bits[w] & mask).count_ones();
            if missing {
                self.bits[w] |= mask;
                self.open += n - before;
            } else {
                self.bits[w] &= !mask;
                self.open -= before;
            }
            s += n;
        }
    }
}

/// What one receiver connection saw from one sender connection (16 bytes: flat tables hold
/// one per sender of the run).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Pair {
    /// One past the highest sequence seen.
    next: u32,
    /// Distinct sequences seen.
    pub unique: u32,
    /// Gaps below `next`, possibly filled later by reordering. None while there is none.
    gaps: Option<Box<GapWindow>>,
}

impl Pair {
    fn record(&mut self, seq: u32) -> Seen {
        if seq >= self.next {
            // In order with no gap open: nothing to remember (the common case).
            if seq > self.next || self.gaps.is_some() {
                let gaps = self.gaps.get_or_insert_with(|| Box::new(GapWindow::new()));
                // Forget what falls out of the window (its bits are reused by the ring), then
                // mark the new gap.
                let keep_from = (seq + 1).saturating_sub(GAP_WINDOW);
                let old_from = self.next.saturating_sub(GAP_WINDOW);
                if keep_from > old_from {
                    gaps.fill(old_from, keep_from.min(self.next), false);
                }
                gaps.fill(self.next.max(keep_from), seq, true);
                if gaps.open == 0 {
                    self.gaps = None;
                }
            }
            self.next = seq + 1;
            self.unique += 1;
            Seen::InOrder
        } else if self.next - seq <= GAP_WINDOW && self.gaps.as_ref().is_some_and(|g| g.get(seq)) {
            let gaps = self.gaps.as_mut().expect("checked above");
            gaps.clear(seq);
            if gaps.open == 0 {
                self.gaps = None;
            }
            self.unique += 1;
            Seen::Reordered
        } else {
            Seen::Duplicate
        }
    }

    /// Whether `seq` arrived, as far as the window remembers (`None`: too old to tell).
    pub fn seen(&self, seq: u32) -> Option<bool> {
        if seq >= self.next {
            Some(false)
        } else if self.next - seq > GAP_WINDOW {
            None
        } else {
            Some(!self.gaps.as_ref().is_some_and(|g| g.get(seq)))
        }
    }
}

/// The limits a stamp must respect to be audited: anything else is `foreign`.
#[derive(Debug, Clone, Copy)]
pub struct StampBounds {
    /// Connection slots of this run: a sender slot at or above it is no sender of ours.
    pub slots: u32,
    /// Most messages one sender connection can send in the run (rate x duration, rounded up,
    /// plus one): a sequence at or above it was never sent.
    pub max_seq: u32,
}

/// The audit state of one receiver connection slot (kept across reconnects). Memory is bounded
/// by the run, not by the server: at most one [`Pair`] per sender slot of the run.
#[derive(Debug, Default)]
pub struct ReceiverAudit {
    /// By sender slot.
    pub pairs: PeerTable<Pair>,
    pub duplicated: u64,
    pub reordered: u64,
    /// Frames carrying the offline marker that arrived anyway.
    pub offline_delivered: u64,
    /// Stamps out of [`StampBounds`]: skipped.
    pub foreign: u64,
    /// This connection's own room messages delivered back to it (the sender must get none).
    pub echoed: u64,
}

/// How one delivery was classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    InOrder,
    Reordered,
    Duplicate,
    Offline,
    Foreign,
}

impl ReceiverAudit {
    /// Records one delivery. The numbers come from the wire and are checked against `bounds`
    /// before they touch any state.
    pub fn record(&mut self, bounds: StampBounds, sender_slot: i128, seq: i128) -> Seen {
        let slot = match u32::try_from(sender_slot) {
            Ok(s) if s < bounds.slots => s,
            _ => {
                self.foreign += 1;
                return Seen::Foreign;
            }
        };
        if seq == i128::from(super::schedule::OFFLINE_SEQ) {
            self.offline_delivered += 1;
            return Seen::Offline;
        }
        let seq = match u32::try_from(seq) {
            Ok(s) if s < bounds.max_seq => s,
            _ => {
                self.foreign += 1;
                return Seen::Foreign;
            }
        };
        let seen = self.pairs.entry(slot).record(seq);
        match seen {
            Seen::Reordered => self.reordered += 1,
            Seen::Duplicate => self.duplicated += 1,
            _ => {}
        }
        seen
    }
}

/// The audit of one receiver connection, as reported.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ConnectionAudit {
    pub user: String,
    pub connection: u32,
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub missed_while_offline: u64,
}

/// Totals over every receiver connection.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AuditTotals {
    /// Deliveries owed: for each message, the receiver's connections that were up.
    pub expected: u64,
    /// Distinct audited messages received.
    pub received: u64,
    /// Owed, accepted or never answered, and never arrived. Sends the server refused with an
    /// error or acked `online:false` are not in it: see `refused_missing`.
    pub lost: u64,
    /// Owed deliveries of sends the server refused (`overloaded`, `unavailable`, ...) or acked
    /// `online:false`, that never arrived: the sender was told, so they are not lost.
    #[serde(default)]
    pub refused_missing: u64,
    pub duplicated: u64,
    pub reordered: u64,
    /// Deliveries owed to a receiver connection that was down (reconnecting) when sent.
    pub missed_while_offline: u64,
    /// Messages sent while every connection of the receiver was down: not audited.
    pub sent_to_offline: u64,
    /// Of those, copies that arrived anyway.
    pub offline_delivered: u64,
    /// Deliveries whose stamp no sender of this run could have written (sender slot or sequence
    /// out of bounds): skipped by the audit. Non-zero means a confused or hostile server.
    #[serde(default)]
    pub foreign: u64,
    /// Room messages delivered back to the connection that sent them (`--pattern room`).
    #[serde(default)]
    pub echoed: u64,
    /// Receiver connections with anything lost, duplicated, reordered or echoed.
    pub receivers_with_issues: u64,
}

/// What a sender slot sent: per audience (receiver user, or room, by local index), messages
/// with a sequence.
pub type SentCounts = PeerTable<u32>;

/// Inputs for one sender slot at the end of the run.
pub struct SenderAuditInput<'a> {
    pub slot: u32,
    pub counts: &'a SentCounts,
    /// (audience, seq) of sends the server did not accept for delivery (`--ack`).
    pub not_accepted: &'a [(u32, u32)],
    /// Of those, the ones refused with an error (the sender was told).
    pub refused: &'a [(u32, u32)],
    /// Sends not accepted are not owed at all, rather than only kept out of `lost_after_ack`:
    /// for the API publisher, whose every request gets a definite answer.
    pub unowed_when_refused: bool,
}

/// Inputs for one receiver slot at the end of the run.
pub struct SlotAuditInput<'a> {
    pub slot: u32,
    pub user: u32,
    /// What it is owed from: its user, or its user's room.
    pub audience: u32,
    pub audit: &'a ReceiverAudit,
    pub missed_while_offline: u64,
}

/// Largest number of receiver connections listed one by one in a report (the worst first).
pub const MAX_LISTED_RECEIVERS: usize = 100;

/// The audit's result.
#[derive(Debug, Default)]
pub struct Conclusion {
    pub totals: AuditTotals,
    /// The receiver connections with the most issues.
    pub listed: Vec<ConnectionAudit>,
    /// Lost, less the sends the server did not accept: lost after the server took them.
    pub lost_after_ack: u64,
    /// Deliveries of sends the server did not accept (they still arrived).
    pub refused_arrived: u64,
}

/// Joins senders' counts with receivers' observations. `audiences` is the number of receiver
/// users (or rooms); a receiver is never owed its own sends.
pub fn conclude<'a>(
    audiences: u32,
    connections_per_user: u32,
    senders: impl Iterator<Item = SenderAuditInput<'a>>,
    receivers: impl Iterator<Item = SlotAuditInput<'a>>,
    names: &[Box<str>],
    sent_to_offline: u64,
) -> Conclusion {
    // Owed to each user, by sender slot; and what was owed but not accepted.
    let mut owed: Vec<Vec<(u32, u32)>> = vec![Vec::new(); audiences as usize];
    let mut refused: Vec<Vec<(u32, u32, bool)>> = vec![Vec::new(); audiences as usize];
    let mut told: Vec<Vec<(u32, u32)>> = vec![Vec::new(); audiences as usize];
    for s in senders {
        for (user, &n) in s.counts.iter() {
            owed[user as usize].push((s.slot, n));
        }
        for &(user, seq) in s.not_accepted {
            refused[user as usize].push((s.slot, seq, s.unowed_when_refused));
        }
        for &(user, seq) in s.refused.iter().filter(|_| !s.unowed_when_refused) {
            told[user as usize].push((s.slot, seq));
        }
    }
    let mut c = Conclusion { totals: AuditTotals { sent_to_offline, ..AuditTotals::default() }, ..Conclusion::default() };
    for r in receivers {
        let mut expected = 0u64;
        let mut received = 0u64;
        for &(sender, n) in owed[r.audience as usize].iter().filter(|(s, _)| *s != r.slot) {
            expected += u64::from(n);
            received += r.audit.pairs.get(sender).map_or(0, |p| u64::from(p.unique.min(n)));
        }
        let (mut refused_missing, mut refused_arrived, mut unowed, mut unowed_arrived) = (0u64, 0u64, 0u64, 0u64);
        for &(sender, seq, not_owed) in refused[r.audience as usize].iter().filter(|(s, _, _)| *s != r.slot) {
            // Too old for the window to tell: counted as missing, so never as lost after ack.
            let arrived = r.audit.pairs.get(sender).map_or(Some(false), |p| p.seen(seq)) == Some(true);
            match (not_owed, arrived) {
                (true, _) => (unowed, unowed_arrived) = (unowed + 1, unowed_arrived + u64::from(arrived)),
                (false, true) => refused_arrived += 1,
                (false, false) => refused_missing += 1,
            }
        }
        let received = received.saturating_sub(unowed_arrived);
        let expected_here = expected.saturating_sub(r.missed_while_offline).saturating_sub(unowed);
        let missing = expected_here.saturating_sub(received);
        c.lost_after_ack += missing.saturating_sub(refused_missing);
        let told_missing = told[r.audience as usize]
            .iter()
            .filter(|(s, seq)| *s != r.slot && r.audit.pairs.get(*s).map_or(Some(false), |p| p.seen(*seq)) != Some(true))
            .count() as u64;
        let lost = missing.saturating_sub(told_missing);
        c.totals.refused_missing += missing - lost;
        c.refused_arrived += refused_arrived;
        let t = &mut c.totals;
        t.expected += expected_here;
        t.received += received;
        t.lost += lost;
        t.duplicated += r.audit.duplicated;
        t.reordered += r.audit.reordered;
        t.missed_while_offline += r.missed_while_offline;
        t.offline_delivered += r.audit.offline_delivered;
        t.foreign += r.audit.foreign;
        t.echoed += r.audit.echoed;
        if lost + r.audit.duplicated + r.audit.reordered + r.audit.echoed > 0 {
            t.receivers_with_issues += 1;
            c.listed.push(ConnectionAudit {
                user: names[r.user as usize].to_string(),
                connection: r.slot % connections_per_user,
                expected: expected_here,
                received,
                lost,
                duplicated: r.audit.duplicated,
                reordered: r.audit.reordered,
                missed_while_offline: r.missed_while_offline,
            });
        }
    }
    c.listed.sort_by_key(|c| std::cmp::Reverse(c.lost + c.duplicated + c.reordered));
    c.listed.truncate(MAX_LISTED_RECEIVERS);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: StampBounds = StampBounds { slots: 4, max_seq: 10_000 };

    #[test]
    fn classifies_gaps_late_arrivals_and_copies() {
        let mut a = ReceiverAudit::default();
        assert_eq!(a.record(B, 1, 0), Seen::InOrder);
        assert_eq!(a.record(B, 1, 2), Seen::InOrder);
        assert_eq!(a.record(B, 1, 1), Seen::Reordered);
        assert_eq!(a.record(B, 1, 1), Seen::Duplicate);
        assert_eq!(a.record(B, 1, 5), Seen::InOrder);
        assert_eq!(a.record(B, 1, -1), Seen::Offline);
        let p = a.pairs.get(1).unwrap();
        assert_eq!((p.unique, a.duplicated, a.reordered), (4, 1, 1));
        let sent: SentCounts = [(0u32, 6u32)].into_iter().collect();
        let names = vec!["u0".into(), "u1".into()];
        // Seq 3 was refused by the server (and lost), seq 2 refused but arrived anyway.
        let refused = [(0u32, 3u32), (0, 2)];
        let c = conclude(
            2,
            1,
            [SenderAuditInput { slot: 1, counts: &sent, not_accepted: &refused, refused: &refused[..1], unowed_when_refused: false }].into_iter(),
            [SlotAuditInput { slot: 0, user: 0, audience: 0, audit: &a, missed_while_offline: 0 }].into_iter(),
            &names,
            0,
        );
        let t = &c.totals;
        // Seq 3 was refused with an error and never arrived: refused, not lost.
        assert_eq!((t.expected, t.received, t.lost, t.refused_missing, t.duplicated, t.reordered), (6, 4, 1, 1, 1, 1));
        assert_eq!((c.lost_after_ack, c.refused_arrived), (1, 1), "seq 4 was accepted and lost");
        assert_eq!(c.listed.len(), 1);
    }

    #[test]
    fn a_room_owes_every_member_but_the_sender() {
        // Room 0: slots 0, 1, 2. Slot 0 sent 3, slot 1 sent 2. Slot 2 saw everything; slot 1 saw
        // slot 0's messages and one of its own (an echo); slot 0 saw one of slot 1's.
        let (s0, s1): (SentCounts, SentCounts) = ([(0u32, 3u32)].into_iter().collect(), [(0u32, 2u32)].into_iter().collect());
        let mut a = [ReceiverAudit::default(), ReceiverAudit::default(), ReceiverAudit::default()];
        a[0].record(B, 1, 0);
        for q in 0..3 {
            a[1].record(B, 0, q);
            a[2].record(B, 0, q);
        }
        a[1].echoed += 1;
        for q in 0..2 {
            a[2].record(B, 1, q);
        }
        let names = vec!["u0".into(), "u1".into(), "u2".into()];
        let c = conclude(
            1,
            1,
            [
                SenderAuditInput { slot: 0, counts: &s0, not_accepted: &[], refused: &[], unowed_when_refused: false },
                SenderAuditInput { slot: 1, counts: &s1, not_accepted: &[(0, 1)], refused: &[(0, 1)], unowed_when_refused: true },
            ].into_iter(),
            (0..3u32).map(|k| SlotAuditInput { slot: k, user: k, audience: 0, audit: &a[k as usize], missed_while_offline: 0 }),
            &names,
            0,
        );
        let t = &c.totals;
        // Slot 1's second message was refused with a definite answer (an API publish): owed to
        // no one. Owed: slot 0 -> 1 (from slot 1), slot 1 -> 3, slot 2 -> 4 (it got the refused
        // one anyway, which is not counted either).
        assert_eq!((t.expected, t.received, t.lost, t.echoed, t.receivers_with_issues), (8, 8, 0, 1, 1));
    }

    #[test]
    fn hostile_numbers_are_foreign_and_cost_nothing() {
        let mut a = ReceiverAudit::default();
        // Sequence 4e9 from a real sender: beyond what it could send. Before the bounds, this
        // looped 4e9 times; seq + 1 overflowed at u32::MAX.
        assert_eq!(a.record(B, 1, 4_000_000_000), Seen::Foreign);
        assert_eq!(a.record(B, 1, i128::from(u32::MAX)), Seen::Foreign);
        assert_eq!(a.record(B, 1, -7), Seen::Foreign);
        // Sender slots that are not slots of this run never make a pair.
        for s in 4..10_000 {
            assert_eq!(a.record(B, s, 0), Seen::Foreign);
        }
        assert_eq!(a.record(B, -1, 0), Seen::Foreign);
        assert_eq!(a.foreign, 4 + 9_996);
        assert!(a.pairs.is_empty());
        // The largest legal jump is bounded work: the window, not the jump, is touched.
        let big = StampBounds { slots: 1, max_seq: u32::MAX };
        let t = std::time::Instant::now();
        for k in 0..1000u32 {
            a.record(big, 0, i128::from(k) * 4_000_000);
        }
        assert!(t.elapsed() < std::time::Duration::from_secs(1), "{:?}", t.elapsed());
        assert_eq!(a.pairs.get(0).unwrap().unique, 1000);
    }

    #[test]
    fn a_gap_that_slides_out_of_the_window_leaves_no_trace() {
        let mut p = Pair::default();
        assert_eq!(p.record(1), Seen::InOrder, "0 is missing");
        for seq in 2..2 + GAP_WINDOW {
            assert_eq!(p.record(seq), Seen::InOrder);
        }
        // 0 is out of the window now: taken as lost, and its bit (the ring's slot of 4096)
        // is not read as a gap of a later sequence.
        assert!(p.gaps.is_none(), "the window is dropped once its last gap left it");
        assert_eq!(p.record(GAP_WINDOW), Seen::Duplicate);
        assert_eq!((p.unique, p.seen(0)), (GAP_WINDOW + 1, None));
    }

    #[test]
    fn the_gap_window_remembers_recent_gaps_and_forgets_old_ones() {
        let mut p = Pair::default();
        p.record(0);
        p.record(10); // gaps 1..10
        assert_eq!((p.seen(5), p.seen(10), p.seen(11)), (Some(false), Some(true), Some(false)));
        assert_eq!(p.record(5), Seen::Reordered);
        assert_eq!(p.record(5), Seen::Duplicate);
        p.record(10 + GAP_WINDOW); // everything up to 10 falls out of the window
        assert_eq!(p.seen(3), None);
        assert_eq!(p.record(3), Seen::Duplicate, "a gap older than the window is lost for good");
        assert_eq!(p.gaps.as_ref().unwrap().open, GAP_WINDOW - 1);
        for s in 11..10 + GAP_WINDOW {
            assert_eq!(p.record(s), Seen::Reordered, "{s}");
        }
        assert!(p.gaps.is_none(), "no gap left, no window kept");
        // Random jumps and fills against a plain set.
        let mut q = Pair::default();
        let mut seen = std::collections::BTreeSet::new();
        let mut x = 12345u64;
        for _ in 0..20_000 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let hi = q.next + 50;
            let s = ((x >> 33) as u32) % hi;
            let r = q.record(s);
            let fresh = seen.insert(s);
            if q.next - s <= GAP_WINDOW {
                assert_eq!(fresh, r != Seen::Duplicate, "seq {s} next {}", q.next);
            }
        }
        let open = q.gaps.as_ref().map_or(0, |g| g.open);
        let low = q.next.saturating_sub(GAP_WINDOW);
        assert_eq!(open, (low..q.next).filter(|s| !seen.contains(s)).count() as u32);
    }
}
