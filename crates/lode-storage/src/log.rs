//! The partition log: a directory of segments, each a file of RecordBatch v2 batches stored
//! as the client sent them (base offset and leader epoch patched in place), with sparse
//! indexes, a leader-epoch cache, checkpoints and crash recovery.
//!
//! Files in a partition directory:
//! - `{base:020}.log`: the batches of the segment whose first offset is `base`;
//! - `{base:020}.index`, `{base:020}.timeindex`: its indexes, written when it is sealed;
//! - `log.checkpoint`: recovery point, high watermark and log start offset;
//! - `leader-epoch.checkpoint`: the leader-epoch cache;
//! - `clean-shutdown`: present only between a clean close and the next open.
//!
//! Durability: the *durable offset* is the offset below which every record has been synced.
//! It advances only after a successful sync. A failed write or sync fails the log: every
//! later call returns [`LogError::Failed`] until the log is reopened, which recovers from
//! what the disk really holds (after a failed `fsync` the unsynced data is undefined).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use lode_core::LeaderEpochCache;
use lode_env::{Clock, Dir, File};
use lode_proto::batch::{self, RecordBatch};
use lode_proto::{Epoch, Instant, Offset};

use crate::checkpoint;
use crate::error::LogError;
use crate::index::{IndexMeta, SegmentIndex};
use crate::recovery;

/// When the log syncs appended data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncPolicy {
    /// Every append syncs before it returns.
    EveryAppend,
    /// Appends return after writing; the owner calls [`Log::sync`] (or the split
    /// [`Log::sync_begin`] / [`Log::sync_finish`]) once for many appends.
    GroupCommit,
}

/// A deliberately broken behaviour, for proving that tests and checkers catch bugs.
#[cfg(feature = "planted-bugs")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlantedBug {
    /// `sync` reports success and advances the durable offset without syncing.
    SyncSkipsDisk,
    /// Recovery trusts the whole log (no CRC scan of the tail).
    RecoveryTrustsTail,
    /// A failed sync counts as a good one: the error is logged and dropped, and the durable
    /// offset advances over pages the kernel may already have dropped (PostgreSQL's retried
    /// fsync before 2018, "fsyncgate").
    SyncFailureIgnored,
}

/// Told of every storage fault a log meets (a failed write or sync, a failed read, stored
/// bytes that fail their check), with the log's directory and the error: the log's owner
/// decides what the process does about it (lode's broker halts, as Kafka's does when its
/// log directory fails). Called with the log borrowed: it must not block.
#[derive(Clone)]
pub struct FailureHook(std::sync::Arc<FailureFn>);

/// What a [`FailureHook`] calls: the log's directory, the error.
type FailureFn = dyn Fn(&str, &LogError) + Send + Sync;

impl FailureHook {
    /// A hook calling `f`.
    pub fn new(f: impl Fn(&str, &LogError) + Send + Sync + 'static) -> FailureHook {
        FailureHook(std::sync::Arc::new(f))
    }
}

impl std::fmt::Debug for FailureHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FailureHook")
    }
}

/// Configuration of one log.
#[derive(Clone, Debug)]
pub struct LogConfig {
    /// Roll to a new segment before one would exceed this size.
    pub segment_bytes_max: u64,
    /// Roll to a new segment once the active one is this old (and not empty).
    pub segment_age_max: Duration,
    /// Bytes of log between two index entries.
    pub index_interval_bytes: u64,
    /// The largest batch accepted.
    pub batch_bytes_max: usize,
    /// When appends are synced.
    pub sync: SyncPolicy,
    /// Bytes at the log's tail kept in the OS page cache for readers; what is behind them
    /// and synced is evicted (see `lode_env::disk::File::evict`). 0: the OS decides.
    pub page_cache_window_bytes: u64,
    /// Told of every storage fault (see [`FailureHook`]).
    pub on_failure: Option<FailureHook>,
    /// A planted bug to switch on (tests only).
    #[cfg(feature = "planted-bugs")]
    pub planted_bug: Option<PlantedBug>,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes_max: 1 << 30,
            segment_age_max: Duration::from_secs(7 * 24 * 3600),
            index_interval_bytes: 4096,
            batch_bytes_max: (1 << 20) + 1024,
            sync: SyncPolicy::GroupCommit,
            page_cache_window_bytes: PAGE_CACHE_WINDOW_BYTES,
            on_failure: None,
            #[cfg(feature = "planted-bugs")]
            planted_bug: None,
        }
    }
}

/// The default of [`LogConfig::page_cache_window_bytes`].
pub const PAGE_CACHE_WINDOW_BYTES: u64 = 64 << 20;

/// Page-cache evictions are made at least this large (fewer calls).
const EVICT_STEP_BYTES: u64 = 4 << 20;

/// Where an append put its records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendInfo {
    /// Offset of the first record appended.
    pub base_offset: Offset,
    /// Offset of the last record appended.
    pub last_offset: Offset,
    /// The largest timestamp among the appended batches.
    pub max_timestamp_ms: i64,
}

