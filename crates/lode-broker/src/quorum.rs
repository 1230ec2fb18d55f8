//! The controller quorum on one node: drives `lode_core::raft::RaftNode` with real (or
//! simulated) time, network and disk.
//!
//! One task owns the node. It takes messages from the controller listener, proposals from
//! [`Quorum::propose`] and a tick every `tick` interval, and carries out the node's actions
//! in order: persists through [`RaftStore`] (synced before anything that follows), sends
//! through one bounded queue per peer (a full queue drops the message: Raft retries), and
//! committed entries to the receiver returned by [`Quorum::start`].
//!
//! Every node listens for controller traffic. A connection opens with a hello naming the
//! sender and its listener, so a leader can answer observers it was not configured with.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use lode_core::raft::{Action, Entry, Message, ProposeError, RaftConfig, RaftNode, Role, Snapshot};
use lode_env::net::Listener;
use lode_env::sync::watch;
use lode_env::{Clock, Dir};
use lode_proto::{BrokerId, Epoch, Offset};
use lode_storage::{RaftStore, RaftStoreError};
use tokio::sync::{mpsc, oneshot};

use crate::rpc::{self, Peer};

/// Messages queued per peer before new ones are dropped.
const PEER_QUEUE_MAX: usize = 1024;
/// Inputs queued for the node.
const INPUT_QUEUE_MAX: usize = 4096;
/// Committed entries queued for the state machine.
const APPLY_QUEUE_MAX: usize = 1024;

/// Settings of a node's quorum membership.
#[derive(Clone, Debug)]
pub struct QuorumConfig {
    /// This node.
    pub node: BrokerId,
    /// The voters and their controller listeners.
    pub voters: BTreeMap<BrokerId, SocketAddr>,
    /// Where this node listens for controller traffic (port 0: any).
    pub listen: SocketAddr,
    /// Raft's fetch timeout (elections, check-quorum).
    pub fetch_timeout: Duration,
    /// How often a follower fetches again after a `NotLeader` answer.
    pub fetch_interval: Duration,
    /// How long the leader holds a fetch that finds nothing new (long poll).
    pub fetch_wait: Duration,
    /// How often the node is ticked.
    pub tick: Duration,
    /// The layer above snapshots its state and compacts the log once this many entries
    /// were applied since the last snapshot.
    pub snapshot_entries: u64,
}

impl QuorumConfig {
    /// Defaults: fetch timeout 2 s, fetch interval 50 ms, fetch wait 500 ms, tick 10 ms.
    #[must_use]
    pub fn new(node: BrokerId, voters: BTreeMap<BrokerId, SocketAddr>, listen: SocketAddr) -> Self {
        QuorumConfig {
            node,
            voters,
            listen,
            fetch_timeout: Duration::from_secs(2),
            fetch_interval: Duration::from_millis(50),
            fetch_wait: Duration::from_millis(500),
            tick: Duration::from_millis(10),
            snapshot_entries: 10_000,
        }
    }
}

/// What the node is, as last seen by its driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuorumStatus {
    /// Its role.
    pub role: Role,
    /// Its epoch.
    pub epoch: Epoch,
    /// The leader it knows of.
    pub leader: Option<BrokerId>,
    /// Its high watermark.
    pub high_watermark: Offset,
    /// Its log end offset.
    pub end_offset: Offset,
    /// Its log start (the end of its snapshot).
    pub log_start: Offset,
    /// Whether the driver stopped on a disk error.
    pub failed: bool,
}

/// Committed state for the state machine, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Committed {
    /// Replace the state with this snapshot.
    Snapshot(Snapshot),
    /// Apply these entries.
    Entries(Vec<Entry>),
}

