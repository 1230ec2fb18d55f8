//! Raft for the metadata log, in the style of KRaft (KIP-595): followers and observers
//! *pull* entries from the leader with Fetch, carrying their end offset and last fetched
//! epoch; the leader answers divergence with the diverging epoch and its end offset; the
//! high watermark (commit point) is the largest offset a majority of voters has fetched
//! past, and moves only once an entry of the leader's own epoch is on that majority.
//!
//! Sans-IO: every input ([`RaftNode::tick`], [`RaftNode::receive`], [`RaftNode::propose`],
//! [`RaftNode::compact`]) takes `now` and returns [`Action`]s. **The driver executes a
//! step's actions in order, and a [`Action::Persist`] must be durable (synced) before any
//! later action runs**: that is how a vote or an acknowledgement (a fetch at a higher
//! offset) is never sent before the state it depends on is on disk.
//!
//! Elections use pre-vote (a node that still hears from a leader refuses a pre-vote, so a
//! partitioned node cannot disrupt the quorum when it returns) and check-quorum (a leader
//! that has not been fetched from by a majority within the fetch timeout resigns).
//! Observers (non-voters) replicate the log the same way and never vote.
//!
//! Election timeouts are randomised from a seed given at construction (deterministic per
//! seed, so the simulator replays it).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use lode_proto::{BrokerId, Epoch, Instant, Offset};
use serde::{Deserialize, Serialize};

/// One entry of the replicated log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Its offset (0, 1, 2, ...).
    pub offset: Offset,
    /// The epoch (term) of the leader that appended it.
    pub epoch: Epoch,
    /// What it carries: empty for the marker a new leader appends at the start of its epoch.
    #[serde(with = "lode_proto::byte_vec")]
    pub data: Vec<u8>,
}

/// A snapshot of the applied state: every entry below `end_offset` is folded into `data`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The first offset not in the snapshot.
    pub end_offset: Offset,
    /// The epoch of the last entry in the snapshot.
    pub last_epoch: Epoch,
    /// The state machine's serialized state.
    #[serde(with = "lode_proto::byte_vec")]
    pub data: Vec<u8>,
}

/// Messages between nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// A (pre-)vote request for `epoch`.
    Vote {
        /// A pre-vote changes no state anywhere.
        pre: bool,
        /// The epoch the candidate campaigns for.
        epoch: Epoch,
        /// The candidate's last entry's epoch and its end offset.
        last_epoch: Epoch,
        /// The candidate's log end offset.
        end_offset: Offset,
    },
    /// The answer to a vote request.
    VoteResponse {
        /// Whether it answers a pre-vote.
        pre: bool,
        /// The epoch voted on (or the voter's own, if higher).
        epoch: Epoch,
        /// Granted or not.
        granted: bool,
    },
    /// A new leader announces itself to the voters.
    BeginEpoch {
        /// Its epoch.
        epoch: Epoch,
    },
    /// A follower or observer asks for entries from `fetch_offset` (its log end offset,
    /// durable: this is also its acknowledgement).
    Fetch {
        /// The epoch the fetcher believes current.
        epoch: Epoch,
        /// Its log end offset.
        fetch_offset: Offset,
        /// The epoch of its last entry.
        last_fetched_epoch: Epoch,
    },
    /// The leader's answer.
    FetchResponse {
        /// The responder's epoch.
        epoch: Epoch,
        /// Who it believes leads that epoch.
        leader: Option<BrokerId>,
        /// The leader's high watermark.
        high_watermark: Offset,
        /// The fetch this answers (its offset and last epoch): a response that arrives
        /// after the fetcher's log changed, late or duplicated, is ignored.
        fetched: (Offset, Epoch),
        /// What it carries.
        body: FetchBody,
    },
}

/// The body of a fetch response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FetchBody {
    /// Entries from the fetch offset on (maybe none).
    Entries(Vec<Entry>),
    /// The fetcher's log diverges: truncate to at most `end_offset`, the end of `epoch` in
    /// the leader's log, and fetch again.
    Diverging {
        /// The largest epoch of the leader's log not above the fetcher's last epoch.
        epoch: Epoch,
        /// Where that epoch ends in the leader's log.
        end_offset: Offset,
    },
    /// The fetch offset is below the leader's log start: install this snapshot.
    Snapshot(Snapshot),
    /// The responder is not the leader (of that epoch); see `leader`.
    NotLeader,
}

/// Durable state changes; see the module documentation for the ordering contract.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Persist {
    /// New epoch and vote.
    pub vote: Option<(Epoch, Option<BrokerId>)>,
    /// A snapshot that replaces every entry below its end offset.
    pub snapshot: Option<Snapshot>,
    /// Remove every entry at or above this offset (before appending).
    pub truncate_from: Option<Offset>,
    /// Entries to append.
    pub append: Vec<Entry>,
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Make this durable before doing anything that follows.
    Persist(Persist),
    /// Send a message.
    Send {
        /// The destination.
        to: BrokerId,
        /// The message.
        msg: Message,
    },
    /// Replace the state machine with this snapshot (before any following `Apply`).
    InstallSnapshot(Snapshot),
    /// Apply these committed entries, in order; each is given once per process.
    Apply(Vec<Entry>),
}