/// What recovery found and did when the log was opened.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The previous close was clean (its marker was intact): nothing was scanned.
    pub clean_shutdown: bool,
    /// Bytes whose batches were read and CRC-checked.
    pub scanned_bytes: u64,
    /// Bytes cut from the end of the log (torn or corrupt batches and what followed).
    pub truncated_bytes: u64,
    /// Segments removed because they followed a cut or a gap.
    pub removed_segments: Vec<Offset>,
    /// Checkpoints or indexes that could not be used, and what was done instead.
    pub fallbacks: Vec<String>,
}

pub(crate) struct Segment {
    pub(crate) base: Offset,
    pub(crate) file: File,
    pub(crate) size: u64,
    pub(crate) next_offset: Offset,
    pub(crate) max_timestamp_ms: i64,
    pub(crate) index: SegmentIndex,
    pub(crate) created: Instant,
    /// Bytes known synced (all of a segment once it is rolled).
    pub(crate) clean: u64,
    /// Bytes evicted from the page cache.
    pub(crate) evicted: u64,
}

impl Segment {
    pub(crate) fn meta(&self) -> IndexMeta {
        IndexMeta {
            segment_size: self.size,
            next_offset: self.next_offset,
            max_timestamp_ms: self.max_timestamp_ms,
        }
    }
}

/// An in-flight group commit: the files to sync and the offset that becomes durable when
/// they all are. Run it with [`SyncJob::run`] while the log keeps taking appends.
#[derive(Debug)]
pub struct SyncJob {
    files: Vec<(String, File)>,
    /// Each synced segment's base and size when the job began.
    sizes: Vec<(Offset, u64)>,
    target: Offset,
    /// The log's truncation count when the job began: a truncation meanwhile means the
    /// offsets below `target` may hold new, unsynced data.
    truncations: u64,
    #[cfg(feature = "planted-bugs")]
    skip: bool,
}

impl SyncJob {
    /// Syncs the files.
    ///
    /// # Errors
    /// The first sync that fails; hand it to [`Log::sync_finish`].
    pub async fn run(&self) -> Result<(), LogError> {
        #[cfg(feature = "planted-bugs")]
        if self.skip {
            return Ok(());
        }
        for (name, file) in &self.files {
            file.sync_data().await.map_err(LogError::io("sync", name))?;
        }
        Ok(())
    }
}

/// One partition's log. See the module documentation.
pub struct Log {
    pub(crate) dir: Dir,
    pub(crate) clock: Clock,
    pub(crate) config: LogConfig,
    pub(crate) segments: BTreeMap<Offset, Segment>,
    pub(crate) log_start: Offset,
    pub(crate) log_end: Offset,
    pub(crate) durable: Offset,
    pub(crate) recovery_point: Offset,
    pub(crate) high_watermark: Offset,
    pub(crate) epochs: LeaderEpochCache,
    pub(crate) dirty: BTreeSet<Offset>,
    pub(crate) failed: Option<String>,
    /// Closed: every call fails with [`LogError::Closed`] and no file is written again.
    pub(crate) closed: bool,
    /// How many truncations this log has done; see [`SyncJob`].
    pub(crate) truncations: u64,
}

pub(crate) const LOG_CHECKPOINT: &str = "log.checkpoint";
pub(crate) const EPOCH_CHECKPOINT: &str = "leader-epoch.checkpoint";
pub(crate) const CLEAN_SHUTDOWN: &str = "clean-shutdown";

pub(crate) fn log_name(base: Offset) -> String {
    format!("{:020}.log", base.0)
}
pub(crate) fn index_name(base: Offset) -> String {
    format!("{:020}.index", base.0)
}
pub(crate) fn time_index_name(base: Offset) -> String {
    format!("{:020}.timeindex", base.0)
}

/// The fields of a batch header the log needs, read from its first 27 bytes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Header {
    pub(crate) base: Offset,
    pub(crate) size: u64,
    pub(crate) last: Offset,
}

pub(crate) const HEADER_PEEK: usize = 27;

pub(crate) fn peek_header(b: &[u8]) -> Option<Header> {
    let size = batch::peek_size(b).ok()??;
    let base = i64::from_be_bytes(b.get(0..8)?.try_into().ok()?);
    let delta = i32::from_be_bytes(b.get(23..27)?.try_into().ok()?);
    Some(Header {
        base: Offset(base),
        size: size as u64,
        last: Offset(base).add(i64::from(delta)),
    })
}

impl Log {
    /// Opens (and recovers) the log in `dir`, creating an empty one if the directory holds
    /// none.
    ///
    /// # Errors
    /// [`LogError::Io`] when the disk fails during recovery. Damaged data is not an error:
    /// it is cut off and reported in the [`RecoveryReport`].
    pub async fn open(
        dir: Dir,
        clock: Clock,
        config: LogConfig,
    ) -> Result<(Log, RecoveryReport), LogError> {
        recovery::open(dir, clock, config).await
    }

    fn check_ok(&self) -> Result<(), LogError> {
        if self.closed {
            return Err(LogError::Closed);
        }
        match &self.failed {
            Some(why) => Err(LogError::Failed(why.clone())),
            None => Ok(()),
        }
    }