/// Why the quorum could not start.
#[derive(Debug, thiserror::Error)]
pub enum QuorumError {
    /// The Raft store failed.
    #[error("raft store: {0}")]
    Store(#[from] RaftStoreError),
    /// The listener could not bind.
    #[error("controller listener {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The node is not the leader (or the driver stopped).
    #[error(transparent)]
    Propose(#[from] ProposeError),
    /// The driver stopped.
    #[error("the quorum driver stopped")]
    Stopped,
}

/// A frame on a controller connection: Raft's own messages, or those of the layer above
/// (controller requests and replies), which the quorum only carries.
#[derive(serde::Serialize, serde::Deserialize)]
enum Wire {
    Raft(Message),
    App(#[serde(with = "lode_proto::byte_vec")] Vec<u8>),
}

enum Input {
    Message(BrokerId, Message),
    SendApp(BrokerId, Vec<u8>),
    /// Where a broker's controller listener is, from its registration in the metadata log.
    Learn(BrokerId, SocketAddr),
    Compact(Snapshot),
    Hello(BrokerId, SocketAddr),
    Propose(Vec<u8>, oneshot::Sender<Result<Offset, ProposeError>>),
}

/// A running quorum member.
pub struct Quorum {
    inputs: mpsc::Sender<Input>,
    status: watch::Receiver<QuorumStatus>,
    /// The controller listener's bound address.
    pub local_addr: SocketAddr,
}

impl Quorum {
    /// Opens the Raft store in `dir`, binds the controller listener and starts the driver.
    /// Committed entries arrive on the returned receiver (the driver waits when it is full);
    /// messages of the layer above ([`Quorum::send_app`]) on `app`, with their sender.
    ///
    /// # Errors
    /// A damaged store or a listener that cannot bind.
    pub async fn start(
        config: QuorumConfig,
        dir: Dir,
        clock: Clock,
        app: Option<mpsc::Sender<(BrokerId, Vec<u8>)>>,
    ) -> Result<(Quorum, mpsc::Receiver<Committed>), QuorumError> {
        let (store, durable) = RaftStore::open(dir).await?;
        let listener = lode_env::net::listen(config.listen)
            .await
            .map_err(|source| QuorumError::Listen {
                addr: config.listen,
                source,
            })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| QuorumError::Listen {
                addr: config.listen,
                source,
            })?;
        let (inputs_tx, inputs_rx) = mpsc::channel(INPUT_QUEUE_MAX);
        let (apply_tx, apply_rx) = mpsc::channel(APPLY_QUEUE_MAX);
        let mut raft = RaftConfig::new(config.voters.keys().copied().collect());
        raft.fetch_timeout = config.fetch_timeout;
        raft.fetch_interval = config.fetch_interval;
        raft.fetch_wait = config.fetch_wait;
        let node = RaftNode::new(
            config.node,
            raft,
            durable.clone(),
            lode_env::rng::seed_u64(),
            clock.now(),
        );
        let status = watch::Sender::new(status_of(&node, false));
        let status_rx = status.subscribe();
        lode_env::task::spawn(listen_loop(listener, inputs_tx.clone(), app));
        let driver = Driver {
            me: config.node,
            my_addr: local_addr,
            clock,
            tick: config.tick,
            node,
            store,
            peers: BTreeMap::new(),
            addresses: config.voters.clone(),
            voters: config.voters.keys().copied().collect(),
            timeout: config.fetch_timeout / 2,
            apply: apply_tx,
            status,
        };
        // A restarted node's snapshot is its state machine's starting point.
        if let Some(s) = durable.snapshot {
            let _ = driver.apply.send(Committed::Snapshot(s)).await;
        }
        lode_env::task::spawn(driver.run(inputs_rx));
        Ok((
            Quorum {
                inputs: inputs_tx,
                status: status_rx,
                local_addr,
            },
            apply_rx,
        ))
    }

    /// The node's status.
    #[must_use]
    pub fn status(&self) -> QuorumStatus {
        *self.status.borrow()
    }

    /// A receiver of status changes.
    #[must_use]
    pub fn watch(&self) -> watch::Receiver<QuorumStatus> {
        self.status.clone()
    }

    /// Sends `bytes` to `to`'s layer above the quorum, over the controller connections.
    /// Best effort: a message may be lost.
    pub async fn send_app(&self, to: BrokerId, bytes: Vec<u8>) {
        let _ = self.inputs.send(Input::SendApp(to, bytes)).await;
    }

    /// Tells the driver where broker `id`'s controller listener is (from its registration),
    /// so this node can reach a broker that is no voter before that broker has reached it:
    /// a follower sends its replica fetches to its leader over these connections. Never
    /// waits (the driver may be waiting for the applier that calls this): false if the
    /// driver's queue is full, and the caller tells it again later.
    #[must_use]
    pub fn learn(&self, id: BrokerId, addr: SocketAddr) -> bool {
        self.inputs.try_send(Input::Learn(id, addr)).is_ok()
    }

    /// Folds the log below `snapshot.end_offset` (applied here) into `snapshot`. Never
    /// waits: the driver may itself be waiting for the applier that calls this, so with its
    /// queue full the snapshot is skipped (the next one will do).
    pub fn compact(&self, snapshot: Snapshot) {
        if self.inputs.try_send(Input::Compact(snapshot)).is_err() {
            tracing::debug!("metadata snapshot skipped: the quorum driver is busy");
        }
    }

    /// Appends `data` if this node leads; returns its offset (committed once the high
    /// watermark passes it).
    ///
    /// # Errors
    /// [`QuorumError::Propose`] if this node is not the leader.
    pub async fn propose(&self, data: Vec<u8>) -> Result<Offset, QuorumError> {
        let (tx, rx) = oneshot::channel();
        self.inputs
            .send(Input::Propose(data, tx))
            .await
            .map_err(|_| QuorumError::Stopped)?;
        Ok(rx.await.map_err(|_| QuorumError::Stopped)??)
    }
}

fn status_of(node: &RaftNode, failed: bool) -> QuorumStatus {
    QuorumStatus {
        role: node.role(),
        epoch: node.epoch(),
        leader: node.leader(),
        high_watermark: node.high_watermark(),
        end_offset: node.end_offset(),
        log_start: node.log_start(),
        failed,
    }
}

/// The first frame of a controller connection: who sends, and where it listens.
type Hello = (BrokerId, SocketAddr);

async fn listen_loop(
    listener: Listener,
    inputs: mpsc::Sender<Input>,
    app: Option<mpsc::Sender<(BrokerId, Vec<u8>)>>,
) {
    loop {
        let (mut stream, addr) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "controller listener failed");
                return;
            }
        };
        let inputs = inputs.clone();
        let app = app.clone();
        lode_env::task::spawn(async move {
            let mut buf = BytesMut::new();
            let from = match rpc::read::<Hello>(&mut stream, &mut buf, addr).await {
                Ok(Some((id, listen))) => {
                    let _ = inputs.send(Input::Hello(id, listen)).await;
                    id
                }
                Ok(None) => return,
                Err(e) => {
                    tracing::debug!(%addr, error = %e, "controller connection refused");
                    return;
                }
            };
            loop {
                match rpc::read::<Wire>(&mut stream, &mut buf, addr).await {
                    Ok(Some(Wire::Raft(msg))) => {
                        if inputs.send(Input::Message(from, msg)).await.is_err() {
                            return;
                        }
                    }
                    Ok(Some(Wire::App(bytes))) => {
                        if let Some(app) = &app {
                            if app.send((from, bytes)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Ok(None) => return,
                    Err(e) => {
                        tracing::debug!(%addr, error = %e, "controller connection closed");
                        return;
                    }
                }
            }
        });
    }
}

struct Driver {
    me: BrokerId,
    my_addr: SocketAddr,
    clock: Clock,
    tick: Duration,
    node: RaftNode,
    store: RaftStore,
    peers: BTreeMap<BrokerId, mpsc::Sender<Vec<u8>>>,
    addresses: BTreeMap<BrokerId, SocketAddr>,
    /// The configured voters, whose addresses registrations do not override.
    voters: std::collections::BTreeSet<BrokerId>,
    timeout: Duration,
    apply: mpsc::Sender<Committed>,
    status: watch::Sender<QuorumStatus>,
}

impl Driver {
    async fn run(mut self, mut inputs: mpsc::Receiver<Input>) {
        let mut next_tick = self.clock.now().saturating_add(self.tick);
        loop {
            let actions = tokio::select! {
                // Biased: tokio's random branch order would break deterministic replay.
                biased;
                input = inputs.recv() => match input {
                    None => return,
                    Some(Input::Message(from, msg)) => self.node.receive(self.clock.now(), from, msg),
                    Some(Input::Compact(s)) => self.node.compact(s),
                    Some(Input::Learn(id, addr)) => {
                        if !self.voters.contains(&id) && self.addresses.get(&id) != Some(&addr) {
                            self.addresses.insert(id, addr);
                            self.peers.remove(&id);
                        }
                        Vec::new()
                    }
                    Some(Input::SendApp(to, bytes)) => {
                        self.send(to, &Wire::App(bytes));
                        Vec::new()
                    }
                    Some(Input::Hello(id, addr)) => {
                        if !self.addresses.contains_key(&id) || self.addresses.get(&id) != Some(&addr) {
                            self.addresses.insert(id, addr);
                            self.peers.remove(&id);
                        }
                        Vec::new()
                    }
                    Some(Input::Propose(data, reply)) => match self.node.propose(data) {
                        Ok((offset, actions)) => {
                            let _ = reply.send(Ok(offset));
                            actions
                        }
                        Err(e) => {
                            let _ = reply.send(Err(e));
                            Vec::new()
                        }
                    },
                },
                () = self.clock.sleep_until(next_tick) => {
                    next_tick = self.clock.now().saturating_add(self.tick);
                    self.node.tick(self.clock.now())
                }
            };
            if let Err(e) = self.execute(actions).await {
                tracing::error!(node = self.me.0, error = %e, "raft store failed: the quorum member stops");
                self.status.send_replace(status_of(&self.node, true));
                return;
            }
            let now = status_of(&self.node, false);
            let before = *self.status.borrow();
            if before != now {
                // Offsets move all the time; role, epoch and leader are the news.
                if (before.role, before.epoch, before.leader) != (now.role, now.epoch, now.leader) {
                    tracing::info!(node = self.me.0, role = ?now.role, epoch = now.epoch.0, leader = ?now.leader.map(|l| l.0), "quorum status");
                    crate::observe::emit(self.me, || crate::observe::Event::QuorumRole {
                        leader: now.role == Role::Leader,
                        epoch: now.epoch,
                    });
                }
                self.status.send_replace(now);
            }
        }
    }

    async fn execute(&mut self, actions: Vec<Action>) -> Result<(), RaftStoreError> {
        for a in actions {
            match a {
                Action::Persist(p) => self.store.persist(&p).await?,
                Action::Send { to, msg } => self.send(to, &Wire::Raft(msg)),
                Action::InstallSnapshot(s) => {
                    let _ = self.apply.send(Committed::Snapshot(s)).await;
                }
                Action::Apply(entries) => {
                    let _ = self.apply.send(Committed::Entries(entries)).await;
                }
            }
        }
        Ok(())
    }

    fn send(&mut self, to: BrokerId, msg: &Wire) {
        let frame = match rpc::encode(msg) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "controller message not encoded");
                return;
            }
        };
        if !self.peers.contains_key(&to) {
            let Some(addr) = self.addresses.get(&to).copied() else {
                tracing::debug!(
                    node = self.me.0,
                    to = to.0,
                    "no address for controller peer"
                );
                return;
            };
            let (tx, mut rx) = mpsc::channel::<Vec<u8>>(PEER_QUEUE_MAX);
            let hello = rpc::encode(&(self.me, self.my_addr)).unwrap_or_default();
            let peer = Arc::new(Peer::new(to, addr, hello, self.clock.clone(), self.timeout));
            lode_env::task::spawn(async move {
                while let Some(frame) = rx.recv().await {
                    // A lost message is Raft's to resend.
                    let _ = peer.send(&frame).await;
                }
            });
            self.peers.insert(to, tx);
        }
        if let Some(tx) = self.peers.get(&to) {
            // A full queue (a slow or dead peer) drops the message; Raft resends.
            let _ = tx.try_send(frame);
        }
    }
}