/// What a node is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Follows `leader` (or looks for one).
    Follower,
    /// Asking for pre-votes.
    Prospective,
    /// Asking for votes in its own epoch.
    Candidate,
    /// Leads its epoch.
    Leader,
    /// A non-voter that replicates.
    Observer,
}

/// Deliberately broken rules, to prove the checkers catch them.
#[cfg(feature = "planted-bugs")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RaftBug {
    /// Grant a vote to a second candidate in an epoch already voted in.
    GrantTwoVotes,
    /// Advance the high watermark over entries of earlier epochs by counting replicas.
    CommitEarlierEpoch,
    /// Record a follower's progress from its fetch but move the high watermark only when
    /// the leader appends (a liveness bug: an idle leader never commits).
    HighWatermarkOnlyOnAppend,
}

/// Settings.
#[derive(Clone, Debug)]
pub struct RaftConfig {
    /// The voters.
    pub voters: BTreeSet<BrokerId>,
    /// A follower that has not heard from its leader for this long (plus up to as much
    /// again, at random) starts an election; a leader not fetched from by a majority for
    /// this long resigns.
    pub fetch_timeout: Duration,
    /// How often a follower fetches when it has nothing new (and, with `fetch_wait`, after
    /// a `NotLeader` answer).
    pub fetch_interval: Duration,
    /// The leader holds a fetch that finds nothing new for up to this long, answering it as
    /// soon as an entry is appended or the high watermark moves (KRaft's long poll): the
    /// fetcher learns of a commit within one message instead of its next poll. Zero: the
    /// leader answers every fetch at once and idle fetchers poll every `fetch_interval`.
    pub fetch_wait: Duration,
    /// Entries per fetch response, at most.
    pub fetch_entries_max: usize,
    /// A planted bug, off unless set by a test.
    #[cfg(feature = "planted-bugs")]
    pub planted: Option<RaftBug>,
}

impl RaftConfig {
    /// Defaults for `voters`: fetch timeout 2 s, fetch interval 100 ms, fetch wait 500 ms,
    /// 512 entries a fetch.
    #[must_use]
    pub fn new(voters: BTreeSet<BrokerId>) -> RaftConfig {
        RaftConfig {
            voters,
            fetch_timeout: Duration::from_secs(2),
            fetch_interval: Duration::from_millis(100),
            fetch_wait: Duration::from_millis(500),
            fetch_entries_max: 512,
            #[cfg(feature = "planted-bugs")]
            planted: None,
        }
    }

    /// The long-poll time actually used: at most half the fetch timeout, so a held fetch
    /// is answered well before its sender would start an election.
    fn fetch_wait(&self) -> Duration {
        self.fetch_wait.min(self.fetch_timeout / 2)
    }

    fn majority(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    #[cfg(feature = "planted-bugs")]
    fn planted(&self, bug: RaftBug) -> bool {
        self.planted == Some(bug)
    }
}

/// What a node had on disk when it restarts. The driver restores its state machine from
/// the snapshot itself; entries after it are applied again as they are (re)committed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Durable {
    /// Current epoch.
    pub epoch: Epoch,
    /// Vote in that epoch.
    pub voted_for: Option<BrokerId>,
    /// The latest snapshot.
    pub snapshot: Option<Snapshot>,
    /// Entries after the snapshot, in order.
    pub entries: Vec<Entry>,
}

/// Why a proposal was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// Only the leader appends.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader, if known.
        leader: Option<BrokerId>,
    },
}

/// A tiny deterministic generator (xorshift64*) for election jitter; seeded by the driver.
#[derive(Clone, Debug)]
struct Jitter(u64);

impl Jitter {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, d: Duration) -> Duration {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1);
        Duration::from_nanos(self.next() % nanos)
    }
}

/// What the leader knows of a replica.
#[derive(Clone, Copy, Debug)]
struct Progress {
    /// Its durable end offset, as its last fetch said.
    end_offset: Offset,
    last_fetch: Instant,
}

/// A fetch the leader holds (long poll) until there is something to answer.
#[derive(Clone, Copy, Debug)]
struct Parked {
    fetch_offset: Offset,
    last_fetched_epoch: Epoch,
    /// Answered (empty) at this time at the latest.
    until: Instant,
}

