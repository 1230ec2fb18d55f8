//! Request handlers: decode a request body, act, encode the response.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    ApiKey, BrokerId, CreateTopicsRequest, CreateTopicsResponse, DeleteGroupsRequest,
    DeleteTopicsRequest, DeleteTopicsResponse, DescribeGroupsRequest, FetchRequest, FetchResponse,
    FindCoordinatorRequest, HeartbeatRequest, InitProducerIdRequest, InitProducerIdResponse,
    JoinGroupRequest, LeaveGroupRequest, ListGroupsRequest, ListOffsetsRequest,
    ListOffsetsResponse, MetadataRequest, MetadataResponse, OffsetCommitRequest,
    OffsetFetchRequest, ProduceRequest, ProduceResponse, ProducerId, SyncGroupRequest, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use lode_proto::batch;
use lode_proto::{Epoch, Offset};
use lode_storage::LogError;

use crate::codes;
use crate::control::{ControlPlane, ControlReply, ControlRequest};
use crate::partition::{AckOutcome, AppendError};
use crate::server::{encode_response, ConnectionError};
use crate::topics::{CreateError, Topic};
use crate::Broker;
use lode_core::metadata::TopicFsync;

fn decode<T: Decodable>(key: ApiKey, version: i16, mut body: Bytes) -> Result<T, ConnectionError> {
    T::decode(&mut body, version)
        .map_err(|e| ConnectionError::Protocol(format!("bad {key:?} v{version} body: {e}")))
}

fn respond<R: Encodable>(
    key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &R,
) -> Result<Option<Bytes>, ConnectionError> {
    encode_response(key, version, correlation_id, body).map(Some)
}

/// A decoded request body, one variant per API this broker serves.
#[derive(Debug)]
pub enum RequestBody {
    /// ApiVersions (the body carries nothing the answer depends on).
    ApiVersions,
    /// Metadata.
    Metadata(MetadataRequest),
    /// CreateTopics.
    CreateTopics(CreateTopicsRequest),
    /// DeleteTopics.
    DeleteTopics(DeleteTopicsRequest),
    /// Produce (v3+).
    Produce(ProduceRequest),
    /// Fetch.
    Fetch(FetchRequest),
    /// ListOffsets.
    ListOffsets(ListOffsetsRequest),
    /// InitProducerId.
    InitProducerId(InitProducerIdRequest),
    /// FindCoordinator.
    FindCoordinator(FindCoordinatorRequest),
    /// JoinGroup.
    JoinGroup(JoinGroupRequest),
    /// SyncGroup.
    SyncGroup(SyncGroupRequest),
    /// Heartbeat.
    Heartbeat(HeartbeatRequest),
    /// LeaveGroup.
    LeaveGroup(LeaveGroupRequest),
    /// OffsetCommit.
    OffsetCommit(OffsetCommitRequest),
    /// OffsetFetch.
    OffsetFetch(OffsetFetchRequest),
    /// ListGroups.
    ListGroups(ListGroupsRequest),
    /// DescribeGroups.
    DescribeGroups(DescribeGroupsRequest),
    /// DeleteGroups.
    DeleteGroups(DeleteGroupsRequest),
}

/// Decodes the body of a `key` request at `version` (header already consumed).
///
/// # Errors
/// [`ConnectionError::Protocol`] for anything undecodable or unsupported.
pub fn decode_body(key: ApiKey, version: i16, body: Bytes) -> Result<RequestBody, ConnectionError> {
    Ok(match key {
        ApiKey::ApiVersions => RequestBody::ApiVersions,
        ApiKey::Metadata => RequestBody::Metadata(decode(key, version, body)?),
        ApiKey::CreateTopics => RequestBody::CreateTopics(decode(key, version, body)?),
        ApiKey::DeleteTopics => RequestBody::DeleteTopics(decode(key, version, body)?),
        ApiKey::Produce => {
            if version < 3 {
                return Err(ConnectionError::Protocol(format!(
                    "Produce v{version}: only RecordBatch v2 (Produce v3+) is accepted"
                )));
            }
            RequestBody::Produce(decode(key, version, body)?)
        }
        ApiKey::Fetch => RequestBody::Fetch(decode(key, version, body)?),
        ApiKey::ListOffsets => RequestBody::ListOffsets(decode(key, version, body)?),
        ApiKey::InitProducerId => RequestBody::InitProducerId(decode(key, version, body)?),
        ApiKey::FindCoordinator => RequestBody::FindCoordinator(decode(key, version, body)?),
        ApiKey::JoinGroup => RequestBody::JoinGroup(decode(key, version, body)?),
        ApiKey::SyncGroup => RequestBody::SyncGroup(decode(key, version, body)?),
        ApiKey::Heartbeat => RequestBody::Heartbeat(decode(key, version, body)?),
        ApiKey::LeaveGroup => RequestBody::LeaveGroup(decode(key, version, body)?),
        ApiKey::OffsetCommit => RequestBody::OffsetCommit(decode(key, version, body)?),
        ApiKey::OffsetFetch => RequestBody::OffsetFetch(decode(key, version, body)?),
        ApiKey::ListGroups => RequestBody::ListGroups(decode(key, version, body)?),
        ApiKey::DescribeGroups => RequestBody::DescribeGroups(decode(key, version, body)?),
        ApiKey::DeleteGroups => RequestBody::DeleteGroups(decode(key, version, body)?),
        other => {
            return Err(ConnectionError::Protocol(format!(
                "no handler for {other:?}"
            )))
        }
    })
}

