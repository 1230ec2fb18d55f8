//! Seeded chaos on real brokers: a swarm of parameters and a fault schedule drawn from one
//! seed, producers writing unique values through the real client, then heal, a liveness
//! check, a full read, and a history checker.
//!
//! The schedule is data: one fault per line, `AT_MS KIND ARGS` (see [`Fault`]), printed
//! with every run and accepted back from a file, so a failing run can be replayed, edited
//! and shrunk by hand.
//!
//! What the history checker asserts (Jepsen's names):
//! - lost-write: a value acknowledged with acks=all is not in the log;
//! - inconsistent-offsets: an acknowledged value is at another offset than acknowledged;
//! - duplicate: a value is in the log twice (plain producers do not retry; idempotent ones
//!   retry, and the brokers must recognise the retries);
//! - failed-but-present: a value refused with NOT_ENOUGH_REPLICAS (never appended) is in
//!   the log;
//! - nonmonotonic-send: one producer's acknowledged offsets in a partition go backwards.
//!
//! Loss the configuration allows is reported as permitted, with the reason, not ignored:
//! acks=1 values lost to a leader failure, and acks=all values of an `fsync=interval` topic
//! after a power loss.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lode_broker::BrokerConfig;
use lode_client::{Client, ClientError, Consumer, Producer, ProducerConfig, Record};
use lode_proto::Offset;
use madsim::net::NetSim;
use madsim::runtime::Runtime;

use std::cell::RefCell;
use std::rc::Rc;

use lode_broker::observe::Event;
use lode_proto::BrokerId;

use crate::cluster::{client_when_ready, Cluster};
use crate::invariants::{Checker, Model, Settings};
use crate::trace::Line;

const SUBNET: u8 = 1;
pub(crate) const TOPIC: &str = "chaos";
const NOT_ENOUGH_REPLICAS: i16 = 19;
/// Values of the final writes (one per partition, after healing), which the checker skips.
const SENTINEL: &str = "final-";
/// How long the consumers may take, after the final read, to reach the end of the final
/// log (simulated).
const DRAIN: Duration = Duration::from_secs(30);
/// How long after healing the final read waits, so that no request sent before healing is
/// still on its way. madsim, like TCP, retransmits a packet that a clogged or lossy link
/// dropped, with a backoff doubling up to 10 s: a Produce sent into an isolated broker can
/// arrive (and be appended) up to 10 s after the link is back. Its send was reported
/// unknown, so that is allowed; but a final read taken before it would miss a record the
/// consumers then read (seed 5458 of the swarm: a dirty read that was not).
const QUIESCE: Duration = Duration::from_millis(10_000 + 1_000);

/// The end of the final log per partition, set once the final read is done (partitions
/// left out need not be reached; an empty map stops the consumers at once).
type DrainTarget = Mutex<Option<BTreeMap<Tp, i64>>>;

/// The name of the run's topic number `index`: `chaos`, then `chaos1`, `chaos2`.
#[must_use]
pub fn topic_name(index: usize) -> String {
    if index == 0 {
        TOPIC.to_owned()
    } else {
        format!("{TOPIC}{index}")
    }
}

/// A partition of one of the run's topics: the topic by its index in [`Params::topics`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tp {
    /// The topic's index.
    pub topic: usize,
    /// The partition.
    pub partition: i32,
}

impl fmt::Display for Tp {
    /// Kafka's way: `topic-partition`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", topic_name(self.topic), self.partition)
    }
}

/// One topic of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TopicSpec {
    /// Its partitions.
    pub partitions: i32,
    /// Its durability policy.
    pub fsync: Fsync,
}

