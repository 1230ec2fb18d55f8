//! Durable state of a metadata Raft node: the epoch and vote, the latest snapshot, and the
//! log of entries after it. It carries out the core's [`Persist`] actions, each one synced
//! before [`RaftStore::persist`] returns, so the driver may then send what depends on it.
//!
//! Files in the node's directory:
//! - `quorum-state`: epoch and vote, a checkpoint (written atomically).
//! - `snapshot`: the latest snapshot, a checkpoint.
//! - `raft.log`: entries as frames `[length u32][crc32c u32][postcard entry]`. Appends are
//!   synced with fdatasync; a truncation is a `set_len` and a sync; a snapshot rewrites the
//!   file without the entries it covers (temporary file, sync, rename, directory sync).
//!
//! On open, a torn or corrupt frame ends the log there (the tail is cut): frames are only
//! acknowledged once synced, so what follows a bad frame was never acknowledged. A corrupt
//! `quorum-state` or `snapshot` is an error: guessing a vote could grant two.

use lode_core::raft::{Durable, Entry, Persist, Snapshot};
use lode_env::{Dir, File};
use lode_proto::{BrokerId, Epoch, Offset};

use crate::checkpoint;
use crate::error::LogError;

const QUORUM_STATE: &str = "quorum-state";
const SNAPSHOT: &str = "snapshot";
const LOG: &str = "raft.log";
const FRAME_HEADER: usize = 8;
/// A frame larger than this is corrupt, not an entry.
const ENTRY_BYTES_MAX: usize = 64 << 20;

/// Why the Raft store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RaftStoreError {
    /// The disk failed.
    #[error(transparent)]
    Io(#[from] LogError),
    /// A file that cannot be cut back safely is damaged.
    #[error("{file} is corrupt: {reason}")]
    Corrupt {
        /// The file.
        file: &'static str,
        /// What is wrong.
        reason: String,
    },
}

fn corrupt(file: &'static str, reason: impl Into<String>) -> RaftStoreError {
    RaftStoreError::Corrupt {
        file,
        reason: reason.into(),
    }
}

/// See the module documentation.
#[derive(Debug)]
pub struct RaftStore {
    dir: Dir,
    log: File,
    /// Where each entry's frame starts, for entries from `log_start` on; then the end.
    positions: Vec<u64>,
    log_start: Offset,
}

