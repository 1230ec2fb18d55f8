//! The topics and partitions this broker holds, on disk as Kafka lays them out: one
//! directory per partition named `{topic}-{index}`, holding the partition's log and a
//! `partition.metadata` checkpoint with the topic id.

use std::collections::BTreeMap;
use std::sync::Arc;

use lode_core::metadata::TopicFsync;
use lode_env::sync::watch;
use lode_env::{Clock, Dir};
use lode_storage::{checkpoint, FailureHook, LogError};
use tokio::sync::RwLock;

use crate::config::BrokerConfig;
use crate::halt::Halt;
use crate::partition::{Partition, PartitionOptions};

/// A topic: its id and partitions.
pub struct Topic {
    /// The topic's id (Kafka's topic UUID).
    pub id: uuid::Uuid,
    /// Partitions by index.
    pub partitions: Vec<Arc<Partition>>,
}

/// Why a topic could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// Bad name.
    #[error("invalid topic name {0:?}: 1-249 characters of [a-zA-Z0-9._-], not . or ..")]
    InvalidName(String),
    /// Already there.
    #[error("topic {0:?} already exists")]
    Exists(String),
    /// Bad partition count.
    #[error("invalid partition count {0}")]
    InvalidPartitions(i32),
    /// The disk failed.
    #[error("storage error: {0}")]
    Storage(#[from] LogError),
    /// The directory could not be created.
    #[error("storage error: {0}")]
    Io(#[from] std::io::Error),
}

/// The metadata log's directory is `{METADATA_TOPIC}-0` (Kafka's name); it is not a topic
/// of the partition logs and clients may not create it.
pub const METADATA_TOPIC: &str = "__cluster_metadata";

/// Kafka's topic-name rule (and not the metadata log's name).
#[must_use]
pub fn valid_name(name: &str) -> bool {
    name != METADATA_TOPIC
        && !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'_' || c == b'-')
}

const PARTITION_METADATA: &str = "partition.metadata";
/// The largest partition count accepted for one topic.
pub const PARTITIONS_MAX: i32 = 10_000;

/// `partition.metadata`: the topic id (16 bytes), then the durability policy (1 byte:
/// 0 always, 1 interval; absent in files of earlier versions).
fn encode_partition_metadata(id: uuid::Uuid, fsync: TopicFsync) -> Vec<u8> {
    let mut out = id.as_bytes().to_vec();
    out.push(match fsync {
        TopicFsync::Always => 0,
        TopicFsync::Interval => 1,
    });
    out
}

fn decode_partition_metadata(bytes: &[u8]) -> (Option<uuid::Uuid>, Option<TopicFsync>) {
    let id = bytes.get(..16).and_then(|b| uuid::Uuid::from_slice(b).ok());
    let fsync = match bytes.get(16) {
        Some(0) => Some(TopicFsync::Always),
        Some(1) => Some(TopicFsync::Interval),
        _ => None,
    };
    (id, fsync)
}

/// All topics of this broker.
pub struct Topics {
    root: Dir,
    clock: Clock,
    config: BrokerConfig,
    data_arrived: watch::Sender<u64>,
    /// Raised when a partition's log meets a storage fault.
    halt: Arc<Halt>,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
}

fn parse_dir(name: &str) -> Option<(&str, i32)> {
    let (topic, index) = name.rsplit_once('-')?;
    let index: i32 = index.parse().ok()?;
    (valid_name(topic) && index >= 0 && index.to_string() == name[topic.len() + 1..])
        .then_some((topic, index))
}

