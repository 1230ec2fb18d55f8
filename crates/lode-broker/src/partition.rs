//! One partition on this broker: its log, its idempotent-producer state, and the task that
//! syncs it (group commit) and advances its high watermark.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};

use std::collections::BTreeSet;
use std::time::Duration;

use lode_core::replication::{AckState, IsrProposal, LeaderReplication, ReplicationConfig};
use lode_core::{BatchMeta, ProducerStates, Verdict};
use lode_env::sync::watch;
use lode_env::{Clock, Dir};
use lode_proto::batch::RecordBatch;
use lode_proto::{BrokerId, Epoch, Offset};
use lode_storage::{AppendInfo, Log, LogConfig, LogError, SyncPolicy};
use tokio::sync::{Notify, RwLock};

use crate::config::FsyncPolicy;

/// Why an append was refused, in Kafka's terms.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The log refused or failed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// Control batches are written by the broker, never by clients.
    #[error("clients may not write control batches")]
    ControlBatch,
    /// Transactions are not supported yet.
    #[error("transactional batches are not supported")]
    Transactional,
    /// Idempotent producer sequence gap.
    #[error("out of order sequence: expected {expected}")]
    OutOfOrder {
        /// The sequence expected.
        expected: i32,
    },
    /// Idempotent producer fenced by a newer epoch.
    #[error("producer epoch fenced: current is {current}")]
    Fenced {
        /// The producer's current epoch.
        current: i16,
    },
    /// This broker does not lead the partition (yet, or any more).
    #[error("not the partition's leader")]
    NotLeader,
}

/// Why a follower's append or truncation was refused.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// The replica no longer follows that leader in that epoch: it leads now, follows
    /// another leader or epoch, or has no leader. What a stale fetcher brings is dropped.
    #[error("fenced: this replica does not follow broker {leader} in epoch {epoch}")]
    Fenced {
        /// The leader the fetch went to.
        leader: BrokerId,
        /// The epoch it was made in.
        epoch: Epoch,
    },
    /// The log failed.
    #[error(transparent)]
    Log(#[from] LogError),
}

/// How [`Partition::await_ack`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckOutcome {
    /// Every ISR member has the batch.
    Committed,
    /// This broker no longer leads in the batch's epoch.
    NotLeader,
    /// Not committed within the timeout.
    TimedOut,
    /// Appended, but the ISR shrank below min ISR before it was committed.
    NotEnoughReplicasAfterAppend,
}

pub struct Partition {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub index: i32,
    /// The log directory.
    pub dir: Dir,
    log: RwLock<Log>,
    producers: Mutex<ProducerStates>,
    hw: watch::Sender<Offset>,
    flush: Notify,
    /// Woken by every leader append: followers' fetches wait on it for new records.
    appended: Notify,
    closed: AtomicBool,
    fsync: FsyncPolicy,
    /// Bumped whenever any partition's high watermark moves, to wake long-polling fetches.
    data_arrived: watch::Sender<u64>,
    /// The leader epoch appends are stamped with (0 until the metadata says otherwise).
    epoch: AtomicI32,
    /// Standalone (no metadata log): the broker is the only replica and what is synced is
    /// committed. Otherwise the role comes from the metadata.
    standalone: bool,
    /// As leader in combined mode: the ISR replication state. `None` as follower (or
    /// standalone). Set, with `following`, only under the log's write lock: the role
    /// fences every append and high-watermark change, whichever task makes it.
    replication: std::sync::Mutex<Option<LeaderReplication>>,
    /// As follower: the leader followed and its epoch. Only a fetch made to that leader in
    /// that epoch may append, truncate or move the high watermark.
    following: std::sync::Mutex<Option<(BrokerId, Epoch)>>,
    /// This broker (for what the simulator observes).
    node: BrokerId,
    /// A planted bug (tests only).
    #[cfg(feature = "planted-bugs")]
    planted: Option<crate::config::PlantedBug>,
}

