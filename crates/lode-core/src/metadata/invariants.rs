//! Checkers for a harness: [`check_invariants`] over one state, [`EpochHistory`] over the
//! sequence of states a cluster goes through.

use std::collections::BTreeMap;

use lode_proto::{BrokerId, Epoch, PartitionId};

use super::state::{MetadataState, PartitionState};
use super::{BrokerEpoch, PartitionEpoch, TopicId};

/// A broken invariant, naming the partition or broker.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// The leader is not in the ISR.
    #[error("{topic}-{partition}: leader {leader} is not in the ISR")]
    LeaderNotInIsr {
        /// Topic name.
        topic: String,
        /// Partition.
        partition: PartitionId,
        /// The leader.
        leader: BrokerId,
    },
    /// The leader is unknown, fenced or shutting down.
    #[error("{topic}-{partition}: leader {leader} is fenced, shutting down or unknown")]
    IneligibleLeader {
        /// Topic name.
        topic: String,
        /// Partition.
        partition: PartitionId,
        /// The leader.
        leader: BrokerId,
    },
    /// An ISR member is unknown, fenced or shutting down.
    #[error("{topic}-{partition}: ISR member {broker} is fenced, shutting down or unknown")]
    IneligibleInIsr {
        /// Topic name.
        topic: String,
        /// Partition.
        partition: PartitionId,
        /// The broker.
        broker: BrokerId,
    },
    /// An ISR or ELR member is not a replica, or a replica is listed twice.
    #[error("{topic}-{partition}: broker {broker} is not a replica or is listed twice")]
    NotAReplica {
        /// Topic name.
        topic: String,
        /// Partition.
        partition: PartitionId,
        /// The broker.
        broker: BrokerId,
    },
    /// A broker is in both the ISR and the ELR.
    #[error("{topic}-{partition}: broker {broker} is in both the ISR and the ELR")]
    IsrElrOverlap {
        /// Topic name.
        topic: String,
        /// Partition.
        partition: PartitionId,
        /// The broker.
        broker: BrokerId,
    },
    /// The ELR is not empty although the ISR reaches min ISR.
    #[error("{topic}-{partition}: ELR not empty with {isr_len} in the ISR (min ISR {min_isr})")]
    ElrWithFullIsr {
        /// Topic name.
        topic: String,
        /// Partition.
        partition: PartitionId,
        /// ISR size.
        isr_len: usize,
        /// Effective min ISR.
        min_isr: usize,
    },
    /// A partition of the topic's range is missing.
    #[error("{topic}-{partition}: missing")]
    MissingPartition {
        /// Topic name.
        topic: String,
        /// Partition.
        partition: PartitionId,
    },
    /// A broker's epoch did not increase when it changed.
    #[error("broker {broker}: epoch went from {previous} to {current}")]
    BrokerEpochNotIncreasing {
        /// The broker.
        broker: BrokerId,
        /// The epoch seen before.
        previous: BrokerEpoch,
        /// The epoch now.
        current: BrokerEpoch,
    },
    /// A partition changed without its leader epoch (on a leader change) or partition epoch
    /// increasing, or an epoch went down.
    #[error(
        "{topic}-{partition}: epochs went from (leader {leader_epoch_before}, partition \
         {partition_epoch_before}) to ({leader_epoch_after}, {partition_epoch_after})"
    )]
    EpochNotIncreasing {
        /// Topic name.
        topic: String,
        /// Partition.
        partition: PartitionId,
        /// Leader epoch seen before.
        leader_epoch_before: Epoch,
        /// Leader epoch now.
        leader_epoch_after: Epoch,
        /// Partition epoch seen before.
        partition_epoch_before: PartitionEpoch,
        /// Partition epoch now.
        partition_epoch_after: PartitionEpoch,
    },
}

