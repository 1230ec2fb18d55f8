//! The controller's decisions: pure functions of the metadata state (plus the broker
//! sessions, which are the active controller's volatile state) that return the records to
//! append.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use lode_proto::{BrokerId, Epoch, Instant, Offset, PartitionId};

use super::records::MetadataRecord;
use super::state::{MetadataState, PartitionState, TopicConfig, TopicFsync, TopicState};
use super::{BrokerEpoch, PartitionEpoch, TopicId};

/// Producer ids per block a broker takes from the controller (Kafka's block size).
pub const PRODUCER_ID_BLOCK: i64 = 1_000;

/// Deliberately broken controller rules, for proving the checkers catch them.
#[cfg(feature = "planted-bugs")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlantedBug {
    /// Elections fall back to any live replica although unclean election is off.
    ElectOutsideIsrAndElr,
    /// `AlterPartition` skips the partition-epoch check (KIP-497's stale-request guard) and
    /// the members' broker-epoch check (KIP-903).
    AcceptStalePartitionEpoch,
    /// Fencing a broker leaves it in the ISRs (only leadership moves).
    KeepFencedInIsr,
}

/// The controller's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControllerConfig {
    /// `broker.session.timeout.ms`: a broker silent for longer is fenced.
    pub broker_session_timeout_ms: u64,
    /// `min.insync.replicas` of topics created without one.
    pub default_min_insync_replicas: i32,
    /// `unclean.leader.election.enable` of topics created without one.
    pub default_unclean_leader_election: bool,
    /// The durability policy of topics created without one.
    pub default_fsync: TopicFsync,
    /// A deliberately broken rule (tests only).
    #[cfg(feature = "planted-bugs")]
    pub planted: Option<PlantedBug>,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            broker_session_timeout_ms: 9_000,
            default_min_insync_replicas: 1,
            default_unclean_leader_election: false,
            default_fsync: TopicFsync::Always,
            #[cfg(feature = "planted-bugs")]
            planted: None,
        }
    }
}

impl ControllerConfig {
    #[cfg(feature = "planted-bugs")]
    fn planted(&self, bug: PlantedBug) -> bool {
        self.planted == Some(bug)
    }
    #[cfg(feature = "planted-bugs")]
    fn elects_outside_isr_and_elr(&self) -> bool {
        self.planted(PlantedBug::ElectOutsideIsrAndElr)
    }
    #[cfg(feature = "planted-bugs")]
    fn accepts_stale_partition_epoch(&self) -> bool {
        self.planted(PlantedBug::AcceptStalePartitionEpoch)
    }
    #[cfg(feature = "planted-bugs")]
    fn keeps_fenced_in_isr(&self) -> bool {
        self.planted(PlantedBug::KeepFencedInIsr)
    }
    #[cfg(not(feature = "planted-bugs"))]
    fn elects_outside_isr_and_elr(&self) -> bool {
        false
    }
    #[cfg(not(feature = "planted-bugs"))]
    fn accepts_stale_partition_epoch(&self) -> bool {
        false
    }
    #[cfg(not(feature = "planted-bugs"))]
    fn keeps_fenced_in_isr(&self) -> bool {
        false
    }
}

/// A `BrokerRegistration` request.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BrokerRegistrationRequest {
    /// The broker id.
    pub id: BrokerId,
    /// Random id the process picked at start.
    pub incarnation: u64,
    /// Host the broker listens on.
    pub host: String,
    /// Port the broker listens on.
    pub port: u16,
    /// Port of its controller listener on `host` (0: none).
    pub control_port: u16,
    /// The epoch in the broker's clean-shutdown marker, `None` when missing.
    pub clean_shutdown_epoch: Option<BrokerEpoch>,
    /// The id written into the broker's log directory when it was first used (as KIP-858's
    /// directory ids): another id than last time means these are not the logs the broker
    /// had (a replaced disk), whatever the fsync policy promised.
    pub log_dir_id: u64,
}

/// A `BrokerHeartbeat` request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HeartbeatRequest {
    /// The broker id.
    pub id: BrokerId,
    /// The broker's epoch.
    pub epoch: BrokerEpoch,
    /// The broker's metadata log has caught up (the caller decides from its offset).
    pub caught_up: bool,
    /// The broker wants to shut down.
    pub want_shutdown: bool,
}

