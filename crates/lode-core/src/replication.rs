//! ISR replication decisions of a partition leader (the core of Kafka's `Partition`), and
//! the divergence answer a leader gives a fetching follower.
//!
//! - The high watermark follows the strict min-ISR rule (Kafka 4.0, KIP-966): it does not
//!   advance while the ISR is smaller than the effective min ISR
//!   (`min(min.insync.replicas, replica count)`); otherwise it is the smallest log end
//!   offset over the *maximal* ISR (the committed ISR plus additions proposed and not yet
//!   answered), so a pending change is never less strict than the committed state.
//! - A follower is caught up when it fetches at the leader's log end (or at the log end the
//!   leader had at its previous fetch: Kafka's `lastCaughtUpTime` rule). An ISR member not
//!   caught up for `replica_lag_time_max` is proposed out; a replica whose log end reaches
//!   the high watermark and the start of the leader's epoch (KAFKA-7128) is proposed in.
//!   The leader never changes the ISR itself: it proposes (AlterPartition) and applies
//!   what the controller commits. One proposal is outstanding at a time.
//! - acks=all: refused before the append while the ISR is below the effective min ISR;
//!   otherwise complete once the high watermark passes the batch, as
//!   NOT_ENOUGH_REPLICAS_AFTER_APPEND if by then the maximal ISR is below it.
//!
//! Invariants: the high watermark never decreases and never passes the leader's log end
//! (asserted); it never passes the log end of a member of the maximal ISR that kept its
//! data (tested against a model). An ISR member that comes back below the high watermark
//! lost committed data and is proposed out at the next tick.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use lode_proto::types::BrokerEpoch;
use lode_proto::{BrokerId, Epoch, Instant, Offset};

use crate::epoch_cache::LeaderEpochCache;

/// Settings of one partition's replication.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicationConfig {
    /// `replica.lag.time.max.ms`.
    pub replica_lag_time_max: Duration,
    /// `min.insync.replicas`.
    pub min_insync_replicas: usize,
    /// A deliberately broken rule (tests and the simulator only).
    #[cfg(feature = "planted-bugs")]
    pub planted: Option<ReplicationBug>,
}

impl ReplicationConfig {
    /// The settings, with no planted bug.
    #[must_use]
    pub fn new(replica_lag_time_max: Duration, min_insync_replicas: usize) -> ReplicationConfig {
        ReplicationConfig {
            replica_lag_time_max,
            min_insync_replicas,
            #[cfg(feature = "planted-bugs")]
            planted: None,
        }
    }

    #[cfg(feature = "planted-bugs")]
    fn planted(&self, bug: ReplicationBug) -> bool {
        self.planted == Some(bug)
    }

    #[cfg(not(feature = "planted-bugs"))]
    #[allow(clippy::unused_self)]
    fn planted(&self, _bug: ReplicationBug) -> bool {
        false
    }
}

/// Deliberately broken leader rules, for proving the simulator's invariants catch them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicationBug {
    /// The high watermark advances while the ISR is below the min ISR.
    HwBelowMinIsr,
    /// A follower joins the ISR on reaching the high watermark, without reaching the start
    /// of the leader's epoch (KAFKA-7128).
    IsrWithoutEpochStart,
}

/// What the leader knows of one follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FollowerProgress {
    /// Its log end offset, from its last fetch.
    pub log_end: Offset,
    /// When it was last caught up.
    pub last_caught_up: Instant,
    /// The leader's log end at the follower's previous fetch.
    last_fetch_leader_end: Offset,
    /// When it last fetched.
    last_fetch: Option<Instant>,
    /// The broker epoch (registration) its fetches came from, once one came: a fetch from
    /// an older registration (an earlier process's, delivered late) is ignored.
    pub broker_epoch: Option<BrokerEpoch>,
}

