//! The fault catalogue as named, scripted scenarios: each sets up the situation a known
//! failure needed (in Kafka or elsewhere) and runs the full chaos checks over it. Faults
//! name brokers by role (`replica-K` is partition 0's K-th replica; `replica-0` leads first),
//! so a scenario means the same thing whatever layout the seed gives.
//!
//! Every scenario passes on lode; each planted bug fails the scenario made for it (see
//! [`Scenario::catches`]).

use std::collections::BTreeSet;

use crate::chaos::{Fsync, Params, Planted, Schedule};

/// A named scenario.
#[derive(Clone, Copy, Debug)]
pub struct Scenario {
    /// Its name.
    pub name: &'static str,
    /// What it reproduces.
    pub about: &'static str,
    /// Brokers.
    brokers: i32,
    /// Replication factor and min ISR of the topic.
    rf_min_isr: (i16, i32),
    /// Durability policy.
    fsync: Fsync,
    /// How long the workload runs, ms.
    duration_ms: u64,
    /// The brokers' session timeout, ms (1500 in the swarm).
    session_timeout_ms: u64,
    /// Members of the consumer group.
    group_members: u32,
    /// The schedule, one `AT_MS FAULT` per line.
    schedule: &'static str,
    /// The planted bug this scenario is made to catch, if any.
    pub catches: Option<Planted>,
    /// Controller voters: brokers `0..voters` (every broker when 0).
    voters: i32,
}