/// How a partition replica is kept.
#[derive(Clone, Debug)]
pub struct PartitionOptions {
    /// This broker.
    pub node: BrokerId,
    /// The partition's durability policy.
    pub fsync: FsyncPolicy,
    /// Segment size.
    pub segment_bytes_max: u64,
    /// Bytes of the log's tail kept in the page cache (see `LogConfig`).
    pub page_cache_window_bytes: u64,
    /// Standalone (no metadata log): the broker is the only replica and what is synced is
    /// committed.
    pub standalone: bool,
    /// Told of the log's storage faults.
    pub on_failure: Option<lode_storage::FailureHook>,
    /// A planted bug (tests only).
    #[cfg(feature = "planted-bugs")]
    pub planted: Option<crate::config::PlantedBug>,
}

/// What a replica fetch gets from this partition as leader, and an ISR change to propose.
pub type ServedFetch = (crate::control::ReplicaFetchReply, Option<IsrProposal>);

impl Partition {
    /// Opens (and recovers) the partition's log and starts its sync task.
    ///
    /// # Errors
    /// When the log cannot be opened.
    pub async fn open(
        topic: &str,
        index: i32,
        dir: Dir,
        clock: Clock,
        options: PartitionOptions,
        data_arrived: watch::Sender<u64>,
    ) -> Result<Arc<Partition>, LogError> {
        let PartitionOptions {
            node,
            fsync,
            segment_bytes_max,
            page_cache_window_bytes,
            standalone,
            ref on_failure,
            ..
        } = options;
        let config = LogConfig {
            segment_bytes_max,
            page_cache_window_bytes,
            sync: SyncPolicy::GroupCommit,
            on_failure: on_failure.clone(),
            #[cfg(feature = "planted-bugs")]
            planted_bug: match options.planted {
                Some(crate::config::PlantedBug::Storage(bug)) => Some(bug),
                _ => None,
            },
            ..LogConfig::default()
        };
        let (mut log, report) = Log::open(dir.clone(), clock.clone(), config).await?;
        if !report.clean_shutdown {
            tracing::info!(topic, partition = index, ?report, "partition recovered");
        }
        // Standalone, every record synced by recovery is committed. Replicated, the high
        // watermark is the checkpointed one until a leader says more: records beyond it may
        // not be committed.
        if standalone {
            let end = log.log_end_offset();
            log.set_high_watermark(end);
        }
        let batches = if crate::observe::enabled() {
            recovered_batches(&log).await
        } else {
            None
        };
        crate::observe::emit(node, || crate::observe::Event::Opened {
            topic: topic.to_owned(),
            partition: index,
            log_end: log.log_end_offset(),
            high_watermark: log.high_watermark(),
            batches,
        });
        #[cfg(feature = "planted-bugs")]
        if options.planted == Some(crate::config::PlantedBug::TruncateToHighWatermark)
            && !standalone
            && log.high_watermark() < log.log_end_offset()
        {
            let to = log.high_watermark().max(log.log_start_offset());
            log.truncate_to(to).await?;
            crate::observe::emit(node, || crate::observe::Event::Truncated {
                topic: topic.to_owned(),
                partition: index,
                to,
                reason: "planted: truncated to the high watermark on opening",
            });
        }
        let end = log.high_watermark();
        let producers = rebuild_producers(&log).await;
        let p = Arc::new(Partition {
            topic: topic.to_owned(),
            index,
            dir,
            hw: watch::Sender::new(end),
            log: RwLock::new(log),
            producers: Mutex::new(producers),
            flush: Notify::new(),
            appended: Notify::new(),
            closed: AtomicBool::new(false),
            fsync,
            data_arrived,
            epoch: AtomicI32::new(0),
            standalone,
            replication: std::sync::Mutex::new(None),
            following: std::sync::Mutex::new(None),
            node,
            #[cfg(feature = "planted-bugs")]
            planted: options.planted,
        });
        let syncer = Arc::clone(&p);
        lode_env::task::spawn(async move { syncer.sync_loop(clock).await });
        Ok(p)
    }

    /// The leader epoch this broker writes with.
    #[must_use]
    pub fn leader_epoch(&self) -> Epoch {
        Epoch(self.epoch.load(Ordering::Acquire))
    }

    /// Leads with `epoch` from now on (from the metadata log). Epochs only grow: a stale
    /// one is ignored.
    pub fn set_leader_epoch(&self, epoch: Epoch) {
        self.epoch.fetch_max(epoch.0, Ordering::AcqRel);
    }