/// Checks the controller-state invariants of every partition: leader in the ISR and
/// eligible (after an unclean election too: the ISR is then `{leader}`), ISR and ELR made of
/// replicas and disjoint, ELR empty when the ISR reaches min ISR, no fenced or shutting-down
/// broker in an ISR, every partition of a topic present.
///
/// # Errors
/// The first violation found.
pub fn check_invariants(state: &MetadataState) -> Result<(), Violation> {
    for topic in state.topics().values() {
        for p in 0..topic.partition_count {
            if !topic.partitions.contains_key(&PartitionId(p)) {
                return Err(Violation::MissingPartition {
                    topic: topic.name.clone(),
                    partition: PartitionId(p),
                });
            }
        }
    }
    for (topic, partition, p) in state.partitions() {
        let name = || topic.name.clone();
        let repeated = (1..p.replicas.len())
            .find(|&i| p.replicas[..i].contains(&p.replicas[i]))
            .map(|i| p.replicas[i]);
        let stray = repeated.or_else(|| {
            p.isr
                .iter()
                .chain(&p.elr)
                .copied()
                .find(|b| !p.replicas.contains(b))
        });
        if let Some(broker) = stray {
            return Err(Violation::NotAReplica {
                topic: name(),
                partition,
                broker,
            });
        }
        if let Some(&broker) = p.isr.intersection(&p.elr).next() {
            return Err(Violation::IsrElrOverlap {
                topic: name(),
                partition,
                broker,
            });
        }
        let min_isr = p.effective_min_isr(&topic.config);
        if !p.elr.is_empty() && p.isr.len() >= min_isr {
            return Err(Violation::ElrWithFullIsr {
                topic: name(),
                partition,
                isr_len: p.isr.len(),
                min_isr,
            });
        }
        if let Some(&broker) = p.isr.iter().find(|b| !state.is_eligible(**b)) {
            return Err(Violation::IneligibleInIsr {
                topic: name(),
                partition,
                broker,
            });
        }
        if let Some(leader) = p.leader {
            if !p.isr.contains(&leader) {
                return Err(Violation::LeaderNotInIsr {
                    topic: name(),
                    partition,
                    leader,
                });
            }
            if !state.is_eligible(leader) {
                return Err(Violation::IneligibleLeader {
                    topic: name(),
                    partition,
                    leader,
                });
            }
        }
    }
    Ok(())
}

/// The epochs a harness has seen, to assert they only move forward: each broker's epoch
/// strictly increases whenever it changes; a partition's partition epoch strictly increases
/// whenever the partition changes, and its leader epoch never decreases and strictly
/// increases whenever the leader changes. Partitions are keyed by topic id, which is never
/// reused, so a deleted and re-created topic starts afresh.
#[derive(Clone, Debug, Default)]
pub struct EpochHistory {
    brokers: BTreeMap<BrokerId, BrokerEpoch>,
    partitions: BTreeMap<(TopicId, PartitionId), PartitionState>,
}

impl EpochHistory {
    /// Nothing seen yet.
    #[must_use]
    pub fn new() -> EpochHistory {
        EpochHistory::default()
    }

    /// Records the epochs of `state`, checking them against everything seen before.
    ///
    /// # Errors
    /// The first epoch that moved the wrong way.
    pub fn observe(&mut self, state: &MetadataState) -> Result<(), Violation> {
        for broker in state.brokers().values() {
            let previous = self.brokers.insert(broker.id, broker.epoch);
            if let Some(previous) = previous.filter(|p| *p > broker.epoch) {
                return Err(Violation::BrokerEpochNotIncreasing {
                    broker: broker.id,
                    previous,
                    current: broker.epoch,
                });
            }
        }
        for (topic, partition, now) in state.partitions() {
            let Some(before) = self.partitions.insert((topic.id, partition), now.clone()) else {
                continue;
            };
            if before == *now {
                continue;
            }
            let leader_changed = before.leader != now.leader;
            if now.partition_epoch <= before.partition_epoch
                || now.leader_epoch < before.leader_epoch
                || (leader_changed && now.leader_epoch == before.leader_epoch)
            {
                return Err(Violation::EpochNotIncreasing {
                    topic: topic.name.clone(),
                    partition,
                    leader_epoch_before: before.leader_epoch,
                    leader_epoch_after: now.leader_epoch,
                    partition_epoch_before: before.partition_epoch,
                    partition_epoch_after: now.partition_epoch,
                });
            }
        }
        Ok(())
    }
}