impl Topics {
    /// Opens every partition found under `root`.
    ///
    /// # Errors
    /// When a partition cannot be opened.
    pub async fn open(
        root: Dir,
        clock: Clock,
        config: BrokerConfig,
        data_arrived: watch::Sender<u64>,
        halt: Arc<Halt>,
    ) -> Result<Topics, CreateError> {
        let mut found: BTreeMap<String, BTreeMap<i32, Dir>> = BTreeMap::new();
        for name in root.list().await? {
            if let Some((topic, index)) = parse_dir(&name) {
                if topic == METADATA_TOPIC {
                    // The controller quorum's log lives here, in its own format.
                    continue;
                }
                let dir = root.sub_dir(&name).await?;
                found
                    .entry(topic.to_owned())
                    .or_default()
                    .insert(index, dir);
            }
        }
        let topics = Topics {
            root,
            clock,
            config,
            data_arrived,
            halt,
            topics: RwLock::new(BTreeMap::new()),
        };
        for (name, dirs) in found {
            let contiguous = dirs.keys().copied().eq(0..dirs.len() as i32);
            if !contiguous {
                tracing::error!(topic = %name, "partition directories are not 0..n; topic skipped");
                continue;
            }
            let mut id = None;
            let mut fsync = topics.config.default_topic_fsync();
            let mut partitions = Vec::new();
            for (index, dir) in dirs {
                if id.is_none() {
                    if let Some(Ok(bytes)) = checkpoint::read(&dir, PARTITION_METADATA).await? {
                        let (read_id, read_fsync) = decode_partition_metadata(&bytes);
                        id = read_id;
                        fsync = read_fsync.unwrap_or(fsync);
                    }
                }
                partitions.push(topics.open_partition(&name, index, dir, fsync).await?);
            }
            let id = id.unwrap_or_else(new_topic_id);
            topics
                .topics
                .write()
                .await
                .insert(name, Arc::new(Topic { id, partitions }));
        }
        Ok(topics)
    }

    async fn open_partition(
        &self,
        topic: &str,
        index: i32,
        dir: Dir,
        fsync: TopicFsync,
    ) -> Result<Arc<Partition>, CreateError> {
        let options = PartitionOptions {
            node: self.config.node_id,
            fsync: self.config.fsync_policy(fsync),
            segment_bytes_max: self.config.segment_bytes_max,
            page_cache_window_bytes: self.config.page_cache_window_bytes,
            standalone: self.config.voters.is_empty(),
            on_failure: Some({
                let halt = Arc::clone(&self.halt);
                FailureHook::new(move |dir, e| halt.raise(format!("log {dir}: {e}")))
            }),
            #[cfg(feature = "planted-bugs")]
            planted: self.config.planted,
        };
        Ok(Partition::open(
            topic,
            index,
            dir,
            self.clock.clone(),
            options,
            self.data_arrived.clone(),
        )
        .await?)
    }

    /// The topic called `name`.
    pub async fn get(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics.read().await.get(name).cloned()
    }

    /// Partition `index` of topic `name`.
    pub async fn partition(&self, name: &str, index: i32) -> Option<Arc<Partition>> {
        let t = self.get(name).await?;
        usize::try_from(index)
            .ok()
            .and_then(|i| t.partitions.get(i))
            .cloned()
    }

    /// Every topic, by name.
    pub async fn all(&self) -> Vec<(String, Arc<Topic>)> {
        self.topics
            .read()
            .await
            .iter()
            .map(|(n, t)| (n.clone(), Arc::clone(t)))
            .collect()
    }

    /// Creates a topic with `partitions` partitions, durably.
    ///
    /// # Errors
    /// See [`CreateError`].
    pub async fn create(
        &self,
        name: &str,
        partitions: i32,
        fsync: TopicFsync,
    ) -> Result<Arc<Topic>, CreateError> {
        self.create_with_id(name, partitions, None, fsync).await
    }

    /// Like [`Topics::create`], with the topic id the controller chose.
    ///
    /// # Errors
    /// See [`CreateError`].
    pub async fn create_with_id(
        &self,
        name: &str,
        partitions: i32,
        id: Option<uuid::Uuid>,
        fsync: TopicFsync,
    ) -> Result<Arc<Topic>, CreateError> {
        if !valid_name(name) {
            return Err(CreateError::InvalidName(name.to_owned()));
        }
        if !(1..=PARTITIONS_MAX).contains(&partitions) {
            return Err(CreateError::InvalidPartitions(partitions));
        }
        // Creation holds the write lock so two creators cannot race on the directories.
        let mut topics = self.topics.write().await;
        if topics.contains_key(name) {
            return Err(CreateError::Exists(name.to_owned()));
        }
        let id = id.unwrap_or_else(new_topic_id);
        let mut parts = Vec::new();
        for index in 0..partitions {
            parts.push(self.make_partition(name, index, id, fsync).await?);
        }
        let topic = Arc::new(Topic {
            id,
            partitions: parts,
        });
        topics.insert(name.to_owned(), Arc::clone(&topic));
        tracing::info!(topic = name, partitions, "topic created");
        Ok(topic)
    }