/// xorshift64*: the swarm's parameters and schedule from the seed, independent of madsim's
/// own randomness (so the schedule of a seed can be printed before the run).
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Deliberately broken brokers the runs must catch (built with `--features planted-bugs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Planted {
    /// A leader acknowledges acks=all once its own log has the batch (under fsync=always).
    AckBeforeSync,
    /// A replica truncates its log to its high watermark on restart (KAFKA-1211).
    TruncateToHw,
    /// The leader's high watermark advances with an ISR below min ISR.
    HwBelowMinIsr,
    /// A follower joins the ISR without reaching the leader epoch's start (KAFKA-7128).
    IsrWithoutEpochStart,
    /// The controller accepts an AlterPartition with a stale partition epoch (KIP-497).
    StaleAlterPartition,
    /// The controller elects a leader outside ISR and ELR with unclean election off.
    ElectOutsideIsr,
    /// Consumers read up to the log end, above the high watermark.
    ReadAboveHw,
    /// A group coordinator acknowledges an offset commit once its own log has it.
    CommitBeforeReplicated,
    /// A consumer drops a partition from its assignment when a fetch answers
    /// NOT_LEADER_OR_FOLLOWER (a leader moved), and never reads it again.
    ConsumerForgetsPartition,
    /// A log counts a failed sync as a good one (fsyncgate), so its broker acknowledges
    /// records the failed sync may have dropped.
    IgnoreSyncFailure,
    /// A follower's fetcher changes the replica whatever its role and epoch now (a fetcher
    /// of a deposed leader appending to a partition its broker leads).
    UnfencedFollower,
    /// A starting broker drops its clean-shutdown marker before it registers.
    CleanMarkerDropped,
    /// A deleted topic's partitions are removed in place while still open.
    DeleteInPlace,
    /// A leader applies a high watermark decided on a fetch after an ISR shrink came in.
    HwAppliedLate,
    /// A group coordinator accepts commits from any member and generation.
    CommitAnyGeneration,
}

impl Planted {
    /// Every planted bug, with its name.
    pub const ALL: [(&'static str, Planted); 15] = [
        ("truncate-to-hw", Planted::TruncateToHw),
        ("hw-below-min-isr", Planted::HwBelowMinIsr),
        ("isr-without-epoch-start", Planted::IsrWithoutEpochStart),
        ("stale-alter-partition", Planted::StaleAlterPartition),
        ("ack-before-sync", Planted::AckBeforeSync),
        ("elect-outside-isr", Planted::ElectOutsideIsr),
        ("read-above-hw", Planted::ReadAboveHw),
        ("commit-before-replicated", Planted::CommitBeforeReplicated),
        (
            "consumer-forgets-partition",
            Planted::ConsumerForgetsPartition,
        ),
        ("ignore-sync-failure", Planted::IgnoreSyncFailure),
        ("unfenced-follower", Planted::UnfencedFollower),
        ("clean-marker-dropped", Planted::CleanMarkerDropped),
        ("delete-in-place", Planted::DeleteInPlace),
        ("hw-applied-late", Planted::HwAppliedLate),
        ("commit-any-generation", Planted::CommitAnyGeneration),
    ];

    /// Its name.
    #[must_use]
    pub fn name(self) -> &'static str {
        Planted::ALL
            .iter()
            .find(|(_, p)| *p == self)
            .map_or("?", |(n, _)| n)
    }

    /// The broker's planted bug (`None`: the bug is in the client).
    #[cfg(feature = "planted-bugs")]
    fn broker_bug(self) -> Option<lode_broker::PlantedBug> {
        use lode_broker::PlantedBug as B;
        use lode_core::metadata::PlantedBug as C;
        use lode_core::replication::ReplicationBug as R;
        Some(match self {
            Planted::AckBeforeSync => B::AckOnLeaderSync,
            Planted::TruncateToHw => B::TruncateToHighWatermark,
            Planted::HwBelowMinIsr => B::Replication(R::HwBelowMinIsr),
            Planted::IsrWithoutEpochStart => B::Replication(R::IsrWithoutEpochStart),
            Planted::StaleAlterPartition => B::Controller(C::AcceptStalePartitionEpoch),
            Planted::ElectOutsideIsr => B::Controller(C::ElectOutsideIsrAndElr),
            Planted::ReadAboveHw => B::ReadAboveHighWatermark,
            Planted::CommitBeforeReplicated => B::CommitBeforeReplicated,
            Planted::IgnoreSyncFailure => B::Storage(lode_storage::PlantedBug::SyncFailureIgnored),
            Planted::UnfencedFollower => B::UnfencedFollower,
            Planted::CleanMarkerDropped => B::CleanMarkerDroppedAtStart,
            Planted::DeleteInPlace => B::DeleteInPlace,
            Planted::HwAppliedLate => B::HighWatermarkAppliedLate,
            Planted::CommitAnyGeneration => B::CommitFromAnyGeneration,
            Planted::ConsumerForgetsPartition => return None,
        })
    }
}

impl fmt::Display for Planted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Planted {
    type Err = String;
    fn from_str(s: &str) -> Result<Planted, String> {
        Planted::ALL
            .iter()
            .find(|(n, _)| *n == s)
            .map(|(_, p)| *p)
            .ok_or_else(|| {
                let names: Vec<&str> = Planted::ALL.iter().map(|(n, _)| *n).collect();
                format!("unknown planted bug {s:?} (known: {})", names.join(", "))
            })
    }
}

/// Durability policy of one of the run's topics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fsync {
    /// `lode.fsync=always`.
    Always,
    /// `lode.fsync=interval`.
    Interval,
}

impl Fsync {
    /// The `lode.fsync` value.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Fsync::Always => "always",
            Fsync::Interval => "interval",
        }
    }
}

/// Everything a seed decides besides the fault schedule.
#[derive(Clone, Debug)]
pub struct Params {
    /// The seed.
    pub seed: u64,
    /// Brokers.
    pub brokers: i32,
    /// The brokers that are also controller voters (combined mode); the others are
    /// observers of the metadata log.
    pub voters: BTreeSet<i32>,
    /// The topics the producers write and the consumers read, named by [`topic_name`]; the
    /// consumer group reads the first.
    pub topics: Vec<TopicSpec>,
    /// Their replication factor.
    pub replication_factor: i16,
    /// Their `min.insync.replicas`.
    pub min_isr: i32,
    /// Producers; producer `i` uses acks=1 if `i` is in `acks_one`, else acks=all.
    pub producers: u32,
    /// Producers with acks=1.
    pub acks_one: BTreeSet<u32>,
    /// acks=all producers that are idempotent and retry (up to 5 times): their failures
    /// are unknown outcomes, and a duplicate of theirs is a violation.
    pub idempotent: BTreeSet<u32>,
    /// Consumers reading every partition by assignment while the producers run.
    pub consumers: u32,
    /// Members of the consumer group (see [`crate::groups`]); 0: no group workload.
    pub group_members: u32,
    /// How long the producers and the faults run, in simulated milliseconds.
    pub duration_ms: u64,
    /// The brokers' session timeout (a broker silent this long is fenced), ms.
    pub session_timeout_ms: u64,
    /// A planted bug, if any.
    pub planted: Option<Planted>,
    /// The fault kinds this seed adds to crashes, power losses, stops, pauses and
    /// isolation, which every seed has.
    pub mix: Mix,
    /// Each broker's disk speed.
    pub disks: Vec<DiskSpeed>,
    /// A client deletes and creates a topic of one name again and again (see
    /// [`crate::churn`]).
    pub churn: bool,
    /// The brokers' segment size (`None`: the default, 1 GiB): small ones make logs of
    /// many segments, so rolls, indexes, recovery over several segments and reads across
    /// segment ends run.
    pub segment_bytes_max: Option<u64>,
    /// Bytes of key the producers send with each value (0: none): with small segments, a
    /// partition's log grows past tens of segments and several MiB.
    pub key_bytes: usize,
}

/// How slow one broker's disk is: per kind of operation, the most one takes (each draws
/// uniformly from zero up to it), in simulated microseconds; zero takes no time. A power
/// loss can then fall between a write and its sync, or during a sync.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskSpeed {
    /// Reads.
    pub read_us: u64,
    /// Writes.
    pub write_us: u64,
    /// File and directory syncs.
    pub sync_us: u64,
    /// Creates, renames, removes, listings.
    pub meta_us: u64,
}

impl DiskSpeed {
    /// The disks of a seed, from their own stream: in half the seeds every disk takes
    /// time, each its own (syncs up to 20 ms, and on one disk in four up to 200 ms: a slow
    /// device); otherwise every operation is instant.
    fn of(seed: u64, brokers: i32) -> Vec<DiskSpeed> {
        let mut r = Rng::new(seed ^ 0x0d15_c5ed);
        if !r.chance(50) {
            return vec![DiskSpeed::default(); brokers as usize];
        }
        (0..brokers)
            .map(|_| DiskSpeed {
                read_us: r.below(2_000),
                write_us: r.below(2_000),
                sync_us: if r.chance(25) {
                    20_000 + r.below(180_000)
                } else {
                    r.below(20_000)
                },
                meta_us: r.below(5_000),
            })
            .collect()
    }

    /// The simulated disk's latency setting.
    #[must_use]
    pub fn latency(self) -> lode_env::disk::Latency {
        let upto = |us: u64| (us > 0).then(|| (Duration::ZERO, Duration::from_micros(us)));
        lode_env::disk::Latency {
            read: upto(self.read_us),
            write: upto(self.write_us),
            sync: upto(self.sync_us),
            meta: upto(self.meta_us),
        }
    }
}

impl fmt::Display for DiskSpeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "r{}/w{}/s{}/m{}us",
            self.read_us, self.write_us, self.sync_us, self.meta_us
        )
    }
}

/// Swarm testing: each seed enables its own subset of the further fault kinds and its own
/// rate for them, so that some seeds meet one kind often and undisturbed by the others.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mix {
    /// Link cuts: both ways, one way, a broker from the other brokers, the leader from
    /// the controller.
    pub cuts: bool,
    /// Latency (up to 200 ms) and packet loss (up to 15%).
    pub slow: bool,
    /// Clock offsets (up to 10 s either way) and drifts (up to 10% either way).
    pub clocks: bool,
    /// One broker's log disk replaced by an empty one (only with a min ISR of two or more,
    /// where one lost replica loses nothing committed).
    pub wipe: bool,
    /// Swizzle-clog (FoundationDB's): a few brokers isolated one after another, then let
    /// back one after another in another order.
    pub swizzle: bool,
    /// A broker's disk fails for a while: a share of its writes and syncs fail with EIO, or
    /// it is full (ENOSPC). The broker halts and its supervisor restarts it, until the disk
    /// works again.
    pub disk: bool,
    /// A broker's disk stalls for 0.2-3 s: every operation waits (a device reset).
    pub stall: bool,
    /// Controller churn: the active controller is killed and started again 0.3-2 s later,
    /// over and over, while metadata changes are in flight.
    pub controller: bool,
    /// The mean time between these faults, ms.
    pub interval_ms: u64,
}

impl Mix {
    /// The mix of `seed`, from its own random stream (so the rest of a seed's parameters
    /// and its crash schedule stay what they were without it).
    fn of(seed: u64, min_isr: i32) -> Mix {
        let mut r = Rng::new(seed ^ 0x5ca1_ab1e);
        Mix {
            cuts: r.chance(50),
            slow: r.chance(40),
            clocks: r.chance(40),
            wipe: r.chance(25) && min_isr >= 2,
            interval_ms: 1_000 + r.below(3_000),
            swizzle: r.chance(30),
            disk: r.chance(30),
            stall: r.chance(25),
            controller: r.chance(25),
        }
    }

    /// The enabled kinds, by name, for the parameters line.
    fn names(&self) -> Vec<&'static str> {
        [
            (self.cuts, "cuts"),
            (self.slow, "slow"),
            (self.clocks, "clocks"),
            (self.wipe, "wipe"),
            (self.swizzle, "swizzle"),
            (self.disk, "disk"),
            (self.stall, "stall"),
            (self.controller, "controller"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect()
    }
}

impl Params {
    /// The parameters of `seed`.
    #[must_use]
    pub fn of(seed: u64, planted: Option<Planted>) -> Params {
        let mut r = Rng::new(seed);
        let brokers = 3 + r.below(3) as i32;
        // The cluster's shape, from its own stream (the rest of a seed stays what it was):
        // 1, 3 or every broker a voter; replication factor 2, 3 or every broker.
        let mut shape = Rng::new(seed ^ 0x05ba_9e11);
        let voter_count = match shape.below(4) {
            0 => 1,
            1 => brokers,
            _ => 3,
        };
        let mut order: Vec<i32> = (0..brokers).collect();
        shuffle(&mut shape, &mut order);
        let voters = order.into_iter().take(voter_count as usize).collect();
        let replication_factor = match shape.below(5) {
            0 => 2,
            1 => brokers as i16,
            _ => 3,
        };
        let mut min_isr = 1 + i32::from(r.chance(70));
        if matches!(
            planted,
            Some(Planted::HwBelowMinIsr | Planted::StaleAlterPartition)
        ) {
            // Only a min ISR above one can be broken (and only then does the swarm wipe a
            // disk, which a stale AlterPartition needs to show).
            min_isr = 2;
        }
        let producers = 1 + r.below(3) as u32;
        let acks_one: BTreeSet<u32> = (0..producers).filter(|_| r.chance(25)).collect();
        let fsync = match planted {
            // The planted bug is about syncs: it only shows under fsync=always.
            Some(Planted::AckBeforeSync | Planted::IgnoreSyncFailure) => Fsync::Always,
            _ if r.chance(30) => Fsync::Interval,
            _ => Fsync::Always,
        };
        let partitions = 1 + r.below(3) as i32;
        let topics = Self::topics(seed, TopicSpec { partitions, fsync }, planted);
        let duration_ms = 8_000 + r.below(8_000);
        // Drawn last, so the other parameters of a seed stay what they were.
        let idempotent = (0..producers)
            .filter(|i| !acks_one.contains(i) && r.chance(40))
            .collect();
        let consumers = 1 + r.below(2) as u32;
        let group_members = match planted {
            Some(Planted::CommitBeforeReplicated | Planted::CommitAnyGeneration) => {
                2 + r.below(2) as u32
            }
            _ => r.below(4) as u32,
        };
        let min_isr = min_isr.min(i32::from(replication_factor));
        let mix = Mix::of(seed, min_isr);
        Params {
            seed,
            brokers,
            voters,
            topics,
            replication_factor,
            min_isr,
            producers,
            acks_one,
            idempotent,
            consumers,
            group_members,
            duration_ms,
            session_timeout_ms: 1_500,
            planted,
            mix: Mix {
                // Only a failing disk shows the bug.
                disk: planted == Some(Planted::IgnoreSyncFailure) || mix.disk,
                // A stale AlterPartition shows when it re-admits a replica whose disk was
                // replaced meanwhile, held on a cut link.
                wipe: (planted == Some(Planted::StaleAlterPartition) && min_isr >= 2) || mix.wipe,
                cuts: planted == Some(Planted::StaleAlterPartition) || mix.cuts,
                ..mix
            },
            disks: DiskSpeed::of(seed, brokers),
            // From its own stream, so the rest of a seed stays what it was.
            churn: planted == Some(Planted::DeleteInPlace)
                || Rng::new(seed ^ 0x00c4_0a11).chance(35),
            segment_bytes_max: {
                let mut r = Rng::new(seed ^ 0x0005_e9e5);
                r.chance(40).then(|| 4_096 + r.below(252_000))
            },
            key_bytes: {
                let mut r = Rng::new(seed ^ 0x0000_b165);
                if r.chance(25) {
                    512 + r.below(15_872) as usize
                } else {
                    0
                }
            },
        }
    }

    /// The topics of `seed`: `first`, then up to two more from their own stream (so the
    /// rest of a seed stays what it was), each with 1-3 partitions and its own durability.
    /// A run with topics of both policies checks that a power loss costs only the
    /// fsync=interval topics.
    fn topics(seed: u64, first: TopicSpec, planted: Option<Planted>) -> Vec<TopicSpec> {
        let mut r = Rng::new(seed ^ 0x0070_91c5);
        let count = match r.below(10) {
            0..=4 => 1,
            5..=7 => 2,
            _ => 3,
        };
        let mut topics = vec![first];
        for _ in 1..count {
            let partitions = 1 + r.below(3) as i32;
            let interval = r.chance(30);
            topics.push(TopicSpec {
                partitions,
                fsync: match planted {
                    Some(Planted::AckBeforeSync | Planted::IgnoreSyncFailure) => Fsync::Always,
                    _ if interval => Fsync::Interval,
                    _ => Fsync::Always,
                },
            });
        }
        topics
    }

    /// Every partition of every topic, topic by topic.
    #[must_use]
    pub fn partitions(&self) -> Vec<Tp> {
        self.topics
            .iter()
            .enumerate()
            .flat_map(|(topic, t)| (0..t.partitions).map(move |partition| Tp { topic, partition }))
            .collect()
    }

    /// The topics' names.
    #[must_use]
    pub fn topic_names(&self) -> Vec<String> {
        (0..self.topics.len()).map(topic_name).collect()
    }

    /// Whether `tp`'s topic syncs on an interval (a power loss may cost it acknowledged
    /// records).
    #[must_use]
    pub fn interval(&self, tp: Tp) -> bool {
        self.topics
            .get(tp.topic)
            .is_some_and(|t| t.fsync == Fsync::Interval)
    }
}

/// Which broker a fault hits: a number, or a role resolved when the fault applies (from
/// what the brokers reported: partition 0's leader and followers in replica order, the
/// active controller), or `last`, the broker the previous fault hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Broker `n`.
    Node(i32),
    /// Partition 0's leader.
    Leader,
    /// Partition 0's first follower.
    Follower,
    /// Partition 0's second follower.
    OtherFollower,
    /// Partition 0's replica `k`, in replica order (`replica-0` is its first leader;
    /// replicas never move, so this names the same broker all run long).
    Replica(usize),
    /// The active controller.
    Controller,
    /// The coordinator of the simulation's consumer group (the leader of its offsets
    /// partition).
    Coordinator,
    /// The broker the previous fault resolved to.
    Last,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Node(n) => write!(f, "{n}"),
            Target::Leader => f.write_str("leader"),
            Target::Follower => f.write_str("follower"),
            Target::OtherFollower => f.write_str("other-follower"),
            Target::Replica(k) => write!(f, "replica-{k}"),
            Target::Controller => f.write_str("controller"),
            Target::Coordinator => f.write_str("coordinator"),
            Target::Last => f.write_str("last"),
        }
    }
}

impl FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Target, String> {
        match s {
            "leader" => Ok(Target::Leader),
            "follower" => Ok(Target::Follower),
            "other-follower" => Ok(Target::OtherFollower),
            "controller" => Ok(Target::Controller),
            "coordinator" => Ok(Target::Coordinator),
            "last" => Ok(Target::Last),
            r if r.starts_with("replica-") => r["replica-".len()..]
                .parse()
                .map(Target::Replica)
                .map_err(|_| format!("{s:?}: replica-K takes a number")),
            n => n.parse().map(Target::Node).map_err(|_| {
                format!("{s:?}: a broker is a number, leader, follower, other-follower, replica-K, controller, coordinator or last")
            }),
        }
    }
}

/// One fault. Text form: `crash B`, `power-loss B`, `stop B` (clean), `restart B`,
/// `pause B`, `resume B`, `isolate B` (cut from every other broker and the clients),
/// `partition B` (cut from every other broker, not the clients), `cut B B` (both ways),
/// `cut-one-way B B` (from the first to the second), `skew B OFFSET_MS DRIFT_PPM` (its
/// clock), `corrupt B` (a bit flip in partition 0's first segment), `disk-errors B
/// PERCENT` (writes and syncs fail with EIO; 0 ends it), `heal` (every link back). `B` is
/// a [`Target`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// kill -9 of a broker.
    Crash(Target),
    /// Power loss: the broker dies and its disk loses, keeps or tears unsynced writes.
    PowerLoss(Target),
    /// A clean stop through the broker's shutdown path.
    Stop(Target),
    /// A stopped or crashed broker starts again from its disk.
    Restart(Target),
    /// The broker's process stops being scheduled.
    Pause(Target),
    /// A paused broker runs again.
    Resume(Target),
    /// Every link to and from the broker is cut.
    Isolate(Target),
    /// An isolated broker's links are back (cuts of single links stay).
    Unisolate(Target),
    /// Every link between the broker and the other brokers is cut; clients still reach it.
    Partition(Target),
    /// The links between two brokers are cut.
    Cut(Target, Target),
    /// The link from the first broker to the second is cut.
    CutOneWay(Target, Target),
    /// The broker's clock is set off by an offset (ms) and a drift (ppm).
    Skew(Target, i64, i64),
    /// One bit of partition 0's first segment flips on the broker's disk.
    Corrupt(Target),
    /// This percentage of the broker's disk writes and syncs fail with EIO.
    DiskErrors(Target, u32),
    /// This percentage of the broker's syncs fail with EIO, and nothing else does (a failed
    /// sync resolves the unsynced pages it covered as a crash would: fsyncgate).
    SyncErrors(Target, u32),
    /// The broker's log disk fails and is replaced by an empty one: the broker dies (if it
    /// runs) and, when restarted, has lost every partition log (its metadata log survives).
    Wipe(Target),
    /// The links between two brokers are restored (both ways).
    Uncut(Target, Target),
    /// Every message takes between the two latencies (ms) on its way.
    Latency(u64, u64),
    /// This percentage of packets is lost (a TCP stream retransmits: its bytes arrive late).
    Loss(u32),
    /// The broker's disk is full: writes that would grow it fail with ENOSPC.
    DiskFull(Target),
    /// The broker's disk works again: no injected errors, no capacity limit (its latency
    /// stays the seed's).
    DiskOk(Target),
    /// The broker's disk stalls for this many ms: every operation waits until then.
    DiskStall(Target, u64),
    /// kill -9 of the broker, started again this many ms later (controller churn:
    /// `bounce controller MS` fails the active controller over while requests are in
    /// flight).
    Bounce(Target, u64),
    /// Every link is restored.
    Heal,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Crash(n) => write!(f, "crash {n}"),
            Fault::PowerLoss(n) => write!(f, "power-loss {n}"),
            Fault::Stop(n) => write!(f, "stop {n}"),
            Fault::Restart(n) => write!(f, "restart {n}"),
            Fault::Pause(n) => write!(f, "pause {n}"),
            Fault::Resume(n) => write!(f, "resume {n}"),
            Fault::Isolate(n) => write!(f, "isolate {n}"),
            Fault::Unisolate(n) => write!(f, "unisolate {n}"),
            Fault::Partition(n) => write!(f, "partition {n}"),
            Fault::Cut(a, b) => write!(f, "cut {a} {b}"),
            Fault::CutOneWay(a, b) => write!(f, "cut-one-way {a} {b}"),
            Fault::Skew(n, offset, drift) => write!(f, "skew {n} {offset} {drift}"),
            Fault::Corrupt(n) => write!(f, "corrupt {n}"),
            Fault::DiskErrors(n, percent) => write!(f, "disk-errors {n} {percent}"),
            Fault::SyncErrors(n, percent) => write!(f, "sync-errors {n} {percent}"),
            Fault::Wipe(n) => write!(f, "wipe {n}"),
            Fault::Uncut(a, b) => write!(f, "uncut {a} {b}"),
            Fault::Latency(lo, hi) => write!(f, "latency {lo} {hi}"),
            Fault::Loss(percent) => write!(f, "loss {percent}"),
            Fault::DiskFull(n) => write!(f, "disk-full {n}"),
            Fault::DiskOk(n) => write!(f, "disk-ok {n}"),
            Fault::DiskStall(n, ms) => write!(f, "disk-stall {n} {ms}"),
            Fault::Bounce(n, ms) => write!(f, "bounce {n} {ms}"),
            Fault::Heal => write!(f, "heal"),
        }
    }
}

