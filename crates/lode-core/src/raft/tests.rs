//! An in-process harness for the Raft core, in the style of raft-rs's: no runtime, a seeded
//! schedule of message delay, loss, duplication and reordering, network partitions, crashes
//! and restarts from persisted state, compactions; every step checks the safety
//! properties. Planted bugs (feature `planted-bugs`) prove each check can fire.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::*;

/// xorshift64*: the harness's only source of choices.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

const MS: u64 = 1_000_000;

struct InFlight {
    at: u64,
    from: BrokerId,
    to: BrokerId,
    msg: Message,
}

/// What each node's state machine holds: the entries applied, by offset.
type Applied = BTreeMap<Offset, (Epoch, Vec<u8>)>;

struct Cluster {
    rng: Rng,
    now: u64,
    ids: Vec<BrokerId>,
    config: RaftConfig,
    nodes: BTreeMap<BrokerId, Option<RaftNode>>,
    disks: BTreeMap<BrokerId, Durable>,
    machines: BTreeMap<BrokerId, Applied>,
    net: Vec<InFlight>,
    /// Pairs that cannot talk.
    cut: BTreeSet<(BrokerId, BrokerId)>,
    /// Every committed entry anyone applied: offset -> (epoch, data).
    committed: Applied,
    /// For each committed offset, the highest epoch any node had when it was first seen
    /// committed: it was committed in that epoch or an earlier one, so every leader of a
    /// later epoch must hold it.
    committed_by: BTreeMap<Offset, Epoch>,
    leaders: BTreeMap<Epoch, BrokerId>,
    proposals: u64,
    max_delay_ms: u64,
    /// Per cent of messages lost.
    drop_percent: u64,
    /// Per cent of new leaders crashed at once.
    new_leader_crash_percent: u64,
    /// Per mille of actions before which their node crashes.
    mid_crash_permille: u64,
    faults_on: bool,
}

fn at(ns: u64) -> Instant {
    Instant(ns)
}

impl Cluster {
    fn new(seed: u64, voters: usize, observers: usize) -> Cluster {
        let mut rng = Rng::new(seed);
        let ids: Vec<BrokerId> = (0..(voters + observers) as i32).map(BrokerId).collect();
        let voter_set: BTreeSet<BrokerId> = ids[..voters].iter().copied().collect();
        let mut config = RaftConfig::new(voter_set.clone());
        config.fetch_timeout = Duration::from_millis(200);
        config.fetch_interval = Duration::from_millis(20);
        // Long poll off in a quarter of the schedules, else held for 10-80 ms.
        config.fetch_wait = match rng.below(4) {
            0 => Duration::ZERO,
            _ => Duration::from_millis(10 + rng.below(71)),
        };
        // Small responses, so an epoch's entries can arrive a few at a time.
        config.fetch_entries_max = 1 + rng.below(4) as usize;
        let mut c = Cluster {
            max_delay_ms: 5 + rng.below(40),
            drop_percent: rng.below(30),
            new_leader_crash_percent: rng.below(60),
            mid_crash_permille: rng.below(10),
            faults_on: true,
            rng,
            now: 0,
            ids: ids.clone(),
            config,
            nodes: BTreeMap::new(),
            disks: BTreeMap::new(),
            machines: BTreeMap::new(),
            net: Vec::new(),
            cut: BTreeSet::new(),
            committed: Applied::new(),
            committed_by: BTreeMap::new(),
            leaders: BTreeMap::new(),
            proposals: 0,
        };
        for id in ids {
            c.disks.insert(id, Durable::default());
            c.start(id);
        }
        c
    }

    fn start(&mut self, id: BrokerId) {
        let durable = self.disks[&id].clone();
        // The state machine comes back from the snapshot.
        let machine = durable
            .snapshot
            .as_ref()
            .map(|s| postcard::from_bytes::<Applied>(&s.data).unwrap())
            .unwrap_or_default();
        self.machines.insert(id, machine);
        let seed = self.rng.next();
        let node = RaftNode::new(id, self.config.clone(), durable, seed, at(self.now));
        self.nodes.insert(id, Some(node));
    }

