//! The segmented partition log of lode.
//!
//! A [`Log`] is one partition's replica on one broker: segments of RecordBatch v2 batches
//! stored as clients sent them, sparse offset and time indexes, a leader-epoch cache,
//! atomic checkpoints, and recovery that survives torn writes, lost unsynced data and
//! corrupt checkpoints. It reaches the disk and clock only through `lode-env`, so the same
//! code runs on the host and on the simulated disk.

pub mod checkpoint;
pub mod error;
pub mod index;
mod log;
pub mod raft_store;
mod recovery;

pub use error::LogError;
pub use log::{
    AppendInfo, FailureHook, Log, LogConfig, RecoveryReport, SyncJob, SyncPolicy,
    PAGE_CACHE_WINDOW_BYTES,
};
pub use raft_store::{RaftStore, RaftStoreError};

#[cfg(feature = "planted-bugs")]
pub use log::PlantedBug;