/// One Raft node: a voter or an observer.
#[derive(Debug)]
pub struct RaftNode {
    id: BrokerId,
    config: RaftConfig,
    role: Role,
    epoch: Epoch,
    voted_for: Option<BrokerId>,
    leader: Option<BrokerId>,
    snapshot: Option<Snapshot>,
    /// Entries from `log_start()` on.
    entries: Vec<Entry>,
    high_watermark: Offset,
    /// Everything below this was handed to the driver with `Apply`/`InstallSnapshot`.
    applied: Offset,
    jitter: Jitter,
    /// When the current election timeout fires (followers, prospectives, candidates).
    election_deadline: Instant,
    /// When a follower or observer fetches next; `None` while a fetch is outstanding.
    next_fetch: Option<Instant>,
    /// When an outstanding fetch is given up.
    fetch_deadline: Instant,
    /// Votes received in the current (pre-)election.
    votes: BTreeSet<BrokerId>,
    /// Leader: replicas' progress.
    progress: BTreeMap<BrokerId, Progress>,
    /// Leader: fetches held until there is news (at most one per fetcher).
    parked: BTreeMap<BrokerId, Parked>,
    /// Leader: the high watermark last sent to each fetcher; a fetch is held only when
    /// its sender already knows the current one.
    sent_high_watermark: BTreeMap<BrokerId, Offset>,
    /// Last time a leader was heard from (a fetch response from it).
    last_leader_contact: Option<Instant>,
    /// Observer: which voter to ask when no leader is known.
    probe: usize,
}

impl RaftNode {
    /// A node starting from what it had on disk (`Durable::default()` on first start).
    /// A voter starts as a follower with no leader; a non-voter is an observer.
    #[must_use]
    pub fn new(
        id: BrokerId,
        config: RaftConfig,
        durable: Durable,
        seed: u64,
        now: Instant,
    ) -> Self {
        let log_start = durable
            .snapshot
            .as_ref()
            .map_or(Offset(0), |s| s.end_offset);
        let role = if config.voters.contains(&id) {
            Role::Follower
        } else {
            Role::Observer
        };
        let mut node = RaftNode {
            id,
            role,
            epoch: durable.epoch,
            voted_for: durable.voted_for,
            leader: None,
            snapshot: durable.snapshot,
            entries: durable.entries,
            high_watermark: log_start,
            applied: log_start,
            jitter: Jitter(seed | 1),
            election_deadline: now,
            next_fetch: Some(now),
            fetch_deadline: now,
            votes: BTreeSet::new(),
            progress: BTreeMap::new(),
            parked: BTreeMap::new(),
            sent_high_watermark: BTreeMap::new(),
            last_leader_contact: None,
            probe: 0,
            config,
        };
        assert!(
            node.entries
                .iter()
                .enumerate()
                .all(|(i, e)| e.offset == log_start.add(i as i64)),
            "restored entries are contiguous from the snapshot"
        );
        node.reset_election_timer(now);
        node
    }

    /// This node's id.
    #[must_use]
    pub fn id(&self) -> BrokerId {
        self.id
    }

    /// Its role.
    #[must_use]
    pub fn role(&self) -> Role {
        self.role
    }

    /// Its current epoch.
    #[must_use]
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The leader it knows of.
    #[must_use]
    pub fn leader(&self) -> Option<BrokerId> {
        if self.role == Role::Leader {
            Some(self.id)
        } else {
            self.leader
        }
    }

    /// The commit point: entries below it are committed.
    #[must_use]
    pub fn high_watermark(&self) -> Offset {
        self.high_watermark
    }

    /// The first offset still in the log (the snapshot's end).
    #[must_use]
    pub fn log_start(&self) -> Offset {
        self.snapshot.as_ref().map_or(Offset(0), |s| s.end_offset)
    }

    /// The offset the next entry gets.
    #[must_use]
    pub fn end_offset(&self) -> Offset {
        self.log_start().add(self.entries.len() as i64)
    }

    /// The entries in the log (after the snapshot).
    #[must_use]
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The latest snapshot.
    #[must_use]
    pub fn snapshot(&self) -> Option<&Snapshot> {
        self.snapshot.as_ref()
    }

    fn last_epoch(&self) -> Epoch {
        match self.entries.last() {
            Some(e) => e.epoch,
            None => self.snapshot.as_ref().map_or(Epoch(0), |s| s.last_epoch),
        }
    }

    fn is_voter(&self) -> bool {
        self.config.voters.contains(&self.id)
    }

    /// The epoch of the entry at `offset`, if the log has it (or the snapshot ends just
    /// after it).
    fn epoch_at(&self, offset: Offset) -> Option<Epoch> {
        let start = self.log_start();
        if offset < start {
            return self
                .snapshot
                .as_ref()
                .filter(|s| s.end_offset == offset.next())
                .map(|s| s.last_epoch);
        }
        let i = usize::try_from(offset.0 - start.0).ok()?;
        self.entries.get(i).map(|e| e.epoch)
    }

