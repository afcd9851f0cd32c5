//! Server answers to sends that carry an `id` (`--ack`): a bounded window per connection of
//! the sends still waiting for their `ack` or `error`, the verdicts, and the sends whose fate the
//! audit must not call "lost after ack" (refused, offline, unanswered).

use std::collections::{BTreeMap, VecDeque};

use tokio::time::Instant;

use super::report::{count_bounded, AckStats};

/// Sends one connection may have waiting for an answer. At 60 msgs/s this is over a minute of
/// silence; beyond it the oldest is given up as unanswered rather than kept without end.
pub const MAX_PENDING: usize = 4096;
/// Refused or unanswered sends remembered per connection for the audit (8 bytes each). Beyond
/// it they are counted as `untracked`: the audit cannot tell whether they arrived.
pub const MAX_REFUSED_TRACKED: usize = 65_536;

/// A send waiting for its answer.
#[derive(Debug, Clone, Copy)]
struct Pending {
    /// Receiver user (local index) and audit sequence (`OFFLINE_SEQ` when not audited).
    to: u32,
    seq: i64,
    sent_at: Instant,
    answered: bool,
}

/// How the server answered.
#[derive(Debug, PartialEq)]
pub enum Verdict<'a> {
    /// `ack`; `online` as the server said (absent counts as not online).
    Ack { online: Option<bool> },
    /// `error` with its code.
    Refused(&'a str),
}

/// One connection slot's ack bookkeeping (kept across reconnects: ids never repeat in a slot).
#[derive(Debug, Default)]
pub struct AckWindow {
    /// Id of `pending[0]`; ids are consecutive, so an answer is found by subtraction.
    first_id: u64,
    next_id: u64,
    pending: VecDeque<Pending>,
    pub stats: AckStats,
    /// (receiver user, seq) of audited sends not acked `online:true`.
    pub not_accepted: Vec<(u32, u32)>,
    /// Of those, the ones the server answered with an `error` (`overloaded`, `unavailable`, ...)
    /// or with `online:false`: the sender was told, so one that never arrived is refused, not lost.
    pub refused: Vec<(u32, u32)>,
}

impl AckWindow {
    pub fn new() -> AckWindow {
        AckWindow { first_id: 1, next_id: 1, ..AckWindow::default() }
    }

    /// The id for a send about to go out. With [`MAX_PENDING`] sends waiting, the oldest is
    /// given up as unanswered first.
    pub fn send(&mut self, to: u32, seq: i64, now: Instant) -> u64 {
        if self.pending.len() == MAX_PENDING {
            self.give_up_oldest();
        }
        let id = self.next_id;
        self.next_id += 1;
        self.pending.push_back(Pending { to, seq, sent_at: now, answered: false });
        self.stats.sent_with_id += 1;
        id
    }

    /// Sends still waiting.
    pub fn waiting(&self) -> u64 {
        self.pending.iter().filter(|p| !p.answered).count() as u64
    }

    fn give_up_oldest(&mut self) {
        if let Some(p) = self.pending.pop_front() {
            self.first_id += 1;
            if !p.answered {
                self.stats.unanswered += 1;
                self.remember(p.to, p.seq);
            }
        }
    }

    fn remember(&mut self, to: u32, seq: i64) {
        remember(&mut self.not_accepted, &mut self.stats.untracked, to, seq);
    }

    /// Records an answer; returns the send-to-answer time, or None for an id we are not waiting
    /// for (never sent, or answered already).
    pub fn answer(&mut self, id: i128, verdict: Verdict<'_>, now: Instant) -> Option<std::time::Duration> {
        let idx = u64::try_from(id).ok().and_then(|id| id.checked_sub(self.first_id)).filter(|&i| i < self.pending.len() as u64);
        let Some(p) = idx.and_then(|i| self.pending.get_mut(i as usize)).filter(|p| !p.answered) else {
            self.stats.unknown_ids += 1;
            return None;
        };
        p.answered = true;
        let (to, seq, took) = (p.to, p.seq, now.saturating_duration_since(p.sent_at));
        match verdict {
            Verdict::Ack { online: Some(true) } => self.stats.online += 1,
            Verdict::Ack { .. } => {
                self.stats.offline += 1;
                self.remember(to, seq);
                remember(&mut self.refused, &mut 0, to, seq);
            }
            Verdict::Refused(code) => {
                count_bounded(&mut self.stats.refused, code, 1);
                self.remember(to, seq);
                remember(&mut self.refused, &mut 0, to, seq);
            }
        }
        while self.pending.front().is_some_and(|p| p.answered) {
            self.pending.pop_front();
            self.first_id += 1;
        }
        Some(took)
    }

