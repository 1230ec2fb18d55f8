//! Consumer-group coordination, Kafka's classic protocol, as a sans-IO state machine.
//!
//! One [`Coordinator`] holds the groups whose ids hash to one partition of the offsets
//! topic, on the broker that leads that partition. Members join, the coordinator picks a
//! leader and a protocol and hands the leader every member's subscription; the leader's
//! assignment comes back through SyncGroup and goes to each member. Heartbeats keep members
//! alive; a member silent for its session timeout is removed, and any change of membership
//! starts a rebalance that ends when every member has joined again or the rebalance timeout
//! passed.
//!
//! Join and sync requests may have to wait for other members: the driver gives each one a
//! [`Waiter`] id, and their answers come out of [`Coordinator::take_outputs`], with the
//! [`GroupRecord`]s the driver must make durable (generations) — offset commits are made
//! durable by the driver first and applied here only once committed
//! ([`Coordinator::apply`]). A new coordinator rebuilds its groups by replaying the records
//! of its partition through the same [`Coordinator::apply`].
//!
//! Group states (as Kafka's): `Empty` (no members, offsets may remain), `PreparingRebalance`
//! (waiting for members to join), `CompletingRebalance` (waiting for the leader's
//! assignment), `Stable`. A deleted group is simply gone.

use std::collections::BTreeMap;
use std::time::Duration;

use lode_proto::Instant;
use serde::{Deserialize, Serialize};

/// The driver's id of a join or sync request awaiting its answer.
pub type Waiter = u64;

/// Why a group request was refused (each maps to one Kafka error code).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    /// The member id is not (or no longer) a member of the group.
    #[error("unknown member id")]
    UnknownMemberId,
    /// The request's generation is not the group's.
    #[error("illegal generation")]
    IllegalGeneration,
    /// The group is rebalancing: join again.
    #[error("rebalance in progress")]
    RebalanceInProgress,
    /// The member's protocol type or protocols do not fit the group's.
    #[error("inconsistent group protocol")]
    InconsistentGroupProtocol,
    /// The session timeout is outside the coordinator's allowed range.
    #[error("invalid session timeout")]
    InvalidSessionTimeout,
    /// A first join must be repeated with the member id given (KIP-394).
    #[error("member id required")]
    MemberIdRequired,
    /// No such group.
    #[error("group id not found")]
    GroupIdNotFound,
    /// The group still has members.
    #[error("group not empty")]
    NonEmptyGroup,
    /// An empty group id.
    #[error("invalid group id")]
    InvalidGroupId,
}

/// A group's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupState {
    /// No members.
    Empty,
    /// Waiting for members to (re)join.
    PreparingRebalance,
    /// Waiting for the leader's assignment.
    CompletingRebalance,
    /// Members hold their assignments.
    Stable,
}

impl GroupState {
    /// The name Kafka's tools print.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
        }
    }
}

/// A committed offset of one partition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedOffset {
    /// The next offset to consume.
    pub offset: i64,
    /// The leader epoch the consumer saw at that offset (-1 if unknown).
    pub leader_epoch: i32,
    /// The client's metadata string, returned as given.
    pub metadata: Option<String>,
    /// When it was committed (wall clock of the coordinator, ms).
    pub commit_timestamp_ms: i64,
}

/// What a coordinator writes to its offsets partition, and replays from it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupRecord {
    /// An offset commit, or its removal (`None`).
    Offset {
        /// The group.
        group: String,
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The offset, or `None` when deleted.
        value: Option<CommittedOffset>,
    },
    /// A rebalance completed: generations never repeat, even across coordinators.
    Generation {
        /// The group.
        group: String,
        /// The new generation.
        generation: i32,
        /// The protocol type (`consumer` for Kafka consumers).
        protocol_type: Option<String>,
        /// The chosen assignor.
        protocol: Option<String>,
    },
    /// The group was deleted, offsets and all.
    Deleted {
        /// The group.
        group: String,
    },
    /// Nothing: a coordinator writes one and waits for it to commit before it answers an
    /// offset fetch, which proves it still leads its partition (a deposed leader that has
    /// not heard of its successor cannot commit anything), so the fetch sees every commit
    /// acknowledged before it.
    Barrier {
        /// The group.
        group: String,
    },
}

