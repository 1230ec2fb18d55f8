//! The leader-epoch cache: for each leader epoch that wrote to a log, the offset of its
//! first record.
//!
//! It is what lets a follower find where its log diverged from a new leader's without
//! trusting its high watermark (KIP-101), and answer `OffsetForLeaderEpoch` with the end
//! offset of an epoch (KIP-279). It is derived from the log itself (every batch carries its
//! leader epoch), so it is checkpointed for speed and rebuilt from the log when the
//! checkpoint cannot be trusted.
//!
//! Invariant (asserted after every change): epochs and start offsets both strictly
//! increase along the entries.

use lode_proto::{Epoch, Offset};

/// One epoch and where it started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpochEntry {
    /// The leader epoch.
    pub epoch: Epoch,
    /// Offset of the first record written in that epoch.
    pub start_offset: Offset,
}

/// What [`LeaderEpochCache::assign`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Assigned {
    /// A new latest entry was added (possibly replacing later-starting entries).
    Added,
    /// The epoch is already the latest: nothing changed.
    Unchanged,
    /// The epoch is older than the latest one: ignored (a stale writer's batch must never
    /// rewrite history).
    Stale,
}

/// See the module documentation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaderEpochCache {
    entries: Vec<EpochEntry>,
}

impl LeaderEpochCache {
    /// An empty cache.
    #[must_use]
    pub fn new() -> LeaderEpochCache {
        LeaderEpochCache::default()
    }

    /// A cache from checkpointed entries, or `None` if they break the invariant (a corrupt
    /// or foreign checkpoint: the caller rebuilds from the log).
    #[must_use]
    pub fn from_entries(entries: Vec<EpochEntry>) -> Option<LeaderEpochCache> {
        let ok = entries
            .windows(2)
            .all(|w| w[0].epoch < w[1].epoch && w[0].start_offset < w[1].start_offset)
            && entries
                .iter()
                .all(|e| e.epoch.0 >= 0 && e.start_offset.0 >= 0);
        ok.then_some(LeaderEpochCache { entries })
    }

    /// The entries, oldest first.
    #[must_use]
    pub fn entries(&self) -> &[EpochEntry] {
        &self.entries
    }

    /// The latest entry.
    #[must_use]
    pub fn latest(&self) -> Option<EpochEntry> {
        self.entries.last().copied()
    }

    fn check(&self) {
        for w in self.entries.windows(2) {
            assert!(
                w[0].epoch < w[1].epoch,
                "epoch cache epochs must strictly increase: {:?}",
                self.entries
            );
            assert!(
                w[0].start_offset < w[1].start_offset,
                "epoch cache start offsets must strictly increase: {:?}",
                self.entries
            );
        }
    }

    /// Records that `epoch` wrote a batch starting at `start_offset`.
    ///
    /// Entries starting at or after `start_offset` belong to a history this batch replaces
    /// and are removed (a follower appends only after truncating, so this only happens to
    /// empty epochs).
    pub fn assign(&mut self, epoch: Epoch, start_offset: Offset) -> Assigned {
        if epoch.0 < 0 {
            // Batches from before leader epochs existed carry -1 and mark no epoch.
            return Assigned::Unchanged;
        }
        if let Some(last) = self.latest() {
            if epoch == last.epoch {
                return Assigned::Unchanged;
            }
            if epoch < last.epoch {
                tracing::warn!(%epoch, latest = %last.epoch, %start_offset, "stale epoch not assigned");
                return Assigned::Stale;
            }
        }
        self.entries.retain(|e| e.start_offset < start_offset);
        self.entries.push(EpochEntry {
            epoch,
            start_offset,
        });
        self.check();
        Assigned::Added
    }

    /// Removes every entry whose epoch starts at or after `end_offset` (the log was
    /// truncated to end there).
    pub fn truncate_from_end(&mut self, end_offset: Offset) {
        self.entries.retain(|e| e.start_offset < end_offset);
        self.check();
    }

    /// Removes what lies wholly below `start_offset` (retention deleted it). The epoch that
    /// covers `start_offset` is kept and now starts there.
    pub fn truncate_from_start(&mut self, start_offset: Offset) {
        let covering = self
            .entries
            .iter()
            .rposition(|e| e.start_offset <= start_offset);
        if let Some(i) = covering {
            self.entries.drain(..i);
            self.entries[0].start_offset = start_offset;
        }
        self.check();
    }

    /// Keeps only what describes the records in `[start, end)`: the covering epoch moves
    /// to `start`, and epochs starting at or after `end` go (an empty log has no epochs).
    pub fn clamp(&mut self, start: Offset, end: Offset) {
        self.truncate_from_start(start);
        self.truncate_from_end(end);
    }