/// Runs the handler for a decoded request; `None` means no response (acks=0 Produce).
pub(crate) async fn dispatch(
    broker: &Arc<Broker>,
    key: ApiKey,
    version: i16,
    correlation_id: i32,
    client_id: &str,
    body: RequestBody,
) -> Result<Option<Bytes>, ConnectionError> {
    use crate::groups;
    match body {
        RequestBody::ApiVersions => respond(
            key,
            version,
            correlation_id,
            &crate::server::api_versions_response(),
        ),
        RequestBody::Metadata(req) => {
            respond(key, version, correlation_id, &metadata(broker, req).await)
        }
        RequestBody::CreateTopics(req) => respond(
            key,
            version,
            correlation_id,
            &create_topics(broker, req).await,
        ),
        RequestBody::DeleteTopics(req) => respond(
            key,
            version,
            correlation_id,
            &delete_topics(broker, req).await,
        ),
        RequestBody::Produce(req) => {
            let acks = req.acks;
            let resp = produce(broker, req).await;
            if acks == 0 {
                return Ok(None);
            }
            respond(key, version, correlation_id, &resp)
        }
        RequestBody::Fetch(req) => respond(key, version, correlation_id, &fetch(broker, req).await),
        RequestBody::ListOffsets(req) => respond(
            key,
            version,
            correlation_id,
            &list_offsets(broker, req).await,
        ),
        RequestBody::InitProducerId(req) => respond(
            key,
            version,
            correlation_id,
            &init_producer_id(broker, req).await,
        ),
        RequestBody::FindCoordinator(req) => respond(
            key,
            version,
            correlation_id,
            &groups::find_coordinator(broker, req).await,
        ),
        RequestBody::JoinGroup(req) => respond(
            key,
            version,
            correlation_id,
            &groups::join_group(broker, req, version, client_id).await,
        ),
        RequestBody::SyncGroup(req) => respond(
            key,
            version,
            correlation_id,
            &groups::sync_group(broker, req).await,
        ),
        RequestBody::Heartbeat(req) => respond(
            key,
            version,
            correlation_id,
            &groups::heartbeat(broker, req).await,
        ),
        RequestBody::LeaveGroup(req) => respond(
            key,
            version,
            correlation_id,
            &groups::leave_group(broker, req, version).await,
        ),
        RequestBody::OffsetCommit(req) => respond(
            key,
            version,
            correlation_id,
            &groups::offset_commit(broker, req).await,
        ),
        RequestBody::OffsetFetch(req) => respond(
            key,
            version,
            correlation_id,
            &groups::offset_fetch(broker, req).await,
        ),
        RequestBody::ListGroups(req) => respond(
            key,
            version,
            correlation_id,
            &groups::list_groups(broker, req).await,
        ),
        RequestBody::DescribeGroups(req) => respond(
            key,
            version,
            correlation_id,
            &groups::describe_groups(broker, req).await,
        ),
        RequestBody::DeleteGroups(req) => respond(
            key,
            version,
            correlation_id,
            &groups::delete_groups(broker, req).await,
        ),
    }
}

/// Creates the offsets topic (FindCoordinator's first use): `offsets_topic_partitions`
/// partitions, replication factor min(3, live brokers), synced on every write.
pub(crate) async fn create_offsets_topic(broker: &Arc<Broker>) {
    let name = crate::groups::OFFSETS_TOPIC;
    let partitions = broker.config.offsets_topic_partitions.max(1);
    let settings = TopicSettings {
        fsync: Some(TopicFsync::Always),
        ..TopicSettings::default()
    };
    let (code, msg, _) = match &broker.control {
        None => {
            let new = NewTopic {
                name,
                partitions,
                rf: 1,
                settings,
            };
            create_standalone(broker, &new, false).await
        }
        Some(plane) => {
            let live = plane.read(|s| s.brokers().values().filter(|b| !b.fenced).count());
            let rf = i16::try_from(live.clamp(1, 3)).unwrap_or(1);
            let new = NewTopic {
                name,
                partitions,
                rf,
                settings,
            };
            let created =
                create_through_controller(broker, plane, &new, false, Duration::from_secs(5)).await;
            // Wait until the partitions have leaders, so the answer can name one.
            await_metadata(broker, plane, |s| {
                s.topic_id(name).is_some_and(|id| {
                    (0..partitions).all(|i| {
                        s.partition(id, lode_proto::PartitionId(i))
                            .is_some_and(|p| p.leader.is_some())
                    })
                })
            })
            .await;
            created
        }
    };
    if code != codes::NONE && code != codes::TOPIC_ALREADY_EXISTS {
        tracing::warn!(code, message = ?msg, "offsets topic not created");
    }
}

