//! A member of a consumer group (Kafka's classic protocol, eager rebalancing, the `range`
//! assignor): join, sync, heartbeat, commit, leave. The caller drives it: it fetches with a
//! [`Consumer`](crate::Consumer) from the partitions [`GroupMember::join`] hands it,
//! calls [`GroupMember::heartbeat`] more often than the session timeout, and joins again
//! when a heartbeat or commit says the group moved on ([`GroupError::Rejoin`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    ConsumerProtocolAssignment, ConsumerProtocolSubscription, GroupId, HeartbeatRequest,
    JoinGroupRequest, LeaveGroupRequest, OffsetFetchRequest, SyncGroupRequest, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use crate::groups::{
    offset_commit_request, COORDINATOR_LOAD_IN_PROGRESS, COORDINATOR_NOT_AVAILABLE, NOT_COORDINATOR,
};
use crate::{Client, ClientError, Connection};

const ILLEGAL_GENERATION: i16 = 22;
const UNKNOWN_MEMBER_ID: i16 = 25;
const REBALANCE_IN_PROGRESS: i16 = 27;
const MEMBER_ID_REQUIRED: i16 = 79;

/// The version of the consumer protocol's subscription and assignment this member writes.
const CONSUMER_PROTOCOL_VERSION: i16 = 0;

/// Join rounds (JoinGroup then SyncGroup) one [`GroupMember::join`] tries at most.
const JOIN_ROUNDS_MAX: u32 = 20;

/// A group member's settings.
#[derive(Clone, Debug)]
pub struct MemberConfig {
    /// The coordinator removes a member it has not heard from for this long.
    pub session_timeout: Duration,
    /// How long the coordinator waits for every member to join a rebalance.
    pub rebalance_timeout: Duration,
}

impl Default for MemberConfig {
    fn default() -> MemberConfig {
        // Kafka's consumer defaults (session.timeout.ms, max.poll.interval.ms is 5 min;
        // a shorter rebalance bound suits a client that joins from its own loop).
        MemberConfig {
            session_timeout: Duration::from_secs(45),
            rebalance_timeout: Duration::from_secs(60),
        }
    }
}

/// Why a group operation did not succeed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GroupError {
    /// The group moved on (a rebalance started, this member's generation is over, or the
    /// coordinator no longer knows it): join again. Nothing was applied.
    #[error("rejoin the group (Kafka error {0})")]
    Rejoin(i16),
    /// The coordinator moved or is loading: the outcome of a commit is unknown; the next
    /// call finds the coordinator again.
    #[error("coordinator unavailable (Kafka error {0})")]
    Coordinator(i16),
    /// Another error.
    #[error(transparent)]
    Client(#[from] ClientError),
}

impl GroupError {
    /// Whether the operation was certainly not applied (a commit refused by the group's
    /// fencing; a timed-out or coordinator error leaves a commit's outcome unknown).
    #[must_use]
    pub fn definitely_not_applied(&self) -> bool {
        matches!(self, GroupError::Rejoin(_))
    }
}

fn classify(api: &'static str, code: i16) -> Result<(), GroupError> {
    match code {
        0 => Ok(()),
        ILLEGAL_GENERATION | UNKNOWN_MEMBER_ID | REBALANCE_IN_PROGRESS => {
            Err(GroupError::Rejoin(code))
        }
        COORDINATOR_LOAD_IN_PROGRESS | COORDINATOR_NOT_AVAILABLE | NOT_COORDINATOR => {
            Err(GroupError::Coordinator(code))
        }
        _ => Err(GroupError::Client(ClientError::Broker { api, code })),
    }
}

/// See the module documentation.
pub struct GroupMember {
    client: Arc<Client>,
    group: String,
    topics: Vec<String>,
    config: MemberConfig,
    coordinator: Option<Arc<Connection>>,
    member_id: String,
    generation: i32,
    assignment: Vec<(String, i32)>,
}

impl GroupMember {
    /// A member of `group` subscribing to `topics`, not joined yet.
    #[must_use]
    pub fn new(
        client: Arc<Client>,
        group: &str,
        topics: &[&str],
        config: MemberConfig,
    ) -> GroupMember {
        GroupMember {
            client,
            group: group.to_owned(),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            config,
            coordinator: None,
            member_id: String::new(),
            generation: -1,
            assignment: Vec::new(),
        }
    }

    /// The member id the coordinator gave (empty before the first join).
    #[must_use]
    pub fn member_id(&self) -> &str {
        &self.member_id
    }

    /// The generation joined last (-1 before).
    #[must_use]
    pub fn generation(&self) -> i32 {
        self.generation
    }

    /// The partitions of the last completed join.
    #[must_use]
    pub fn assignment(&self) -> &[(String, i32)] {
        &self.assignment
    }

