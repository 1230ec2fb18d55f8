//! The metadata state machine: what the records of the metadata log add up to.

use std::collections::{BTreeMap, BTreeSet};

use lode_proto::{BrokerId, Epoch, Offset, PartitionId};
use serde::{Deserialize, Serialize};

use super::records::MetadataRecord;
use super::{BrokerEpoch, PartitionEpoch, TopicId};

/// A registered broker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerRegistration {
    /// The broker id.
    pub id: BrokerId,
    /// The broker epoch: the offset of the registration record.
    pub epoch: BrokerEpoch,
    /// The registering process's incarnation.
    pub incarnation: u64,
    /// The id of the broker's log directory when it registered.
    pub log_dir_id: u64,
    /// Host the broker listens on.
    pub host: String,
    /// Port the broker listens on.
    pub port: u16,
    /// Port of its controller listener on `host` (0: none).
    pub control_port: u16,
    /// A fenced broker may neither lead nor be in an ISR.
    pub fenced: bool,
    /// The broker is in controlled shutdown: it may neither lead nor join an ISR.
    pub shutting_down: bool,
}

impl BrokerRegistration {
    /// Whether the broker may lead a partition or join an ISR.
    #[must_use]
    pub fn is_eligible(&self) -> bool {
        !self.fenced && !self.shutting_down
    }
}

/// A topic's configuration, resolved against the cluster defaults when the topic was
/// created.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicConfig {
    /// `min.insync.replicas` (at least 1).
    pub min_insync_replicas: i32,
    /// `unclean.leader.election.enable`.
    pub unclean_leader_election: bool,
    /// When replicas sync appends, and so what an unclean restart may have lost.
    pub fsync: TopicFsync,
}

/// A topic's durability policy (`lode.fsync`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum TopicFsync {
    /// A replica counts an offset toward the high watermark only once it is synced: an
    /// unclean restart loses nothing it acknowledged, so it stays in the ISR and ELR.
    #[default]
    Always,
    /// Kafka's default: offsets count once written, syncs happen on an interval. An
    /// unclean restart may have lost acknowledged records: the replica leaves every ISR
    /// and ELR (KIP-966).
    Interval,
}

/// One partition's replication state, as the controller owns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionState {
    /// The assigned replicas, in preference order.
    pub replicas: Vec<BrokerId>,
    /// The in-sync replicas.
    pub isr: BTreeSet<BrokerId>,
    /// The eligible leader replicas (KIP-966): replicas that left the ISR while it was
    /// below min ISR, so they still hold every committed record.
    pub elr: BTreeSet<BrokerId>,
    /// The leader, `None` when no replica can lead.
    pub leader: Option<BrokerId>,
    /// Bumped by every leader change.
    pub leader_epoch: Epoch,
    /// Bumped by every change.
    pub partition_epoch: PartitionEpoch,
    /// While leaderless: the last leader (preferred by an unclean election).
    pub last_known_leader: Option<BrokerId>,
    /// The current leader was elected from outside the ISR and ELR (Kafka's `RECOVERING`
    /// leader recovery state): committed records may have been lost.
    pub elected_unclean: bool,
}

impl PartitionState {
    /// A new partition: every replica in sync, the first one leading, epochs zero.
    #[must_use]
    pub fn new(replicas: Vec<BrokerId>) -> PartitionState {
        PartitionState {
            isr: replicas.iter().copied().collect(),
            elr: BTreeSet::new(),
            leader: replicas.first().copied(),
            leader_epoch: Epoch(0),
            partition_epoch: PartitionEpoch(0),
            last_known_leader: None,
            elected_unclean: false,
            replicas,
        }
    }

    /// `min(min.insync.replicas, replica count)`: the ISR size from which the HW may
    /// advance and the ELR is empty.
    #[must_use]
    pub fn effective_min_isr(&self, config: &TopicConfig) -> usize {
        usize::try_from(config.min_insync_replicas)
            .unwrap_or(1)
            .clamp(1, self.replicas.len().max(1))
    }
}

/// A topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicState {
    /// The topic id.
    pub id: TopicId,
    /// The topic name.
    pub name: String,
    /// Number of partitions.
    pub partition_count: i32,
    /// Replicas per partition.
    pub replication_factor: i16,
    /// The topic's configuration.
    pub config: TopicConfig,
    /// The partitions.
    pub partitions: BTreeMap<PartitionId, PartitionState>,
}