/// The Metadata error for a topic that does not exist: unknown, or not even a valid name.
fn missing_topic_code(name: &str) -> i16 {
    if crate::topics::valid_name(name) {
        codes::UNKNOWN_TOPIC_OR_PARTITION
    } else {
        codes::INVALID_TOPIC_EXCEPTION
    }
}

pub(crate) fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_owned())
}

async fn metadata(broker: &Arc<Broker>, req: MetadataRequest) -> MetadataResponse {
    if let Some(plane) = &broker.control {
        return metadata_from_log(broker, plane, req).await;
    }
    let mut resp = MetadataResponse::default();
    let mut b = MetadataResponseBroker::default();
    b.node_id = BrokerId(broker.config.node_id.0);
    b.host = str_bytes(&broker.config.advertised_host);
    b.port = i32::from(broker.config.advertised_port);
    resp.brokers = vec![b];
    resp.cluster_id = Some(str_bytes(&broker.cluster_id));
    resp.controller_id = BrokerId(broker.config.node_id.0);
    let wanted: Vec<(String, Option<Arc<Topic>>)> = match req.topics {
        None => broker
            .topics
            .all()
            .await
            .into_iter()
            .map(|(n, t)| (n, Some(t)))
            .collect(),
        Some(list) => {
            let mut out = Vec::new();
            for t in list {
                let Some(name) = t.name else { continue };
                let name = name.0.to_string();
                let mut topic = broker.topics.get(&name).await;
                if topic.is_none()
                    && req.allow_auto_topic_creation
                    && broker.config.auto_create_topics
                {
                    topic = match broker
                        .topics
                        .create(
                            &name,
                            broker.config.default_partitions,
                            broker.config.default_topic_fsync(),
                        )
                        .await
                    {
                        Ok(t) => Some(t),
                        Err(CreateError::Exists(_)) => broker.topics.get(&name).await,
                        Err(e) => {
                            tracing::info!(topic = %name, error = %e, "auto-create refused");
                            None
                        }
                    };
                }
                out.push((name, topic));
            }
            out
        }
    };
    for (name, topic) in wanted {
        let mut t = MetadataResponseTopic::default();
        t.name = Some(TopicName(str_bytes(&name)));
        t.is_internal = name == crate::groups::OFFSETS_TOPIC;
        match topic {
            None => {
                t.error_code = missing_topic_code(&name);
            }
            Some(topic) => {
                t.topic_id = topic.id;
                t.partitions = topic
                    .partitions
                    .iter()
                    .map(|p| {
                        let mut mp = MetadataResponsePartition::default();
                        mp.partition_index = p.index;
                        mp.leader_id = BrokerId(broker.config.node_id.0);
                        // -1 until OffsetForLeaderEpoch exists: clients then skip epoch
                        // validation instead of calling an API we lack.
                        mp.leader_epoch = -1;
                        mp.replica_nodes = vec![BrokerId(broker.config.node_id.0)];
                        mp.isr_nodes = vec![BrokerId(broker.config.node_id.0)];
                        mp
                    })
                    .collect();
            }
        }
        resp.topics.push(t);
    }
    resp
}

/// One topic's creation outcome: error code, message, and the new topic's id.
type Created = (i16, Option<String>, Option<uuid::Uuid>);

async fn create_topics(broker: &Arc<Broker>, req: CreateTopicsRequest) -> CreateTopicsResponse {
    let mut resp = CreateTopicsResponse::default();
    let timeout = Duration::from_millis(u64::try_from(req.timeout_ms.max(0)).unwrap_or(0))
        .max(Duration::from_secs(1));
    for t in req.topics {
        let name = t.name.0.to_string();
        let mut r = CreatableTopicResult::default();
        r.name = t.name.clone();
        let partitions = if t.num_partitions == -1 {
            broker.config.default_partitions
        } else {
            t.num_partitions
        };
        let rf = match t.replication_factor {
            // A broker without a metadata log is the only replica there is.
            -1 if broker.control.is_none() => 1,
            -1 => broker.config.default_replication_factor,
            n => n,
        };
        let settings = TopicSettings::parse(
            t.configs
                .iter()
                .map(|c| (c.name.as_str(), c.value.as_ref().map(|v| v.as_str()))),
        );
        let (code, msg, id) = if !t.assignments.is_empty() {
            (
                codes::INVALID_REQUEST,
                Some("manual replica assignment is not supported".to_owned()),
                None,
            )
        } else {
            match settings {
                Err(e) => (codes::INVALID_CONFIG, Some(e), None),
                Ok(settings) => match &broker.control {
                    Some(plane) => {
                        let new = NewTopic {
                            name: &name,
                            partitions,
                            rf,
                            settings,
                        };
                        create_through_controller(broker, plane, &new, req.validate_only, timeout)
                            .await
                    }
                    None => {
                        let new = NewTopic {
                            name: &name,
                            partitions,
                            rf,
                            settings,
                        };
                        create_standalone(broker, &new, req.validate_only).await
                    }
                },
            }
        };
        if let Some(id) = id {
            r.topic_id = id;
        }
        r.error_code = code;
        r.error_message = msg.map(|m| str_bytes(&m));
        r.num_partitions = if code == codes::NONE { partitions } else { -1 };
        r.replication_factor = if code == codes::NONE { rf } else { -1 };
        resp.topics.push(r);
    }
    resp
}

