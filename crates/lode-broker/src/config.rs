//! Broker configuration.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use lode_proto::BrokerId;

/// When a partition's appends are synced, and so when its high watermark advances.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Group commit: appends are synced in batches, and a record counts as committed (high
    /// watermark, acks=all) only once synced. Survives power loss.
    Always,
    /// Kafka's default: committed once written; synced every `interval`. Relies on
    /// replication for durability.
    Interval(Duration),
}

/// Everything one broker needs to know.
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    /// This broker's id.
    pub node_id: BrokerId,
    /// Where to listen for Kafka clients.
    pub listen: SocketAddr,
    /// The host clients are told to connect to (Metadata), and its port.
    pub advertised_host: String,
    /// See `advertised_host`.
    pub advertised_port: u16,
    /// Largest request frame accepted; a larger one closes the connection unread.
    pub frame_bytes_max: usize,
    /// Largest record batch accepted (Kafka's `message.max.bytes`).
    pub message_bytes_max: usize,
    /// Create unknown topics when a client asks for their metadata.
    pub auto_create_topics: bool,
    /// Partitions of a topic created without a count.
    pub default_partitions: i32,
    /// When appends are synced, for topics created without `lode.fsync`; its interval
    /// (default 1 s) also serves topics created with `lode.fsync=interval`.
    pub fsync: FsyncPolicy,
    /// Segment size of partition logs.
    pub segment_bytes_max: u64,
    /// Bytes at the tail of each partition log kept in the OS page cache for readers; what
    /// is synced and further behind is evicted, so that appends reuse warm pages instead of
    /// growing the cache. 0 leaves the cache to the OS (Kafka's way).
    pub page_cache_window_bytes: u64,
    /// Connections accepted at once; more are closed at once.
    pub connections_max: usize,
    /// A connection idle this long is closed.
    pub idle_timeout: Duration,
    /// A request frame that takes longer than this to arrive closes the connection.
    pub frame_timeout: Duration,
    /// The controller quorum's voters and their controller listeners. Empty: this broker
    /// is a cluster of its own (no metadata log). Otherwise combined mode: the broker is a
    /// voter if listed, an observer if not, and takes its metadata from the log.
    pub voters: BTreeMap<BrokerId, SocketAddr>,
    /// Where this broker listens for controller traffic (default: its voter address).
    pub controller_listen: Option<SocketAddr>,
    /// `broker.session.timeout.ms`: a broker silent for longer is fenced.
    pub session_timeout: Duration,
    /// How often the broker heartbeats to the controller.
    pub heartbeat_interval: Duration,
    /// Replication factor of auto-created topics.
    pub default_replication_factor: i16,
    /// `min.insync.replicas` of topics created without one.
    pub default_min_insync_replicas: i32,
    /// `replica.lag.time.max.ms`: an ISR member not caught up for longer is proposed out.
    pub replica_lag_time_max: Duration,
    /// `offsets.topic.num.partitions`: partitions of `__consumer_offsets` when this broker
    /// creates it (each group lives in one; its leader coordinates the group).
    pub offsets_topic_partitions: i32,
    /// Group coordination: session timeout bounds and the initial rebalance delay.
    pub groups: lode_core::group::GroupConfig,
    /// A deliberately broken rule (tests only).
    #[cfg(feature = "planted-bugs")]
    pub planted: Option<PlantedBug>,
}

