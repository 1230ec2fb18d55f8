//! Consumer groups: the coordinator side of Kafka's classic group protocol and committed
//! offsets, on top of [`lode_core::group::Coordinator`].
//!
//! Offsets and group generations live in the replicated internal topic
//! [`OFFSETS_TOPIC`]. A group belongs to the partition its id hashes to (Java's
//! `String.hashCode`, as Kafka, so tools agree on where a group lives), and the leader of
//! that partition is the group's coordinator. On first use after it took up leadership the
//! broker replays the partition to its log end into a fresh coordinator (a *shard*); a
//! shard is dropped as soon as the broker no longer leads the partition in the epoch it was
//! loaded in, and its waiting members are told to find the new coordinator.
//!
//! An offset commit is appended to the partition and answered only once the high
//! watermark passed it (acks=all), and only then applied: an acknowledged commit is in
//! every in-sync replica, so a new coordinator replays it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponsePartition, OffsetFetchResponseTopic,
};
use kafka_protocol::messages::{
    BrokerId, DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest,
    DescribeGroupsResponse, FindCoordinatorRequest, FindCoordinatorResponse, GroupId,
    HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest,
    LeaveGroupResponse, ListGroupsRequest, ListGroupsResponse, OffsetCommitRequest,
    OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse, SyncGroupRequest,
    SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use lode_core::group::{
    CommittedOffset, Coordinator, GroupError, GroupRecord, JoinRequest, JoinResponse, Output,
    SyncResponse, Waiter,
};
use lode_proto::batch::{self, RecordBatchBuilder};
use lode_proto::{Epoch, Offset};
use tokio::sync::{oneshot, Mutex};

use crate::codes;
use crate::handlers::str_bytes;
use crate::partition::{AckOutcome, Partition};
use crate::Broker;

/// The internal topic of committed offsets and group generations.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// The format of the values this broker writes into [`OFFSETS_TOPIC`]: one byte, then the
/// postcard encoding of a [`GroupRecord`]. Records of other formats are skipped on replay.
const RECORD_FORMAT: u8 = 0;

/// Offset-commit metadata strings are refused beyond this (Kafka's
/// `offset.metadata.max.bytes`).
const METADATA_BYTES_MAX: usize = 4096;

/// Bytes read per step when a shard replays its partition.
const REPLAY_READ_BYTES: usize = 1 << 20;

/// How long a commit waits to be replicated before it is answered with a timeout.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(5);

/// Java's `String.hashCode`: Kafka places a group with it, and so does lode.
fn java_hash(s: &str) -> i32 {
    s.encode_utf16()
        .fold(0_i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)))
}

/// The offsets partition of `group` among `partitions`.
#[must_use]
pub fn partition_for(group: &str, partitions: i32) -> i32 {
    let h = java_hash(group);
    // Kafka's Utils.abs: the absolute value, with MIN_VALUE mapped to 0.
    let abs = if h == i32::MIN { 0 } else { h.abs() };
    abs % partitions.max(1)
}

/// Encodes `record` as the key and value of one record of the offsets topic.
#[must_use]
pub fn encode_record(record: &GroupRecord) -> (Vec<u8>, Vec<u8>) {
    let mut value = vec![RECORD_FORMAT];
    // Serialising plain strings and integers into a Vec cannot fail.
    value.extend(postcard::to_allocvec(record).unwrap_or_default());
    (record.group().as_bytes().to_vec(), value)
}

/// Decodes a value written by [`encode_record`]; `None` for another format or garbage.
#[must_use]
pub fn decode_record(value: &[u8]) -> Option<GroupRecord> {
    match value.split_first() {
        Some((&RECORD_FORMAT, rest)) => postcard::from_bytes(rest).ok(),
        _ => None,
    }
}

/// The coordinators of the offsets partitions this broker leads.
#[derive(Default)]
pub struct Groups {
    shards: Mutex<BTreeMap<i32, Arc<Shard>>>,
    next_waiter: AtomicU64,
    /// The tick loop starts with the first shard: a broker nobody asks about groups runs
    /// no group timer (and a simulation without groups schedules exactly as before).
    ticking: std::sync::atomic::AtomicBool,
}

/// The coordinator of one offsets partition, loaded in one leader epoch.
struct Shard {
    partition: Arc<Partition>,
    epoch: Epoch,
    state: Mutex<ShardState>,
}

