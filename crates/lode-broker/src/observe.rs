//! What the simulator watches: every change of a replica's log, high watermark and role,
//! every acknowledgement and consumer read, every applied metadata record, reported to an
//! observer installed on the current thread.
//!
//! Only under `--cfg madsim` (where a whole cluster runs on one thread) is there an
//! observer; elsewhere [`emit`] is empty and inlined away, and [`enabled`] is `false`, so
//! production pays nothing. Emitting reads state and never awaits, draws randomness or
//! touches the broker: observing does not change a run.

use lode_proto::batch::RecordBatch;
use lode_proto::{BrokerId, Epoch, Offset};

/// One batch as the checkers compare them: where it is, its epoch and its CRC (which covers
/// the records, so equal batches on two replicas have equal ids).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchId {
    /// Its first offset.
    pub base: Offset,
    /// Its last offset.
    pub last: Offset,
    /// The leader epoch it was written in.
    pub epoch: Epoch,
    /// Its CRC-32C.
    pub crc: u32,
}

/// The batches of a chunk of log bytes (whole batches; a torn tail is left out).
#[must_use]
pub fn batch_ids(mut bytes: &[u8]) -> Vec<BatchId> {
    let mut out = Vec::new();
    while let Ok((b, rest)) = RecordBatch::parse_unchecked_crc(bytes) {
        out.push(BatchId {
            base: b.base_offset(),
            last: b.last_offset(),
            epoch: b.partition_leader_epoch(),
            crc: b.crc(),
        });
        if rest.is_empty() {
            break;
        }
        bytes = rest;
    }
    out
}

/// A partition state as one broker applied it from the metadata log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionView {
    /// Replicas.
    pub replicas: Vec<BrokerId>,
    /// In-sync replicas.
    pub isr: Vec<BrokerId>,
    /// Eligible leader replicas.
    pub elr: Vec<BrokerId>,
    /// Leader.
    pub leader: Option<BrokerId>,
    /// Leader epoch.
    pub leader_epoch: Epoch,
    /// Partition epoch.
    pub partition_epoch: i32,
    /// Elected from outside ISR and ELR.
    pub elected_unclean: bool,
    /// Members of the ISR that are fenced in the same state.
    pub fenced_in_isr: Vec<BrokerId>,
}

/// A state change on one node.
#[derive(Clone, Debug)]
pub enum Event {
    /// A branch worth knowing a sweep reached (FoundationDB's `CODE_PROBE`): counted by
    /// the simulator's coverage table, not checked. Names are listed in [`PROBES`].
    Probe {
        /// Which branch.
        name: &'static str,
    },
    /// The node (re)starts: it holds no state but its disk's.
    Started,
    /// The node halts on a storage fault (or failed to start): its process ends without
    /// a clean shutdown (see [`crate::halt`]).
    Halted {
        /// Why.
        reason: String,
    },
    /// The controller accepted the node's registration: it has a new broker epoch.
    Registered {
        /// The broker epoch.
        epoch: i64,
    },
    /// The node's role in the controller quorum changed: it leads (is the active
    /// controller) in `epoch`, or no longer does.
    QuorumRole {
        /// It leads.
        leader: bool,
        /// The quorum epoch.
        epoch: Epoch,
    },
    /// A partition's log was opened (after a start or restart): what recovery kept.
    Opened {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// Its log end after recovery.
        log_end: Offset,
        /// Its checkpointed high watermark.
        high_watermark: Offset,
        /// The batches recovery found, when an observer is installed and they could be
        /// read: what the log really holds, including whole batches of a write that failed
        /// part way (whose append was never reported).
        batches: Option<Vec<BatchId>>,
    },
    /// Batches were appended (as leader, from a client; or as follower, from the leader).
    Appended {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// The batches.
        batches: Vec<BatchId>,
        /// Appended as leader.
        as_leader: bool,
    },
    /// The log was truncated: offsets from `to` on are gone.
    Truncated {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// The new log end.
        to: Offset,
        /// Why.
        reason: &'static str,
    },
    /// The high watermark moved up.
    HighWatermark {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// The new high watermark.
        high_watermark: Offset,
        /// As leader: the maximal ISR the move was decided over.
        leader_isr: Option<Vec<BrokerId>>,
    },
    /// The node took up leadership in `epoch`; its log ended at `start`.
    Leader {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// The leader epoch.
        epoch: Epoch,
        /// Where the epoch starts: the log end the leader takes as its own.
        start: Offset,
    },
    /// As leader, the node proposes an ISR (AlterPartition).
    IsrProposed {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// The proposed ISR.
        isr: Vec<BrokerId>,
        /// The member it adds to the ISR the leader holds (`None`: a shrink).
        added: Option<BrokerId>,
    },
    /// The node stopped leading.
    Follower {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
    },
    /// An acks=all produce was answered successfully for a batch ending at `last`.
    Acked {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// The batch's last offset.
        last: Offset,
    },
    /// A consumer fetch was answered with these batches.
    Served {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// The batches sent.
        batches: Vec<BatchId>,
        /// The high watermark right after the read.
        high_watermark: Offset,
    },
    /// A metadata log entry was applied.
    MetadataApplied {
        /// Its raft offset.
        offset: Offset,
        /// FNV-1a of its bytes.
        digest: u64,
    },
    /// A partition's state changed in this node's copy of the metadata.
    PartitionChanged {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// The new state.
        state: PartitionView,
    },
}