impl GroupRecord {
    /// The group the record is about.
    #[must_use]
    pub fn group(&self) -> &str {
        match self {
            GroupRecord::Offset { group, .. }
            | GroupRecord::Generation { group, .. }
            | GroupRecord::Deleted { group }
            | GroupRecord::Barrier { group } => group,
        }
    }
}

/// Coordinator settings.
#[derive(Clone, Debug)]
pub struct GroupConfig {
    /// The smallest session timeout a member may ask for (Kafka: 6 s).
    pub session_timeout_ms_min: u64,
    /// The largest (Kafka: 30 min).
    pub session_timeout_ms_max: u64,
    /// How long a rebalance of an empty group waits for more members (Kafka: 3 s).
    pub initial_rebalance_delay_ms: u64,
    /// Members per group at most.
    pub members_max: usize,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            session_timeout_ms_min: 6_000,
            session_timeout_ms_max: 1_800_000,
            initial_rebalance_delay_ms: 3_000,
            members_max: 1_000,
        }
    }
}

/// A JoinGroup request.
#[derive(Clone, Debug, Default)]
pub struct JoinRequest {
    /// Empty on a first join.
    pub member_id: String,
    /// Static membership id (kept and reported; not yet used for fencing).
    pub instance_id: Option<String>,
    /// The client's id.
    pub client_id: String,
    /// The client's address.
    pub client_host: String,
    /// The member's session timeout.
    pub session_timeout_ms: u64,
    /// How long the member may take to rejoin in a rebalance.
    pub rebalance_timeout_ms: u64,
    /// `consumer` for consumers.
    pub protocol_type: String,
    /// Assignor names with the member's subscription metadata, in preference order.
    pub protocols: Vec<(String, Vec<u8>)>,
    /// KIP-394 (JoinGroup v4+): a first join gets a member id and must come again with it.
    pub require_known_member_id: bool,
}

/// One member as the leader sees it in its JoinGroup answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinedMember {
    /// Member id.
    pub member_id: String,
    /// Static membership id.
    pub instance_id: Option<String>,
    /// Its subscription for the chosen protocol.
    pub metadata: Vec<u8>,
}

/// A JoinGroup answer.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct JoinResponse {
    /// Why not, if refused.
    pub error: Option<GroupError>,
    /// The new generation (-1 on error).
    pub generation: i32,
    /// The group's protocol type.
    pub protocol_type: Option<String>,
    /// The chosen protocol.
    pub protocol: Option<String>,
    /// The leader's member id.
    pub leader: String,
    /// This member's id (assigned on a first join).
    pub member_id: String,
    /// Every member with its metadata, for the leader only.
    pub members: Vec<JoinedMember>,
}

/// A SyncGroup answer.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct SyncResponse {
    /// Why not, if refused.
    pub error: Option<GroupError>,
    /// The group's protocol type.
    pub protocol_type: Option<String>,
    /// The chosen protocol.
    pub protocol: Option<String>,
    /// This member's assignment.
    pub assignment: Vec<u8>,
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Answer a join.
    Join(Waiter, JoinResponse),
    /// Answer a sync.
    Sync(Waiter, SyncResponse),
    /// Make this record durable in the offsets partition (best effort: a generation lost
    /// with a crash only lets a later coordinator reuse numbers no live member holds).
    Persist(GroupRecord),
}

/// A group member.
#[derive(Clone, Debug)]
pub struct Member {
    /// Static membership id.
    pub instance_id: Option<String>,
    /// The client's id.
    pub client_id: String,
    /// The client's address.
    pub client_host: String,
    /// Session timeout.
    pub session_timeout_ms: u64,
    /// Rebalance timeout.
    pub rebalance_timeout_ms: u64,
    /// Supported protocols with metadata, in preference order.
    pub protocols: Vec<(String, Vec<u8>)>,
    /// The assignment of the current generation.
    pub assignment: Vec<u8>,
    /// When the member's session ends unless it is heard from.
    deadline: Instant,
    /// Order of first joining (the oldest member leads).
    joined: u64,
    join_waiter: Option<Waiter>,
    sync_waiter: Option<Waiter>,
}

