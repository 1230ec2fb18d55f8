//! The controller quorum's real driver (`lode_broker::quorum`) on three simulated nodes:
//! simulated TCP, time and disks. A leader is elected; killing it (a power loss: unsynced
//! writes dropped) gets a new leader of a later epoch; the old one restarts from its disk and
//! follows. Every node applies the same committed entries, and the run is deterministic.
#![cfg(madsim)]
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lode_broker::quorum::{Committed, Quorum, QuorumConfig, QuorumStatus};
use lode_core::raft::{Entry, Role};
use lode_env::{Clock, Dir, SimDisk};
use lode_proto::{BrokerId, Offset};
use madsim::runtime::{Handle, Runtime};

#[derive(Default)]
struct Shared {
    status: BTreeMap<i32, QuorumStatus>,
    /// Per node: offset -> (epoch, data) of every entry it applied.
    applied: BTreeMap<i32, BTreeMap<Offset, Entry>>,
    violations: Vec<String>,
}

fn lock(s: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    s.lock().unwrap()
}

fn addr(i: i32) -> SocketAddr {
    format!("10.0.1.{}:9093", i + 1).parse().unwrap()
}

async fn node_main(id: i32, disk: SimDisk, shared: Arc<Mutex<Shared>>) {
    let voters: BTreeMap<BrokerId, SocketAddr> = (0..3).map(|i| (BrokerId(i), addr(i))).collect();
    let mut config = QuorumConfig::new(BrokerId(id), voters, addr(id));
    config.fetch_timeout = Duration::from_millis(500);
    let (quorum, mut committed) = Quorum::start(config, Dir::sim(&disk), Clock::system(), None)
        .await
        .unwrap();
    let s = Arc::clone(&shared);
    lode_env::task::spawn(async move {
        while let Some(c) = committed.recv().await {
            let mut g = lock(&s);
            let Shared {
                applied,
                violations,
                ..
            } = &mut *g;
            let mine = applied.entry(id).or_default();
            if let Committed::Entries(es) = c {
                for e in es {
                    if let Some(old) = mine.get(&e.offset) {
                        if old != &e {
                            violations
                                .push(format!("node {id} applied two entries at {:?}", e.offset));
                        }
                    }
                    mine.insert(e.offset, e);
                }
            }
        }
    });
    let mut n = 0_u32;
    loop {
        madsim::time::sleep(Duration::from_millis(50)).await;
        let st = quorum.status();
        lock(&shared).status.insert(id, st);
        if st.role == Role::Leader {
            n += 1;
            let _ = quorum.propose(format!("{id}:{n}").into_bytes()).await;
        }
    }
}

fn leader_of(shared: &Mutex<Shared>, alive: &[i32]) -> Option<(i32, QuorumStatus)> {
    let g = lock(shared);
    g.status
        .iter()
        .filter(|(id, s)| alive.contains(id) && s.role == Role::Leader)
        .max_by_key(|(_, s)| s.epoch)
        .map(|(id, s)| (*id, *s))
}

/// Runs the scenario; returns a fingerprint of what happened.
fn run(seed: u64) -> Vec<String> {
    let rt = Runtime::with_seed_and_config(seed, madsim::Config::default());
    rt.block_on(async move {
        let handle = Handle::current();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let mut nodes = Vec::new();
        let mut disks = Vec::new();
        for i in 0..3 {
            let disk = SimDisk::new(format!("controller-{i}"), seed + i as u64);
            let (d, s) = (disk.clone(), Arc::clone(&shared));
            let node = handle
                .create_node()
                .name(format!("controller-{i}"))
                .ip(addr(i).ip())
                .init(move || node_main(i, d.clone(), Arc::clone(&s)))
                .build();
            nodes.push(node);
            disks.push(disk);
        }
        let mut trace = Vec::new();
        let wait_leader = |alive: Vec<i32>, after: Option<lode_proto::Epoch>| {
            let shared = Arc::clone(&shared);
            async move {
                for _ in 0..400 {
                    madsim::time::sleep(Duration::from_millis(50)).await;
                    if let Some((id, st)) = leader_of(&shared, &alive) {
                        if after.is_none_or(|e| st.epoch > e) {
                            return (id, st);
                        }
                    }
                }
                panic!("seed {seed}: no leader among {alive:?} within 20 s");
            }
        };
        let (first, st) = wait_leader(vec![0, 1, 2], None).await;
        trace.push(format!("leader {first} epoch {}", st.epoch));
        madsim::time::sleep(Duration::from_secs(1)).await;

        // Power loss of the leader.
        handle.kill(nodes[first as usize].id());
        disks[first as usize].crash();
        lock(&shared).status.remove(&first);
        let alive: Vec<i32> = (0..3).filter(|i| *i != first).collect();
        let (second, st2) = wait_leader(alive, Some(st.epoch)).await;
        trace.push(format!("leader {second} epoch {}", st2.epoch));
        assert_ne!(second, first);

        // The old leader comes back and follows.
        handle.restart(nodes[first as usize].id());
        let mut rejoined = false;
        for _ in 0..200 {
            madsim::time::sleep(Duration::from_millis(50)).await;
            let g = lock(&shared);
            if let Some(s) = g.status.get(&first) {
                if s.role == Role::Follower && s.leader.is_some() && s.epoch >= st2.epoch {
                    rejoined = true;
                    break;
                }
            }
        }
        assert!(
            rejoined,
            "seed {seed}: the old leader did not rejoin as a follower"
        );
        madsim::time::sleep(Duration::from_secs(2)).await;

        let g = lock(&shared);
        assert!(g.violations.is_empty(), "seed {seed}: {:?}", g.violations);
        // Every node applied the same entry at every offset it applied.
        let mut all: BTreeMap<Offset, &Entry> = BTreeMap::new();
        for (id, m) in &g.applied {
            for (o, e) in m {
                if let Some(other) = all.insert(*o, e) {
                    assert_eq!(other, e, "seed {seed}: node {id} differs at {o:?}");
                }
            }
        }
        // Entries of both leaders were committed, and the restarted node caught up.
        let proposals = |leader: i32| {
            all.values()
                .filter(|e| e.data.starts_with(format!("{leader}:").as_bytes()))
                .count()
        };
        assert!(proposals(first) > 0 && proposals(second) > 0, "seed {seed}");
        let longest = g.applied.values().map(BTreeMap::len).max().unwrap_or(0);
        let restarted = g.applied.get(&first).map_or(0, BTreeMap::len);
        assert!(
            restarted + 60 >= longest,
            "seed {seed}: restarted node applied {restarted} of {longest}"
        );
        trace.push(format!("committed {}", all.len()));
        for (o, e) in &all {
            trace.push(format!(
                "{o:?} {:?} {}",
                e.epoch,
                String::from_utf8_lossy(&e.data)
            ));
        }
        for n in &nodes {
            handle.kill(n.id());
        }
        trace
    })
}

#[test]
fn a_killed_leader_is_replaced_and_rejoins_as_a_follower() {
    for seed in 0..8 {
        let trace = run(seed);
        assert!(trace.len() > 3, "seed {seed}: {trace:?}");
    }
}

#[test]
fn the_same_seed_gives_the_same_history() {
    let a = run(42);
    if std::env::var_os("LODE_TRACE").is_some() {
        eprintln!("{}", a.join("\n"));
    }
    assert_eq!(a, run(42));
}