/// Why a record could not be applied. The state is unchanged; every node rejects the same
/// record the same way, so states stay equal.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// Records must be applied in log order.
    #[error("offset {offset} is not after the last applied offset {last}")]
    OffsetNotIncreasing {
        /// The record's offset.
        offset: Offset,
        /// The last applied offset.
        last: Offset,
    },
    /// No registration for this broker id.
    #[error("broker {0} is not registered")]
    UnknownBroker(BrokerId),
    /// A new epoch only after the old one was fenced.
    #[error("broker {id} registers again while its epoch {epoch} is unfenced")]
    RegisteredWhileUnfenced {
        /// The broker id.
        id: BrokerId,
        /// Its current, unfenced epoch.
        epoch: BrokerEpoch,
    },
    /// The record names an epoch the broker no longer has.
    #[error("record for broker {id} epoch {got}, but its epoch is {current}")]
    StaleBrokerEpoch {
        /// The broker id.
        id: BrokerId,
        /// The epoch in the record.
        got: BrokerEpoch,
        /// The broker's current epoch.
        current: BrokerEpoch,
    },
    /// Topic names are unique.
    #[error("topic {0} already exists")]
    TopicExists(String),
    /// Topic ids are unique.
    #[error("topic id {0} is already in use")]
    TopicIdExists(TopicId),
    /// No such topic.
    #[error("unknown topic id {0}")]
    UnknownTopic(TopicId),
    /// No such partition in the topic.
    #[error("topic {topic} has no partition {partition}")]
    UnknownPartition {
        /// The topic id.
        topic: TopicId,
        /// The partition.
        partition: PartitionId,
    },
    /// A partition change must bump the partition epoch and never lower the leader epoch.
    #[error("partition {topic}-{partition}: change does not advance its epochs")]
    EpochNotAdvanced {
        /// The topic id.
        topic: TopicId,
        /// The partition.
        partition: PartitionId,
    },
    /// A block of producer ids must start where the last one ended.
    #[error("producer id block ending at {end} does not advance past {next}")]
    ProducerIdsNotAdvanced {
        /// The block's end.
        end: i64,
        /// The first id no block had taken.
        next: i64,
    },
    /// `min.insync.replicas` must be at least 1.
    #[error("invalid topic configuration {0:?}")]
    InvalidConfig(TopicConfig),
}

/// The state of the cluster metadata. See the module documentation of
/// [`metadata`](super).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataState {
    brokers: BTreeMap<BrokerId, BrokerRegistration>,
    topics: BTreeMap<TopicId, TopicState>,
    topic_ids: BTreeMap<String, TopicId>,
    last_applied: Option<Offset>,
    /// The start of the next block of producer ids.
    next_producer_id: i64,
}

impl MetadataState {
    /// An empty state (before the first record).
    #[must_use]
    pub fn new() -> MetadataState {
        MetadataState::default()
    }

    /// Offset of the last applied record.
    #[must_use]
    pub fn last_applied(&self) -> Option<Offset> {
        self.last_applied
    }

    /// The first producer id no block has taken.
    #[must_use]
    pub fn next_producer_id(&self) -> i64 {
        self.next_producer_id
    }

    /// The registered brokers, by id.
    #[must_use]
    pub fn brokers(&self) -> &BTreeMap<BrokerId, BrokerRegistration> {
        &self.brokers
    }

    /// One broker's registration.
    #[must_use]
    pub fn broker(&self, id: BrokerId) -> Option<&BrokerRegistration> {
        self.brokers.get(&id)
    }

    /// Whether `id` is registered, unfenced and not shutting down.
    #[must_use]
    pub fn is_eligible(&self, id: BrokerId) -> bool {
        self.broker(id).is_some_and(BrokerRegistration::is_eligible)
    }

    /// The topics, by id.
    #[must_use]
    pub fn topics(&self) -> &BTreeMap<TopicId, TopicState> {
        &self.topics
    }

    /// One topic.
    #[must_use]
    pub fn topic(&self, id: TopicId) -> Option<&TopicState> {
        self.topics.get(&id)
    }

    /// A topic's id from its name.
    #[must_use]
    pub fn topic_id(&self, name: &str) -> Option<TopicId> {
        self.topic_ids.get(name).copied()
    }

    /// One partition.
    #[must_use]
    pub fn partition(&self, topic: TopicId, partition: PartitionId) -> Option<&PartitionState> {
        self.topic(topic)?.partitions.get(&partition)
    }

    /// Every partition, in (topic id, partition) order.
    pub fn partitions(&self) -> impl Iterator<Item = (&TopicState, PartitionId, &PartitionState)> {
        self.topics
            .values()
            .flat_map(|t| t.partitions.iter().map(move |(p, s)| (t, *p, s)))
    }

