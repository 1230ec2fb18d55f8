//! A Kafka-protocol client for lode (and any Kafka broker speaking the same versions):
//! metadata and admin calls, a batching producer, and a consumer by assignment. It reaches
//! the network and the clock only through `lode-env`, so the simulator's workloads use it
//! unchanged.

mod conn;
pub mod consumer;
pub mod groups;
pub mod member;
pub mod producer;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    CreateTopicsRequest, DeleteTopicsRequest, MetadataRequest, MetadataResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use tokio::sync::Mutex;

pub use conn::Connection;
pub use consumer::{Consumer, ConsumerRecord};
pub use member::{GroupError, GroupMember, MemberConfig};
pub use producer::{Delivery, Producer, ProducerConfig, Record, RecordRef};

/// An error of a client operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The connection failed.
    #[error("{addr}: {source}")]
    Io {
        /// The broker.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The broker answered with a Kafka error code.
    #[error("{api} failed with Kafka error {code} ({})", error_name(*code))]
    Broker {
        /// The API.
        api: &'static str,
        /// The Kafka error code.
        code: i16,
    },
    /// The broker does not speak an API this call needs.
    #[error("the broker does not support API key {0}")]
    Unsupported(i16),
    /// A malformed exchange.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A topic or partition the cluster does not know.
    #[error("unknown topic or partition {0}")]
    UnknownPartition(String),
    /// An address that is not `HOST:PORT`, or a name that does not resolve.
    #[error("bad address {0}")]
    BadAddress(String),
    /// The operation did not finish in time.
    #[error("timed out")]
    Timeout,
    /// The producer or consumer was closed.
    #[error("closed")]
    Closed,
}

impl ClientError {
    pub(crate) fn encode(e: impl std::fmt::Display) -> ClientError {
        ClientError::Protocol(format!("encode: {e}"))
    }
    pub(crate) fn decode(e: impl std::fmt::Display) -> ClientError {
        ClientError::Protocol(format!("decode: {e}"))
    }
}

/// A readable name for the Kafka error codes a client meets most.
#[must_use]
pub fn error_name(code: i16) -> &'static str {
    match code {
        0 => "NONE",
        1 => "OFFSET_OUT_OF_RANGE",
        2 => "CORRUPT_MESSAGE",
        3 => "UNKNOWN_TOPIC_OR_PARTITION",
        6 => "NOT_LEADER_OR_FOLLOWER",
        7 => "REQUEST_TIMED_OUT",
        10 => "MESSAGE_TOO_LARGE",
        14 => "COORDINATOR_LOAD_IN_PROGRESS",
        15 => "COORDINATOR_NOT_AVAILABLE",
        16 => "NOT_COORDINATOR",
        17 => "INVALID_TOPIC_EXCEPTION",
        19 => "NOT_ENOUGH_REPLICAS",
        20 => "NOT_ENOUGH_REPLICAS_AFTER_APPEND",
        22 => "ILLEGAL_GENERATION",
        25 => "UNKNOWN_MEMBER_ID",
        26 => "INVALID_SESSION_TIMEOUT",
        27 => "REBALANCE_IN_PROGRESS",
        35 => "UNSUPPORTED_VERSION",
        36 => "TOPIC_ALREADY_EXISTS",
        37 => "INVALID_PARTITIONS",
        38 => "INVALID_REPLICATION_FACTOR",
        45 => "OUT_OF_ORDER_SEQUENCE_NUMBER",
        47 => "INVALID_PRODUCER_EPOCH",
        56 => "KAFKA_STORAGE_ERROR",
        79 => "MEMBER_ID_REQUIRED",
        87 => "INVALID_RECORD",
        _ => "see Kafka's error codes",
    }
}

/// Resolves `HOST:PORT` (an IP literal, or a host name through the resolver: see
/// [`lode_env::net::resolve`]).
///
/// # Errors
/// [`ClientError::BadAddress`], saying why.
pub async fn resolve_addr(s: &str) -> Result<SocketAddr, ClientError> {
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(ClientError::BadAddress(format!("{s:?}: give HOST:PORT")));
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(ClientError::BadAddress(format!("{s:?}: give HOST:PORT")));
    }
    lode_env::net::resolve(s)
        .await
        .map_err(|e| ClientError::BadAddress(format!("{s:?}: {e}")))
}

/// One partition as the cluster describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionInfo {
    /// Index.
    pub index: i32,
    /// Leader broker id (-1: none).
    pub leader: i32,
    /// Replica broker ids.
    pub replicas: Vec<i32>,
    /// In-sync replica broker ids.
    pub isr: Vec<i32>,
}

/// A topic as the cluster describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicInfo {
    /// Name.
    pub name: String,
    /// Partitions, by index.
    pub partitions: Vec<PartitionInfo>,
}

/// A cluster: bootstrap addresses, known brokers, one connection per broker.
pub struct Client {
    bootstrap: Vec<SocketAddr>,
    client_id: String,
    brokers: Mutex<BTreeMap<i32, SocketAddr>>,
    controller: Mutex<Option<i32>>,
    conns: Mutex<BTreeMap<SocketAddr, Arc<Connection>>>,
    topics: Mutex<BTreeMap<String, TopicInfo>>,
}