/// Deliberately broken variants of the broker, to prove the simulator's checks catch them.
#[cfg(feature = "planted-bugs")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlantedBug {
    /// A leader counts a record committed (high watermark, acks=all) once its own log has
    /// it, without waiting for the ISR.
    AckOnLeaderSync,
    /// A replica truncates its log to its checkpointed high watermark when it opens it
    /// (Kafka before KIP-101: KAFKA-1211).
    TruncateToHighWatermark,
    /// Consumer fetches read up to the log end instead of the high watermark.
    ReadAboveHighWatermark,
    /// A broken rule of the partition leader.
    Replication(lode_core::replication::ReplicationBug),
    /// A broken rule of the controller.
    Controller(lode_core::metadata::PlantedBug),
    /// A group coordinator acknowledges an offset commit once its own log has it, without
    /// waiting for the ISR (an acknowledged commit can then vanish with a failover).
    CommitBeforeReplicated,
    /// A broken rule of a partition's log.
    Storage(lode_storage::PlantedBug),
    /// A follower's fetcher appends, truncates and moves the high watermark whatever role
    /// and epoch the replica has now (a fetcher of a deposed leader, still running after
    /// its broker took the partition over).
    UnfencedFollower,
    /// A starting broker removes its clean-shutdown marker at once, so a process stopped
    /// before it registered loses it (the next registration counts as unclean).
    CleanMarkerDroppedAtStart,
    /// A group coordinator accepts an offset commit whatever its member and generation (a
    /// zombie member's commit is not fenced).
    CommitFromAnyGeneration,
    /// A leader applies a high watermark decided on a follower's fetch after letting the
    /// log lock go and taking it again: an ISR shrink committed in between no longer
    /// stops it (strict min ISR).
    HighWatermarkAppliedLate,
    /// A deleted topic's partitions are removed in place, still open (lode before topic
    /// ids in deletion): their own tasks and a creation of the same name meet in one
    /// directory.
    DeleteInPlace,
}

/// The sync interval of `fsync=interval` topics when the broker's default is `always`.
pub const FSYNC_INTERVAL_DEFAULT: Duration = Duration::from_secs(1);

impl BrokerConfig {
    /// The durability policy of topics created without one.
    #[must_use]
    pub fn default_topic_fsync(&self) -> lode_core::metadata::TopicFsync {
        match self.fsync {
            FsyncPolicy::Always => lode_core::metadata::TopicFsync::Always,
            FsyncPolicy::Interval(_) => lode_core::metadata::TopicFsync::Interval,
        }
    }

    /// How a partition of a topic with durability `fsync` syncs on this broker.
    #[must_use]
    pub fn fsync_policy(&self, fsync: lode_core::metadata::TopicFsync) -> FsyncPolicy {
        match (fsync, self.fsync) {
            (lode_core::metadata::TopicFsync::Always, _) => FsyncPolicy::Always,
            (lode_core::metadata::TopicFsync::Interval, FsyncPolicy::Interval(d)) => {
                FsyncPolicy::Interval(d)
            }
            (lode_core::metadata::TopicFsync::Interval, FsyncPolicy::Always) => {
                FsyncPolicy::Interval(FSYNC_INTERVAL_DEFAULT)
            }
        }
    }

    /// Defaults for a broker on `listen`, advertised as itself.
    #[must_use]
    pub fn new(node_id: BrokerId, listen: SocketAddr) -> BrokerConfig {
        BrokerConfig {
            node_id,
            listen,
            advertised_host: listen.ip().to_string(),
            advertised_port: listen.port(),
            frame_bytes_max: 100 << 20,
            message_bytes_max: (1 << 20) + 12,
            auto_create_topics: true,
            default_partitions: 1,
            fsync: FsyncPolicy::Always,
            segment_bytes_max: 1 << 30,
            page_cache_window_bytes: lode_storage::PAGE_CACHE_WINDOW_BYTES,
            connections_max: 4096,
            idle_timeout: Duration::from_secs(600),
            frame_timeout: Duration::from_secs(30),
            voters: BTreeMap::new(),
            controller_listen: None,
            session_timeout: Duration::from_secs(9),
            heartbeat_interval: Duration::from_millis(500),
            default_replication_factor: 1,
            default_min_insync_replicas: 1,
            replica_lag_time_max: Duration::from_secs(30),
            offsets_topic_partitions: 16,
            groups: lode_core::group::GroupConfig::default(),
            #[cfg(feature = "planted-bugs")]
            planted: None,
        }
    }
}