/// One group.
#[derive(Clone, Debug)]
pub struct Group {
    /// Its state.
    pub state: GroupState,
    /// Current generation (0 before the first rebalance).
    pub generation: i32,
    /// Protocol type of its members.
    pub protocol_type: Option<String>,
    /// The chosen protocol of the current generation.
    pub protocol: Option<String>,
    /// The leader's member id.
    pub leader: Option<String>,
    /// Members by id.
    pub members: BTreeMap<String, Member>,
    /// Member ids handed out by a first join (KIP-394), until they join with it.
    pending: BTreeMap<String, Instant>,
    /// When the current rebalance phase gives up waiting.
    phase_deadline: Instant,
    /// The rebalance of an empty group waits out its whole delay.
    initial_delay: bool,
    /// Committed offsets by topic and partition.
    pub offsets: BTreeMap<(String, i32), CommittedOffset>,
    /// Where in the offsets partition each committed offset was written: commits are
    /// answered (and applied) as replication completes, not necessarily in log order, and
    /// a commit applies only over one written before it, as a replay would.
    offsets_written_at: BTreeMap<(String, i32), i64>,
}

impl Group {
    fn new(generation: i32) -> Group {
        Group {
            state: GroupState::Empty,
            generation,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            pending: BTreeMap::new(),
            phase_deadline: Instant(0),
            initial_delay: false,
            offsets: BTreeMap::new(),
            offsets_written_at: BTreeMap::new(),
        }
    }

    /// The protocols every member supports, in the order of the leader's (or first
    /// member's) preference.
    fn common_protocols(&self) -> Vec<String> {
        let mut members = self.members.values();
        let Some(first) = members.next() else {
            return Vec::new();
        };
        let others: Vec<&Member> = members.collect();
        first
            .protocols
            .iter()
            .map(|(name, _)| name.clone())
            .filter(|name| {
                others
                    .iter()
                    .all(|m| m.protocols.iter().any(|(n, _)| n == name))
            })
            .collect()
    }

    /// Kafka's vote: each member votes for its most preferred common protocol; most votes
    /// wins, ties to the one listed first.
    fn select_protocol(&self) -> Option<String> {
        let candidates = self.common_protocols();
        let mut votes: Vec<(usize, &String)> = candidates.iter().map(|c| (0, c)).collect();
        for m in self.members.values() {
            if let Some((name, _)) = m.protocols.iter().find(|(n, _)| candidates.contains(n)) {
                if let Some(v) = votes.iter_mut().find(|(_, c)| *c == name) {
                    v.0 += 1;
                }
            }
        }
        let mut best: Option<(usize, &String)> = None;
        for (count, name) in votes {
            if best.is_none_or(|(b, _)| count > b) {
                best = Some((count, name));
            }
        }
        best.map(|(_, n)| n.clone())
    }

    fn metadata_of(&self, member: &Member) -> Vec<u8> {
        let Some(p) = &self.protocol else {
            return Vec::new();
        };
        member
            .protocols
            .iter()
            .find(|(n, _)| n == p)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }

    fn join_answer(&self, member_id: &str) -> JoinResponse {
        let leader = self.leader.clone().unwrap_or_default();
        let members = if leader == member_id {
            self.members
                .iter()
                .map(|(id, m)| JoinedMember {
                    member_id: id.clone(),
                    instance_id: m.instance_id.clone(),
                    metadata: self.metadata_of(m),
                })
                .collect()
        } else {
            Vec::new()
        };
        JoinResponse {
            error: None,
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol: self.protocol.clone(),
            leader,
            member_id: member_id.to_owned(),
            members,
        }
    }
}

fn join_error(member_id: &str, error: GroupError) -> JoinResponse {
    JoinResponse {
        error: Some(error),
        generation: -1,
        member_id: member_id.to_owned(),
        ..JoinResponse::default()
    }
}