struct ShardState {
    core: Coordinator,
    joins: HashMap<Waiter, oneshot::Sender<JoinResponse>>,
    syncs: HashMap<Waiter, oneshot::Sender<SyncResponse>>,
}

impl ShardState {
    /// Hands the core's answers to their waiters; returns the records to persist.
    fn dispatch(&mut self) -> Vec<GroupRecord> {
        let mut persist = Vec::new();
        for out in self.core.take_outputs() {
            match out {
                Output::Join(w, r) => {
                    if let Some(tx) = self.joins.remove(&w) {
                        let _ = tx.send(r);
                    }
                }
                Output::Sync(w, r) => {
                    if let Some(tx) = self.syncs.remove(&w) {
                        let _ = tx.send(r);
                    }
                }
                Output::Persist(r) => persist.push(r),
            }
        }
        persist
    }
}

fn error_code(e: GroupError) -> i16 {
    match e {
        GroupError::UnknownMemberId => codes::UNKNOWN_MEMBER_ID,
        GroupError::IllegalGeneration => codes::ILLEGAL_GENERATION,
        GroupError::RebalanceInProgress => codes::REBALANCE_IN_PROGRESS,
        GroupError::InconsistentGroupProtocol => codes::INCONSISTENT_GROUP_PROTOCOL,
        GroupError::InvalidSessionTimeout => codes::INVALID_SESSION_TIMEOUT,
        GroupError::MemberIdRequired => codes::MEMBER_ID_REQUIRED,
        GroupError::GroupIdNotFound => codes::GROUP_ID_NOT_FOUND,
        GroupError::NonEmptyGroup => codes::NON_EMPTY_GROUP,
        GroupError::InvalidGroupId => codes::INVALID_GROUP_ID,
    }
}

/// Whether this broker leads `index` of the offsets topic, the incarnation it holds, in the
/// metadata it applied.
async fn leads(broker: &Broker, index: i32) -> bool {
    match broker.topics.hosted(OFFSETS_TOPIC, index).await {
        Some((id, _)) => crate::handlers::leads(broker, OFFSETS_TOPIC, id, index),
        None => false,
    }
}

/// How many partitions the offsets topic has (`None` before it exists): from the cluster
/// metadata, since a broker need not host any of them (then it still answers
/// FindCoordinator for every group).
async fn offsets_partitions(broker: &Broker) -> Option<i32> {
    let n = match &broker.control {
        Some(plane) => plane.read(|s| {
            let id = s.topic_id(OFFSETS_TOPIC)?;
            s.topic(id).map(|t| t.partition_count)
        })?,
        None => {
            let topic = broker.topics.get(OFFSETS_TOPIC).await?;
            i32::try_from(topic.partitions.len()).unwrap_or(i32::MAX)
        }
    };
    (n > 0).then_some(n)
}

/// The shard coordinating `group`, loading it if this broker just became its leader.
async fn shard(broker: &Arc<Broker>, group: &str) -> Result<Arc<Shard>, i16> {
    let n = offsets_partitions(broker)
        .await
        .ok_or(codes::COORDINATOR_NOT_AVAILABLE)?;
    shard_of_partition(broker, partition_for(group, n)).await
}

/// The shard of offsets partition `index`, loading it if this broker just became its
/// leader.
async fn shard_of_partition(broker: &Arc<Broker>, index: i32) -> Result<Arc<Shard>, i16> {
    let Some((id, p)) = broker.topics.hosted(OFFSETS_TOPIC, index).await else {
        return Err(codes::NOT_COORDINATOR);
    };
    if !crate::handlers::leads(broker, OFFSETS_TOPIC, id, index) {
        return Err(codes::NOT_COORDINATOR);
    }
    let Some(epoch) = p.leading_epoch() else {
        return Err(codes::NOT_COORDINATOR);
    };
    let mut shards = broker.groups.shards.lock().await;
    if let Some(s) = shards.get(&index) {
        if s.epoch == epoch && Arc::ptr_eq(&s.partition, &p) {
            return Ok(Arc::clone(s));
        }
    }
    let core = load(broker, &p, index).await.map_err(|e| {
        tracing::warn!(partition = index, error = %e, "offsets partition not loaded");
        codes::COORDINATOR_LOAD_IN_PROGRESS
    })?;
    if p.leading_epoch() != Some(epoch) {
        return Err(codes::NOT_COORDINATOR);
    }
    let s = Arc::new(Shard {
        partition: p,
        epoch,
        state: Mutex::new(ShardState {
            core,
            joins: HashMap::new(),
            syncs: HashMap::new(),
        }),
    });
    shards.insert(index, Arc::clone(&s));
    if !broker.groups.ticking.swap(true, Ordering::AcqRel) {
        lode_env::task::spawn(tick_loop(Arc::clone(broker)));
    }
    tracing::info!(
        partition = index,
        epoch = epoch.0,
        "group coordinator loaded"
    );
    Ok(s)
}

