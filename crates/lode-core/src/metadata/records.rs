//! The records of the metadata log.

use lode_proto::{BrokerId, PartitionId};
use serde::{Deserialize, Serialize};

use super::state::{PartitionState, TopicConfig};
use super::{BrokerEpoch, TopicId};

/// One entry of the metadata log. Applying the same records in the same order gives the
/// same [`MetadataState`](super::MetadataState) on every node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetadataRecord {
    /// A broker process registers. Its epoch is the offset of this record; it starts fenced.
    /// A registration while an older epoch of the same id is unfenced is rejected by
    /// `apply`: the controller fences the old epoch first.
    RegisterBroker {
        /// The broker id.
        id: BrokerId,
        /// Random id the process picked at start: tells a retry from a new process.
        incarnation: u64,
        /// Host the broker listens on.
        host: String,
        /// Port the broker listens on.
        port: u16,
        /// Port of its controller listener on `host`, 0 if none: brokers replicate over
        /// it, so every broker must reach every other one there, voter or not.
        control_port: u16,
        /// The epoch read from the broker's clean-shutdown marker, `None` when missing
        /// (kept for visibility: the controller already acted on it, KIP-966).
        clean_shutdown_epoch: Option<BrokerEpoch>,
        /// The id of the broker's log directory (see `BrokerRegistrationRequest`).
        log_dir_id: u64,
    },
    /// The broker's epoch is fenced: it may not lead or be in an ISR.
    Fence {
        /// The broker id.
        id: BrokerId,
        /// The epoch being fenced (must be the current one).
        epoch: BrokerEpoch,
    },
    /// The broker's epoch caught up with the metadata log and may serve again.
    Unfence {
        /// The broker id.
        id: BrokerId,
        /// The epoch being unfenced (must be the current one).
        epoch: BrokerEpoch,
    },
    /// The broker asked to shut down: it leaves every ISR and leads nothing.
    ControlledShutdown {
        /// The broker id.
        id: BrokerId,
        /// The broker's current epoch.
        epoch: BrokerEpoch,
    },
    /// A topic is created; its partitions follow as [`MetadataRecord::Partition`] records.
    Topic {
        /// The topic id.
        id: TopicId,
        /// The topic name.
        name: String,
        /// Number of partitions.
        partitions: i32,
        /// Replicas per partition.
        replication_factor: i16,
        /// The topic's configuration.
        config: TopicConfig,
    },
    /// A topic's configuration changes.
    TopicConfig {
        /// The topic id.
        id: TopicId,
        /// The new configuration.
        config: TopicConfig,
    },
    /// The whole new state of one partition: its creation or any change to it.
    Partition {
        /// The topic id.
        topic: TopicId,
        /// The partition.
        partition: PartitionId,
        /// The partition's new state.
        state: PartitionState,
    },
    /// A topic and its partitions are deleted.
    RemoveTopic {
        /// The topic id.
        id: TopicId,
    },
    /// A block of producer ids is handed to a broker: every id below `end` is taken, and
    /// the next block starts there (Kafka's KIP-730). Ids allocated in the metadata log
    /// survive the loss of any broker's disk, which a broker's own reservation does not.
    ProducerIds {
        /// The broker the block is for.
        broker: BrokerId,
        /// The end (exclusive) of its block.
        end: i64,
    },
}
