//! Random schedules against the controller, with a model of the partitions' data so that
//! the checkers can see what a metadata rule is for: the records a leader committed.
//!
//! The model: each broker holds, per partition, a log of leader epochs (one per record). The
//! leader appends; followers copy a prefix of the leader's log (truncating where they
//! diverge); the leader advances the committed prefix to the shortest common prefix over
//! its *maximal* ISR (committed ISR plus the additions of its in-flight `AlterPartition`,
//! KIP-497) while the ISR reaches min ISR (KIP-966 strict min ISR). Metadata reaches
//! brokers at once, but `AlterPartition` requests sit in the network (one per partition,
//! as Kafka's `AlterPartitionManager` sends) and arrive late: by then the leader may have
//! learned a newer partition epoch, dropped the pending addition and committed without
//! that follower. Crashes lose an arbitrary tail and the clean-shutdown marker; clean stops
//! go through controlled shutdown and lose nothing.
//!
//! After every step: [`check_invariants`], [`EpochHistory::observe`], and the data
//! invariant (reference invariant 3): every running member of a partition's ISR or ELR
//! holds the committed prefix, unless an unclean election the topic allows reset it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use lode_proto::{BrokerId, Instant, Offset, PartitionId};

use super::*;

/// xorshift64*: a seeded, dependency-free PRNG for the schedules.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> XorShift {
        XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> Option<T> {
        (!items.is_empty()).then(|| items[self.below(items.len() as u64) as usize])
    }
}

type Key = (TopicId, PartitionId);
/// The leader epoch of each record.
type Log = Vec<i32>;