/// What [`LeaderReplication::on_follower_fetch`] made of a fetch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FetchOutcome {
    /// The new high watermark, if it moved.
    pub high_watermark: Option<Offset>,
    /// An ISR expansion to propose, if the follower qualifies.
    pub proposal: Option<IsrProposal>,
    /// The fetch came from an earlier registration of the follower than one already seen
    /// (a process that has since restarted): it counted for nothing.
    pub stale: bool,
}

/// An ISR change the leader asks the controller for (AlterPartition).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IsrProposal {
    /// The proposed ISR.
    pub isr: BTreeSet<BrokerId>,
    /// The partition epoch it is based on.
    pub partition_epoch: i32,
    /// The member it adds, if any, with the broker epoch of the fetch that showed it caught
    /// up (KIP-903): the controller refuses the change if that registration is no longer
    /// current, so a late fetch from a process that has since lost its log cannot bring
    /// the new one into the ISR.
    pub added: Option<(BrokerId, BrokerEpoch)>,
}

/// Where an acks=all batch stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckState {
    /// The high watermark passed it: success.
    Committed,
    /// The high watermark passed it but the maximal ISR is below the min ISR: the record is
    /// in the log and may survive; the client must treat it as indeterminate.
    NotEnoughReplicasAfterAppend,
    /// Not yet.
    Waiting,
}

/// The replication state of a partition on its leader.
#[derive(Clone, Debug)]
pub struct LeaderReplication {
    me: BrokerId,
    leader_epoch: Epoch,
    /// Offset of the first record of this leader epoch.
    epoch_start: Offset,
    replicas: Vec<BrokerId>,
    isr: BTreeSet<BrokerId>,
    partition_epoch: i32,
    pending: Option<IsrProposal>,
    followers: BTreeMap<BrokerId, FollowerProgress>,
    log_end: Offset,
    high_watermark: Offset,
    config: ReplicationConfig,
}

