//! Consumer-group administration: list, describe, read and set committed offsets (what
//! `lode group` and Kafka's `kafka-consumer-groups.sh` do).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::{
    ConsumerProtocolAssignment, DescribeGroupsRequest, FindCoordinatorRequest, GroupId,
    ListGroupsRequest, OffsetCommitRequest, OffsetFetchRequest, TopicName,
};
use kafka_protocol::protocol::{Decodable, StrBytes};

use crate::{Client, ClientError, Connection};

pub(crate) const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
pub(crate) const COORDINATOR_NOT_AVAILABLE: i16 = 15;
pub(crate) const NOT_COORDINATOR: i16 = 16;

/// While the coordinator is being chosen or loaded.
const COORDINATOR_RETRIABLE: [i16; 3] = [
    COORDINATOR_LOAD_IN_PROGRESS,
    COORDINATOR_NOT_AVAILABLE,
    NOT_COORDINATOR,
];

/// How long to keep asking while the coordinator is being chosen or loaded.
const COORDINATOR_WAIT: Duration = Duration::from_secs(15);

/// A group as ListGroups reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupListing {
    /// The group id.
    pub group_id: String,
    /// `consumer` for consumer groups.
    pub protocol_type: String,
    /// `Empty`, `Stable`, ...
    pub state: String,
}

/// One member of a described group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupMember {
    /// Member id.
    pub member_id: String,
    /// The member's client id.
    pub client_id: String,
    /// Its address as the coordinator saw it.
    pub client_host: String,
    /// Its partitions, if the assignment is a consumer's.
    pub partitions: Vec<(String, i32)>,
}

/// A described group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupDescription {
    /// The group id.
    pub group_id: String,
    /// Its state (`Dead` for a group the coordinator does not know).
    pub state: String,
    /// Protocol type.
    pub protocol_type: String,
    /// The assignor in use.
    pub protocol: String,
    /// Members.
    pub members: Vec<GroupMember>,
}

/// A committed offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupOffset {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// The next offset the group reads.
    pub offset: i64,
    /// The committer's metadata.
    pub metadata: Option<String>,
}

fn broker_error(api: &'static str, code: i16) -> Result<(), ClientError> {
    if code == 0 {
        Ok(())
    } else {
        Err(ClientError::Broker { api, code })
    }
}

/// Decodes a consumer's assignment (ConsumerProtocolAssignment, any version).
pub(crate) fn consumer_partitions(assignment: &[u8]) -> Vec<(String, i32)> {
    if assignment.len() < 2 {
        return Vec::new();
    }
    let version = i16::from_be_bytes([assignment[0], assignment[1]]);
    let mut body = Bytes::copy_from_slice(&assignment[2..]);
    match ConsumerProtocolAssignment::decode(&mut body, version.clamp(0, 3)) {
        Ok(a) => a
            .assigned_partitions
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(move |p| (t.topic.0.to_string(), *p))
            })
            .collect(),
        Err(_) => Vec::new(),
    }
}

impl Client {
    /// A connection to the coordinator of `group`, waiting (bounded) while the cluster
    /// creates the offsets topic or elects its leaders.
    ///
    /// # Errors
    /// The last FindCoordinator error, or IO errors.
    pub async fn coordinator(&self, group: &str) -> Result<Arc<Connection>, ClientError> {
        let clock = lode_env::Clock::system();
        let deadline = clock.now().saturating_add(COORDINATOR_WAIT);
        loop {
            let mut req = FindCoordinatorRequest::default();
            req.key = StrBytes::from_string(group.to_owned());
            req.key_type = 0;
            let resp = self.any_broker().await?.call(&req).await?;
            if resp.error_code == 0 {
                let port = u16::try_from(resp.port).map_err(|_| {
                    ClientError::Protocol(format!("coordinator port {}", resp.port))
                })?;
                let addr = crate::resolve_addr(&format!("{}:{port}", resp.host.as_str())).await?;
                return self.conn(addr).await;
            }
            if !COORDINATOR_RETRIABLE.contains(&resp.error_code) || clock.now() >= deadline {
                return Err(ClientError::Broker {
                    api: "FindCoordinator",
                    code: resp.error_code,
                });
            }
            clock.sleep(Duration::from_millis(200)).await;
        }
    }

    /// Every group of the cluster (each broker lists those it coordinates).
    ///
    /// # Errors
    /// A broker that cannot be reached or refuses.
    pub async fn list_groups(&self) -> Result<Vec<GroupListing>, ClientError> {
        self.metadata(Some(&[])).await?;
        let mut out = Vec::new();
        for (_, addr) in self.brokers().await {
            let resp = self
                .conn(addr)
                .await?
                .call(&ListGroupsRequest::default())
                .await?;
            broker_error("ListGroups", resp.error_code)?;
            out.extend(resp.groups.into_iter().map(|g| GroupListing {
                group_id: g.group_id.0.to_string(),
                protocol_type: g.protocol_type.to_string(),
                state: g.group_state.to_string(),
            }));
        }
        out.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        out.dedup_by(|a, b| a.group_id == b.group_id);
        Ok(out)
    }