/// Replays an offsets partition from its start to its log end into a new coordinator.
async fn load(
    broker: &Broker,
    p: &Partition,
    index: i32,
) -> Result<Coordinator, lode_storage::LogError> {
    // Member ids must differ from any a previous coordinator handed out.
    let nonce = lode_env::rng::seed_u64();
    let mut core = Coordinator::new(broker.config.groups.clone(), nonce);
    let mut at = p.log_start_offset().await;
    let mut records = 0_u64;
    loop {
        let (data, end) = p.read_local(at, REPLAY_READ_BYTES).await?;
        if data.is_empty() || at >= end {
            break;
        }
        let mut next = at;
        for b in batch::batches(&data) {
            let Ok(b) = b else { break };
            next = b.next_offset();
            if b.is_control() {
                continue;
            }
            let Ok(rs) = b.records() else { continue };
            let base = b.base_offset().0;
            for r in rs.flatten() {
                if let Some(rec) = r.value.and_then(decode_record) {
                    core.apply_at(rec, Some(base + i64::from(r.offset_delta)));
                    records += 1;
                }
            }
        }
        if next <= at {
            break;
        }
        at = next;
    }
    tracing::debug!(partition = index, records, "offsets partition replayed");
    Ok(core)
}

/// Appends `records` to the shard's offsets partition and waits until they are committed;
/// returns their last offset, or why they were not acknowledged (a Kafka error code).
async fn append_committed(
    broker: &Broker,
    shard: &Shard,
    records: &[GroupRecord],
) -> Result<Offset, i16> {
    let p = &shard.partition;
    if !p.accepts_acks_all() {
        return Err(codes::COORDINATOR_NOT_AVAILABLE);
    }
    let mut b = RecordBatchBuilder::new(Offset(0));
    b.base_timestamp(broker.clock.wall_ms());
    for r in records {
        let (k, v) = encode_record(r);
        b.push(Some(&k), Some(&v), &[], 0);
    }
    let mut bytes = b.try_finish().map_err(|_| codes::UNKNOWN_SERVER_ERROR)?;
    let (info, _) = p.append(&mut bytes).await.map_err(|e| {
        tracing::warn!(error = ?e, "offsets append failed");
        codes::NOT_COORDINATOR
    })?;
    #[cfg(feature = "planted-bugs")]
    if broker.config.planted == Some(crate::PlantedBug::CommitBeforeReplicated) {
        return Ok(info.last_offset);
    }
    match p
        .await_ack(info.last_offset, shard.epoch, COMMIT_TIMEOUT, &broker.clock)
        .await
    {
        AckOutcome::Committed => Ok(info.last_offset),
        AckOutcome::NotLeader => Err(codes::NOT_COORDINATOR),
        AckOutcome::TimedOut => Err(codes::REQUEST_TIMED_OUT),
        AckOutcome::NotEnoughReplicasAfterAppend => Err(codes::COORDINATOR_NOT_AVAILABLE),
    }
}

/// Makes generation records durable in the background: a lost one only lets a later
/// coordinator reuse a generation no live member holds (members are not carried over).
fn persist_in_background(broker: &Arc<Broker>, shard: &Arc<Shard>, records: Vec<GroupRecord>) {
    if records.is_empty() {
        return;
    }
    let b = Arc::clone(broker);
    let s = Arc::clone(shard);
    lode_env::task::spawn(async move {
        if let Err(code) = append_committed(&b, &s, &records).await {
            tracing::debug!(code, "group generation not persisted");
        }
    });
}

