//! The simulated disk: a deterministic model of a disk that loses data the way real ones
//! do, after FoundationDB's `AsyncFileNonDurable` and TigerBeetle's testing storage.
//!
//! One [`SimDisk`] belongs to one node and outlives the node's kills and restarts: the
//! harness keeps it and calls [`SimDisk::crash`] when it kills the node (a power loss).
//!
//! # The model
//! - Every file has a *current* image (what reads see) and a *durable* image (what
//!   survives a crash), plus the set of 4 KiB pages written since the last sync.
//! - `sync_data` copies the dirty pages and the length into the durable image.
//! - On a crash each dirty page is, by a seeded draw, **kept**, **torn** (a random prefix of
//!   its eight 512 B sectors reaches the platter) or **dropped**, and the file keeps either
//!   its durable length or its current length (or, when it grew, a sector boundary in
//!   between). Bytes past the old durable length that were never written read as zeros.
//! - Directory changes (create, rename, remove) form one ordered journal of pending
//!   operations. `Dir::sync` makes those of that directory durable; on a crash a random
//!   prefix of the rest survives, as an ordered metadata journal would keep it. A
//!   directory's entries go with it: renaming or removing one moves or removes what it
//!   holds, and making that durable makes the earlier pending changes inside it durable too.
//! - A failed `sync_data` resolves the file's unsynced pages as a crash would, at once:
//!   what was written since the last good sync may be gone or torn (fsyncgate).
//!
//! # Faults
//! [`Faults`] switch on per disk (the node) or per file path at run time: bit flips in
//! the buffer a read returns, `EIO` on read, write or sync, latency per operation; plus a
//! capacity past which writes fail with `ENOSPC`, and [`SimDisk::corrupt`] to flip a bit of
//! stored data (a latent sector error the next read returns). Every injected fault is
//! reported as a tracing event with target `lode::fault`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{EIO, ENOSPC, PAGE_SIZE, SECTOR_SIZE};

/// Faults injected on one disk or one file. Probabilities are per operation, in `[0, 1]`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Faults {
    /// A read returns its data with one bit flipped.
    pub read_bitflip: f64,
    /// A read fails with `EIO`.
    pub read_eio: f64,
    /// A write fails with `EIO` (nothing is written).
    pub write_eio: f64,
    /// A `sync_data` or directory sync fails with `EIO`; unsynced data is then undefined.
    pub sync_eio: f64,
    /// How long each kind of operation takes, in simulated time.
    pub latency: Latency,
}

/// The kinds of disk operation, each with its own latency.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `read_at`.
    Read,
    /// `write_at`, `set_len`.
    Write,
    /// `sync_data` and a directory's sync.
    Sync,
    /// Namespace operations: create, open, rename, remove, list, sub-directories.
    Meta,
}

/// Per kind of operation: a range (inclusive) from which each operation's wait is drawn
/// uniformly before it takes effect; `None` takes no simulated time. A crash during the
/// wait finds the operation not yet done.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Latency {
    /// Reads.
    pub read: Option<(Duration, Duration)>,
    /// Writes and length changes.
    pub write: Option<(Duration, Duration)>,
    /// File and directory syncs.
    pub sync: Option<(Duration, Duration)>,
    /// Namespace operations.
    pub meta: Option<(Duration, Duration)>,
}

impl Latency {
    /// The same range for every kind.
    #[must_use]
    pub fn uniform(lo: Duration, hi: Duration) -> Latency {
        let r = Some((lo, hi));
        Latency {
            read: r,
            write: r,
            sync: r,
            meta: r,
        }
    }

    /// The range of `op`.
    #[must_use]
    pub fn of(&self, op: Op) -> Option<(Duration, Duration)> {
        match op {
            Op::Read => self.read,
            Op::Write => self.write,
            Op::Sync => self.sync,
            Op::Meta => self.meta,
        }
    }
}

/// What a crash did to one page; counted so tests can see every outcome happen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CrashStats {
    /// Dirty pages that reached the disk whole.
    pub pages_kept: u64,
    /// Dirty pages of which only a prefix of sectors reached the disk.
    pub pages_torn: u64,
    /// Dirty pages of which nothing reached the disk.
    pub pages_dropped: u64,
    /// Pending directory operations that survived.
    pub meta_kept: u64,
    /// Pending directory operations that were lost.
    pub meta_lost: u64,
}