fn sync_error(error: GroupError) -> SyncResponse {
    SyncResponse {
        error: Some(error),
        ..SyncResponse::default()
    }
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

/// The groups of one offsets partition. See the module documentation.
#[derive(Debug)]
pub struct Coordinator {
    config: GroupConfig,
    groups: BTreeMap<String, Group>,
    /// Makes member ids unique across coordinators: given by the driver (random there).
    nonce: u64,
    next_member: u64,
    outputs: Vec<Output>,
}

impl Coordinator {
    /// An empty coordinator; `nonce` goes into every member id it hands out.
    #[must_use]
    pub fn new(config: GroupConfig, nonce: u64) -> Coordinator {
        Coordinator {
            config,
            groups: BTreeMap::new(),
            nonce,
            next_member: 0,
            outputs: Vec::new(),
        }
    }

    /// The group, if it exists.
    #[must_use]
    pub fn group(&self, id: &str) -> Option<&Group> {
        self.groups.get(id)
    }

    /// Every group, by id.
    pub fn groups(&self) -> impl Iterator<Item = (&String, &Group)> {
        self.groups.iter()
    }

    /// What the driver must do next, in order.
    pub fn take_outputs(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.outputs)
    }

    /// Applies a record that is in the offsets partition: replayed by a new coordinator,
    /// or an offset commit or deletion once committed.
    pub fn apply(&mut self, record: GroupRecord) {
        self.apply_at(record, None);
    }

    /// Applies `record` written at `log_offset` of the offsets partition: an offset commit
    /// written before the one already applied for its partition is skipped (it lost the
    /// race to be applied, and a replay would end with the later one too).
    pub fn apply_at(&mut self, record: GroupRecord, log_offset: Option<i64>) {
        match record {
            GroupRecord::Offset {
                group,
                topic,
                partition,
                value,
            } => {
                let g = self.groups.entry(group).or_insert_with(|| Group::new(0));
                let key = (topic, partition);
                if let Some(at) = log_offset {
                    if g.offsets_written_at
                        .get(&key)
                        .is_some_and(|prev| *prev > at)
                    {
                        return;
                    }
                    g.offsets_written_at.insert(key.clone(), at);
                }
                let (topic, partition) = key;
                match value {
                    Some(v) => {
                        g.offsets.insert((topic, partition), v);
                    }
                    None => {
                        g.offsets.remove(&(topic, partition));
                    }
                }
            }
            GroupRecord::Generation {
                group,
                generation,
                protocol_type,
                protocol,
            } => {
                let g = self.groups.entry(group).or_insert_with(|| Group::new(0));
                if generation > g.generation {
                    g.generation = generation;
                    if g.members.is_empty() {
                        g.protocol_type = protocol_type;
                        g.protocol = protocol;
                    }
                }
            }
            GroupRecord::Deleted { group } => {
                // Members (if any joined since) keep the group; its offsets go.
                if let Some(g) = self.groups.get_mut(&group) {
                    g.offsets.clear();
                    g.offsets_written_at.clear();
                    if g.members.is_empty() {
                        self.groups.remove(&group);
                    }
                }
            }
            GroupRecord::Barrier { .. } => {}
        }
    }

    /// JoinGroup. The answer (perhaps after other members join) comes out as
    /// [`Output::Join`] for `waiter`.
    pub fn join(&mut self, now: Instant, group_id: &str, req: JoinRequest, waiter: Waiter) {
        let member_id = req.member_id.clone();
        if let Err(e) = self.try_join(now, group_id, req, waiter) {
            self.outputs
                .push(Output::Join(waiter, join_error(&member_id, e)));
        }
        self.check_join_complete(now, group_id);
    }

    fn try_join(
        &mut self,
        now: Instant,
        group_id: &str,
        req: JoinRequest,
        waiter: Waiter,
    ) -> Result<(), GroupError> {
        if group_id.is_empty() {
            return Err(GroupError::InvalidGroupId);
        }
        if req.session_timeout_ms < self.config.session_timeout_ms_min
            || req.session_timeout_ms > self.config.session_timeout_ms_max
        {
            return Err(GroupError::InvalidSessionTimeout);
        }
        if req.protocol_type.is_empty() || req.protocols.is_empty() {
            return Err(GroupError::InconsistentGroupProtocol);
        }
        let members_max = self.config.members_max;
        let g = match self.groups.get_mut(group_id) {
            Some(g) => g,
            None if req.member_id.is_empty() => self
                .groups
                .entry(group_id.to_owned())
                .or_insert_with(|| Group::new(0)),
            None => return Err(GroupError::UnknownMemberId),
        };
        if !g.members.is_empty() {
            if g.protocol_type.as_deref() != Some(req.protocol_type.as_str()) {
                return Err(GroupError::InconsistentGroupProtocol);
            }
            let fits = g.members.iter().all(|(id, m)| {
                *id == req.member_id
                    || m.protocols
                        .iter()
                        .any(|(n, _)| req.protocols.iter().any(|(r, _)| r == n))
            });
            if !fits {
                return Err(GroupError::InconsistentGroupProtocol);
            }
        }
        let mut member_id = req.member_id.clone();
        if member_id.is_empty() {
            if g.members.len() + g.pending.len() >= members_max {
                return Err(GroupError::RebalanceInProgress);
            }
            self.next_member += 1;
            let client = if req.client_id.is_empty() {
                "member"
            } else {
                req.client_id.as_str()
            };
            member_id = format!("{client}-{:016x}-{}", self.nonce, self.next_member);
            if req.require_known_member_id {
                g.pending.insert(
                    member_id.clone(),
                    now.saturating_add(ms(req.session_timeout_ms)),
                );
                self.outputs.push(Output::Join(
                    waiter,
                    join_error(&member_id, GroupError::MemberIdRequired),
                ));
                return Ok(());
            }
        } else if !g.members.contains_key(&member_id) && g.pending.remove(&member_id).is_none() {
            return Err(GroupError::UnknownMemberId);
        }
        let deadline = now.saturating_add(ms(req.session_timeout_ms));
        let joined = self.next_member;
        let existing = g.members.get(&member_id).map(|m| m.protocols.clone());
        let same_protocols = existing.as_ref() == Some(&req.protocols);
        let is_leader = g.leader.as_deref() == Some(member_id.as_str());
        let m = g
            .members
            .entry(member_id.clone())
            .or_insert_with(|| Member {
                instance_id: None,
                client_id: String::new(),
                client_host: String::new(),
                session_timeout_ms: 0,
                rebalance_timeout_ms: 0,
                protocols: Vec::new(),
                assignment: Vec::new(),
                deadline,
                joined,
                join_waiter: None,
                sync_waiter: None,
            });
        m.instance_id = req.instance_id;
        m.client_id = req.client_id;
        m.client_host = req.client_host;
        m.session_timeout_ms = req.session_timeout_ms;
        m.rebalance_timeout_ms = req.rebalance_timeout_ms.max(req.session_timeout_ms);
        m.protocols = req.protocols;
        m.deadline = deadline;
        if let Some(old) = m.join_waiter.replace(waiter) {
            self.outputs.push(Output::Join(
                old,
                join_error(&member_id, GroupError::RebalanceInProgress),
            ));
        }
        g.protocol_type = Some(req.protocol_type);
        match g.state {
            GroupState::PreparingRebalance => {}
            GroupState::CompletingRebalance | GroupState::Stable
                if existing.is_some() && same_protocols && !is_leader =>
            {
                // A follower joining again with nothing changed gets the current
                // generation (Kafka does the same; a leader's join starts a rebalance so it
                // can reassign).
                let m = g.members.get_mut(&member_id).map(|m| m.join_waiter.take());
                if let Some(Some(w)) = m {
                    self.outputs
                        .push(Output::Join(w, g.join_answer(&member_id)));
                }
            }
            GroupState::Empty | GroupState::CompletingRebalance | GroupState::Stable => {
                Self::prepare_rebalance(&self.config, &mut self.outputs, g, now);
            }
        }
        Ok(())
    }

    fn prepare_rebalance(
        config: &GroupConfig,
        outputs: &mut Vec<Output>,
        g: &mut Group,
        now: Instant,
    ) {
        let rebalance_ms = g
            .members
            .values()
            .map(|m| m.rebalance_timeout_ms)
            .max()
            .unwrap_or(0);
        // Members waiting for an assignment learn that a new round began.
        for m in g.members.values_mut() {
            if let Some(w) = m.sync_waiter.take() {
                outputs.push(Output::Sync(w, sync_error(GroupError::RebalanceInProgress)));
            }
        }
        g.initial_delay = g.state == GroupState::Empty;
        let wait_ms = if g.initial_delay {
            config.initial_rebalance_delay_ms.min(rebalance_ms)
        } else {
            rebalance_ms
        };
        g.phase_deadline = now.saturating_add(ms(wait_ms));
        g.state = GroupState::PreparingRebalance;
    }

    /// Ends the join phase of `group_id` if every member has joined (or time is up).
    fn check_join_complete(&mut self, now: Instant, group_id: &str) {
        let Some(g) = self.groups.get_mut(group_id) else {
            return;
        };
        if g.state != GroupState::PreparingRebalance {
            return;
        }
        let all_joined = g.members.values().all(|m| m.join_waiter.is_some());
        let time_up = now >= g.phase_deadline;
        if !(time_up || (all_joined && !g.initial_delay)) {
            return;
        }
        // Members that did not join in time leave.
        g.members.retain(|_, m| m.join_waiter.is_some());
        g.generation = g.generation.saturating_add(1);
        if g.members.is_empty() {
            g.state = GroupState::Empty;
            g.protocol = None;
            g.leader = None;
        } else {
            g.protocol = g.select_protocol();
            let leader_stays = g.leader.as_ref().is_some_and(|l| g.members.contains_key(l));
            if !leader_stays {
                g.leader = g
                    .members
                    .iter()
                    .min_by_key(|(_, m)| m.joined)
                    .map(|(id, _)| id.clone());
            }
            g.state = GroupState::CompletingRebalance;
            let sync_ms = g
                .members
                .values()
                .map(|m| m.rebalance_timeout_ms)
                .max()
                .unwrap_or(0);
            g.phase_deadline = now.saturating_add(ms(sync_ms));
            let ids: Vec<String> = g.members.keys().cloned().collect();
            for id in ids {
                let answer = g.join_answer(&id);
                if let Some(m) = g.members.get_mut(&id) {
                    m.assignment.clear();
                    m.deadline = now.saturating_add(ms(m.session_timeout_ms));
                    if let Some(w) = m.join_waiter.take() {
                        self.outputs.push(Output::Join(w, answer));
                    }
                }
            }
        }
        self.outputs.push(Output::Persist(GroupRecord::Generation {
            group: group_id.to_owned(),
            generation: g.generation,
            protocol_type: g.protocol_type.clone(),
            protocol: g.protocol.clone(),
        }));
    }

    /// The member `member_id` of the current `generation`, its session renewed: any
    /// request from it shows it alive.
    fn live_member<'a>(
        g: &'a mut Group,
        member_id: &str,
        generation: i32,
        now: Instant,
    ) -> Result<&'a mut Member, GroupError> {
        let current = g.generation;
        let m = g
            .members
            .get_mut(member_id)
            .ok_or(GroupError::UnknownMemberId)?;
        if generation != current {
            return Err(GroupError::IllegalGeneration);
        }
        m.deadline = now.saturating_add(ms(m.session_timeout_ms));
        Ok(m)
    }

    /// Answers every waiting sync of a stable group with the member's assignment.
    fn answer_syncs(outputs: &mut Vec<Output>, g: &mut Group) {
        for m in g.members.values_mut() {
            if let Some(w) = m.sync_waiter.take() {
                outputs.push(Output::Sync(
                    w,
                    SyncResponse {
                        error: None,
                        protocol_type: g.protocol_type.clone(),
                        protocol: g.protocol.clone(),
                        assignment: m.assignment.clone(),
                    },
                ));
            }
        }
    }

    /// SyncGroup: the leader brings `assignments`; every member gets its own. The answer
    /// comes out as [`Output::Sync`] for `waiter`.
    pub fn sync(
        &mut self,
        now: Instant,
        group_id: &str,
        member_id: &str,
        generation: i32,
        assignments: Vec<(String, Vec<u8>)>,
        waiter: Waiter,
    ) {
        let answer = self.try_sync(now, group_id, member_id, generation, assignments, waiter);
        if let Err(e) = answer {
            self.outputs.push(Output::Sync(waiter, sync_error(e)));
        }
    }

    fn try_sync(
        &mut self,
        now: Instant,
        group_id: &str,
        member_id: &str,
        generation: i32,
        assignments: Vec<(String, Vec<u8>)>,
        waiter: Waiter,
    ) -> Result<(), GroupError> {
        let g = self
            .groups
            .get_mut(group_id)
            .ok_or(GroupError::UnknownMemberId)?;
        let state = g.state;
        let is_leader = g.leader.as_deref() == Some(member_id);
        let m = Self::live_member(g, member_id, generation, now)?;
        match state {
            GroupState::Empty => Err(GroupError::UnknownMemberId),
            GroupState::PreparingRebalance => Err(GroupError::RebalanceInProgress),
            GroupState::CompletingRebalance | GroupState::Stable => {
                if let Some(old) = m.sync_waiter.replace(waiter) {
                    self.outputs.push(Output::Sync(
                        old,
                        sync_error(GroupError::RebalanceInProgress),
                    ));
                }
                if state == GroupState::CompletingRebalance && is_leader {
                    let mut given: BTreeMap<String, Vec<u8>> = assignments.into_iter().collect();
                    for (id, m) in &mut g.members {
                        m.assignment = given.remove(id).unwrap_or_default();
                    }
                    g.state = GroupState::Stable;
                }
                // Followers wait for the leader's assignment; once it is in, everyone
                // waiting gets theirs (in a stable group: at once).
                if g.state == GroupState::Stable {
                    Self::answer_syncs(&mut self.outputs, g);
                }
                Ok(())
            }
        }
    }

    /// Heartbeat: keeps the member's session; tells it when a rebalance began.
    ///
    /// # Errors
    /// Unknown member, wrong generation, or a rebalance in progress.
    pub fn heartbeat(
        &mut self,
        now: Instant,
        group_id: &str,
        member_id: &str,
        generation: i32,
    ) -> Result<(), GroupError> {
        let g = self
            .groups
            .get_mut(group_id)
            .ok_or(GroupError::UnknownMemberId)?;
        let state = g.state;
        Self::live_member(g, member_id, generation, now)?;
        match state {
            GroupState::PreparingRebalance => Err(GroupError::RebalanceInProgress),
            _ => Ok(()),
        }
    }

    /// LeaveGroup for each of `member_ids`.
    pub fn leave(
        &mut self,
        now: Instant,
        group_id: &str,
        member_ids: &[String],
    ) -> Vec<Result<(), GroupError>> {
        let Some(g) = self.groups.get_mut(group_id) else {
            return member_ids
                .iter()
                .map(|_| Err(GroupError::UnknownMemberId))
                .collect();
        };
        let mut out = Vec::new();
        let mut removed = false;
        for id in member_ids {
            match g.members.remove(id) {
                Some(m) => {
                    Self::answer_removed(&mut self.outputs, id, &m);
                    removed = true;
                    out.push(Ok(()));
                }
                None => out.push(Err(GroupError::UnknownMemberId)),
            }
        }
        if removed {
            self.membership_changed(now, group_id);
        }
        out
    }

    fn answer_removed(outputs: &mut Vec<Output>, id: &str, m: &Member) {
        if let Some(w) = m.join_waiter {
            outputs.push(Output::Join(w, join_error(id, GroupError::UnknownMemberId)));
        }
        if let Some(w) = m.sync_waiter {
            outputs.push(Output::Sync(w, sync_error(GroupError::UnknownMemberId)));
        }
    }

    fn membership_changed(&mut self, now: Instant, group_id: &str) {
        let Some(g) = self.groups.get_mut(group_id) else {
            return;
        };
        if g.leader
            .as_ref()
            .is_some_and(|l| !g.members.contains_key(l))
        {
            g.leader = None;
        }
        match g.state {
            GroupState::Stable | GroupState::CompletingRebalance => {
                if g.members.is_empty() {
                    // Nobody left to rebalance: the group empties at once.
                    g.phase_deadline = now;
                    g.state = GroupState::PreparingRebalance;
                    g.initial_delay = false;
                } else {
                    Self::prepare_rebalance(&self.config, &mut self.outputs, g, now);
                }
            }
            GroupState::PreparingRebalance | GroupState::Empty => {}
        }
        self.check_join_complete(now, group_id);
    }

    /// Advances time: ends expired sessions and overdue rebalance phases.
    pub fn tick(&mut self, now: Instant) {
        let ids: Vec<String> = self.groups.keys().cloned().collect();
        for id in ids {
            let Some(g) = self.groups.get_mut(&id) else {
                continue;
            };
            g.pending.retain(|_, deadline| *deadline > now);
            // Members waiting in a join or sync are alive by definition (Kafka's
            // "shouldKeepAlive").
            let expired: Vec<String> = g
                .members
                .iter()
                .filter(|(_, m)| {
                    m.deadline <= now && m.join_waiter.is_none() && m.sync_waiter.is_none()
                })
                .map(|(id, _)| id.clone())
                .collect();
            let mut changed = false;
            for m in &expired {
                if let Some(member) = g.members.remove(m) {
                    Self::answer_removed(&mut self.outputs, m, &member);
                    changed = true;
                }
            }
            // The leader never sent its assignment in time: those that did not sync leave.
            if g.state == GroupState::CompletingRebalance && now >= g.phase_deadline {
                let late: Vec<String> = g
                    .members
                    .iter()
                    .filter(|(_, m)| m.sync_waiter.is_none())
                    .map(|(id, _)| id.clone())
                    .collect();
                for m in &late {
                    if let Some(member) = g.members.remove(m) {
                        Self::answer_removed(&mut self.outputs, m, &member);
                        changed = true;
                    }
                }
            }
            if changed {
                self.membership_changed(now, &id);
            } else {
                self.check_join_complete(now, &id);
            }
        }
    }

    /// Whether a commit from `member_id` at `generation` may be written. A commit with
    /// generation -1 and no member id (a consumer outside any group protocol, or a tool)
    /// is accepted only while the group has no members.
    ///
    /// # Errors
    /// Unknown member, wrong generation, or the group is waiting for assignments.
    pub fn check_commit(
        &mut self,
        now: Instant,
        group_id: &str,
        member_id: &str,
        generation: i32,
    ) -> Result<(), GroupError> {
        if group_id.is_empty() {
            return Err(GroupError::InvalidGroupId);
        }
        let Some(g) = self.groups.get_mut(group_id) else {
            return if generation < 0 {
                Ok(())
            } else {
                Err(GroupError::IllegalGeneration)
            };
        };
        if generation < 0 && member_id.is_empty() {
            return if g.members.is_empty() {
                Ok(())
            } else {
                Err(GroupError::UnknownMemberId)
            };
        }
        let state = g.state;
        Self::live_member(g, member_id, generation, now)?;
        match state {
            // The assignment is not known yet: a commit now could be for partitions the
            // member is about to lose.
            GroupState::CompletingRebalance => Err(GroupError::RebalanceInProgress),
            _ => Ok(()),
        }
    }

    /// DeleteGroups for one group: only an empty group can go. The driver makes
    /// [`GroupRecord::Deleted`] durable and then applies it.
    ///
    /// # Errors
    /// No such group, or it has members.
    pub fn check_delete(&self, group_id: &str) -> Result<(), GroupError> {
        match self.groups.get(group_id) {
            None => Err(GroupError::GroupIdNotFound),
            Some(g) if !g.members.is_empty() => Err(GroupError::NonEmptyGroup),
            Some(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests;