/// Every scenario.
pub const ALL: [Scenario; 17] = [
    Scenario {
        name: "isr-of-one",
        about: "Jepsen 2013: both followers drop out until ISR = {leader}, then the leader is \
                isolated; with min ISR 2 acks=all is refused (NOT_ENOUGH_REPLICAS) and nothing \
                acknowledged is lost",
        brokers: 5,
        rf_min_isr: (3, 2),
        fsync: Fsync::Always,
        duration_ms: 12_000,
        session_timeout_ms: 1_500,
        group_members: 0,
        schedule: "1000 pause replica-1\n1000 pause replica-2\n5500 isolate replica-0\n\
                   7500 resume replica-1\n7500 resume replica-2\n8500 heal\n",
        voters: 0,
        catches: Some(Planted::HwBelowMinIsr),
    },
    Scenario {
        name: "hw-truncate-elect",
        about: "KAFKA-1211 / KIP-101: a follower restarts (its high watermark a fetch behind), \
                then the leader dies and the follower is elected; what it had must survive",
        brokers: 3,
        rf_min_isr: (2, 1),
        fsync: Fsync::Always,
        duration_ms: 10_000,
        session_timeout_ms: 1_500,
        group_members: 0,
        schedule: "2000 crash replica-1\n2300 restart replica-1\n3300 crash replica-0\n\
                   7000 restart replica-0\n",
        voters: 0,
        catches: Some(Planted::TruncateToHw),
    },
    Scenario {
        name: "double-crash-diverge",
        about: "KIP-101 #2: two replicas lose power one after the other, the stale one comes \
                back first and takes writes, then the other; logs must match",
        brokers: 5,
        rf_min_isr: (3, 1),
        fsync: Fsync::Always,
        duration_ms: 12_000,
        session_timeout_ms: 1_500,
        group_members: 0,
        schedule: "2000 power-loss replica-1\n2100 power-loss replica-0\n3500 restart replica-1\n\
                   6500 restart replica-0\n",
        voters: 0,
        catches: None,
    },
    Scenario {
        name: "fast-failover",
        about: "KAFKA-6361 / KIP-279: leadership moves three times within a follower's fetch \
                interval (clean stops hand leadership over at once)",
        brokers: 5,
        rf_min_isr: (3, 2),
        fsync: Fsync::Always,
        duration_ms: 10_000,
        session_timeout_ms: 1_500,
        group_members: 0,
        schedule: "2000 stop leader\n2250 restart last\n2300 stop leader\n2550 restart last\n\
                   2600 stop leader\n2850 restart last\n",
        voters: 0,
        catches: None,
    },
    Scenario {
        name: "lagging-hw-expand",
        about: "KAFKA-7128: a new leader's high watermark lags its log; a returning follower \
                reaches the high watermark but not the epoch's start, then the leader dies \
                (the follower pauses first, so the high watermark stalls at its log end while \
                the others append on)",
        brokers: 5,
        rf_min_isr: (3, 2),
        fsync: Fsync::Always,
        duration_ms: 16_000,
        session_timeout_ms: 1_500,
        group_members: 0,
        schedule: "3000 pause replica-2\n4000 crash replica-0\n6500 resume replica-2\n\
                   9000 crash replica-1\n10500 restart replica-0\n11000 restart replica-1\n",
        voters: 0,
        catches: Some(Planted::IsrWithoutEpochStart),
    },
    Scenario {
        name: "stale-alterpartition",
        about: "KAFKA-14139 / KIP-903: the leader's request to re-admit a follower is held on \
                its way while the follower is stopped, gets a new disk and registers again; \
                the stale request must be refused, or the empty follower joins the ISR and leads",
        brokers: 5,
        rf_min_isr: (3, 2),
        fsync: Fsync::Always,
        duration_ms: 17_000,
        session_timeout_ms: 8_000,
        group_members: 0,
        schedule: "1000 pause replica-1\n4600 cut-one-way replica-0 controller\n4600 resume replica-1\n\
                   4900 stop replica-1\n5200 wipe replica-1\n5200 cut replica-1 replica-0\n\
                   5300 restart replica-1\n8500 uncut replica-0 controller\n11500 stop replica-0\n\
                   12000 stop replica-2\n13500 restart replica-0\n13500 restart replica-2\n13500 heal\n",
        voters: 0,
        catches: Some(Planted::StaleAlterPartition),
    },
    Scenario {
        name: "fenced-readd",
        about: "KAFKA-13916 / KIP-841: the controller fences a follower (its heartbeats cut) \
                while it still fetches from the leader; it must not return to the ISR fenced",
        brokers: 5,
        rf_min_isr: (3, 2),
        fsync: Fsync::Always,
        duration_ms: 12_000,
        session_timeout_ms: 1_500,
        group_members: 0,
        schedule: "1000 cut replica-1 controller\n7000 heal\n",
        voters: 0,
        catches: None,
    },
    Scenario {
        name: "last-replica-standing",
        about: "KIP-966: the followers drop out one after the other (the second joins the ELR), \
                the leader loses power, the network heals; only ISR or ELR members may lead",
        brokers: 5,
        rf_min_isr: (3, 2),
        fsync: Fsync::Always,
        duration_ms: 14_000,
        session_timeout_ms: 1_500,
        group_members: 0,
        schedule: "1000 partition replica-1\n4500 partition replica-2\n8500 power-loss replica-0\n\
                   9000 heal\n10000 restart replica-0\n",
        voters: 0,
        catches: Some(Planted::ElectOutsideIsr),
    },
    Scenario {
        name: "correlated-power-loss",
        about: "every replica loses power at once: under fsync=always nothing acknowledged is \
                lost (the loss fsync=interval allows is reported, not hidden)",
        brokers: 3,
        rf_min_isr: (3, 2),
        fsync: Fsync::Always,
        duration_ms: 10_000,
        session_timeout_ms: 1_500,
        group_members: 0,
        schedule: "4000 power-loss 0\n4000 power-loss 1\n4000 power-loss 2\n5000 restart 0\n\
                   5000 restart 1\n5000 restart 2\n",
        voters: 0,
        catches: Some(Planted::AckBeforeSync),
    },
    Scenario {
        name: "zombie-leader",
        about: "the leader is cut from the controller and its followers but not from clients: \
                it must not acknowledge acks=all, and consumers must not see its tail",
        brokers: 3,
        rf_min_isr: (3, 2),
        fsync: Fsync::Always,
        duration_ms: 12_000,
        session_timeout_ms: 1_500,
        group_members: 0,
        schedule: "3000 partition replica-0\n9000 heal\n",
        voters: 0,
        catches: Some(Planted::ReadAboveHw),
    },
    Scenario {
        name: "controller-failover-mid-alter",
        about: "the active controller dies while ISR changes (a shrink, then an expansion) are \
                in flight",
        brokers: 3,
        rf_min_isr: (3, 2),
        fsync: Fsync::Always,
        duration_ms: 12_000,
        session_timeout_ms: 1_500,
        group_members: 0,
        schedule: "1000 pause replica-2\n4000 crash controller\n4500 restart last\n\
                   6000 resume replica-2\n6100 crash controller\n6600 restart last\n",
        voters: 0,
        catches: None,
    },
    Scenario {
        name: "minority-corruption",
        about: "Jepsen NATS 2025: a bit flips in one follower's segment; it restarts and may \
                be elected; committed records must survive",
        brokers: 3,
        rf_min_isr: (3, 2),
        fsync: Fsync::Always,
        duration_ms: 12_000,
        session_timeout_ms: 1_500,
        group_members: 0,
        schedule: "5000 corrupt replica-1\n5100 crash replica-1\n5500 restart replica-1\n\
                   7000 crash replica-0\n9000 restart replica-0\n",
        voters: 0,
        catches: None,
    },
    Scenario {
        name: "asymmetric-partitions",
        about: "one-way link cuts: the leader cannot reach a follower, a follower cannot reach \
                the controller, then the reverse",
        brokers: 5,
        rf_min_isr: (3, 2),
        fsync: Fsync::Always,
        duration_ms: 14_000,
        session_timeout_ms: 1_500,
        group_members: 0,
        schedule: "2000 cut-one-way replica-0 replica-1\n4000 cut-one-way replica-2 controller\n\
                   8000 heal\n9000 cut-one-way replica-1 leader\n9000 cut-one-way controller replica-2\n\
                   12000 heal\n",
        voters: 0,
        catches: None,
    },
    Scenario {
        name: "clock-skew",
        about: "clocks run 10 % fast and slow on different replicas and wall clocks jump, \
                skewing replica.lag.time.max.ms and session timers",
        brokers: 3,
        rf_min_isr: (3, 2),
        fsync: Fsync::Always,
        duration_ms: 12_000,
        session_timeout_ms: 1_500,
        group_members: 0,
        schedule: "1000 skew replica-0 0 100000\n1000 skew replica-1 -5000 -100000\n\
                   3000 skew replica-2 30000 50000\n6000 crash replica-0\n6500 restart replica-0\n\
                   8000 skew replica-0 -20000 -50000\n",
        voters: 0,
        catches: None,
    },
    Scenario {
        name: "offsets-truncation",
        about: "a group coordinator is cut from the other brokers and the controller, not from \
                its members, who keep committing; a new leader of the offsets partition takes \
                over and the old one truncates: no acknowledged commit may be lost",
        brokers: 3,
        rf_min_isr: (3, 2),
        fsync: Fsync::Always,
        duration_ms: 16_000,
        session_timeout_ms: 1_500,
        group_members: 2,
        schedule: "4000 partition coordinator\n10000 heal\n",
        voters: 0,
        catches: Some(Planted::CommitBeforeReplicated),
    },
    Scenario {
        name: "fsync-failure",
        about: "PostgreSQL's fsyncgate (2018) and Rebello et al., ATC 2020: the leader is alone \
                in its ISR when its syncs fail; a failed sync may have dropped what it \
                covered, so the log must fail (the broker halts and recovers), never \
                acknowledge it",
        brokers: 5,
        rf_min_isr: (3, 1),
        fsync: Fsync::Always,
        duration_ms: 12_000,
        session_timeout_ms: 1_500,
        group_members: 0,
        schedule: "1000 pause replica-1\n1000 pause replica-2\n4000 sync-errors replica-0 100\n\
                   6000 disk-ok replica-0\n7000 crash replica-0\n7500 restart replica-0\n\
                   8500 resume replica-1\n8500 resume replica-2\n",
        voters: 0,
        catches: Some(Planted::IgnoreSyncFailure),
    },
    Scenario {
        name: "unregistered-stop",
        about: "KIP-966's clean-shutdown marker (swarm seed 208257): the lone controller voter,                 isolated, fences the others and is left the only ISR member of an                 fsync=interval topic; it stops cleanly (ELR), restarts, and is stopped again                 before it has elected itself and registered; its next start must still count                 as clean, or the topic stays offline for good",
        brokers: 3,
        rf_min_isr: (3, 1),
        fsync: Fsync::Interval,
        duration_ms: 12_000,
        session_timeout_ms: 1_500,
        group_members: 0,
        schedule: "1400 isolate controller\n2900 stop last\n6900 restart last\n\
                   7000 stop last\n9600 restart last\n",
        catches: Some(Planted::CleanMarkerDropped),
        voters: 1,
    },
];