    /// Creates partition `index` of a topic on disk, durably, and opens it.
    async fn make_partition(
        &self,
        name: &str,
        index: i32,
        id: uuid::Uuid,
        fsync: TopicFsync,
    ) -> Result<Arc<Partition>, CreateError> {
        let dir = self.root.sub_dir(&format!("{name}-{index}")).await?;
        self.root.sync().await?;
        checkpoint::write(
            &dir,
            PARTITION_METADATA,
            &encode_partition_metadata(id, fsync),
        )
        .await?;
        self.open_partition(name, index, dir, fsync).await
    }

    /// Gives topic `name` the partitions it lacks below `partitions`. A creation cut short
    /// (a crash or a storage fault part way) leaves only the first directories, which the
    /// next start opens as a topic with fewer partitions; without this, the rest would never
    /// be hosted. Returns the partitions added (none if the topic is not here or complete).
    ///
    /// # Errors
    /// See [`CreateError`]; the partitions made before the error stay.
    pub async fn complete(
        &self,
        name: &str,
        partitions: i32,
        fsync: TopicFsync,
    ) -> Result<i32, CreateError> {
        if !(1..=PARTITIONS_MAX).contains(&partitions) {
            return Err(CreateError::InvalidPartitions(partitions));
        }
        let mut topics = self.topics.write().await;
        let Some(topic) = topics.get(name).cloned() else {
            return Ok(0);
        };
        let have = i32::try_from(topic.partitions.len()).unwrap_or(PARTITIONS_MAX);
        let mut parts = topic.partitions.clone();
        let mut result = Ok(());
        for index in have..partitions {
            match self.make_partition(name, index, topic.id, fsync).await {
                Ok(p) => parts.push(p),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        let added = i32::try_from(parts.len()).unwrap_or(PARTITIONS_MAX) - have;
        if added > 0 {
            topics.insert(
                name.to_owned(),
                Arc::new(Topic {
                    id: topic.id,
                    partitions: parts,
                }),
            );
            tracing::info!(topic = name, added, "partitions missing here created");
        }
        result.map(|()| added)
    }

    /// Deletes a topic and its data. Returns false if it did not exist.
    ///
    /// # Errors
    /// When the disk fails while removing files.
    pub async fn delete(&self, name: &str) -> Result<bool, std::io::Error> {
        let Some(topic) = self.topics.write().await.remove(name) else {
            return Ok(false);
        };
        for p in &topic.partitions {
            p.close().await;
            for file in p.dir.list().await? {
                p.dir.remove(&file).await?;
            }
            self.root.remove(&format!("{name}-{}", p.index)).await?;
        }
        self.root.sync().await?;
        tracing::info!(topic = name, "topic deleted");
        Ok(true)
    }

    /// Closes every partition cleanly.
    pub async fn close(&self) {
        for (_, t) in self.all().await {
            for p in &t.partitions {
                p.close().await;
            }
        }
    }
}

fn new_topic_id() -> uuid::Uuid {
    let hi = lode_env::rng::seed_u64();
    let lo = lode_env::rng::seed_u64();
    uuid::Builder::from_random_bytes(((u128::from(hi) << 64) | u128::from(lo)).to_be_bytes())
        .into_uuid()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_dirs() {
        assert!(valid_name("orders.v1_x-y"));
        assert!(
            !valid_name("a/b")
                && !valid_name("")
                && !valid_name("..")
                && !valid_name(&"x".repeat(250))
        );
        assert_eq!(parse_dir("my-topic-12"), Some(("my-topic", 12)));
        assert_eq!(parse_dir("t-01"), None);
        assert_eq!(parse_dir("t-"), None);
        assert_eq!(parse_dir("log.checkpoint"), None);
    }
}

#[cfg(test)]
mod metadata_file_tests {
    use super::*;

    #[test]
    fn partition_metadata_round_trips_and_reads_the_old_layout() {
        let id = uuid::Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        for fsync in [TopicFsync::Always, TopicFsync::Interval] {
            let bytes = encode_partition_metadata(id, fsync);
            assert_eq!(decode_partition_metadata(&bytes), (Some(id), Some(fsync)));
        }
        assert_eq!(decode_partition_metadata(id.as_bytes()), (Some(id), None));
        assert_eq!(decode_partition_metadata(&[1, 2, 3]), (None, None));
    }
}