    /// The largest epoch in the log not above `epoch`, and the offset where it ends (the
    /// start of the next epoch, or the log end). `None` if every epoch is above it.
    fn end_of_epoch(&self, epoch: Epoch) -> Option<(Epoch, Offset)> {
        let mut found = self
            .snapshot
            .as_ref()
            .filter(|s| s.last_epoch <= epoch)
            .map(|s| (s.last_epoch, s.end_offset));
        for e in &self.entries {
            if e.epoch <= epoch {
                found = Some((e.epoch, e.offset.next()));
            } else {
                break;
            }
        }
        if found.is_none() && self.entries.is_empty() && self.snapshot.is_none() {
            return Some((Epoch(0), Offset(0)));
        }
        found
    }

    fn reset_election_timer(&mut self, now: Instant) {
        let jitter = self.jitter.below(self.config.fetch_timeout);
        self.election_deadline = now
            .saturating_add(self.config.fetch_timeout)
            .saturating_add(jitter);
    }

    fn persist_vote(&self) -> Action {
        Action::Persist(Persist {
            vote: Some((self.epoch, self.voted_for)),
            ..Persist::default()
        })
    }

    /// Moves to a higher epoch as a follower (or observer), with no vote yet.
    fn step_up(
        &mut self,
        epoch: Epoch,
        leader: Option<BrokerId>,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        assert!(epoch > self.epoch, "epochs only grow");
        self.epoch = epoch;
        self.voted_for = None;
        self.become_follower(leader, now);
        out.push(self.persist_vote());
    }

    fn become_follower(&mut self, leader: Option<BrokerId>, now: Instant) {
        self.role = if self.is_voter() {
            Role::Follower
        } else {
            Role::Observer
        };
        self.leader = leader;
        self.votes.clear();
        self.progress.clear();
        // Held fetches are dropped: their senders time out and find the new leader.
        self.parked.clear();
        self.sent_high_watermark.clear();
        self.next_fetch = Some(now);
        self.reset_election_timer(now);
        if leader.is_some() {
            self.last_leader_contact = Some(now);
        }
        tracing::debug!(node = self.id.0, epoch = self.epoch.0, leader = ?leader.map(|l| l.0), "follower");
    }

    /// Time passes: elections, fetches, check-quorum.
    pub fn tick(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        match self.role {
            Role::Leader => {
                // Check-quorum: a majority (itself included) fetched within the timeout.
                let recent = self
                    .config
                    .voters
                    .iter()
                    .filter(|v| {
                        **v == self.id
                            || self.progress.get(v).is_some_and(|p| {
                                now.saturating_since(p.last_fetch) < self.config.fetch_timeout
                            })
                    })
                    .count();
                if recent < self.config.majority() {
                    tracing::info!(
                        node = self.id.0,
                        epoch = self.epoch.0,
                        "leader resigns: no quorum"
                    );
                    self.become_follower(None, now);
                } else {
                    let due: Vec<BrokerId> = self
                        .parked
                        .iter()
                        .filter(|(_, p)| now >= p.until)
                        .map(|(id, _)| *id)
                        .collect();
                    for id in due {
                        self.answer_parked(id, &mut out);
                    }
                }
            }
            Role::Follower | Role::Prospective | Role::Candidate => {
                if now >= self.election_deadline {
                    self.start_pre_vote(now, &mut out);
                } else {
                    self.maybe_fetch(now, &mut out);
                }
            }
            Role::Observer => self.maybe_fetch(now, &mut out),
        }
        out
    }

    fn maybe_fetch(&mut self, now: Instant, out: &mut Vec<Action>) {
        if matches!(self.role, Role::Candidate | Role::Leader) {
            return;
        }
        let due = match self.next_fetch {
            Some(t) => now >= t,
            None => now >= self.fetch_deadline,
        };
        if !due {
            return;
        }
        let target = match self.leader {
            Some(l) => l,
            None => {
                // Ask the voters in turn; one that is not the leader names it.
                let others: Vec<BrokerId> = self
                    .config
                    .voters
                    .iter()
                    .copied()
                    .filter(|v| *v != self.id)
                    .collect();
                if others.is_empty() {
                    return;
                }
                self.probe = self.probe.wrapping_add(1);
                others[self.probe % others.len()]
            }
        };
        out.push(Action::Send {
            to: target,
            msg: Message::Fetch {
                epoch: self.epoch,
                fetch_offset: self.end_offset(),
                last_fetched_epoch: self.last_epoch(),
            },
        });
        self.next_fetch = None;
        self.fetch_deadline = now
            .saturating_add(self.config.fetch_wait())
            .saturating_add(self.config.fetch_interval.saturating_mul(4));
    }

    fn start_pre_vote(&mut self, now: Instant, out: &mut Vec<Action>) {
        if !self.is_voter() {
            return;
        }
        self.role = Role::Prospective;
        self.leader = None;
        self.votes.clear();
        self.votes.insert(self.id);
        self.reset_election_timer(now);
        tracing::debug!(node = self.id.0, epoch = self.epoch.0, "pre-vote");
        if self.votes.len() >= self.config.majority() {
            self.start_election(now, out);
            return;
        }
        self.ask_votes(true, out);
    }