    /// The high watermark: consumers read below it.
    #[must_use]
    pub fn high_watermark(&self) -> Offset {
        *self.hw.borrow()
    }

    /// Waits until the high watermark passes `offset`, or this broker no longer leads in
    /// `epoch` (the epoch the batch was appended in), or the partition closes.
    pub async fn wait_committed(&self, offset: Offset, epoch: Epoch) {
        let mut rx = self.hw.subscribe();
        // An error means the sender is gone: the partition is closing; stop waiting.
        let _ = rx
            .wait_for(|hw| {
                *hw > offset || self.closed.load(Ordering::Acquire) || !self.still_leads(epoch)
            })
            .await;
    }

    /// The epoch this broker leads the partition in, if it leads it (a standalone
    /// partition always leads).
    #[must_use]
    pub fn leading_epoch(&self) -> Option<Epoch> {
        if self.standalone {
            return Some(self.leader_epoch());
        }
        self.replication_lock()
            .as_ref()
            .map(LeaderReplication::leader_epoch)
    }

    /// Whether this broker still leads the partition in `epoch`. A deposed leader must not
    /// complete an acks=all request: its high watermark now follows another leader's log,
    /// in which the request's offsets may hold other records.
    #[must_use]
    pub fn still_leads(&self, epoch: Epoch) -> bool {
        self.standalone
            || self
                .replication_lock()
                .as_ref()
                .is_some_and(|r| r.leader_epoch() == epoch)
    }

    /// The first offset still readable.
    pub async fn log_start_offset(&self) -> Offset {
        self.log.read().await.log_start_offset()
    }

    /// Appends a client's batch as leader, applying idempotent-producer rules. Returns
    /// where it went and whether it was a duplicate of an earlier append.
    ///
    /// # Errors
    /// See [`AppendError`].
    pub async fn append(&self, batch: &mut [u8]) -> Result<(AppendInfo, bool), AppendError> {
        let (pid, pepoch, first_seq, last_seq) = {
            // Header fields only; the log's append checks the CRC.
            let (b, _) = RecordBatch::parse_unchecked_crc(batch).map_err(LogError::from)?;
            if b.is_control() {
                return Err(AppendError::ControlBatch);
            }
            if b.is_transactional() {
                return Err(AppendError::Transactional);
            }
            let count = b.last_offset_delta();
            let last = if b.base_sequence() >= 0 {
                b.base_sequence().wrapping_add(count)
            } else {
                -1
            };
            (
                b.producer_id(),
                b.producer_epoch(),
                b.base_sequence(),
                if last < 0 { i32::MAX } else { last },
            )
        };
        let mut log = self.log.write().await;
        // Under the log lock: a broker that the metadata names leader but that has not
        // taken up leadership (just restarted, or not yet reconciled) must not append with
        // a stale epoch in its batches.
        let Some(epoch) = self.leading_epoch() else {
            return Err(AppendError::NotLeader);
        };
        let idempotent = pid >= 0 && first_seq >= 0;
        if idempotent {
            let verdict = self
                .producers_lock()
                .check(pid, pepoch, first_seq, last_seq);
            match verdict {
                Verdict::Append => {}
                Verdict::Duplicate(base) => {
                    let info = AppendInfo {
                        base_offset: base,
                        last_offset: base,
                        max_timestamp_ms: -1,
                    };
                    return Ok((info, true));
                }
                Verdict::OutOfOrder { expected } => {
                    return Err(AppendError::OutOfOrder { expected })
                }
                Verdict::Fenced { current } => return Err(AppendError::Fenced { current }),
            }
        }
        let info = log.append_leader(batch, epoch).await?;
        crate::observe::emit(self.node, || crate::observe::Event::Appended {
            topic: self.topic.clone(),
            partition: self.index,
            batches: crate::observe::batch_ids(batch),
            as_leader: true,
        });
        if idempotent {
            let meta = BatchMeta {
                first_seq,
                last_seq,
                base_offset: info.base_offset,
            };
            self.producers_lock().record(pid, pepoch, meta);
        }
        if matches!(self.fsync, FsyncPolicy::Interval(_)) {
            // Committed once written (on every ISR member, when replicated).
            let end = log.log_end_offset();
            if let Some(hw) = self.leader_end_moved(end) {
                log.set_high_watermark(hw);
                self.advance(hw);
            }
        }
        drop(log);
        self.flush.notify_one();
        self.appended.notify_waiters();
        Ok((info, false))
    }