impl FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> Result<Fault, String> {
        let words: Vec<&str> = s.split_whitespace().collect();
        let arg = |i: usize| -> Result<&str, String> {
            words
                .get(i)
                .copied()
                .ok_or_else(|| format!("{s:?}: argument {i} is missing"))
        };
        let target = |i: usize| -> Result<Target, String> { arg(i)?.parse() };
        let number = |i: usize| -> Result<i64, String> {
            arg(i)?
                .parse()
                .map_err(|_| format!("{s:?}: argument {i} is a number"))
        };
        let fault = match words.first().copied() {
            Some("crash") => Fault::Crash(target(1)?),
            Some("power-loss") => Fault::PowerLoss(target(1)?),
            Some("stop") => Fault::Stop(target(1)?),
            Some("restart") => Fault::Restart(target(1)?),
            Some("pause") => Fault::Pause(target(1)?),
            Some("resume") => Fault::Resume(target(1)?),
            Some("isolate") => Fault::Isolate(target(1)?),
            Some("unisolate") => Fault::Unisolate(target(1)?),
            Some("partition") => Fault::Partition(target(1)?),
            Some("cut") => Fault::Cut(target(1)?, target(2)?),
            Some("cut-one-way") => Fault::CutOneWay(target(1)?, target(2)?),
            Some("skew") => Fault::Skew(target(1)?, number(2)?, number(3)?),
            Some("corrupt") => Fault::Corrupt(target(1)?),
            Some("disk-errors") => Fault::DiskErrors(
                target(1)?,
                u32::try_from(number(2)?.clamp(0, 100)).unwrap_or(0),
            ),
            Some("sync-errors") => Fault::SyncErrors(
                target(1)?,
                u32::try_from(number(2)?.clamp(0, 100)).unwrap_or(0),
            ),
            Some("wipe") => Fault::Wipe(target(1)?),
            Some("uncut") => Fault::Uncut(target(1)?, target(2)?),
            Some("latency") => {
                let (lo, hi) = (number(1)?.max(0), number(2)?.max(0));
                Fault::Latency(lo.min(hi) as u64, lo.max(hi) as u64)
            }
            Some("loss") => Fault::Loss(u32::try_from(number(1)?.clamp(0, 100)).unwrap_or(0)),
            Some("disk-full") => Fault::DiskFull(target(1)?),
            Some("disk-ok") => Fault::DiskOk(target(1)?),
            Some("disk-stall") => Fault::DiskStall(target(1)?, number(2)?.max(0) as u64),
            Some("bounce") => Fault::Bounce(target(1)?, number(2)?.max(0) as u64),
            Some("heal") => Fault::Heal,
            _ => return Err(format!("{s:?}: unknown fault")),
        };
        Ok(fault)
    }
}

/// Faults at simulated milliseconds after the workload started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Schedule(pub Vec<(u64, Fault)>);

impl Schedule {
    /// The schedule a seed draws: a fault every 0.5-3 s, each broker taken down at most
    /// to a minority at a time and brought back 1-4 s later.
    #[must_use]
    pub fn of(p: &Params) -> Schedule {
        let mut r = Rng::new(p.seed ^ 0x00c0_ffee);
        let mut out = Vec::new();
        let mut down: BTreeMap<i32, (u64, Fault)> = BTreeMap::new();
        let mut isolated = false;
        let minority = (p.brokers - 1) / 2;
        let mut t = 500 + r.below(1000);
        while t < p.duration_ms {
            // Bring back what is due.
            let due: Vec<i32> = down
                .iter()
                .filter(|(_, (at, _))| *at <= t)
                .map(|(n, _)| *n)
                .collect();
            for n in due {
                if let Some((at, undo)) = down.remove(&n) {
                    out.push((at, undo));
                }
            }
            if isolated && r.chance(50) {
                out.push((t, Fault::Heal));
                isolated = false;
            } else if (down.len() as i32) < minority || (down.is_empty() && minority == 0) {
                let n = loop {
                    let n = r.below(p.brokers as u64) as i32;
                    if !down.contains_key(&n) {
                        break n;
                    }
                };
                let back = t + 1_000 + r.below(3_000);
                let b = Target::Node(n);
                let (fault, undo) = match r.below(10) {
                    0..=2 => (Fault::Crash(b), Fault::Restart(b)),
                    3..=5 => (Fault::PowerLoss(b), Fault::Restart(b)),
                    6 => (Fault::Stop(b), Fault::Restart(b)),
                    7 => (Fault::Pause(b), Fault::Resume(b)),
                    _ if !isolated => {
                        isolated = true;
                        (Fault::Isolate(b), Fault::Heal)
                    }
                    _ => (Fault::Crash(b), Fault::Restart(b)),
                };
                out.push((t, fault));
                if undo == Fault::Heal {
                    out.push((back, Fault::Heal));
                } else {
                    down.insert(n, (back, undo));
                }
            }
            t += 500 + r.below(2_500);
        }
        out.extend(down.into_values());
        out.extend(Schedule::mixed(p));
        // Stable: an undo drawn for the same instant as a fault stays after it.
        out.sort_by_key(|(at, _)| *at);
        Schedule(out)
    }