    fn fail(&mut self, e: LogError) -> LogError {
        tracing::error!(dir = %self.dir.display(), error = %e, "log failed; it must be reopened");
        self.failed = Some(e.to_string());
        self.report(&e);
        e
    }

    /// Tells the failure hook of `e` if it is a storage fault.
    fn report(&self, e: &LogError) {
        if let Some(hook) = &self.config.on_failure {
            if e.is_storage_fault() {
                (hook.0)(&self.dir.display(), e);
            }
        }
    }

    /// `r`, with a storage fault told to the failure hook.
    fn reported<T>(&self, r: Result<T, LogError>) -> Result<T, LogError> {
        if let Err(e) = &r {
            self.report(e);
        }
        r
    }

    /// The first offset still in the log.
    #[must_use]
    pub fn log_start_offset(&self) -> Offset {
        self.log_start
    }

    /// The offset the next record will get.
    #[must_use]
    pub fn log_end_offset(&self) -> Offset {
        self.log_end
    }

    /// Every record below this offset has been synced.
    #[must_use]
    pub fn durable_offset(&self) -> Offset {
        self.durable
    }

    /// The high watermark last set (and checkpointed) by the owner.
    #[must_use]
    pub fn high_watermark(&self) -> Offset {
        self.high_watermark
    }

    /// Sets the high watermark (clamped to the log); persisted at the next checkpoint.
    pub fn set_high_watermark(&mut self, hw: Offset) {
        self.high_watermark = hw.clamp(self.log_start, self.log_end);
    }

    /// The leader-epoch cache.
    #[must_use]
    pub fn epochs(&self) -> &LeaderEpochCache {
        &self.epochs
    }

    /// Base offsets of the segments, oldest first.
    #[must_use]
    pub fn segment_bases(&self) -> Vec<Offset> {
        self.segments.keys().copied().collect()
    }

    /// Where the log's last `bytes` begin, to a segment's start: the base of the latest
    /// segment from which the segments to the end hold at least `bytes` (the log start if
    /// the whole log holds fewer).
    #[must_use]
    pub fn tail_start(&self, bytes: u64) -> Offset {
        let mut held = 0_u64;
        for seg in self.segments.values().rev() {
            held = held.saturating_add(seg.size);
            if held >= bytes {
                return seg.base.max(self.log_start);
            }
        }
        self.log_start
    }

    /// Whether an earlier failure requires reopening.
    #[must_use]
    pub fn is_failed(&self) -> bool {
        self.failed.is_some()
    }

    /// Appends one batch as leader: validates it (structure, CRC, record count), assigns it
    /// the next offsets and stamps `epoch`, both in place, and writes it.
    ///
    /// # Errors
    /// [`LogError::InvalidBatch`], [`LogError::BatchTooLarge`], or an IO error (which
    /// fails the log).
    pub async fn append_leader(
        &mut self,
        batch_bytes: &mut [u8],
        epoch: Epoch,
    ) -> Result<AppendInfo, LogError> {
        self.check_ok()?;
        if batch_bytes.len() > self.config.batch_bytes_max {
            return Err(LogError::BatchTooLarge {
                size: batch_bytes.len(),
                max: self.config.batch_bytes_max,
            });
        }
        let (count, max_ts) = {
            // `validate` checks the CRC: parsing checks structure only, so it is done once.
            let (b, rest) = RecordBatch::parse_unchecked_crc(batch_bytes)?;
            if !rest.is_empty() {
                return Err(LogError::InvalidBatch(batch::BatchError::TrailingBytes));
            }
            b.validate()?;
            (i64::from(b.last_offset_delta()), b.max_timestamp())
        };
        let base = self.log_end;
        batch::set_base_offset(batch_bytes, base)?;
        batch::set_partition_leader_epoch(batch_bytes, epoch)?;
        let last = base.add(count);
        self.write_batch(batch_bytes, base, last, epoch, max_ts)
            .await?;
        if self.config.sync == SyncPolicy::EveryAppend {
            self.sync().await?;
        }
        Ok(AppendInfo {
            base_offset: base,
            last_offset: last,
            max_timestamp_ms: max_ts,
        })
    }