    fn replication_lock(&self) -> std::sync::MutexGuard<'_, Option<LeaderReplication>> {
        self.replication
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The leader's own log (synced part, under fsync=always) now ends at `end`: the new
    /// high watermark, if it moves.
    #[cfg(feature = "planted-bugs")]
    fn planted(&self, bug: crate::config::PlantedBug) -> bool {
        self.planted == Some(bug)
    }

    #[cfg(feature = "planted-bugs")]
    fn planted_ack(&self) -> bool {
        self.planted(crate::config::PlantedBug::AckOnLeaderSync)
    }

    #[cfg(not(feature = "planted-bugs"))]
    #[allow(clippy::unused_self)]
    fn planted_ack(&self) -> bool {
        false
    }

    #[cfg(feature = "planted-bugs")]
    fn planted_read_above_hw(&self) -> bool {
        self.planted(crate::config::PlantedBug::ReadAboveHighWatermark)
    }

    #[cfg(not(feature = "planted-bugs"))]
    #[allow(clippy::unused_self)]
    fn planted_read_above_hw(&self) -> bool {
        false
    }

    fn leader_end_moved(&self, end: Offset) -> Option<Offset> {
        if self.standalone || self.planted_ack() {
            return Some(end);
        }
        self.replication_lock()
            .as_mut()
            .and_then(|r| r.on_leader_append(end))
    }