    /// The connection closed: nothing waiting can be answered any more.
    pub fn connection_closed(&mut self, ours: bool) -> u64 {
        let mut n = 0;
        while let Some(p) = self.pending.pop_front() {
            self.first_id += 1;
            if !p.answered {
                n += 1;
                if ours {
                    self.stats.unanswered += 1;
                } else {
                    self.stats.unanswered_closed += 1;
                }
                self.remember(p.to, p.seq);
            }
        }
        n
    }
}

/// Keeps (`to`, `seq`) of an audited send that was not accepted, within
/// [`MAX_REFUSED_TRACKED`]; beyond it counts it in `untracked`. Unaudited sends (`OFFLINE_SEQ`)
/// are not kept.
pub(crate) fn remember(not_accepted: &mut Vec<(u32, u32)>, untracked: &mut u64, to: u32, seq: i64) {
    let Ok(seq) = u32::try_from(seq) else { return };
    if not_accepted.len() < MAX_REFUSED_TRACKED {
        not_accepted.push((to, seq));
    } else {
        *untracked += 1;
    }
}

/// Adds `from`'s refusals by code into `into` within the bound on distinct codes.
pub fn add_refused(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (k, v) in from {
        count_bounded(into, k, *v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_matched_by_id_and_classified() {
        let t = Instant::now();
        let mut w = AckWindow::new();
        let a = w.send(1, 0, t);
        let b = w.send(2, 0, t);
        let c = w.send(3, 1, t);
        let d = w.send(4, -1, t);
        assert_eq!((a, b, c, d), (1, 2, 3, 4));
        assert!(w.answer(i128::from(b), Verdict::Ack { online: Some(false) }, t).is_some());
        assert!(w.answer(i128::from(a), Verdict::Ack { online: Some(true) }, t).is_some());
        assert!(w.answer(i128::from(a), Verdict::Ack { online: Some(true) }, t).is_none(), "answered twice");
        assert!(w.answer(99, Verdict::Ack { online: Some(true) }, t).is_none());
        assert!(w.answer(-1, Verdict::Ack { online: Some(true) }, t).is_none());
        assert!(w.answer(i128::from(c), Verdict::Refused("unavailable"), t).is_some());
        assert_eq!(w.waiting(), 1);
        assert_eq!(w.connection_closed(false), 1);
        let s = &w.stats;
        assert_eq!((s.sent_with_id, s.online, s.offline, s.unknown_ids, s.unanswered_closed), (4, 1, 1, 3, 1));
        assert_eq!(s.refused.get("unavailable"), Some(&1));
        // Offline and refused sends are remembered for the audit; the unaudited one (seq -1) not.
        assert_eq!(w.not_accepted, vec![(2, 0), (3, 1)]);
        // Ids keep increasing after a reconnect.
        assert_eq!(w.send(1, 2, t), 5);
    }

    #[test]
    fn the_window_is_bounded() {
        let t = Instant::now();
        let mut w = AckWindow::new();
        for i in 0..(MAX_PENDING as i64 + 10) {
            w.send(0, i, t);
        }
        assert_eq!(w.pending.len(), MAX_PENDING);
        assert_eq!(w.stats.unanswered, 10);
        assert!(w.answer(1, Verdict::Ack { online: Some(true) }, t).is_none(), "given up");
        assert!(w.answer(11, Verdict::Ack { online: Some(true) }, t).is_some());
    }
}
