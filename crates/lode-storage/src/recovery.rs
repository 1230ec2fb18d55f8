//! Opening a log: recovery from whatever a crash, a torn write or a flipped bit left.
//!
//! 1. Read the checkpoints. A missing or corrupt log or epoch checkpoint means nothing
//!    can be trusted: scan everything from the first segment.
//! 2. An intact clean-shutdown marker whose recorded end matches the files means the last
//!    close was clean: trust the checkpoints and indexes, scan nothing. The marker is
//!    removed (durably) before the log accepts a write, so a crash later is never mistaken
//!    for a clean close.
//! 3. Segments wholly below the recovery point were synced before it was checkpointed:
//!    load their indexes (rebuilt by a header scan if an index file does not match).
//! 4. From the segment holding the recovery point on, read every batch and check its
//!    structure, CRC, offsets (contiguous from the segment's base) and epoch (never going
//!    back). At the first bad batch, cut the segment there and remove every later segment.
//! 5. Sync what was recovered, so the durable offset is the log end, and checkpoint.

use std::collections::{BTreeMap, BTreeSet};

use lode_core::{EpochEntry, LeaderEpochCache};
use lode_env::{Clock, Dir, File};
use lode_proto::batch::{self, RecordBatch};
use lode_proto::{Epoch, Offset};

use crate::checkpoint::{self, Reader};
use crate::error::LogError;
use crate::index::SegmentIndex;
use crate::log::{
    index_name, log_name, time_index_name, Log, LogConfig, RecoveryReport, Segment, CLEAN_SHUTDOWN,
    EPOCH_CHECKPOINT, LOG_CHECKPOINT,
};

/// Bytes read at a time when scanning a segment.
const SCAN_CHUNK: usize = 1 << 20;
/// No stored batch is larger than this; a length field claiming more is damage.
const STORED_BATCH_MAX: u64 = 64 << 20;

/// The result of scanning one segment.
pub(crate) struct Scan {
    pub(crate) valid_size: u64,
    pub(crate) next_offset: Offset,
    pub(crate) max_timestamp_ms: i64,
    pub(crate) index: SegmentIndex,
    /// Why the scan stopped before the end of the file, if it did.
    pub(crate) stopped: Option<String>,
}

/// Reads the batches of segment `name` (starting at offset `base`, `size` bytes long),
/// checking structure and offsets, and CRCs and epochs when `verify` is set, and builds
/// its index. Stops at the first bad batch. With `epochs`, each batch's epoch is recorded.
pub(crate) async fn scan(
    file: &File,
    name: &str,
    base: Offset,
    size: u64,
    verify: bool,
    mut epochs: Option<&mut LeaderEpochCache>,
    interval: u64,
) -> Result<Scan, LogError> {
    let mut out = Scan {
        valid_size: 0,
        next_offset: base,
        max_timestamp_ms: i64::MIN,
        index: SegmentIndex::default(),
        stopped: None,
    };
    let mut buf: Vec<u8> = Vec::new();
    let mut buf_start = 0_u64;
    let mut pos = 0_u64;
    while pos < size {
        // Make [pos, pos + need) available in `buf`, reading a chunk at a time.
        let mut need = 12_u64;
        let mut batch_size = None;
        loop {
            let have = (buf_start + buf.len() as u64).saturating_sub(pos);
            if pos < buf_start || have < need {
                if size - pos < need {
                    out.stopped =
                        Some(format!("{} bytes at {pos} cannot hold a batch", size - pos));
                    return Ok(out);
                }
                let len = need.max(SCAN_CHUNK as u64).min(size - pos);
                buf.resize(usize::try_from(len).unwrap_or(0), 0);
                file.read_exact_at(pos, &mut buf)
                    .await
                    .map_err(LogError::io("read", name))?;
                buf_start = pos;
                continue;
            }
            let at = usize::try_from(pos - buf_start).unwrap_or(0);
            match batch_size {
                None => match batch::peek_size(&buf[at..]) {
                    Ok(Some(s)) if (s as u64) <= STORED_BATCH_MAX => {
                        batch_size = Some(s as u64);
                        need = s as u64;
                    }
                    Ok(_) => {
                        out.stopped = Some(format!("implausible batch length at {pos}"));
                        return Ok(out);
                    }
                    Err(e) => {
                        out.stopped = Some(format!("batch at {pos}: {e}"));
                        return Ok(out);
                    }
                },
                Some(_) => break,
            }
        }
        let at = usize::try_from(pos - buf_start).unwrap_or(0);
        let len = usize::try_from(need).unwrap_or(0);
        let bytes = &buf[at..at + len];
        let parsed = if verify {
            RecordBatch::parse(bytes).and_then(|(b, _)| b.validate().map(|()| b))
        } else {
            RecordBatch::parse_unchecked_crc(bytes).map(|(b, _)| b)
        };
        let b = match parsed {
            Ok(b) => b,
            Err(e) => {
                out.stopped = Some(format!("batch at {pos}: {e}"));
                return Ok(out);
            }
        };
        if b.base_offset() != out.next_offset {
            out.stopped = Some(format!(
                "batch at {pos} has offset {}, expected {}",
                b.base_offset(),
                out.next_offset
            ));
            return Ok(out);
        }
        if let Some(cache) = epochs.as_deref_mut() {
            let epoch = b.partition_leader_epoch();
            if cache.latest().is_some_and(|l| epoch < l.epoch) {
                out.stopped = Some(format!(
                    "batch at {pos} has epoch {epoch}, older than the log's"
                ));
                return Ok(out);
            }
            cache.assign(epoch, b.base_offset());
        }
        let position = u32::try_from(pos).unwrap_or(u32::MAX);
        out.index.on_batch(
            b.base_offset(),
            position,
            u32::try_from(need).unwrap_or(u32::MAX),
            b.max_timestamp(),
            interval,
        );
        out.max_timestamp_ms = out.max_timestamp_ms.max(b.max_timestamp());
        out.next_offset = b.last_offset().next();
        pos += need;
        out.valid_size = pos;
    }
    Ok(out)
}