    fn following_lock(&self) -> std::sync::MutexGuard<'_, Option<(BrokerId, Epoch)>> {
        self.following
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether this replica follows `leader` in `epoch` (callers hold the log lock, under
    /// which the role changes).
    fn fenced(&self, leader: BrokerId, epoch: Epoch) -> Result<(), FollowError> {
        #[cfg(feature = "planted-bugs")]
        if self.planted(crate::config::PlantedBug::UnfencedFollower) {
            return Ok(());
        }
        if self.replication_lock().is_none() && *self.following_lock() == Some((leader, epoch)) {
            Ok(())
        } else {
            Err(FollowError::Fenced { leader, epoch })
        }
    }

    /// Leads with `epoch` (from the metadata). A new epoch starts a new replication state at
    /// the log end; the same epoch takes the committed ISR and partition epoch.
    #[allow(clippy::too_many_arguments)]
    pub async fn become_leader(
        &self,
        me: BrokerId,
        epoch: Epoch,
        replicas: Vec<BrokerId>,
        isr: BTreeSet<BrokerId>,
        partition_epoch: i32,
        config: ReplicationConfig,
        now: lode_proto::Instant,
    ) {
        // The role changes under the log's write lock: a follower append under way
        // finishes first, and none starts after it (see `follow`).
        let mut log = self.log.write().await;
        *self.following_lock() = None;
        self.set_leader_epoch(epoch);
        let same = self
            .replication_lock()
            .as_ref()
            .is_some_and(|r| r.leader_epoch() == epoch);
        if same {
            let hw = self
                .replication_lock()
                .as_mut()
                .and_then(|r| r.on_isr_committed(isr, partition_epoch));
            if let Some(hw) = hw {
                log.set_high_watermark(hw);
                self.advance(hw);
            }
            return;
        }
        let end = match self.fsync {
            FsyncPolicy::Always => log.durable_offset(),
            FsyncPolicy::Interval(_) => log.log_end_offset(),
        };
        let hw = log.high_watermark();
        // The producer state of the new leader comes from its log: a retry of a batch the
        // old leader wrote is recognised.
        *self.producers_lock() = rebuild_producers(&log).await;
        let rep = LeaderReplication::new(
            me,
            epoch,
            replicas,
            isr,
            partition_epoch,
            end,
            hw,
            config,
            now,
        );
        tracing::info!(topic = %self.topic, partition = self.index, epoch = epoch.0, "leader");
        *self.replication_lock() = Some(rep);
        crate::observe::emit(self.node, || crate::observe::Event::Leader {
            topic: self.topic.clone(),
            partition: self.index,
            epoch,
            start: end,
        });
        // Requests appended in an earlier epoch of this broker fail: wake them.
        self.hw.send_modify(|_| {});
        let hw = self
            .replication_lock()
            .as_mut()
            .and_then(|r| r.on_leader_append(end));
        if let Some(hw) = hw {
            log.set_high_watermark(hw);
            self.advance(hw);
        }
    }

    /// Follows `leader` in `epoch` (from the metadata; no leader: follows none): no
    /// replication state here any more, and only fetches made to that leader in that
    /// epoch change the log from now on.
    pub async fn become_follower(&self, leader: Option<BrokerId>, epoch: Epoch) {
        let _log = self.log.write().await;
        *self.following_lock() = leader.map(|l| (l, epoch));
        if self.replication_lock().take().is_some() {
            tracing::info!(topic = %self.topic, partition = self.index, "follower");
            crate::observe::emit(self.node, || crate::observe::Event::Follower {
                topic: self.topic.clone(),
                partition: self.index,
            });
            // Wakes acks=all requests waiting here: they fail, deposed.
            self.hw.send_modify(|_| {});
        }
    }

    /// As leader: whether acks=all may append (else NOT_ENOUGH_REPLICAS).
    #[must_use]
    pub fn accepts_acks_all(&self) -> bool {
        self.replication_lock()
            .as_ref()
            .is_none_or(LeaderReplication::accepts_acks_all)
    }

    /// As leader: waits (at most `timeout`) until the batch ending at `last`, appended in
    /// `epoch`, is committed, and says how the wait ended. A deposed leader's high
    /// watermark says nothing of the batch, so losing leadership is checked first.
    pub async fn await_ack(
        &self,
        last: Offset,
        epoch: Epoch,
        timeout: Duration,
        clock: &Clock,
    ) -> AckOutcome {
        let committed = clock
            .timeout(timeout, self.wait_committed(last, epoch))
            .await
            .is_ok()
            && self.high_watermark() > last;
        match self.ack_state(last) {
            _ if !self.still_leads(epoch) => AckOutcome::NotLeader,
            _ if !committed => AckOutcome::TimedOut,
            AckState::Committed => AckOutcome::Committed,
            AckState::NotEnoughReplicasAfterAppend => AckOutcome::NotEnoughReplicasAfterAppend,
            AckState::Waiting => AckOutcome::TimedOut,
        }
    }

    /// As leader: where an acks=all batch ending at `last` stands.
    #[must_use]
    pub fn ack_state(&self, last: Offset) -> AckState {
        match self.replication_lock().as_ref() {
            Some(_) if self.planted_ack() && self.high_watermark() > last => AckState::Committed,
            Some(r) => r.ack_state(last),
            None if self.high_watermark() > last => AckState::Committed,
            None => AckState::Waiting,
        }
    }

    /// As leader: a time step (ISR shrink).
    pub fn tick(&self, now: lode_proto::Instant) -> Option<IsrProposal> {
        let proposal = self.replication_lock().as_mut().and_then(|r| r.tick(now));
        if proposal.is_some() {
            crate::observe::probe(self.node, "isr-shrink-proposed");
        }
        proposal
    }

    /// As leader: whether `proposal` still waits for the controller's answer.
    pub fn awaits(&self, proposal: &IsrProposal) -> bool {
        self.replication_lock()
            .as_ref()
            .is_some_and(|r| r.pending() == Some(proposal))
    }

    /// As leader: the controller refused `proposal` and certainly did not apply it; it
    /// is dropped if it still waits.
    pub fn proposal_rejected(&self, proposal: &IsrProposal) {
        if let Some(r) = self.replication_lock().as_mut() {
            if r.pending() == Some(proposal) {
                r.on_proposal_rejected();
            }
        }
    }

    /// As leader in `leader_epoch` (the fetch's): serves a follower's fetch.
    #[allow(clippy::too_many_arguments)]
    pub async fn serve_replica(
        &self,
        leader_epoch: Epoch,
        from: BrokerId,
        broker_epoch: lode_core::metadata::BrokerEpoch,
        fetch_offset: Offset,
        last_fetched_epoch: Epoch,
        max_bytes: usize,
        now: lode_proto::Instant,
    ) -> ServedFetch {
        use crate::control::ReplicaFetchReply as R;
        if !self.still_leads(leader_epoch) {
            return (R::Error(crate::codes::NOT_LEADER_OR_FOLLOWER), None);
        }
        let (records, end) = {
            let log = self.log.read().await;
            let end = log.log_end_offset();
            if let Some((epoch, end_offset)) = lode_core::replication::diverging(
                log.epochs(),
                end,
                fetch_offset,
                last_fetched_epoch,
            ) {
                crate::observe::probe(self.node, "replica-fetch-diverging");
                return (R::Diverging { epoch, end_offset }, None);
            }
            if fetch_offset > end {
                crate::observe::probe(self.node, "replica-fetch-diverging");
                let epoch = log.epochs().latest().map_or(Epoch::NONE, |e| e.epoch);
                return (
                    R::Diverging {
                        epoch,
                        end_offset: end,
                    },
                    None,
                );
            }
            match log.read(fetch_offset, max_bytes, end).await {
                Ok(r) => (r, end),
                Err(LogError::OffsetOutOfRange { .. }) => {
                    return (R::Error(crate::codes::OFFSET_OUT_OF_RANGE), None)
                }
                Err(_) => return (R::Error(crate::codes::KAFKA_STORAGE_ERROR), None),
            }
        };
        // The high watermark is decided and moved under the log's write lock, as every
        // role and ISR change is made: a decision taken over an ISR that a committed
        // shrink has since replaced must not be applied after it (strict min ISR).
        let mut log = self.log.write().await;
        let outcome = match self.replication_lock().as_mut() {
            Some(r) if r.leader_epoch() == leader_epoch => {
                r.on_follower_fetch(from, broker_epoch, fetch_offset, end, now)
            }
            _ => return (R::Error(crate::codes::NOT_LEADER_OR_FOLLOWER), None),
        };
        if outcome.stale {
            crate::observe::probe(self.node, "replica-fetch-stale-broker-epoch");
            return (R::Error(crate::codes::STALE_BROKER_EPOCH), None);
        }
        let (hw, proposal) = (outcome.high_watermark, outcome.proposal);
        #[cfg(feature = "planted-bugs")]
        if self.planted(crate::config::PlantedBug::HighWatermarkAppliedLate) {
            // The decision is applied after the lock was let go and taken again, when a
            // committed ISR shrink may have come in between.
            drop(log);
            log = self.log.write().await;
        }
        if let Some(hw) = hw {
            log.set_high_watermark(hw);
            self.advance(hw);
        }
        drop(log);
        if let Some(p) = &proposal {
            crate::observe::probe(self.node, "isr-expand-proposed");
            crate::observe::emit(self.node, || crate::observe::Event::IsrProposed {
                topic: self.topic.clone(),
                partition: self.index,
                isr: p.isr.iter().copied().collect(),
                added: p.added.map(|(b, _)| b),
            });
        }
        (
            R::Records {
                high_watermark: self.high_watermark(),
                records,
            },
            proposal,
        )
    }

    /// As leader: waits (at most `max_wait`) until the log grows past `offset`.
    pub async fn wait_for_records(&self, offset: Offset, max_wait: Duration, clock: &Clock) {
        let notified = self.appended.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.log.read().await.log_end_offset() > offset {
            return;
        }
        let _ = clock.timeout(max_wait, notified).await;
    }

    /// As follower: where to fetch from, and the epoch of the last batch.
    pub async fn replica_position(&self) -> (Offset, Epoch) {
        let log = self.log.read().await;
        let epoch = log.epochs().latest().map_or(Epoch::NONE, |e| e.epoch);
        (log.log_end_offset(), epoch)
    }

    /// As follower of `leader` in `epoch` (the fetch's): appends what the leader sent,
    /// synced before the next fetch acknowledges it, then takes the leader's high watermark
    /// (capped at this log's end).
    ///
    /// # Errors
    /// [`FollowError::Fenced`] when this replica no longer follows `leader` in `epoch`
    /// (nothing changes); the log's append and sync errors.
    pub async fn follow(
        &self,
        leader: BrokerId,
        epoch: Epoch,
        records: &[u8],
        leader_hw: Offset,
    ) -> Result<(), FollowError> {
        let mut log = self.log.write().await;
        self.fenced(leader, epoch)?;
        if !records.is_empty() {
            log.append_replica(records).await?;
            crate::observe::emit(self.node, || crate::observe::Event::Appended {
                topic: self.topic.clone(),
                partition: self.index,
                batches: crate::observe::batch_ids(records),
                as_leader: false,
            });
            // Under fsync=always the next fetch acknowledges these: they must be durable.
            if self.fsync == FsyncPolicy::Always {
                log.sync().await?;
            }
        }
        let hw = leader_hw.min(log.log_end_offset());
        if hw > log.high_watermark() {
            log.set_high_watermark(hw);
            self.advance(hw);
        }
        Ok(())
    }

    /// As follower of `leader` in `leader_epoch`: truncates a diverging tail, to the
    /// smaller of the leader's end of `epoch` and this log's own (never to a high
    /// watermark: KIP-101).
    ///
    /// # Errors
    /// [`FollowError::Fenced`] as for [`Partition::follow`]; the log's truncation errors.
    pub async fn truncate_diverging(
        &self,
        leader: BrokerId,
        leader_epoch: Epoch,
        epoch: Epoch,
        end_offset: Offset,
    ) -> Result<(), FollowError> {
        let mut log = self.log.write().await;
        self.fenced(leader, leader_epoch)?;
        let end = log.log_end_offset();
        let own = if epoch == Epoch::NONE {
            Offset(0)
        } else {
            log.epochs()
                .end_offset_for(epoch, end)
                .map_or(Offset(0), |(_, o)| o)
        };
        let to = end_offset.min(own).min(end).max(log.log_start_offset());
        if to < end {
            crate::observe::probe(self.node, "follower-truncated");
            tracing::info!(topic = %self.topic, partition = self.index, from = end.0, to = to.0, "diverging tail truncated");
            log.truncate_to(to).await?;
            crate::observe::emit(self.node, || crate::observe::Event::Truncated {
                topic: self.topic.clone(),
                partition: self.index,
                to,
                reason: "diverging from the leader",
            });
        }
        Ok(())
    }

    fn producers_lock(&self) -> std::sync::MutexGuard<'_, ProducerStates> {
        self.producers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn advance(&self, hw: Offset) {
        let moved = self.hw.send_if_modified(|cur| {
            if hw > *cur {
                *cur = hw;
                true
            } else {
                false
            }
        });
        if moved {
            self.data_arrived.send_modify(|n| *n = n.wrapping_add(1));
            crate::observe::emit(self.node, || crate::observe::Event::HighWatermark {
                topic: self.topic.clone(),
                partition: self.index,
                high_watermark: hw,
                leader_isr: self
                    .replication_lock()
                    .as_ref()
                    .map(|r| r.maximal_isr().into_iter().collect()),
            });
        }
    }

    /// Reads whole batches from `offset`, below the high watermark.
    ///
    /// # Errors
    /// [`LogError::OffsetOutOfRange`] and IO errors.
    pub async fn read(&self, offset: Offset, max_bytes: usize) -> Result<Vec<u8>, LogError> {
        let log = self.log.read().await;
        let limit = if self.planted_read_above_hw() {
            log.log_end_offset()
        } else {
            self.high_watermark()
        };
        let data = log.read(offset, max_bytes, limit).await?;
        crate::observe::emit(self.node, || crate::observe::Event::Served {
            topic: self.topic.clone(),
            partition: self.index,
            batches: crate::observe::batch_ids(&data),
            high_watermark: self.high_watermark(),
        });
        Ok(data)
    }

    /// Reads whole batches from `offset` up to this replica's log end, committed or not:
    /// what a new group coordinator replays (a leader never truncates its own log, so
    /// nothing read here is taken back while it leads). Also returns the log end.
    ///
    /// # Errors
    /// [`LogError::OffsetOutOfRange`] and IO errors.
    pub async fn read_local(
        &self,
        offset: Offset,
        max_bytes: usize,
    ) -> Result<(Vec<u8>, Offset), LogError> {
        let log = self.log.read().await;
        let end = log.log_end_offset();
        Ok((log.read(offset, max_bytes, end).await?, end))
    }

    /// The first offset whose timestamp is at least `ts`, with that timestamp, below the
    /// high watermark.
    ///
    /// # Errors
    /// IO errors.
    pub async fn offset_for_timestamp(&self, ts: i64) -> Result<Option<(Offset, i64)>, LogError> {
        let hw = self.high_watermark();
        let found = self.log.read().await.offset_for_timestamp(ts).await?;
        Ok(found.filter(|(o, _)| *o < hw))
    }

    /// The group-commit loop: sync whatever was appended since the last sync, then move the
    /// high watermark to what is durable.
    async fn sync_loop(self: Arc<Self>, clock: Clock) {
        loop {
            match self.fsync {
                FsyncPolicy::Always => self.flush.notified().await,
                FsyncPolicy::Interval(d) => clock.sleep(d).await,
            }
            if self.closed.load(Ordering::Acquire) {
                return;
            }
            let job = self.log.write().await.sync_begin();
            let result = job.run().await;
            let mut log = self.log.write().await;
            match log.sync_finish(job, result) {
                Ok(durable) => {
                    if self.fsync == FsyncPolicy::Always {
                        if let Some(hw) = self.leader_end_moved(durable) {
                            log.set_high_watermark(hw);
                            self.advance(hw);
                        }
                    }
                }
                // Closed while the sync ran: nothing failed.
                Err(LogError::Closed) => return,
                Err(e) => {
                    tracing::error!(topic = %self.topic, partition = self.index, error = %e, "sync failed; partition offline until restart");
                    return;
                }
            }
        }
    }

    /// Syncs and closes the log cleanly (writes its clean-shutdown marker).
    pub async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.flush.notify_one();
        let mut log = self.log.write().await;
        if let Err(e) = log.shutdown().await {
            tracing::warn!(topic = %self.topic, partition = self.index, error = %e, "unclean close");
        }
        self.hw.send_modify(|_| {});
    }

