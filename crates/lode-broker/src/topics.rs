//! The topics and partitions this broker holds, on disk as Kafka lays them out: one
//! directory per partition named `{topic}-{index}`, holding the partition's log and a
//! `partition.metadata` checkpoint with the topic id.
//!
//! Deleting a partition first renames its directory aside, as Kafka's log manager does, to
//! `{topic}-{index}.{unique id}-delete` (a name no live partition has), durably, and only
//! then removes it, in the background: a topic of the same name created at once gets a
//! directory of its own instead of one whose files are being removed under it. Directories
//! left renamed aside (a crash, a failed removal) are removed at the next start. A
//! partition directory found when creating a partition, holding another topic id than the
//! new one's, is a leftover of a deleted topic: it is renamed aside and removed the same
//! way, never reused.

use std::collections::BTreeMap;
use std::io;
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
    /// Held while partition directories are made or renamed aside, so that a creation
    /// never meets a directory a deletion is still taking away (taken before `topics`).
    dirs: Arc<tokio::sync::Mutex<()>>,
}

fn parse_dir(name: &str) -> Option<(&str, i32)> {
    let (topic, index) = name.rsplit_once('-')?;
    let index: i32 = index.parse().ok()?;
    (valid_name(topic) && index >= 0 && index.to_string() == name[topic.len() + 1..])
        .then_some((topic, index))
}

/// Ends the name of a directory renamed aside to be deleted (Kafka's suffix).
const DELETE_SUFFIX: &str = "-delete";
/// The longest file name most file systems take, in bytes.
const FILE_NAME_MAX: usize = 255;

/// The name partition directory `{topic}-{index}` is renamed to before it is removed:
/// `{topic}-{index}.{unique}-delete`, as Kafka names it, with the topic cut short so that
/// the name fits in [`FILE_NAME_MAX`] bytes (topic names are ASCII). [`parse_dir`] never
/// takes it for a partition (it does not end in `-{index}`); [`is_delete_dir`] does.
fn delete_dir_name(topic: &str, index: i32, unique: uuid::Uuid) -> String {
    let suffix = format!("-{index}.{}{DELETE_SUFFIX}", unique.simple());
    let keep = topic.len().min(FILE_NAME_MAX.saturating_sub(suffix.len()));
    format!("{}{suffix}", topic.get(..keep).unwrap_or(topic))
}

/// Whether `name` is a directory renamed aside by [`delete_dir_name`].
fn is_delete_dir(name: &str) -> bool {
    name.strip_suffix(DELETE_SUFFIX)
        .and_then(|rest| rest.rsplit_once('.'))
        .is_some_and(|(_, id)| id.len() == 32 && id.bytes().all(|c| c.is_ascii_hexdigit()))
}

/// The topic id in a partition directory's `partition.metadata` (`None` if it has none or
/// it is unreadable), and the durability policy if it says one.
async fn read_partition_metadata(
    dir: &Dir,
) -> Result<(Option<uuid::Uuid>, Option<TopicFsync>), LogError> {
    Ok(match checkpoint::read(dir, PARTITION_METADATA).await? {
        Some(Ok(bytes)) => decode_partition_metadata(&bytes),
        _ => (None, None),
    })
}

/// Renames partition directories `{topic}-{index}` aside (see [`delete_dir_name`]), syncs
/// `root` so the renames are durable, then removes the renamed directories in the
/// background. Directories that do not exist are skipped. Their partitions must be closed
/// (nothing writes in them any more).
///
/// # Errors
/// The first rename or the sync that failed; the directories not renamed stay under their
/// names (a later creation of the topic, or the next start, renames them aside), those
/// renamed and not made durable are left for the next start to remove.
async fn set_aside(root: &Dir, dirs: &[(&str, i32)]) -> io::Result<()> {
    let mut aside = Vec::new();
    let mut result = Ok(());
    for &(topic, index) in dirs {
        let to = delete_dir_name(topic, index, new_topic_id());
        match root.rename_dir(&format!("{topic}-{index}"), &to).await {
            Ok(()) => aside.push(to),
            // Never made: a creation cut short.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(topic, partition = index, error = %e, "renaming a deleted partition's directory aside failed");
                if result.is_ok() {
                    result = Err(e);
                }
            }
        }
    }
    if aside.is_empty() {
        return result;
    }
    // The old name must be free for good before a partition takes it again: a crash that
    // kept the new directory and lost the rename would put the old files back in it.
    root.sync().await?;
    let root = root.clone();
    lode_env::task::spawn(async move {
        for name in aside {
            remove_aside(&root, &name).await;
        }
    });
    result
}