impl Scenario {
    /// The scenario called `name`.
    #[must_use]
    pub fn named(name: &str) -> Option<Scenario> {
        ALL.iter().find(|s| s.name == name).copied()
    }

    /// Its parameters under `seed` (which drives madsim's randomness) and a planted bug.
    #[must_use]
    pub fn params(&self, seed: u64, planted: Option<Planted>) -> Params {
        let (replication_factor, min_isr) = self.rf_min_isr;
        Params {
            seed,
            brokers: self.brokers,
            voters: match self.voters {
                0 => (0..self.brokers).collect(),
                n => (0..n).collect(),
            },
            topics: vec![crate::chaos::TopicSpec {
                partitions: 1,
                fsync: self.fsync,
            }],
            replication_factor,
            min_isr,
            producers: 2,
            acks_one: BTreeSet::new(),
            idempotent: BTreeSet::from([1]),
            consumers: 1,
            group_members: self.group_members,
            duration_ms: self.duration_ms,
            session_timeout_ms: self.session_timeout_ms,
            planted,
            // A scenario's faults are its schedule alone, on instant disks.
            mix: crate::chaos::Mix::default(),
            disks: vec![crate::chaos::DiskSpeed::default(); self.brokers as usize],
            churn: false,
            segment_bytes_max: None,
            key_bytes: 0,
        }
    }

    /// Its schedule.
    ///
    /// # Panics
    /// If the schedule text is malformed (a test checks every one parses).
    #[must_use]
    pub fn schedule(&self) -> Schedule {
        #[allow(clippy::expect_used)] // constant text, checked by a test
        self.schedule.parse().expect("a scenario's schedule parses")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_schedule_parses_and_prints_back() {
        for s in ALL {
            let schedule: Schedule = s.schedule.parse().unwrap();
            assert!(!schedule.0.is_empty(), "{}", s.name);
            assert_eq!(schedule.to_string().parse::<Schedule>().unwrap(), schedule);
        }
    }
}