/// A `CreateTopics` entry.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CreateTopicRequest {
    /// The topic name.
    pub name: String,
    /// The new topic's id (a fresh UUID chosen by the caller).
    pub id: TopicId,
    /// Number of partitions.
    pub partitions: i32,
    /// Replicas per partition.
    pub replication_factor: i16,
    /// `min.insync.replicas`, or the cluster default.
    pub min_insync_replicas: Option<i32>,
    /// `unclean.leader.election.enable`, or the cluster default.
    pub unclean_leader_election: Option<bool>,
    /// The durability policy, or the cluster default.
    pub fsync: Option<TopicFsync>,
}

/// One member of a proposed ISR, with the broker epoch the leader knows it by (KIP-903).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IsrMember {
    /// The broker id.
    pub id: BrokerId,
    /// The broker epoch the leader saw it fetch with.
    pub epoch: BrokerEpoch,
}

/// An `AlterPartition` request (KIP-497) for one partition.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AlterPartitionRequest {
    /// The sending broker (the leader, if the request is current).
    pub broker_id: BrokerId,
    /// The sender's broker epoch.
    pub broker_epoch: BrokerEpoch,
    /// The topic.
    pub topic: TopicId,
    /// The partition.
    pub partition: PartitionId,
    /// The leader epoch the sender leads in.
    pub leader_epoch: Epoch,
    /// The partition epoch the proposal is based on.
    pub partition_epoch: PartitionEpoch,
    /// The proposed ISR.
    pub new_isr: Vec<IsrMember>,
}

/// Why a registration was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RegisterBrokerError {
    /// Another process with this id still has a live session.
    #[error("broker {0} is registered by another process with a live session")]
    DuplicateBrokerRegistration(BrokerId),
}

impl RegisterBrokerError {
    /// The Kafka error code.
    #[must_use]
    pub fn kafka_code(&self) -> i16 {
        101 // DUPLICATE_BROKER_REGISTRATION
    }
}

/// Why a heartbeat was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeartbeatError {
    /// The broker never registered.
    #[error("broker {0} is not registered")]
    BrokerIdNotRegistered(BrokerId),
    /// The broker's epoch is no longer current: it must register again.
    #[error("broker {id} epoch {got} is stale")]
    StaleBrokerEpoch {
        /// The broker id.
        id: BrokerId,
        /// The epoch in the request.
        got: BrokerEpoch,
    },
}

impl HeartbeatError {
    /// The Kafka error code.
    #[must_use]
    pub fn kafka_code(&self) -> i16 {
        match self {
            HeartbeatError::BrokerIdNotRegistered(_) => 102,
            HeartbeatError::StaleBrokerEpoch { .. } => 77,
        }
    }
}

/// Why a topic operation was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// A topic with this name exists.
    #[error("topic {0} already exists")]
    TopicAlreadyExists(String),
    /// No topic with this name.
    #[error("unknown topic {0}")]
    UnknownTopic(String),
    /// Empty name or a topic id already in use.
    #[error("invalid topic: {0}")]
    InvalidTopic(String),
    /// Partition count below 1.
    #[error("invalid partition count {0}")]
    InvalidPartitions(i32),
    /// Replication factor below 1 or above the number of eligible brokers.
    #[error("replication factor {requested} with {available} eligible brokers")]
    InvalidReplicationFactor {
        /// The requested replication factor.
        requested: i16,
        /// Unfenced brokers not shutting down.
        available: usize,
    },
    /// `min.insync.replicas` below 1.
    #[error("invalid min.insync.replicas {0}")]
    InvalidConfig(i32),
}

impl TopicError {
    /// The Kafka error code.
    #[must_use]
    pub fn kafka_code(&self) -> i16 {
        match self {
            TopicError::TopicAlreadyExists(_) => 36,
            TopicError::UnknownTopic(_) => 3,
            TopicError::InvalidTopic(_) => 17,
            TopicError::InvalidPartitions(_) => 37,
            TopicError::InvalidReplicationFactor { .. } => 38,
            TopicError::InvalidConfig(_) => 40,
        }
    }
}

