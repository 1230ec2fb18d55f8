//! Idempotent-producer state of one partition: per producer id, its epoch and the last
//! batches it wrote, so a retried batch is answered with its original offset instead of
//! being written twice, and a gap in sequence numbers is refused.
//!
//! Kafka's rules (ProducerStateManager): a producer id carries an epoch; a higher epoch
//! resets the sequence (it must restart at 0); a lower epoch is fenced. Within an epoch,
//! each batch's base sequence must follow the previous batch's last sequence (wrapping at
//! `i32::MAX`). The last five batches are remembered for duplicate detection, matching the
//! client's maximum of five in-flight requests.

use std::collections::{BTreeMap, VecDeque};

use lode_proto::Offset;

/// How many recent batches per producer are remembered to detect duplicates.
pub const BATCHES_REMEMBERED: usize = 5;
/// At most this many producers are tracked per partition; the least recently active one is
/// forgotten first.
pub const PRODUCERS_MAX: usize = 10_000;

/// One remembered batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchMeta {
    /// First sequence number of the batch.
    pub first_seq: i32,
    /// Last sequence number of the batch.
    pub last_seq: i32,
    /// Offset the batch was written at.
    pub base_offset: Offset,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Entry {
    epoch: i16,
    batches: VecDeque<BatchMeta>,
    /// Logical time of the last append, for eviction.
    touched: u64,
}

/// What to do with an incoming idempotent batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// New and in order: append it, then call [`ProducerStates::record`].
    Append,
    /// Already written at this offset: answer success without writing.
    Duplicate(Offset),
    /// A gap or a reordering: `OUT_OF_ORDER_SEQUENCE_NUMBER`.
    OutOfOrder {
        /// The sequence the partition expected.
        expected: i32,
    },
    /// The epoch is older than the producer's current one: `INVALID_PRODUCER_EPOCH`.
    Fenced {
        /// The producer's current epoch.
        current: i16,
    },
}

/// Idempotence state of one partition. See the module documentation.
#[derive(Clone, Debug, Default)]
pub struct ProducerStates {
    producers: BTreeMap<i64, Entry>,
    clock: u64,
}

fn next_seq(seq: i32) -> i32 {
    if seq == i32::MAX {
        0
    } else {
        seq + 1
    }
}

impl ProducerStates {
    /// Decides what to do with a batch from producer `id` at `epoch` covering sequences
    /// `first_seq..=last_seq`. Producers this partition has never seen are accepted at any
    /// sequence (their state may predate a restart or a leader change).
    #[must_use]
    pub fn check(&self, id: i64, epoch: i16, first_seq: i32, last_seq: i32) -> Verdict {
        let Some(entry) = self.producers.get(&id) else {
            return Verdict::Append;
        };
        if epoch < entry.epoch {
            return Verdict::Fenced {
                current: entry.epoch,
            };
        }
        if epoch > entry.epoch {
            return if first_seq == 0 {
                Verdict::Append
            } else {
                Verdict::OutOfOrder { expected: 0 }
            };
        }
        if let Some(dup) = entry
            .batches
            .iter()
            .find(|b| b.first_seq == first_seq && b.last_seq == last_seq)
        {
            return Verdict::Duplicate(dup.base_offset);
        }
        match entry.batches.back() {
            Some(last) if first_seq != next_seq(last.last_seq) => Verdict::OutOfOrder {
                expected: next_seq(last.last_seq),
            },
            _ => Verdict::Append,
        }
    }

    /// Records a batch that was appended (or found in the log on recovery).
    pub fn record(&mut self, id: i64, epoch: i16, batch: BatchMeta) {
        self.clock += 1;
        let clock = self.clock;
        let entry = self.producers.entry(id).or_default();
        if epoch != entry.epoch {
            entry.batches.clear();
            entry.epoch = epoch;
        }
        entry.batches.push_back(batch);
        while entry.batches.len() > BATCHES_REMEMBERED {
            entry.batches.pop_front();
        }
        entry.touched = clock;
        if self.producers.len() > PRODUCERS_MAX {
            let oldest = self
                .producers
                .iter()
                .min_by_key(|(_, e)| e.touched)
                .map(|(id, _)| *id);
            if let Some(oldest) = oldest {
                self.producers.remove(&oldest);
            }
        }
        assert!(
            self.producers.len() <= PRODUCERS_MAX,
            "producer state is bounded"
        );
    }

    /// Forgets batches at or after `offset` (the log was truncated there).
    pub fn truncate(&mut self, offset: Offset) {
        for e in self.producers.values_mut() {
            e.batches.retain(|b| b.base_offset < offset);
        }
        self.producers.retain(|_, e| !e.batches.is_empty());
    }

    /// How many producers are tracked.
    #[must_use]
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    /// Whether no producer is tracked.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(first: i32, last: i32, off: i64) -> BatchMeta {
        BatchMeta {
            first_seq: first,
            last_seq: last,
            base_offset: Offset(off),
        }
    }

    #[test]
    fn in_order_duplicates_and_gaps() {
        let mut s = ProducerStates::default();
        assert_eq!(s.check(7, 0, 0, 4), Verdict::Append);
        s.record(7, 0, meta(0, 4, 100));
        assert_eq!(s.check(7, 0, 5, 9), Verdict::Append);
        s.record(7, 0, meta(5, 9, 105));
        assert_eq!(s.check(7, 0, 0, 4), Verdict::Duplicate(Offset(100)));
        assert_eq!(s.check(7, 0, 5, 9), Verdict::Duplicate(Offset(105)));
        assert_eq!(s.check(7, 0, 11, 12), Verdict::OutOfOrder { expected: 10 });
        assert_eq!(s.check(7, 0, 3, 4), Verdict::OutOfOrder { expected: 10 });
    }

    #[test]
    fn epochs_fence_and_reset() {
        let mut s = ProducerStates::default();
        s.record(1, 3, meta(0, 0, 0));
        assert_eq!(s.check(1, 2, 1, 1), Verdict::Fenced { current: 3 });
        assert_eq!(s.check(1, 4, 5, 5), Verdict::OutOfOrder { expected: 0 });
        assert_eq!(s.check(1, 4, 0, 0), Verdict::Append);
        s.record(1, 4, meta(0, 0, 1));
        assert_eq!(s.check(1, 4, 0, 0), Verdict::Duplicate(Offset(1)));
    }

    #[test]
    fn only_the_last_five_batches_are_remembered_and_sequences_wrap() {
        let mut s = ProducerStates::default();
        for i in 0..8 {
            s.record(1, 0, meta(i, i, i64::from(i)));
        }
        assert_eq!(s.check(1, 0, 2, 2), Verdict::OutOfOrder { expected: 8 });
        assert_eq!(s.check(1, 0, 3, 3), Verdict::Duplicate(Offset(3)));
        s.record(1, 0, meta(i32::MAX - 1, i32::MAX, 9));
        assert_eq!(s.check(1, 0, 0, 3), Verdict::Append, "sequence wraps to 0");
    }

    #[test]
    fn truncation_forgets_later_batches() {
        let mut s = ProducerStates::default();
        s.record(1, 0, meta(0, 0, 10));
        s.record(1, 0, meta(1, 1, 11));
        s.truncate(Offset(11));
        assert_eq!(s.check(1, 0, 1, 1), Verdict::Append);
        s.truncate(Offset(0));
        assert!(s.is_empty());
    }
}
