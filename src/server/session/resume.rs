//! A resume (`since`/`epoch` in the query, history on), served by the writer before anything
//! else: it reads the missed messages from history in pages (each at most the connection's
//! send-queue byte bound, so a replay costs no more memory than a full queue however many
//! resumes run at once), writes each page, then the `recovery` frame, and only then drains the
//! queue, where live frames wait meanwhile. The connection is registered before the first read,
//! so a message is either in what was read or arrives live; live frames already replayed (offset
//! at or below the replay's last) are skipped at the seam, by the offset each queued frame
//! carries beside it (never by reading its text).

use std::sync::Arc;

use super::writer::{write_frames, Sink};
use super::Node;
use crate::broker::{RecoveryGap, ReplayBudget, REPLAY_MAX};
use crate::hub::{Queued, SessionCtl};
use crate::protocol;

/// A resume asked for in the query: `since=<offset>` (and `epoch=<epoch>`, which a client that
/// has received nothing yet may leave out with `since=0`).
#[derive(Debug, Clone)]
pub(crate) struct Resume {
    since: u64,
    epoch: Option<String>,
}

impl Resume {
    /// The resume in the query, if any; an error text (for a 400) when `since` is not an offset.
    pub(crate) fn from_query(params: &std::collections::HashMap<String, String>) -> Result<Option<Resume>, &'static str> {
        let Some(since) = params.get("since") else { return Ok(None) };
        let since = since.parse().map_err(|_| "since must be an offset (an integer >= 0)")?;
        Ok(Some(Resume { since, epoch: params.get("epoch").filter(|e| !e.is_empty()).cloned() }))
    }
}


/// A resume to serve: whose, from where, and whether the route table confirmed the connection
/// (a resume without that is answered `complete:false`, `unavailable`, without reading, since
/// messages stored after the read might reach neither the replay nor this connection).
pub(crate) struct Replay {
    pub(super) node: Arc<Node>,
    pub(super) user: Arc<str>,
    pub(super) resume: Resume,
    pub(super) routable: bool,
}

/// Where a replay ended, for its `recovery` frame.
struct Replayed {
    count: usize,
    epoch: String,
    offset: u64,
    gap: Option<RecoveryGap>,
}

impl Replay {
    /// Writes the replay page by page, then the `recovery` frame. Returns the seam (the last
    /// offset replayed, when history was read), or Err if the socket broke.
    pub(super) async fn write(self, sink: &mut Sink, ctl: &SessionCtl) -> Result<Option<u64>, ()> {
        let done = if self.routable {
            tokio::select! {
                _ = ctl.closed() => return Ok(None),
                r = self.pages(sink) => r?,
            }
        } else {
            Replayed { count: 0, epoch: String::new(), offset: self.resume.since, gap: Some(RecoveryGap::Unavailable) }
        };
        let frame = protocol::encode_recovery(done.gap.is_none(), done.count, &done.epoch, done.offset, done.gap.map(RecoveryGap::as_str));
        write_frames(sink, std::iter::once(frame)).await?;
        // Only a history that was read has a seam (a failed read knows no offset).
        Ok((!done.epoch.is_empty()).then_some(done.offset))
    }

    /// Reads and writes pages until the history's end (or [`REPLAY_MAX`] entries).
    async fn pages(&self, sink: &mut Sink) -> Result<Replayed, ()> {
        let bytes = self.node.limits.send_queue_bytes;
        // The epoch "" until history was read: a failed first read knows none.
        let mut at = Replayed { count: 0, epoch: String::new(), offset: self.resume.since, gap: None };
        let mut asked = self.resume.epoch.clone();
        loop {
            let budget = ReplayBudget { count: REPLAY_MAX - at.count, bytes };
            let page = self.node.broker.recover(&self.user, at.offset, asked.as_deref(), budget).await;
            at.gap = at.gap.or(page.gap);
            if page.epoch.is_empty() {
                // This page could not be read: what was written stands, and where it ended.
                return Ok(at);
            }
            at.count += page.entries.len();
            asked = Some(page.epoch.clone());
            (at.epoch, at.offset) = (page.epoch, page.offset);
            write_frames(sink, page.entries.into_iter()).await?;
            if !page.more {
                return Ok(at);
            }
            if at.count >= REPLAY_MAX {
                at.gap = at.gap.or(Some(RecoveryGap::TooFarBehind));
                return Ok(at);
            }
        }
    }
}

/// Drops live frames the replay already carried (offset <= `last`). Returns the seam still to
/// watch, or None once a later offset went by: from there on live frames are new.
pub(super) fn skip_replayed(batch: &mut Vec<Queued>, last: u64, ctl: &SessionCtl) -> Option<u64> {
    let mut passed = false;
    batch.retain(|q| match q.offset {
        Some(o) if o <= last => {
            ctl.dequeued(q.frame.len());
            false
        }
        Some(_) => {
            passed = true;
            true
        }
        None => true,
    });
    (!passed).then_some(last)
}