    /// The epoch of the record at `offset`, if the cache knows it.
    #[must_use]
    pub fn epoch_for_offset(&self, offset: Offset) -> Option<Epoch> {
        self.entries
            .iter()
            .rev()
            .find(|e| e.start_offset <= offset)
            .map(|e| e.epoch)
    }

    /// KIP-279's end offset for `requested`: the largest epoch `<= requested` this log
    /// holds, and the offset where the next epoch starts (or `log_end` if it is the
    /// latest). `None` when every epoch in the cache is newer than `requested`.
    #[must_use]
    pub fn end_offset_for(&self, requested: Epoch, log_end: Offset) -> Option<(Epoch, Offset)> {
        let i = self.entries.iter().rposition(|e| e.epoch <= requested)?;
        let end = self
            .entries
            .get(i + 1)
            .map_or(log_end, |next| next.start_offset);
        Some((self.entries[i].epoch, end))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn e(epoch: i32, start: i64) -> EpochEntry {
        EpochEntry {
            epoch: Epoch(epoch),
            start_offset: Offset(start),
        }
    }

    #[test]
    fn assign_and_end_offsets() {
        let mut c = LeaderEpochCache::new();
        assert_eq!(c.assign(Epoch(1), Offset(0)), Assigned::Added);
        assert_eq!(c.assign(Epoch(1), Offset(5)), Assigned::Unchanged);
        assert_eq!(c.assign(Epoch(3), Offset(10)), Assigned::Added);
        assert_eq!(c.assign(Epoch(2), Offset(12)), Assigned::Stale);
        assert_eq!(c.entries(), &[e(1, 0), e(3, 10)]);
        assert_eq!(
            c.end_offset_for(Epoch(1), Offset(20)),
            Some((Epoch(1), Offset(10)))
        );
        assert_eq!(
            c.end_offset_for(Epoch(2), Offset(20)),
            Some((Epoch(1), Offset(10)))
        );
        assert_eq!(
            c.end_offset_for(Epoch(3), Offset(20)),
            Some((Epoch(3), Offset(20)))
        );
        assert_eq!(
            c.end_offset_for(Epoch(9), Offset(20)),
            Some((Epoch(3), Offset(20)))
        );
        assert_eq!(c.end_offset_for(Epoch(0), Offset(20)), None);
        assert_eq!(c.epoch_for_offset(Offset(9)), Some(Epoch(1)));
        assert_eq!(c.epoch_for_offset(Offset(10)), Some(Epoch(3)));
    }

    #[test]
    fn truncation_both_ends() {
        let mut c = LeaderEpochCache::from_entries(vec![e(1, 0), e(2, 10), e(4, 20)]).unwrap();
        c.truncate_from_end(Offset(20));
        assert_eq!(c.entries(), &[e(1, 0), e(2, 10)]);
        c.truncate_from_start(Offset(15));
        assert_eq!(c.entries(), &[e(2, 15)]);
        c.truncate_from_start(Offset(3));
        assert_eq!(c.entries(), &[e(2, 15)], "nothing covers offset 3 any more");
        // A new epoch after truncation replaces empty later epochs.
        let mut c = LeaderEpochCache::from_entries(vec![e(1, 0), e(2, 10)]).unwrap();
        assert_eq!(c.assign(Epoch(5), Offset(10)), Assigned::Added);
        assert_eq!(c.entries(), &[e(1, 0), e(5, 10)]);
    }

    #[test]
    fn rejects_bad_checkpoints() {
        assert!(LeaderEpochCache::from_entries(vec![e(2, 0), e(1, 5)]).is_none());
        assert!(LeaderEpochCache::from_entries(vec![e(1, 5), e(2, 5)]).is_none());
        assert!(LeaderEpochCache::from_entries(vec![e(-1, 0)]).is_none());
    }

    proptest! {
        #[test]
        fn invariant_holds_under_any_sequence(ops in proptest::collection::vec((0_u8..3, 0_i32..20, 0_i64..200), 0..60)) {
            let mut c = LeaderEpochCache::new();
            for (op, epoch, offset) in ops {
                match op {
                    0 => { c.assign(Epoch(epoch), Offset(offset)); }
                    1 => c.truncate_from_end(Offset(offset)),
                    _ => c.truncate_from_start(Offset(offset)),
                }
                prop_assert!(LeaderEpochCache::from_entries(c.entries().to_vec()).is_some());
            }
        }
    }
}