fn parse_segment_name(name: &str) -> Option<Offset> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    digits.parse::<i64>().ok().map(Offset)
}

struct LogCheckpoint {
    recovery_point: Offset,
    high_watermark: Offset,
    log_start: Offset,
}

/// Reads checkpoint `name` and decodes its payload with `parse`. A missing checkpoint is
/// `None`; a corrupt one, or a payload `parse` rejects, is `None` too, with the reason and
/// `fallback` (what recovery does instead) added to the report.
async fn read_checkpoint<T>(
    dir: &Dir,
    name: &str,
    report: &mut RecoveryReport,
    fallback: &str,
    parse: impl FnOnce(&mut Reader<'_>) -> Option<T>,
) -> Result<Option<T>, LogError> {
    match checkpoint::read(dir, name).await? {
        None => Ok(None),
        Some(Err(e)) => {
            report.fallbacks.push(format!("{e}: {fallback}"));
            Ok(None)
        }
        Some(Ok(payload)) => {
            let mut r = Reader(&payload);
            let parsed = parse(&mut r).filter(|_| r.is_empty());
            if parsed.is_none() {
                report
                    .fallbacks
                    .push(format!("{name} has a bad payload: {fallback}"));
            }
            Ok(parsed)
        }
    }
}

async fn read_log_checkpoint(
    dir: &Dir,
    report: &mut RecoveryReport,
) -> Result<Option<LogCheckpoint>, LogError> {
    read_checkpoint(dir, LOG_CHECKPOINT, report, "scanning the whole log", |r| {
        Some(LogCheckpoint {
            recovery_point: Offset(r.i64()?),
            high_watermark: Offset(r.i64()?),
            log_start: Offset(r.i64()?),
        })
    })
    .await
}

async fn read_epoch_checkpoint(
    dir: &Dir,
    report: &mut RecoveryReport,
) -> Result<Option<(LeaderEpochCache, Option<Offset>)>, LogError> {
    read_checkpoint(
        dir,
        EPOCH_CHECKPOINT,
        report,
        "rebuilding epochs from the whole log",
        |r| {
            let n = r.u32()?;
            let mut entries = Vec::new();
            for _ in 0..n {
                entries.push(EpochEntry {
                    epoch: Epoch(r.i32()?),
                    start_offset: Offset(r.i64()?),
                });
            }
            // Files of earlier versions end here: written for an unknown recovery point.
            let recovery_point = if r.is_empty() {
                None
            } else {
                Some(Offset(r.i64()?))
            };
            Some((LeaderEpochCache::from_entries(entries)?, recovery_point))
        },
    )
    .await
}

/// The clean-shutdown marker: log end, active segment base and size at the clean close.
async fn read_clean_marker(
    dir: &Dir,
    report: &mut RecoveryReport,
) -> Result<Option<(Offset, Offset, u64)>, LogError> {
    read_checkpoint(
        dir,
        CLEAN_SHUTDOWN,
        report,
        "recovering as after a crash",
        |r| Some((Offset(r.i64()?), Offset(r.i64()?), r.u64()?)),
    )
    .await
}

async fn load_index(
    dir: &Dir,
    base: Offset,
    size: u64,
) -> Option<(SegmentIndex, crate::index::IndexMeta)> {
    async fn read_all(dir: &Dir, name: &str) -> Option<Vec<u8>> {
        let f = dir.open(name).await.ok()?;
        let len = f.len().await.ok()?;
        if len > 1 << 30 {
            return None;
        }
        let mut buf = vec![0; usize::try_from(len).ok()?];
        f.read_exact_at(0, &mut buf).await.ok()?;
        Some(buf)
    }
    let offsets = read_all(dir, &index_name(base)).await?;
    let times = read_all(dir, &time_index_name(base)).await?;
    SegmentIndex::decode(base, &offsets, &times, size)
}

async fn remove_segment_files(dir: &Dir, base: Offset) -> Result<(), LogError> {
    for name in [log_name(base), index_name(base), time_index_name(base)] {
        checkpoint::remove(dir, &name).await?;
    }
    Ok(())
}

pub(crate) async fn open(
    dir: Dir,
    clock: Clock,
    config: LogConfig,
) -> Result<(Log, RecoveryReport), LogError> {
    let mut report = RecoveryReport::default();
    let names = dir
        .list()
        .await
        .map_err(LogError::io("list", dir.display()))?;
    let mut bases: BTreeSet<Offset> = BTreeSet::new();
    for name in &names {
        if let Some(b) = parse_segment_name(name) {
            bases.insert(b);
        } else if name.ends_with(".tmp") {
            checkpoint::remove(&dir, name).await?;
        }
    }
    // Index files of segments that no longer exist are leftovers of an interrupted delete.
    for name in &names {
        let stem = name
            .strip_suffix(".index")
            .or_else(|| name.strip_suffix(".timeindex"));
        if let Some(b) = stem.and_then(|s| parse_segment_name(&format!("{s}.log"))) {
            if !bases.contains(&b) {
                checkpoint::remove(&dir, name).await?;
            }
        }
    }

    let log_ckpt = read_log_checkpoint(&dir, &mut report).await?;
    let epoch_ckpt = read_epoch_checkpoint(&dir, &mut report).await?;
    let marker = read_clean_marker(&dir, &mut report).await?;
    if checkpoint::remove(&dir, CLEAN_SHUTDOWN).await? {
        dir.sync()
            .await
            .map_err(LogError::io("sync directory", dir.display()))?;
    }

    let first_base = bases.first().copied();
    let ckpt_start = log_ckpt.as_ref().map_or(Offset(0), |c| c.log_start);
    let (mut epochs, mut scan_from) = match (&log_ckpt, epoch_ckpt) {
        (Some(c), Some((e, at))) if at == Some(c.recovery_point) => (e, c.recovery_point),
        (Some(_), Some(_)) => {
            // Written for another recovery point (a crash between the two checkpoint
            // writes) or by an earlier version: the batches say which epochs there are.
            if !bases.is_empty() {
                report.fallbacks.push(
                    "leader-epoch checkpoint not written with the log checkpoint: scanning the whole log"
                        .into(),
                );
            }
            (LeaderEpochCache::new(), Offset(0))
        }
        (None, Some(_)) if bases.is_empty() => (LeaderEpochCache::new(), Offset(0)),
        (Some(_), None) | (None, _) => {
            if !bases.is_empty() && log_ckpt.is_some() {
                report
                    .fallbacks
                    .push("leader-epoch checkpoint missing: scanning the whole log".into());
            }
            (LeaderEpochCache::new(), Offset(0))
        }
    };

    // Open every segment file and learn its size.
    let mut files: BTreeMap<Offset, (File, u64)> = BTreeMap::new();
    for &b in &bases {
        let name = log_name(b);
        let f = dir.open(&name).await.map_err(LogError::io("open", &name))?;
        let len = f.len().await.map_err(LogError::io("stat", &name))?;
        files.insert(b, (f, len));
    }

    if let (Some((end, active_base, active_size)), Some((&last_base, &(_, last_size)))) =
        (marker, files.iter().next_back())
    {
        if active_base == last_base
            && active_size == last_size
            && log_ckpt.as_ref().is_some_and(|c| c.recovery_point == end)
        {
            report.clean_shutdown = true;
            scan_from = end;
        } else {
            report.fallbacks.push(
                "clean-shutdown marker does not match the files: recovering as after a crash"
                    .into(),
            );
        }
    }

    #[cfg(feature = "planted-bugs")]
    let trust_all = report.clean_shutdown
        || config.planted_bug == Some(crate::log::PlantedBug::RecoveryTrustsTail);
    #[cfg(not(feature = "planted-bugs"))]
    let trust_all = report.clean_shutdown;
    let mut segments: BTreeMap<Offset, Segment> = BTreeMap::new();
    let mut expected: Option<Offset> = None;
    let mut cut = false;
    let mut scanning = false;
    let bases_vec: Vec<Offset> = files.keys().copied().collect();
    for (i, &base) in bases_vec.iter().enumerate() {
        let name = log_name(base);
        if cut || expected.is_some_and(|e| e != base) {
            if !cut {
                report.fallbacks.push(format!(
                    "gap before segment {base}: removing it and later segments"
                ));
            }
            cut = true;
            remove_segment_files(&dir, base).await?;
            report.removed_segments.push(base);
            continue;
        }
        let Some((file, size)) = files.remove(&base) else {
            continue;
        };
        let next_base = bases_vec.get(i + 1).copied();
        // Trusted: synced and checkpointed before the recovery point moved past it.
        let trusted = trust_all || next_base.is_some_and(|n| n <= scan_from);
        let (index, next_offset, max_ts, valid) = if trusted {
            match load_index(&dir, base, size).await {
                Some((index, meta)) if next_base.is_none_or(|n| n == meta.next_offset) => {
                    (index, meta.next_offset, meta.max_timestamp_ms, size)
                }
                _ => {
                    let s = scan(
                        &file,
                        &name,
                        base,
                        size,
                        false,
                        None,
                        config.index_interval_bytes,
                    )
                    .await?;
                    if let Some(why) = &s.stopped {
                        report.fallbacks.push(format!(
                            "trusted segment {base} is damaged ({why}): cutting it"
                        ));
                    }
                    (s.index, s.next_offset, s.max_timestamp_ms, s.valid_size)
                }
            }
        } else {
            if !scanning {
                // Epochs from here on are re-derived from the batches themselves.
                epochs.truncate_from_end(base);
                scanning = true;
            }
            let s = scan(
                &file,
                &name,
                base,
                size,
                true,
                Some(&mut epochs),
                config.index_interval_bytes,
            )
            .await?;
            report.scanned_bytes += s.valid_size;
            if let Some(why) = &s.stopped {
                tracing::warn!(segment = %base, %why, "cutting damaged log tail");
            }
            (s.index, s.next_offset, s.max_timestamp_ms, s.valid_size)
        };
        if valid < size {
            file.set_len(valid)
                .await
                .map_err(LogError::io("truncate", &name))?;
            file.sync_data()
                .await
                .map_err(LogError::io("sync", &name))?;
            report.truncated_bytes += size - valid;
            cut = true;
        }
        expected = Some(next_offset);
        segments.insert(
            base,
            Segment {
                base,
                file,
                size: valid,
                next_offset,
                max_timestamp_ms: max_ts,
                index,
                created: clock.now(),
                // A page-cache hint only (evicting dirty pages does nothing): the segments
                // before the last were synced when they rolled.
                clean: valid,
                evicted: 0,
            },
        );
    }

    let log_end = segments
        .values()
        .next_back()
        .map_or(ckpt_start, |s| s.next_offset);
    let log_start = first_base
        .map_or(ckpt_start, |b| ckpt_start.max(b))
        .min(log_end);
    epochs.clamp(log_start, log_end);
    let high_watermark = log_ckpt
        .as_ref()
        .map_or(log_start, |c| c.high_watermark)
        .clamp(log_start, log_end);

    let mut log = Log {
        dir,
        clock,
        config,
        segments,
        log_start,
        log_end,
        durable: log_end,
        recovery_point: Offset(0),
        high_watermark,
        epochs,
        dirty: BTreeSet::new(),
        failed: None,
        closed: false,
        truncations: 0,
    };
    if log.segments.is_empty() {
        log.create_segment(log_start).await?;
    } else if !report.clean_shutdown {
        // What survived may still sit only in the page cache (a process crash, not a power
        // loss): make it durable before calling it so.
        for seg in log.segments.values() {
            let name = log_name(seg.base);
            seg.file
                .sync_data()
                .await
                .map_err(LogError::io("sync", &name))?;
        }
        log.dir
            .sync()
            .await
            .map_err(LogError::io("sync directory", log.dir.display()))?;
    }
    log.write_checkpoints().await?;
    tracing::info!(
        dir = %log.dir.display(),
        start = %log.log_start,
        end = %log.log_end,
        clean = report.clean_shutdown,
        scanned_bytes = report.scanned_bytes,
        truncated_bytes = report.truncated_bytes,
        fallbacks = report.fallbacks.len(),
        "log opened"
    );
    Ok((log, report))
}
