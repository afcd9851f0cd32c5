//! The audit's per-peer tables (a sender's sequences by audience, a receiver's pairs by
//! sender): a flat array when the run is small and busy enough, a hash map otherwise.
//!
//! Every message touches one entry on each side, at a random peer, so with 1,000 connections
//! the maps are a million entries spread over ~80 MB: each lookup was a cache and TLB miss,
//! ~1.3 µs of the generator's ~4 µs of user time per message at 60,000 msgs/s. Flat, the same
//! run's tables take 20 MB and no hashing (user time 3.4 µs per message; docs/load.md).

use rustc_hash::FxHashMap;

/// Most peers a table is kept flat for: a flat table costs its full size from the start
/// (a `Pair` is 16 bytes: 32 KiB per receiver connection at this bound).
pub const DENSE_PEERS: u32 = 2048;

/// Values by peer index; a peer never touched reads as absent (flat: its default value).
#[derive(Debug, Clone)]
pub enum PeerTable<T> {
    Sparse(FxHashMap<u32, T>),
    Dense(Vec<T>),
}

impl<T> Default for PeerTable<T> {
    fn default() -> Self {
        PeerTable::Sparse(FxHashMap::default())
    }
}

impl<T: Default + Clone + PartialEq> PeerTable<T> {
    /// Sizes an untouched table for `peers` peers when traffic starts: flat when there are at
    /// most [`DENSE_PEERS`] and each connection sends at least a quarter as many messages as
    /// there are peers (a map would grow to a similar size anyway); else a map with room for
    /// `min(peers, sends)` entries, so it does not rehash while traffic runs.
    pub fn prepare(&mut self, peers: u32, sends: u32) {
        let PeerTable::Sparse(map) = self else { return };
        if map.is_empty() && peers <= DENSE_PEERS && sends >= peers / 4 {
            *self = PeerTable::Dense(vec![T::default(); peers as usize]);
        } else {
            map.reserve(peers.min(sends).min(DENSE_PEERS) as usize);
        }
    }

    /// The value of `peer`, created as the default when absent.
    pub fn entry(&mut self, peer: u32) -> &mut T {
        match self {
            PeerTable::Sparse(map) => map.entry(peer).or_default(),
            PeerTable::Dense(v) => {
                let i = peer as usize;
                if i >= v.len() {
                    // Callers bound peers by the run; a larger one only costs the growth.
                    v.resize(i + 1, T::default());
                }
                &mut v[i]
            }
        }
    }

    pub fn get(&self, peer: u32) -> Option<&T> {
        match self {
            PeerTable::Sparse(map) => map.get(&peer),
            PeerTable::Dense(v) => v.get(peer as usize).filter(|t| **t != T::default()),
        }
    }

    /// Every peer touched, with its value (flat tables: in peer order).
    pub fn iter(&self) -> Box<dyn Iterator<Item = (u32, &T)> + '_> {
        match self {
            PeerTable::Sparse(map) => Box::new(map.iter().map(|(&k, v)| (k, v))),
            PeerTable::Dense(v) => Box::new(v.iter().enumerate().filter(|(_, t)| **t != T::default()).map(|(k, t)| (k as u32, t))),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }
}

impl<T> FromIterator<(u32, T)> for PeerTable<T> {
    fn from_iter<I: IntoIterator<Item = (u32, T)>>(iter: I) -> Self {
        PeerTable::Sparse(iter.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_and_sparse_tables_read_alike() {
        let mut flat = PeerTable::<u32>::default();
        flat.prepare(100, 1000);
        let mut sparse = PeerTable::<u32>::default();
        sparse.prepare(100, 10);
        assert!(matches!((&flat, &sparse), (PeerTable::Dense(_), PeerTable::Sparse(_))));
        for t in [&mut flat, &mut sparse] {
            *t.entry(7) += 2;
            *t.entry(3) += 1;
            // Past the prepared size: still counted.
            *t.entry(150) += 1;
            assert_eq!((t.get(7), t.get(3), t.get(150), t.get(4)), (Some(&2), Some(&1), Some(&1), None));
            let mut all: Vec<(u32, u32)> = t.iter().map(|(k, v)| (k, *v)).collect();
            all.sort();
            assert_eq!(all, [(3, 1), (7, 2), (150, 1)]);
            assert!(!t.is_empty());
        }
    }

    #[test]
    fn only_an_untouched_small_busy_table_goes_flat() {
        let mut big = PeerTable::<u32>::default();
        big.prepare(DENSE_PEERS + 1, u32::MAX);
        assert!(matches!(big, PeerTable::Sparse(_)));
        let mut idle = PeerTable::<u32>::default();
        idle.prepare(1000, 2);
        assert!(matches!(idle, PeerTable::Sparse(_)), "a connection that sends 2 messages keeps a map");
        let mut used = PeerTable::<u32>::default();
        *used.entry(1) += 1;
        used.prepare(10, 1000);
        assert_eq!((matches!(used, PeerTable::Sparse(_)), used.get(1)), (true, Some(&1)), "a table in use keeps its entries");
    }
}