impl CrashStats {
    fn add(&mut self, other: CrashStats) {
        self.pages_kept += other.pages_kept;
        self.pages_torn += other.pages_torn;
        self.pages_dropped += other.pages_dropped;
        self.meta_kept += other.meta_kept;
        self.meta_lost += other.meta_lost;
    }
}

type Ino = u64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Entry {
    File(Ino),
    Dir,
}

#[derive(Debug, Default)]
struct Inode {
    current: Vec<u8>,
    durable: Vec<u8>,
    /// Pages written (or zero-filled by growth) since the last sync.
    dirty: BTreeSet<u64>,
}

#[derive(Clone, Debug)]
enum MetaOp {
    Create { path: String, entry: Entry },
    Remove { path: String },
    Rename { from: String, to: String },
}

impl MetaOp {
    fn touches(&self, dir: &str) -> bool {
        match self {
            MetaOp::Create { path, .. } | MetaOp::Remove { path } => parent(path) == dir,
            MetaOp::Rename { from, to } => parent(from) == dir || parent(to) == dir,
        }
    }

    /// Whether the operation names something inside `prefix` (a directory's path and `/`).
    fn within(&self, prefix: &str) -> bool {
        match self {
            MetaOp::Create { path, .. } | MetaOp::Remove { path } => path.starts_with(prefix),
            MetaOp::Rename { from, to } => from.starts_with(prefix) || to.starts_with(prefix),
        }
    }

    /// The path whose subtree (if it is a directory) the operation moves or removes.
    fn subtree(&self) -> Option<&str> {
        match self {
            MetaOp::Create { .. } => None,
            MetaOp::Remove { path } => Some(path),
            MetaOp::Rename { from, .. } => Some(from),
        }
    }
}

fn parent(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(p, _)| p)
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

/// Takes `path`'s descendants out of `ns`, with their paths below `path/`.
fn take_subtree(ns: &mut BTreeMap<String, Entry>, path: &str) -> Vec<(String, Entry)> {
    let prefix = format!("{path}/");
    let inner: Vec<String> = ns
        .range(prefix.clone()..)
        .take_while(|(k, _)| k.starts_with(&prefix))
        .map(|(k, _)| k.clone())
        .collect();
    inner
        .into_iter()
        .filter_map(|k| {
            let e = ns.remove(&k)?;
            Some((k[prefix.len()..].to_owned(), e))
        })
        .collect()
}

/// A directory's entries go with it: removing one removes what it holds (as a real file
/// system cannot keep entries of a directory that is gone), renaming one moves them.
fn apply(ns: &mut BTreeMap<String, Entry>, op: &MetaOp) {
    match op {
        MetaOp::Create { path, entry } => {
            ns.insert(path.clone(), *entry);
        }
        MetaOp::Remove { path } => {
            ns.remove(path);
            take_subtree(ns, path);
        }
        MetaOp::Rename { from, to } => {
            let inner = take_subtree(ns, from);
            if let Some(e) = ns.remove(from) {
                ns.insert(to.clone(), e);
            }
            for (rel, e) in inner {
                ns.insert(join(to, &rel), e);
            }
        }
    }
}

#[derive(Debug)]
struct State {
    node: String,
    rng: StdRng,
    /// Bumped by every crash; handles of an earlier generation are dead.
    generation: u64,
    next_ino: Ino,
    inodes: BTreeMap<Ino, Inode>,
    current: BTreeMap<String, Entry>,
    durable: BTreeMap<String, Entry>,
    pending: Vec<MetaOp>,
    faults: Faults,
    file_faults: BTreeMap<String, Faults>,
    capacity_bytes: Option<u64>,
    stats: CrashStats,
    /// Page-cache evictions asked for, by path (there is no page cache to evict from).
    evictions: BTreeMap<String, Evictions>,
    /// Until when every operation waits (a stalled disk), in madsim's time.
    stalled_until: Option<tokio::time::Instant>,
}

/// What [`SimDisk::evictions`] reports of one file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Evictions {
    /// Bytes whose eviction was asked for.
    pub bytes: u64,
    /// Of them, bytes in pages written and not yet synced (a real page cache keeps those:
    /// eviction of them is wasted).
    pub unsynced_bytes: u64,
}