    /// The faults of the seed's [`Mix`], each with its undo 1-4 s later (some clock skews
    /// stay), from their own random stream.
    fn mixed(p: &Params) -> Vec<(u64, Fault)> {
        let m = &p.mix;
        let kinds: Vec<u8> = [
            m.cuts,
            m.slow,
            m.clocks,
            m.wipe,
            m.swizzle,
            m.disk,
            m.stall,
            m.controller,
        ]
        .iter()
        .enumerate()
        .filter_map(|(i, on)| on.then_some(i as u8))
        .collect();
        let mut out = Vec::new();
        if kinds.is_empty() {
            return out;
        }
        let mut r = Rng::new(p.seed ^ 0x0bad_5eed);
        let mut wiped = false;
        // The end of the swizzle under way: one at a time.
        let mut swizzled_until = 0;
        let brokers = p.brokers.max(2) as u64;
        let mut t = 700 + r.below(m.interval_ms);
        while t < p.duration_ms {
            let back = t + 1_000 + r.below(3_000);
            let a = r.below(brokers) as i32;
            let b = ((u64::from(a.unsigned_abs()) + 1 + r.below(brokers - 1)) % brokers) as i32;
            let (na, nb) = (Target::Node(a), Target::Node(b));
            let drawn = match kinds[r.below(kinds.len() as u64) as usize] {
                0 => match r.below(4) {
                    0 => Some((Fault::Cut(na, nb), Some(Fault::Uncut(na, nb)))),
                    1 => Some((Fault::CutOneWay(na, nb), Some(Fault::Uncut(na, nb)))),
                    2 => Some((Fault::Partition(na), Some(Fault::Heal))),
                    // Roles resolve when the fault applies; the heal needs none.
                    _ => Some((
                        Fault::Cut(Target::Leader, Target::Controller),
                        Some(Fault::Heal),
                    )),
                },
                1 => match r.below(2) {
                    0 => Some((
                        Fault::Latency(1 + r.below(5), 20 + r.below(180)),
                        Some(Fault::Latency(1, 10)),
                    )),
                    _ => Some((Fault::Loss(1 + r.below(15) as u32), Some(Fault::Loss(0)))),
                },
                2 => {
                    let offset_ms = r.below(20_001) as i64 - 10_000;
                    let drift_ppm = r.below(200_001) as i64 - 100_000;
                    let undo = r.chance(50).then_some(Fault::Skew(na, 0, 0));
                    Some((Fault::Skew(na, offset_ms, drift_ppm), undo))
                }
                3 if !wiped => {
                    wiped = true;
                    Some((Fault::Wipe(na), Some(Fault::Restart(na))))
                }
                4 if t >= swizzled_until => {
                    let (faults, end) = swizzle(&mut r, brokers, t);
                    out.extend(faults);
                    swizzled_until = end;
                    None
                }
                5 => match r.below(3) {
                    // The planted bug shows only when syncs fail and writes succeed.
                    _ if p.planted == Some(Planted::IgnoreSyncFailure) => Some((
                        Fault::SyncErrors(na, 10 + r.below(40) as u32),
                        Some(Fault::DiskOk(na)),
                    )),
                    0 => Some((
                        Fault::SyncErrors(na, 1 + r.below(50) as u32),
                        Some(Fault::DiskOk(na)),
                    )),
                    1 => Some((
                        Fault::DiskErrors(na, 1 + r.below(30) as u32),
                        Some(Fault::DiskOk(na)),
                    )),
                    _ => Some((Fault::DiskFull(na), Some(Fault::DiskOk(na)))),
                },
                6 => Some((Fault::DiskStall(na, 200 + r.below(2_800)), None)),
                7 => Some((
                    Fault::Bounce(Target::Controller, 300 + r.below(1_700)),
                    None,
                )),
                _ => None,
            };
            if let Some((fault, undo)) = drawn {
                out.push((t, fault));
                if let Some(undo) = undo {
                    out.push((back, undo));
                }
            }
            t += m.interval_ms / 2 + r.below(m.interval_ms);
        }
        out
    }
}

/// A swizzle-clog from `t`: 2 or more brokers (as many as all), each isolated 0.2-1 s
/// after the one before, held 1-3 s after one more step once all are, then let back in a fresh order, 0.2-1 s
/// apart. Returns the faults and when the last is let back.
fn swizzle(r: &mut Rng, brokers: u64, t: u64) -> (Vec<(u64, Fault)>, u64) {
    let mut order: Vec<i32> = (0..brokers as i32).collect();
    shuffle(r, &mut order);
    order.truncate(2 + r.below(brokers - 1) as usize);
    let step_ms = 200 + r.below(800);
    let mut out = Vec::new();
    let mut at = t;
    for n in &order {
        out.push((at, Fault::Isolate(Target::Node(*n))));
        at += step_ms;
    }
    at += 1_000 + r.below(2_000);
    shuffle(r, &mut order);
    for n in &order {
        out.push((at, Fault::Unisolate(Target::Node(*n))));
        at += step_ms;
    }
    (out, at)
}

/// Fisher-Yates, from `r`.
fn shuffle<T>(r: &mut Rng, items: &mut [T]) {
    for i in (1..items.len()).rev() {
        items.swap(i, r.below(i as u64 + 1) as usize);
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (at, fault) in &self.0 {
            writeln!(f, "{at} {fault}")?;
        }
        Ok(())
    }
}

impl FromStr for Schedule {
    type Err = String;
    fn from_str(s: &str) -> Result<Schedule, String> {
        let mut out = Vec::new();
        for line in s
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let (at, fault) = line
                .split_once(' ')
                .ok_or_else(|| format!("{line:?}: give AT_MS FAULT"))?;
            let at: u64 = at
                .parse()
                .map_err(|_| format!("{line:?}: AT_MS is a number"))?;
            out.push((at, fault.parse()?));
        }
        out.sort_by_key(|(at, _)| *at);
        Ok(Schedule(out))
    }
}

/// What became of one send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged at this offset.
    Ok(i64),
    /// Definitely not appended (NOT_ENOUGH_REPLICAS).
    Fail,
    /// Unknown: timed out, leader moved, connection lost.
    Info(String),
}

/// One send in the history.
#[derive(Clone, Debug)]
pub struct Op {
    /// Producer number.
    pub producer: u32,
    /// The value (unique in the run).
    pub value: String,
    /// Its partition.
    pub tp: Tp,
    /// acks=1 (else acks=all).
    pub acks_one: bool,
    /// Simulated milliseconds at invocation and completion.
    pub invoked_ms: u64,
    /// See `invoked_ms`.
    pub completed_ms: u64,
    /// The outcome.
    pub outcome: Outcome,
}

/// A run's result.
#[derive(Debug)]
pub struct Report {
    /// Its parameters.
    pub params: Params,
    /// Its schedule.
    pub schedule: Schedule,
    /// Violations: empty when the run passed.
    pub violations: Vec<String>,
    /// Losses the configuration allows, with the reason.
    pub permitted: Vec<String>,
    /// Counts: acknowledged, failed, unknown sends; values read.
    pub acked: usize,
    /// See `acked`.
    pub failed: usize,
    /// See `acked`.
    pub unknown: usize,
    /// See `acked`.
    pub read: usize,
    /// The trace: faults, client operations and checks, with simulated time.
    pub trace: Vec<String>,
    /// Simulated seconds the run took.
    pub simulated_s: f64,
    /// How often each probe, counted event and applied fault kind fired (see
    /// [`coverage_names`]).
    pub coverage: BTreeMap<String, u64>,
}

impl Report {
    /// A hash of the trace (FNV-1a): equal for equal runs.
    #[must_use]
    pub fn trace_hash(&self) -> u64 {
        self.trace.iter().fold(lode_proto::FNV1A_START, |h, line| {
            lode_proto::fnv1a(lode_proto::fnv1a(h, line.as_bytes()), b"\n")
        })
    }
}

/// The trace's first line: every parameter of the run.
fn params_line(p: &Params) -> String {
    let set = |s: &BTreeSet<u32>| s.iter().map(|i| i64::from(*i)).collect::<Vec<_>>();
    let topics: Vec<String> = p
        .topics
        .iter()
        .enumerate()
        .map(|(i, t)| {
            format!(
                "{} partitions={} fsync={}",
                topic_name(i),
                t.partitions,
                t.fsync.name()
            )
        })
        .collect();
    let disks: Vec<String> = p.disks.iter().map(ToString::to_string).collect();
    Line::new(0, "params")
        .num("seed", p.seed as i64)
        .num("brokers", i64::from(p.brokers))
        .nums("voters", p.voters.iter().map(|v| i64::from(*v)))
        .strs(
            "topics",
            &topics.iter().map(String::as_str).collect::<Vec<_>>(),
        )
        .num("replication_factor", i64::from(p.replication_factor))
        .num("min_isr", i64::from(p.min_isr))
        .num("producers", i64::from(p.producers))
        .nums("acks_one", set(&p.acks_one))
        .nums("idempotent", set(&p.idempotent))
        .num("consumers", i64::from(p.consumers))
        .num("group_members", i64::from(p.group_members))
        .num("duration_ms", p.duration_ms as i64)
        .num("session_timeout_ms", p.session_timeout_ms as i64)
        .strs("mix", &p.mix.names())
        .num("mix_interval_ms", p.mix.interval_ms as i64)
        .strs(
            "disks",
            &disks.iter().map(String::as_str).collect::<Vec<_>>(),
        )
        .str("churn", if p.churn { "yes" } else { "no" })
        .num(
            "segment_bytes_max",
            p.segment_bytes_max.map_or(-1, |b| b as i64),
        )
        .num("key_bytes", p.key_bytes as i64)
        .str(
            "planted",
            &p.planted.map_or("none".into(), |b| b.to_string()),
        )
        .done()
}

pub(crate) fn now_ms(start: madsim::time::Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

fn broker_tweak(p: &Params) -> impl Fn(&mut BrokerConfig) + Clone + Send + Sync + 'static {
    let planted = p.planted;
    let session_timeout = Duration::from_millis(p.session_timeout_ms);
    let min_isr = p.min_isr;
    let voters = p.voters.clone();
    let segment_bytes_max = p.segment_bytes_max;
    move |c: &mut BrokerConfig| {
        c.voters.retain(|id, _| voters.contains(&id.0));
        if let Some(b) = segment_bytes_max {
            c.segment_bytes_max = b;
        }
        c.replica_lag_time_max = Duration::from_secs(3);
        c.session_timeout = session_timeout;
        // The offsets topic: as durable as the run's topic, few partitions, short
        // sessions and rebalance delays (simulated time is precious).
        c.default_min_insync_replicas = min_isr;
        c.offsets_topic_partitions = crate::groups::OFFSETS_PARTITIONS;
        c.groups.session_timeout_ms_min = 1_000;
        c.groups.initial_rebalance_delay_ms = 500;
        #[cfg(feature = "planted-bugs")]
        {
            c.planted = planted.and_then(Planted::broker_bug);
        }
        #[cfg(not(feature = "planted-bugs"))]
        let _ = planted;
    }
}

/// Runs `params` with `schedule` in a fresh madsim runtime seeded with the seed.
#[must_use]
pub fn run(params: &Params, schedule: &Schedule) -> Report {
    let rt = Runtime::with_seed_and_config(params.seed, madsim::Config::default());
    let (p, s) = (params.clone(), schedule.clone());
    rt.block_on(async move { scenario(p, s).await })
}