/// Ticks every loaded shard: ends expired sessions and overdue rebalances, drops shards
/// of partitions this broker no longer leads.
async fn tick_loop(broker: Arc<Broker>) {
    loop {
        broker.clock.sleep(Duration::from_millis(100)).await;
        let shards: Vec<(i32, Arc<Shard>)> = broker
            .groups
            .shards
            .lock()
            .await
            .iter()
            .map(|(i, s)| (*i, Arc::clone(s)))
            .collect();
        for (index, s) in shards {
            if !s.partition.still_leads(s.epoch) || !leads(&broker, index).await {
                let mut all = broker.groups.shards.lock().await;
                if all.get(&index).is_some_and(|x| Arc::ptr_eq(x, &s)) {
                    all.remove(&index);
                    tracing::info!(partition = index, "group coordinator unloaded");
                }
                // Waiters are dropped with the state: their requests answer NOT_COORDINATOR.
                let mut st = s.state.lock().await;
                st.joins.clear();
                st.syncs.clear();
                continue;
            }
            let now = broker.clock.now();
            let persist = {
                let mut st = s.state.lock().await;
                st.core.tick(now);
                st.dispatch()
            };
            persist_in_background(&broker, &s, persist);
        }
    }
}

fn group_id(g: &GroupId) -> String {
    g.0.to_string()
}

/// FindCoordinator (v0-3, one key): the leader of the group's offsets partition. Creates
/// the offsets topic on first use.
pub async fn find_coordinator(
    broker: &Arc<Broker>,
    req: FindCoordinatorRequest,
) -> FindCoordinatorResponse {
    let mut resp = FindCoordinatorResponse::default();
    resp.node_id = BrokerId(-1);
    resp.host = StrBytes::from_static_str("");
    resp.port = -1;
    if req.key_type != 0 {
        resp.error_code = codes::COORDINATOR_NOT_AVAILABLE;
        resp.error_message = Some(str_bytes("transactions are not supported"));
        return resp;
    }
    if offsets_partitions(broker).await.is_none() {
        crate::handlers::create_offsets_topic(broker).await;
    }
    let Some(n) = offsets_partitions(broker).await else {
        resp.error_code = codes::COORDINATOR_NOT_AVAILABLE;
        return resp;
    };
    let index = partition_for(&req.key, n);
    let leader = match &broker.control {
        None => Some((
            broker.config.node_id.0,
            broker.config.advertised_host.clone(),
            broker.config.advertised_port,
        )),
        Some(plane) => plane.read(|s| {
            let id = s.topic_id(OFFSETS_TOPIC)?;
            let leader = s.partition(id, lode_proto::PartitionId(index))?.leader?;
            let b = s.broker(leader).filter(|b| !b.fenced)?;
            Some((leader.0, b.host.clone(), b.port))
        }),
    };
    match leader {
        Some((id, host, port)) => {
            resp.node_id = BrokerId(id);
            resp.host = str_bytes(&host);
            resp.port = i32::from(port);
        }
        None => resp.error_code = codes::COORDINATOR_NOT_AVAILABLE,
    }
    resp
}