    /// Applies the record at `offset`.
    ///
    /// # Errors
    /// When the record does not fit the state (see [`ApplyError`]); the state is then
    /// unchanged.
    pub fn apply(&mut self, offset: Offset, record: &MetadataRecord) -> Result<(), ApplyError> {
        if let Some(last) = self.last_applied.filter(|last| offset <= *last) {
            return Err(ApplyError::OffsetNotIncreasing { offset, last });
        }
        self.apply_record(offset, record)?;
        self.last_applied = Some(offset);
        Ok(())
    }

    fn apply_record(&mut self, offset: Offset, record: &MetadataRecord) -> Result<(), ApplyError> {
        match record {
            MetadataRecord::RegisterBroker {
                id,
                incarnation,
                host,
                port,
                control_port,
                clean_shutdown_epoch: _,
                log_dir_id,
            } => {
                if let Some(old) = self.brokers.get(id).filter(|b| !b.fenced) {
                    return Err(ApplyError::RegisteredWhileUnfenced {
                        id: *id,
                        epoch: old.epoch,
                    });
                }
                let registration = BrokerRegistration {
                    id: *id,
                    epoch: BrokerEpoch(offset.0),
                    incarnation: *incarnation,
                    log_dir_id: *log_dir_id,
                    host: host.clone(),
                    port: *port,
                    control_port: *control_port,
                    fenced: true,
                    shutting_down: false,
                };
                self.brokers.insert(*id, registration);
            }
            MetadataRecord::Fence { id, epoch } => self.broker_mut(*id, *epoch)?.fenced = true,
            MetadataRecord::Unfence { id, epoch } => self.broker_mut(*id, *epoch)?.fenced = false,
            MetadataRecord::ControlledShutdown { id, epoch } => {
                self.broker_mut(*id, *epoch)?.shutting_down = true;
            }
            MetadataRecord::Topic {
                id,
                name,
                partitions,
                replication_factor,
                config,
            } => {
                if self.topic_ids.contains_key(name) {
                    return Err(ApplyError::TopicExists(name.clone()));
                }
                if self.topics.contains_key(id) {
                    return Err(ApplyError::TopicIdExists(*id));
                }
                check_config(config)?;
                let topic = TopicState {
                    id: *id,
                    name: name.clone(),
                    partition_count: *partitions,
                    replication_factor: *replication_factor,
                    config: *config,
                    partitions: BTreeMap::new(),
                };
                self.topics.insert(*id, topic);
                self.topic_ids.insert(name.clone(), *id);
            }
            MetadataRecord::TopicConfig { id, config } => {
                check_config(config)?;
                self.topic_mut(*id)?.config = *config;
            }
            MetadataRecord::Partition {
                topic,
                partition,
                state,
            } => {
                let t = self.topic_mut(*topic)?;
                if partition.0 < 0 || partition.0 >= t.partition_count {
                    return Err(ApplyError::UnknownPartition {
                        topic: *topic,
                        partition: *partition,
                    });
                }
                if let Some(old) = t.partitions.get(partition) {
                    if state.partition_epoch <= old.partition_epoch
                        || state.leader_epoch < old.leader_epoch
                    {
                        return Err(ApplyError::EpochNotAdvanced {
                            topic: *topic,
                            partition: *partition,
                        });
                    }
                }
                t.partitions.insert(*partition, state.clone());
            }
            MetadataRecord::RemoveTopic { id } => {
                let topic = self
                    .topics
                    .remove(id)
                    .ok_or(ApplyError::UnknownTopic(*id))?;
                self.topic_ids.remove(&topic.name);
            }
            MetadataRecord::ProducerIds { end, .. } => {
                if *end <= self.next_producer_id {
                    return Err(ApplyError::ProducerIdsNotAdvanced {
                        end: *end,
                        next: self.next_producer_id,
                    });
                }
                self.next_producer_id = *end;
            }
        }
        Ok(())
    }

    fn broker_mut(
        &mut self,
        id: BrokerId,
        epoch: BrokerEpoch,
    ) -> Result<&mut BrokerRegistration, ApplyError> {
        let broker = self
            .brokers
            .get_mut(&id)
            .ok_or(ApplyError::UnknownBroker(id))?;
        if broker.epoch != epoch {
            return Err(ApplyError::StaleBrokerEpoch {
                id,
                got: epoch,
                current: broker.epoch,
            });
        }
        Ok(broker)
    }

    fn topic_mut(&mut self, id: TopicId) -> Result<&mut TopicState, ApplyError> {
        self.topics.get_mut(&id).ok_or(ApplyError::UnknownTopic(id))
    }
}

fn check_config(config: &TopicConfig) -> Result<(), ApplyError> {
    if config.min_insync_replicas < 1 {
        return Err(ApplyError::InvalidConfig(*config));
    }
    Ok(())
}