    async fn coordinator(&mut self) -> Result<Arc<Connection>, ClientError> {
        match &self.coordinator {
            Some(c) if !c.is_broken() => Ok(Arc::clone(c)),
            _ => {
                let c = self.client.coordinator(&self.group).await?;
                self.coordinator = Some(Arc::clone(&c));
                Ok(c)
            }
        }
    }

    /// Forgets the coordinator after an error that says it moved.
    fn on_error(&mut self, e: &GroupError) {
        match e {
            GroupError::Coordinator(_) | GroupError::Client(_) => self.coordinator = None,
            GroupError::Rejoin(UNKNOWN_MEMBER_ID) => self.member_id.clear(),
            GroupError::Rejoin(_) => {}
        }
    }

    /// Joins (or rejoins) the group and returns this member's partitions. Retries through
    /// coordinator moves and rebalances, up to a bound.
    ///
    /// # Errors
    /// The last error once the bound is reached, or an error no retry can fix.
    pub async fn join(&mut self) -> Result<Vec<(String, i32)>, GroupError> {
        self.assignment.clear();
        let clock = lode_env::Clock::system();
        let mut last = None;
        for _ in 0..JOIN_ROUNDS_MAX {
            match self.join_once().await {
                Ok(assignment) => {
                    self.assignment.clone_from(&assignment);
                    return Ok(assignment);
                }
                Err(e) => {
                    self.on_error(&e);
                    let pause = match &e {
                        // A fresh member id: join again at once.
                        GroupError::Rejoin(MEMBER_ID_REQUIRED | REBALANCE_IN_PROGRESS) => 0,
                        GroupError::Rejoin(_) => 50,
                        _ => 200,
                    };
                    if !matches!(e, GroupError::Rejoin(_) | GroupError::Coordinator(_))
                        && !matches!(e, GroupError::Client(ClientError::Io { .. }))
                        && !matches!(e, GroupError::Client(ClientError::Timeout))
                    {
                        return Err(e);
                    }
                    last = Some(e);
                    clock.sleep(Duration::from_millis(pause)).await;
                }
            }
        }
        Err(last.unwrap_or(GroupError::Coordinator(COORDINATOR_NOT_AVAILABLE)))
    }

    async fn join_once(&mut self) -> Result<Vec<(String, i32)>, GroupError> {
        let conn = self.coordinator().await?;
        let mut sub = ConsumerProtocolSubscription::default();
        sub.topics = self
            .topics
            .iter()
            .map(|t| StrBytes::from_string(t.clone()))
            .collect();
        let mut protocol = JoinGroupRequestProtocol::default();
        protocol.name = StrBytes::from_static_str("range");
        protocol.metadata = versioned(&sub)?;
        let mut req = JoinGroupRequest::default();
        req.group_id = GroupId(StrBytes::from_string(self.group.clone()));
        req.session_timeout_ms = millis(self.config.session_timeout);
        req.rebalance_timeout_ms = millis(self.config.rebalance_timeout);
        req.member_id = StrBytes::from_string(self.member_id.clone());
        req.protocol_type = StrBytes::from_static_str("consumer");
        req.protocols = vec![protocol];
        // The coordinator answers once every member joined: up to the rebalance timeout.
        let wait = self.config.rebalance_timeout + Duration::from_secs(5);
        let resp = conn.call_within(&req, wait).await?;
        if resp.error_code == MEMBER_ID_REQUIRED {
            self.member_id = resp.member_id.to_string();
            return Err(GroupError::Rejoin(MEMBER_ID_REQUIRED));
        }
        classify("JoinGroup", resp.error_code)?;
        self.member_id = resp.member_id.to_string();
        self.generation = resp.generation_id;
        let assignments = if resp.leader == resp.member_id {
            let mut subscriptions = Vec::new();
            for m in &resp.members {
                subscriptions.push((m.member_id.to_string(), subscribed_topics(&m.metadata)?));
            }
            let mut counts = BTreeMap::new();
            for t in subscriptions.iter().flat_map(|(_, ts)| ts) {
                if !counts.contains_key(t) {
                    counts.insert(t.clone(), self.client.partition_count(t).await?);
                }
            }
            range_assign(&subscriptions, &counts)
                .into_iter()
                .map(|(member, parts)| {
                    let mut a = SyncGroupRequestAssignment::default();
                    a.member_id = StrBytes::from_string(member);
                    a.assignment = encode_assignment(&parts)?;
                    Ok(a)
                })
                .collect::<Result<Vec<_>, ClientError>>()?
        } else {
            Vec::new()
        };
        let mut sync = SyncGroupRequest::default();
        sync.group_id = req.group_id.clone();
        sync.generation_id = self.generation;
        sync.member_id = resp.member_id.clone();
        sync.protocol_type = Some(StrBytes::from_static_str("consumer"));
        sync.protocol_name = resp.protocol_name.clone();
        sync.assignments = assignments;
        let resp = conn.call_within(&sync, wait).await?;
        classify("SyncGroup", resp.error_code)?;
        Ok(crate::groups::consumer_partitions(&resp.assignment))
    }