    /// Appends batches fetched from a leader, keeping their offsets and epochs. The first
    /// must start at the log end; each is CRC-checked.
    ///
    /// # Errors
    /// [`LogError::NonContiguous`], [`LogError::StaleEpoch`], [`LogError::InvalidBatch`],
    /// or an IO error (which fails the log).
    pub async fn append_replica(&mut self, batches: &[u8]) -> Result<Option<AppendInfo>, LogError> {
        self.check_ok()?;
        let mut info: Option<AppendInfo> = None;
        let mut rest = batches;
        while !rest.is_empty() {
            let (b, tail) = RecordBatch::parse_unchecked_crc(rest)?;
            b.validate()?;
            if b.size() > self.config.batch_bytes_max {
                return Err(LogError::BatchTooLarge {
                    size: b.size(),
                    max: self.config.batch_bytes_max,
                });
            }
            if b.base_offset() != self.log_end {
                return Err(LogError::NonContiguous {
                    got: b.base_offset(),
                    expected: self.log_end,
                });
            }
            let epoch = b.partition_leader_epoch();
            if let Some(latest) = self.epochs.latest() {
                if epoch < latest.epoch {
                    return Err(LogError::StaleEpoch {
                        got: epoch.0,
                        latest: latest.epoch.0,
                    });
                }
            }
            let (base, last, ts) = (b.base_offset(), b.last_offset(), b.max_timestamp());
            self.write_batch(b.as_bytes(), base, last, epoch, ts)
                .await?;
            info = Some(match info {
                None => AppendInfo {
                    base_offset: base,
                    last_offset: last,
                    max_timestamp_ms: ts,
                },
                Some(i) => AppendInfo {
                    last_offset: last,
                    max_timestamp_ms: i.max_timestamp_ms.max(ts),
                    ..i
                },
            });
            rest = tail;
        }
        if info.is_some() && self.config.sync == SyncPolicy::EveryAppend {
            self.sync().await?;
        }
        Ok(info)
    }

    fn active(&self) -> Result<&Segment, LogError> {
        self.segments
            .values()
            .next_back()
            .ok_or_else(|| LogError::Inconsistent {
                dir: self.dir.display(),
                reason: "no segment".into(),
            })
    }

    async fn write_batch(
        &mut self,
        bytes: &[u8],
        base: Offset,
        last: Offset,
        epoch: Epoch,
        max_ts: i64,
    ) -> Result<(), LogError> {
        assert_eq!(base, self.log_end, "batches are written at the log end");
        let size = bytes.len() as u64;
        let now = self.clock.now();
        let roll = {
            let active = self.active()?;
            active.size > 0
                && (active.size + size > self.config.segment_bytes_max
                    || now.saturating_since(active.created) >= self.config.segment_age_max
                    || last.0.saturating_sub(active.base.0) > i64::from(u32::MAX))
        };
        if roll {
            self.roll().await?;
        }
        let interval = self.config.index_interval_bytes;
        let active =
            self.segments
                .values_mut()
                .next_back()
                .ok_or_else(|| LogError::Inconsistent {
                    dir: String::new(),
                    reason: "no segment".into(),
                })?;
        let pos = active.size;
        let position = u32::try_from(pos).map_err(|_| LogError::Inconsistent {
            dir: String::new(),
            reason: format!("segment position {pos} beyond 4 GiB"),
        })?;
        let seg_base = active.base;
        if let Err(e) = active.file.write_at(pos, bytes).await {
            let e = LogError::io("write", log_name(seg_base))(e);
            return Err(self.fail(e));
        }
        active.size += size;
        active.next_offset = last.next();
        active.max_timestamp_ms = active.max_timestamp_ms.max(max_ts);
        active.index.on_batch(
            base,
            position,
            u32::try_from(size).unwrap_or(u32::MAX),
            max_ts,
            interval,
        );
        self.epochs.assign(epoch, base);
        self.log_end = last.next();
        self.dirty.insert(seg_base);
        Ok(())
    }

    /// Seals the active segment (synced, indexes written) and starts a new one at the log
    /// end, durably named. Appends roll by themselves by size and age; this forces it.
    /// Rolling an empty segment does nothing.
    ///
    /// # Errors
    /// An IO error, which fails the log.
    pub async fn roll(&mut self) -> Result<(), LogError> {
        self.check_ok()?;
        if self.active()?.size == 0 {
            return Ok(());
        }
        let r = self.roll_inner().await;
        r.map_err(|e| self.fail(e))
    }

    async fn roll_inner(&mut self) -> Result<(), LogError> {
        let (base, file, meta) = {
            let a = self.active()?;
            (a.base, a.file.clone(), a.meta())
        };
        file.sync_data()
            .await
            .map_err(LogError::io("sync", log_name(base)))?;
        self.dirty.remove(&base);
        if let Some(seg) = self.segments.get_mut(&base) {
            seg.clean = seg.size;
        }
        self.write_indexes(base).await?;
        debug_assert_eq!(meta.next_offset, self.log_end);
        self.create_segment(self.log_end).await?;
        // Everything before the new segment is now synced.
        self.durable = self.durable.max(meta.next_offset);
        self.write_checkpoints().await?;
        tracing::debug!(segment = %self.log_end, "rolled segment");
        Ok(())
    }

    pub(crate) async fn write_indexes(&self, base: Offset) -> Result<(), LogError> {
        let Some(seg) = self.segments.get(&base) else {
            return Ok(());
        };
        let meta = seg.meta();
        for (name, bytes) in [
            (index_name(base), seg.index.encode_offsets(base, meta)),
            (time_index_name(base), seg.index.encode_times(base, meta)),
        ] {
            checkpoint::remove(&self.dir, &name).await?;
            let f = self
                .dir
                .create(&name)
                .await
                .map_err(LogError::io("create", &name))?;
            f.write_at(0, &bytes)
                .await
                .map_err(LogError::io("write", &name))?;
            f.sync_data().await.map_err(LogError::io("sync", &name))?;
        }
        Ok(())
    }