impl LeaderReplication {
    /// Leadership of `leader_epoch` starting at `log_end` (which is also the epoch's start
    /// offset), with the ISR and partition epoch from the metadata and the high watermark
    /// the log had. Every follower starts caught up as of `now`.
    ///
    /// # Panics
    /// If this broker is not in the ISR it leads with (a controller bug).
    #[must_use]
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        me: BrokerId,
        leader_epoch: Epoch,
        replicas: Vec<BrokerId>,
        isr: BTreeSet<BrokerId>,
        partition_epoch: i32,
        log_end: Offset,
        high_watermark: Offset,
        config: ReplicationConfig,
        now: Instant,
    ) -> LeaderReplication {
        assert!(isr.contains(&me), "a leader is in its ISR");
        let followers = replicas
            .iter()
            .filter(|r| **r != me)
            .map(|r| {
                (
                    *r,
                    FollowerProgress {
                        log_end: Offset(0),
                        last_caught_up: now,
                        last_fetch_leader_end: Offset(0),
                        last_fetch: None,
                        broker_epoch: None,
                    },
                )
            })
            .collect();
        let l = LeaderReplication {
            me,
            leader_epoch,
            epoch_start: log_end,
            replicas,
            isr,
            partition_epoch,
            pending: None,
            followers,
            log_end,
            high_watermark: high_watermark.min(log_end),
            config,
        };
        l.check();
        l
    }

    /// The leader epoch.
    #[must_use]
    pub fn leader_epoch(&self) -> Epoch {
        self.leader_epoch
    }

    /// The committed ISR.
    #[must_use]
    pub fn isr(&self) -> &BTreeSet<BrokerId> {
        &self.isr
    }

    /// The proposal waiting for the controller, if any.
    #[must_use]
    pub fn pending(&self) -> Option<&IsrProposal> {
        self.pending.as_ref()
    }

    /// The high watermark.
    #[must_use]
    pub fn high_watermark(&self) -> Offset {
        self.high_watermark
    }

    /// What the leader knows of `follower`.
    #[must_use]
    pub fn follower(&self, follower: BrokerId) -> Option<&FollowerProgress> {
        self.followers.get(&follower)
    }

    /// The committed ISR plus proposed additions.
    #[must_use]
    pub fn maximal_isr(&self) -> BTreeSet<BrokerId> {
        let mut m = self.isr.clone();
        if let Some(p) = &self.pending {
            m.extend(p.isr.iter().copied());
        }
        m
    }

    fn effective_min_isr(&self) -> usize {
        self.config
            .min_insync_replicas
            .min(self.replicas.len())
            .max(1)
    }

    /// Whether an acks=all produce may be appended (else NOT_ENOUGH_REPLICAS).
    #[must_use]
    pub fn accepts_acks_all(&self) -> bool {
        self.isr.len() >= self.effective_min_isr()
    }

    /// Where an acks=all batch ending at `last_offset` stands.
    #[must_use]
    pub fn ack_state(&self, last_offset: Offset) -> AckState {
        if self.high_watermark <= last_offset {
            AckState::Waiting
        } else if self.maximal_isr().len() < self.effective_min_isr() {
            AckState::NotEnoughReplicasAfterAppend
        } else {
            AckState::Committed
        }
    }

    fn log_end_of(&self, id: BrokerId) -> Offset {
        if id == self.me {
            self.log_end
        } else {
            self.followers.get(&id).map_or(Offset(0), |f| f.log_end)
        }
    }

    /// Recomputes the high watermark; returns it if it moved.
    fn advance(&mut self) -> Option<Offset> {
        let maximal = self.maximal_isr();
        if self.isr.len() < self.effective_min_isr()
            && !self.config.planted(ReplicationBug::HwBelowMinIsr)
        {
            return None;
        }
        let candidate = maximal
            .iter()
            .map(|id| self.log_end_of(*id))
            .min()
            .unwrap_or(self.log_end);
        if candidate > self.high_watermark {
            self.high_watermark = candidate;
            self.check();
            Some(candidate)
        } else {
            None
        }
    }

    fn check(&self) {
        assert!(
            self.high_watermark <= self.log_end,
            "the high watermark passed the leader's log end"
        );
        assert!(self.isr.contains(&self.me), "the leader left its own ISR");
    }

    /// The leader's log (durable part, under fsync=always) now ends at `log_end`.
    pub fn on_leader_append(&mut self, log_end: Offset) -> Option<Offset> {
        assert!(log_end >= self.log_end, "the leader's log does not shrink");
        self.log_end = log_end;
        self.advance()
    }

    /// A follower, registered with `broker_epoch`, fetched at `fetch_offset` (its log end)
    /// while the leader's log ends at `leader_log_end` (written, not necessarily synced: a
    /// follower may have synced records the leader has not yet, and they count for it).
    pub fn on_follower_fetch(
        &mut self,
        follower: BrokerId,
        broker_epoch: BrokerEpoch,
        fetch_offset: Offset,
        leader_log_end: Offset,
        now: Instant,
    ) -> FetchOutcome {
        let leader_end = leader_log_end.max(self.log_end);
        let Some(f) = self.followers.get_mut(&follower) else {
            return FetchOutcome::default();
        };
        if f.broker_epoch.is_some_and(|seen| broker_epoch < seen) {
            return FetchOutcome {
                stale: true,
                ..FetchOutcome::default()
            };
        }
        f.broker_epoch = Some(broker_epoch);
        // A fetch beyond the leader's end is a follower with a diverging tail; it is told to
        // truncate and counts for nothing here.
        let offset = fetch_offset.min(leader_end);
        if fetch_offset >= leader_end {
            f.last_caught_up = now;
        } else if offset >= f.last_fetch_leader_end {
            if let Some(t) = f.last_fetch {
                f.last_caught_up = f.last_caught_up.max(t);
            }
        }
        f.last_fetch_leader_end = leader_end;
        f.last_fetch = Some(now);
        f.log_end = offset;
        if offset < self.high_watermark && self.isr.contains(&follower) {
            // An ISR member below the high watermark lost committed records (an unclean
            // restart): it is no longer in sync, whatever its timing says.
            tracing::warn!(
                follower = follower.0,
                offset = offset.0,
                hw = self.high_watermark.0,
                "ISR member behind the high watermark"
            );
            if let Some(f) = self.followers.get_mut(&follower) {
                f.last_caught_up = Instant(0);
            }
        }
        let hw = self.advance();
        let expand = !self.isr.contains(&follower)
            && self.pending.is_none()
            && offset >= self.high_watermark
            && (offset >= self.epoch_start
                || self.config.planted(ReplicationBug::IsrWithoutEpochStart));
        let proposal = expand.then(|| {
            let mut isr = self.isr.clone();
            isr.insert(follower);
            let p = IsrProposal {
                isr,
                partition_epoch: self.partition_epoch,
                added: Some((follower, broker_epoch)),
            };
            self.pending = Some(p.clone());
            p
        });
        // A pending addition joins the maximal ISR: the high watermark may not move past
        // it (it is at or above the HW, so nothing moves back).
        FetchOutcome {
            high_watermark: hw,
            proposal,
            stale: false,
        }
    }

    /// Time passes: ISR members that lag too long are proposed out.
    pub fn tick(&mut self, now: Instant) -> Option<IsrProposal> {
        if self.pending.is_some() {
            return None;
        }
        let laggards: Vec<BrokerId> = self
            .isr
            .iter()
            .filter(|id| **id != self.me)
            .filter(|id| {
                self.followers.get(id).is_some_and(|f| {
                    now.saturating_since(f.last_caught_up) > self.config.replica_lag_time_max
                })
            })
            .copied()
            .collect();
        if laggards.is_empty() {
            return None;
        }
        let isr: BTreeSet<BrokerId> = self
            .isr
            .iter()
            .filter(|id| !laggards.contains(id))
            .copied()
            .collect();
        let p = IsrProposal {
            isr,
            partition_epoch: self.partition_epoch,
            added: None,
        };
        self.pending = Some(p.clone());
        Some(p)
    }

    /// The controller committed an ISR (this leader's proposal or its own decision, e.g.
    /// fencing a broker) at `partition_epoch`. Returns the high watermark if it moved.
    ///
    /// # Panics
    /// If the committed ISR lacks this leader (the controller would have moved leadership).
    pub fn on_isr_committed(
        &mut self,
        isr: BTreeSet<BrokerId>,
        partition_epoch: i32,
    ) -> Option<Offset> {
        if partition_epoch <= self.partition_epoch {
            return None;
        }
        self.isr = isr;
        self.partition_epoch = partition_epoch;
        self.pending = None;
        self.check();
        self.advance()
    }

    /// The controller refused the proposal (a stale epoch, an ineligible replica): it is
    /// dropped; the next tick or fetch proposes again from the current state.
    pub fn on_proposal_rejected(&mut self) {
        self.pending = None;
    }
}

/// The leader's answer to a follower fetching at `fetch_offset` whose last record has
/// `last_fetched_epoch`: `Some((epoch, end_offset))` if the follower's log diverges (it must
/// truncate to at most `end_offset`, and to its own end of `epoch` if that is smaller;
/// never to its high watermark), `None` if it matches.
#[must_use]
pub fn diverging(
    cache: &LeaderEpochCache,
    log_end: Offset,
    fetch_offset: Offset,
    last_fetched_epoch: Epoch,
) -> Option<(Epoch, Offset)> {
    if last_fetched_epoch == Epoch::NONE {
        return None;
    }
    match cache.end_offset_for(last_fetched_epoch, log_end) {
        Some((epoch, end)) if epoch == last_fetched_epoch && end >= fetch_offset => None,
        Some((epoch, end)) => Some((epoch, end.min(fetch_offset))),
        // Every epoch the leader has is newer: the follower keeps nothing.
        None => Some((Epoch::NONE, Offset(0))),
    }
}

#[cfg(test)]
mod tests;