/// Why an `AlterPartition` was refused (checked in this order, as Kafka does).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AlterPartitionError {
    /// The sender's broker epoch is not its current one.
    #[error("sender broker epoch is stale")]
    StaleBrokerEpoch,
    /// No such topic or partition.
    #[error("unknown topic or partition")]
    UnknownTopicOrPartition,
    /// The request's leader epoch is not the partition's.
    #[error("leader epoch {got} is not the current {current}")]
    FencedLeaderEpoch {
        /// The request's leader epoch.
        got: Epoch,
        /// The partition's leader epoch.
        current: Epoch,
    },
    /// The sender does not lead the partition.
    #[error("the sender is not the leader")]
    NotLeaderOrFollower,
    /// The request is based on a stale partition epoch.
    #[error("partition epoch {got} is not the current {current}")]
    InvalidUpdateVersion {
        /// The request's partition epoch.
        got: PartitionEpoch,
        /// The partition's epoch.
        current: PartitionEpoch,
    },
    /// The proposed ISR lacks the leader, repeats a broker or names a non-replica.
    #[error("invalid ISR: {0}")]
    InvalidRequest(&'static str),
    /// The proposed ISR names a fenced, shutting-down or re-registered broker.
    #[error("broker {0} is not eligible for the ISR")]
    IneligibleReplica(BrokerId),
}