    /// Tells the coordinator this member is alive.
    ///
    /// # Errors
    /// [`GroupError::Rejoin`] when the group rebalances or moved on without this member.
    pub async fn heartbeat(&mut self) -> Result<(), GroupError> {
        let r = self.heartbeat_once().await;
        if let Err(e) = &r {
            self.on_error(e);
        }
        r
    }

    async fn heartbeat_once(&mut self) -> Result<(), GroupError> {
        let conn = self.coordinator().await?;
        let mut req = HeartbeatRequest::default();
        req.group_id = GroupId(StrBytes::from_string(self.group.clone()));
        req.generation_id = self.generation;
        req.member_id = StrBytes::from_string(self.member_id.clone());
        let resp = conn.call_within(&req, self.config.session_timeout).await?;
        classify("Heartbeat", resp.error_code)
    }

    /// The group's committed offsets of `partitions` (`None`: nothing committed).
    ///
    /// # Errors
    /// Coordinator and connection errors.
    pub async fn committed(
        &mut self,
        partitions: &[(String, i32)],
    ) -> Result<Vec<((String, i32), Option<i64>)>, GroupError> {
        let r = self.committed_once(partitions).await;
        if let Err(e) = &r {
            self.on_error(e);
        }
        r
    }

    async fn committed_once(
        &mut self,
        partitions: &[(String, i32)],
    ) -> Result<Vec<((String, i32), Option<i64>)>, GroupError> {
        let conn = self.coordinator().await?;
        let mut topics: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
        for (t, p) in partitions {
            topics.entry(t).or_default().push(*p);
        }
        let mut req = OffsetFetchRequest::default();
        req.group_id = GroupId(StrBytes::from_string(self.group.clone()));
        req.topics = Some(
            topics
                .into_iter()
                .map(|(t, ps)| {
                    let mut rt = OffsetFetchRequestTopic::default();
                    rt.name = TopicName(StrBytes::from_string(t.to_owned()));
                    rt.partition_indexes = ps;
                    rt
                })
                .collect(),
        );
        let resp = conn.call(&req).await?;
        classify("OffsetFetch", resp.error_code)?;
        let mut out = Vec::new();
        for t in resp.topics {
            for p in t.partitions {
                classify("OffsetFetch", p.error_code)?;
                out.push((
                    (t.name.0.to_string(), p.partition_index),
                    (p.committed_offset >= 0).then_some(p.committed_offset),
                ));
            }
        }
        Ok(out)
    }

    /// Commits `offsets` (topic, partition, next offset to read) as this member of its
    /// generation; answered once the commit is replicated.
    ///
    /// # Errors
    /// [`GroupError::Rejoin`]: refused, not applied. Others: the outcome is unknown.
    pub async fn commit(&mut self, offsets: &[(String, i32, i64)]) -> Result<(), GroupError> {
        let r = self.commit_once(offsets).await;
        if let Err(e) = &r {
            self.on_error(e);
        }
        r
    }

    async fn commit_once(&mut self, offsets: &[(String, i32, i64)]) -> Result<(), GroupError> {
        let conn = self.coordinator().await?;
        let req = offset_commit_request(&self.group, self.generation, &self.member_id, offsets);
        let resp = conn.call(&req).await?;
        for t in resp.topics {
            for p in t.partitions {
                classify("OffsetCommit", p.error_code)?;
            }
        }
        Ok(())
    }

    /// Leaves the group (its partitions go to the others at once, not after the session
    /// timeout).
    ///
    /// # Errors
    /// Coordinator and connection errors.
    pub async fn leave(&mut self) -> Result<(), GroupError> {
        let conn = self.coordinator().await?;
        let mut req = LeaveGroupRequest::default();
        req.group_id = GroupId(StrBytes::from_string(self.group.clone()));
        // v0-2 name the member; v3+ list members.
        if conn.version_of::<LeaveGroupRequest>()? >= 3 {
            let mut m = MemberIdentity::default();
            m.member_id = StrBytes::from_string(self.member_id.clone());
            req.members = vec![m];
        } else {
            req.member_id = StrBytes::from_string(self.member_id.clone());
        }
        let resp = conn.call(&req).await?;
        self.member_id.clear();
        self.generation = -1;
        self.assignment.clear();
        classify("LeaveGroup", resp.error_code)?;
        for m in resp.members {
            classify("LeaveGroup", m.error_code)?;
        }
        Ok(())
    }
}

fn millis(d: Duration) -> i32 {
    i32::try_from(d.as_millis()).unwrap_or(i32::MAX)
}

