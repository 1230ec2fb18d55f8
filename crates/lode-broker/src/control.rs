//! The control plane of one node in combined mode: the metadata log (through [`Quorum`]),
//! the metadata state every node applies, and, on the node that leads the quorum, the
//! active controller.
//!
//! - Entries of the metadata log carry a batch of [`MetadataRecord`]s: one controller
//!   decision, applied together. A record's metadata offset is `(raft offset << 16) | index
//!   in its batch`, so offsets strictly increase and a broker epoch (the offset of its
//!   registration) is unique.
//! - The active controller keeps a working copy of the state with every record it has
//!   proposed applied (Kafka's QuorumController does the same), decides each request on it
//!   with [`Controller`], proposes the records and answers once they are committed and
//!   applied here. It activates only once it has applied its whole log, marker included, so
//!   it decides from everything committed before its epoch.
//! - A request reaches the active controller from any node: locally, or forwarded over the
//!   controller connections with a request id; a node that is not the leader answers
//!   NOT_CONTROLLER and the caller retries at the leader it learns of.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use lode_core::metadata::{
    AlterPartitionRequest, BrokerEpoch, BrokerRegistrationRequest, Controller, ControllerConfig,
    CreateTopicRequest, HeartbeatRequest, MetadataRecord, MetadataState, PRODUCER_ID_BLOCK,
};
use lode_core::raft::Role;
use lode_env::sync::watch;
use lode_env::{Clock, Dir};
use lode_proto::{BrokerId, Offset};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, Mutex};

use crate::quorum::{Committed, Quorum, QuorumConfig, QuorumError};

/// Kafka's NOT_CONTROLLER.
pub const NOT_CONTROLLER: i16 = 41;
/// Kafka's REQUEST_TIMED_OUT.
pub const REQUEST_TIMED_OUT: i16 = 7;
/// Requests queued for the active controller.
const REQUEST_QUEUE_MAX: usize = 1024;
/// Records of one decision, at most (the low 16 bits of a metadata offset).
const BATCH_RECORDS_MAX: usize = 1 << 16;
/// Epochs of the most recently applied entries kept, to tell a controller whether the entry
/// committed at its offset is the one it proposed.
const RECENT_ENTRIES_MAX: usize = 4096;

/// The epochs of recently applied entries, by raft offset.
type Recent = Arc<std::sync::Mutex<BTreeMap<Offset, lode_proto::Epoch>>>;

/// A request to the active controller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlRequest {
    /// BrokerRegistration.
    Register(BrokerRegistrationRequest),
    /// BrokerHeartbeat.
    Heartbeat(HeartbeatRequest),
    /// CreateTopics, one topic.
    CreateTopic(CreateTopicRequest),
    /// DeleteTopics, one topic.
    DeleteTopic(String),
    /// AlterPartition, one partition.
    AlterPartition(AlterPartitionRequest),
    /// AllocateProducerIds: the next block of producer ids for this broker.
    AllocateProducerIds {
        /// The broker.
        broker: BrokerId,
        /// Its current epoch.
        epoch: BrokerEpoch,
    },
}

/// The active controller's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlReply {
    /// Done and committed; a registration returns the broker's epoch.
    Done {
        /// The broker epoch granted by a registration.
        broker_epoch: Option<BrokerEpoch>,
    },
    /// A block of producer ids, committed: `start..end` are the broker's alone.
    ProducerIds {
        /// The first id of the block.
        start: i64,
        /// The end (exclusive) of the block.
        end: i64,
    },
    /// Refused with a Kafka error code.
    Refused {
        /// The code.
        code: i16,
        /// Why.
        message: String,
    },
}

impl ControlReply {
    fn refused(code: i16, message: impl Into<String>) -> ControlReply {
        ControlReply::Refused {
            code,
            message: message.into(),
        }
    }
}