    /// Creates an empty segment at `base` and syncs the directory so its name is durable.
    pub(crate) async fn create_segment(&mut self, base: Offset) -> Result<(), LogError> {
        let name = log_name(base);
        let file = self
            .dir
            .create(&name)
            .await
            .map_err(LogError::io("create", &name))?;
        self.dir
            .sync()
            .await
            .map_err(LogError::io("sync directory", self.dir.display()))?;
        let seg = Segment {
            base,
            file,
            size: 0,
            next_offset: base,
            max_timestamp_ms: i64::MIN,
            index: SegmentIndex::default(),
            created: self.clock.now(),
            clean: 0,
            evicted: 0,
        };
        self.segments.insert(base, seg);
        Ok(())
    }

    /// Starts a group commit of everything appended so far.
    #[must_use]
    pub fn sync_begin(&mut self) -> SyncJob {
        let dirty: Vec<&Segment> = std::mem::take(&mut self.dirty)
            .into_iter()
            .filter_map(|b| self.segments.get(&b))
            .collect();
        let files = dirty
            .iter()
            .map(|s| (log_name(s.base), s.file.clone()))
            .collect();
        let sizes = dirty.iter().map(|s| (s.base, s.size)).collect();
        SyncJob {
            files,
            sizes,
            target: self.log_end,
            truncations: self.truncations,
            #[cfg(feature = "planted-bugs")]
            skip: self.config.planted_bug == Some(PlantedBug::SyncSkipsDisk),
        }
    }

