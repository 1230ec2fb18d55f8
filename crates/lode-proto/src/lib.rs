//! Wire and disk formats of lode.
//!
//! - [`types`]: newtypes for offsets, epochs and ids.
//! - [`batch`]: Kafka RecordBatch v2, the unit a client produces and the log stores.

pub mod batch;
pub mod types;

pub use types::{BrokerId, Epoch, Instant, Offset, PartitionId};