fn common_prefix(a: &[i32], b: &[i32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[derive(Default)]
struct Broker {
    up: bool,
    clean_shutdown_epoch: Option<BrokerEpoch>,
    logs: BTreeMap<Key, Log>,
}

struct Sim {
    rng: XorShift,
    config: ControllerConfig,
    ctl: Controller,
    state: MetadataState,
    offset: i64,
    now: Instant,
    history: EpochHistory,
    brokers: BTreeMap<BrokerId, Broker>,
    committed: BTreeMap<Key, Log>,
    inflight: BTreeMap<Key, AlterPartitionRequest>,
    next_id: u64,
    verbose: bool,
}

const BROKERS: i32 = 5;

impl Sim {
    fn new(config: ControllerConfig, seed: u64, verbose: bool) -> Sim {
        let mut ctl = Controller::new(config.clone());
        ctl.activate(&MetadataState::new(), Instant(0));
        let mut sim = Sim {
            rng: XorShift::new(seed),
            config,
            ctl,
            state: MetadataState::new(),
            offset: 0,
            now: Instant(0),
            history: EpochHistory::new(),
            brokers: (1..=BROKERS)
                .map(|i| (BrokerId(i), Broker::default()))
                .collect(),
            committed: BTreeMap::new(),
            inflight: BTreeMap::new(),
            next_id: 1,
            verbose,
        };
        for id in 1..=BROKERS {
            sim.restart(BrokerId(id));
            sim.heartbeat(BrokerId(id), true);
        }
        sim
    }

    fn fresh_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn commit(&mut self, records: Vec<MetadataRecord>) {
        for r in &records {
            if self.verbose {
                eprintln!("    {r:?}");
            }
            // An unclean election the topic allows may lose committed records: the exemption
            // is recorded by cutting the committed prefix to what the new leader holds.
            if let MetadataRecord::Partition {
                topic,
                partition,
                state,
            } = r
            {
                let allowed = self
                    .state
                    .topic(*topic)
                    .is_some_and(|t| t.config.unclean_leader_election);
                let old_leader = self.state.partition(*topic, *partition).map(|p| p.leader);
                if let (true, true, Some(leader)) = (
                    allowed && state.elected_unclean,
                    old_leader != Some(state.leader),
                    state.leader,
                ) {
                    let key = (*topic, *partition);
                    let log = self.log(leader, key).clone();
                    let committed = self.committed.entry(key).or_default();
                    committed.truncate(common_prefix(committed, &log));
                }
            }
            self.state.apply(Offset(self.offset), r).unwrap();
            self.offset += 1;
        }
    }

    fn log(&self, id: BrokerId, key: Key) -> &Log {
        static EMPTY: Log = Vec::new();
        self.brokers[&id].logs.get(&key).unwrap_or(&EMPTY)
    }

    fn running(&self, id: BrokerId) -> bool {
        self.brokers[&id].up
    }

    fn epoch(&self, id: BrokerId) -> BrokerEpoch {
        self.state.broker(id).unwrap().epoch
    }

    fn heartbeat(&mut self, id: BrokerId, caught_up: bool) {
        let req = HeartbeatRequest {
            id,
            epoch: self.epoch(id),
            caught_up,
            want_shutdown: false,
        };
        let records = self.ctl.heartbeat(&self.state, &req, self.now).unwrap();
        self.commit(records);
    }

    fn restart(&mut self, id: BrokerId) {
        let req = BrokerRegistrationRequest {
            id,
            incarnation: self.fresh_id(),
            host: "localhost".into(),
            port: 9092,
            control_port: 9093,
            clean_shutdown_epoch: self.brokers[&id].clean_shutdown_epoch,
            log_dir_id: u64::from(id.0.unsigned_abs()),
        };
        // Rejected while the old process's session lives: the process keeps retrying.
        if let Ok(records) = self.ctl.register_broker(&self.state, &req, self.now) {
            self.commit(records);
            let broker = self.brokers.get_mut(&id).unwrap();
            broker.up = true;
            broker.clean_shutdown_epoch = None;
        }
    }

    /// A crash: under `fsync=interval` an arbitrary tail of each log is lost; under
    /// `fsync=always` the model's log is what was synced, and survives.
    fn crash(&mut self, id: BrokerId) {
        let lengths: Vec<u64> = self.brokers[&id]
            .logs
            .iter()
            .map(|(key, l)| {
                let synced = self
                    .state
                    .topic(key.0)
                    .is_some_and(|t| t.config.fsync == TopicFsync::Always);
                if synced {
                    l.len() as u64
                } else {
                    self.rng.below(l.len() as u64 + 1)
                }
            })
            .collect();
        let broker = self.brokers.get_mut(&id).unwrap();
        broker.up = false;
        broker.clean_shutdown_epoch = None;
        for (log, len) in broker.logs.values_mut().zip(lengths) {
            log.truncate(len as usize);
        }
    }

    fn clean_stop(&mut self, id: BrokerId) {
        let req = HeartbeatRequest {
            id,
            epoch: self.epoch(id),
            caught_up: true,
            want_shutdown: true,
        };
        for _ in 0..2 {
            let records = self.ctl.heartbeat(&self.state, &req, self.now).unwrap();
            self.commit(records);
        }
        let broker = self.brokers.get_mut(&id).unwrap();
        broker.up = false;
        broker.clean_shutdown_epoch = Some(req.epoch);
    }

    fn topic_names(&self) -> Vec<&'static str> {
        ["t0", "t1", "t2", "t3"]
            .into_iter()
            .filter(|n| self.state.topic_id(n).is_some())
            .collect()
    }

    fn create_topic(&mut self) {
        let name = ["t0", "t1", "t2", "t3"][self.rng.below(4) as usize];
        let rf = 1 + self.rng.below(3) as i16;
        let req = CreateTopicRequest {
            name: name.into(),
            id: TopicId(u128::from(self.fresh_id())),
            partitions: 1 + self.rng.below(2) as i32,
            replication_factor: rf,
            min_insync_replicas: Some(1 + self.rng.below(rf as u64) as i32),
            unclean_leader_election: Some(self.rng.chance(20)),
            fsync: Some(if self.rng.chance(50) {
                TopicFsync::Always
            } else {
                TopicFsync::Interval
            }),
        };
        if let Ok(records) = self.ctl.create_topic(&self.state, &req) {
            self.commit(records);
        }
    }

    fn alter_config(&mut self, name: &str) {
        let Some(fsync) = self
            .state
            .topic_id(name)
            .and_then(|id| self.state.topic(id))
            .map(|t| t.config.fsync)
        else {
            return;
        };
        let config = TopicConfig {
            min_insync_replicas: 1 + self.rng.below(3) as i32,
            unclean_leader_election: self.rng.chance(20),
            fsync,
        };
        let records = self
            .ctl
            .alter_topic_config(&self.state, name, config)
            .unwrap();
        self.commit(records);
    }

    /// The partition's leader, if it is running.
    fn leader(&self, key: Key) -> Option<(BrokerId, PartitionState)> {
        let p = self.state.partition(key.0, key.1)?;
        let leader = p.leader.filter(|l| self.running(*l))?;
        Some((leader, p.clone()))
    }

    fn append(&mut self, key: Key) {
        if let Some((leader, p)) = self.leader(key) {
            let broker = self.brokers.get_mut(&leader).unwrap();
            broker.logs.entry(key).or_default().push(p.leader_epoch.0);
        }
    }

    fn fetch(&mut self, key: Key) {
        let Some((leader, p)) = self.leader(key) else {
            return;
        };
        let followers: Vec<BrokerId> = p
            .replicas
            .iter()
            .copied()
            .filter(|r| *r != leader && self.running(*r))
            .collect();
        let Some(f) = self.rng.pick(&followers) else {
            return;
        };
        let source = self.log(leader, key).clone();
        let from = common_prefix(self.log(f, key), &source);
        let to = from + self.rng.below((source.len() - from) as u64 + 1) as usize;
        let broker = self.brokers.get_mut(&f).unwrap();
        broker.logs.insert(key, source[..to].to_vec());
    }

    fn maximal_isr(&self, p: &PartitionState, key: Key) -> BTreeSet<BrokerId> {
        let mut isr = p.isr.clone();
        if let Some(req) = self.inflight.get(&key) {
            if req.partition_epoch == p.partition_epoch && req.leader_epoch == p.leader_epoch {
                isr.extend(req.new_isr.iter().map(|m| m.id));
            }
        }
        isr
    }

    fn advance_hw(&mut self, key: Key) -> Result<(), String> {
        let Some((leader, p)) = self.leader(key) else {
            return Ok(());
        };
        let config = self.state.topic(key.0).unwrap().config;
        if p.isr.len() < p.effective_min_isr(&config) {
            return Ok(());
        }
        let log = self.log(leader, key).clone();
        let hw = self
            .maximal_isr(&p, key)
            .iter()
            .map(|m| common_prefix(self.log(*m, key), &log))
            .min()
            .unwrap_or(0);
        let committed = self.committed.entry(key).or_default();
        if !log.starts_with(committed) {
            return Err(format!(
                "leader {leader} of {key:?} lacks committed records"
            ));
        }
        if hw > committed.len() {
            *committed = log[..hw].to_vec();
        }
        Ok(())
    }

    /// The leader asks to drop lagging followers and add caught-up ones.
    fn send_alter_partition(&mut self, key: Key) {
        let Some((leader, p)) = self.leader(key) else {
            return;
        };
        if self.inflight.contains_key(&key) {
            return;
        }
        let log = self.log(leader, key).clone();
        let mut isr = p.isr.clone();
        for m in &p.isr {
            if *m != leader && self.log(*m, key) != &log && self.rng.chance(50) {
                isr.remove(m);
            }
        }
        for r in &p.replicas {
            if self.running(*r) && self.log(*r, key) == &log && self.rng.chance(70) {
                isr.insert(*r);
            }
        }
        if isr == p.isr {
            return;
        }
        let new_isr = isr
            .iter()
            .map(|&id| IsrMember {
                id,
                epoch: self.epoch(id),
            })
            .collect();
        let req = AlterPartitionRequest {
            broker_id: leader,
            broker_epoch: self.epoch(leader),
            topic: key.0,
            partition: key.1,
            leader_epoch: p.leader_epoch,
            partition_epoch: p.partition_epoch,
            new_isr,
        };
        self.inflight.insert(key, req);
    }

    fn deliver_alter_partition(&mut self) {
        let keys: Vec<Key> = self.inflight.keys().copied().collect();
        let Some(key) = self.rng.pick(&keys) else {
            return;
        };
        let req = self.inflight.remove(&key).unwrap();
        let result = self.ctl.alter_partition(&self.state, &req);
        if self.verbose {
            eprintln!("    {req:?} -> {result:?}");
        }
        if let Ok(records) = result {
            self.commit(records);
        }
    }

    fn step(&mut self) -> Result<(), String> {
        let ids: Vec<BrokerId> = self.brokers.keys().copied().collect();
        let id = self.rng.pick(&ids).unwrap();
        let up = self.running(id);
        let keys: Vec<Key> = self.state.partitions().map(|(t, p, _)| (t.id, p)).collect();
        let key = self.rng.pick(&keys);
        let names = self.topic_names();
        let op = self.rng.below(100);
        if self.verbose {
            eprintln!("  op {op} broker {id} partition {key:?}");
        }
        match (op, key) {
            (0..=24, _) if up => {
                let caught_up = self.rng.chance(85);
                self.heartbeat(id, caught_up);
            }
            (25..=36, _) => {
                self.now = self
                    .now
                    .saturating_add(Duration::from_millis(self.rng.below(4_000)));
                let records = self.ctl.tick(&self.state, self.now);
                self.commit(records);
            }
            (37..=39, _) if up => self.crash(id),
            (40..=41, _) if up => self.clean_stop(id),
            (42..=47, _) if !up => self.restart(id),
            (48..=51, _) => self.create_topic(),
            (52, _) => {
                if let Some(name) = self.rng.pick(&names) {
                    let records = self.ctl.delete_topic(&self.state, name).unwrap();
                    self.commit(records);
                }
            }
            (53, _) => {
                if let Some(name) = self.rng.pick(&names) {
                    self.alter_config(name);
                }
            }
            (54, _) => {
                self.ctl = Controller::new(self.config.clone());
                self.ctl.activate(&self.state, self.now);
            }
            (55..=64, Some(key)) => self.append(key),
            (65..=76, Some(key)) => self.fetch(key),
            (77..=84, Some(key)) => self.advance_hw(key)?,
            (85..=95, Some(key)) => self.send_alter_partition(key),
            (96..=99, _) => self.deliver_alter_partition(),
            _ => {}
        }
        Ok(())
    }

    fn check(&mut self) -> Result<(), String> {
        check_invariants(&self.state).map_err(|v| v.to_string())?;
        self.history
            .observe(&self.state)
            .map_err(|v| v.to_string())?;
        for (t, id, p) in self.state.partitions() {
            let key = (t.id, id);
            let Some(committed) = self.committed.get(&key) else {
                continue;
            };
            for m in p.isr.iter().chain(&p.elr) {
                if self.running(*m) && !self.log(*m, key).starts_with(committed) {
                    return Err(format!(
                        "{}-{id}: running ISR/ELR member {m} lacks committed records \
                         (has {:?}, committed {committed:?}; {p:?})",
                        t.name,
                        self.log(*m, key)
                    ));
                }
            }
        }
        Ok(())
    }
}

const STEPS: usize = 200;

/// Runs one schedule; the first broken invariant, with the step it broke at.
fn run(config: &ControllerConfig, seed: u64, verbose: bool) -> Result<(), String> {
    let mut sim = Sim::new(config.clone(), seed, verbose);
    for step in 0..STEPS {
        sim.step()
            .and_then(|()| sim.check())
            .map_err(|e| format!("seed {seed}, step {step}: {e}"))?;
    }
    Ok(())
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Runs schedules from `first` until one breaks an invariant: how many it took, and why.
fn schedules_until_violation(
    config: &ControllerConfig,
    first: u64,
    max: u64,
) -> Option<(u64, String)> {
    (first..first + max).find_map(|seed| {
        run(config, seed, false)
            .err()
            .map(|e| (seed - first + 1, e))
    })
}

/// `LODE_METADATA_SCHEDULES` and `LODE_METADATA_SEED` run more or other schedules;
/// `LODE_METADATA_TRACE=<seed>` prints one schedule step by step.
#[test]
fn correct_controller_passes_thousands_of_schedules() {
    let config = ControllerConfig::default();
    if let Some(seed) = std::env::var("LODE_METADATA_TRACE")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        run(&config, seed, true).unwrap();
    }
    let n = env_u64("LODE_METADATA_SCHEDULES", 10_000);
    let first = env_u64("LODE_METADATA_SEED", 0);
    if let Some((_, err)) = schedules_until_violation(&config, first, n) {
        panic!("{err}");
    }
    eprintln!("{n} schedules of {STEPS} steps: no violation");
}

#[cfg(feature = "planted-bugs")]
mod planted {
    use super::*;

    fn caught(bug: PlantedBug) {
        let config = ControllerConfig {
            planted: Some(bug),
            ..ControllerConfig::default()
        };
        let (n, err) = schedules_until_violation(&config, 0, 10_000)
            .unwrap_or_else(|| panic!("{bug:?} went unnoticed in 10000 schedules"));
        eprintln!("{bug:?} caught after {n} schedule(s): {err}");
    }

    #[test]
    fn elect_outside_isr_and_elr_is_caught() {
        caught(PlantedBug::ElectOutsideIsrAndElr);
    }

    #[test]
    fn accept_stale_partition_epoch_is_caught() {
        caught(PlantedBug::AcceptStalePartitionEpoch);
    }

    #[test]
    fn keep_fenced_in_isr_is_caught() {
        caught(PlantedBug::KeepFencedInIsr);
    }
}
