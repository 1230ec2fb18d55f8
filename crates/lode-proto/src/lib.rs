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
