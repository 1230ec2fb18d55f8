//! The cluster metadata: a KRaft-style replicated state machine and the controller logic
//! that decides what goes into it (KIP-500, KIP-631, KIP-497, KIP-903, KIP-966).
//!
//! - [`MetadataRecord`]: the records of the metadata log. Every change to the cluster's
//!   metadata is one record; nothing else changes [`MetadataState`].
//! - [`MetadataState`]: what the records add up to, applied identically on every node
//!   (deterministic containers only, so equal logs give equal states) and serialisable as
//!   the metadata snapshot.
//! - [`Controller`]: pure decisions over a `&MetadataState` (registration, heartbeats,
//!   session expiry, topic creation, `AlterPartition`) that return the records to append.
//!   The caller appends them through Raft and applies them once committed. The active
//!   controller must also apply what it proposes to its working state before deciding the
//!   next request (as Kafka's `QuorumController` does); a decision taken from a state that
//!   lacks records already proposed can produce records that `apply` then rejects.
//! - [`check_invariants`] and [`EpochHistory`]: the checkers a harness calls after every
//!   step.
//!
//! Deliberate choices where Kafka leaves room or differs:
//! - `min.insync.replicas` acts through its effective value `min(min ISR, replica count)`,
//!   for the ELR as for the high watermark.
//! - After an election from the ELR the ELR rule is applied again (Kafka keeps the other
//!   ELR members even when `{leader}` already reaches min ISR), so "ELR empty when the ISR
//!   reaches min ISR" holds after every batch.
//! - An `AlterPartition` from a broker that is not the leader gets `NOT_LEADER_OR_FOLLOWER`
//!   (Kafka answers `INVALID_REQUEST`).
//! - Controlled shutdown: the first heartbeat asking for it takes the broker out of every ISR
//!   and leadership; a later one, once it leads nothing, fences it (Kafka's `SHUTDOWN_NOW`).
//!
//! Records of one decision form a batch: the invariants hold between batches, not between
//! the records of a batch (a `Fence` is followed by the partition changes that take the
//! fenced broker out of every ISR).

mod controller;
mod invariants;
mod records;
#[cfg(test)]
mod sim;
mod state;
#[cfg(test)]
mod tests;

#[cfg(feature = "planted-bugs")]
pub use controller::PlantedBug;
pub use controller::{
    AlterPartitionError, AlterPartitionRequest, BrokerRegistrationRequest, Controller,
    ControllerConfig, CreateTopicRequest, HeartbeatError, HeartbeatRequest, IsrMember,
    RegisterBrokerError, TopicError, PRODUCER_ID_BLOCK,
};
pub use invariants::{check_invariants, EpochHistory, Violation};
pub use records::MetadataRecord;
pub use state::{
    ApplyError, BrokerRegistration, MetadataState, PartitionState, TopicConfig, TopicFsync,
    TopicState,
};

pub use lode_proto::types::{BrokerEpoch, PartitionEpoch, TopicId};