/// Creates a topic on this broker alone (no metadata log): replication factor 1 only.
/// A topic to create, as asked.
struct NewTopic<'a> {
    name: &'a str,
    partitions: i32,
    rf: i16,
    settings: TopicSettings,
}

async fn create_standalone(broker: &Broker, new: &NewTopic<'_>, validate_only: bool) -> Created {
    let NewTopic {
        name,
        partitions,
        rf,
        settings,
    } = *new;
    if rf != 1 {
        return (
            codes::INVALID_REPLICATION_FACTOR,
            Some(format!(
                "replication factor {rf} exceeds the 1 available broker"
            )),
            None,
        );
    }
    if validate_only {
        let code = match (
            crate::topics::valid_name(name),
            broker.topics.get(name).await.is_some(),
        ) {
            (false, _) => codes::INVALID_TOPIC_EXCEPTION,
            (_, true) => codes::TOPIC_ALREADY_EXISTS,
            _ => codes::NONE,
        };
        return (code, None, None);
    }
    let fsync = settings
        .fsync
        .unwrap_or(broker.config.default_topic_fsync());
    match broker.topics.create(name, partitions, fsync).await {
        Ok(topic) => (codes::NONE, None, Some(topic.id)),
        Err(e) => {
            let code = match e {
                CreateError::InvalidName(_) => codes::INVALID_TOPIC_EXCEPTION,
                CreateError::Exists(_) => codes::TOPIC_ALREADY_EXISTS,
                CreateError::InvalidPartitions(_) => codes::INVALID_PARTITIONS,
                CreateError::Storage(_) | CreateError::Io(_) => codes::KAFKA_STORAGE_ERROR,
            };
            (code, Some(e.to_string()), None)
        }
    }
}

async fn delete_topics(broker: &Arc<Broker>, req: DeleteTopicsRequest) -> DeleteTopicsResponse {
    let mut names: Vec<String> = req.topic_names.iter().map(|n| n.0.to_string()).collect();
    let mut by_id = Vec::new();
    for t in &req.topics {
        match &t.name {
            Some(n) => names.push(n.0.to_string()),
            None => by_id.push(t.topic_id),
        }
    }
    for id in by_id {
        let found = broker
            .topics
            .all()
            .await
            .into_iter()
            .find(|(_, t)| t.id == id)
            .map(|(n, _)| n);
        names.push(found.unwrap_or_default());
    }
    let mut resp = DeleteTopicsResponse::default();
    for name in names {
        let mut r = DeletableTopicResult::default();
        r.name = Some(TopicName(str_bytes(&name)));
        if let Some(plane) = &broker.control {
            let timeout = Duration::from_millis(u64::try_from(req.timeout_ms.max(0)).unwrap_or(0));
            let (code, msg) = controller_answer(
                plane
                    .request(ControlRequest::DeleteTopic(name.clone()), timeout)
                    .await,
            );
            r.error_code = code;
            r.error_message = msg.map(|m| str_bytes(&m));
            resp.responses.push(r);
            continue;
        }
        r.error_code = match broker.topics.delete(&name).await {
            Ok(true) => codes::NONE,
            Ok(false) => codes::UNKNOWN_TOPIC_OR_PARTITION,
            Err(e) => {
                r.error_message = Some(str_bytes(&e.to_string()));
                codes::KAFKA_STORAGE_ERROR
            }
        };
        resp.responses.push(r);
    }
    resp
}

/// In combined mode, whether this broker leads `topic`/`index` (always true otherwise).
pub(crate) fn leads(broker: &Broker, topic: &str, local_id: uuid::Uuid, index: i32) -> bool {
    let Some(plane) = &broker.control else {
        return true;
    };
    let me = broker.config.node_id;
    plane.read(|s| {
        s.topic_id(topic)
            // Another id: the local topic is a deleted one of the same name, not yet
            // removed here (its data is not the new topic's; swarm seed 470 read it).
            .filter(|id| id.0 == local_id.as_u128())
            .and_then(|id| s.partition(id, lode_proto::PartitionId(index)))
            .is_some_and(|p| p.leader == Some(me))
    })
}

fn log_error_code(e: &LogError) -> i16 {
    match e {
        LogError::InvalidBatch(batch::BatchError::BadCrc { .. }) => codes::CORRUPT_MESSAGE,
        LogError::InvalidBatch(_) => codes::CORRUPT_MESSAGE,
        LogError::BatchTooLarge { .. } => codes::MESSAGE_TOO_LARGE,
        LogError::OffsetOutOfRange { .. } => codes::OFFSET_OUT_OF_RANGE,
        // The partition was deleted (or the broker is stopping) during the request.
        LogError::Closed => codes::UNKNOWN_TOPIC_OR_PARTITION,
        _ => codes::KAFKA_STORAGE_ERROR,
    }
}