    /// Closes the partition for deletion: its log is closed under the log's lock, without
    /// writing anything (the data is going). Once this returns no file in [`Partition::dir`]
    /// is created or written again (the sync task stops; calls in flight finished under the
    /// lock, later ones fail with [`LogError::Closed`]), so the directory can be renamed
    /// away: `dir` names files by path, and the path is the next topic's of the same name.
    pub async fn close_for_delete(&self) {
        self.closed.store(true, Ordering::Release);
        self.flush.notify_one();
        self.log.write().await.abandon();
        self.hw.send_modify(|_| {});
    }
}

/// Rebuilds idempotent-producer state from the tail of the log, so that a retry of a batch
/// written before a restart is recognised as a duplicate.
async fn rebuild_producers(log: &Log) -> ProducerStates {
    const TAIL_BYTES: u64 = 8 << 20;
    let mut states = ProducerStates::default();
    let end = log.log_end_offset();
    // The last few MiB, across segments: enough for the last five batches of active
    // producers. Only the last segment, as before, missed a retried batch written just
    // before a roll (small segments in the swarm: seed 1800 appended an idempotent
    // producer's retry a second time after a failover).
    let mut at = log.tail_start(TAIL_BYTES);
    while at < end {
        let Ok(chunk) = log.read(at, 1 << 20, end).await else {
            break;
        };
        if chunk.is_empty() {
            break;
        }
        let mut rest = &chunk[..];
        while let Ok((b, tail)) = RecordBatch::parse_unchecked_crc(rest) {
            if b.producer_id() >= 0 && b.base_sequence() >= 0 {
                let last_seq = b.base_sequence().wrapping_add(b.last_offset_delta());
                let meta = BatchMeta {
                    first_seq: b.base_sequence(),
                    last_seq,
                    base_offset: b.base_offset(),
                };
                states.record(b.producer_id(), b.producer_epoch(), meta);
            }
            at = b.last_offset().next();
            rest = tail;
            if rest.is_empty() {
                break;
            }
        }
    }
    states
}

/// Every batch of `log`, for an observer (`None` if a read fails).
async fn recovered_batches(log: &Log) -> Option<Vec<crate::observe::BatchId>> {
    let (mut at, end) = (log.log_start_offset(), log.log_end_offset());
    let mut out = Vec::new();
    while at < end {
        let bytes = log.read(at, 1 << 20, end).await.ok()?;
        let ids = crate::observe::batch_ids(&bytes);
        at = ids.last()?.last.next();
        out.extend(ids);
    }
    Some(out)
}
