//! The delivery audit. Every message carries its sender's connection slot and a sequence number
//! per (sender connection, receiver user) pair, counted only while the receiver had at least one
//! connection up. Each receiver connection tracks what it saw per sender; at the end the senders'
//! counts say what every receiver connection should have seen, and the difference is exact:
//! lost, duplicated, reordered, and, apart, messages sent while a receiver was offline.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// What one receiver connection saw from one sender connection.
#[derive(Debug, Default, Clone)]
pub struct Pair {
    /// One past the highest sequence seen.
    next: u32,
    /// Distinct sequences seen.
    pub unique: u32,
    /// Sequences below `next` not seen yet (gaps, possibly filled later by reordering).
    missing: Vec<u32>,
}

/// Largest number of open gaps remembered per pair. Beyond it the oldest gap is taken as lost
/// for good; a late copy of it then counts as a duplicate. Bounded so a badly broken server
/// cannot make the audit grow without end.
const MAX_GAPS_PER_PAIR: usize = 4096;

/// The audit state of one receiver connection slot (kept across reconnects).
#[derive(Debug, Default)]
pub struct ReceiverAudit {
    pub pairs: HashMap<u32, Pair>,
    pub duplicated: u64,
    pub reordered: u64,
    /// Frames carrying the offline marker that arrived anyway.
    pub offline_delivered: u64,
}

/// How one delivery was classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    InOrder,
    Reordered,
    Duplicate,
    Offline,
}

impl ReceiverAudit {
    pub fn record(&mut self, sender_slot: u32, seq: i64) -> Seen {
        let Ok(seq) = u32::try_from(seq) else {
            self.offline_delivered += 1;
            return Seen::Offline;
        };
        let p = self.pairs.entry(sender_slot).or_default();
        if seq >= p.next {
            for gap in p.next..seq {
                if p.missing.len() == MAX_GAPS_PER_PAIR {
                    p.missing.remove(0);
                }
                p.missing.push(gap);
            }
            p.next = seq + 1;
            p.unique += 1;
            Seen::InOrder
        } else if let Some(i) = p.missing.iter().position(|&g| g == seq) {
            p.missing.swap_remove(i);
            p.unique += 1;
            self.reordered += 1;
            Seen::Reordered
        } else {
            self.duplicated += 1;
            Seen::Duplicate
        }
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
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    /// Deliveries owed to a receiver connection that was down (reconnecting) when sent.
    pub missed_while_offline: u64,
    /// Messages sent while every connection of the receiver was down: not audited.
    pub sent_to_offline: u64,
    /// Of those, copies that arrived anyway.
    pub offline_delivered: u64,
    /// Receiver connections with anything lost, duplicated or reordered.
    pub receivers_with_issues: u64,
}

/// What a sender slot sent: per receiver user (local index), messages with a sequence.
pub type SentCounts = HashMap<u32, u32>;

/// Inputs for one receiver slot at the end of the run.
pub struct SlotAuditInput<'a> {
    pub slot: u32,
    pub user: u32,
    pub audit: &'a ReceiverAudit,
    pub missed_while_offline: u64,
}

/// Largest number of receiver connections listed one by one in a report (the worst first).
pub const MAX_LISTED_RECEIVERS: usize = 100;

/// Joins senders' counts with receivers' observations.
pub fn conclude<'a>(
    users: u32,
    connections_per_user: u32,
    senders: impl Iterator<Item = (u32, &'a SentCounts)>,
    receivers: impl Iterator<Item = SlotAuditInput<'a>>,
    names: &[Box<str>],
    sent_to_offline: u64,
) -> (AuditTotals, Vec<ConnectionAudit>) {
    // Owed to each user, by sender slot.
    let mut owed: Vec<Vec<(u32, u32)>> = vec![Vec::new(); users as usize];
    for (sender, counts) in senders {
        for (&user, &n) in counts {
            owed[user as usize].push((sender, n));
        }
    }
    let mut totals = AuditTotals { sent_to_offline, ..AuditTotals::default() };
    let mut listed = Vec::new();
    for r in receivers {
        let mut expected = 0u64;
        let mut received = 0u64;
        for &(sender, n) in &owed[r.user as usize] {
            expected += u64::from(n);
            received += r.audit.pairs.get(&sender).map_or(0, |p| u64::from(p.unique.min(n)));
        }
        let expected_here = expected.saturating_sub(r.missed_while_offline);
        let lost = expected_here.saturating_sub(received);
        totals.expected += expected_here;
        totals.received += received;
        totals.lost += lost;
        totals.duplicated += r.audit.duplicated;
        totals.reordered += r.audit.reordered;
        totals.missed_while_offline += r.missed_while_offline;
        totals.offline_delivered += r.audit.offline_delivered;
        if lost + r.audit.duplicated + r.audit.reordered > 0 {
            totals.receivers_with_issues += 1;
            listed.push(ConnectionAudit {
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
    listed.sort_by_key(|c| std::cmp::Reverse(c.lost + c.duplicated + c.reordered));
    listed.truncate(MAX_LISTED_RECEIVERS);
    (totals, listed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_gaps_late_arrivals_and_copies() {
        let mut a = ReceiverAudit::default();
        assert_eq!(a.record(1, 0), Seen::InOrder);
        assert_eq!(a.record(1, 2), Seen::InOrder);
        assert_eq!(a.record(1, 1), Seen::Reordered);
        assert_eq!(a.record(1, 1), Seen::Duplicate);
        assert_eq!(a.record(1, 5), Seen::InOrder);
        assert_eq!(a.record(1, -1), Seen::Offline);
        let p = &a.pairs[&1];
        assert_eq!((p.unique, a.duplicated, a.reordered), (4, 1, 1));
        let sent: SentCounts = [(0u32, 6u32)].into_iter().collect();
        let names = vec!["u0".into(), "u1".into()];
        let (t, list) = conclude(
            2,
            1,
            [(1u32, &sent)].into_iter(),
            [SlotAuditInput { slot: 0, user: 0, audit: &a, missed_while_offline: 0 }].into_iter(),
            &names,
            0,
        );
        assert_eq!((t.expected, t.received, t.lost, t.duplicated, t.reordered), (6, 4, 2, 1, 1));
        assert_eq!(list.len(), 1);
    }
}