/// A follower's fetch from a partition leader (replication), over the controller
/// connections.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaFetch {
    /// The topic.
    pub topic: String,
    /// The id of the follower's topic of that name (Kafka's Fetch v13, KIP-516): a leader
    /// that holds another topic of the name (deleted and created again, and one of the
    /// two brokers not yet caught up) refuses the fetch instead of serving the other
    /// topic's batches.
    pub topic_id: u128,
    /// The partition.
    pub partition: i32,
    /// The leader epoch the follower follows.
    pub leader_epoch: lode_proto::Epoch,
    /// The follower's log end offset (synced: this is its acknowledgement).
    pub fetch_offset: Offset,
    /// The epoch of the follower's last batch.
    pub last_fetched_epoch: lode_proto::Epoch,
    /// Bytes of batches wanted, at most (the first batch always comes whole).
    pub max_bytes: u32,
    /// The follower's broker epoch (its registration), as in Kafka's Fetch v15 (KIP-903):
    /// the leader ignores a fetch from an earlier registration, and names this one when it
    /// proposes the follower into the ISR.
    pub broker_epoch: BrokerEpoch,
}

/// The leader's answer to a [`ReplicaFetch`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicaFetchReply {
    /// Batches from the fetch offset (maybe none), and the leader's high watermark.
    Records {
        /// The leader's high watermark.
        high_watermark: Offset,
        /// Whole batches, as stored.
        #[serde(with = "lode_proto::byte_vec")]
        records: Vec<u8>,
    },
    /// The follower's log diverges: truncate to at most `end_offset` (and to its own end
    /// of `epoch` if smaller), then fetch again.
    Diverging {
        /// The epoch.
        epoch: lode_proto::Epoch,
        /// Where it ends on the leader.
        end_offset: Offset,
    },
    /// A Kafka error code (NOT_LEADER_OR_FOLLOWER, FENCED_LEADER_EPOCH, ...).
    Error(i16),
}

#[derive(Serialize, Deserialize)]
enum ControlMsg {
    Request { id: u64, req: ControlRequest },
    Reply { id: u64, reply: ControlReply },
    Fetch { id: u64, req: ReplicaFetch },
    FetchReply { id: u64, reply: ReplicaFetchReply },
}

/// Replica fetches queued for the broker's replication service.
const FETCH_QUEUE_MAX: usize = 4096;

/// A replica fetch waiting for the leader's service: from whom, its id, the request.
pub type IncomingFetch = (BrokerId, u64, ReplicaFetch);

/// Where a request's answer goes.
enum ReplyTo {
    Local(oneshot::Sender<ControlReply>),
    Remote(BrokerId, u64),
}

/// The metadata offset of record `index` in the batch at raft offset `raft`.
#[must_use]
pub fn metadata_offset(raft: Offset, index: usize) -> Offset {
    Offset((raft.0 << 16) | index as i64)
}

/// One node's control plane.
pub struct ControlPlane {
    me: BrokerId,
    quorum: Arc<Quorum>,
    state: Arc<RwLock<MetadataState>>,
    /// The raft offset below which every entry is applied to `state`.
    applied: watch::Receiver<Offset>,
    requests: mpsc::Sender<(ControlRequest, ReplyTo)>,
    pending: Arc<Mutex<BTreeMap<u64, oneshot::Sender<ControlReply>>>>,
    fetch_pending: Mutex<BTreeMap<u64, oneshot::Sender<ReplicaFetchReply>>>,
    fetches_in: mpsc::Sender<IncomingFetch>,
    fetches_out: std::sync::Mutex<Option<mpsc::Receiver<IncomingFetch>>>,
    next_id: AtomicU64,
    clock: Clock,
}

impl ControlPlane {
    /// The port of this node's controller listener, which brokers replicate over.
    #[must_use]
    pub fn control_port(&self) -> u16 {
        self.quorum.local_addr.port()
    }