/// How long one broker may take to answer Metadata before the next one is asked.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

impl Client {
    /// A client for the cluster reachable at `bootstrap` (comma-separated `HOST:PORT`;
    /// names are resolved once, here).
    ///
    /// # Errors
    /// A bad address, or no bootstrap broker answering.
    pub async fn connect(bootstrap: &str, client_id: &str) -> Result<Arc<Client>, ClientError> {
        let mut addrs = Vec::new();
        for s in bootstrap.split(',') {
            addrs.push(resolve_addr(s.trim()).await?);
        }
        let client = Arc::new(Client {
            bootstrap: addrs,
            client_id: client_id.to_owned(),
            brokers: Mutex::new(BTreeMap::new()),
            controller: Mutex::new(None),
            conns: Mutex::new(BTreeMap::new()),
            topics: Mutex::new(BTreeMap::new()),
        });
        client.metadata(Some(&[])).await?;
        Ok(client)
    }

    /// The shared connection to `addr`, opened on first use and again after an error broke
    /// it. Requests from many tasks are pipelined on it.
    pub(crate) async fn conn(&self, addr: SocketAddr) -> Result<Arc<Connection>, ClientError> {
        let mut conns = self.conns.lock().await;
        if let Some(c) = conns.get(&addr).filter(|c| !c.is_broken()) {
            return Ok(Arc::clone(c));
        }
        let c = Arc::new(Connection::connect(addr, &self.client_id).await?);
        conns.insert(addr, Arc::clone(&c));
        Ok(c)
    }

    /// Forgets the connection to `addr` (after an error on it).
    pub(crate) async fn drop_conn(&self, addr: SocketAddr) {
        self.conns.lock().await.remove(&addr);
    }

