//! State invariants, checked at every state change a broker reports (see
//! `lode_broker::observe`), against a model of every replica built from those reports.
//!
//! Checking reads the model and the event and nothing else: it draws no randomness and
//! awaits nothing, so a run with checks is the same run as one without. Each invariant is
//! one file, numbered as in the project's reference list of Kafka's invariants:
//!
//! | file | number | guards |
//! |---|---|---|
//! | `durability` | 1 | a committed batch stays, unchanged, in every later leader's log |
//! | `leader_completeness` | 2 | a new leader holds every committed batch |
//! | `isr_holds_committed` | 3 | every running ISR or ELR member holds the committed log |
//! | `log_matching` | 4 | a replica's log below its high watermark is the committed log |
//! | `epochs_monotonic` | 5 | leader epochs never decrease along a log |
//! | `one_writer_per_epoch` | 5 | one leader per epoch, and only it writes that epoch |
//! | `controller_epochs` | 6 | partition epochs strictly increase, leader epochs never fall |
//! | `high_watermark_bounds` | 7 | HW <= log end on every replica |
//! | `strict_min_isr` | 8 | a leader's HW moves only with an ISR of at least min ISR |
//! | `ack_correctness` | 9 | an acks=all answer (a produce or an offset commit) comes after the HW passed it |
//! | `controller_state` | 10 | leader in ISR, ISR and ELR in the replicas and disjoint, ... |
//! | `isr_admission` | 11 | a leader proposes a replica into the ISR only past its epoch's start |
//! | `lost_data_out` | 12 | a replica that lost committed batches is in no ISR or ELR until caught up |
//! | `no_committed_truncation` | 13 | no replica truncates a committed batch |
//! | `consumer_below_hw` | 14 | consumers are served only batches below the HW |
//! | `metadata_prefix` | 17 | every node applies the same metadata entry at an offset |
//!
//! One more is checked on the consumer-group workload's history at the end of a run, not
//! per event: `committed_offsets` (an acknowledged offset commit survives coordinator
//! failover; a member resuming at committed offset `c` first reads the first record at
//! or after `c`).
//!
//! Where the configuration allows loss (fsync=interval topics after a power loss), what
//! the loss invariants find is reported as permitted, with the reason.

mod ack_correctness;
pub mod committed_offsets;
mod consumer_below_hw;
mod controller_epochs;
mod controller_state;
mod durability;
mod epochs_monotonic;
mod high_watermark_bounds;
mod isr_admission;
mod isr_holds_committed;
mod leader_completeness;
mod log_matching;
mod lost_data_out;
mod metadata_prefix;
mod no_committed_truncation;
pub mod on_disk;
mod one_writer_per_epoch;
mod strict_min_isr;

use std::collections::{BTreeMap, BTreeSet};

use lode_broker::observe::{BatchId, Event, PartitionView};
use lode_proto::{Epoch, Offset};

/// A state invariant.
pub trait Invariant {
    /// Its name, as violations print it.
    fn name(&self) -> &'static str;
    /// Whether breaking it can be loss the configuration allows (then, in a run that
    /// allows loss, it is reported as permitted).
    fn about_loss(&self) -> bool {
        false
    }
    /// Checks `event` on `node`, before the model takes it in.
    ///
    /// # Errors
    /// What is broken, with the evidence.
    fn check(&mut self, model: &Model, node: i32, event: &Event) -> Result<(), String>;
}