    /// Starts the quorum member, the applier and the controller task.
    ///
    /// # Errors
    /// When the quorum cannot start.
    pub async fn start(
        quorum_config: QuorumConfig,
        controller_config: ControllerConfig,
        dir: Dir,
        clock: Clock,
    ) -> Result<Arc<ControlPlane>, QuorumError> {
        let me = quorum_config.node;
        let snapshot_entries = quorum_config.snapshot_entries.max(1);
        let (app_tx, app_rx) = mpsc::channel(REQUEST_QUEUE_MAX);
        let (quorum, committed) =
            Quorum::start(quorum_config, dir, clock.clone(), Some(app_tx)).await?;
        let quorum = Arc::new(quorum);
        let state = Arc::new(RwLock::new(MetadataState::new()));
        let (applied_tx, applied_rx) = watch::channel(Offset(0));
        let recent: Recent = Arc::default();
        let (req_tx, req_rx) = mpsc::channel(REQUEST_QUEUE_MAX);
        let (fetch_tx, fetch_rx) = mpsc::channel(FETCH_QUEUE_MAX);
        let plane = Arc::new(ControlPlane {
            me,
            quorum: Arc::clone(&quorum),
            state: Arc::clone(&state),
            applied: applied_rx.clone(),
            requests: req_tx,
            pending: Arc::default(),
            fetch_pending: Mutex::default(),
            fetches_in: fetch_tx,
            fetches_out: std::sync::Mutex::new(Some(fetch_rx)),
            // Ids start at a random point per process: a reply is routed by broker id, not
            // by connection, so one to a request of this broker's previous process (sent
            // before a crash, delivered after the restart) must not find a pending request
            // of this one under the same id. Counting from 1 in every process, a replica
            // fetch answer meant for the old process (a diverging epoch) truncated the new
            // one's log below its high watermark (seed 8286 of the swarm).
            next_id: AtomicU64::new(lode_env::rng::seed_u64()),
            clock: clock.clone(),
        });
        lode_env::task::spawn(apply_loop(
            me,
            committed,
            Arc::clone(&state),
            applied_tx,
            Arc::clone(&recent),
            Snapshotter {
                quorum: Arc::clone(&quorum),
                every: snapshot_entries,
                since: 0,
            },
        ));
        lode_env::task::spawn(inbound_loop(Arc::clone(&plane), app_rx));
        let active = Active {
            me,
            quorum,
            state,
            applied: applied_rx,
            controller: Controller::new(controller_config),
            clock,
            recent,
        };
        lode_env::task::spawn(active.run(req_rx));
        Ok(plane)
    }