    fn ask_votes(&self, pre: bool, out: &mut Vec<Action>) {
        let epoch = if pre {
            Epoch(self.epoch.0 + 1)
        } else {
            self.epoch
        };
        for v in &self.config.voters {
            if *v != self.id {
                out.push(Action::Send {
                    to: *v,
                    msg: Message::Vote {
                        pre,
                        epoch,
                        last_epoch: self.last_epoch(),
                        end_offset: self.end_offset(),
                    },
                });
            }
        }
    }

    fn start_election(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.role = Role::Candidate;
        self.epoch = Epoch(self.epoch.0 + 1);
        self.voted_for = Some(self.id);
        self.leader = None;
        self.votes.clear();
        self.votes.insert(self.id);
        self.reset_election_timer(now);
        tracing::debug!(node = self.id.0, epoch = self.epoch.0, "candidate");
        out.push(self.persist_vote());
        if self.votes.len() >= self.config.majority() {
            self.become_leader(now, out);
        } else {
            self.ask_votes(false, out);
        }
    }

    fn become_leader(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.role = Role::Leader;
        self.leader = Some(self.id);
        self.votes.clear();
        // Every voter gets a full fetch timeout before check-quorum counts it absent.
        self.progress = self
            .config
            .voters
            .iter()
            .filter(|v| **v != self.id)
            .map(|v| {
                (
                    *v,
                    Progress {
                        end_offset: Offset(0),
                        last_fetch: now,
                    },
                )
            })
            .collect();
        tracing::info!(node = self.id.0, epoch = self.epoch.0, "leader");
        // The epoch's first entry: once it is on a majority, everything before it commits.
        let marker = Entry {
            offset: self.end_offset(),
            epoch: self.epoch,
            data: Vec::new(),
        };
        self.entries.push(marker.clone());
        out.push(Action::Persist(Persist {
            append: vec![marker],
            ..Persist::default()
        }));
        for v in &self.config.voters {
            if *v != self.id {
                out.push(Action::Send {
                    to: *v,
                    msg: Message::BeginEpoch { epoch: self.epoch },
                });
            }
        }
        self.last_leader_contact = Some(now);
        self.advance_high_watermark(out);
    }