/// The run itself, inside a madsim runtime.
pub async fn scenario(params: Params, schedule: Schedule) -> Report {
    let trace = Arc::new(Mutex::new(Vec::<String>::new()));
    let log = {
        let trace = Arc::clone(&trace);
        move |line: String| {
            trace
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(line)
        }
    };
    let start = madsim::time::Instant::now();
    // The state invariants: every broker event is checked and traced as it happens.
    let checker = Rc::new(RefCell::new(Checker::new(Settings {
        min_isr: params
            .min_isr
            .clamp(1, i32::from(params.replication_factor)) as usize,
        unclean_election: false,
    })));
    // Coverage: broker probes, some broker events, and the faults that applied.
    let coverage: Rc<RefCell<BTreeMap<String, u64>>> = Rc::default();
    let _observing = {
        let (checker, trace) = (Rc::clone(&checker), Arc::clone(&trace));
        let coverage = Rc::clone(&coverage);
        lode_broker::observe::install(Rc::new(move |node: BrokerId, e: Event| {
            let counted = match &e {
                Event::Probe { name } => Some(format!("probe:{name}")),
                Event::Halted { .. } => Some("event:halted".to_owned()),
                Event::Truncated { .. } => Some("event:truncated".to_owned()),
                Event::Leader { .. } => Some("event:leader".to_owned()),
                _ => None,
            };
            if let Some(name) = counted {
                *coverage.borrow_mut().entry(name).or_default() += 1;
            }
            if matches!(e, Event::Probe { .. }) {
                // Counted, not traced: a probe is no state change.
                return;
            }
            let t = now_ms(start);
            let broken = checker.borrow_mut().take(t, node.0, &e);
            let mut trace = trace
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            trace.push(crate::trace::event(t, node.0, &e));
            trace.extend(broken);
        }))
    };
    log(params_line(&params));
    let cluster = Cluster::start(params.seed, SUBNET, params.brokers, broker_tweak(&params));
    for (n, speed) in params.disks.iter().enumerate() {
        cluster.set_disk_latency(n as i32, speed.latency());
    }
    let client_node = cluster.client_node();
    let all = cluster.bootstrap(0..params.brokers);

    // Set-up: the topic, once every broker is in.
    let set_up = {
        let (all, p) = (all.clone(), params.clone());
        client_node
            .spawn(async move {
                let client = client_when_ready(&all, p.brokers as usize).await;
                let min_isr = p.min_isr.to_string();
                for (i, t) in p.topics.iter().enumerate() {
                    client
                        .create_topic_with(
                            &topic_name(i),
                            t.partitions,
                            p.replication_factor,
                            &[
                                ("lode.fsync", t.fsync.name()),
                                ("min.insync.replicas", &min_isr),
                            ],
                        )
                        .await
                        .map_err(|e| format!("{}: {e}", topic_name(i)))?;
                }
                Ok::<(), String>(())
            })
            .await
            .unwrap_or_else(|_| Err("the set-up task died".into()))
    };
    if let Err(e) = set_up {
        cluster.stop();
        return Report {
            params,
            schedule,
            violations: vec![format!("set-up: creating the topics failed: {e}")],
            permitted: Vec::new(),
            acked: 0,
            failed: 0,
            unknown: 0,
            read: 0,
            trace: trace
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
            simulated_s: start.elapsed().as_secs_f64(),
            coverage: coverage.borrow().clone(),
        };
    }
    let workload_start = madsim::time::Instant::now();
    log(Line::new(now_ms(start), "workload-starts").done());

    // The workload: each producer sends, waits for the answer, and goes on.
    let history = Arc::new(Mutex::new(Vec::<Op>::new()));
    let mut producers = Vec::new();
    for id in 0..params.producers {
        let (all, history, p) = (all.clone(), Arc::clone(&history), params.clone());
        let log = log.clone();
        producers.push(client_node.spawn(async move {
            produce(id, &all, &p, (start, workload_start), &history, &log).await;
        }));
    }

    let polls = Arc::new(Mutex::new(Vec::<Poll>::new()));
    let drain: Arc<DrainTarget> = Arc::default();
    let mut consumers = Vec::new();
    for id in 0..params.consumers {
        let (all, polls, p) = (all.clone(), Arc::clone(&polls), params.clone());
        let (log, drain) = (log.clone(), Arc::clone(&drain));
        consumers.push(client_node.spawn(async move {
            consume(id, &all, &p, (start, workload_start), &polls, &drain, &log).await;
        }));
    }

    let groups: crate::groups::Shared = Arc::default();
    let mut members = Vec::new();
    for id in 0..params.group_members {
        let (all, groups, p) = (all.clone(), Arc::clone(&groups), params.clone());
        let log = log.clone();
        members.push(client_node.spawn(async move {
            crate::groups::member(id, &all, &p, (start, workload_start), &groups, &log).await;
        }));
    }

    let churned: Arc<Mutex<crate::churn::Findings>> = Arc::default();
    if params.churn {
        let (all, p, f) = (all.clone(), params.clone(), Arc::clone(&churned));
        let log = log.clone();
        members.push(client_node.spawn(async move {
            crate::churn::churn(&all, &p, (start, workload_start), &f, &log).await;
        }));
    }

    // The nemesis.
    let mut down = BTreeSet::new();
    let mut happened = Happened::default();
    let mut last = None;
    for (at, fault) in &schedule.0 {
        let at = Duration::from_millis(*at);
        bounce_back(
            &cluster,
            &mut down,
            &mut happened,
            workload_start + at,
            &(start, &log),
        )
        .await;
        let elapsed = workload_start.elapsed();
        if at > elapsed {
            madsim::time::sleep(at - elapsed).await;
        }
        let resolved = resolve(fault, &checker.borrow().model, &mut last);
        let done = match &resolved {
            Some(r) => apply(&cluster, r, &mut down, &mut happened).await,
            None => "skipped: nobody has the role".into(),
        };
        if !done.starts_with("skipped") {
            let kind = fault.to_string();
            let kind = kind.split_whitespace().next().unwrap_or("?");
            *coverage
                .borrow_mut()
                .entry(format!("fault:{kind}"))
                .or_default() += 1;
        }
        log(Line::new(now_ms(start), "fault")
            .str("fault", &fault.to_string())
            .str(
                "resolved",
                &resolved.as_ref().map_or(String::new(), ToString::to_string),
            )
            .str("result", &done)
            .done());
        checker
            .borrow_mut()
            .disk_faulted
            .extend(happened.disk_faulted.iter().copied());
        if happened.power_loss {
            let mut c = checker.borrow_mut();
            for (i, t) in params.topics.iter().enumerate() {
                if t.fsync == Fsync::Interval {
                    c.loss_allowed.entry(topic_name(i)).or_insert_with(|| {
                        format!(
                            "fsync=interval with a power loss ({fault} at {} ms)",
                            now_ms(start)
                        )
                    });
                }
            }
        }
    }
    let left = Duration::from_millis(params.duration_ms).saturating_sub(workload_start.elapsed());
    madsim::time::sleep(left).await;
    // The consumers read on through healing and the final read, then drain.
    for p in producers.into_iter().chain(members) {
        let _ = p.await;
    }

    // Heal: every link back, every broker running.
    log(Line::new(now_ms(start), "heal-all").done());
    heal(&cluster);
    let healed = madsim::time::Instant::now();
    for n in 0..params.brokers {
        cluster.disk_ok(n);
    }
    for n in std::mem::take(&mut down) {
        if n >= 0 {
            cluster.restart(n);
        } else {
            cluster.resume(-n - 1);
        }
    }

    let mut violations = Vec::new();
    let mut permitted = Vec::new();
    // Liveness: within 60 simulated seconds every partition has a leader and a full ISR.
    let offline_allowed = happened.unclean_restart;
    // Judged only once every broker's current process has registered: before, the
    // metadata may still show the previous process as a healthy ISR member.
    let mut waited = 0;
    let unregistered = loop {
        let waiting: Vec<i32> = {
            let c = checker.borrow();
            (0..params.brokers)
                .filter(|b| !c.model.registered_since_start(*b))
                .collect()
        };
        if waiting.is_empty() || waited >= SETTLE_POLLS {
            break waiting;
        }
        waited += 1;
        madsim::time::sleep(Duration::from_millis(100)).await;
    };
    let settled = if unregistered.is_empty() {
        let (all, p) = (all.clone(), params.clone());
        client_node
            .spawn(async move { settle(&all, &p, offline_allowed, SETTLE_POLLS - waited).await })
            .await
            .unwrap_or(Err("liveness task died".into()))
    } else {
        Err(format!(
            "60 s after healing, brokers {unregistered:?} have not registered since their last start"
        ))
    };
    log(Line::new(now_ms(start), "settled")
        .str("result", &format!("{settled:?}"))
        .done());
    let offline = match settled {
        Ok(offline) => offline,
        Err(e) => {
            violations.push(format!("liveness: {e}"));
            BTreeSet::new()
        }
    };
    for p in &offline {
        permitted.push(format!(
            "{p} offline after healing: every ISR member restarted uncleanly under fsync=interval (KIP-966; no unclean recovery)"
        ));
    }

    // Read everything below the high watermarks, once nothing sent before healing can
    // still arrive.
    madsim::time::sleep_until(healed + QUIESCE).await;
    log(Line::new(now_ms(start), "quiet").done());
    let read = {
        let (all, p, off) = (all.clone(), params.clone(), offline.clone());
        client_node
            .spawn(async move { read_all(&all, &p, &off).await })
            .await
            .unwrap_or(Err("reader task died".into()))
    };
    let history = history
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let read = match read {
        Ok(r) => r,
        Err(e) => {
            violations.push(format!("read: {e}"));
            BTreeMap::new()
        }
    };
    check(
        &params,
        happened.power_loss,
        &offline,
        &history,
        &read,
        &mut violations,
        &mut permitted,
    );
    // The consumers now read on to the end of the final log (or for DRAIN at most).
    let mut ends: BTreeMap<Tp, i64> = BTreeMap::new();
    for (part, offset) in read.values().flatten() {
        let end = ends.entry(*part).or_default();
        *end = (*end).max(offset + 1);
    }
    *drain
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(ends);
    for c in consumers {
        let _ = c.await;
    }
    let polls = polls
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    check_unseen(
        &params,
        happened.power_loss,
        &history,
        &polls,
        &read,
        &offline,
        &mut violations,
        &mut permitted,
    );
    check_polls(
        &params,
        happened.power_loss,
        &offline,
        &history,
        &polls,
        &read,
        &mut violations,
        &mut permitted,
    );
    if params.group_members > 0 {
        // The register's last read, then the committed-offsets checks.
        let (all, g, n) = (
            all.clone(),
            Arc::clone(&groups),
            params.topics[0].partitions,
        );
        let read_back = client_node
            .spawn(async move { crate::groups::final_read(&all, n, workload_start, &g).await })
            .await
            .unwrap_or(Err("group reader task died".into()));
        if let Err(e) = read_back {
            violations.push(format!("liveness: {e}"));
        }
        // The group reads the first topic.
        let mut final_log: BTreeMap<i32, BTreeSet<i64>> = BTreeMap::new();
        for places in read.values() {
            for (tp, offset) in places.iter().filter(|(tp, _)| tp.topic == 0) {
                final_log.entry(tp.partition).or_default().insert(*offset);
            }
        }
        let h = groups
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let loss_allowed = params.topics[0].fsync == Fsync::Interval && happened.power_loss;
        let (v, p) = crate::invariants::committed_offsets::check(&h, &final_log, loss_allowed);
        violations.extend(v);
        permitted.extend(p);
        log(Line::new(now_ms(start), "group-history")
            .num("commits", h.commits.len() as i64)
            .num(
                "acknowledged",
                h.commits
                    .iter()
                    .filter(|c| c.outcome == crate::groups::CommitOutcome::Ok)
                    .count() as i64,
            )
            .num("reads", h.fetches.len() as i64)
            .num("stints", h.stints.len() as i64)
            .done());
    }
    {
        let mut c = churned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        violations.append(&mut c.violations);
        permitted.append(&mut c.permitted);
        if params.churn {
            log(Line::new(now_ms(start), "churn-history")
                .num("generations", i64::from(c.generations))
                .done());
        }
    }
    // The files themselves: every broker loses power at once, and a fresh reader recovers
    // and checks each partition log on each disk.
    cluster.stop();
    let on_disk = {
        let topics: Vec<(String, bool)> = params
            .topics
            .iter()
            .enumerate()
            .map(|(i, t)| (topic_name(i), t.fsync == Fsync::Always))
            .collect();
        let model = checker.borrow().model.clone();
        crate::invariants::on_disk::check(&cluster.disks, &topics, &model).await
    };
    log(Line::new(now_ms(start), "on-disk")
        .num("logs", on_disk.logs as i64)
        .num("committed_found", on_disk.committed_found as i64)
        .done());
    violations.extend(on_disk.violations);
    for v in &violations {
        log(Line::new(now_ms(start), "violation")
            .str("checker", "history")
            .str("evidence", v)
            .done());
    }
    {
        // The state invariants' findings come first: they are nearer the cause.
        let c = checker.borrow();
        let mut all = c.violations.clone();
        all.append(&mut violations);
        violations = all;
        permitted.extend(c.permitted.iter().cloned());
    }
    let trace = trace
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    Report {
        acked: history
            .iter()
            .filter(|o| matches!(o.outcome, Outcome::Ok(_)))
            .count(),
        failed: history
            .iter()
            .filter(|o| o.outcome == Outcome::Fail)
            .count(),
        unknown: history
            .iter()
            .filter(|o| matches!(o.outcome, Outcome::Info(_)))
            .count(),
        read: read.values().map(Vec::len).sum(),
        params,
        schedule,
        violations,
        permitted,
        trace,
        simulated_s: start.elapsed().as_secs_f64(),
        coverage: coverage.take(),
    }
}