async fn produce(broker: &Arc<Broker>, req: ProduceRequest) -> ProduceResponse {
    if req.transactional_id.is_some() {
        // Answered per partition below with TRANSACTIONAL_ID... would need a coordinator.
        tracing::debug!("transactional produce refused");
    }
    let acks = req.acks;
    let timeout = Duration::from_millis(u64::try_from(req.timeout_ms.max(0)).unwrap_or(0));
    let mut resp = ProduceResponse::default();
    let mut waits = Vec::new();
    for t in req.topic_data {
        let name = t.name.0.to_string();
        let mut tr = TopicProduceResponse::default();
        tr.name = t.name.clone();
        for pd in t.partition_data {
            let mut pr = PartitionProduceResponse::default();
            pr.index = pd.index;
            pr.base_offset = -1;
            pr.log_append_time_ms = -1;
            let code = if !(acks == 0 || acks == 1 || acks == -1) {
                codes::INVALID_REQUIRED_ACKS
            } else if req.transactional_id.is_some() {
                codes::TRANSACTIONAL_ID_AUTHORIZATION_FAILED
            } else {
                match broker.topics.hosted(&name, pd.index).await {
                    Some((id, _)) if !leads(broker, &name, id, pd.index) => {
                        codes::NOT_LEADER_OR_FOLLOWER
                    }
                    None => codes::UNKNOWN_TOPIC_OR_PARTITION,
                    Some((_, p)) => {
                        let records = pd.records.unwrap_or_default();
                        match check_single_batch(&records, broker.config.message_bytes_max) {
                            Err(code) => code,
                            Ok(()) if acks == -1 && !p.accepts_acks_all() => {
                                codes::NOT_ENOUGH_REPLICAS
                            }
                            Ok(()) => {
                                let mut bytes = records.to_vec();
                                // Read before the append: if leadership moves in between,
                                // the wait below fails the request, as it must.
                                let epoch = p.leading_epoch().unwrap_or(Epoch::NONE);
                                match p.append(&mut bytes).await {
                                    Ok((info, _dup)) => {
                                        pr.base_offset = info.base_offset.0;
                                        pr.log_start_offset = p.log_start_offset().await.0;
                                        if acks == -1 {
                                            waits.push((
                                                name.clone(),
                                                pd.index,
                                                Arc::clone(&p),
                                                info.last_offset,
                                                epoch,
                                            ));
                                        }
                                        codes::NONE
                                    }
                                    Err(AppendError::Log(e)) => {
                                        pr.error_message = Some(str_bytes(&e.to_string()));
                                        log_error_code(&e)
                                    }
                                    Err(AppendError::ControlBatch) => codes::INVALID_RECORD,
                                    Err(AppendError::Transactional) => {
                                        codes::TRANSACTIONAL_ID_AUTHORIZATION_FAILED
                                    }
                                    Err(AppendError::OutOfOrder { .. }) => {
                                        codes::OUT_OF_ORDER_SEQUENCE_NUMBER
                                    }
                                    Err(AppendError::Fenced { .. }) => {
                                        codes::INVALID_PRODUCER_EPOCH
                                    }
                                    Err(AppendError::NotLeader) => codes::NOT_LEADER_OR_FOLLOWER,
                                }
                            }
                        }
                    }
                }
            };
            pr.error_code = code;
            tr.partition_responses.push(pr);
        }
        resp.responses.push(tr);
    }
    // acks=all: wait (bounded by the request's timeout) until each batch is committed.
    for (topic, index, p, last, epoch) in waits {
        let code = match p.await_ack(last, epoch, timeout, &broker.clock).await {
            AckOutcome::Committed => codes::NONE,
            AckOutcome::NotLeader => {
                crate::observe::probe(broker.config.node_id, "deposed-leader-ack-failed");
                codes::NOT_LEADER_OR_FOLLOWER
            }
            AckOutcome::TimedOut => codes::REQUEST_TIMED_OUT,
            AckOutcome::NotEnoughReplicasAfterAppend => codes::NOT_ENOUGH_REPLICAS_AFTER_APPEND,
        };
        if code == codes::NONE {
            crate::observe::emit(broker.config.node_id, || crate::observe::Event::Acked {
                topic: topic.to_string(),
                partition: index,
                last,
            });
        }
        if code != codes::NONE {
            let slot = resp
                .responses
                .iter_mut()
                .filter(|t| t.name.0.as_str() == topic)
                .flat_map(|t| t.partition_responses.iter_mut())
                .find(|r| r.index == index);
            if let Some(r) = slot {
                r.error_code = code;
            }
        }
    }
    resp
}

/// A Produce partition must carry exactly one RecordBatch v2 within the size limit. Only
/// the structure is checked here: the CRC and record count are checked once, by the log's
/// append (its errors map to CORRUPT_MESSAGE too).
fn check_single_batch(records: &[u8], max: usize) -> Result<(), i16> {
    if records.len() > max {
        return Err(codes::MESSAGE_TOO_LARGE);
    }
    match batch::RecordBatch::parse_unchecked_crc(records) {
        Ok((_, [])) => Ok(()),
        Ok(_) => Err(codes::INVALID_RECORD),
        Err(batch::BatchError::BadMagic(_)) => Err(codes::UNSUPPORTED_FOR_MESSAGE_FORMAT),
        Err(_) => Err(codes::CORRUPT_MESSAGE),
    }
}