/// Removes a directory renamed aside. A failure is logged, never fatal: the directory
/// belongs to no partition, and the next start removes what is left of it.
async fn remove_aside(root: &Dir, name: &str) {
    match root.remove_all(name).await {
        Ok(()) => tracing::debug!(dir = name, "deleted partition's directory removed"),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(dir = name, error = %e, "removing a deleted partition's directory failed; the next start retries")
        }
    }
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
            if is_delete_dir(&name) {
                // A partition deleted before the last stop, its removal not finished.
                remove_aside(&root, &name).await;
                continue;
            }
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
            dirs: Arc::new(tokio::sync::Mutex::new(())),
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
            let mut stale = Vec::new();
            for (index, dir) in dirs {
                let (read_id, read_fsync) = read_partition_metadata(&dir).await?;
                match (id, read_id) {
                    (None, Some(read)) => {
                        id = Some(read);
                        fsync = read_fsync.unwrap_or(fsync);
                    }
                    (Some(topic_id), Some(read)) if read != topic_id => {
                        // Left by a topic of the same name whose deletion, or whose
                        // replacement by this one, a crash cut short: not this topic's.
                        tracing::warn!(topic = %name, partition = index, "partition directory of another topic id; removed");
                        stale.push(index);
                        continue;
                    }
                    _ => {}
                }
                // Partitions after a stale one are opened by `complete`, which adds the
                // missing ones (this topic's own directories are reused there).
                if stale.is_empty() {
                    partitions.push(topics.open_partition(&name, index, dir, fsync).await?);
                }
            }
            let stale: Vec<(&str, i32)> = stale.into_iter().map(|i| (name.as_str(), i)).collect();
            set_aside(&topics.root, &stale).await?;
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
        self.hosted(name, index).await.map(|(_, p)| p)
    }

    /// Partition `index` of topic `name`, with the topic's id (which incarnation of the
    /// name this broker holds: a deleted topic's may still be here under the new one's
    /// name until reconciliation removes it).
    pub async fn hosted(&self, name: &str, index: i32) -> Option<(uuid::Uuid, Arc<Partition>)> {
        let t = self.get(name).await?;
        usize::try_from(index)
            .ok()
            .and_then(|i| t.partitions.get(i))
            .cloned()
            .map(|p| (t.id, p))
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
        // Creation holds the locks so that neither another creation nor a deletion can
        // race on the directories.
        let _dirs = self.dirs.lock().await;
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

    /// Creates partition `index` of a topic on disk, durably, and opens it. A directory
    /// already there with the same topic id is this partition's (a creation cut short) and
    /// is opened as it is; one with another id, or none, is a deleted topic's leftover: it
    /// is renamed aside and removed, and the partition starts empty. Callers hold `dirs`.
    async fn make_partition(
        &self,
        name: &str,
        index: i32,
        id: uuid::Uuid,
        fsync: TopicFsync,
    ) -> Result<Arc<Partition>, CreateError> {
        let dir_name = format!("{name}-{index}");
        let mut dir = self.root.sub_dir(&dir_name).await?;
        if !dir.list().await?.is_empty() {
            let (found, _) = read_partition_metadata(&dir).await?;
            if found != Some(id) {
                tracing::warn!(topic = name, partition = index, found = ?found, "partition directory of another topic id; removed");
                crate::observe::probe(self.config.node_id, "leftover-directory-set-aside");
                set_aside(&self.root, &[(name, index)]).await?;
                dir = self.root.sub_dir(&dir_name).await?;
            }
        }
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
        let _dirs = self.dirs.lock().await;
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

    /// Deletes a topic and its data. Returns false if it did not exist. Once this returns
    /// (also with an error), the topic is gone from this broker and its name can be taken
    /// again: its partitions are closed and their directories renamed aside, durably; the
    /// renamed directories are removed in the background. The work runs on a task of its
    /// own, so a caller cancelled part way (its request dropped) cannot cut it short.
    ///
    /// # Errors
    /// When a directory could not be renamed aside or the rename made durable: a creation
    /// of the same name, or the next start, renames what is left aside (its topic id is not
    /// the new topic's).
    pub async fn delete(&self, name: &str) -> Result<bool, io::Error> {
        let dirs = Arc::clone(&self.dirs).lock_owned().await;
        let Some(topic) = self.topics.write().await.remove(name) else {
            return Ok(false);
        };
        // No await between taking the topic out and handing it to the task.
        let (root, name) = (self.root.clone(), name.to_owned());
        #[cfg(feature = "planted-bugs")]
        if self.config.planted == Some(crate::config::PlantedBug::DeleteInPlace) {
            drop(dirs);
            for p in &topic.partitions {
                root.remove_all(&format!("{name}-{}", p.index)).await?;
            }
            return Ok(true);
        }
        let task = lode_env::task::spawn(async move {
            let _dirs = dirs;
            for p in &topic.partitions {
                p.close_for_delete().await;
            }
            let parts: Vec<(&str, i32)> = topic
                .partitions
                .iter()
                .map(|p| (name.as_str(), p.index))
                .collect();
            let result = set_aside(&root, &parts).await;
            if result.is_ok() {
                tracing::info!(topic = name, "topic deleted");
            }
            result
        });
        task.await
            .map_err(|e| io::Error::other(format!("deleting a topic: {e}")))??;
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

#[cfg(all(test, not(madsim)))]
mod delete_tests {
    #![allow(clippy::unwrap_used)] // tests fail loudly

    use std::time::Duration;

    use lode_env::SimDisk;
    use lode_proto::batch::RecordBatchBuilder;
    use lode_proto::{BrokerId, Offset};

    use super::*;

    const A: uuid::Uuid = uuid::Uuid::from_u128(0xa);
    const B: uuid::Uuid = uuid::Uuid::from_u128(0xb);

    async fn open(root: &Dir) -> (Topics, Arc<Halt>) {
        let halt = Arc::new(Halt::default());
        let config = BrokerConfig::new(BrokerId(0), "127.0.0.1:0".parse().unwrap());
        let topics = Topics::open(
            root.clone(),
            Clock::system(),
            config,
            watch::channel(0).0,
            Arc::clone(&halt),
        )
        .await
        .unwrap();
        (topics, halt)
    }

    async fn write(p: &Partition, key: &str) {
        let mut b = RecordBatchBuilder::new(Offset(0));
        b.push(Some(key.as_bytes()), Some(b"v"), &[], 0);
        let (info, _) = p.append(&mut b.build()).await.unwrap();
        p.wait_committed(info.last_offset, p.leader_epoch()).await;
    }

    /// Whether `p` holds a record with `key`, and how many bytes it holds.
    async fn holds(p: &Partition, key: &str) -> (bool, usize) {
        let data = p.read(p.log_start_offset().await, 1 << 20).await.unwrap();
        let found = data.windows(key.len()).any(|w| w == key.as_bytes());
        (found, data.len())
    }

    async fn aside(root: &Dir) -> Vec<String> {
        let names = root.list().await.unwrap();
        names.into_iter().filter(|n| is_delete_dir(n)).collect()
    }

    /// Waits for the background removal of directories set aside.
    async fn until_removed(root: &Dir) {
        for _ in 0..1000 {
            if aside(root).await.is_empty() {
                return;
            }
            Clock::system().sleep(Duration::from_millis(2)).await;
        }
        panic!("left: {:?}", aside(root).await);
    }

    #[test]
    fn names_set_aside_are_never_partitions_and_fit() {
        let long = "x".repeat(249);
        let unique = uuid::Uuid::from_u128(u128::MAX - 7);
        for (topic, index) in [
            ("t", 0),
            ("a-delete", 3),
            (&*long, 9_999),
            (&*long, i32::MAX),
        ] {
            let name = delete_dir_name(topic, index, unique);
            assert!(name.len() <= FILE_NAME_MAX, "{} bytes", name.len());
            assert!(name.ends_with(&format!("-{index}.{}-delete", unique.simple())));
            assert!(topic.starts_with(name.split(&format!("-{index}.")).next().unwrap()));
            assert_eq!(parse_dir(&name), None, "{name}");
            assert!(is_delete_dir(&name), "{name}");
        }
        assert_eq!(delete_dir_name(&long, 0, unique).len(), FILE_NAME_MAX);
        for live in ["t-0", "a-delete-0", "my-topic-12"] {
            assert!(parse_dir(live).is_some() && !is_delete_dir(live), "{live}");
        }
        for other in [
            "__cluster_metadata-0",
            "t-0.x-delete",
            "log-dir.id",
            "-delete",
        ] {
            assert!(!is_delete_dir(other), "{other}");
        }
    }

    /// A crash right after a deletion renamed the directories aside leaves them: the next
    /// start removes them and opens no partition from them.
    #[tokio::test]
    async fn a_directory_set_aside_is_removed_at_the_next_start() {
        let disk = SimDisk::new("n0", 3);
        let root = Dir::sim(&disk);
        let (topics, _) = open(&root).await;
        let t = topics.create("t", 2, TopicFsync::Always).await.unwrap();
        for p in &t.partitions {
            write(p, "old-record").await;
        }
        topics.close().await;
        drop((t, topics));
        for index in 0..2 {
            let to = delete_dir_name("t", index, new_topic_id());
            root.rename_dir(&format!("t-{index}"), &to).await.unwrap();
        }
        root.sync().await.unwrap();
        disk.crash();
        assert_eq!(aside(&root).await.len(), 2);

        let (topics, halt) = open(&root).await;
        assert!(topics.all().await.is_empty(), "nothing opened from them");
        assert!(aside(&root).await.is_empty(), "removed at the start");
        let t = topics.create("t", 2, TopicFsync::Always).await.unwrap();
        for p in &t.partitions {
            assert_eq!(holds(p, "old-record").await, (false, 0));
        }
        assert_eq!(halt.reason(), None);
        topics.close().await;
    }

    /// Partition directories of another topic id (a deletion cut short) are never reused by
    /// a new topic of the same name; with the same id they are this topic's own.
    #[tokio::test]
    async fn a_directory_of_another_topic_id_is_not_reused() {
        let disk = SimDisk::new("n0", 4);
        let root = Dir::sim(&disk);
        let (topics, _) = open(&root).await;
        for name in ["t", "u"] {
            let made = topics.create_with_id(name, 3, Some(A), TopicFsync::Always);
            for p in &made.await.unwrap().partitions {
                write(p, "old-record").await;
            }
        }
        topics.close().await;
        drop(topics);
        // As if a deletion had been cut short after its first directory: t-1, t-2 are
        // left, and the next start does not open them (not 0..n).
        for name in ["t-0", "u-0"] {
            root.remove_all(name).await.unwrap();
        }
        root.sync().await.unwrap();

        let (topics, halt) = open(&root).await;
        assert!(topics.get("t").await.is_none() && topics.get("u").await.is_none());
        // Another id: a new topic, empty.
        let t = topics.create_with_id("t", 3, Some(B), TopicFsync::Always);
        let t = t.await.unwrap();
        for p in &t.partitions {
            assert_eq!(holds(p, "old-record").await, (false, 0), "t-{}", p.index);
            write(p, "new-record").await;
            assert!(holds(p, "new-record").await.0);
        }
        // The same id: the partitions left are this topic's (a creation cut short).
        let u = topics.create_with_id("u", 3, Some(A), TopicFsync::Always);
        let u = u.await.unwrap();
        assert!(!holds(&u.partitions[0], "old-record").await.0);
        assert!(holds(&u.partitions[1], "old-record").await.0);
        assert!(holds(&u.partitions[2], "old-record").await.0);
        until_removed(&root).await;
        assert_eq!(halt.reason(), None);
        topics.close().await;
        drop((t, u, topics));

        // The next start finds the new topic's data only.
        let (topics, _) = open(&root).await;
        let t = topics.get("t").await.unwrap();
        assert_eq!((t.id, t.partitions.len()), (B, 3));
        for p in &t.partitions {
            assert!(!holds(p, "old-record").await.0 && holds(p, "new-record").await.0);
        }
        topics.close().await;
    }

    /// A crash while a new topic replaced the directories of an old one of the same name
    /// leaves directories of both ids: the start opens only the new topic's, removes the
    /// others, and `complete` makes them anew.
    #[tokio::test]
    async fn a_partition_of_another_topic_id_is_not_opened() {
        let disk = SimDisk::new("n0", 5);
        let root = Dir::sim(&disk);
        let (topics, _) = open(&root).await;
        let old = topics.create_with_id("t", 2, Some(A), TopicFsync::Always);
        for p in &old.await.unwrap().partitions {
            write(p, "old-record").await;
        }
        topics.close().await;
        drop(topics);
        root.remove_all("t-0").await.unwrap();
        root.sync().await.unwrap();
        let (topics, _) = open(&root).await;
        let new = topics.create_with_id("t", 1, Some(B), TopicFsync::Always);
        write(&new.await.unwrap().partitions[0], "new-record").await;
        topics.close().await;
        drop(topics);
        // t-0 is B's, t-1 still A's.

        let (topics, halt) = open(&root).await;
        let t = topics.get("t").await.unwrap();
        assert_eq!(
            (t.id, t.partitions.len()),
            (B, 1),
            "t-1 is not this topic's"
        );
        until_removed(&root).await;
        assert_eq!(partitions_on_disk(&root).await, ["t-0"]);
        assert_eq!(
            topics.complete("t", 2, TopicFsync::Always).await.unwrap(),
            1
        );
        let p1 = topics.partition("t", 1).await.unwrap();
        assert_eq!(holds(&p1, "old-record").await, (false, 0));
        assert_eq!(halt.reason(), None);
        topics.close().await;
    }

    async fn partitions_on_disk(root: &Dir) -> Vec<String> {
        let names = root.list().await.unwrap();
        names
            .into_iter()
            .filter(|n| parse_dir(n).is_some())
            .collect()
    }
}