/// A partition state no node applied before (its partition epoch is new), with the
/// partition's model and each ISR and ELR member named with its set: what invariants about
/// a controller decision check, once per decision.
fn new_partition_state<'a>(
    m: &'a Model,
    e: &'a Event,
) -> Option<(
    &'a PartitionModel,
    &'a PartitionView,
    impl Iterator<Item = (lode_proto::BrokerId, &'static str)> + 'a,
)> {
    let Event::PartitionChanged { state: s, .. } = e else {
        return None;
    };
    let p = m.partition(e)?;
    if s.partition_epoch <= p.partition_epoch_max {
        return None;
    }
    let members = s
        .isr
        .iter()
        .map(|b| (*b, "ISR"))
        .chain(s.elr.iter().map(|b| (*b, "ELR")));
    Some((p, s, members))
}

/// The batch of `batches` (by base offset) that holds `offset`.
fn holding(batches: &BTreeMap<Offset, BatchId>, offset: Offset) -> Option<&BatchId> {
    batches
        .range(..=offset)
        .next_back()
        .map(|(_, b)| b)
        .filter(|b| b.last >= offset)
}

/// One replica, as its reports describe it.
#[derive(Clone, Debug, Default)]
pub struct Replica {
    /// Its batches, by base offset.
    pub log: BTreeMap<Offset, BatchId>,
    /// Its high watermark.
    pub high_watermark: Offset,
    /// The epoch it leads in, if it leads.
    pub leading: Option<Epoch>,
    /// The model step of its last (re)opening.
    pub opened_step: u64,
    /// Set when a reopening lost committed batches: the committed end it must reach again,
    /// and the model step its node started at (the process that found the loss). Cleared
    /// once its log reaches that end.
    pub lost: Option<(Offset, u64)>,
}

impl Replica {
    /// Its log end.
    #[must_use]
    pub fn log_end(&self) -> Offset {
        self.log
            .last_key_value()
            .map_or(Offset(0), |(_, b)| b.last.next())
    }

    /// The batch holding `offset`.
    #[must_use]
    pub fn batch_at(&self, offset: Offset) -> Option<&BatchId> {
        holding(&self.log, offset)
    }
}

/// One leadership: who took up which epoch, where it started, and when.
#[derive(Clone, Copy, Debug)]
pub struct Leadership {
    /// The leader.
    pub node: i32,
    /// The log end it took as the epoch's start.
    pub start: Offset,
    /// The model step it took up leadership at.
    pub step: u64,
}

/// One partition.
#[derive(Clone, Debug, Default)]
pub struct PartitionModel {
    /// Its replicas, by node.
    pub replicas: BTreeMap<i32, Replica>,
    /// Every batch a leader's high watermark ever passed, by base offset.
    pub committed: BTreeMap<Offset, BatchId>,
    /// The epoch of the leader whose high watermark first passed each committed batch, by
    /// base offset. A batch written in one epoch may be committed by a later epoch's leader.
    pub committed_under: BTreeMap<Offset, Epoch>,
    /// Leaderships by epoch.
    pub leaders: BTreeMap<Epoch, Leadership>,
    /// Each node's last applied state of the partition.
    pub views: BTreeMap<i32, PartitionView>,
    /// The highest partition epoch any node applied.
    pub partition_epoch_max: i32,
}

impl PartitionModel {
    /// The end of the committed log.
    #[must_use]
    pub fn committed_end(&self) -> Offset {
        self.committed
            .last_key_value()
            .map_or(Offset(0), |(_, b)| b.last.next())
    }

    /// The committed batch holding `offset`.
    #[must_use]
    pub fn committed_at(&self, offset: Offset) -> Option<&BatchId> {
        holding(&self.committed, offset)
    }

    /// The first batch of `replica` in `from..upto` (whole batches ending below `upto`)
    /// that disagrees with the committed log, with what the committed log has there.
    #[must_use]
    pub fn first_disagreement(
        &self,
        replica: &Replica,
        from: Offset,
        upto: Offset,
    ) -> Option<(BatchId, Option<BatchId>)> {
        let start = replica.batch_at(from).map_or(from, |b| b.base);
        replica
            .log
            .range(start..)
            .map(|(_, b)| b)
            .take_while(|b| b.last < upto)
            .find_map(|b| match self.committed_at(b.base) {
                Some(c) if c == b => None,
                Some(c) => Some((*b, Some(*c))),
                None if b.base < self.committed_end() => Some((*b, None)),
                None => None,
            })
    }
}

/// What the checks know besides the reports.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The topic's effective min ISR: `min(min.insync.replicas, replicas)`.
    pub min_isr: usize,
    /// Whether unclean elections are enabled.
    pub unclean_election: bool,
}