/// One node's simulated disk. Cheap to clone; clones are the same disk.
#[derive(Clone)]
pub struct SimDisk {
    state: Arc<Mutex<State>>,
}

impl fmt::Debug for SimDisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimDisk")
            .field("node", &self.lock().node)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug)]
pub(crate) struct SimDir {
    disk: SimDisk,
    path: String,
}

#[derive(Clone, Debug)]
pub(crate) struct SimFile {
    disk: SimDisk,
    path: String,
    ino: Ino,
    generation: u64,
}

fn eio(what: &str) -> io::Error {
    let e = io::Error::from_raw_os_error(EIO);
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

fn fault_event(node: &str, path: &str, kind: &'static str) {
    tracing::warn!(target: "lode::fault", node, file = path, kind, "disk fault injected");
}

impl State {
    fn faults_for(&self, path: &str) -> Faults {
        self.file_faults.get(path).copied().unwrap_or(self.faults)
    }

    fn roll(&mut self, p: f64) -> bool {
        p > 0.0 && self.rng.gen_bool(p.min(1.0))
    }

    /// The namespace becomes the durable one; inodes no durable entry names are gone.
    fn reset_to_durable(&mut self) {
        self.current = self.durable.clone();
        let live: BTreeSet<Ino> = self
            .durable
            .values()
            .filter_map(|e| match e {
                Entry::File(i) => Some(*i),
                Entry::Dir => None,
            })
            .collect();
        self.inodes.retain(|ino, _| live.contains(ino));
    }

    fn used_bytes(&self) -> u64 {
        self.inodes.values().map(|i| i.current.len() as u64).sum()
    }

    fn inode(&mut self, ino: Ino, generation: u64, path: &str) -> io::Result<&mut Inode> {
        if generation != self.generation {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                format!("{path}: handle from before a crash"),
            ));
        }
        self.inodes
            .get_mut(&ino)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{path}: inode gone")))
    }

    /// Resolves one inode's unsynced state as a power loss would; returns what happened.
    fn resolve(rng: &mut StdRng, inode: &mut Inode) -> CrashStats {
        let mut stats = CrashStats::default();
        let durable_len = inode.durable.len() as u64;
        let current_len = inode.current.len() as u64;
        let new_len = match current_len.cmp(&durable_len) {
            std::cmp::Ordering::Equal => current_len,
            std::cmp::Ordering::Less => {
                if rng.gen_bool(0.5) {
                    current_len
                } else {
                    durable_len
                }
            }
            std::cmp::Ordering::Greater => match rng.gen_range(0..3) {
                0 => durable_len,
                1 => current_len,
                _ => {
                    let lo = durable_len.div_ceil(SECTOR_SIZE);
                    let hi = current_len / SECTOR_SIZE;
                    if lo < hi {
                        rng.gen_range(lo..=hi) * SECTOR_SIZE
                    } else {
                        current_len
                    }
                }
            },
        };
        let mut image = std::mem::take(&mut inode.durable);
        image.resize(usize::try_from(new_len).unwrap_or(usize::MAX), 0);
        for &page in &inode.dirty {
            let start = page * PAGE_SIZE;
            if start >= new_len {
                continue;
            }
            let sectors = match rng.gen_range(0..3) {
                0 => {
                    stats.pages_kept += 1;
                    PAGE_SIZE / SECTOR_SIZE
                }
                1 => {
                    stats.pages_torn += 1;
                    rng.gen_range(1..PAGE_SIZE / SECTOR_SIZE)
                }
                _ => {
                    stats.pages_dropped += 1;
                    0
                }
            };
            let end = (start + sectors * SECTOR_SIZE)
                .min(new_len)
                .min(current_len);
            if end > start {
                let (s, e) = (start as usize, end as usize);
                image[s..e].copy_from_slice(&inode.current[s..e]);
            }
        }
        inode.dirty.clear();
        inode.current = image.clone();
        inode.durable = image;
        stats
    }
}

fn mark_dirty(inode: &mut Inode, from: u64, to: u64) {
    if to > from {
        for page in from / PAGE_SIZE..=(to - 1) / PAGE_SIZE {
            inode.dirty.insert(page);
        }
    }
}

