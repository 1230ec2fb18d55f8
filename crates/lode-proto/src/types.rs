//! Newtypes for the numbers of the domain, so an offset is never passed where an epoch is
//! expected. Each wraps the integer width Kafka's wire format uses for it.

use std::fmt;

macro_rules! newtype {
    ($(#[$doc:meta])* $name:ident($inner:ty)) => {
        $(#[$doc])*
        #[derive(
            Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default,
            serde::Serialize, serde::Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub $inner);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl From<$inner> for $name {
            fn from(v: $inner) -> Self {
                $name(v)
            }
        }
    };
}

newtype!(
    /// Position of a record in a partition's log.
    Offset(i64)
);
newtype!(
    /// A partition leader epoch (Kafka's `partitionLeaderEpoch`), or a Raft term.
    Epoch(i32)
);
newtype!(
    /// The id of a broker (node) in the cluster.
    BrokerId(i32)
);
newtype!(
    /// The index of a partition within its topic.
    PartitionId(i32)
);

newtype!(
    /// A broker's epoch: the offset of its `RegisterBroker` record in the metadata log
    /// (KIP-631), so every registration of a broker id has a larger epoch than the last.
    BrokerEpoch(i64)
);
newtype!(
    /// A partition's epoch: bumped by every change of its leader, ISR or ELR, so a stale
    /// `AlterPartition` can be recognised (Kafka's `partitionEpoch`).
    PartitionEpoch(i32)
);
newtype!(
    /// A topic's id (Kafka's topic UUID). Chosen by the caller, never reused.
    TopicId(u128)
);

impl Offset {
    /// The offset right after this one (saturating: offsets read from damaged bytes must
    /// not overflow).
    #[must_use]
    pub const fn next(self) -> Offset {
        Offset(self.0.saturating_add(1))
    }

    /// This offset moved by `delta` (which may be negative), saturating.
    #[must_use]
    pub const fn add(self, delta: i64) -> Offset {
        Offset(self.0.saturating_add(delta))
    }
}

impl Epoch {
    /// Kafka's "no epoch" value (-1), used by batches written before leader epochs existed.
    pub const NONE: Epoch = Epoch(-1);
}

/// A point on one node's monotonic clock, in nanoseconds since that clock's origin.
///
/// It is a plain value so that sans-IO code (lode-core) can take `now` as an input without
/// reading a clock. Instants from different nodes' clocks are not comparable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instant(pub u64);

impl Instant {
    /// The time elapsed from `earlier` to `self`, or zero if `earlier` is later.
    #[must_use]
    pub fn saturating_since(self, earlier: Instant) -> std::time::Duration {
        std::time::Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }

    /// This instant moved forward by `d`, saturating at the end of time.
    #[must_use]
    pub fn saturating_add(self, d: std::time::Duration) -> Instant {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Instant(self.0.saturating_add(nanos))
    }
}