/// Receives every event of every node on this thread.
pub type Observer = std::rc::Rc<dyn Fn(BrokerId, Event)>;

#[cfg(madsim)]
thread_local! {
    static OBSERVER: std::cell::RefCell<Option<Observer>> = const { std::cell::RefCell::new(None) };
}

/// Installs `observer` for this thread (the simulation's) until the guard drops.
#[cfg(madsim)]
#[must_use]
pub fn install(observer: Observer) -> Installed {
    OBSERVER.with(|o| *o.borrow_mut() = Some(observer));
    Installed(())
}

/// Uninstalls the observer when dropped.
#[cfg(madsim)]
pub struct Installed(());

#[cfg(madsim)]
impl Drop for Installed {
    fn drop(&mut self) {
        OBSERVER.with(|o| o.borrow_mut().take());
    }
}

/// Whether an observer listens (so that costly event inputs are worth preparing).
#[cfg(madsim)]
#[must_use]
pub fn enabled() -> bool {
    OBSERVER.with(|o| o.borrow().is_some())
}

/// Whether an observer listens: never outside the simulation.
#[cfg(not(madsim))]
#[must_use]
#[inline(always)]
pub fn enabled() -> bool {
    false
}

/// Every probe the broker has, so a sweep can list those it never reached.
pub const PROBES: &[&str] = &[
    "replica-fetch-diverging",
    "follower-truncated",
    "replica-fetch-fenced-epoch",
    "replica-fetch-stale-broker-epoch",
    "replica-fetch-inconsistent-topic-id",
    "fetcher-fenced-by-role",
    "isr-shrink-proposed",
    "isr-expand-proposed",
    "isr-proposal-outcome-unknown",
    "isr-proposal-refused",
    "offset-commit-refused",
    "topic-recreated-while-away",
    "leftover-directory-set-aside",
    "clean-marker-kept-unregistered",
    "deposed-leader-ack-failed",
];

/// Counts the branch `name` (one of [`PROBES`]) as reached, if an observer listens.
#[inline(always)]
pub fn probe(node: BrokerId, name: &'static str) {
    debug_assert!(PROBES.contains(&name), "unlisted probe {name}");
    emit(node, || Event::Probe { name });
}

/// Reports the event `make` builds, if an observer listens.
#[cfg(madsim)]
pub fn emit(node: BrokerId, make: impl FnOnce() -> Event) {
    let observer = OBSERVER.with(|o| o.borrow().clone());
    if let Some(observer) = observer {
        observer(node, make());
    }
}

/// Reports an event: nothing outside the simulation.
#[cfg(not(madsim))]
#[inline(always)]
pub fn emit(_node: BrokerId, _make: impl FnOnce() -> Event) {}