impl SimDisk {
    /// An empty disk for node `node`, whose crash outcomes and faults are drawn from `seed`.
    #[must_use]
    pub fn new(node: impl Into<String>, seed: u64) -> SimDisk {
        let state = State {
            node: node.into(),
            rng: StdRng::seed_from_u64(seed),
            generation: 0,
            next_ino: 1,
            inodes: BTreeMap::new(),
            current: BTreeMap::new(),
            durable: BTreeMap::new(),
            pending: Vec::new(),
            faults: Faults::default(),
            file_faults: BTreeMap::new(),
            capacity_bytes: None,
            stats: CrashStats::default(),
            stalled_until: None,
            evictions: BTreeMap::new(),
        };
        SimDisk {
            state: Arc::new(Mutex::new(state)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The model never panics while holding the lock except on a broken assertion, after
        // which the run is over anyway.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn root(&self) -> SimDir {
        SimDir {
            disk: self.clone(),
            path: String::new(),
        }
    }

    /// Sets the faults of the whole disk (files without their own setting).
    pub fn set_faults(&self, faults: Faults) {
        let mut s = self.lock();
        tracing::info!(target: "lode::fault", node = %s.node, ?faults, "disk faults set");
        s.faults = faults;
    }

    /// Sets the faults of one file, by its path from the disk's root (`dir/name`); `None`
    /// returns it to the disk's setting.
    pub fn set_file_faults(&self, path: &str, faults: Option<Faults>) {
        let mut s = self.lock();
        tracing::info!(target: "lode::fault", node = %s.node, file = path, ?faults, "file faults set");
        match faults {
            Some(f) => s.file_faults.insert(path.to_owned(), f),
            None => s.file_faults.remove(path),
        };
    }

    /// Limits the bytes all files may hold; writes past it fail with `ENOSPC`.
    pub fn set_capacity(&self, capacity_bytes: Option<u64>) {
        let mut s = self.lock();
        tracing::info!(target: "lode::fault", node = %s.node, ?capacity_bytes, "disk capacity set");
        s.capacity_bytes = capacity_bytes;
    }

    /// Fills the disk: its capacity becomes the bytes its files hold now, so any write that
    /// grows a file fails with `ENOSPC`. Returns that capacity.
    pub fn set_full(&self) -> u64 {
        let mut s = self.lock();
        let used = s.used_bytes();
        tracing::info!(target: "lode::fault", node = %s.node, used, "disk full");
        s.capacity_bytes = Some(used);
        used
    }

    /// Flips one random bit of the stored bytes of `path` (both images: a latent error that
    /// the next read returns and a crash keeps). Returns the byte position flipped, or
    /// `None` if the file is missing or empty.
    pub fn corrupt(&self, path: &str) -> Option<u64> {
        let mut s = self.lock();
        let Some(Entry::File(ino)) = s.current.get(path).copied() else {
            return None;
        };
        let len = s.inodes.get(&ino).map_or(0, |i| i.current.len());
        if len == 0 {
            return None;
        }
        let pos = s.rng.gen_range(0..len);
        let bit = 1_u8 << s.rng.gen_range(0..8);
        let inode = s.inodes.get_mut(&ino)?;
        inode.current[pos] ^= bit;
        if let Some(b) = inode.durable.get_mut(pos) {
            *b ^= bit;
        }
        fault_event(&s.node, path, "stored bit flip");
        Some(pos as u64)
    }

    /// XORs `mask` into the stored byte at `pos` of `path` (both images). Returns false if
    /// the file or the position does not exist.
    pub fn corrupt_at(&self, path: &str, pos: u64, mask: u8) -> bool {
        let mut s = self.lock();
        let Some(Entry::File(ino)) = s.current.get(path).copied() else {
            return false;
        };
        let node = s.node.clone();
        let Some(inode) = s.inodes.get_mut(&ino) else {
            return false;
        };
        let Some(b) = usize::try_from(pos)
            .ok()
            .and_then(|p| inode.current.get_mut(p))
        else {
            return false;
        };
        *b ^= mask;
        if let Some(d) = usize::try_from(pos)
            .ok()
            .and_then(|p| inode.durable.get_mut(p))
        {
            *d ^= mask;
        }
        fault_event(&node, path, "stored byte corrupted");
        true
    }

    /// A power loss: unsynced pages are kept, torn or dropped, unsynced directory changes
    /// survive as a random prefix, and every open handle dies. Call it when the node is
    /// killed, before it restarts.
    pub fn crash(&self) -> CrashStats {
        let mut guard = self.lock();
        let s = &mut *guard;
        s.generation += 1;
        let mut stats = CrashStats::default();
        let keep = s.rng.gen_range(0..=s.pending.len());
        for (i, op) in s.pending.iter().enumerate() {
            if i < keep {
                apply(&mut s.durable, op);
                stats.meta_kept += 1;
            } else {
                stats.meta_lost += 1;
            }
        }
        s.pending.clear();
        s.reset_to_durable();
        for inode in s.inodes.values_mut() {
            stats.add(State::resolve(&mut s.rng, inode));
        }
        s.stats.add(stats);
        tracing::warn!(target: "lode::fault", node = %s.node, ?stats, "power loss");
        stats
    }

    /// A failed drive replaced by an empty one: every file and directory for which `keep`
    /// (given the path from the disk's root) is false is gone, durably, and every open
    /// handle dies. Kept entries lose their unsynced writes as in [`SimDisk::crash`]. Call
    /// it when the node is killed, before it restarts. Returns the entries removed.
    pub fn wipe(&self, keep: impl Fn(&str) -> bool) -> usize {
        self.crash();
        let mut guard = self.lock();
        let s = &mut *guard;
        let before = s.durable.len();
        s.durable.retain(|path, _| keep(path));
        s.reset_to_durable();
        let removed = before - s.durable.len();
        tracing::warn!(target: "lode::fault", node = %s.node, removed, "disk wiped");
        removed
    }

    /// The page-cache evictions asked for of `path` (see `File::evict`).
    #[must_use]
    pub fn evictions(&self, path: &str) -> Evictions {
        self.lock().evictions.get(path).copied().unwrap_or_default()
    }

    /// Totals of every crash so far.
    #[must_use]
    pub fn crash_stats(&self) -> CrashStats {
        self.lock().stats
    }

    /// The durable bytes of `path`, if it durably exists: what a crash now would keep at
    /// least of synced data. For tests and checkers.
    #[must_use]
    pub fn durable_contents(&self, path: &str) -> Option<Vec<u8>> {
        let s = self.lock();
        match s.durable.get(path) {
            Some(Entry::File(ino)) => s.inodes.get(ino).map(|i| i.durable.clone()),
            _ => None,
        }
    }

    /// Stalls the disk for `duration` from now: every operation, those under way included
    /// once their own wait ends, waits until then (a controller reset, a saturated device).
    pub fn stall(&self, duration: Duration) {
        let mut s = self.lock();
        tracing::warn!(target: "lode::fault", node = %s.node, ?duration, "disk stalls");
        let until = tokio::time::Instant::now() + duration;
        s.stalled_until = Some(s.stalled_until.map_or(until, |u| u.max(until)));
    }

    /// The wait before an operation of kind `op` on `path`: its drawn latency, then what is
    /// left of a stall.
    async fn delay(&self, path: &str, op: Op) {
        let wait = {
            let mut s = self.lock();
            match s.faults_for(path).latency.of(op) {
                Some((lo, hi)) if hi > Duration::ZERO => {
                    let lo_ns = u64::try_from(lo.as_nanos()).unwrap_or(u64::MAX);
                    let hi_ns = u64::try_from(hi.as_nanos()).unwrap_or(u64::MAX).max(lo_ns);
                    Some(Duration::from_nanos(s.rng.gen_range(lo_ns..=hi_ns)))
                }
                _ => None,
            }
        };
        if let Some(d) = wait {
            tokio::time::sleep(d).await;
        }
        loop {
            let until = self.lock().stalled_until;
            match until {
                Some(u) if u > tokio::time::Instant::now() => tokio::time::sleep_until(u).await,
                _ => break,
            }
        }
    }
}

impl SimDir {
    pub(crate) fn display(&self) -> String {
        let node = self.disk.lock().node.clone();
        format!("sim:{node}:/{}", self.path)
    }

    fn meta(&self, s: &mut State, op: MetaOp) {
        apply(&mut s.current, &op);
        s.pending.push(op);
    }

    fn entry(&self, s: &State, name: &str) -> Option<Entry> {
        s.current.get(&join(&self.path, name)).copied()
    }

    fn check_dir_exists(&self, s: &State) -> io::Result<()> {
        if self.path.is_empty() || s.current.get(&self.path) == Some(&Entry::Dir) {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("directory {} is gone", self.path),
            ))
        }
    }