fn frame(e: &Entry) -> Result<Vec<u8>, RaftStoreError> {
    let body = postcard::to_allocvec(e).map_err(|err| corrupt(LOG, format!("encode: {err}")))?;
    let len = u32::try_from(body.len()).map_err(|_| corrupt(LOG, "entry too large"))?;
    let mut out = Vec::with_capacity(FRAME_HEADER + body.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&crc32c::crc32c(&body).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Parses frames from `bytes`; returns the entries and the length of the intact prefix.
fn parse_frames(bytes: &[u8]) -> (Vec<(u64, Entry)>, usize) {
    let mut out = Vec::new();
    let mut pos = 0_usize;
    while let Some(h) = bytes.get(pos..pos + FRAME_HEADER) {
        let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
        let crc = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
        if len > ENTRY_BYTES_MAX {
            break;
        }
        let Some(body) = bytes.get(pos + FRAME_HEADER..pos + FRAME_HEADER + len) else {
            break;
        };
        if crc32c::crc32c(body) != crc {
            break;
        }
        let Ok(entry) = postcard::from_bytes::<Entry>(body) else {
            break;
        };
        out.push((pos as u64, entry));
        pos += FRAME_HEADER + len;
    }
    (out, pos)
}

async fn read_whole(file: &File, name: &str) -> Result<Vec<u8>, RaftStoreError> {
    let len = file.len().await.map_err(LogError::io("stat", name))?;
    let mut buf = vec![0; usize::try_from(len).unwrap_or(0)];
    file.read_exact_at(0, &mut buf)
        .await
        .map_err(LogError::io("read", name))?;
    Ok(buf)
}

impl RaftStore {
    /// Opens (or creates) the store in `dir` and returns what it holds, for
    /// [`lode_core::raft::RaftNode::new`].
    ///
    /// # Errors
    /// Disk errors, and a corrupt `quorum-state` or `snapshot`.
    pub async fn open(dir: Dir) -> Result<(RaftStore, Durable), RaftStoreError> {
        let (epoch, voted_for) = match checkpoint::read(&dir, QUORUM_STATE).await? {
            None => (Epoch(0), None),
            Some(Err(e)) => return Err(corrupt(QUORUM_STATE, e.to_string())),
            Some(Ok(bytes)) => postcard::from_bytes::<(Epoch, Option<BrokerId>)>(&bytes)
                .map_err(|e| corrupt(QUORUM_STATE, e.to_string()))?,
        };
        let snapshot = match checkpoint::read(&dir, SNAPSHOT).await? {
            None => None,
            Some(Err(e)) => return Err(corrupt(SNAPSHOT, e.to_string())),
            Some(Ok(bytes)) => Some(
                postcard::from_bytes::<Snapshot>(&bytes)
                    .map_err(|e| corrupt(SNAPSHOT, e.to_string()))?,
            ),
        };
        let log_start = snapshot.as_ref().map_or(Offset(0), |s| s.end_offset);
        let log = match dir.open(LOG).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let f = dir.create(LOG).await.map_err(LogError::io("create", LOG))?;
                dir.sync()
                    .await
                    .map_err(LogError::io("sync directory", dir.display()))?;
                f
            }
            Err(e) => return Err(LogError::io("open", LOG)(e).into()),
        };
        let bytes = read_whole(&log, LOG).await?;
        let (frames, intact) = parse_frames(&bytes);
        if intact < bytes.len() {
            tracing::warn!(
                file = LOG,
                kept = intact,
                cut = bytes.len() - intact,
                "torn or corrupt tail of the raft log cut"
            );
            log.set_len(intact as u64)
                .await
                .map_err(LogError::io("truncate", LOG))?;
            log.sync_data().await.map_err(LogError::io("sync", LOG))?;
        }
        let mut entries = Vec::new();
        let mut positions = Vec::new();
        for (pos, e) in frames {
            // Entries a snapshot covers may linger if a crash interrupted the rewrite.
            if e.offset < log_start {
                continue;
            }
            let expected = log_start.add(entries.len() as i64);
            if e.offset != expected {
                return Err(corrupt(
                    LOG,
                    format!("entry at offset {} where {expected} was due", e.offset),
                ));
            }
            positions.push(pos);
            entries.push(e);
        }
        positions.push(intact as u64);
        let store = RaftStore {
            dir,
            log,
            positions,
            log_start,
        };
        Ok((
            store,
            Durable {
                epoch,
                voted_for,
                snapshot,
                entries,
            },
        ))
    }

    fn end_position(&self) -> u64 {
        self.positions.last().copied().unwrap_or(0)
    }

    /// Makes `p` durable: vote, then snapshot, then truncation, then appends, each synced.
    ///
    /// # Errors
    /// Disk errors. After one, the node must stop: what is on disk is no longer known.
    pub async fn persist(&mut self, p: &Persist) -> Result<(), RaftStoreError> {
        if let Some(vote) = p.vote {
            let bytes =
                postcard::to_allocvec(&vote).map_err(|e| corrupt(QUORUM_STATE, e.to_string()))?;
            checkpoint::write(&self.dir, QUORUM_STATE, &bytes).await?;
        }
        if let Some(s) = &p.snapshot {
            self.install_snapshot(s).await?;
        }
        if let Some(from) = p.truncate_from {
            self.truncate_from(from).await?;
        }
        if !p.append.is_empty() {
            let mut bytes = Vec::new();
            let mut at = self.end_position();
            let mut next = Vec::with_capacity(p.append.len());
            for e in &p.append {
                let expected = self
                    .log_start
                    .add((self.positions.len() - 1 + next.len()) as i64);
                assert_eq!(e.offset, expected, "raft appends are contiguous");
                let f = frame(e)?;
                next.push(at);
                at += f.len() as u64;
                bytes.extend_from_slice(&f);
            }
            self.log
                .write_at(self.end_position(), &bytes)
                .await
                .map_err(LogError::io("append", LOG))?;
            self.log
                .sync_data()
                .await
                .map_err(LogError::io("sync", LOG))?;
            self.positions.pop();
            self.positions.extend(next);
            self.positions.push(at);
        }
        Ok(())
    }

    async fn truncate_from(&mut self, from: Offset) -> Result<(), RaftStoreError> {
        let Ok(i) = usize::try_from(from.0 - self.log_start.0) else {
            // Below the snapshot: nothing of the log stays.
            return self.truncate_index(0).await;
        };
        if i + 1 >= self.positions.len() {
            return Ok(());
        }
        self.truncate_index(i).await
    }

    async fn truncate_index(&mut self, i: usize) -> Result<(), RaftStoreError> {
        let pos = self.positions.get(i).copied().unwrap_or(0);
        self.log
            .set_len(pos)
            .await
            .map_err(LogError::io("truncate", LOG))?;
        self.log
            .sync_data()
            .await
            .map_err(LogError::io("sync", LOG))?;
        self.positions.truncate(i + 1);
        Ok(())
    }

    /// Writes the snapshot, then rewrites the log without the entries it covers.
    async fn install_snapshot(&mut self, s: &Snapshot) -> Result<(), RaftStoreError> {
        let bytes = postcard::to_allocvec(s).map_err(|e| corrupt(SNAPSHOT, e.to_string()))?;
        checkpoint::write(&self.dir, SNAPSHOT, &bytes).await?;
        // Entries from the snapshot's end on stay (those of a diverging log are truncated by
        // the core's separate request).
        let keep_from = usize::try_from(s.end_offset.0 - self.log_start.0).unwrap_or(0);
        let tail_pos = self
            .positions
            .get(keep_from)
            .copied()
            .unwrap_or_else(|| self.end_position());
        let end = self.end_position();
        let mut tail = vec![0; usize::try_from(end - tail_pos).unwrap_or(0)];
        self.log
            .read_exact_at(tail_pos, &mut tail)
            .await
            .map_err(LogError::io("read", LOG))?;
        let file = checkpoint::replace(&self.dir, LOG, &tail).await?;
        self.log = file;
        let kept: Vec<u64> = self
            .positions
            .get(keep_from.min(self.positions.len() - 1)..)
            .unwrap_or_default()
            .iter()
            .map(|p| p - tail_pos)
            .collect();
        self.positions = if kept.is_empty() { vec![0] } else { kept };
        self.log_start = s.end_offset;
        Ok(())
    }
}
