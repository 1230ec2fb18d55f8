//! Wire and disk formats of lode.
//!
//! - [`types`]: newtypes for offsets, epochs and ids.
//! - [`batch`]: Kafka RecordBatch v2, the unit a client produces and the log stores.

pub mod batch;
pub mod byte_vec;
pub mod types;

pub use types::{
    BrokerEpoch, BrokerId, Epoch, Instant, Offset, PartitionEpoch, PartitionId, TopicId,
};

/// Entry points shared by the fuzz targets (in `fuzz/`) and the tests that replay their
/// corpora, so both exercise exactly the same code.
#[doc(hidden)]
pub use batch::fuzzing;

/// The start value of [`fnv1a`].
pub const FNV1A_START: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a (64-bit) of `bytes`, continuing from `h` (start from [`FNV1A_START`]): a stable,
/// unkeyed hash for ids, digests and trace hashes (never for maps of untrusted keys).
#[must_use]
pub fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}