    pub(crate) async fn create(&self, name: &str) -> io::Result<SimFile> {
        let path = join(&self.path, name);
        self.disk.delay(&path, Op::Meta).await;
        let mut s = self.disk.lock();
        self.check_dir_exists(&s)?;
        if self.entry(&s, name).is_some() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{path} exists"),
            ));
        }
        let ino = s.next_ino;
        s.next_ino += 1;
        s.inodes.insert(ino, Inode::default());
        self.meta(
            &mut s,
            MetaOp::Create {
                path: path.clone(),
                entry: Entry::File(ino),
            },
        );
        Ok(SimFile {
            disk: self.disk.clone(),
            path,
            ino,
            generation: s.generation,
        })
    }

    pub(crate) async fn open(&self, name: &str) -> io::Result<SimFile> {
        let path = join(&self.path, name);
        self.disk.delay(&path, Op::Meta).await;
        let s = self.disk.lock();
        match self.entry(&s, name) {
            Some(Entry::File(ino)) => Ok(SimFile {
                disk: self.disk.clone(),
                path,
                ino,
                generation: s.generation,
            }),
            Some(Entry::Dir) => Err(io::Error::new(
                io::ErrorKind::IsADirectory,
                format!("{path} is a directory"),
            )),
            None => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{path} not found"),
            )),
        }
    }

    pub(crate) async fn sub_dir(&self, name: &str) -> io::Result<SimDir> {
        let path = join(&self.path, name);
        self.disk.delay(&path, Op::Meta).await;
        let mut s = self.disk.lock();
        self.check_dir_exists(&s)?;
        match self.entry(&s, name) {
            Some(Entry::Dir) => {}
            Some(Entry::File(_)) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{path} is a file"),
                ))
            }
            None => self.meta(
                &mut s,
                MetaOp::Create {
                    path: path.clone(),
                    entry: Entry::Dir,
                },
            ),
        }
        Ok(SimDir {
            disk: self.disk.clone(),
            path,
        })
    }

    pub(crate) async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let (from, to) = (join(&self.path, from), join(&self.path, to));
        self.disk.delay(&from, Op::Meta).await;
        let mut s = self.disk.lock();
        match s.current.get(&from) {
            Some(Entry::File(_)) => {}
            Some(Entry::Dir) => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("{from}: renaming directories is not modelled"),
                ))
            }
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{from} not found"),
                ))
            }
        }
        if s.current.get(&to) == Some(&Entry::Dir) {
            return Err(io::Error::new(
                io::ErrorKind::IsADirectory,
                format!("{to} is a directory"),
            ));
        }
        self.meta(&mut s, MetaOp::Rename { from, to });
        Ok(())
    }

    pub(crate) async fn rename_dir(&self, from: &str, to: &str) -> io::Result<()> {
        let (from, to) = (join(&self.path, from), join(&self.path, to));
        self.disk.delay(&from, Op::Meta).await;
        let mut s = self.disk.lock();
        self.check_dir_exists(&s)?;
        match s.current.get(&from) {
            Some(Entry::Dir) => {}
            Some(Entry::File(_)) => {
                return Err(io::Error::new(
                    io::ErrorKind::NotADirectory,
                    format!("{from} is not a directory"),
                ))
            }
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{from} not found"),
                ))
            }
        }
        if s.current.contains_key(&to) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{to} exists"),
            ));
        }
        self.meta(&mut s, MetaOp::Rename { from, to });
        Ok(())
    }

    /// One removal per entry, innermost first, then the directory's own: a crash keeps a
    /// prefix of them, as it would of a real recursive removal.
    pub(crate) async fn remove_all(&self, name: &str) -> io::Result<()> {
        let path = join(&self.path, name);
        self.disk.delay(&path, Op::Meta).await;
        let mut s = self.disk.lock();
        self.check_dir_exists(&s)?;
        match self.entry(&s, name) {
            Some(Entry::Dir) => {}
            Some(Entry::File(_)) => {
                return Err(io::Error::new(
                    io::ErrorKind::NotADirectory,
                    format!("{path} is not a directory"),
                ))
            }
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{path} not found"),
                ))
            }
        }
        let prefix = format!("{path}/");
        let inner: Vec<String> = s
            .current
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect();
        // Reverse order puts every entry before the directory that holds it.
        for p in inner.into_iter().rev() {
            self.meta(&mut s, MetaOp::Remove { path: p });
        }
        self.meta(&mut s, MetaOp::Remove { path });
        Ok(())
    }

    pub(crate) async fn remove(&self, name: &str) -> io::Result<()> {
        let path = join(&self.path, name);
        self.disk.delay(&path, Op::Meta).await;
        let mut s = self.disk.lock();
        match self.entry(&s, name) {
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{path} not found"),
                ))
            }
            Some(Entry::Dir) => {
                let prefix = format!("{path}/");
                if s.current.keys().any(|k| k.starts_with(&prefix)) {
                    return Err(io::Error::new(
                        io::ErrorKind::DirectoryNotEmpty,
                        format!("{path} not empty"),
                    ));
                }
            }
            Some(Entry::File(_)) => {}
        }
        self.meta(&mut s, MetaOp::Remove { path });
        Ok(())
    }

    pub(crate) async fn list(&self) -> io::Result<Vec<String>> {
        self.disk.delay(&self.path, Op::Meta).await;
        let s = self.disk.lock();
        self.check_dir_exists(&s)?;
        let names = s
            .current
            .keys()
            .filter(|k| parent(k) == self.path && !k.is_empty())
            .map(|k| k.rsplit_once('/').map_or(k.as_str(), |(_, n)| n).to_owned())
            .collect();
        Ok(names)
    }

    pub(crate) async fn sync(&self) -> io::Result<()> {
        self.disk.delay(&self.path, Op::Sync).await;
        let mut guard = self.disk.lock();
        let s = &mut *guard;
        if s.roll(s.faults_for(&self.path).sync_eio) {
            fault_event(&s.node, &self.path, "dir sync EIO");
            return Err(eio(&format!("sync of directory /{}", self.path)));
        }
        // This directory's operations, and the earlier ones inside a directory that one of
        // them moves or removes: those go with it (a rename made durable without the
        // creations before it inside the directory would leave them at the old path).
        let pending = std::mem::take(&mut s.pending);
        let mut commit: Vec<bool> = pending.iter().map(|op| op.touches(&self.path)).collect();
        for i in (0..pending.len()).rev() {
            let Some(moved) = pending[i].subtree().filter(|_| commit[i]) else {
                continue;
            };
            let prefix = format!("{moved}/");
            for j in 0..i {
                commit[j] = commit[j] || pending[j].within(&prefix);
            }
        }
        for (op, commit) in pending.into_iter().zip(commit) {
            if commit {
                apply(&mut s.durable, &op);
            } else {
                s.pending.push(op);
            }
        }
        Ok(())
    }
}