/// Every replica of every partition, and the metadata log as applied.
#[derive(Clone, Debug)]
pub struct Model {
    /// The settings.
    pub settings: Settings,
    /// Partitions by (topic, index).
    pub partitions: BTreeMap<(String, i32), PartitionModel>,
    /// The digest of each applied metadata entry, by raft offset.
    pub metadata: BTreeMap<Offset, (u64, i32)>,
    /// Events taken in so far.
    pub step: u64,
    /// The active controller (the quorum leader) and its epoch, as last reported.
    pub controller: Option<(Epoch, i32)>,
    /// Each node's last accepted registration: its broker epoch and the model step.
    pub registered: BTreeMap<i32, (i64, u64)>,
    /// The model step of each node's last start.
    pub started: BTreeMap<i32, u64>,
}

/// The (topic, partition) an event is about.
#[must_use]
pub fn key_of(event: &Event) -> Option<(String, i32)> {
    match event {
        Event::Opened {
            topic, partition, ..
        }
        | Event::Appended {
            topic, partition, ..
        }
        | Event::Truncated {
            topic, partition, ..
        }
        | Event::HighWatermark {
            topic, partition, ..
        }
        | Event::Leader {
            topic, partition, ..
        }
        | Event::Follower { topic, partition }
        | Event::IsrProposed {
            topic, partition, ..
        }
        | Event::Acked {
            topic, partition, ..
        }
        | Event::Served {
            topic, partition, ..
        }
        | Event::PartitionChanged {
            topic, partition, ..
        } => Some((topic.clone(), *partition)),
        Event::MetadataApplied { .. }
        | Event::Started
        | Event::Halted { .. }
        | Event::Registered { .. }
        | Event::QuorumRole { .. }
        | Event::Probe { .. } => None,
    }
}

impl Model {
    /// An empty model.
    #[must_use]
    pub fn new(settings: Settings) -> Model {
        Model {
            settings,
            partitions: BTreeMap::new(),
            metadata: BTreeMap::new(),
            step: 0,
            controller: None,
            registered: BTreeMap::new(),
            started: BTreeMap::new(),
        }
    }

    /// The partition an event is about, if the model knows it.
    #[must_use]
    pub fn partition(&self, event: &Event) -> Option<&PartitionModel> {
        key_of(event).and_then(|k| self.partitions.get(&k))
    }

    /// The replica on `node` of the partition an event is about.
    #[must_use]
    pub fn replica(&self, node: i32, event: &Event) -> Option<&Replica> {
        self.partition(event).and_then(|p| p.replicas.get(&node))
    }

