//! The lode broker: a Kafka protocol server over the partition logs of one node.
//!
//! It reaches the network, the disk, the clock and task spawning only through `lode-env`,
//! so the same broker runs in production on tokio and under the simulator.
//!
//! Today one broker is the whole cluster (its own controller, every partition's leader,
//! replication factor 1). The controller quorum and replication come in the next steps;
//! the layout (node ids, advertised addresses, per-partition logs) is already theirs.

pub mod cluster;
pub mod codes;
pub mod config;
pub mod control;
pub mod groups;
pub mod halt;
mod handlers;
pub mod observe;
pub mod partition;
pub mod quorum;
pub mod replica;
pub mod rpc;
pub mod server;
pub mod topics;
pub mod wire_check;

use std::sync::Arc;

#[cfg(feature = "planted-bugs")]
pub use config::PlantedBug;
pub use config::{BrokerConfig, FsyncPolicy};
use lode_env::sync::watch;
use lode_env::{Clock, Dir, Env};
use lode_storage::{checkpoint, LogError};
use tokio::sync::Mutex;

use crate::topics::{CreateError, Topics};

const CLUSTER_ID: &str = "cluster.id";
const PRODUCER_IDS: &str = "producer-ids.checkpoint";

/// Why no producer id could be allocated.
#[derive(Debug, thiserror::Error)]
pub enum ProducerIdError {
    /// The on-disk reservation (a broker without a controller) failed.
    #[error("reserving producer ids on disk: {0}")]
    Storage(#[from] LogError),
    /// This broker has no current registration to ask the controller with.
    #[error("not registered with the controller")]
    NotRegistered,
    /// The controller gave no block.
    #[error("the controller gave no producer ids: {message} (code {code})")]
    Controller {
        /// Its Kafka error code.
        code: i16,
        /// Its message.
        message: String,
    },
}

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory could not be read or written.
    #[error("data directory: {0}")]
    Storage(#[from] CreateError),
    /// A checkpoint failed.
    #[error("checkpoint: {0}")]
    Log(#[from] LogError),
    /// The controller quorum could not start.
    #[error("controller quorum: {0}")]
    Quorum(#[from] crate::quorum::QuorumError),
    /// The listener could not bind.
    #[error("listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// One running broker.
pub struct Broker {
    /// Its configuration.
    pub config: BrokerConfig,
    /// Its clock.
    pub clock: Clock,
    /// Its topics.
    pub topics: Topics,
    /// The cluster id, created with the data directory.
    pub cluster_id: String,
    /// The address actually listened on (the configured one, with a port chosen by the
    /// system if it was 0).
    pub local_addr: std::net::SocketAddr,
    /// Bumped whenever a high watermark moves, to wake long-polling fetches.
    data_arrived: watch::Sender<u64>,
    root: Dir,
    /// Next producer id and the end of the reserved block.
    producer_ids: Mutex<(i64, i64)>,
    /// The accept loop, stopped by shutdown.
    accept: std::sync::Mutex<Option<lode_env::task::JoinHandle<()>>>,
    /// Combined mode: the metadata log, the metadata and (when leading) the controller.
    pub control: Option<Arc<control::ControlPlane>>,
    /// Combined mode: this broker's registration.
    pub membership: cluster::Membership,
    /// Combined mode: the follower fetchers.
    pub fetchers: replica::Fetchers,
    /// The consumer groups this broker coordinates.
    pub groups: groups::Groups,
    /// Raised on a storage fault: whoever runs the broker stops it (see [`halt`]).
    pub halt: Arc<halt::Halt>,
}

/// The cluster id of a combined-mode cluster: a hash (FNV-1a) of its voter set, the same
/// on every member without any exchange.
fn voters_cluster_id(
    voters: &std::collections::BTreeMap<lode_proto::BrokerId, std::net::SocketAddr>,
) -> String {
    let h = voters
        .iter()
        .fold(lode_proto::FNV1A_START, |h, (id, addr)| {
            lode_proto::fnv1a(h, format!("{}@{addr},", id.0).as_bytes())
        });
    format!("lode-{h:016x}")
}

/// Producer ids are `local counter * PRODUCER_ID_STRIDE + broker id`.
const PRODUCER_ID_STRIDE: i64 = 1 << 20;

impl Broker {
    /// Opens the data directory (recovering every partition), binds the listener and
    /// starts serving. Returns once clients can connect.
    ///
    /// # Errors
    /// See [`StartError`].
    pub async fn start(mut config: BrokerConfig, env: Env) -> Result<Arc<Broker>, StartError> {
        observe::emit(config.node_id, || observe::Event::Started);
        let root = env.data_dir.clone();
        let cluster_id = match checkpoint::read(&root, CLUSTER_ID).await? {
            // Every member of a cluster must report the same id (clients refuse to mix
            // clusters): in combined mode it is named after the voter set.
            _ if !config.voters.is_empty() => voters_cluster_id(&config.voters),
            Some(Ok(bytes)) if !bytes.is_empty() => String::from_utf8_lossy(&bytes).into_owned(),
            _ => {
                let id = format!("lode-{:016x}", lode_env::rng::seed_u64());
                checkpoint::write(&root, CLUSTER_ID, id.as_bytes()).await?;
                id
            }
        };
        let (data_arrived, _) = watch::channel(0_u64);
        let halt = Arc::new(halt::Halt::default());
        let topics = Topics::open(
            root.clone(),
            env.clock.clone(),
            config.clone(),
            data_arrived.clone(),
            Arc::clone(&halt),
        )
        .await?;
        let listener = lode_env::net::listen(config.listen)
            .await
            .map_err(|source| StartError::Listen {
                addr: config.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;
        if config.advertised_port == 0 {
            // Listening on port 0: tell clients the port the system chose.
            config.advertised_port = local_addr.port();
        }
        let (control, restart) = if config.voters.is_empty() {
            (None, cluster::Restart::default())
        } else {
            let listen = config
                .controller_listen
                .or_else(|| config.voters.get(&config.node_id).copied())
                .unwrap_or_else(|| std::net::SocketAddr::new(config.listen.ip(), 0));
            let mut qc = quorum::QuorumConfig::new(config.node_id, config.voters.clone(), listen);
            qc.fetch_timeout = config
                .session_timeout
                .min(std::time::Duration::from_secs(2));
            #[allow(unused_mut)]
            let mut cc = lode_core::metadata::ControllerConfig {
                broker_session_timeout_ms: u64::try_from(config.session_timeout.as_millis())
                    .unwrap_or(u64::MAX),
                default_min_insync_replicas: config.default_min_insync_replicas,
                default_fsync: config.default_topic_fsync(),
                ..lode_core::metadata::ControllerConfig::default()
            };
            #[cfg(feature = "planted-bugs")]
            if let Some(PlantedBug::Controller(bug)) = config.planted {
                cc.planted = Some(bug);
            }
            let dir = root
                .sub_dir(&format!("{}-0", topics::METADATA_TOPIC))
                .await
                .map_err(|e| StartError::Storage(CreateError::Io(e)))?;
            let restart = cluster::Restart {
                clean: cluster::read_clean_marker(&root).await,
                #[cfg(feature = "planted-bugs")]
                planted_drop_marker: config.planted == Some(PlantedBug::CleanMarkerDroppedAtStart),
                log_dir_id: cluster::log_dir_id(&root).await?,
            };
            let plane = control::ControlPlane::start(qc, cc, dir, env.clock.clone()).await?;
            (Some(plane), restart)
        };
        let broker = Arc::new(Broker {
            local_addr,
            config,
            clock: env.clock,
            topics,
            cluster_id,
            data_arrived,
            root,
            producer_ids: Mutex::new((0, 0)),
            accept: std::sync::Mutex::new(None),
            control: control.clone(),
            membership: cluster::Membership::default(),
            fetchers: replica::Fetchers::default(),
            groups: groups::Groups::default(),
            halt: Arc::clone(&halt),
        });
        if let Some(plane) = control {
            lode_env::task::spawn(cluster::lifecycle(
                Arc::clone(&broker),
                Arc::clone(&plane),
                restart,
            ));
            if let Some(fetches) = plane.take_fetches() {
                lode_env::task::spawn(replica::serve(
                    Arc::clone(&broker),
                    Arc::clone(&plane),
                    fetches,
                ));
            }
            lode_env::task::spawn(replica::tick_loop(Arc::clone(&broker), Arc::clone(&plane)));
            // The quorum member stops when its store fails: the broker halts with it.
            let (mut status, halt) = (plane.quorum().watch(), Arc::clone(&broker.halt));
            lode_env::task::spawn(async move {
                if status.wait_for(|s| s.failed).await.is_ok() {
                    halt.raise("the metadata log's store failed");
                }
            });
            lode_env::task::spawn(cluster::hosting(Arc::clone(&broker), plane));
        }
        let b = Arc::clone(&broker);
        let task = lode_env::task::spawn(async move { server::serve(b, listener).await });
        *broker
            .accept
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(task);
        tracing::info!(node = %broker.config.node_id, listen = %broker.config.listen, "broker serving");
        Ok(broker)
    }

    /// Allocates a producer id, never reused across restarts or by another broker. In a
    /// cluster, the controller hands out blocks of them through the metadata log (KIP-730),
    /// so a broker whose disk is replaced cannot hand out an id again; a broker without a
    /// controller reserves them on its own disk.
    ///
    /// # Errors
    /// No block from the controller, or the on-disk reservation cannot be written.
    pub async fn next_producer_id(&self) -> Result<i64, ProducerIdError> {
        let mut ids = self.producer_ids.lock().await;
        if let Some(plane) = &self.control {
            if ids.0 >= ids.1 {
                let epoch = self
                    .membership
                    .epoch()
                    .ok_or(ProducerIdError::NotRegistered)?;
                let req = control::ControlRequest::AllocateProducerIds {
                    broker: self.config.node_id,
                    epoch,
                };
                match plane.request(req, std::time::Duration::from_secs(5)).await {
                    control::ControlReply::ProducerIds { start, end } => *ids = (start, end),
                    control::ControlReply::Refused { code, message } => {
                        return Err(ProducerIdError::Controller { code, message })
                    }
                    control::ControlReply::Done { .. } => {
                        return Err(ProducerIdError::Controller {
                            code: codes::UNKNOWN_SERVER_ERROR,
                            message: "answered without a block".into(),
                        })
                    }
                }
            }
            let id = ids.0;
            ids.0 += 1;
            return Ok(id);
        }
        if ids.0 >= ids.1 {
            let start = match checkpoint::read(&self.root, PRODUCER_IDS).await? {
                Some(Ok(b)) if b.len() == 8 => i64::from_be_bytes(b.try_into().unwrap_or([0; 8])),
                _ => 0,
            };
            // A broker without a controller reserves them on disk, a controller's block
            // at a time.
            let end = start + lode_core::metadata::PRODUCER_ID_BLOCK;
            checkpoint::write(&self.root, PRODUCER_IDS, &end.to_be_bytes()).await?;
            *ids = (start, end);
        }
        let local = ids.0;
        ids.0 += 1;
        // Unique across the cluster without coordination: every broker draws from its own
        // residue class modulo `PRODUCER_ID_STRIDE` (broker ids are unique and below it).
        // Two brokers handing out the same id would make one producer's first batch a
        // "duplicate" of another's.
        let node = i64::from(self.config.node_id.0).rem_euclid(PRODUCER_ID_STRIDE);
        Ok(local * PRODUCER_ID_STRIDE + node)
    }

    /// Whether this process is registered and unfenced in the metadata it has applied
    /// (always, for a broker without a metadata log).
    #[must_use]
    pub fn in_service(&self) -> bool {
        let Some(plane) = &self.control else {
            return true;
        };
        let me = self.config.node_id;
        self.membership.epoch().is_some_and(|e| {
            plane.read(|s| s.broker(me).is_some_and(|r| r.epoch == e && !r.fenced))
        })
    }

    /// Waits until the broker must halt (a storage fault, see [`halt`]) and returns why.
    /// Whoever runs the broker then stops its process without a clean shutdown.
    pub async fn halted(&self) -> String {
        self.halt.raised().await
    }

    /// Hands this broker's leaderships to others (controlled shutdown, in a cluster), then
    /// closes every partition cleanly (clean-shutdown markers written).
    pub async fn shutdown(&self) {
        if let Some(task) = self
            .accept
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
        if let Some(plane) = &self.control {
            cluster::controlled_shutdown(self, plane).await;
        }
        self.topics.close().await;
        if self.control.is_some() && self.membership.epoch().is_none() {
            // Never registered: the clean-shutdown marker of the last registered process
            // stays for the next one (see `cluster::read_clean_marker`).
            crate::observe::probe(self.config.node_id, "clean-marker-kept-unregistered");
        }
        if let Some(epoch) = self.membership.epoch() {
            // KIP-966: the next registration says this shutdown was clean.
            if let Err(e) = checkpoint::write(
                &self.root,
                cluster::CLEAN_SHUTDOWN_EPOCH,
                &epoch.0.to_be_bytes(),
            )
            .await
            {
                tracing::warn!(error = %e, "clean-shutdown epoch not written");
            }
        }
        tracing::info!(node = %self.config.node_id, "broker stopped cleanly");
    }
}