    /// Ends a group commit: on success the durable offset advances to what the job covered;
    /// on failure the log fails (the unsynced data is undefined).
    ///
    /// # Errors
    /// The job's error, or [`LogError::Failed`] if the log failed meanwhile.
    pub fn sync_finish(
        &mut self,
        job: SyncJob,
        result: Result<(), LogError>,
    ) -> Result<Offset, LogError> {
        self.check_ok()?;
        #[cfg(feature = "planted-bugs")]
        let result = match result {
            Err(e) if self.config.planted_bug == Some(PlantedBug::SyncFailureIgnored) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "planted: sync failure ignored");
                Ok(())
            }
            r => r,
        };
        match result {
            Ok(()) => {
                // After a truncation during the sync, the offsets the job covered may hold
                // new data it did not sync: the durable offset stays put.
                if job.truncations == self.truncations {
                    self.durable = self.durable.max(job.target);
                    for (base, size) in &job.sizes {
                        if let Some(seg) = self.segments.get_mut(base) {
                            seg.clean = seg.clean.max(*size).min(seg.size);
                        }
                    }
                    self.evict_behind();
                }
                Ok(self.durable)
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Evicts from the page cache what is synced and more than
    /// [`LogConfig::page_cache_window_bytes`] behind the log's end, newest segment first
    /// (older ones are done already). Readers at the tail keep their cache; a reader far
    /// behind reads from the device.
    fn evict_behind(&mut self) {
        let window = self.config.page_cache_window_bytes;
        if window == 0 {
            return;
        }
        let mut keep = window;
        for seg in self.segments.values_mut().rev() {
            let mut limit = seg.size.saturating_sub(keep).min(seg.clean);
            if limit < seg.size {
                // Whole pages: the page at the synced end may be dirty again.
                limit -= limit % lode_env::disk::PAGE_SIZE;
            }
            keep = keep.saturating_sub(seg.size);
            let from = seg.evicted.min(limit);
            if limit - from >= EVICT_STEP_BYTES || (limit > from && limit == seg.size) {
                seg.file.evict(from, limit - from);
                seg.evicted = limit;
            }
            if keep == 0 && seg.evicted >= seg.size {
                break;
            }
        }
    }

    /// Syncs everything appended so far and returns the new durable offset.
    ///
    /// # Errors
    /// An IO error, which fails the log.
    pub async fn sync(&mut self) -> Result<Offset, LogError> {
        self.check_ok()?;
        let job = self.sync_begin();
        let result = job.run().await;
        self.sync_finish(job, result)
    }

    /// Writes the log and epoch checkpoints: recovery resumes from the durable offset.
    ///
    /// # Errors
    /// An IO error.
    pub async fn checkpoint(&mut self) -> Result<(), LogError> {
        self.check_ok()?;
        let r = self.write_checkpoints().await;
        r.map_err(|e| self.fail(e))
    }

    pub(crate) async fn write_checkpoints(&mut self) -> Result<(), LogError> {
        self.recovery_point = self.durable;
        let mut p = Vec::with_capacity(24);
        p.extend_from_slice(&self.recovery_point.0.to_be_bytes());
        p.extend_from_slice(&self.high_watermark.0.to_be_bytes());
        p.extend_from_slice(&self.log_start.0.to_be_bytes());
        checkpoint::write(&self.dir, LOG_CHECKPOINT, &p).await?;
        let entries = self.epochs.entries();
        let mut p = Vec::with_capacity(4 + entries.len() * 12);
        p.extend_from_slice(
            &u32::try_from(entries.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        for e in entries {
            p.extend_from_slice(&e.epoch.0.to_be_bytes());
            p.extend_from_slice(&e.start_offset.0.to_be_bytes());
        }
        // The recovery point the two checkpoints were written for: a crash between the
        // two writes leaves them for different points, and recovery then rebuilds the
        // epochs from the batches instead of pairing a stale cache with a newer recovery
        // point (swarm seed 2119: the cache lost the start of epoch 0).
        p.extend_from_slice(&self.recovery_point.0.to_be_bytes());
        checkpoint::write(&self.dir, EPOCH_CHECKPOINT, &p).await
    }

    /// Reads whole batches starting with the one that contains `offset`, at most
    /// `max_bytes` of them (but always the first whole batch, so a consumer can progress),
    /// only batches that end below `upper` (the high watermark for consumers, the log end
    /// for replicas), and only from one segment. Each returned batch is CRC-checked.
    ///
    /// # Errors
    /// [`LogError::OffsetOutOfRange`] outside `[log start, log end]`; an IO error; or
    /// [`LogError::Inconsistent`] if stored bytes fail their check.
    pub async fn read(
        &self,
        offset: Offset,
        max_bytes: usize,
        upper: Offset,
    ) -> Result<Vec<u8>, LogError> {
        let r = self.read_unreported(offset, max_bytes, upper).await;
        self.reported(r)
    }

    async fn read_unreported(
        &self,
        offset: Offset,
        max_bytes: usize,
        upper: Offset,
    ) -> Result<Vec<u8>, LogError> {
        self.check_ok()?;
        if offset < self.log_start || offset > self.log_end {
            return Err(LogError::OffsetOutOfRange {
                offset,
                start: self.log_start,
                end: self.log_end,
            });
        }
        let upper = upper.min(self.log_end);
        if offset >= upper {
            return Ok(Vec::new());
        }
        let Some((_, seg)) = self.segments.range(..=offset).next_back() else {
            return Err(self.inconsistent(format!("no segment holds offset {offset}")));
        };
        let (pos, first) = self.find_batch(seg, offset).await?;
        if first.last >= upper {
            return Ok(Vec::new());
        }
        let want = (max_bytes as u64).max(first.size).min(seg.size - pos);
        let mut buf = vec![0; usize::try_from(want).unwrap_or(0)];
        let name = log_name(seg.base);
        seg.file
            .read_exact_at(pos, &mut buf)
            .await
            .map_err(LogError::io("read", &name))?;
        let mut end = 0_usize;
        let mut rest = &buf[..];
        while let Some(h) = peek_header(rest) {
            let size = usize::try_from(h.size).unwrap_or(usize::MAX);
            if size > rest.len() || h.last >= upper {
                break;
            }
            let (b, _) = RecordBatch::parse(&rest[..size]).map_err(|e| {
                self.inconsistent(format!("{name} at {}: stored batch {e}", pos + end as u64))
            })?;
            debug_assert_eq!(b.base_offset(), h.base);
            end += size;
            rest = &rest[size..];
        }
        buf.truncate(end);
        Ok(buf)
    }

    /// Checks the log against its files: every segment is re-read and CRC-checked, and its
    /// size, end offset, indexes and the leader-epoch cache must equal what a full scan
    /// builds. For tests, and for operators who suspect a damaged disk.
    ///
    /// # Errors
    /// [`LogError::Inconsistent`] naming the first difference, or an IO error.
    pub async fn verify(&self) -> Result<(), LogError> {
        self.check_ok()?;
        let mut epochs = LeaderEpochCache::new();
        let mut expected = self.segments.keys().next().copied();
        for seg in self.segments.values() {
            let name = log_name(seg.base);
            if expected != Some(seg.base) {
                return Err(
                    self.inconsistent(format!("{name}: expected a segment at {expected:?}"))
                );
            }
            let s = recovery::scan(
                &seg.file,
                &name,
                seg.base,
                seg.size,
                true,
                Some(&mut epochs),
                self.config.index_interval_bytes,
            )
            .await?;
            if let Some(why) = s.stopped {
                return Err(self.inconsistent(format!("{name}: {why}")));
            }
            if s.next_offset != seg.next_offset
                || s.valid_size != seg.size
                || s.max_timestamp_ms != seg.max_timestamp_ms
            {
                return Err(self.inconsistent(format!(
                    "{name}: end, size or max timestamp differ from a scan"
                )));
            }
            if s.index.offsets != seg.index.offsets || s.index.times != seg.index.times {
                return Err(self.inconsistent(format!("{name}: index differs from a scan")));
            }
            expected = Some(seg.next_offset);
        }
        if expected != Some(self.log_end) {
            return Err(self.inconsistent(format!(
                "log end {} but segments end at {expected:?}",
                self.log_end
            )));
        }
        epochs.clamp(self.log_start, self.log_end);
        if epochs != self.epochs {
            return Err(self.inconsistent(format!(
                "epoch cache {:?} but the batches say {:?}",
                self.epochs, epochs
            )));
        }
        Ok(())
    }

    fn inconsistent(&self, reason: String) -> LogError {
        LogError::Inconsistent {
            dir: self.dir.display(),
            reason,
        }
    }

    /// The position and header of the batch in `seg` that contains `offset`.
    pub(crate) async fn find_batch(
        &self,
        seg: &Segment,
        offset: Offset,
    ) -> Result<(u64, Header), LogError> {
        let mut pos = seg
            .index
            .lookup(offset)
            .map_or(0, |e| u64::from(e.position));
        let mut hdr = [0_u8; HEADER_PEEK];
        let name = log_name(seg.base);
        while pos < seg.size {
            seg.file
                .read_exact_at(pos, &mut hdr)
                .await
                .map_err(LogError::io("read", &name))?;
            let h = peek_header(&hdr)
                .ok_or_else(|| self.inconsistent(format!("{name}: bad batch header at {pos}")))?;
            if h.last >= offset {
                return Ok((pos, h));
            }
            pos += h.size;
        }
        Err(self.inconsistent(format!(
            "{name}: offset {offset} not found below size {}",
            seg.size
        )))
    }

    /// The first offset whose record has a timestamp at or after `ts`, or `None` if no
    /// record does. Uncompressed batches are resolved to the exact record; a compressed
    /// batch to its base offset.
    ///
    /// # Errors
    /// An IO error, or [`LogError::Inconsistent`] for damaged stored data.
    pub async fn offset_for_timestamp(&self, ts: i64) -> Result<Option<(Offset, i64)>, LogError> {
        let r = self.offset_for_timestamp_unreported(ts).await;
        self.reported(r)
    }

    async fn offset_for_timestamp_unreported(
        &self,
        ts: i64,
    ) -> Result<Option<(Offset, i64)>, LogError> {
        self.check_ok()?;
        for seg in self.segments.values() {
            if seg.size == 0 || seg.max_timestamp_ms < ts {
                continue;
            }
            let start = seg
                .index
                .lookup_time(ts)
                .unwrap_or(seg.base)
                .max(self.log_start);
            if start >= seg.next_offset {
                continue;
            }
            let (mut pos, _) = self.find_batch(seg, start).await?;
            let name = log_name(seg.base);
            while pos < seg.size {
                let mut hdr = [0_u8; HEADER_PEEK];
                seg.file
                    .read_exact_at(pos, &mut hdr)
                    .await
                    .map_err(LogError::io("read", &name))?;
                let h = peek_header(&hdr)
                    .ok_or_else(|| self.inconsistent(format!("{name}: bad header at {pos}")))?;
                let mut buf = vec![0; usize::try_from(h.size).unwrap_or(0)];
                seg.file
                    .read_exact_at(pos, &mut buf)
                    .await
                    .map_err(LogError::io("read", &name))?;
                let (b, _) = RecordBatch::parse(&buf)
                    .map_err(|e| self.inconsistent(format!("{name} at {pos}: {e}")))?;
                if b.max_timestamp() >= ts && b.last_offset() >= self.log_start {
                    match b.records() {
                        Ok(records) => {
                            for r in records {
                                let r = r.map_err(|e| {
                                    self.inconsistent(format!("{name} at {pos}: {e}"))
                                })?;
                                let off = b.base_offset().add(i64::from(r.offset_delta));
                                let record_ts =
                                    b.base_timestamp().saturating_add(r.timestamp_delta);
                                if record_ts >= ts && off >= self.log_start {
                                    return Ok(Some((off, record_ts)));
                                }
                            }
                        }
                        // Compressed: the batch is the finest grain without decompressing.
                        Err(_) => {
                            return Ok(Some((
                                b.base_offset().max(self.log_start),
                                b.max_timestamp(),
                            )))
                        }
                    }
                }
                pos += h.size;
            }
        }
        Ok(None)
    }

    /// Removes every record at or after `offset` (a follower truncating to its leader), and
    /// makes that durable before returning. A batch that straddles `offset` goes whole, so
    /// the new end may be below `offset`; it is returned.
    ///
    /// # Errors
    /// [`LogError::OffsetOutOfRange`] below the log start; an IO error fails the log.
    pub async fn truncate_to(&mut self, offset: Offset) -> Result<Offset, LogError> {
        self.check_ok()?;
        if offset >= self.log_end {
            return Ok(self.log_end);
        }
        if offset < self.log_start {
            return Err(LogError::OffsetOutOfRange {
                offset,
                start: self.log_start,
                end: self.log_end,
            });
        }
        let r = self.truncate_inner(offset).await;
        r.map_err(|e| self.fail(e))
    }

    async fn truncate_inner(&mut self, offset: Offset) -> Result<Offset, LogError> {
        let Some((&base, seg)) = self.segments.range(..=offset).next_back() else {
            return Err(self.inconsistent(format!("no segment holds offset {offset}")));
        };
        let (pos, h) = self.find_batch(seg, offset).await?;
        let new_end = h.base;
        self.truncations += 1;
        // Lower the recovery point durably first: bytes past the cut will be rewritten and
        // must be scanned, not trusted, after a crash.
        self.log_end = new_end;
        // Cutting a batch that straddles the log start empties the log.
        self.log_start = self.log_start.min(new_end);
        self.durable = self.durable.min(new_end);
        self.high_watermark = self.high_watermark.min(new_end);
        self.epochs.clamp(self.log_start, new_end);
        self.write_checkpoints().await?;
        let later: Vec<Offset> = self
            .segments
            .range(base.next()..)
            .map(|(b, _)| *b)
            .collect();
        for b in later {
            self.segments.remove(&b);
            self.dirty.remove(&b);
            for name in [log_name(b), index_name(b), time_index_name(b)] {
                checkpoint::remove(&self.dir, &name).await?;
            }
        }
        let seg = self
            .segments
            .get_mut(&base)
            .ok_or_else(|| LogError::Inconsistent {
                dir: String::new(),
                reason: "segment vanished".into(),
            })?;
        let name = log_name(base);
        seg.file
            .set_len(pos)
            .await
            .map_err(LogError::io("truncate", &name))?;
        seg.file
            .sync_data()
            .await
            .map_err(LogError::io("sync", &name))?;
        seg.size = pos;
        seg.clean = seg.clean.min(pos);
        seg.evicted = seg.evicted.min(pos);
        seg.next_offset = new_end;
        // Rebuild the segment's index and largest timestamp from what remains.
        let scan = recovery::scan(
            &seg.file,
            &name,
            base,
            pos,
            false,
            None,
            self.config.index_interval_bytes,
        )
        .await?;
        seg.index = scan.index;
        seg.max_timestamp_ms = scan.max_timestamp_ms;
        for name in [index_name(base), time_index_name(base)] {
            checkpoint::remove(&self.dir, &name).await?;
        }
        self.dir
            .sync()
            .await
            .map_err(LogError::io("sync directory", self.dir.display()))?;
        tracing::info!(%offset, %new_end, "log truncated");
        Ok(new_end)
    }

    /// Retention: moves the log start offset up to `offset` (at most the log end) and
    /// deletes the segments wholly below it. The active segment is never deleted. Returns
    /// how many segments were deleted.
    ///
    /// # Errors
    /// An IO error, which fails the log.
    pub async fn delete_below(&mut self, offset: Offset) -> Result<usize, LogError> {
        self.check_ok()?;
        let r = self.delete_below_unreported(offset).await;
        r.map_err(|e| self.fail(e))
    }

    async fn delete_below_unreported(&mut self, offset: Offset) -> Result<usize, LogError> {
        let new_start = offset.min(self.log_end);
        if new_start <= self.log_start {
            return Ok(0);
        }
        self.log_start = new_start;
        self.high_watermark = self.high_watermark.max(new_start);
        self.epochs.clamp(new_start, self.log_end);
        // The new start is durable before any file goes, so a crash cannot expose a log
        // that starts at a deleted offset.
        self.write_checkpoints().await?;
        let bases: Vec<Offset> = self.segments.keys().copied().collect();
        let mut deleted = 0;
        for w in bases.windows(2) {
            let (b, next) = (w[0], w[1]);
            if next > new_start {
                break;
            }
            self.segments.remove(&b);
            self.dirty.remove(&b);
            for name in [log_name(b), index_name(b), time_index_name(b)] {
                checkpoint::remove(&self.dir, &name).await?;
            }
            deleted += 1;
        }
        if deleted > 0 {
            self.dir
                .sync()
                .await
                .map_err(LogError::io("sync directory", self.dir.display()))?;
        }
        Ok(deleted)
    }

    /// Closes the log cleanly: syncs, writes the active segment's indexes and the
    /// checkpoints, then the clean-shutdown marker that lets the next open skip recovery.
    ///
    /// # Errors
    /// An IO error; the next open then recovers as after a crash.
    pub async fn close(mut self) -> Result<(), LogError> {
        self.shutdown().await
    }

    /// [`Log::close`] for an owner that cannot give the log up (it sits behind a lock):
    /// afterwards every call fails with [`LogError::Closed`].
    ///
    /// # Errors
    /// An IO error; the next open then recovers as after a crash.
    pub async fn shutdown(&mut self) -> Result<(), LogError> {
        let r = self.shutdown_inner().await;
        self.closed = true;
        r
    }

    /// Closes the log without writing anything, for a log whose directory is deleted next:
    /// no sync, indexes, checkpoints or clean-shutdown marker. Every later call fails with
    /// [`LogError::Closed`] and no file of the log is created or written again (a group
    /// commit already under way may still sync its open files, which writes no name), so
    /// the directory can be renamed away once this returns.
    pub fn abandon(&mut self) {
        self.closed = true;
        self.dirty.clear();
    }

    /// Whether the log was closed ([`Log::shutdown`], [`Log::abandon`]).
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    async fn shutdown_inner(&mut self) -> Result<(), LogError> {
        self.sync().await?;
        let base = self.active()?.base;
        self.write_indexes(base).await?;
        self.write_checkpoints().await?;
        let active = self.active()?;
        let mut p = Vec::with_capacity(24);
        p.extend_from_slice(&self.log_end.0.to_be_bytes());
        p.extend_from_slice(&active.base.0.to_be_bytes());
        p.extend_from_slice(&active.size.to_be_bytes());
        checkpoint::write(&self.dir, CLEAN_SHUTDOWN, &p).await
    }
}