async fn fetch(broker: &Arc<Broker>, req: FetchRequest) -> FetchResponse {
    let wait = Duration::from_millis(u64::try_from(req.max_wait_ms.max(0)).unwrap_or(0));
    let deadline = broker.clock.now().saturating_add(wait);
    let min_bytes = usize::try_from(req.min_bytes.max(0)).unwrap_or(0);
    let max_bytes = usize::try_from(req.max_bytes.max(0)).unwrap_or(0);
    let mut arrived = broker.data_arrived.subscribe();
    loop {
        arrived.mark_unchanged();
        let (resp, bytes) = fetch_once(broker, &req, max_bytes).await;
        let now = broker.clock.now();
        if bytes >= min_bytes.max(1) || now >= deadline {
            return resp;
        }
        // Long poll: wait for any high watermark to move, or the deadline.
        let left = deadline.saturating_since(now);
        if broker.clock.timeout(left, arrived.changed()).await.is_err() {
            return fetch_once(broker, &req, max_bytes).await.0;
        }
    }
}

async fn fetch_once(
    broker: &Arc<Broker>,
    req: &FetchRequest,
    max_bytes: usize,
) -> (FetchResponse, usize) {
    let mut resp = FetchResponse::default();
    let mut total = 0_usize;
    for t in &req.topics {
        let name = t.topic.0.to_string();
        let mut tr = FetchableTopicResponse::default();
        tr.topic = t.topic.clone();
        tr.topic_id = t.topic_id;
        for fp in &t.partitions {
            let mut pd = PartitionData::default();
            pd.partition_index = fp.partition;
            pd.high_watermark = -1;
            pd.last_stable_offset = -1;
            pd.log_start_offset = -1;
            match broker.topics.hosted(&name, fp.partition).await {
                Some((id, _)) if !leads(broker, &name, id, fp.partition) => {
                    pd.error_code = codes::NOT_LEADER_OR_FOLLOWER;
                }
                None => pd.error_code = codes::UNKNOWN_TOPIC_OR_PARTITION,
                Some((_, p)) => {
                    let hw = p.high_watermark();
                    pd.high_watermark = hw.0;
                    pd.last_stable_offset = hw.0;
                    pd.log_start_offset = p.log_start_offset().await.0;
                    // The first partition with data always gets at least one whole batch
                    // (KIP-74); later ones only what fits in the response budget.
                    let budget = usize::try_from(fp.partition_max_bytes.max(0)).unwrap_or(0);
                    let budget = if total == 0 {
                        budget
                    } else {
                        budget.min(max_bytes.saturating_sub(total))
                    };
                    if total > 0 && budget == 0 {
                        pd.records = Some(Bytes::new());
                    } else {
                        match p.read(Offset(fp.fetch_offset), budget.max(1)).await {
                            Ok(data) => {
                                total += data.len();
                                pd.records = Some(Bytes::from(data));
                            }
                            Err(e) => pd.error_code = log_error_code(&e),
                        }
                    }
                }
            }
            tr.partitions.push(pd);
        }
        resp.responses.push(tr);
    }
    (resp, total)
}

async fn list_offsets(broker: &Arc<Broker>, req: ListOffsetsRequest) -> ListOffsetsResponse {
    let mut resp = ListOffsetsResponse::default();
    for t in req.topics {
        let name = t.name.0.to_string();
        let mut tr = ListOffsetsTopicResponse::default();
        tr.name = t.name.clone();
        for lp in t.partitions {
            let mut pr = ListOffsetsPartitionResponse::default();
            pr.partition_index = lp.partition_index;
            pr.timestamp = -1;
            pr.offset = -1;
            pr.leader_epoch = -1;
            match broker.topics.partition(&name, lp.partition_index).await {
                None => pr.error_code = codes::UNKNOWN_TOPIC_OR_PARTITION,
                Some(p) => match lp.timestamp {
                    -2 => pr.offset = p.log_start_offset().await.0,
                    -1 => pr.offset = p.high_watermark().0,
                    ts if ts >= 0 => match p.offset_for_timestamp(ts).await {
                        Ok(Some((off, found_ts))) => {
                            pr.offset = off.0;
                            pr.timestamp = found_ts;
                        }
                        Ok(None) => {}
                        Err(e) => pr.error_code = log_error_code(&e),
                    },
                    // -3 (max timestamp) and later special values.
                    _ => pr.error_code = codes::UNSUPPORTED_VERSION,
                },
            }
            tr.partitions.push(pr);
        }
        resp.topics.push(tr);
    }
    resp
}