    /// Describes `group`: state, protocol, members and their partitions.
    ///
    /// # Errors
    /// FindCoordinator or DescribeGroups errors.
    pub async fn describe_group(&self, group: &str) -> Result<GroupDescription, ClientError> {
        let mut req = DescribeGroupsRequest::default();
        req.groups = vec![GroupId(StrBytes::from_string(group.to_owned()))];
        let resp = self.coordinator(group).await?.call(&req).await?;
        let g = resp
            .groups
            .into_iter()
            .next()
            .ok_or_else(|| ClientError::Protocol("empty DescribeGroups response".into()))?;
        broker_error("DescribeGroups", g.error_code)?;
        let consumer = g.protocol_type.as_str() == "consumer";
        Ok(GroupDescription {
            group_id: g.group_id.0.to_string(),
            state: g.group_state.to_string(),
            protocol_type: g.protocol_type.to_string(),
            protocol: g.protocol_data.to_string(),
            members: g
                .members
                .iter()
                .map(|m| GroupMember {
                    member_id: m.member_id.to_string(),
                    client_id: m.client_id.to_string(),
                    client_host: m.client_host.to_string(),
                    partitions: if consumer {
                        consumer_partitions(&m.member_assignment)
                    } else {
                        Vec::new()
                    },
                })
                .collect(),
        })
    }

    /// Every committed offset of `group`.
    ///
    /// # Errors
    /// FindCoordinator or OffsetFetch errors.
    pub async fn group_offsets(&self, group: &str) -> Result<Vec<GroupOffset>, ClientError> {
        let mut req = OffsetFetchRequest::default();
        req.group_id = GroupId(StrBytes::from_string(group.to_owned()));
        req.topics = None;
        let resp = self.coordinator(group).await?.call(&req).await?;
        broker_error("OffsetFetch", resp.error_code)?;
        let mut out = Vec::new();
        for t in resp.topics {
            for p in t.partitions {
                broker_error("OffsetFetch", p.error_code)?;
                if p.committed_offset >= 0 {
                    out.push(GroupOffset {
                        topic: t.name.0.to_string(),
                        partition: p.partition_index,
                        offset: p.committed_offset,
                        metadata: p.metadata.map(|m| m.to_string()),
                    });
                }
            }
        }
        Ok(out)
    }

    /// Commits `offsets` (topic, partition, next offset) for `group` from outside the
    /// group protocol: the coordinator accepts it only while the group has no members.
    ///
    /// # Errors
    /// FindCoordinator or OffsetCommit errors (UNKNOWN_MEMBER_ID, 25: the group has
    /// members).
    pub async fn commit_group_offsets(
        &self,
        group: &str,
        offsets: &[(String, i32, i64)],
    ) -> Result<(), ClientError> {
        let req = offset_commit_request(group, -1, "", offsets);
        let resp = self.coordinator(group).await?.call(&req).await?;
        for t in resp.topics {
            for p in t.partitions {
                broker_error("OffsetCommit", p.error_code)?;
            }
        }
        Ok(())
    }
}

/// An OffsetCommit of `offsets` (topic, partition, next offset) for `group`, as member
/// `member_id` of `generation` (-1 and an empty id: from outside the group protocol).
pub(crate) fn offset_commit_request(
    group: &str,
    generation: i32,
    member_id: &str,
    offsets: &[(String, i32, i64)],
) -> OffsetCommitRequest {
    let mut req = OffsetCommitRequest::default();
    req.group_id = GroupId(StrBytes::from_string(group.to_owned()));
    req.generation_id_or_member_epoch = generation;
    req.member_id = StrBytes::from_string(member_id.to_owned());
    req.retention_time_ms = -1;
    for (topic, partition, offset) in offsets {
        let mut p = OffsetCommitRequestPartition::default();
        p.partition_index = *partition;
        p.committed_offset = *offset;
        p.committed_leader_epoch = -1;
        p.committed_metadata = Some(StrBytes::from_static_str(""));
        match req.topics.iter_mut().find(|t| t.name.0.as_str() == topic) {
            Some(t) => t.partitions.push(p),
            None => {
                let mut t = OffsetCommitRequestTopic::default();
                t.name = TopicName(StrBytes::from_string(topic.clone()));
                t.partitions = vec![p];
                req.topics.push(t);
            }
        }
    }
    req
}
