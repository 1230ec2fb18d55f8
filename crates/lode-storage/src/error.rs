//! Errors of the partition log, one enum for all its operations: each variant names the
//! operation's failure precisely enough for the broker to map it to a Kafka error code.

use std::io;

use lode_proto::batch::BatchError;
use lode_proto::Offset;

/// An error of a [`crate::Log`] operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// The disk failed. After a failed write or sync the log is marked failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What the log was doing.
        op: &'static str,
        /// The file or directory.
        path: String,
        /// The disk's error.
        #[source]
        source: io::Error,
    },
    /// A batch handed to append is malformed or fails its CRC.
    #[error("invalid record batch: {0}")]
    InvalidBatch(#[from] BatchError),
    /// A batch exceeds the configured maximum size.
    #[error("record batch of {size} bytes exceeds the maximum of {max}")]
    BatchTooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A replica's batch does not start at the log end offset.
    #[error("replicated batch starts at offset {got}, the log ends at {expected}")]
    NonContiguous {
        /// Where the batch starts.
        got: Offset,
        /// Where the log ends.
        expected: Offset,
    },
    /// A replica's batch carries an epoch older than the log's latest.
    #[error("replicated batch has leader epoch {got}, older than the log's latest {latest}")]
    StaleEpoch {
        /// The batch's epoch.
        got: i32,
        /// The latest epoch in the log.
        latest: i32,
    },
    /// A read or truncation outside the log.
    #[error("offset {offset} is outside the log [{start}, {end}]")]
    OffsetOutOfRange {
        /// The offset asked for.
        offset: Offset,
        /// The log start offset.
        start: Offset,
        /// The log end offset.
        end: Offset,
    },
    /// The log hit an IO failure earlier (for example a failed sync, after which unsynced
    /// data is undefined) and refuses all work until it is reopened, which recovers it.
    #[error("log failed and must be reopened: {0}")]
    Failed(String),
    /// The log was closed (the broker is stopping, or its partition was deleted): it
    /// refuses all work. Not a storage fault: nothing failed.
    #[error("log closed")]
    Closed,
    /// The log's files say something impossible that recovery cannot repair.
    #[error("log directory {dir} is inconsistent: {reason}")]
    Inconsistent {
        /// The directory.
        dir: String,
        /// What is wrong.
        reason: String,
    },
}

impl LogError {
    /// Whether the error says the storage itself failed (an IO error, a log failed by one,
    /// stored bytes that fail their check), rather than the request being wrong.
    #[must_use]
    pub fn is_storage_fault(&self) -> bool {
        matches!(
            self,
            LogError::Io { .. } | LogError::Failed(_) | LogError::Inconsistent { .. }
        )
    }

    pub(crate) fn io(
        op: &'static str,
        path: impl Into<String>,
    ) -> impl FnOnce(io::Error) -> LogError {
        let path = path.into();
        move |source| LogError::Io { op, path, source }
    }
}