impl SimFile {
    pub(crate) async fn read_at(&self, pos: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.disk.delay(&self.path, Op::Read).await;
        let mut guard = self.disk.lock();
        let s = &mut *guard;
        let faults = s.faults_for(&self.path);
        if s.roll(faults.read_eio) {
            fault_event(&s.node, &self.path, "read EIO");
            return Err(eio(&format!("read of {}", self.path)));
        }
        let flip = s.roll(faults.read_bitflip);
        let flip_at = (s.rng.gen::<u64>(), s.rng.gen_range(0..8));
        let node = s.node.clone();
        let inode = s.inode(self.ino, self.generation, &self.path)?;
        let len = inode.current.len() as u64;
        if pos >= len {
            return Ok(0);
        }
        let n = usize::try_from((len - pos).min(buf.len() as u64)).unwrap_or(0);
        let start = pos as usize;
        buf[..n].copy_from_slice(&inode.current[start..start + n]);
        if flip && n > 0 {
            buf[(flip_at.0 % n as u64) as usize] ^= 1 << flip_at.1;
            fault_event(&node, &self.path, "read bit flip");
        }
        Ok(n)
    }

    pub(crate) async fn write_at(&self, pos: u64, data: &[u8]) -> io::Result<()> {
        self.disk.delay(&self.path, Op::Write).await;
        let mut guard = self.disk.lock();
        let s = &mut *guard;
        if s.roll(s.faults_for(&self.path).write_eio) {
            fault_event(&s.node, &self.path, "write EIO");
            return Err(eio(&format!("write to {}", self.path)));
        }
        let end = pos + data.len() as u64;
        let old_len = s
            .inode(self.ino, self.generation, &self.path)?
            .current
            .len() as u64;
        if let Some(cap) = s.capacity_bytes {
            if end > old_len && s.used_bytes() + (end - old_len) > cap {
                fault_event(&s.node, &self.path, "ENOSPC");
                let e = io::Error::from_raw_os_error(ENOSPC);
                return Err(io::Error::new(
                    e.kind(),
                    format!("write to {}: {e}", self.path),
                ));
            }
        }
        let inode = s.inode(self.ino, self.generation, &self.path)?;
        if end > old_len {
            inode.current.resize(end as usize, 0);
        }
        inode.current[pos as usize..end as usize].copy_from_slice(data);
        // A gap zero-filled by growth is as unsynced as the data itself.
        mark_dirty(inode, pos.min(old_len), end);
        Ok(())
    }