    /// Takes `event` on `node` in.
    pub fn apply(&mut self, node: i32, event: &Event) {
        self.step += 1;
        let step = self.step;
        match event {
            Event::MetadataApplied { offset, digest } => {
                self.metadata.entry(*offset).or_insert((*digest, node));
                return;
            }
            Event::QuorumRole { leader, epoch } => {
                let current = self.controller.is_some_and(|(_, n)| n == node);
                if *leader && self.controller.is_none_or(|(e, _)| *epoch >= e) {
                    self.controller = Some((*epoch, node));
                } else if !*leader && current {
                    self.controller = None;
                }
                return;
            }
            Event::Registered { epoch } => {
                self.registered.insert(node, (*epoch, step));
                return;
            }
            Event::Started => {
                self.started.insert(node, step);
                if self.controller.is_some_and(|(_, n)| n == node) {
                    self.controller = None;
                }
                // It applies the metadata log again from the start, and leads nothing.
                for p in self.partitions.values_mut() {
                    p.views.remove(&node);
                    if let Some(r) = p.replicas.get_mut(&node) {
                        r.leading = None;
                    }
                }
                return;
            }
            _ => {}
        }
        let Some(key) = key_of(event) else {
            return;
        };
        let started = self.started.get(&node).copied().unwrap_or(0);
        let p = self.partitions.entry(key).or_default();
        let committed_end = p.committed_end();
        let r = p.replicas.entry(node).or_default();
        match event {
            Event::Opened {
                log_end,
                high_watermark,
                batches,
                ..
            } => {
                let lost_committed = r
                    .log
                    .values()
                    .any(|b| b.last >= *log_end && b.base < committed_end);
                if lost_committed && *log_end < committed_end {
                    r.lost = Some((committed_end, started));
                }
                match batches {
                    // What recovery found is what the log holds: a write that failed part
                    // way may have left whole batches whose append was never reported.
                    Some(found) => r.log = found.iter().map(|b| (b.base, *b)).collect(),
                    None => r.log.retain(|_, b| b.last < *log_end),
                }
                r.high_watermark = *high_watermark;
                r.leading = None;
                r.opened_step = step;
            }
            Event::Appended { batches, .. } => {
                for b in batches {
                    r.log.insert(b.base, *b);
                }
            }
            Event::Truncated { to, .. } => r.log.retain(|_, b| b.last < *to),
            Event::HighWatermark {
                high_watermark,
                leader_isr,
                ..
            } => {
                if leader_isr.is_some() {
                    let from = r.high_watermark;
                    let start = r.batch_at(from).map_or(from, |b| b.base);
                    for (_, b) in r.log.range(start..) {
                        if b.last >= *high_watermark {
                            break;
                        }
                        if let std::collections::btree_map::Entry::Vacant(v) =
                            p.committed.entry(b.base)
                        {
                            v.insert(*b);
                            p.committed_under
                                .insert(b.base, r.leading.unwrap_or(b.epoch));
                        }
                    }
                }
                r.high_watermark = *high_watermark;
            }
            Event::Leader { epoch, start, .. } => {
                r.leading = Some(*epoch);
                p.leaders.entry(*epoch).or_insert(Leadership {
                    node,
                    start: *start,
                    step,
                });
            }
            Event::Follower { .. } => r.leading = None,
            Event::PartitionChanged { state, .. } => {
                p.partition_epoch_max = p.partition_epoch_max.max(state.partition_epoch);
                p.views.insert(node, state.clone());
            }
            Event::Acked { .. }
            | Event::IsrProposed { .. }
            | Event::Served { .. }
            | Event::MetadataApplied { .. }
            | Event::Started
            | Event::Halted { .. }
            | Event::Registered { .. }
            | Event::QuorumRole { .. }
            | Event::Probe { .. } => {}
        }
        if r.lost.is_some_and(|(end, _)| r.log_end() >= end) {
            r.lost = None;
        }
    }
}

impl Model {
    /// Whether `node`'s current process (since its last start) has registered.
    #[must_use]
    pub fn registered_since_start(&self, node: i32) -> bool {
        let started = self.started.get(&node).copied().unwrap_or(0);
        self.registered
            .get(&node)
            .is_some_and(|&(_, step)| step > started)
    }

    /// The effective min ISR of `topic`-`partition`: the configured one (every topic of a
    /// run has the same), at most its replica count.
    #[must_use]
    pub fn min_isr(&self, topic: &str, partition: i32) -> usize {
        let replicas = self
            .latest_view(topic, partition)
            .map_or(usize::MAX, |v| v.replicas.len());
        self.settings.min_isr.min(replicas).max(1)
    }

    /// The state of `topic`-`partition` with the highest partition epoch any node applied.
    #[must_use]
    pub fn latest_view(&self, topic: &str, partition: i32) -> Option<&PartitionView> {
        self.partitions
            .get(&(topic.to_owned(), partition))?
            .views
            .values()
            .max_by_key(|v| v.partition_epoch)
    }
}

/// Every invariant, in the table's order.
#[must_use]
pub fn all() -> Vec<Box<dyn Invariant>> {
    vec![
        Box::new(durability::Durability),
        Box::new(leader_completeness::LeaderCompleteness),
        Box::new(isr_holds_committed::IsrHoldsCommitted),
        Box::new(log_matching::LogMatching),
        Box::new(epochs_monotonic::EpochsMonotonic),
        Box::new(one_writer_per_epoch::OneWriterPerEpoch),
        Box::new(controller_epochs::ControllerEpochs),
        Box::new(high_watermark_bounds::HighWatermarkBounds),
        Box::new(strict_min_isr::StrictMinIsr),
        Box::new(ack_correctness::AckCorrectness),
        Box::new(controller_state::ControllerState),
        Box::new(isr_admission::IsrAdmission),
        Box::new(lost_data_out::LostDataOut),
        Box::new(no_committed_truncation::NoCommittedTruncation),
        Box::new(consumer_below_hw::ConsumerBelowHw),
        Box::new(metadata_prefix::MetadataPrefix),
    ]
}