/// JoinGroup: waits until the rebalance completes (or the member's request is refused).
pub async fn join_group(
    broker: &Arc<Broker>,
    req: JoinGroupRequest,
    version: i16,
    client_id: &str,
) -> JoinGroupResponse {
    let group = group_id(&req.group_id);
    let mut resp = JoinGroupResponse::default();
    resp.generation_id = -1;
    resp.member_id = req.member_id.clone();
    let s = match shard(broker, &group).await {
        Ok(s) => s,
        Err(code) => {
            resp.error_code = code;
            return resp;
        }
    };
    let session_ms = u64::try_from(req.session_timeout_ms.max(0)).unwrap_or(0);
    let rebalance_ms = if version >= 1 {
        u64::try_from(req.rebalance_timeout_ms.max(0)).unwrap_or(0)
    } else {
        session_ms
    };
    let jr = JoinRequest {
        member_id: req.member_id.to_string(),
        instance_id: req.group_instance_id.as_ref().map(ToString::to_string),
        client_id: client_id.to_owned(),
        client_host: String::new(),
        session_timeout_ms: session_ms,
        rebalance_timeout_ms: rebalance_ms,
        protocol_type: req.protocol_type.to_string(),
        protocols: req
            .protocols
            .iter()
            .map(|p| (p.name.to_string(), p.metadata.to_vec()))
            .collect(),
        require_known_member_id: version >= 4,
    };
    let waiter = broker.groups.next_waiter.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = oneshot::channel();
    let persist = {
        let mut st = s.state.lock().await;
        st.joins.insert(waiter, tx);
        st.core.join(broker.clock.now(), &group, jr, waiter);
        st.dispatch()
    };
    persist_in_background(broker, &s, persist);
    let Ok(answer) = rx.await else {
        resp.error_code = codes::NOT_COORDINATOR;
        return resp;
    };
    resp.error_code = answer.error.map_or(codes::NONE, error_code);
    tracing::debug!(group, member = answer.member_id, generation = answer.generation, leader = answer.leader, error = ?answer.error, "join answered");
    resp.generation_id = answer.generation;
    resp.protocol_type = answer.protocol_type.as_deref().map(str_bytes);
    // Before v7 the protocol name is not nullable.
    resp.protocol_name = Some(str_bytes(answer.protocol.as_deref().unwrap_or("")));
    if version >= 7 && answer.protocol.is_none() {
        resp.protocol_name = None;
    }
    resp.leader = str_bytes(&answer.leader);
    resp.member_id = str_bytes(&answer.member_id);
    resp.members = answer
        .members
        .into_iter()
        .map(|m| {
            let mut jm = JoinGroupResponseMember::default();
            jm.member_id = str_bytes(&m.member_id);
            jm.group_instance_id = m.instance_id.as_deref().map(str_bytes);
            jm.metadata = m.metadata.into();
            jm
        })
        .collect();
    resp
}

/// SyncGroup: the leader's assignment in, each member's assignment out.
pub async fn sync_group(broker: &Arc<Broker>, req: SyncGroupRequest) -> SyncGroupResponse {
    let group = group_id(&req.group_id);
    let mut resp = SyncGroupResponse::default();
    let s = match shard(broker, &group).await {
        Ok(s) => s,
        Err(code) => {
            resp.error_code = code;
            return resp;
        }
    };
    let assignments = req
        .assignments
        .iter()
        .map(|a| (a.member_id.to_string(), a.assignment.to_vec()))
        .collect();
    let waiter = broker.groups.next_waiter.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = oneshot::channel();
    let persist = {
        let mut st = s.state.lock().await;
        st.syncs.insert(waiter, tx);
        st.core.sync(
            broker.clock.now(),
            &group,
            &req.member_id,
            req.generation_id,
            assignments,
            waiter,
        );
        st.dispatch()
    };
    persist_in_background(broker, &s, persist);
    let Ok(answer) = rx.await else {
        resp.error_code = codes::NOT_COORDINATOR;
        return resp;
    };
    resp.error_code = answer.error.map_or(codes::NONE, error_code);
    tracing::debug!(group, member = %req.member_id, generation = req.generation_id, error = ?answer.error, "sync answered");
    resp.protocol_type = answer.protocol_type.as_deref().map(str_bytes);
    resp.protocol_name = answer.protocol.as_deref().map(str_bytes);
    resp.assignment = answer.assignment.into();
    resp
}

/// Heartbeat.
pub async fn heartbeat(broker: &Arc<Broker>, req: HeartbeatRequest) -> HeartbeatResponse {
    let group = group_id(&req.group_id);
    let mut resp = HeartbeatResponse::default();
    resp.error_code = match shard(broker, &group).await {
        Err(code) => code,
        Ok(s) => {
            let mut st = s.state.lock().await;
            let r = st.core.heartbeat(
                broker.clock.now(),
                &group,
                &req.member_id,
                req.generation_id,
            );
            if let Err(e) = r {
                tracing::debug!(group, member = %req.member_id, generation = req.generation_id, error = ?e, "heartbeat refused");
            }
            r.err().map_or(codes::NONE, error_code)
        }
    };
    resp
}