/// Everything the coverage table counts, so that a sweep lists what it never reached:
/// every fault kind, every broker probe, and the broker events counted.
#[must_use]
pub fn coverage_names() -> Vec<String> {
    let faults = [
        "crash",
        "power-loss",
        "stop",
        "restart",
        "pause",
        "resume",
        "isolate",
        "unisolate",
        "partition",
        "cut",
        "cut-one-way",
        "skew",
        "corrupt",
        "disk-errors",
        "sync-errors",
        "disk-full",
        "disk-ok",
        "disk-stall",
        "bounce",
        "wipe",
        "uncut",
        "latency",
        "loss",
        "heal",
    ];
    faults
        .iter()
        .map(|f| format!("fault:{f}"))
        .chain(
            lode_broker::observe::PROBES
                .iter()
                .map(|p| format!("probe:{p}")),
        )
        .chain(
            ["halted", "truncated", "leader"]
                .iter()
                .map(|e| format!("event:{e}")),
        )
        .collect()
}

/// Starts the bounced brokers due before `until` again, each at its time (unless the
/// nemesis started it meanwhile).
async fn bounce_back(
    cluster: &Cluster,
    down: &mut BTreeSet<i32>,
    happened: &mut Happened,
    until: madsim::time::Instant,
    (start, log): &(madsim::time::Instant, &(impl Fn(String) + Send + Sync)),
) {
    happened.bounces.sort_unstable();
    while let Some(&(at, n)) = happened.bounces.first() {
        if at > until {
            return;
        }
        happened.bounces.remove(0);
        madsim::time::sleep_until(at).await;
        let result = if down.remove(&n) {
            cluster.restart(n);
            "done"
        } else {
            "skipped"
        };
        log(Line::new(now_ms(*start), "fault")
            .str("fault", &format!("restart {n}"))
            .str("resolved", "bounced back")
            .str("result", result)
            .done());
    }
}

/// Which kinds of fault the run saw (what the guarantees then allow).
#[derive(Debug, Default)]
struct Happened {
    power_loss: bool,
    unclean_restart: bool,
    corruption: bool,
    /// Brokers whose disks had errors, corruption, a full disk or a replacement injected:
    /// only they may halt on a storage fault.
    disk_faulted: BTreeSet<i32>,
    /// Bounced brokers and when they start again.
    bounces: Vec<(madsim::time::Instant, i32)>,
}

/// Resolves a fault's targets to broker numbers (from the model, read now), updating
/// `last`. `None` when a role has nobody (a leaderless partition, no active controller).
fn resolve(fault: &Fault, model: &Model, last: &mut Option<i32>) -> Option<Fault> {
    let view = model.latest_view(TOPIC, 0);
    let leader = view.and_then(|v| v.leader).map(|l| l.0);
    let follower = |i: usize| {
        view.and_then(|v| {
            v.replicas
                .iter()
                .map(|b| b.0)
                .filter(|b| Some(*b) != leader)
                .nth(i)
        })
    };
    let one = |t: Target| -> Option<i32> {
        match t {
            Target::Node(n) => Some(n),
            Target::Leader => leader,
            Target::Follower => follower(0),
            Target::OtherFollower => follower(1),
            Target::Replica(k) => view.and_then(|v| v.replicas.get(k)).map(|b| b.0),
            Target::Controller => model.controller.map(|(_, n)| n),
            Target::Coordinator => {
                let index = lode_broker::groups::partition_for(
                    crate::groups::GROUP,
                    crate::groups::OFFSETS_PARTITIONS,
                );
                model
                    .latest_view(lode_broker::groups::OFFSETS_TOPIC, index)
                    .and_then(|v| v.leader)
                    .map(|l| l.0)
            }
            Target::Last => *last,
        }
    };
    let n = |t: Target| one(t).map(Target::Node);
    let resolved = match *fault {
        Fault::Crash(t) => Fault::Crash(n(t)?),
        Fault::PowerLoss(t) => Fault::PowerLoss(n(t)?),
        Fault::Stop(t) => Fault::Stop(n(t)?),
        Fault::Restart(t) => Fault::Restart(n(t)?),
        Fault::Pause(t) => Fault::Pause(n(t)?),
        Fault::Resume(t) => Fault::Resume(n(t)?),
        Fault::Isolate(t) => Fault::Isolate(n(t)?),
        Fault::Unisolate(t) => Fault::Unisolate(n(t)?),
        Fault::Partition(t) => Fault::Partition(n(t)?),
        Fault::Cut(a, b) => Fault::Cut(n(a)?, n(b)?),
        Fault::CutOneWay(a, b) => Fault::CutOneWay(n(a)?, n(b)?),
        Fault::Skew(t, o, d) => Fault::Skew(n(t)?, o, d),
        Fault::Corrupt(t) => Fault::Corrupt(n(t)?),
        Fault::DiskErrors(t, p) => Fault::DiskErrors(n(t)?, p),
        Fault::SyncErrors(t, p) => Fault::SyncErrors(n(t)?, p),
        Fault::Wipe(t) => Fault::Wipe(n(t)?),
        Fault::Uncut(a, b) => Fault::Uncut(n(a)?, n(b)?),
        Fault::DiskFull(t) => Fault::DiskFull(n(t)?),
        Fault::DiskOk(t) => Fault::DiskOk(n(t)?),
        Fault::DiskStall(t, ms) => Fault::DiskStall(n(t)?, ms),
        Fault::Bounce(t, ms) => Fault::Bounce(n(t)?, ms),
        Fault::Latency(lo, hi) => Fault::Latency(lo, hi),
        Fault::Loss(p) => Fault::Loss(p),
        Fault::Heal => Fault::Heal,
    };
    let first = match resolved {
        Fault::Crash(t)
        | Fault::PowerLoss(t)
        | Fault::Stop(t)
        | Fault::Restart(t)
        | Fault::Pause(t)
        | Fault::Resume(t)
        | Fault::Isolate(t)
        | Fault::Unisolate(t)
        | Fault::Partition(t)
        | Fault::Cut(t, _)
        | Fault::CutOneWay(t, _)
        | Fault::Skew(t, _, _)
        | Fault::Corrupt(t)
        | Fault::DiskErrors(t, _)
        | Fault::SyncErrors(t, _)
        | Fault::Wipe(t)
        | Fault::Uncut(t, _)
        | Fault::DiskFull(t)
        | Fault::DiskOk(t)
        | Fault::DiskStall(t, _)
        | Fault::Bounce(t, _) => Some(t),
        Fault::Latency(..) | Fault::Loss(_) | Fault::Heal => None,
    };
    if let Some(Target::Node(b)) = first {
        *last = Some(b);
    }
    Some(resolved)
}

/// Applies one resolved fault (every target a broker number). `down` holds crashed or
/// stopped brokers as `n` and paused ones as `-n - 1`. Returns what it did, for the
/// trace ("skipped" for a fault on a broker in the wrong state, as a hand-edited schedule
/// may have).
async fn apply(
    cluster: &Cluster,
    fault: &Fault,
    down: &mut BTreeSet<i32>,
    happened: &mut Happened,
) -> String {
    let n_max = cluster.nodes.len() as i32;
    let node = |t: Target| match t {
        Target::Node(n) if (0..n_max).contains(&n) => Some(n),
        _ => None,
    };
    let up = |n: i32, down: &BTreeSet<i32>| !down.contains(&n) && !down.contains(&(-n - 1));
    let net = NetSim::current();
    let id = |n: i32| cluster.nodes[n as usize].id();
    match fault.clone() {
        Fault::Crash(t) => match node(t) {
            Some(n) if up(n, down) || down.contains(&(-n - 1)) => {
                if down.remove(&(-n - 1)) {
                    cluster.resume(n);
                }
                cluster.crash(n);
                happened.unclean_restart = true;
                down.insert(n);
            }
            _ => return "skipped".into(),
        },
        Fault::PowerLoss(t) => match node(t) {
            Some(n) if up(n, down) => {
                cluster.power_loss(n);
                happened.power_loss = true;
                happened.unclean_restart = true;
                down.insert(n);
            }
            _ => return "skipped".into(),
        },
        Fault::Stop(t) => match node(t) {
            Some(n) if up(n, down) => {
                cluster.clean_stop(n, Duration::from_secs(6)).await;
                down.insert(n);
            }
            _ => return "skipped".into(),
        },
        Fault::Restart(t) => match node(t) {
            Some(n) if down.remove(&n) => cluster.restart(n),
            _ => return "skipped".into(),
        },
        Fault::Pause(t) => match node(t) {
            Some(n) if up(n, down) => {
                cluster.pause(n);
                down.insert(-n - 1);
            }
            _ => return "skipped".into(),
        },
        Fault::Resume(t) => match node(t) {
            Some(n) if down.remove(&(-n - 1)) => cluster.resume(n),
            _ => return "skipped".into(),
        },
        Fault::Isolate(t) => match node(t) {
            Some(n) => net.clog_node(id(n)),
            None => return "skipped".into(),
        },
        Fault::Unisolate(t) => match node(t) {
            Some(n) => net.unclog_node(id(n)),
            None => return "skipped".into(),
        },
        Fault::Partition(t) => match node(t) {
            Some(n) => {
                for m in (0..n_max).filter(|m| *m != n) {
                    net.clog_link(id(n), id(m));
                    net.clog_link(id(m), id(n));
                }
            }
            None => return "skipped".into(),
        },
        Fault::Cut(a, b) => match (node(a), node(b)) {
            (Some(a), Some(b)) if a != b => {
                net.clog_link(id(a), id(b));
                net.clog_link(id(b), id(a));
            }
            _ => return "skipped".into(),
        },
        Fault::CutOneWay(a, b) => match (node(a), node(b)) {
            (Some(a), Some(b)) if a != b => net.clog_link(id(a), id(b)),
            _ => return "skipped".into(),
        },
        Fault::Skew(t, offset_ms, drift_ppm) => match node(t) {
            Some(n) => cluster.skews[n as usize].set(lode_env::Skew {
                offset_ms,
                drift_ppm: drift_ppm.max(-900_000),
            }),
            None => return "skipped".into(),
        },
        Fault::Corrupt(t) => match node(t) {
            Some(n) => {
                let path = format!("{TOPIC}-0/{:020}.log", 0);
                match cluster.disks[n as usize].corrupt(&path) {
                    Some(pos) => {
                        happened.corruption = true;
                        happened.disk_faulted.insert(n);
                        return format!("flipped a bit at byte {pos} of {path}");
                    }
                    None => return format!("skipped: no {path}"),
                }
            }
            None => return "skipped".into(),
        },
        Fault::DiskErrors(t, percent) | Fault::SyncErrors(t, percent) => match node(t) {
            Some(n) => {
                let p = f64::from(percent) / 100.0;
                // `sync-errors` fails syncs alone; `disk-errors` writes too.
                let writes = matches!(fault, Fault::DiskErrors(..));
                cluster.set_disk_faults(
                    n,
                    lode_env::disk::Faults {
                        write_eio: if writes { p } else { 0.0 },
                        sync_eio: p,
                        ..lode_env::disk::Faults::default()
                    },
                );
                if percent > 0 {
                    happened.disk_faulted.insert(n);
                    // A failed sync resolves the file's unsynced pages as a crash would:
                    // under fsync=interval that replica may lose what it had not synced,
                    // as in a power loss of that one broker.
                    happened.power_loss = true;
                    happened.unclean_restart = true;
                }
            }
            None => return "skipped".into(),
        },
        Fault::DiskOk(t) => match node(t) {
            Some(n) => cluster.disk_ok(n),
            None => return "skipped".into(),
        },
        Fault::DiskStall(t, ms) => match node(t) {
            Some(n) => cluster.disks[n as usize].stall(Duration::from_millis(ms)),
            None => return "skipped".into(),
        },
        Fault::Bounce(t, ms) => match node(t) {
            Some(n) if up(n, down) => {
                cluster.crash(n);
                happened.unclean_restart = true;
                down.insert(n);
                happened
                    .bounces
                    .push((madsim::time::Instant::now() + Duration::from_millis(ms), n));
            }
            _ => return "skipped".into(),
        },
        Fault::Wipe(t) => match node(t) {
            // A running broker dies with its disk; a stopped one gets its disk replaced.
            Some(n) if up(n, down) || down.contains(&n) => {
                let removed = cluster.wipe(n);
                happened.unclean_restart = true;
                happened.disk_faulted.insert(n);
                down.insert(n);
                return format!("removed {removed} files and directories");
            }
            _ => return "skipped".into(),
        },
        Fault::Uncut(a, b) => match (node(a), node(b)) {
            (Some(a), Some(b)) if a != b => {
                net.unclog_link(id(a), id(b));
                net.unclog_link(id(b), id(a));
            }
            _ => return "skipped".into(),
        },
        Fault::Latency(lo, hi) => net.update_config(|c| {
            c.send_latency = Duration::from_millis(lo)..Duration::from_millis(hi.max(lo + 1));
        }),
        Fault::Loss(percent) => net.update_config(|c| {
            c.packet_loss_rate = f64::from(percent) / 100.0;
        }),
        Fault::DiskFull(t) => match node(t) {
            Some(n) => {
                // The broker halts when a write fails: an unclean restart.
                happened.unclean_restart = true;
                happened.disk_faulted.insert(n);
                let used = cluster.disks[n as usize].set_full();
                return format!("full at {used} bytes");
            }
            None => return "skipped".into(),
        },
        Fault::Heal => heal(cluster),
    }
    "done".into()
}