    /// Any broker: the first known one, else a bootstrap address.
    pub(crate) async fn any_broker(&self) -> Result<Arc<Connection>, ClientError> {
        let known: Vec<SocketAddr> = self.brokers.lock().await.values().copied().collect();
        let mut last = ClientError::Timeout;
        for addr in known.iter().chain(self.bootstrap.iter()) {
            match self.conn(*addr).await {
                Ok(c) => return Ok(c),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Fetches metadata (all topics with `None`; auto-creating named topics if the broker
    /// allows) and refreshes the cache.
    ///
    /// # Errors
    /// When no broker answers.
    pub async fn metadata(&self, topics: Option<&[&str]>) -> Result<Vec<TopicInfo>, ClientError> {
        let mut req = MetadataRequest::default();
        req.topics = topics.map(|ts| {
            ts.iter()
                .map(|t| {
                    let mut m = MetadataRequestTopic::default();
                    m.name = Some(TopicName(StrBytes::from_string((*t).to_owned())));
                    m
                })
                .collect()
        });
        req.allow_auto_topic_creation = true;
        // The bootstrap addresses first (the ones the user gave), then the other brokers
        // known; a broker that does not answer in time is skipped.
        let known: Vec<SocketAddr> = self.brokers.lock().await.values().copied().collect();
        let mut candidates: Vec<SocketAddr> = self.bootstrap.clone();
        candidates.extend(known.into_iter().filter(|a| !self.bootstrap.contains(a)));
        let mut last = ClientError::Timeout;
        let mut answered = None;
        for addr in candidates {
            let conn = match self.conn(addr).await {
                Ok(c) => c,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            match conn.call_within(&req, METADATA_TIMEOUT).await {
                Ok(r) => {
                    answered = Some(r);
                    break;
                }
                Err(e) => {
                    self.drop_conn(addr).await;
                    last = e;
                }
            }
        }
        let Some(resp): Option<MetadataResponse> = answered else {
            return Err(last);
        };
        // Advertised names are resolved on every refresh, before the map is locked; a
        // broker whose name does not resolve is left out until it does.
        let mut live = BTreeMap::new();
        for b in &resp.brokers {
            match resolve_addr(&format!("{}:{}", b.host.as_str(), b.port)).await {
                Ok(addr) => {
                    live.insert(b.node_id.0, addr);
                }
                Err(e) => tracing::warn!(broker = b.node_id.0, error = %e, "broker left out"),
            }
        }
        // The response lists the live brokers: the map is replaced, not merged.
        *self.brokers.lock().await = live;
        *self.controller.lock().await = (resp.controller_id.0 >= 0).then_some(resp.controller_id.0);
        let mut out = Vec::new();
        let mut cache = self.topics.lock().await;
        for t in resp.topics {
            let Some(name) = t.name else { continue };
            if t.error_code != 0 {
                continue;
            }
            let mut partitions: Vec<PartitionInfo> = t
                .partitions
                .iter()
                .map(|p| PartitionInfo {
                    index: p.partition_index,
                    leader: p.leader_id.0,
                    replicas: p.replica_nodes.iter().map(|b| b.0).collect(),
                    isr: p.isr_nodes.iter().map(|b| b.0).collect(),
                })
                .collect();
            partitions.sort_by_key(|p| p.index);
            let info = TopicInfo {
                name: name.0.to_string(),
                partitions,
            };
            cache.insert(info.name.clone(), info.clone());
            out.push(info);
        }
        Ok(out)
    }

    /// What the client knows of `topic`, fetching metadata if it knows nothing.
    ///
    /// # Errors
    /// [`ClientError::UnknownPartition`] if the cluster does not have it.
    pub async fn topic(&self, topic: &str) -> Result<TopicInfo, ClientError> {
        if let Some(t) = self.topics.lock().await.get(topic) {
            return Ok(t.clone());
        }
        self.metadata(Some(&[topic])).await?;
        self.topics
            .lock()
            .await
            .get(topic)
            .cloned()
            .ok_or_else(|| ClientError::UnknownPartition(topic.to_owned()))
    }

    /// The brokers of the last Metadata response: id and address.
    pub async fn brokers(&self) -> Vec<(i32, SocketAddr)> {
        self.brokers
            .lock()
            .await
            .iter()
            .map(|(id, a)| (*id, *a))
            .collect()
    }

    /// The active controller named by the last Metadata response.
    pub async fn controller_id(&self) -> Option<i32> {
        *self.controller.lock().await
    }

    /// How many partitions `topic` has, fetching metadata if the client knows nothing of it.
    ///
    /// # Errors
    /// [`ClientError::UnknownPartition`] if the cluster does not have it.
    pub async fn partition_count(&self, topic: &str) -> Result<usize, ClientError> {
        if let Some(t) = self.topics.lock().await.get(topic) {
            return Ok(t.partitions.len());
        }
        Ok(self.topic(topic).await?.partitions.len())
    }

    /// The connection to the leader of `topic`/`partition`.
    pub(crate) async fn leader(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<Arc<Connection>, ClientError> {
        let t = self.topic(topic).await?;
        let p = t
            .partitions
            .iter()
            .find(|p| p.index == partition)
            .ok_or_else(|| ClientError::UnknownPartition(format!("{topic}-{partition}")))?;
        let addr = self.brokers.lock().await.get(&p.leader).copied();
        let addr = addr.ok_or_else(|| {
            ClientError::UnknownPartition(format!("{topic}-{partition}: no leader"))
        })?;
        self.conn(addr).await
    }

    /// Forgets cached metadata of `topic` (after a leadership error).
    pub(crate) async fn invalidate(&self, topic: &str) {
        self.topics.lock().await.remove(topic);
    }

    /// Creates a topic.
    ///
    /// # Errors
    /// [`ClientError::Broker`] with the broker's error code (36 if it exists).
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
    ) -> Result<(), ClientError> {
        self.create_topic_with(name, partitions, replication_factor, &[])
            .await
    }

    /// Creates a topic with topic configs (`name=value`, e.g. `min.insync.replicas`).
    ///
    /// # Errors
    /// [`ClientError::Broker`] with the broker's error code (36 if it exists, 40 for a
    /// config it refuses).
    pub async fn create_topic_with(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        configs: &[(&str, &str)],
    ) -> Result<(), ClientError> {
        let mut t = CreatableTopic::default();
        t.name = TopicName(StrBytes::from_string(name.to_owned()));
        t.num_partitions = partitions;
        t.replication_factor = replication_factor;
        t.configs = configs
            .iter()
            .map(|(k, v)| {
                let mut c =
                    kafka_protocol::messages::create_topics_request::CreatableTopicConfig::default(
                    );
                c.name = StrBytes::from_string((*k).to_owned());
                c.value = Some(StrBytes::from_string((*v).to_owned()));
                c
            })
            .collect();
        let mut req = CreateTopicsRequest::default();
        req.topics = vec![t];
        req.timeout_ms = 30_000;
        let conn = self.any_broker().await?;
        let resp = conn.call(&req).await?;
        match resp.topics.first().map(|r| r.error_code) {
            Some(0) => Ok(()),
            Some(code) => Err(ClientError::Broker {
                api: "CreateTopics",
                code,
            }),
            None => Err(ClientError::Protocol("empty CreateTopics response".into())),
        }
    }

    /// Deletes a topic.
    ///
    /// # Errors
    /// [`ClientError::Broker`] with the broker's error code (3 if unknown).
    pub async fn delete_topic(&self, name: &str) -> Result<(), ClientError> {
        let mut req = DeleteTopicsRequest::default();
        let tn = TopicName(StrBytes::from_string(name.to_owned()));
        let mut state = DeleteTopicState::default();
        state.name = Some(tn.clone());
        req.topics = vec![state];
        req.topic_names = vec![tn];
        req.timeout_ms = 30_000;
        let conn = self.any_broker().await?;
        let resp = conn.call(&req).await?;
        self.invalidate(name).await;
        match resp.responses.first().map(|r| r.error_code) {
            Some(0) => Ok(()),
            Some(code) => Err(ClientError::Broker {
                api: "DeleteTopics",
                code,
            }),
            None => Err(ClientError::Protocol("empty DeleteTopics response".into())),
        }
    }
}