    /// Records the eviction (the model has no page cache), and how much of it is unsynced.
    pub(crate) fn evict(&self, pos: u64, len: u64) {
        let mut s = self.disk.lock();
        let end = pos.saturating_add(len);
        let unsynced = s.inodes.get(&self.ino).map_or(0, |inode| {
            inode
                .dirty
                .range(pos / PAGE_SIZE..end.div_ceil(PAGE_SIZE))
                .map(|page| {
                    let (start, stop) = (page * PAGE_SIZE, (page + 1) * PAGE_SIZE);
                    stop.min(end).saturating_sub(start.max(pos))
                })
                .sum()
        });
        let e = s.evictions.entry(self.path.clone()).or_default();
        e.bytes += len;
        e.unsynced_bytes += unsynced;
    }

    pub(crate) fn len(&self) -> io::Result<u64> {
        let mut s = self.disk.lock();
        Ok(s.inode(self.ino, self.generation, &self.path)?
            .current
            .len() as u64)
    }

    pub(crate) async fn set_len(&self, len: u64) -> io::Result<()> {
        self.disk.delay(&self.path, Op::Write).await;
        let mut s = self.disk.lock();
        let inode = s.inode(self.ino, self.generation, &self.path)?;
        let old = inode.current.len() as u64;
        inode
            .current
            .resize(usize::try_from(len).unwrap_or(usize::MAX), 0);
        if len > old {
            mark_dirty(inode, old, len);
        } else if len % PAGE_SIZE != 0 {
            // The page that now ends the file changed: its tail beyond `len` is gone.
            inode.dirty.insert(len / PAGE_SIZE);
        }
        Ok(())
    }

    pub(crate) async fn sync_data(&self) -> io::Result<()> {
        self.disk.delay(&self.path, Op::Sync).await;
        let mut guard = self.disk.lock();
        let s = &mut *guard;
        let fail = s.roll(s.faults_for(&self.path).sync_eio);
        let node = s.node.clone();
        let generation = s.generation;
        if generation != self.generation {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                format!("{}: handle from before a crash", self.path),
            ));
        }
        let Some(inode) = s.inodes.get_mut(&self.ino) else {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{}: inode gone", self.path),
            ));
        };
        if fail {
            let stats = State::resolve(&mut s.rng, inode);
            tracing::warn!(target: "lode::fault", node, file = %self.path, ?stats, kind = "sync EIO", "disk fault injected; unsynced data resolved as by a crash");
            return Err(eio(&format!("sync of {}", self.path)));
        }
        let dirty = std::mem::take(&mut inode.dirty);
        let len = inode.current.len();
        inode.durable.resize(len, 0);
        for page in dirty {
            let start = (page * PAGE_SIZE) as usize;
            if start >= len {
                continue;
            }
            let end = (start + PAGE_SIZE as usize).min(len);
            inode.durable[start..end].copy_from_slice(&inode.current[start..end]);
        }
        Ok(())
    }
}