async fn init_producer_id(
    broker: &Arc<Broker>,
    req: InitProducerIdRequest,
) -> InitProducerIdResponse {
    let mut resp = InitProducerIdResponse::default();
    resp.producer_id = ProducerId(-1);
    resp.producer_epoch = -1;
    if req.transactional_id.is_some() {
        resp.error_code = codes::TRANSACTIONAL_ID_AUTHORIZATION_FAILED;
        return resp;
    }
    if req.producer_id.0 >= 0 && req.producer_epoch >= 0 {
        // KIP-360: an idempotent producer re-initialising keeps its id with a new epoch.
        if req.producer_epoch < i16::MAX - 1 {
            resp.producer_id = req.producer_id;
            resp.producer_epoch = req.producer_epoch + 1;
            return resp;
        }
    }
    match broker.next_producer_id().await {
        Ok(id) => {
            resp.producer_id = ProducerId(id);
            resp.producer_epoch = 0;
        }
        Err(e) => {
            tracing::warn!(error = %e, "producer id allocation failed");
            // Retriable, as Kafka answers while its producer id block is not ready.
            resp.error_code = match e {
                crate::ProducerIdError::Storage(_) => codes::KAFKA_STORAGE_ERROR,
                _ => codes::COORDINATOR_LOAD_IN_PROGRESS,
            };
        }
    }
    resp
}

/// A controller reply as a Kafka error code and message.
fn controller_answer(reply: ControlReply) -> (i16, Option<String>) {
    match reply {
        ControlReply::Done { .. } | ControlReply::ProducerIds { .. } => (codes::NONE, None),
        ControlReply::Refused { code, message } => (code, Some(message)),
    }
}