/// LeaveGroup (v0-2 one member, v3+ a list).
pub async fn leave_group(
    broker: &Arc<Broker>,
    req: LeaveGroupRequest,
    version: i16,
) -> LeaveGroupResponse {
    let group = group_id(&req.group_id);
    let mut resp = LeaveGroupResponse::default();
    let s = match shard(broker, &group).await {
        Ok(s) => s,
        Err(code) => {
            resp.error_code = code;
            return resp;
        }
    };
    let ids: Vec<String> = if version >= 3 {
        req.members
            .iter()
            .map(|m| m.member_id.to_string())
            .collect()
    } else {
        vec![req.member_id.to_string()]
    };
    let (results, persist) = {
        let mut st = s.state.lock().await;
        let r = st.core.leave(broker.clock.now(), &group, &ids);
        tracing::debug!(group, members = ?ids, results = ?r, "leave");
        (r, st.dispatch())
    };
    persist_in_background(broker, &s, persist);
    if version >= 3 {
        resp.members = req
            .members
            .iter()
            .zip(&results)
            .map(|(m, r)| {
                let mut mr = MemberResponse::default();
                mr.member_id = m.member_id.clone();
                mr.group_instance_id = m.group_instance_id.clone();
                mr.error_code = r.err().map_or(codes::NONE, error_code);
                mr
            })
            .collect();
    } else {
        resp.error_code = results
            .first()
            .and_then(|r| r.err())
            .map_or(codes::NONE, error_code);
    }
    resp
}

/// OffsetCommit: validated against the group's membership, written to the offsets
/// partition, answered once committed.
pub async fn offset_commit(broker: &Arc<Broker>, req: OffsetCommitRequest) -> OffsetCommitResponse {
    let group = group_id(&req.group_id);
    let mut resp = OffsetCommitResponse::default();
    let answer_all = |resp: &mut OffsetCommitResponse, code: i16| {
        resp.topics = req
            .topics
            .iter()
            .map(|t| {
                let mut rt = OffsetCommitResponseTopic::default();
                rt.name = t.name.clone();
                rt.topic_id = t.topic_id;
                rt.partitions = t
                    .partitions
                    .iter()
                    .map(|p| {
                        let mut rp = OffsetCommitResponsePartition::default();
                        rp.partition_index = p.partition_index;
                        rp.error_code = code;
                        rp
                    })
                    .collect();
                rt
            })
            .collect();
    };
    let s = match shard(broker, &group).await {
        Ok(s) => s,
        Err(code) => {
            answer_all(&mut resp, code);
            return resp;
        }
    };
    let checked = s.state.lock().await.core.check_commit(
        broker.clock.now(),
        &group,
        &req.member_id,
        req.generation_id_or_member_epoch,
    );
    #[cfg(feature = "planted-bugs")]
    let checked = match broker.config.planted {
        Some(crate::config::PlantedBug::CommitFromAnyGeneration) => Ok(()),
        _ => checked,
    };
    if let Err(e) = checked {
        crate::observe::probe(broker.config.node_id, "offset-commit-refused");
        answer_all(&mut resp, error_code(e));
        return resp;
    }
    let now_ms = broker.clock.wall_ms();
    let mut records = Vec::new();
    let mut too_large = Vec::new();
    for t in &req.topics {
        for p in &t.partitions {
            let metadata = p.committed_metadata.as_ref().map(ToString::to_string);
            if metadata
                .as_ref()
                .is_some_and(|m| m.len() > METADATA_BYTES_MAX)
            {
                too_large.push((t.name.0.to_string(), p.partition_index));
                continue;
            }
            records.push(GroupRecord::Offset {
                group: group.clone(),
                topic: t.name.0.to_string(),
                partition: p.partition_index,
                value: Some(CommittedOffset {
                    offset: p.committed_offset,
                    leader_epoch: p.committed_leader_epoch,
                    metadata,
                    commit_timestamp_ms: now_ms,
                }),
            });
        }
    }
    let code = if records.is_empty() {
        codes::NONE
    } else {
        match append_committed(broker, &s, &records).await {
            Ok(last) => {
                crate::observe::emit(broker.config.node_id, || crate::observe::Event::Acked {
                    topic: OFFSETS_TOPIC.to_owned(),
                    partition: s.partition.index,
                    last,
                });
                // The batch's records sit at consecutive offsets ending at `last`.
                let first = last.0 - (records.len() as i64 - 1);
                let mut st = s.state.lock().await;
                for (i, r) in records.into_iter().enumerate() {
                    st.core.apply_at(r, Some(first + i as i64));
                }
                codes::NONE
            }
            Err(code) => code,
        }
    };
    answer_all(&mut resp, code);
    for t in &mut resp.topics {
        for p in &mut t.partitions {
            if too_large
                .iter()
                .any(|(n, i)| *n == t.name.0.as_str() && *i == p.partition_index)
            {
                p.error_code = codes::OFFSET_METADATA_TOO_LARGE;
            }
        }
    }
    resp
}