    /// Reads the applied metadata (without holding it across an await).
    pub fn read<R>(&self, f: impl FnOnce(&MetadataState) -> R) -> R {
        f(&self
            .state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// The active controller, as far as this node knows.
    #[must_use]
    pub fn controller_id(&self) -> Option<BrokerId> {
        self.quorum.status().leader
    }

    /// The replica fetches other brokers send this one, for its replication service (once).
    pub fn take_fetches(&self) -> Option<mpsc::Receiver<IncomingFetch>> {
        self.fetches_out
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    /// Sends a replica fetch to `leader` and waits (bounded) for its answer.
    pub async fn fetch(
        &self,
        leader: BrokerId,
        req: ReplicaFetch,
        timeout: Duration,
    ) -> Option<ReplicaFetchReply> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.fetch_pending.lock().await.insert(id, tx);
        if let Ok(bytes) = postcard::to_allocvec(&ControlMsg::Fetch { id, req }) {
            self.quorum.send_app(leader, bytes).await;
        }
        let r = self
            .clock
            .timeout(timeout, rx)
            .await
            .ok()
            .and_then(Result::ok);
        self.fetch_pending.lock().await.remove(&id);
        r
    }

    /// Answers replica fetch `id` from `to`.
    pub async fn reply_fetch(&self, to: BrokerId, id: u64, reply: ReplicaFetchReply) {
        if let Ok(bytes) = postcard::to_allocvec(&ControlMsg::FetchReply { id, reply }) {
            self.quorum.send_app(to, bytes).await;
        }
    }

    /// This node's id.
    #[must_use]
    pub fn node(&self) -> BrokerId {
        self.me
    }

    /// A receiver of the applied raft offset, to wake on metadata changes.
    #[must_use]
    pub fn quorum_applied(&self) -> watch::Receiver<Offset> {
        self.applied.clone()
    }

    /// The raft offset below which everything is applied here.
    #[must_use]
    pub fn applied_offset(&self) -> Offset {
        *self.applied.borrow()
    }

    /// The quorum member.
    #[must_use]
    pub fn quorum(&self) -> &Quorum {
        &self.quorum
    }

    /// Sends `req` to the active controller (wherever it is) and waits for its committed
    /// answer, retrying at the current leader until `timeout`.
    pub async fn request(&self, req: ControlRequest, timeout: Duration) -> ControlReply {
        let deadline = self.clock.now().saturating_add(timeout);
        loop {
            let left = deadline.saturating_since(self.clock.now());
            if left.is_zero() {
                return ControlReply::refused(REQUEST_TIMED_OUT, "no controller answered in time");
            }
            let reply = match self.controller_id() {
                None => None,
                Some(leader) if leader == self.me => {
                    let (tx, rx) = oneshot::channel();
                    if self
                        .requests
                        .send((req.clone(), ReplyTo::Local(tx)))
                        .await
                        .is_err()
                    {
                        return ControlReply::refused(NOT_CONTROLLER, "controller stopped");
                    }
                    self.clock.timeout(left, rx).await.ok().and_then(Result::ok)
                }
                Some(leader) => {
                    let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                    let (tx, rx) = oneshot::channel();
                    self.pending.lock().await.insert(id, tx);
                    if let Ok(bytes) = postcard::to_allocvec(&ControlMsg::Request {
                        id,
                        req: req.clone(),
                    }) {
                        self.quorum.send_app(leader, bytes).await;
                    }
                    let wait = left.min(Duration::from_secs(2));
                    let r = self.clock.timeout(wait, rx).await.ok().and_then(Result::ok);
                    self.pending.lock().await.remove(&id);
                    r
                }
            };
            match reply {
                Some(ControlReply::Refused { code, .. }) if code == NOT_CONTROLLER => {}
                Some(r) => return r,
                None => {}
            }
            // No leader known, or it moved: look again shortly.
            self.clock.sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Snapshots the metadata state every so many applied entries and lets the quorum drop the
/// log below it.
struct Snapshotter {
    quorum: Arc<Quorum>,
    every: u64,
    since: u64,
}

async fn apply_loop(
    me: BrokerId,
    mut committed: mpsc::Receiver<Committed>,
    state: Arc<RwLock<MetadataState>>,
    applied: watch::Sender<Offset>,
    recent: Recent,
    mut snapshots: Snapshotter,
) {
    // Controller listeners of registered brokers, as last told to the quorum.
    let mut known: BTreeMap<BrokerId, std::net::SocketAddr> = BTreeMap::new();
    while let Some(c) = committed.recv().await {
        if let Some(s) = apply_one(me, c, &state, &applied, &recent, &mut snapshots) {
            snapshots.quorum.compact(s);
        }
        let moved: Vec<(BrokerId, std::net::SocketAddr)> = state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .brokers()
            .values()
            .filter(|b| b.control_port != 0 && b.id != me)
            .filter_map(|b| {
                // A host name is not resolved here: that broker is reached once it has
                // connected (its hello names its listener).
                let ip: std::net::IpAddr = b.host.parse().ok()?;
                Some((b.id, std::net::SocketAddr::new(ip, b.control_port)))
            })
            .filter(|(id, addr)| known.get(id) != Some(addr))
            .collect();
        for (id, addr) in moved {
            if snapshots.quorum.learn(id, addr) {
                known.insert(id, addr);
            }
        }
    }
}

/// Applies one committed item; returns a snapshot of the state when one is due.
fn apply_one(
    me: BrokerId,
    c: Committed,
    state: &RwLock<MetadataState>,
    applied: &watch::Sender<Offset>,
    recent: &Recent,
    snapshots: &mut Snapshotter,
) -> Option<lode_core::raft::Snapshot> {
    let mut st = state
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match c {
        Committed::Snapshot(s) => {
            match postcard::from_bytes::<MetadataState>(&s.data) {
                Ok(restored) => {
                    let before = crate::observe::enabled().then(|| partition_views(&st));
                    *st = restored;
                    if let Some(before) = before {
                        observe_changes(me, &before, &st);
                    }
                    applied.send_replace(s.end_offset);
                    snapshots.since = 0;
                }
                Err(e) => tracing::error!(error = %e, "undecodable metadata snapshot ignored"),
            }
            None
        }
        Committed::Entries(entries) => {
            let mut last = None;
            for e in entries {
                let before = crate::observe::enabled().then(|| partition_views(&st));
                if !e.data.is_empty() {
                    match postcard::from_bytes::<Vec<MetadataRecord>>(&e.data) {
                        Ok(records) => {
                            for (i, r) in records.iter().enumerate() {
                                tracing::debug!(offset = e.offset.0, record = ?r, "metadata record");
                                if let Err(err) = st.apply(metadata_offset(e.offset, i), r) {
                                    // The controller decided on the same state: a refusal
                                    // here is a bug, but every node refuses alike.
                                    tracing::error!(offset = e.offset.0, error = %err, "metadata record refused");
                                }
                            }
                        }
                        Err(err) => {
                            tracing::error!(offset = e.offset.0, error = %err, "undecodable metadata entry");
                        }
                    }
                }
                {
                    let mut r = recent
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    r.insert(e.offset, e.epoch);
                    while r.len() > RECENT_ENTRIES_MAX {
                        r.pop_first();
                    }
                }
                if let Some(before) = before {
                    crate::observe::emit(me, || crate::observe::Event::MetadataApplied {
                        offset: e.offset,
                        digest: lode_proto::fnv1a(lode_proto::FNV1A_START, &e.data),
                    });
                    observe_changes(me, &before, &st);
                }
                applied.send_replace(e.offset.next());
                snapshots.since += 1;
                last = Some((e.offset, e.epoch));
            }
            let (offset, epoch) = last?;
            if snapshots.since < snapshots.every {
                return None;
            }
            snapshots.since = 0;
            match postcard::to_allocvec(&*st) {
                Ok(data) => Some(lode_core::raft::Snapshot {
                    end_offset: offset.next(),
                    last_epoch: epoch,
                    data,
                }),
                Err(e) => {
                    tracing::error!(error = %e, "metadata snapshot not encoded");
                    None
                }
            }
        }
    }
}

type Views = BTreeMap<(String, i32), crate::observe::PartitionView>;

/// Every partition as the simulator's observer sees it.
fn partition_views(st: &MetadataState) -> Views {
    st.partitions()
        .map(|(t, i, p)| {
            let view = crate::observe::PartitionView {
                replicas: p.replicas.clone(),
                isr: p.isr.iter().copied().collect(),
                elr: p.elr.iter().copied().collect(),
                leader: p.leader,
                leader_epoch: p.leader_epoch,
                partition_epoch: p.partition_epoch.0,
                elected_unclean: p.elected_unclean,
                fenced_in_isr: p
                    .isr
                    .iter()
                    .filter(|b| st.broker(**b).is_none_or(|r| r.fenced))
                    .copied()
                    .collect(),
            };
            ((t.name.clone(), i.0), view)
        })
        .collect()
}

/// Reports the partitions whose state differs from `before`.
fn observe_changes(me: BrokerId, before: &Views, st: &MetadataState) {
    for ((topic, partition), state) in partition_views(st) {
        if before.get(&(topic.clone(), partition)) != Some(&state) {
            crate::observe::emit(me, || crate::observe::Event::PartitionChanged {
                topic,
                partition,
                state,
            });
        }
    }
}

async fn inbound_loop(plane: Arc<ControlPlane>, mut app: mpsc::Receiver<(BrokerId, Vec<u8>)>) {
    while let Some((from, bytes)) = app.recv().await {
        match postcard::from_bytes::<ControlMsg>(&bytes) {
            Ok(ControlMsg::Request { id, req }) => {
                // Full queue: the requester times out and retries.
                let _ = plane.requests.try_send((req, ReplyTo::Remote(from, id)));
            }
            Ok(ControlMsg::Reply { id, reply }) => {
                if let Some(tx) = plane.pending.lock().await.remove(&id) {
                    let _ = tx.send(reply);
                }
            }
            Ok(ControlMsg::Fetch { id, req }) => {
                // Full queue: the follower times out and fetches again.
                let _ = plane.fetches_in.try_send((from, id, req));
            }
            Ok(ControlMsg::FetchReply { id, reply }) => {
                if let Some(tx) = plane.fetch_pending.lock().await.remove(&id) {
                    let _ = tx.send(reply);
                }
            }
            Err(e) => tracing::debug!(from = from.0, error = %e, "undecodable control message"),
        }
    }
}

/// Answers a request: through its channel if local, over the controller connections if not
/// (on a task of its own: the sender does not wait for the network).
fn send_reply(quorum: &Arc<Quorum>, to: ReplyTo, reply: ControlReply) {
    match to {
        ReplyTo::Local(tx) => {
            let _ = tx.send(reply);
        }
        ReplyTo::Remote(node, id) => {
            if let Ok(bytes) = postcard::to_allocvec(&ControlMsg::Reply { id, reply }) {
                let q = Arc::clone(quorum);
                lode_env::task::spawn(async move { q.send_app(node, bytes).await });
            }
        }
    }
}

/// The active controller (a task on every node, working only while it leads).
struct Active {
    me: BrokerId,
    quorum: Arc<Quorum>,
    state: Arc<RwLock<MetadataState>>,
    applied: watch::Receiver<Offset>,
    controller: Controller,
    clock: Clock,
    recent: Recent,
}

impl Active {
    fn reply(&self, to: ReplyTo, reply: ControlReply) {
        send_reply(&self.quorum, to, reply);
    }

    async fn run(mut self, mut requests: mpsc::Receiver<(ControlRequest, ReplyTo)>) {
        // The working state while active: the applied state plus what this controller
        // proposed since. `None` while not (yet) active.
        let mut working: Option<(lode_proto::Epoch, MetadataState)> = None;
        // The raft offset of this controller's latest proposal: a decision that needs no
        // record was taken on the working state, so it holds only once that commits.
        let mut last_proposed: Option<Offset> = None;
        let tick = Duration::from_millis(100);
        loop {
            let status = self.quorum.status();
            // Activate once the whole log at election time is applied here.
            if status.role == Role::Leader {
                let current = working.as_ref().map(|(e, _)| *e);
                if current != Some(status.epoch) {
                    working = None;
                    if *self.applied.borrow() >= status.end_offset
                        && status.high_watermark >= status.end_offset
                    {
                        let st = self
                            .state
                            .read()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .clone();
                        self.controller.activate(&st, self.clock.now());
                        tracing::info!(
                            node = self.me.0,
                            epoch = status.epoch.0,
                            "active controller"
                        );
                        working = Some((status.epoch, st));
                        last_proposed = None;
                    }
                }
            } else if working.is_some() {
                tracing::info!(node = self.me.0, "no longer the active controller");
                working = None;
                last_proposed = None;
            }
            let next = tokio::select! {
                // Biased: tokio's random branch order would break deterministic replay.
                biased;
                r = requests.recv() => match r {
                    None => return,
                    Some(r) => Some(r),
                },
                () = self.clock.sleep(tick) => None,
            };
            let Some((_, st)) = working.as_mut() else {
                if let Some((_, to)) = next {
                    self.reply(
                        to,
                        ControlReply::refused(NOT_CONTROLLER, "not the active controller"),
                    );
                }
                continue;
            };
            let now = self.clock.now();
            let (records, to, broker_epoch) = match next {
                None => (self.controller.tick(st, now), None, None),
                Some((req, to)) => {
                    let decided = match &req {
                        ControlRequest::Register(r) => self
                            .controller
                            .register_broker(st, r, now)
                            .map_err(|e| (e.kafka_code(), e.to_string())),
                        ControlRequest::Heartbeat(h) => self
                            .controller
                            .heartbeat(st, h, now)
                            .map_err(|e| (e.kafka_code(), e.to_string())),
                        ControlRequest::CreateTopic(c) => self
                            .controller
                            .create_topic(st, c)
                            .map_err(|e| (e.kafka_code(), e.to_string())),
                        ControlRequest::DeleteTopic(name) => self
                            .controller
                            .delete_topic(st, name)
                            .map_err(|e| (e.kafka_code(), e.to_string())),
                        ControlRequest::AlterPartition(a) => self
                            .controller
                            .alter_partition(st, a)
                            .map_err(|e| (e.kafka_code(), e.to_string())),
                        ControlRequest::AllocateProducerIds { broker, epoch } => self
                            .controller
                            .allocate_producer_ids(st, *broker, *epoch)
                            .map_err(|e| (e.kafka_code(), e.to_string())),
                    };
                    match decided {
                        Ok(records) => {
                            let epoch_of = match &req {
                                ControlRequest::Register(r) => Some(r.id),
                                _ => None,
                            };
                            (records, Some(to), epoch_of)
                        }
                        Err((code, message)) => {
                            self.reply(to, ControlReply::Refused { code, message });
                            continue;
                        }
                    }
                }
            };
            if records.is_empty() {
                if let Some(to) = to {
                    let epoch = broker_epoch.and_then(|id| st.broker(id).map(|b| b.epoch));
                    let done = ControlReply::Done {
                        broker_epoch: epoch,
                    };
                    let proposed_in = working.as_ref().map(|(e, _)| *e);
                    match last_proposed {
                        // E.g. a registration retried while its record is still in flight:
                        // answered once that is committed, and only if it is ours.
                        Some(offset) if *self.applied.borrow() <= offset => {
                            self.answer_when_committed(to, offset, proposed_in, done);
                        }
                        _ => self.reply(to, done),
                    }
                }
                continue;
            }
            assert!(
                records.len() < BATCH_RECORDS_MAX,
                "a decision fits a metadata batch"
            );
            let bytes = match postcard::to_allocvec(&records) {
                Ok(b) => b,
                Err(e) => {
                    if let Some(to) = to {
                        self.reply(to, ControlReply::refused(REQUEST_TIMED_OUT, e.to_string()));
                    }
                    continue;
                }
            };
            let offset = match self.quorum.propose(bytes).await {
                Ok(o) => {
                    last_proposed = Some(o);
                    o
                }
                Err(e) => {
                    working = None;
                    last_proposed = None;
                    if let Some(to) = to {
                        self.reply(to, ControlReply::refused(NOT_CONTROLLER, e.to_string()));
                    }
                    continue;
                }
            };
            for (i, r) in records.iter().enumerate() {
                if let Err(e) = st.apply(metadata_offset(offset, i), r) {
                    tracing::error!(error = %e, "controller's own record refused by its working state");
                }
            }
            let epoch = broker_epoch.and_then(|id| st.broker(id).map(|b| b.epoch));
            let proposed_in = working.as_ref().map(|(e, _)| *e);
            if let Some(to) = to {
                let done = match records.as_slice() {
                    [MetadataRecord::ProducerIds { end, .. }] => ControlReply::ProducerIds {
                        start: end.saturating_sub(PRODUCER_ID_BLOCK),
                        end: *end,
                    },
                    _ => ControlReply::Done {
                        broker_epoch: epoch,
                    },
                };
                self.answer_when_committed(to, offset, proposed_in, done);
            }
        }
    }

    /// Sends `done` once the entry at raft `offset` is committed and applied here and is
    /// the one this controller proposed in `proposed_in` (a deposed leader's entry can be
    /// replaced by the next leader's); else a refusal. Does not hold up the next decision.
    fn answer_when_committed(
        &self,
        to: ReplyTo,
        offset: Offset,
        proposed_in: Option<lode_proto::Epoch>,
        done: ControlReply,
    ) {
        let recent = Arc::clone(&self.recent);
        let mut applied = self.applied.clone();
        let clock = self.clock.clone();
        let q = Arc::clone(&self.quorum);
        lode_env::task::spawn(async move {
            let committed = clock
                .timeout(Duration::from_secs(30), applied.wait_for(|a| *a > offset))
                .await;
            let ours = recent
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(&offset)
                .copied()
                == proposed_in;
            let reply = match committed {
                Ok(Ok(_)) if ours => done,
                Ok(Ok(_)) => {
                    ControlReply::refused(NOT_CONTROLLER, "superseded by a new controller")
                }
                _ => ControlReply::refused(REQUEST_TIMED_OUT, "not committed in time"),
            };
            send_reply(&q, to, reply);
        });
    }
}