    fn run_actions(&mut self, id: BrokerId, actions: Vec<Action>) -> Result<(), String> {
        for a in actions {
            // A process can die between any two of its actions: what was persisted stays,
            // what was not yet sent never leaves.
            if self.faults_on && self.rng.below(1000) < self.mid_crash_permille {
                self.nodes.insert(id, None);
                return Ok(());
            }
            if std::env::var_os("LODE_RAFT_TRACE").is_some() {
                let role = self
                    .nodes
                    .get(&id)
                    .and_then(|n| n.as_ref())
                    .map(|n| (n.role(), n.epoch(), n.end_offset(), n.high_watermark()));
                eprintln!("t={}ms node {} {role:?}: {a:?}", self.now / MS, id.0);
            }
            match a {
                Action::Persist(p) => {
                    let d = self.disks.get_mut(&id).unwrap();
                    if let Some((epoch, vote)) = p.vote {
                        d.epoch = epoch;
                        d.voted_for = vote;
                    }
                    if let Some(s) = p.snapshot {
                        d.entries.retain(|e| e.offset >= s.end_offset);
                        if d.entries.first().is_some_and(|e| e.offset != s.end_offset) {
                            d.entries.clear();
                        }
                        d.snapshot = Some(s);
                    }
                    if let Some(t) = p.truncate_from {
                        d.entries.retain(|e| e.offset < t);
                    }
                    for e in p.append {
                        let start = d.snapshot.as_ref().map_or(Offset(0), |s| s.end_offset);
                        let end = start.add(d.entries.len() as i64);
                        if e.offset != end {
                            return Err(format!(
                                "node {id:?} persisted {:?} at end {end:?}",
                                e.offset
                            ));
                        }
                        d.entries.push(e);
                    }
                }
                Action::Send { to, msg } => {
                    if self.cut.contains(&(id, to)) || self.rng.chance(self.drop_percent) {
                        continue;
                    }
                    let copies = if self.rng.chance(3) { 2 } else { 1 };
                    for _ in 0..copies {
                        let delay = self.rng.below(self.max_delay_ms * MS);
                        self.net.push(InFlight {
                            at: self.now + delay,
                            from: id,
                            to,
                            msg: msg.clone(),
                        });
                    }
                }
                Action::InstallSnapshot(s) => {
                    let m: Applied = postcard::from_bytes(&s.data).unwrap();
                    for (o, v) in &m {
                        self.check_committed(id, *o, v)?;
                    }
                    self.machines.insert(id, m);
                }
                Action::Apply(entries) => {
                    for e in entries {
                        let v = (e.epoch, e.data.clone());
                        self.check_committed(id, e.offset, &v)?;
                        let m = self.machines.get_mut(&id).unwrap();
                        if let Some(last) = m.keys().next_back() {
                            if e.offset != last.next() {
                                return Err(format!(
                                    "node {id:?} applied {:?} after {last:?}",
                                    e.offset
                                ));
                            }
                        }
                        m.insert(e.offset, v);
                    }
                }
            }
        }
        Ok(())
    }

    /// State machine safety: one entry per committed offset, whoever applies it.
    fn check_committed(
        &mut self,
        id: BrokerId,
        offset: Offset,
        v: &(Epoch, Vec<u8>),
    ) -> Result<(), String> {
        match self.committed.get(&offset) {
            Some(known) if known != v => Err(format!(
                "node {id:?} applied {v:?} at {offset:?}, but {known:?} was committed there"
            )),
            Some(_) => Ok(()),
            None => {
                self.committed.insert(offset, v.clone());
                let highest = self
                    .disks
                    .values()
                    .map(|d| d.epoch)
                    .chain(self.nodes.values().flatten().map(RaftNode::epoch))
                    .max()
                    .unwrap_or_default();
                self.committed_by.insert(offset, highest);
                Ok(())
            }
        }
    }