/// Short text of a batch, for evidence.
#[must_use]
pub fn show(b: &BatchId) -> String {
    format!(
        "[{}..={} epoch {} crc {:08x}]",
        b.base.0, b.last.0, b.epoch.0, b.crc
    )
}

/// Violations kept per invariant (the first ones; a broken invariant tends to break again).
const KEPT_PER_INVARIANT: usize = 5;

/// The model, every invariant, and what they found.
pub struct Checker {
    /// The model.
    pub model: Model,
    invariants: Vec<Box<dyn Invariant>>,
    /// Broken invariants, with time and evidence.
    pub violations: Vec<String>,
    /// Findings of loss invariants in a run whose configuration allows loss, with the
    /// reason.
    pub permitted: Vec<String>,
    /// The topics whose loss the run allows once it does, with the reason.
    pub loss_allowed: BTreeMap<String, String>,
    /// Brokers whose disks had a fault injected (errors, corruption, full, replaced):
    /// only they may halt on a storage fault.
    pub disk_faulted: BTreeSet<i32>,
    found: BTreeMap<&'static str, usize>,
}

impl Checker {
    /// Every invariant over an empty model.
    #[must_use]
    pub fn new(settings: Settings) -> Checker {
        Checker {
            model: Model::new(settings),
            invariants: all(),
            violations: Vec::new(),
            permitted: Vec::new(),
            loss_allowed: BTreeMap::new(),
            disk_faulted: BTreeSet::new(),
            found: BTreeMap::new(),
        }
    }

    /// Checks `event` of `node` at `t_ms`, then takes it into the model. Returns the trace
    /// lines of what broke.
    pub fn take(&mut self, t_ms: u64, node: i32, event: &Event) -> Vec<String> {
        let mut lines = Vec::new();
        if key_of(event).is_some_and(|(t, _)| t == crate::churn::TOPIC) {
            // The churn topic is checked by its client (`crate::churn`): deletions would
            // look like lost committed batches here.
            return lines;
        }
        if let Event::Halted { reason } = event {
            // From the outside: the broker's disk is what the harness made it. A halt on
            // a disk with nothing injected is a broker's own doing (a race between its
            // tasks, an impossible state), not the disk's.
            if !self.disk_faulted.contains(&node) {
                let why = format!("broker {node} halted with no disk fault injected: {reason}");
                self.violations
                    .push(format!("invariant halt-without-fault at {t_ms} ms: {why}"));
                lines.push(
                    crate::trace::Line::new(t_ms, "violation")
                        .str("invariant", "halt-without-fault")
                        .str("evidence", &why)
                        .done(),
                );
            }
        }
        for inv in &mut self.invariants {
            let Err(why) = inv.check(&self.model, node, event) else {
                continue;
            };
            let name = inv.name();
            let n = self.found.entry(name).or_default();
            *n += 1;
            if *n > KEPT_PER_INVARIANT {
                continue;
            }
            let topic = key_of(event);
            let key = topic
                .as_ref()
                .map_or(String::new(), |(t, p)| format!(" {t}-{p}"));
            let allowed = topic.and_then(|(t, _)| self.loss_allowed.get(&t));
            match (allowed, inv.about_loss()) {
                (Some(reason), true) => {
                    self.permitted.push(format!(
                        "{name}{key} at {t_ms} ms: {why} (permitted: {reason})"
                    ));
                    lines.push(
                        crate::trace::Line::new(t_ms, "permitted")
                            .str("invariant", name)
                            .str("evidence", &why)
                            .str("reason", reason)
                            .done(),
                    );
                }
                _ => {
                    self.violations
                        .push(format!("invariant {name}{key} at {t_ms} ms: {why}"));
                    lines.push(
                        crate::trace::Line::new(t_ms, "violation")
                            .str("invariant", name)
                            .str("evidence", &why)
                            .done(),
                    );
                }
            }
        }
        self.model.apply(node, event);
        lines
    }

    /// How often each invariant broke (including the ones not kept).
    #[must_use]
    pub fn counts(&self) -> &BTreeMap<&'static str, usize> {
        &self.found
    }
}