    /// Appends `data` as leader; returns its offset. It is committed once the high
    /// watermark passes it.
    ///
    /// # Errors
    /// [`ProposeError::NotLeader`] on any other node.
    pub fn propose(&mut self, data: Vec<u8>) -> Result<(Offset, Vec<Action>), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.leader(),
            });
        }
        let entry = Entry {
            offset: self.end_offset(),
            epoch: self.epoch,
            data,
        };
        let offset = entry.offset;
        self.entries.push(entry.clone());
        let mut out = vec![Action::Persist(Persist {
            append: vec![entry],
            ..Persist::default()
        })];
        self.advance_high_watermark(&mut out);
        self.answer_all_parked(&mut out);
        Ok((offset, out))
    }

    /// A message from `from`.
    pub fn receive(&mut self, now: Instant, from: BrokerId, msg: Message) -> Vec<Action> {
        let mut out = Vec::new();
        match msg {
            Message::Vote {
                pre,
                epoch,
                last_epoch,
                end_offset,
            } => self.on_vote(now, from, pre, epoch, last_epoch, end_offset, &mut out),
            Message::VoteResponse {
                pre,
                epoch,
                granted,
            } => self.on_vote_response(now, from, pre, epoch, granted, &mut out),
            Message::BeginEpoch { epoch } => {
                if epoch > self.epoch {
                    self.step_up(epoch, Some(from), now, &mut out);
                } else if epoch == self.epoch && self.role != Role::Leader {
                    self.become_follower(Some(from), now);
                }
                self.maybe_fetch(now, &mut out);
            }
            Message::Fetch {
                epoch,
                fetch_offset,
                last_fetched_epoch,
            } => self.on_fetch(now, from, epoch, fetch_offset, last_fetched_epoch, &mut out),
            Message::FetchResponse {
                epoch,
                leader,
                high_watermark,
                fetched,
                body,
            } => self.on_fetch_response(
                now,
                from,
                epoch,
                leader,
                high_watermark,
                fetched,
                body,
                &mut out,
            ),
        }
        out
    }

    fn log_up_to_date(&self, last_epoch: Epoch, end_offset: Offset) -> bool {
        (last_epoch, end_offset) >= (self.last_epoch(), self.end_offset())
    }

    #[allow(clippy::too_many_arguments)]
    fn on_vote(
        &mut self,
        now: Instant,
        from: BrokerId,
        pre: bool,
        epoch: Epoch,
        last_epoch: Epoch,
        end_offset: Offset,
        out: &mut Vec<Action>,
    ) {
        if !self.is_voter() || !self.config.voters.contains(&from) {
            return;
        }
        if pre {
            // Granted only to an up-to-date log, and only if no leader was heard from
            // recently: a live leader is not disrupted.
            let leader_alive = self.role == Role::Leader
                || self.last_leader_contact.is_some_and(|t| {
                    self.leader.is_some() && now.saturating_since(t) < self.config.fetch_timeout
                });
            let granted =
                epoch > self.epoch && !leader_alive && self.log_up_to_date(last_epoch, end_offset);
            out.push(Action::Send {
                to: from,
                msg: Message::VoteResponse {
                    pre: true,
                    epoch,
                    granted,
                },
            });
            return;
        }
        if epoch > self.epoch {
            self.step_up(epoch, None, now, out);
        }
        let free = self.voted_for.is_none_or(|v| v == from) || self.planted_grant_two_votes();
        let granted = epoch == self.epoch
            && self.role != Role::Leader
            && free
            && self.log_up_to_date(last_epoch, end_offset);
        if granted {
            self.voted_for = Some(from);
            self.reset_election_timer(now);
            // Durable before the grant leaves.
            out.push(self.persist_vote());
        }
        out.push(Action::Send {
            to: from,
            msg: Message::VoteResponse {
                pre: false,
                epoch: self.epoch,
                granted,
            },
        });
    }

    #[cfg(feature = "planted-bugs")]
    fn planted_grant_two_votes(&self) -> bool {
        self.config.planted(RaftBug::GrantTwoVotes)
    }

    #[cfg(not(feature = "planted-bugs"))]
    #[allow(clippy::unused_self)]
    fn planted_grant_two_votes(&self) -> bool {
        false
    }

    #[cfg(feature = "planted-bugs")]
    fn planted_commit_earlier_epoch(&self) -> bool {
        self.config.planted(RaftBug::CommitEarlierEpoch)
    }

    #[cfg(not(feature = "planted-bugs"))]
    #[allow(clippy::unused_self)]
    fn planted_commit_earlier_epoch(&self) -> bool {
        false
    }

    #[cfg(feature = "planted-bugs")]
    fn planted_high_watermark_only_on_append(&self) -> bool {
        self.config.planted(RaftBug::HighWatermarkOnlyOnAppend)
    }

    #[cfg(not(feature = "planted-bugs"))]
    #[allow(clippy::unused_self)]
    fn planted_high_watermark_only_on_append(&self) -> bool {
        false
    }

    fn on_vote_response(
        &mut self,
        now: Instant,
        from: BrokerId,
        pre: bool,
        epoch: Epoch,
        granted: bool,
        out: &mut Vec<Action>,
    ) {
        if !pre && epoch > self.epoch {
            self.step_up(epoch, None, now, out);
            return;
        }
        if !granted {
            return;
        }
        match (pre, self.role) {
            (true, Role::Prospective) if epoch == Epoch(self.epoch.0 + 1) => {
                self.votes.insert(from);
                if self.votes.len() >= self.config.majority() {
                    self.start_election(now, out);
                }
            }
            (false, Role::Candidate) if epoch == self.epoch => {
                self.votes.insert(from);
                if self.votes.len() >= self.config.majority() {
                    self.become_leader(now, out);
                }
            }
            _ => {}
        }
    }

    fn on_fetch(
        &mut self,
        now: Instant,
        from: BrokerId,
        epoch: Epoch,
        fetch_offset: Offset,
        last_fetched_epoch: Epoch,
        out: &mut Vec<Action>,
    ) {
        if epoch > self.epoch {
            // The fetcher knows a newer epoch: ours is over.
            self.step_up(epoch, None, now, out);
        }
        let reply = |body: FetchBody, node: &RaftNode| Action::Send {
            to: from,
            msg: Message::FetchResponse {
                epoch: node.epoch,
                leader: node.leader(),
                high_watermark: node.high_watermark,
                fetched: (fetch_offset, last_fetched_epoch),
                body,
            },
        };
        if self.role != Role::Leader || epoch < self.epoch {
            out.push(reply(FetchBody::NotLeader, self));
            return;
        }
        if fetch_offset < self.log_start() {
            if let Some(s) = self.snapshot.clone() {
                out.push(reply(FetchBody::Snapshot(s), self));
                return;
            }
        }
        // Does the fetcher's log match ours at its end?
        let matches = fetch_offset <= self.end_offset()
            && (fetch_offset == Offset(0)
                || self.epoch_at(Offset(fetch_offset.0 - 1)) == Some(last_fetched_epoch));
        if !matches {
            let body = match self.end_of_epoch(last_fetched_epoch) {
                Some((epoch, end_offset)) => FetchBody::Diverging {
                    epoch,
                    end_offset: end_offset.min(fetch_offset),
                },
                // Every epoch we have is newer: the fetcher keeps nothing past our start.
                None => match self.snapshot.clone() {
                    Some(s) => FetchBody::Snapshot(s),
                    None => FetchBody::Diverging {
                        epoch: Epoch(0),
                        end_offset: Offset(0),
                    },
                },
            };
            out.push(reply(body, self));
            return;
        }
        // A newer fetch from the same sender replaces a held one.
        self.parked.remove(&from);
        // The fetch offset is durable on the fetcher: it acknowledges everything below.
        if self.config.voters.contains(&from) {
            self.progress.insert(
                from,
                Progress {
                    end_offset: fetch_offset,
                    last_fetch: now,
                },
            );
            if !self.planted_high_watermark_only_on_append() {
                self.advance_high_watermark(out);
            }
        }
        let nothing_new = fetch_offset == self.end_offset()
            && self.sent_high_watermark.get(&from) == Some(&self.high_watermark);
        if nothing_new && !self.config.fetch_wait().is_zero() {
            self.parked.insert(
                from,
                Parked {
                    fetch_offset,
                    last_fetched_epoch,
                    until: now.saturating_add(self.config.fetch_wait()),
                },
            );
            return;
        }
        self.answer_fetch(from, fetch_offset, last_fetched_epoch, out);
    }

    /// Leader: answers a (matching) fetch with the entries from `fetch_offset`, or the
    /// snapshot if compaction has passed it.
    fn answer_fetch(
        &mut self,
        to: BrokerId,
        fetch_offset: Offset,
        last_fetched_epoch: Epoch,
        out: &mut Vec<Action>,
    ) {
        let body = match &self.snapshot {
            Some(s) if fetch_offset < self.log_start() => FetchBody::Snapshot(s.clone()),
            _ => {
                let start = usize::try_from(fetch_offset.0 - self.log_start().0).unwrap_or(0);
                FetchBody::Entries(
                    self.entries
                        .iter()
                        .skip(start)
                        .take(self.config.fetch_entries_max)
                        .cloned()
                        .collect(),
                )
            }
        };
        self.sent_high_watermark.insert(to, self.high_watermark);
        out.push(Action::Send {
            to,
            msg: Message::FetchResponse {
                epoch: self.epoch,
                leader: self.leader(),
                high_watermark: self.high_watermark,
                fetched: (fetch_offset, last_fetched_epoch),
                body,
            },
        });
    }

    fn answer_parked(&mut self, id: BrokerId, out: &mut Vec<Action>) {
        if let Some(p) = self.parked.remove(&id) {
            self.answer_fetch(id, p.fetch_offset, p.last_fetched_epoch, out);
        }
    }

    fn answer_all_parked(&mut self, out: &mut Vec<Action>) {
        let ids: Vec<BrokerId> = self.parked.keys().copied().collect();
        for id in ids {
            self.answer_parked(id, out);
        }
    }

    /// The leader's commit rule: the largest offset a majority of voters (itself included)
    /// holds, provided the entry below it is of the current epoch.
    fn advance_high_watermark(&mut self, out: &mut Vec<Action>) {
        let mut ends: Vec<Offset> = self
            .config
            .voters
            .iter()
            .map(|v| {
                if *v == self.id {
                    self.end_offset()
                } else {
                    self.progress.get(v).map_or(Offset(0), |p| p.end_offset)
                }
            })
            .collect();
        ends.sort_unstable_by(|a, b| b.cmp(a));
        let Some(majority_end) = ends.get(self.config.majority() - 1).copied() else {
            return;
        };
        if majority_end <= self.high_watermark {
            return;
        }
        let own_epoch = self.epoch_at(Offset(majority_end.0 - 1)) == Some(self.epoch);
        if own_epoch || self.planted_commit_earlier_epoch() {
            self.high_watermark = majority_end;
            self.emit_applies(out);
            self.answer_all_parked(out);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_fetch_response(
        &mut self,
        now: Instant,
        from: BrokerId,
        epoch: Epoch,
        leader: Option<BrokerId>,
        high_watermark: Offset,
        fetched: (Offset, Epoch),
        body: FetchBody,
        out: &mut Vec<Action>,
    ) {
        if epoch > self.epoch {
            self.step_up(epoch, leader, now, out);
        } else if epoch < self.epoch {
            return;
        }
        if self.role == Role::Leader {
            return;
        }
        match body {
            FetchBody::NotLeader => {
                // Learn the leader if named; fetch again soon.
                if leader.is_some() && leader != Some(self.id) && self.leader != leader {
                    self.become_follower(leader, now);
                } else {
                    self.next_fetch = Some(now.saturating_add(self.config.fetch_interval));
                }
                return;
            }
            _ if leader != Some(from) => return,
            _ => {}
        }
        if self.leader != Some(from) || matches!(self.role, Role::Prospective | Role::Candidate) {
            self.become_follower(Some(from), now);
        }
        if fetched != (self.end_offset(), self.last_epoch()) {
            // Late or duplicated: it vouches for a log this node no longer has.
            self.next_fetch = Some(now);
            self.maybe_fetch(now, out);
            return;
        }
        self.last_leader_contact = Some(now);
        self.reset_election_timer(now);
        let mut fetch_again_now = false;
        // Only an Entries answer vouches that this log matches the leader's up to its end:
        // only then may the leader's high watermark apply here.
        let mut matched = false;
        match body {
            FetchBody::Entries(entries) => {
                matched = true;
                fetch_again_now = !entries.is_empty();
                let mut append = Vec::new();
                for e in entries {
                    if e.offset == self.end_offset() {
                        self.entries.push(e.clone());
                        append.push(e);
                    }
                }
                if !append.is_empty() {
                    out.push(Action::Persist(Persist {
                        append,
                        ..Persist::default()
                    }));
                }
            }
            FetchBody::Diverging { epoch, end_offset } => {
                let own = self.end_of_epoch(epoch).map_or(Offset(0), |(_, end)| end);
                let to = end_offset.min(own).min(self.end_offset());
                // Committed entries are never truncated: the leader has them all.
                assert!(
                    to >= self.high_watermark.min(self.end_offset()),
                    "truncation below the high watermark"
                );
                self.truncate_from(to, out);
                fetch_again_now = true;
            }
            FetchBody::Snapshot(s) => {
                if s.end_offset > self.end_offset()
                    || self.epoch_at(Offset(s.end_offset.0 - 1)) != Some(s.last_epoch)
                {
                    self.entries.clear();
                } else {
                    let keep = usize::try_from(s.end_offset.0 - self.log_start().0).unwrap_or(0);
                    self.entries.drain(..keep.min(self.entries.len()));
                }
                self.snapshot = Some(s.clone());
                out.push(Action::Persist(Persist {
                    snapshot: Some(s.clone()),
                    truncate_from: self.entries.is_empty().then_some(s.end_offset),
                    ..Persist::default()
                }));
                if self.applied < s.end_offset {
                    self.applied = s.end_offset;
                    out.push(Action::InstallSnapshot(s.clone()));
                }
                self.high_watermark = self.high_watermark.max(s.end_offset);
                fetch_again_now = true;
            }
            FetchBody::NotLeader => {}
        }
        let hw = high_watermark.min(self.end_offset());
        if matched && hw > self.high_watermark {
            self.high_watermark = hw;
            self.emit_applies(out);
        }
        // With a long-polling leader an empty answer already waited: fetch again at once.
        let fetch_again_now = fetch_again_now || !self.config.fetch_wait().is_zero();
        self.next_fetch = Some(if fetch_again_now {
            now
        } else {
            now.saturating_add(self.config.fetch_interval)
        });
        if fetch_again_now {
            self.maybe_fetch(now, out);
        }
    }

    fn truncate_from(&mut self, to: Offset, out: &mut Vec<Action>) {
        if to >= self.end_offset() {
            return;
        }
        let keep = usize::try_from(to.0 - self.log_start().0).unwrap_or(0);
        self.entries.truncate(keep);
        out.push(Action::Persist(Persist {
            truncate_from: Some(to),
            ..Persist::default()
        }));
    }

    fn emit_applies(&mut self, out: &mut Vec<Action>) {
        if self.applied < self.log_start() {
            if let Some(s) = self.snapshot.clone() {
                self.applied = s.end_offset;
                out.push(Action::InstallSnapshot(s));
            }
        }
        let start = self.log_start();
        let from = usize::try_from(self.applied.0 - start.0).unwrap_or(0);
        let to = usize::try_from(self.high_watermark.0 - start.0).unwrap_or(0);
        if let Some(batch) = self.entries.get(from..to.min(self.entries.len())) {
            if !batch.is_empty() {
                out.push(Action::Apply(batch.to_vec()));
                self.applied = self.high_watermark.min(self.end_offset());
            }
        }
    }

    /// Folds every entry below `snapshot.end_offset` (which must be applied) into the
    /// snapshot and drops them from the log.
    ///
    /// # Panics
    /// If the snapshot reaches past what was applied (a driver bug).
    pub fn compact(&mut self, snapshot: Snapshot) -> Vec<Action> {
        assert!(
            snapshot.end_offset <= self.applied,
            "snapshot of unapplied entries"
        );
        if snapshot.end_offset <= self.log_start() {
            return Vec::new();
        }
        let drop = usize::try_from(snapshot.end_offset.0 - self.log_start().0).unwrap_or(0);
        self.entries.drain(..drop.min(self.entries.len()));
        self.snapshot = Some(snapshot.clone());
        vec![Action::Persist(Persist {
            snapshot: Some(snapshot),
            ..Persist::default()
        })]
    }
}

#[cfg(test)]
mod tests;