/// A consumer-protocol message with its version prefix.
fn versioned<M: Encodable>(m: &M) -> Result<Bytes, ClientError> {
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&CONSUMER_PROTOCOL_VERSION.to_be_bytes());
    m.encode(&mut buf, CONSUMER_PROTOCOL_VERSION)
        .map_err(ClientError::encode)?;
    Ok(buf.freeze())
}

/// The topics of a member's subscription (ConsumerProtocolSubscription, any version).
fn subscribed_topics(metadata: &[u8]) -> Result<Vec<String>, ClientError> {
    if metadata.len() < 2 {
        return Err(ClientError::Protocol("short subscription".into()));
    }
    let version = i16::from_be_bytes([metadata[0], metadata[1]]);
    let mut body = Bytes::copy_from_slice(&metadata[2..]);
    let sub = ConsumerProtocolSubscription::decode(&mut body, version.clamp(0, 3))
        .map_err(ClientError::decode)?;
    Ok(sub.topics.iter().map(ToString::to_string).collect())
}

fn encode_assignment(parts: &[(String, i32)]) -> Result<Bytes, ClientError> {
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (t, p) in parts {
        by_topic.entry(t).or_default().push(*p);
    }
    let mut a = ConsumerProtocolAssignment::default();
    a.assigned_partitions = by_topic
        .into_iter()
        .map(|(t, ps)| {
            let mut tp = TopicPartition::default();
            tp.topic = TopicName(StrBytes::from_string(t.to_owned()));
            tp.partitions = ps;
            tp
        })
        .collect();
    versioned(&a)
}

/// Kafka's `range` assignor: per topic, its subscribers in member-id order take
/// consecutive ranges of partitions, the first `partitions % members` one more.
#[must_use]
pub fn range_assign(
    subscriptions: &[(String, Vec<String>)],
    partition_counts: &BTreeMap<String, usize>,
) -> BTreeMap<String, Vec<(String, i32)>> {
    let mut out: BTreeMap<String, Vec<(String, i32)>> = subscriptions
        .iter()
        .map(|(m, _)| (m.clone(), Vec::new()))
        .collect();
    for (topic, count) in partition_counts {
        let mut members: Vec<&String> = subscriptions
            .iter()
            .filter(|(_, ts)| ts.contains(topic))
            .map(|(m, _)| m)
            .collect();
        members.sort();
        if members.is_empty() {
            continue;
        }
        let (each, extra) = (count / members.len(), count % members.len());
        let mut next = 0;
        for (i, m) in members.into_iter().enumerate() {
            let n = each + usize::from(i < extra);
            let parts = out.entry(m.clone()).or_default();
            for p in next..next + n {
                parts.push((topic.clone(), i32::try_from(p).unwrap_or(i32::MAX)));
            }
            next += n;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subs(members: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
        members
            .iter()
            .map(|(m, ts)| {
                (
                    (*m).to_owned(),
                    ts.iter().map(|t| (*t).to_owned()).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn range_gives_the_first_members_one_more() {
        let counts = BTreeMap::from([("t".to_owned(), 5), ("u".to_owned(), 1)]);
        let a = range_assign(&subs(&[("b", &["t"]), ("a", &["t", "u"])]), &counts);
        let t = |ps: &[i32]| ps.iter().map(|p| ("t".to_owned(), *p)).collect::<Vec<_>>();
        let mut a_parts = t(&[0, 1, 2]);
        a_parts.push(("u".to_owned(), 0));
        assert_eq!(a["a"], a_parts);
        assert_eq!(a["b"], t(&[3, 4]));
    }

    #[test]
    fn range_leaves_extra_members_empty() {
        let counts = BTreeMap::from([("t".to_owned(), 1)]);
        let a = range_assign(&subs(&[("a", &["t"]), ("b", &["t"])]), &counts);
        assert_eq!(a["a"], vec![("t".to_owned(), 0)]);
        assert!(a["b"].is_empty());
    }

    #[test]
    fn assignments_and_subscriptions_round_trip() {
        let parts = vec![
            ("t".to_owned(), 2),
            ("t".to_owned(), 0),
            ("u".to_owned(), 1),
        ];
        let bytes = encode_assignment(&parts).unwrap();
        let mut back = crate::groups::consumer_partitions(&bytes);
        back.sort();
        let mut want = parts.clone();
        want.sort();
        assert_eq!(back, want);
        let mut sub = ConsumerProtocolSubscription::default();
        sub.topics = vec![StrBytes::from_static_str("t")];
        let bytes = versioned(&sub).unwrap();
        assert_eq!(subscribed_topics(&bytes).unwrap(), vec!["t".to_owned()]);
        assert!(subscribed_topics(&[0]).is_err());
    }
}