/// OffsetFetch (v1-7: one group; all of its partitions when no topics are named).
pub async fn offset_fetch(broker: &Arc<Broker>, req: OffsetFetchRequest) -> OffsetFetchResponse {
    let group = group_id(&req.group_id);
    let mut resp = OffsetFetchResponse::default();
    let s = match shard(broker, &group).await {
        Ok(s) => s,
        Err(code) => {
            resp.error_code = code;
            return resp;
        }
    };
    // A read barrier: a deposed coordinator that has not heard of its successor yet
    // would answer from its stale state; one that can still commit a record leads.
    let barrier = GroupRecord::Barrier {
        group: group.clone(),
    };
    if let Err(code) = append_committed(broker, &s, std::slice::from_ref(&barrier)).await {
        resp.error_code = match code {
            codes::COORDINATOR_NOT_AVAILABLE => code,
            _ => codes::NOT_COORDINATOR,
        };
        return resp;
    }
    // The answer is built under the shard's lock (nothing in it waits).
    let st = s.state.lock().await;
    let none = BTreeMap::new();
    let offsets = st.core.group(&group).map_or(&none, |g| &g.offsets);
    let entry = |topic: &str, index: i32| {
        let mut p = OffsetFetchResponsePartition::default();
        p.partition_index = index;
        match offsets.get(&(topic.to_owned(), index)) {
            Some(c) => {
                p.committed_offset = c.offset;
                p.committed_leader_epoch = c.leader_epoch;
                p.metadata = Some(str_bytes(c.metadata.as_deref().unwrap_or("")));
            }
            None => {
                p.committed_offset = -1;
                p.committed_leader_epoch = -1;
                p.metadata = Some(StrBytes::from_static_str(""));
            }
        }
        p
    };
    match &req.topics {
        Some(topics) => {
            for t in topics {
                let mut rt = OffsetFetchResponseTopic::default();
                rt.name = t.name.clone();
                rt.partitions = t
                    .partition_indexes
                    .iter()
                    .map(|i| entry(t.name.0.as_str(), *i))
                    .collect();
                resp.topics.push(rt);
            }
        }
        None => {
            let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
            for (topic, index) in offsets.keys() {
                by_topic.entry(topic).or_default().push(*index);
            }
            for (topic, indexes) in by_topic {
                let mut rt = OffsetFetchResponseTopic::default();
                rt.name = TopicName(str_bytes(topic));
                rt.partitions = indexes.iter().map(|i| entry(topic, *i)).collect();
                resp.topics.push(rt);
            }
        }
    }
    resp
}

/// Every loaded shard of this broker.
async fn loaded(broker: &Broker) -> Vec<Arc<Shard>> {
    broker
        .groups
        .shards
        .lock()
        .await
        .values()
        .cloned()
        .collect()
}

/// ListGroups: the groups this broker coordinates (clients ask every broker).
pub async fn list_groups(broker: &Arc<Broker>, req: ListGroupsRequest) -> ListGroupsResponse {
    let mut resp = ListGroupsResponse::default();
    // Load every offsets partition this broker leads, so that groups are listed even
    // before their members came back after a failover.
    for index in 0..offsets_partitions(broker).await.unwrap_or(0) {
        let _ = shard_of_partition(broker, index).await;
    }
    let states: Vec<String> = req.states_filter.iter().map(ToString::to_string).collect();
    for s in loaded(broker).await {
        let st = s.state.lock().await;
        for (id, g) in st.core.groups() {
            let state = g.state.name();
            if !states.is_empty() && !states.iter().any(|f| f.eq_ignore_ascii_case(state)) {
                continue;
            }
            let mut lg = ListedGroup::default();
            lg.group_id = GroupId(str_bytes(id));
            lg.protocol_type = str_bytes(g.protocol_type.as_deref().unwrap_or(""));
            lg.group_state = str_bytes(state);
            lg.group_type = StrBytes::from_static_str("classic");
            resp.groups.push(lg);
        }
    }
    resp
}