    fn check(&mut self) -> Result<(), String> {
        let live: Vec<&RaftNode> = self.nodes.values().flatten().collect();
        for n in &live {
            // At most one leader per epoch.
            if n.role() == Role::Leader {
                match self.leaders.get(&n.epoch()) {
                    Some(l) if *l != n.id() => {
                        return Err(format!(
                            "two leaders in epoch {:?}: {l:?} and {:?}",
                            n.epoch(),
                            n.id()
                        ))
                    }
                    _ => {
                        self.leaders.insert(n.epoch(), n.id());
                    }
                }
                // Leader completeness: it holds every entry committed before its epoch
                // (past its snapshot).
                for (o, (epoch, data)) in self.committed.range(n.log_start()..) {
                    if self.committed_by[o] >= n.epoch() {
                        continue;
                    }
                    let i = usize::try_from(o.0 - n.log_start().0).unwrap();
                    match n.entries().get(i) {
                        Some(e) if e.epoch == *epoch && e.data == *data => {}
                        other => {
                            return Err(format!(
                                "leader {:?} of epoch {:?} lacks {:?} committed at {o:?}: has {other:?}",
                                n.id(),
                                n.epoch(),
                                (epoch, data)
                            ))
                        }
                    }
                }
            }
            // Entries are contiguous and epochs never decrease along the log.
            for w in n.entries().windows(2) {
                if w[1].offset != w[0].offset.next() || w[1].epoch < w[0].epoch {
                    return Err(format!(
                        "node {:?} log out of order at {:?}",
                        n.id(),
                        w[1].offset
                    ));
                }
            }
        }
        // Log matching: where two logs hold an entry of the same epoch at the same offset,
        // they are identical up to there.
        for (i, a) in live.iter().enumerate() {
            for b in &live[i + 1..] {
                let start = a.log_start().max(b.log_start());
                let end = a.end_offset().min(b.end_offset());
                let mut matched = false;
                let mut o = end;
                while o > start {
                    o = Offset(o.0 - 1);
                    let (x, y) = (entry_at(a, o), entry_at(b, o));
                    matched |= x.epoch == y.epoch;
                    if matched && x != y {
                        return Err(format!(
                            "logs of {:?} and {:?} match at a later offset but differ at {o:?}",
                            a.id(),
                            b.id()
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    fn deliver_due(&mut self) -> Result<(), String> {
        let now = self.now;
        let mut due: Vec<InFlight> = Vec::new();
        let mut i = 0;
        while i < self.net.len() {
            if self.net[i].at <= now {
                due.push(self.net.swap_remove(i));
            } else {
                i += 1;
            }
        }
        // Random order among the due ones.
        while !due.is_empty() {
            let k = self.rng.below(due.len() as u64) as usize;
            let m = due.swap_remove(k);
            if self.cut.contains(&(m.from, m.to)) {
                continue;
            }
            let Some(Some(node)) = self.nodes.get_mut(&m.to) else {
                continue;
            };
            let actions = node.receive(at(now), m.from, m.msg);
            self.run_actions(m.to, actions)?;
            self.check()?;
        }
        Ok(())
    }

    fn leader(&self) -> Option<BrokerId> {
        self.nodes
            .values()
            .flatten()
            .filter(|n| n.role() == Role::Leader)
            .max_by_key(|n| n.epoch())
            .map(RaftNode::id)
    }

    /// The leader's entries not yet committed (its epoch's marker included).
    fn leader_backlog(&self) -> Option<i64> {
        let l = self.leader()?;
        let n = self.nodes[&l].as_ref()?;
        Some(n.end_offset().0 - n.high_watermark().0)
    }

    fn propose(&mut self) -> Result<(), String> {
        let Some(l) = self.leader() else {
            return Ok(());
        };
        self.proposals += 1;
        let data = self.proposals.to_be_bytes().to_vec();
        let node = self.nodes.get_mut(&l).unwrap().as_mut().unwrap();
        let (_, actions) = node.propose(data).unwrap();
        self.run_actions(l, actions)
    }

    fn fault(&mut self) -> Result<(), String> {
        // Half the faults hit the leader: that is where elections and truncations start.
        let id = match self.leader() {
            Some(l) if self.rng.chance(50) => l,
            _ => self.ids[self.rng.below(self.ids.len() as u64) as usize],
        };
        match self.rng.below(10) {
            0..=1 => {
                // Crash: volatile state and the node's future are gone; the disk stays.
                if self.nodes[&id].is_some() {
                    self.nodes.insert(id, None);
                } else {
                    self.start(id);
                }
            }
            2..=4 => {
                // Cut a node off from everyone, or heal everything.
                if self.cut.is_empty() {
                    for other in &self.ids {
                        if *other != id {
                            self.cut.insert((id, *other));
                            self.cut.insert((*other, id));
                        }
                    }
                } else {
                    self.cut.clear();
                }
            }
            5 => {
                // A one-way cut.
                let other = self.ids[self.rng.below(self.ids.len() as u64) as usize];
                if other != id {
                    self.cut.insert((id, other));
                }
            }
            6 => {
                // Compact a node's log up to what it applied.
                if let Some(Some(node)) = self.nodes.get_mut(&id) {
                    let m = &self.machines[&id];
                    if let Some((last, (epoch, _))) = m.iter().next_back() {
                        let snapshot = Snapshot {
                            end_offset: last.next(),
                            last_epoch: *epoch,
                            data: postcard::to_allocvec(m).unwrap(),
                        };
                        let actions = node.compact(snapshot);
                        self.run_actions(id, actions)?;
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// One 5 ms step: deliveries, ticks, and with `faults` maybe a proposal and maybe a
    /// fault.
    fn step(&mut self, faults: bool) -> Result<(), String> {
        self.faults_on = faults;
        let leader_before = self.leader();
        self.now += 5 * MS;
        self.deliver_due()?;
        let ids = self.ids.clone();
        for id in ids {
            if let Some(Some(node)) = self.nodes.get_mut(&id) {
                let actions = node.tick(at(self.now));
                self.run_actions(id, actions)?;
            }
        }
        self.check()?;
        if faults && self.rng.chance(20) {
            self.propose()?;
            self.check()?;
        }
        if faults && self.rng.chance(4) {
            self.fault()?;
            self.check()?;
        }
        // The nemesis likes fresh leaders: crashing one before its epoch's first entry is
        // replicated leaves the partial logs that elections must sort out (Raft's figure 8).
        if let Some(l) = self.leader() {
            if faults && Some(l) != leader_before && self.rng.chance(self.new_leader_crash_percent)
            {
                self.nodes.insert(l, None);
            }
        }
        Ok(())
    }

    fn heal(&mut self) {
        self.cut.clear();
        let down: Vec<BrokerId> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.is_none())
            .map(|(id, _)| *id)
            .collect();
        for id in down {
            self.start(id);
        }
    }
}

fn entry_at(n: &RaftNode, o: Offset) -> &Entry {
    &n.entries()[usize::try_from(o.0 - n.log_start().0).unwrap()]
}

fn proposal_number(data: &[u8]) -> u64 {
    data.try_into().map_or(0, u64::from_be_bytes)
}

/// Simulated time the healed phase gets, in 5 ms steps: 60 s. The slowest schedules fetch
/// one entry per round trip over a network that still loses up to 29% of messages and
/// delays them up to 44 ms: about 5 entries a second, with a leader deposed every few
/// seconds by check-quorum and an election between leaders, against a backlog of up to
/// ~130 entries from the faulty phase. The slowest of 100,000 schedules needed 24 s.
const HEALED_STEPS: usize = 12_000;

/// The healed phase proposes only while the leader has fewer uncommitted entries than
/// this (its end offset minus its high watermark, its epoch's marker included).
///
/// An open-loop client (a proposal every 100 ms whatever happens) outruns a follower that
/// fetches one entry per round trip over a lossy network, and then each new leader's
/// marker, at the end of a log that grew faster than its followers, lies further ahead of
/// them than the last one: its high watermark could not move before check-quorum deposed
/// it (schedule 8740 of 10,000). Bounding the backlog keeps the offered load within what
/// the cluster can replicate, and is the stricter check: a leader whose high watermark
/// moves only when it appends no longer gets its commits from the client's next proposal
/// (planted bug `HighWatermarkOnlyOnAppend`).
const HEALED_BACKLOG_MAX: i64 = 8;

/// Runs one schedule: faults for a while, then a healed network (no cuts, no crashes,
/// every node up; messages are still delayed, duplicated and lost) in which a leader must
/// emerge and a proposal made after healing must commit everywhere (an earlier one may
/// be lost with a deposed leader: it was never committed).
fn schedule(seed: u64, planted: Option<&dyn Fn(&mut RaftConfig)>) -> Result<(), String> {
    let mut rng = Rng::new(seed ^ 0x5eed);
    let voters = [1, 3, 5, 5][rng.below(4) as usize];
    let observers = rng.below(2) as usize;
    let mut c = Cluster::new(seed, voters, observers);
    if let Some(plant) = planted {
        plant(&mut c.config);
        let ids = c.ids.clone();
        for id in ids {
            c.start(id);
        }
    }
    for _ in 0..600 {
        c.step(true)?;
    }
    c.heal();
    let target = c.proposals + 1;
    let mut proposed = false;
    for _ in 0..HEALED_STEPS {
        c.step(false)?;
        // A proposal every 100 ms once a leader is up and has committed all but a few of
        // its entries: the healed cluster must commit its backlog, however far behind it
        // starts, and then the proposals that follow.
        if c.now % (100 * MS) == 0 && c.leader_backlog().is_some_and(|b| b < HEALED_BACKLOG_MAX) {
            c.propose()?;
            proposed = true;
        }
        let everywhere = c
            .machines
            .values()
            .all(|m| m.values().any(|(_, d)| proposal_number(d) >= target));
        if proposed && everywhere {
            return Ok(());
        }
    }
    let state: Vec<String> = c
        .nodes
        .iter()
        .map(|(id, n)| {
            let m = &c.machines[id];
            format!(
                "{}: {:?} applied {} up to {:?}",
                id.0,
                n.as_ref().map(|n| (
                    n.role(),
                    n.epoch(),
                    n.log_start(),
                    n.end_offset(),
                    n.high_watermark()
                )),
                m.len(),
                m.keys().next_back()
            )
        })
        .collect();
    Err(format!(
        "liveness: after healing, proposal {target} did not commit everywhere (leader {:?}); {state:?}",
        c.leader()
    ))
}

#[test]
fn safety_and_liveness_hold_over_many_schedules() {
    let n = std::env::var("LODE_RAFT_SCHEDULES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000_u64);
    let first = std::env::var("LODE_RAFT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0_u64);
    for seed in first..first + n {
        if let Err(e) = schedule(seed, None) {
            panic!("schedule {seed}: {e}");
        }
    }
}

/// Schedules whose healed phase once failed liveness: an open-loop client outran followers
/// fetching one entry per round trip through 27-29% message loss, and check-quorum
/// deposed each leader before a majority reached its epoch's marker (8740, 17477), or
/// leaders changed so often that 20 s were not enough (47171).
#[test]
fn regression_schedules_commit_after_healing() {
    for seed in [8740, 17477, 47171] {
        if let Err(e) = schedule(seed, None) {
            panic!("schedule {seed}: {e}");
        }
    }
}

#[test]
fn same_seed_same_schedule() {
    fn fingerprint(seed: u64) -> Vec<(BrokerId, Epoch, Offset, Offset)> {
        let mut c = Cluster::new(seed, 3, 1);
        for _ in 0..400 {
            c.step(true).unwrap();
        }
        c.nodes
            .values()
            .flatten()
            .map(|n| (n.id(), n.epoch(), n.end_offset(), n.high_watermark()))
            .collect()
    }
    assert_eq!(fingerprint(7), fingerprint(7));
    assert_ne!(fingerprint(7), fingerprint(8));
}

#[test]
fn a_single_voter_commits_at_once() {
    let voters: BTreeSet<BrokerId> = [BrokerId(0)].into();
    let mut n = RaftNode::new(
        BrokerId(0),
        RaftConfig::new(voters),
        Durable::default(),
        1,
        Instant(0),
    );
    let actions = n.tick(Instant(10_000_000_000));
    assert_eq!(n.role(), Role::Leader);
    assert!(actions.iter().any(|a| matches!(a, Action::Apply(_))));
    let (offset, actions) = n.propose(b"x".to_vec()).unwrap();
    assert_eq!(offset, Offset(1));
    assert!(actions
        .iter()
        .any(|a| matches!(a, Action::Apply(e) if e[0].data == b"x")));
    assert_eq!(n.high_watermark(), Offset(2));
}

#[test]
fn a_vote_is_persisted_before_it_is_sent() {
    let voters: BTreeSet<BrokerId> = [BrokerId(0), BrokerId(1), BrokerId(2)].into();
    let mut n = RaftNode::new(
        BrokerId(0),
        RaftConfig::new(voters),
        Durable::default(),
        1,
        Instant(0),
    );
    let actions = n.receive(
        Instant(0),
        BrokerId(1),
        Message::Vote {
            pre: false,
            epoch: Epoch(1),
            last_epoch: Epoch(0),
            end_offset: Offset(0),
        },
    );
    let persist = actions
        .iter()
        .rposition(
            |a| matches!(a, Action::Persist(p) if p.vote == Some((Epoch(1), Some(BrokerId(1))))),
        )
        .expect("the vote is persisted");
    let send = actions
        .iter()
        .position(|a| {
            matches!(
                a,
                Action::Send {
                    msg: Message::VoteResponse { granted: true, .. },
                    ..
                }
            )
        })
        .expect("the vote is granted");
    assert!(persist < send);
    // A second candidate in the same epoch is refused.
    let again = n.receive(
        Instant(0),
        BrokerId(2),
        Message::Vote {
            pre: false,
            epoch: Epoch(1),
            last_epoch: Epoch(0),
            end_offset: Offset(5),
        },
    );
    assert!(again.iter().any(|a| matches!(
        a,
        Action::Send {
            msg: Message::VoteResponse { granted: false, .. },
            ..
        }
    )));
}

#[cfg(feature = "planted-bugs")]
fn catches(bug: RaftBug) -> u64 {
    let plant = move |c: &mut RaftConfig| {
        c.planted = Some(bug);
    };
    for seed in 0..10_000 {
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            schedule(seed, Some(&plant))
        }));
        match caught {
            Err(_) | Ok(Err(_)) => {
                let why = match caught {
                    Ok(Err(e)) => e,
                    _ => "an assertion in the core fired".to_owned(),
                };
                eprintln!(
                    "planted {bug:?}: caught by schedule {seed} ({} schedules): {why}",
                    seed + 1
                );
                return seed + 1;
            }
            Ok(Ok(())) => {}
        }
    }
    panic!("planted {bug:?} was not caught in 10000 schedules");
}

#[cfg(feature = "planted-bugs")]
#[test]
fn planted_double_vote_is_caught() {
    assert!(catches(RaftBug::GrantTwoVotes) <= 5_000);
}

#[cfg(feature = "planted-bugs")]
#[test]
fn planted_commit_of_an_earlier_epoch_is_caught() {
    assert!(catches(RaftBug::CommitEarlierEpoch) <= 5_000);
}

#[cfg(feature = "planted-bugs")]
#[test]
fn planted_high_watermark_only_on_append_is_caught() {
    assert!(catches(RaftBug::HighWatermarkOnlyOnAppend) <= 5_000);
}

/// Delivers every message at once, at `now`, until none is left; returns how many.
fn deliver_all(
    nodes: &mut BTreeMap<BrokerId, RaftNode>,
    now: Instant,
    mut queue: Vec<(BrokerId, Action)>,
) -> usize {
    let mut delivered = 0;
    while let Some((from, action)) = queue.pop() {
        let Action::Send { to, msg } = action else {
            continue;
        };
        delivered += 1;
        assert!(delivered < 10_000, "messages never stop");
        let out = nodes
            .get_mut(&to)
            .expect("known node")
            .receive(now, from, msg);
        queue.extend(out.into_iter().map(|a| (to, a)));
    }
    delivered
}

/// Voters 0 and 1, observer 2; node 0 elected at `now`, everything delivered, and every
/// node polled until the leader is known everywhere. Returns the time reached.
fn elected_pair(fetch_wait: Duration, now: Instant) -> (BTreeMap<BrokerId, RaftNode>, Instant) {
    let voters: BTreeSet<BrokerId> = [BrokerId(0), BrokerId(1)].into();
    let mut config = RaftConfig::new(voters);
    config.fetch_wait = fetch_wait;
    let interval = config.fetch_interval;
    let mut nodes: BTreeMap<BrokerId, RaftNode> = (0..3)
        .map(|i| {
            let id = BrokerId(i);
            let node = RaftNode::new(
                id,
                config.clone(),
                Durable::default(),
                1 + i as u64,
                Instant(0),
            );
            (id, node)
        })
        .collect();
    // Only node 0's election timer runs out.
    let out = nodes.get_mut(&BrokerId(0)).unwrap().tick(now);
    deliver_all(
        &mut nodes,
        now,
        out.into_iter().map(|a| (BrokerId(0), a)).collect(),
    );
    assert_eq!(nodes[&BrokerId(0)].role(), Role::Leader);
    // (An observer may first ask the other voter, which names the leader; it asks the
    // leader one fetch interval later.)
    let mut t = now;
    for _ in 0..2 {
        for id in [BrokerId(1), BrokerId(2)] {
            let out = nodes.get_mut(&id).unwrap().tick(t);
            deliver_all(&mut nodes, t, out.into_iter().map(|a| (id, a)).collect());
        }
        t = t.saturating_add(interval);
    }
    assert!(nodes.values().all(|n| n.leader() == Some(BrokerId(0))));
    (nodes, t)
}

/// Proposes on leader 0 at `t`, then lets voter 1 poll once (one fetch interval later):
/// the entry commits. Returns the time reached.
fn commit_one(nodes: &mut BTreeMap<BrokerId, RaftNode>, t: Instant) -> Instant {
    let (offset, out) = nodes
        .get_mut(&BrokerId(0))
        .unwrap()
        .propose(b"x".to_vec())
        .unwrap();
    deliver_all(
        nodes,
        t,
        out.into_iter().map(|a| (BrokerId(0), a)).collect(),
    );
    let t = t.saturating_add(RaftConfig::new(BTreeSet::new()).fetch_interval);
    let out = nodes.get_mut(&BrokerId(1)).unwrap().tick(t);
    deliver_all(
        nodes,
        t,
        out.into_iter().map(|a| (BrokerId(1), a)).collect(),
    );
    assert!(
        nodes[&BrokerId(0)].high_watermark() > offset,
        "committed on the leader"
    );
    t
}

#[test]
fn a_held_fetch_carries_a_commit_to_every_node_without_another_poll() {
    let (mut nodes, t) = elected_pair(Duration::from_millis(500), Instant(10_000_000_000));
    let t = commit_one(&mut nodes, t);
    // The observer did not poll: its held fetch was answered with the entry, and its next
    // one when the high watermark moved.
    let leader_hw = nodes[&BrokerId(0)].high_watermark();
    for id in [BrokerId(1), BrokerId(2)] {
        assert_eq!(
            nodes[&id].high_watermark(),
            leader_hw,
            "node {id:?} knows the commit"
        );
    }
    // Both fetchers wait at the leader again, answered (empty) when their time is up.
    let out = nodes
        .get_mut(&BrokerId(0))
        .unwrap()
        .tick(t.saturating_add(Duration::from_secs(1)));
    let answered = out
        .iter()
        .filter(|a| {
            matches!(
                a,
                Action::Send {
                    msg: Message::FetchResponse { .. },
                    ..
                }
            )
        })
        .count();
    assert_eq!(answered, 2, "both held fetches answered at their deadline");
}

#[test]
fn without_a_long_poll_followers_learn_of_a_commit_only_when_they_poll() {
    let (mut nodes, t) = elected_pair(Duration::ZERO, Instant(10_000_000_000));
    commit_one(&mut nodes, t);
    // Nothing was held, so nobody sent the observer the news.
    assert!(nodes[&BrokerId(2)].high_watermark() < nodes[&BrokerId(0)].high_watermark());
}