impl AlterPartitionError {
    /// The Kafka error code.
    #[must_use]
    pub fn kafka_code(&self) -> i16 {
        match self {
            AlterPartitionError::StaleBrokerEpoch => 77,
            AlterPartitionError::UnknownTopicOrPartition => 3,
            AlterPartitionError::FencedLeaderEpoch { .. } => 74,
            AlterPartitionError::NotLeaderOrFollower => 6,
            AlterPartitionError::InvalidUpdateVersion { .. } => 95,
            AlterPartitionError::InvalidRequest(_) => 42,
            AlterPartitionError::IneligibleReplica(_) => 107,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Session {
    epoch: BrokerEpoch,
    last_heartbeat: Instant,
}

/// The controller: decisions over a [`MetadataState`], plus the broker sessions (volatile,
/// local to the active controller).
///
/// Registration policy: a process re-registering with a new incarnation while the old
/// epoch still has a live session is rejected (`DUPLICATE_BROKER_REGISTRATION`, as Kafka:
/// two processes may not share an id); once that session expired, the old epoch is fenced
/// in the same batch, before the new registration. The same incarnation again is a retry:
/// no records, the current registration stands.
#[derive(Clone, Debug)]
pub struct Controller {
    config: ControllerConfig,
    sessions: BTreeMap<BrokerId, Session>,
}

impl Controller {
    /// A controller with no sessions; call [`Controller::activate`] on becoming active.
    #[must_use]
    pub fn new(config: ControllerConfig) -> Controller {
        Controller {
            config,
            sessions: BTreeMap::new(),
        }
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &ControllerConfig {
        &self.config
    }

    /// On becoming the active controller: every registered broker gets a fresh session
    /// starting at `now`.
    pub fn activate(&mut self, state: &MetadataState, now: Instant) {
        self.sessions = state
            .brokers()
            .values()
            .map(|b| {
                let session = Session {
                    epoch: b.epoch,
                    last_heartbeat: now,
                };
                (b.id, session)
            })
            .collect();
    }

    fn session_timeout(&self) -> Duration {
        Duration::from_millis(self.config.broker_session_timeout_ms)
    }

    fn has_live_session(&self, id: BrokerId, epoch: BrokerEpoch, now: Instant) -> bool {
        self.sessions.get(&id).is_some_and(|s| {
            s.epoch == epoch && now.saturating_since(s.last_heartbeat) <= self.session_timeout()
        })
    }

    /// Registers a broker process. A clean restart (its clean-shutdown marker holds its
    /// previous epoch) keeps its ELR memberships; an unclean one removes it from the ISR and
    /// ELR of its `fsync=interval` topics (KIP-966); one whose log directory changed (a
    /// replaced disk) leaves every ISR and ELR. The new epoch starts fenced.
    ///
    /// # Errors
    /// `DUPLICATE_BROKER_REGISTRATION` while another incarnation has a live session.
    pub fn register_broker(
        &mut self,
        state: &MetadataState,
        req: &BrokerRegistrationRequest,
        now: Instant,
    ) -> Result<Vec<MetadataRecord>, RegisterBrokerError> {
        let mut batch = Batch::new(&self.config, state);
        if let Some(old) = state.broker(req.id) {
            if old.incarnation == req.incarnation {
                return Ok(Vec::new());
            }
            if !old.fenced {
                // A process in controlled shutdown announced it is going: its successor
                // may take over (fencing it) without waiting out its session.
                if !old.shutting_down && self.has_live_session(old.id, old.epoch, now) {
                    return Err(RegisterBrokerError::DuplicateBrokerRegistration(req.id));
                }
                batch.fence(old.id, old.epoch);
            }
            if old.log_dir_id != req.log_dir_id {
                tracing::warn!(broker = %req.id, "log directory replaced: out of every ISR and ELR");
                batch.remove_unclean(req.id, true);
            } else if req.clean_shutdown_epoch != Some(old.epoch) {
                tracing::info!(broker = %req.id, "unclean restart: out of the ISR and ELR of its fsync=interval topics");
                batch.remove_unclean(req.id, false);
            }
        }
        batch.push(MetadataRecord::RegisterBroker {
            id: req.id,
            incarnation: req.incarnation,
            host: req.host.clone(),
            port: req.port,
            control_port: req.control_port,
            clean_shutdown_epoch: req.clean_shutdown_epoch,
            log_dir_id: req.log_dir_id,
        });
        self.sessions.remove(&req.id);
        Ok(batch.records)
    }

    /// A heartbeat: keeps the session; unfences a fenced broker that caught up; a broker
    /// wanting to shut down first leaves every ISR and leadership (`ControlledShutdown`),
    /// then, on a later heartbeat, is fenced (it may stop).
    ///
    /// # Errors
    /// Unknown broker or stale broker epoch.
    pub fn heartbeat(
        &mut self,
        state: &MetadataState,
        req: &HeartbeatRequest,
        now: Instant,
    ) -> Result<Vec<MetadataRecord>, HeartbeatError> {
        let broker = state
            .broker(req.id)
            .ok_or(HeartbeatError::BrokerIdNotRegistered(req.id))?;
        if broker.epoch != req.epoch {
            return Err(HeartbeatError::StaleBrokerEpoch {
                id: req.id,
                got: req.epoch,
            });
        }
        let session = Session {
            epoch: req.epoch,
            last_heartbeat: now,
        };
        self.sessions.insert(req.id, session);
        let mut batch = Batch::new(&self.config, state);
        if req.want_shutdown && !broker.fenced {
            if !broker.shutting_down {
                batch.push(MetadataRecord::ControlledShutdown {
                    id: req.id,
                    epoch: req.epoch,
                });
                batch.remove_from_isrs(req.id);
            } else if !state.partitions().any(|(_, _, p)| p.leader == Some(req.id)) {
                batch.push(MetadataRecord::Fence {
                    id: req.id,
                    epoch: req.epoch,
                });
            }
        } else if !req.want_shutdown && broker.fenced && !broker.shutting_down && req.caught_up {
            batch.push(MetadataRecord::Unfence {
                id: req.id,
                epoch: req.epoch,
            });
            batch.elect_leaderless();
        }
        Ok(batch.records)
    }

    /// Fences every unfenced broker whose session expired (leaving every ISR, into the ELR
    /// where the ISR falls below min ISR) and re-elects the leaders it had.
    pub fn tick(&mut self, state: &MetadataState, now: Instant) -> Vec<MetadataRecord> {
        let mut batch = Batch::new(&self.config, state);
        for broker in state.brokers().values().filter(|b| !b.fenced) {
            match self.sessions.get(&broker.id) {
                Some(s) if s.epoch == broker.epoch => {
                    if now.saturating_since(s.last_heartbeat) > self.session_timeout() {
                        tracing::info!(broker = %broker.id, epoch = %broker.epoch, "session expired");
                        batch.fence(broker.id, broker.epoch);
                    }
                }
                _ => {
                    let session = Session {
                        epoch: broker.epoch,
                        last_heartbeat: now,
                    };
                    self.sessions.insert(broker.id, session);
                }
            }
        }
        batch.records
    }

    /// Creates a topic: replicas assigned round-robin over the eligible brokers in id
    /// order, each partition starting one broker further (offset by the topic id) so
    /// leaders spread; ISR = replicas, leader = first replica.
    ///
    /// # Errors
    /// Kafka's `CreateTopics` errors, see [`TopicError`].
    pub fn create_topic(
        &self,
        state: &MetadataState,
        req: &CreateTopicRequest,
    ) -> Result<Vec<MetadataRecord>, TopicError> {
        if req.name.is_empty() {
            return Err(TopicError::InvalidTopic("empty name".into()));
        }
        if state.topic_id(&req.name).is_some() {
            return Err(TopicError::TopicAlreadyExists(req.name.clone()));
        }
        if state.topic(req.id).is_some() {
            return Err(TopicError::InvalidTopic(format!("id {} in use", req.id)));
        }
        if req.partitions < 1 {
            return Err(TopicError::InvalidPartitions(req.partitions));
        }
        let live: Vec<BrokerId> = state
            .brokers()
            .values()
            .filter(|b| b.is_eligible())
            .map(|b| b.id)
            .collect();
        let rf = usize::try_from(req.replication_factor).unwrap_or(0);
        if rf < 1 || rf > live.len() {
            return Err(TopicError::InvalidReplicationFactor {
                requested: req.replication_factor,
                available: live.len(),
            });
        }
        let min_isr = req
            .min_insync_replicas
            .unwrap_or(self.config.default_min_insync_replicas);
        if min_isr < 1 {
            return Err(TopicError::InvalidConfig(min_isr));
        }
        let config = TopicConfig {
            min_insync_replicas: min_isr,
            unclean_leader_election: req
                .unclean_leader_election
                .unwrap_or(self.config.default_unclean_leader_election),
            fsync: req.fsync.unwrap_or(self.config.default_fsync),
        };
        let mut batch = Batch::new(&self.config, state);
        batch.push(MetadataRecord::Topic {
            id: req.id,
            name: req.name.clone(),
            partitions: req.partitions,
            replication_factor: req.replication_factor,
            config,
        });
        let n = live.len();
        let shift = (req.id.0 % n as u128) as usize;
        for p in 0..req.partitions {
            let start = shift + p as usize;
            let replicas = (0..rf).map(|j| live[(start + j) % n]).collect();
            batch.push(MetadataRecord::Partition {
                topic: req.id,
                partition: PartitionId(p),
                state: PartitionState::new(replicas),
            });
        }
        Ok(batch.records)
    }

    /// Hands the next block of [`PRODUCER_ID_BLOCK`] producer ids to a registered broker.
    ///
    /// # Errors
    /// The broker is not registered, or not with this epoch.
    pub fn allocate_producer_ids(
        &self,
        state: &MetadataState,
        broker: BrokerId,
        epoch: BrokerEpoch,
    ) -> Result<Vec<MetadataRecord>, HeartbeatError> {
        let current = state
            .broker(broker)
            .ok_or(HeartbeatError::BrokerIdNotRegistered(broker))?;
        if current.epoch != epoch {
            return Err(HeartbeatError::StaleBrokerEpoch {
                id: broker,
                got: epoch,
            });
        }
        Ok(vec![MetadataRecord::ProducerIds {
            broker,
            end: state.next_producer_id().saturating_add(PRODUCER_ID_BLOCK),
        }])
    }

    /// Deletes a topic.
    ///
    /// # Errors
    /// Unknown topic.
    pub fn delete_topic(
        &self,
        state: &MetadataState,
        name: &str,
    ) -> Result<Vec<MetadataRecord>, TopicError> {
        let id = state
            .topic_id(name)
            .ok_or_else(|| TopicError::UnknownTopic(name.into()))?;
        Ok(vec![MetadataRecord::RemoveTopic { id }])
    }

    /// Changes a topic's configuration; partitions whose ISR now reaches min ISR drop their
    /// ELR, and leaderless ones are re-elected (unclean election may now be allowed).
    ///
    /// # Errors
    /// Unknown topic or invalid configuration.
    pub fn alter_topic_config(
        &self,
        state: &MetadataState,
        name: &str,
        config: TopicConfig,
    ) -> Result<Vec<MetadataRecord>, TopicError> {
        let id = state
            .topic_id(name)
            .ok_or_else(|| TopicError::UnknownTopic(name.into()))?;
        if config.min_insync_replicas < 1 {
            return Err(TopicError::InvalidConfig(config.min_insync_replicas));
        }
        let mut batch = Batch::new(&self.config, state);
        batch.push(MetadataRecord::TopicConfig { id, config });
        batch.update_all(|t, _| t.id == id, |p| p.isr.clone(), None);
        Ok(batch.records)
    }

    /// Validates an `AlterPartition` as Kafka does (KIP-497, KIP-903) and returns the
    /// partition change, with the ELR maintained (KIP-966). No records when the proposal
    /// equals the current state.
    ///
    /// # Errors
    /// See [`AlterPartitionError`], in the order checked.
    pub fn alter_partition(
        &self,
        state: &MetadataState,
        req: &AlterPartitionRequest,
    ) -> Result<Vec<MetadataRecord>, AlterPartitionError> {
        if state.broker(req.broker_id).map(|b| b.epoch) != Some(req.broker_epoch) {
            return Err(AlterPartitionError::StaleBrokerEpoch);
        }
        let part = state
            .partition(req.topic, req.partition)
            .ok_or(AlterPartitionError::UnknownTopicOrPartition)?;
        if req.leader_epoch != part.leader_epoch {
            return Err(AlterPartitionError::FencedLeaderEpoch {
                got: req.leader_epoch,
                current: part.leader_epoch,
            });
        }
        if part.leader != Some(req.broker_id) {
            return Err(AlterPartitionError::NotLeaderOrFollower);
        }
        if req.partition_epoch != part.partition_epoch
            && !self.config.accepts_stale_partition_epoch()
        {
            return Err(AlterPartitionError::InvalidUpdateVersion {
                got: req.partition_epoch,
                current: part.partition_epoch,
            });
        }
        let new_isr: BTreeSet<BrokerId> = req.new_isr.iter().map(|m| m.id).collect();
        if new_isr.len() != req.new_isr.len() {
            return Err(AlterPartitionError::InvalidRequest("duplicate broker"));
        }
        if !new_isr.iter().all(|b| part.replicas.contains(b)) {
            return Err(AlterPartitionError::InvalidRequest("not a replica"));
        }
        if !new_isr.contains(&req.broker_id) {
            return Err(AlterPartitionError::InvalidRequest("ISR lacks the leader"));
        }
        // KIP-903: each member's broker epoch must be current, so a request computed before
        // a member restarted (and lost data) cannot bring it back (the planted stale-request
        // bug skips this too: KAFKA-14139 as it was).
        let stale_ok = self.config.accepts_stale_partition_epoch();
        for m in &req.new_isr {
            let eligible = state
                .broker(m.id)
                .is_some_and(|b| b.is_eligible() && (b.epoch == m.epoch || stale_ok));
            if !eligible {
                return Err(AlterPartitionError::IneligibleReplica(m.id));
            }
        }
        let mut batch = Batch::new(&self.config, state);
        batch.update(req.topic, req.partition, new_isr, None);
        Ok(batch.records)
    }
}

/// The records of one decision, applied as they are made to a working copy of the state so
/// each later record is decided on the state the earlier ones produce.
struct Batch<'a> {
    config: &'a ControllerConfig,
    state: MetadataState,
    records: Vec<MetadataRecord>,
}

impl<'a> Batch<'a> {
    fn new(config: &'a ControllerConfig, state: &MetadataState) -> Batch<'a> {
        Batch {
            config,
            state: state.clone(),
            records: Vec::new(),
        }
    }

    fn push(&mut self, record: MetadataRecord) {
        let offset = self.state.last_applied().map_or(Offset(0), Offset::next);
        let applied = self.state.apply(offset, &record);
        assert!(
            applied.is_ok(),
            "the controller produced a record its own state rejects: {record:?}: {applied:?}"
        );
        self.records.push(record);
    }

    /// Fences `id` and takes it out of every ISR, re-electing its partitions.
    fn fence(&mut self, id: BrokerId, epoch: BrokerEpoch) {
        self.push(MetadataRecord::Fence { id, epoch });
        if self.config.keeps_fenced_in_isr() {
            self.update_all(|_, p| p.leader == Some(id), |p| p.isr.clone(), None);
            return;
        }
        self.remove_from_isrs(id);
    }

    fn remove_from_isrs(&mut self, id: BrokerId) {
        self.update_all(
            |_, p| p.isr.contains(&id) || p.leader == Some(id),
            |p| without(&p.isr, id),
            None,
        );
    }

    /// An unclean restart: `id` leaves every ISR and ELR and is no last known leader, in
    /// topics with `fsync=interval` (under `fsync=always` it lost nothing it acknowledged),
    /// or in every topic when its logs were lost whatever their policy.
    fn remove_unclean(&mut self, id: BrokerId, every_topic: bool) {
        self.update_all(
            |t, p| {
                (every_topic || t.config.fsync == TopicFsync::Interval)
                    && (p.isr.contains(&id)
                        || p.elr.contains(&id)
                        || p.last_known_leader == Some(id))
            },
            |p| without(&p.isr, id),
            Some(id),
        );
    }

    fn elect_leaderless(&mut self) {
        self.update_all(|_, p| p.leader.is_none(), |p| p.isr.clone(), None);
    }

    fn update_all(
        &mut self,
        select: impl Fn(&TopicState, &PartitionState) -> bool,
        target_isr: impl Fn(&PartitionState) -> BTreeSet<BrokerId>,
        unclean_shutdown: Option<BrokerId>,
    ) {
        let selected: Vec<_> = self
            .state
            .partitions()
            .filter(|(t, _, p)| select(t, p))
            .map(|(t, id, p)| (t.id, id, target_isr(p)))
            .collect();
        for (topic, partition, isr) in selected {
            self.update(topic, partition, isr, unclean_shutdown);
        }
    }

    /// Moves a partition to `target_isr` (Kafka's `PartitionChangeBuilder`): maintains the
    /// ELR, elects a leader if the current one can no longer lead, bumps the epochs and
    /// records the change, if any.
    fn update(
        &mut self,
        topic: TopicId,
        partition: PartitionId,
        target_isr: BTreeSet<BrokerId>,
        unclean_shutdown: Option<BrokerId>,
    ) {
        let Some(t) = self.state.topic(topic) else {
            return;
        };
        let Some(old) = t.partitions.get(&partition) else {
            return;
        };
        let state = &self.state;
        let min_isr = old.effective_min_isr(&t.config);
        let eligible = |b: &BrokerId| state.is_eligible(*b);
        let mut new = old.clone();
        new.isr = target_isr;
        // KIP-966: below min ISR, replicas leaving the ISR join the ELR (still holding every
        // committed record, since the HW cannot advance); unclean restarts leave it.
        new.elr = if new.isr.len() >= min_isr {
            BTreeSet::new()
        } else {
            old.elr
                .union(&old.isr)
                .filter(|b| !new.isr.contains(b) && Some(**b) != unclean_shutdown)
                .copied()
                .collect()
        };
        if new.last_known_leader.is_some() && new.last_known_leader == unclean_shutdown {
            new.last_known_leader = None;
        }
        if !new
            .leader
            .is_some_and(|l| new.isr.contains(&l) && eligible(&l))
        {
            let in_isr = old
                .replicas
                .iter()
                .find(|b| new.isr.contains(b) && eligible(b));
            let in_elr = old
                .replicas
                .iter()
                .find(|b| new.elr.contains(b) && eligible(b));
            let unclean_allowed =
                t.config.unclean_leader_election || self.config.elects_outside_isr_and_elr();
            let any = new
                .last_known_leader
                .filter(|b| old.replicas.contains(b) && eligible(b))
                .or_else(|| old.replicas.iter().copied().find(|b| eligible(b)));
            new.elected_unclean = false;
            new.leader = if let Some(&leader) = in_isr {
                Some(leader)
            } else if let (true, Some(&leader)) = (new.isr.is_empty(), in_elr) {
                new.elr.remove(&leader);
                new.isr = BTreeSet::from([leader]);
                Some(leader)
            } else if let (true, Some(leader)) = (unclean_allowed, any) {
                tracing::warn!(%topic, %partition, %leader, "unclean leader election");
                new.elr.clear();
                new.isr = BTreeSet::from([leader]);
                new.elected_unclean = true;
                Some(leader)
            } else {
                None
            };
            if new.isr.len() >= min_isr {
                new.elr.clear();
            }
        }
        if new.leader != old.leader {
            new.leader_epoch = Epoch(old.leader_epoch.0 + 1);
            new.last_known_leader = match new.leader {
                Some(_) => None,
                None => old.leader.filter(|l| Some(*l) != unclean_shutdown),
            };
        }
        if new == *old {
            return;
        }
        new.partition_epoch = PartitionEpoch(old.partition_epoch.0 + 1);
        self.push(MetadataRecord::Partition {
            topic,
            partition,
            state: new,
        });
    }
}

fn without(set: &BTreeSet<BrokerId>, id: BrokerId) -> BTreeSet<BrokerId> {
    set.iter().copied().filter(|b| *b != id).collect()
}