/// DescribeGroups.
pub async fn describe_groups(
    broker: &Arc<Broker>,
    req: DescribeGroupsRequest,
) -> DescribeGroupsResponse {
    let mut resp = DescribeGroupsResponse::default();
    for gid in &req.groups {
        let group = group_id(gid);
        let mut d = DescribedGroup::default();
        d.group_id = gid.clone();
        match shard(broker, &group).await {
            Err(code) => d.error_code = code,
            Ok(s) => {
                let st = s.state.lock().await;
                match st.core.group(&group) {
                    None => {
                        // Kafka describes an unknown group as Dead, without an error.
                        d.group_state = StrBytes::from_static_str("Dead");
                    }
                    Some(g) => {
                        d.group_state = str_bytes(g.state.name());
                        d.protocol_type = str_bytes(g.protocol_type.as_deref().unwrap_or(""));
                        d.protocol_data = str_bytes(g.protocol.as_deref().unwrap_or(""));
                        d.members = g
                            .members
                            .iter()
                            .map(|(id, m)| {
                                let mut dm = DescribedGroupMember::default();
                                dm.member_id = str_bytes(id);
                                dm.group_instance_id = m.instance_id.as_deref().map(str_bytes);
                                dm.client_id = str_bytes(&m.client_id);
                                dm.client_host = str_bytes(&m.client_host);
                                dm.member_metadata = g
                                    .protocol
                                    .as_ref()
                                    .and_then(|p| m.protocols.iter().find(|(n, _)| n == p))
                                    .map(|(_, md)| md.clone())
                                    .unwrap_or_default()
                                    .into();
                                dm.member_assignment = m.assignment.clone().into();
                                dm
                            })
                            .collect();
                    }
                }
            }
        }
        resp.groups.push(d);
    }
    resp
}

/// DeleteGroups: empty groups only; their offsets go too.
pub async fn delete_groups(broker: &Arc<Broker>, req: DeleteGroupsRequest) -> DeleteGroupsResponse {
    let mut resp = DeleteGroupsResponse::default();
    for gid in &req.groups_names {
        let group = group_id(gid);
        let mut r = DeletableGroupResult::default();
        r.group_id = gid.clone();
        r.error_code = match shard(broker, &group).await {
            Err(code) => code,
            Ok(s) => {
                let checked = s.state.lock().await.core.check_delete(&group);
                match checked {
                    Err(e) => error_code(e),
                    Ok(()) => {
                        let rec = GroupRecord::Deleted {
                            group: group.clone(),
                        };
                        match append_committed(broker, &s, std::slice::from_ref(&rec)).await {
                            Ok(_) => {
                                s.state.lock().await.core.apply(rec);
                                codes::NONE
                            }
                            Err(code) => code,
                        }
                    }
                }
            }
        };
        resp.results.push(r);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_land_where_kafka_puts_them() {
        assert_eq!(java_hash(""), 0);
        assert_eq!(java_hash("a"), 97);
        assert_eq!(java_hash("ab"), 97 * 31 + 98);
        // "polygenelubricants".hashCode() is Integer.MIN_VALUE in Java: Utils.abs maps it to 0.
        assert_eq!(java_hash("polygenelubricants"), i32::MIN);
        assert_eq!(partition_for("polygenelubricants", 50), 0);
        for n in [1, 3, 50] {
            for g in ["test_group", "g", "consumers-1"] {
                assert!((0..n).contains(&partition_for(g, n)));
            }
        }
    }

    #[test]
    fn records_round_trip_and_foreign_formats_are_skipped() {
        let r = GroupRecord::Offset {
            group: "g".into(),
            topic: "t".into(),
            partition: 3,
            value: Some(CommittedOffset {
                offset: 42,
                leader_epoch: 7,
                metadata: Some("meta".into()),
                commit_timestamp_ms: 1,
            }),
        };
        let (k, v) = encode_record(&r);
        assert_eq!(k, b"g");
        assert_eq!(decode_record(&v), Some(r));
        assert_eq!(decode_record(&[9, 1, 2]), None);
        assert_eq!(decode_record(&[]), None);
        assert_eq!(decode_record(&[RECORD_FORMAT, 0xff, 0xff]), None);
    }
}