/// Every link back (node clogs and link cuts), latency and loss as at the start.
fn heal(cluster: &Cluster) {
    let net = NetSim::current();
    net.update_config(|c| *c = madsim::net::Config::default());
    for a in &cluster.nodes {
        net.unclog_node(a.id());
        for b in &cluster.nodes {
            if a.id() != b.id() {
                net.unclog_link(a.id(), b.id());
            }
        }
    }
}

async fn produce(
    id: u32,
    bootstrap: &str,
    p: &Params,
    (trace_start, start): (madsim::time::Instant, madsim::time::Instant),
    history: &Mutex<Vec<Op>>,
    log: &(impl Fn(String) + Send + Sync),
) {
    let acks_one = p.acks_one.contains(&id);
    let idempotent = p.idempotent.contains(&id);
    let Ok(client) = Client::connect(bootstrap, &format!("producer-{id}")).await else {
        return;
    };
    let config = ProducerConfig {
        acks: if acks_one { 1 } else { -1 },
        idempotent,
        // Without idempotence one attempt per value: its outcome is that attempt's.
        retries: if idempotent { 5 } else { 0 },
        in_flight_per_partition_max: 1,
        linger: Duration::from_millis(1),
        request_timeout: Duration::from_secs(3),
        ..ProducerConfig::default()
    };
    let Ok(producer) = Producer::new(Arc::clone(&client), config).await else {
        return;
    };
    let deadline = Duration::from_millis(p.duration_ms);
    let (tps, names) = (p.partitions(), p.topic_names());
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut seq = 0_u64;
    while start.elapsed() < deadline {
        let value = format!("p{id}-{seq}");
        let tp = tps[(seq % tps.len() as u64) as usize];
        seq += 1;
        let invoked_ms = now_ms(start);
        let record = Record {
            value: Some(value.clone().into_bytes()),
            key: (p.key_bytes > 0).then(|| vec![b'k'; p.key_bytes]),
            partition: Some(tp.partition),
            ..Record::default()
        };
        let outcome = match producer.send(names[tp.topic], record).await {
            Err(e) => Outcome::Info(e.to_string()),
            Ok(d) => match madsim::time::timeout(Duration::from_secs(10), d).await {
                Ok(Ok(offset)) => Outcome::Ok(offset.0),
                // After retries an earlier attempt may have been appended: unknown.
                Ok(Err(ClientError::Broker { code, .. }))
                    if code == NOT_ENOUGH_REPLICAS && !idempotent =>
                {
                    Outcome::Fail
                }
                Ok(Err(e)) => Outcome::Info(e.to_string()),
                Err(_) => Outcome::Info("no answer in 10 s".into()),
            },
        };
        let completed_ms = now_ms(start);
        let line = Line::new(now_ms(trace_start), "send")
            .num("producer", i64::from(id))
            .str("value", &value)
            .str("topic", names[tp.topic])
            .num("partition", i64::from(tp.partition))
            .num("invoked_ms", invoked_ms as i64);
        log(match &outcome {
            Outcome::Ok(offset) => line.str("outcome", "ok").num("offset", *offset),
            Outcome::Fail => line.str("outcome", "fail"),
            Outcome::Info(why) => line.str("outcome", "info").str("why", why),
        }
        .done());
        let failed = !matches!(outcome, Outcome::Ok(_));
        history
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Op {
                producer: id,
                value,
                tp,
                acks_one,
                invoked_ms,
                completed_ms,
                outcome,
            });
        if failed {
            // Find the new leader, and do not spin on a dead one.
            let _ = client.metadata(Some(&names)).await;
            madsim::time::sleep(Duration::from_millis(100)).await;
        } else {
            madsim::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// One record a consumer received during the run.
#[derive(Clone, Debug)]
pub struct Poll {
    /// Consumer number.
    pub consumer: u32,
    /// Partition.
    pub tp: Tp,
    /// Offset.
    pub offset: i64,
    /// Value.
    pub value: String,
    /// Simulated milliseconds since the workload started.
    pub at_ms: u64,
}

/// A consumer by assignment of every partition from offset 0, polling until the workload
/// ends.
async fn consume(
    id: u32,
    bootstrap: &str,
    p: &Params,
    (trace_start, start): (madsim::time::Instant, madsim::time::Instant),
    polls: &Mutex<Vec<Poll>>,
    drain: &DrainTarget,
    log: &(impl Fn(String) + Send + Sync),
) {
    let Ok(client) = Client::connect(bootstrap, &format!("consumer-{id}")).await else {
        return;
    };
    let mut consumer = Consumer::new(Arc::clone(&client));
    #[cfg(feature = "planted-bugs")]
    {
        consumer.planted_forget_on_not_leader =
            p.planted == Some(Planted::ConsumerForgetsPartition);
    }
    let names = p.topic_names();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    for tp in p.partitions() {
        consumer.assign(names[tp.topic], tp.partition, Offset(0));
    }
    let deadline = Duration::from_millis(p.duration_ms);
    // The next offset this consumer reads in each partition.
    let mut next: BTreeMap<Tp, i64> = BTreeMap::new();
    let mut draining_since = None;
    loop {
        if start.elapsed() >= deadline {
            let target = drain
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            if let Some(target) = target {
                let since = *draining_since.get_or_insert_with(madsim::time::Instant::now);
                let reached = target
                    .iter()
                    .all(|(part, end)| next.get(part).copied().unwrap_or(0) >= *end);
                if reached || since.elapsed() >= DRAIN {
                    return;
                }
            }
        }
        let got = madsim::time::timeout(Duration::from_secs(5), consumer.poll()).await;
        match got {
            Ok(Ok(records)) => {
                let at_ms = now_ms(start);
                for r in records {
                    let Some(topic) = names.iter().position(|n| **n == *r.topic) else {
                        continue;
                    };
                    let tp = Tp {
                        topic,
                        partition: r.partition,
                    };
                    next.insert(tp, r.offset.0 + 1);
                    let value = String::from_utf8_lossy(r.value.as_deref().unwrap_or_default())
                        .into_owned();
                    log(Line::new(now_ms(trace_start), "poll")
                        .num("consumer", i64::from(id))
                        .str("topic", names[topic])
                        .num("partition", i64::from(r.partition))
                        .num("offset", r.offset.0)
                        .str("value", &value)
                        .done());
                    polls
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(Poll {
                            consumer: id,
                            tp,
                            offset: r.offset.0,
                            value,
                            at_ms,
                        });
                }
                madsim::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(Err(_)) | Err(_) => {
                let _ = client.metadata(Some(&names)).await;
                madsim::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Jepsen's unseen: an acknowledged value that the final log holds and that no consumer
/// read, though the consumers read on until they reached the final log's end (or `DRAIN`
/// passed). The final read finds what is stored; this finds what consumers cannot get to.
///
/// In a topic whose loss the run allows (fsync=interval after a power loss), a consumer
/// may have read past an offset before a lost record's offset was reused: what it misses
/// there is reported as permitted.
#[allow(clippy::too_many_arguments)]
fn check_unseen(
    p: &Params,
    power_lost: bool,
    history: &[Op],
    polls: &[Poll],
    read: &Read,
    offline: &BTreeSet<Tp>,
    violations: &mut Vec<String>,
    permitted: &mut Vec<String>,
) {
    if p.consumers == 0 {
        return;
    }
    let seen: BTreeSet<&str> = polls.iter().map(|p| p.value.as_str()).collect();
    let unseen: Vec<(&Op, &(Tp, i64))> = history
        .iter()
        .filter(|o| matches!(o.outcome, Outcome::Ok(_)) && !offline.contains(&o.tp))
        .filter(|o| !seen.contains(o.value.as_str()))
        .filter_map(|o| {
            read.get(&o.value)
                .and_then(|at| at.first())
                .map(|at| (o, at))
        })
        .collect();
    let (allowed, unseen): (Vec<_>, Vec<_>) = unseen
        .into_iter()
        .partition(|(op, _)| power_lost && p.interval(op.tp));
    for (op, (tp, offset)) in allowed.iter().take(20) {
        permitted.push(format!(
            "unseen: {} (at offset {offset} of {tp}, acknowledged at {} ms) was read by no consumer (fsync=interval with a power loss)",
            op.value, op.completed_ms
        ));
    }
    if let Some((op, (tp, offset))) = unseen.first() {
        violations.push(format!(
            "unseen: acknowledged values the final log holds, {} of them, were read by no consumer, which read on for up to {} s after the final read; the first: {} (at offset {offset} of {tp}, acknowledged at {} ms)",
            unseen.len(),
            DRAIN.as_secs(),
            op.value,
            op.completed_ms
        ));
    }
}

/// The consumers' history checker: nonmonotonic-poll (a consumer's offsets in a partition
/// go backwards or repeat), poll-skip (it jumps over an offset the final log holds), G1a
/// (it read a value whose send definitely failed), and dirty-read (what it read at an offset
/// is not what the final log holds there: a delivered record must be permanent).
#[allow(clippy::too_many_arguments)]
fn check_polls(
    p: &Params,
    power_lost: bool,
    offline: &BTreeSet<Tp>,
    history: &[Op],
    polls: &[Poll],
    read: &Read,
    violations: &mut Vec<String>,
    permitted: &mut Vec<String>,
) {
    let failed: BTreeSet<&str> = history
        .iter()
        .filter(|o| o.outcome == Outcome::Fail)
        .map(|o| o.value.as_str())
        .collect();
    // The final log: (partition, offset) -> value.
    let mut at: BTreeMap<(Tp, i64), &str> = BTreeMap::new();
    for (v, places) in read {
        for place in places {
            at.insert(*place, v.as_str());
        }
    }
    let mut last: BTreeMap<(u32, Tp), &Poll> = BTreeMap::new();
    let mut kept = 0;
    let mut push = |v: String| {
        kept += 1;
        if kept <= 20 {
            violations.push(v);
        }
    };
    for poll in polls {
        let loss_allowed = p.interval(poll.tp) && power_lost;
        if failed.contains(poll.value.as_str()) {
            push(format!(
                "G1a: consumer {} read {} at offset {} of {} ({} ms), a value refused with NOT_ENOUGH_REPLICAS",
                poll.consumer, poll.value, poll.offset, poll.tp, poll.at_ms
            ));
        }
        if !offline.contains(&poll.tp) {
            match at.get(&(poll.tp, poll.offset)) {
                Some(v) if *v == poll.value => {}
                now => {
                    let what = format!(
                        "dirty-read: consumer {} read {} at offset {} of {} ({} ms); the final log has {} there",
                        poll.consumer,
                        poll.value,
                        poll.offset,
                        poll.tp,
                        poll.at_ms,
                        now.unwrap_or(&"nothing")
                    );
                    if loss_allowed {
                        permitted.push(format!("{what} (fsync=interval with a power loss)"));
                    } else {
                        push(what);
                    }
                }
            }
        }
        if let Some(prev) = last.insert((poll.consumer, poll.tp), poll) {
            if poll.offset <= prev.offset {
                push(format!(
                    "nonmonotonic-poll: consumer {} read offset {} of {} ({} ms) after offset {} ({} ms)",
                    poll.consumer, poll.offset, poll.tp, poll.at_ms, prev.offset, prev.at_ms
                ));
            } else {
                let skipped: Vec<i64> = at
                    .range((poll.tp, prev.offset + 1)..(poll.tp, poll.offset))
                    .map(|((_, o), _)| *o)
                    .collect();
                if !skipped.is_empty() {
                    let what = format!(
                        "poll-skip: consumer {} read offset {} of {} ({} ms) right after {} ({} ms), skipping {skipped:?}",
                        poll.consumer, poll.offset, poll.tp, poll.at_ms, prev.offset, prev.at_ms
                    );
                    if loss_allowed {
                        permitted.push(format!("{what} (fsync=interval with a power loss)"));
                    } else {
                        push(what);
                    }
                }
            }
        }
    }
}

/// The liveness phase's budget: polls 100 ms apart (60 simulated seconds).
const SETTLE_POLLS: u32 = 600;

/// Waits (up to `polls` times 100 ms) until every partition of every topic has a leader
/// and an ISR of all its replicas, on every broker. With `unclean_restart`, a partition of
/// an fsync=interval topic without leader and ISR is accepted as offline (KIP-966: every ISR
/// member restarted uncleanly, and there is no unclean recovery): the result names those.
async fn settle(
    bootstrap: &str,
    p: &Params,
    unclean_restart: bool,
    polls: u32,
) -> Result<BTreeSet<Tp>, String> {
    let mut last = String::new();
    let mut offline = BTreeSet::new();
    let brokers: Vec<&str> = bootstrap.split(',').collect();
    let names = p.topic_names();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    'poll: for _ in 0..polls {
        madsim::time::sleep(Duration::from_millis(100)).await;
        // Every broker must say so: one that is still replaying the metadata log answers
        // from an old state.
        let mut views = Vec::new();
        for b in &brokers {
            let Ok(c) = Client::connect(b, "settle").await else {
                continue 'poll;
            };
            let Ok(topics) = c.metadata(Some(&names)).await else {
                continue 'poll;
            };
            let mut view = Vec::new();
            for name in &names {
                let Some(t) = topics.iter().find(|t| t.name == *name) else {
                    continue 'poll;
                };
                view.push(t.partitions.clone());
            }
            views.push(view);
        }
        last = format!("{:?}", views.first());
        if views.windows(2).any(|w| w[0] != w[1]) {
            last = format!("brokers disagree: {views:?}");
            continue;
        }
        let Some(view) = views.into_iter().next() else {
            continue;
        };
        offline.clear();
        let mut full = true;
        for (topic, parts) in view.iter().enumerate() {
            for part in parts {
                let tp = Tp {
                    topic,
                    partition: part.index,
                };
                if unclean_restart && p.interval(tp) && part.leader < 0 && part.isr.is_empty() {
                    offline.insert(tp);
                }
            }
            full &= parts.len() == p.topics[topic].partitions as usize
                && parts.iter().all(|part| {
                    offline.contains(&Tp {
                        topic,
                        partition: part.index,
                    }) || part.leader >= 0 && {
                        let mut isr = part.isr.clone();
                        let mut replicas = part.replicas.clone();
                        isr.sort_unstable();
                        replicas.sort_unstable();
                        isr == replicas
                    }
                });
        }
        if full && offline.is_empty() {
            return Ok(offline);
        }
    }
    if !offline.is_empty() {
        // Still so after 60 s: accepted as permitted.
        return Ok(offline);
    }
    Err(format!(
        "60 s after healing, not every partition has a leader and a full ISR on every broker: {last}"
    ))
}

/// value -> every (partition, offset) it is at.
type Read = BTreeMap<String, Vec<(Tp, i64)>>;

async fn read_all(bootstrap: &str, p: &Params, offline: &BTreeSet<Tp>) -> Result<Read, String> {
    let names = p.topic_names();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let client = Client::connect(bootstrap, "reader")
        .await
        .map_err(|e| e.to_string())?;
    // A final acks=all write per partition: once it is acknowledged, the high watermark
    // covers everything before it, whatever a new leader's high watermark said so far.
    let sentinels = Producer::new(
        Arc::clone(&client),
        ProducerConfig {
            acks: -1,
            idempotent: false,
            retries: 0,
            request_timeout: Duration::from_secs(3),
            ..ProducerConfig::default()
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    let mut consumer = Consumer::new(Arc::clone(&client));
    let mut ends = BTreeMap::new();
    for tp in p
        .partitions()
        .into_iter()
        .filter(|tp| !offline.contains(tp))
    {
        let mut end = None;
        for _ in 0..50 {
            let record = Record {
                value: Some(format!("{SENTINEL}{tp}").into_bytes()),
                partition: Some(tp.partition),
                ..Record::default()
            };
            if let Ok(d) = sentinels.send(names[tp.topic], record).await {
                if let Ok(offset) = d.await {
                    end = Some(Offset(offset.0 + 1));
                    break;
                }
            }
            let _ = client.metadata(Some(&names)).await;
            madsim::time::sleep(Duration::from_millis(200)).await;
        }
        ends.insert(
            tp,
            end.ok_or_else(|| format!("the final write to {tp} was never acknowledged"))?,
        );
        consumer.assign(names[tp.topic], tp.partition, Offset(0));
    }
    let mut read = Read::new();
    for _ in 0..2_000 {
        if ends.iter().all(|(tp, end)| {
            consumer
                .position(names[tp.topic], tp.partition)
                .is_some_and(|o| o >= *end)
        }) {
            return Ok(read);
        }
        match consumer.poll().await {
            Ok(records) => {
                for r in records {
                    let Some(topic) = names.iter().position(|n| **n == *r.topic) else {
                        continue;
                    };
                    let v = String::from_utf8_lossy(r.value.as_deref().unwrap_or_default())
                        .into_owned();
                    let tp = Tp {
                        topic,
                        partition: r.partition,
                    };
                    read.entry(v).or_default().push((tp, r.offset.0));
                }
            }
            Err(_) => {
                let _ = client.metadata(Some(&names)).await;
                madsim::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    Err(format!("could not read up to the high watermarks {ends:?}"))
}

/// The history checker.
fn check(
    p: &Params,
    power_lost: bool,
    offline: &BTreeSet<Tp>,
    history: &[Op],
    read: &Read,
    violations: &mut Vec<String>,
    permitted: &mut Vec<String>,
) {
    let sent: BTreeMap<&str, &Op> = history.iter().map(|o| (o.value.as_str(), o)).collect();
    for (value, copies) in read {
        if value.starts_with(SENTINEL) {
            continue;
        }
        if copies.len() > 1 {
            violations.push(format!(
                "duplicate: {value} is in the log {} times: {copies:?}",
                copies.len()
            ));
        }
        match sent.get(value.as_str()) {
            None => violations.push(format!("unexpected: {value} was never sent, at {copies:?}")),
            Some(op) if op.outcome == Outcome::Fail => violations.push(format!(
                "failed-but-present: {value} was refused with NOT_ENOUGH_REPLICAS at {} ms but is at {copies:?}",
                op.completed_ms
            )),
            Some(_) => {}
        }
    }
    let mut last: BTreeMap<(u32, Tp), (i64, &str)> = BTreeMap::new();
    for op in history {
        let Outcome::Ok(offset) = op.outcome else {
            continue;
        };
        if offline.contains(&op.tp) {
            // Unreadable, not known lost: reported with the partition above.
            continue;
        }
        match read.get(&op.value).map(Vec::as_slice) {
            None => {
                let why = if op.acks_one {
                    Some("acks=1: acknowledged by the leader alone")
                } else if p.interval(op.tp) && power_lost {
                    Some("fsync=interval with a power loss in the run")
                } else {
                    None
                };
                match why {
                    Some(why) => permitted.push(format!("{} (acknowledged at offset {offset} of {}): {why}", op.value, op.tp)),
                    None => {
                        let now_there = read
                            .iter()
                            .find(|(_, at)| at.contains(&(op.tp, offset)))
                            .map_or("nothing", |(v, _)| v.as_str());
                        violations.push(format!(
                            "lost-write: {} acknowledged at {} ms at offset {offset} of {} is not in the log (that offset now holds {now_there})",
                            op.value, op.completed_ms, op.tp
                        ));
                    }
                }
            }
            Some([(tp, at)]) if (*tp, *at) != (op.tp, offset) => violations.push(format!(
                "inconsistent-offsets: {} acknowledged at offset {offset} of {} is at offset {at} of {tp}",
                op.value, op.tp
            )),
            _ => {}
        }
        if op.acks_one {
            // acks=1 values may be lost to a failover, and their offsets reused.
            continue;
        }
        if let Some((prev, prev_value)) = last.insert((op.producer, op.tp), (offset, &op.value)) {
            if prev >= offset {
                violations.push(format!(
                    "nonmonotonic-send: producer {} got offset {offset} for {} after {prev} for {prev_value} in {}",
                    op.producer, op.value, op.tp
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_print_and_parse_back() {
        for seed in 0..50 {
            let p = Params::of(seed, None);
            let s = Schedule::of(&p);
            let text = s.to_string();
            assert_eq!(text.parse::<Schedule>().unwrap(), s, "seed {seed}:\n{text}");
        }
        assert!("12 explode 3".parse::<Schedule>().is_err());
        assert!("x crash 3".parse::<Schedule>().is_err());
    }
}