/// Waits (bounded) until this node has applied metadata in which `f` holds, so that a
/// client's next request here sees what the controller just committed.
async fn await_metadata(
    broker: &Arc<Broker>,
    plane: &Arc<ControlPlane>,
    f: impl Fn(&lode_core::metadata::MetadataState) -> bool,
) {
    let mut applied = plane.quorum_applied();
    let _ = broker
        .clock
        .timeout(Duration::from_secs(5), async {
            loop {
                if plane.read(&f) {
                    crate::cluster::reconcile(broker, plane).await;
                    return;
                }
                if applied.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
}

fn create_request(
    name: &str,
    partitions: i32,
    replication_factor: i16,
    settings: TopicSettings,
) -> ControlRequest {
    let id = (u128::from(lode_env::rng::seed_u64()) << 64) | u128::from(lode_env::rng::seed_u64());
    ControlRequest::CreateTopic(lode_core::metadata::CreateTopicRequest {
        name: name.to_owned(),
        id: lode_core::metadata::TopicId(id),
        partitions,
        replication_factor,
        min_insync_replicas: settings.min_insync_replicas,
        unclean_leader_election: settings.unclean_leader_election,
        fsync: settings.fsync,
    })
}

/// The topic configs of a `CreateTopics` entry that lode acts on; the others are accepted
/// and ignored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct TopicSettings {
    min_insync_replicas: Option<i32>,
    unclean_leader_election: Option<bool>,
    fsync: Option<TopicFsync>,
}

impl TopicSettings {
    /// Reads `min.insync.replicas`, `unclean.leader.election.enable` and the durability
    /// policy: `lode.fsync` (`always` or `interval`), or Kafka's `flush.messages` (`1`
    /// syncs every write: `always`; anything larger: `interval`).
    pub(crate) fn parse<'a>(
        configs: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
    ) -> Result<TopicSettings, String> {
        let mut s = TopicSettings::default();
        for (name, value) in configs {
            let Some(value) = value else { continue };
            let bad = || format!("invalid value {value:?} for topic config {name}");
            match name {
                "min.insync.replicas" => {
                    let n: i32 = value.parse().map_err(|_| bad())?;
                    if n < 1 {
                        return Err(bad());
                    }
                    s.min_insync_replicas = Some(n);
                }
                "unclean.leader.election.enable" => {
                    s.unclean_leader_election = Some(match value {
                        "true" => true,
                        "false" => false,
                        _ => return Err(bad()),
                    });
                }
                "lode.fsync" => {
                    s.fsync = Some(match value {
                        "always" => TopicFsync::Always,
                        "interval" => TopicFsync::Interval,
                        _ => return Err(bad()),
                    });
                }
                "flush.messages" => {
                    let n: i64 = value.parse().map_err(|_| bad())?;
                    s.fsync = Some(match n {
                        1 => TopicFsync::Always,
                        n if n > 1 => TopicFsync::Interval,
                        _ => return Err(bad()),
                    });
                }
                _ => {}
            }
        }
        Ok(s)
    }
}

/// Metadata from the applied metadata log (combined mode).
async fn metadata_from_log(
    broker: &Arc<Broker>,
    plane: &Arc<ControlPlane>,
    req: MetadataRequest,
) -> MetadataResponse {
    let mut resp = MetadataResponse::default();
    resp.cluster_id = Some(str_bytes(&broker.cluster_id));
    resp.controller_id = BrokerId(plane.controller_id().map_or(-1, |c| c.0));
    let names: Option<Vec<String>> = req.topics.map(|ts| {
        ts.into_iter()
            .filter_map(|t| t.name.map(|n| n.0.to_string()))
            .collect()
    });
    if let Some(names) = &names {
        if req.allow_auto_topic_creation && broker.config.auto_create_topics {
            for name in names {
                let known = plane.read(|s| s.topic_id(name).is_some());
                if !known && crate::topics::valid_name(name) {
                    let reply = plane
                        .request(
                            create_request(
                                name,
                                broker.config.default_partitions,
                                broker.config.default_replication_factor,
                                TopicSettings::default(),
                            ),
                            Duration::from_secs(5),
                        )
                        .await;
                    if let (code, Some(msg)) = controller_answer(reply) {
                        if code != codes::TOPIC_ALREADY_EXISTS {
                            tracing::info!(topic = %name, code, msg, "auto-create refused");
                        }
                    }
                    await_metadata(broker, plane, |s| s.topic_id(name).is_some()).await;
                }
            }
        }
    }
    plane.read(|s| {
        resp.brokers = s
            .brokers()
            .values()
            .filter(|b| !b.fenced)
            .map(|b| {
                let mut mb = MetadataResponseBroker::default();
                mb.node_id = BrokerId(b.id.0);
                mb.host = str_bytes(&b.host);
                mb.port = i32::from(b.port);
                mb
            })
            .collect();
        let names = names
            .clone()
            .unwrap_or_else(|| s.topics().values().map(|t| t.name.clone()).collect());
        for name in names {
            let mut t = MetadataResponseTopic::default();
            t.name = Some(TopicName(str_bytes(&name)));
            t.is_internal = name == crate::groups::OFFSETS_TOPIC;
            match s.topic_id(&name).and_then(|id| s.topic(id)) {
                None => {
                    t.error_code = missing_topic_code(&name);
                }
                Some(topic) => {
                    t.topic_id = uuid::Uuid::from_u128(topic.id.0);
                    t.partitions = topic
                        .partitions
                        .iter()
                        .map(|(index, p)| {
                            let mut mp = MetadataResponsePartition::default();
                            mp.partition_index = index.0;
                            mp.leader_id = BrokerId(p.leader.map_or(-1, |l| l.0));
                            if p.leader.is_none() {
                                mp.error_code = codes::LEADER_NOT_AVAILABLE;
                            }
                            // -1 until OffsetForLeaderEpoch exists (see above).
                            mp.leader_epoch = -1;
                            mp.replica_nodes = p.replicas.iter().map(|r| BrokerId(r.0)).collect();
                            mp.isr_nodes = p.isr.iter().map(|r| BrokerId(r.0)).collect();
                            mp
                        })
                        .collect();
                }
            }
            resp.topics.push(t);
        }
    });
    resp
}

/// Creates a topic through the active controller (combined mode), then waits until this
/// broker has applied it, so the client's next Metadata here shows it.
async fn create_through_controller(
    broker: &Arc<Broker>,
    plane: &Arc<ControlPlane>,
    new: &NewTopic<'_>,
    validate_only: bool,
    timeout: Duration,
) -> Created {
    let NewTopic {
        name,
        partitions,
        rf,
        settings,
    } = *new;
    if !crate::topics::valid_name(name) {
        return (codes::INVALID_TOPIC_EXCEPTION, None, None);
    }
    if validate_only {
        let code = if plane.read(|s| s.topic_id(name).is_some()) {
            codes::TOPIC_ALREADY_EXISTS
        } else {
            codes::NONE
        };
        return (code, None, None);
    }
    let (code, msg) = controller_answer(
        plane
            .request(create_request(name, partitions, rf, settings), timeout)
            .await,
    );
    if code != codes::NONE {
        return (code, msg, None);
    }
    await_metadata(broker, plane, |s| s.topic_id(name).is_some()).await;
    let id = plane
        .read(|s| s.topic_id(name))
        .map(|id| uuid::Uuid::from_u128(id.0));
    (code, msg, id)
}

#[cfg(test)]
mod topic_settings_tests {
    use super::{TopicFsync, TopicSettings};

    #[test]
    fn known_configs_are_read_and_bad_values_refused() {
        let s = TopicSettings::parse([
            ("min.insync.replicas", Some("2")),
            ("unclean.leader.election.enable", Some("true")),
            ("lode.fsync", Some("interval")),
            ("retention.ms", Some("1000")),
        ])
        .unwrap();
        assert_eq!(s.min_insync_replicas, Some(2));
        assert_eq!(s.unclean_leader_election, Some(true));
        assert_eq!(s.fsync, Some(TopicFsync::Interval));
        let flush = TopicSettings::parse([("flush.messages", Some("1"))]).unwrap();
        assert_eq!(flush.fsync, Some(TopicFsync::Always));
        for bad in [
            ("min.insync.replicas", "0"),
            ("min.insync.replicas", "two"),
            ("lode.fsync", "sometimes"),
            ("unclean.leader.election.enable", "yes"),
            ("flush.messages", "0"),
        ] {
            let err = TopicSettings::parse([(bad.0, Some(bad.1))]).unwrap_err();
            assert!(err.contains(bad.0), "{err}");
        }
    }
}
