//! The Raft store on the simulated disk: random sequences of the core's persist actions
//! (votes, appends, truncations, snapshots) with power losses between them. After every
//! reopen the store must return exactly what was persisted: each persist is synced before
//! it returns. A torn tail is cut; a corrupt vote is an error, never a guess.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly
#![cfg(not(madsim))]

use lode_core::raft::{Durable, Entry, Persist, Snapshot};
use lode_env::{Dir, SimDisk};
use lode_proto::{BrokerId, Epoch, Offset};
use lode_storage::{RaftStore, RaftStoreError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn end(d: &Durable) -> Offset {
    d.snapshot
        .as_ref()
        .map_or(Offset(0), |s| s.end_offset)
        .add(d.entries.len() as i64)
}

/// Applies `p` to the model the way the store must.
fn model_apply(d: &mut Durable, p: &Persist) {
    if let Some((e, v)) = p.vote {
        d.epoch = e;
        d.voted_for = v;
    }
    if let Some(s) = &p.snapshot {
        d.entries.retain(|e| e.offset >= s.end_offset);
        d.snapshot = Some(s.clone());
    }
    if let Some(t) = p.truncate_from {
        d.entries.retain(|e| e.offset < t);
    }
    d.entries.extend(p.append.iter().cloned());
}

fn random_persist(rng: &mut StdRng, d: &Durable) -> Persist {
    let mut p = Persist::default();
    match rng.gen_range(0..10) {
        0..=1 => {
            p.vote = Some((
                Epoch(d.epoch.0 + rng.gen_range(0..2)),
                rng.gen_bool(0.5).then(|| BrokerId(rng.gen_range(0..3))),
            ));
        }
        2 => {
            let start = d.snapshot.as_ref().map_or(Offset(0), |s| s.end_offset);
            if end(d) > start {
                p.truncate_from = Some(Offset(rng.gen_range(start.0..end(d).0)));
            }
        }
        3 => {
            // A snapshot inside the log, or past its end (a follower catching up).
            let start = d.snapshot.as_ref().map_or(Offset(0), |s| s.end_offset);
            let to = Offset(rng.gen_range(start.0..=end(d).0 + 3));
            if to > start {
                p.snapshot = Some(Snapshot {
                    end_offset: to,
                    last_epoch: d.epoch,
                    data: vec![rng.gen(); rng.gen_range(0..100)],
                });
                if to > end(d) {
                    p.truncate_from = Some(to);
                }
            }
        }
        _ => {
            let mut at = end(d);
            if let Some(t) = p.truncate_from {
                at = t;
            }
            for _ in 0..rng.gen_range(1..5) {
                p.append.push(Entry {
                    offset: at,
                    epoch: d.epoch,
                    data: vec![rng.gen(); rng.gen_range(0..300)],
                });
                at = at.next();
            }
        }
    }
    p
}

#[test]
fn every_persist_survives_a_power_loss() {
    rt().block_on(async {
        for seed in 0..150 {
            let mut rng = StdRng::seed_from_u64(seed);
            let disk = SimDisk::new("raft", seed);
            let dir = Dir::sim(&disk);
            let (mut store, got) = RaftStore::open(dir.clone()).await.unwrap();
            let mut model = Durable::default();
            assert_eq!(got, model);
            for round in 0..6 {
                for _ in 0..rng.gen_range(0..40) {
                    let p = random_persist(&mut rng, &model);
                    store.persist(&p).await.unwrap();
                    model_apply(&mut model, &p);
                }
                disk.crash();
                let (s, got) = RaftStore::open(Dir::sim(&disk)).await.unwrap();
                assert_eq!(got, model, "seed {seed} round {round}");
                store = s;
            }
        }
    });
}

#[test]
fn a_torn_tail_is_cut_and_the_rest_kept() {
    rt().block_on(async {
        let disk = SimDisk::new("torn", 1);
        let (mut store, _) = RaftStore::open(Dir::sim(&disk)).await.unwrap();
        let entries: Vec<Entry> = (0..5)
            .map(|i| Entry {
                offset: Offset(i),
                epoch: Epoch(1),
                data: vec![i as u8; 50],
            })
            .collect();
        store
            .persist(&Persist {
                append: entries.clone(),
                ..Persist::default()
            })
            .await
            .unwrap();
        let len = disk.durable_contents("raft.log").unwrap().len() as u64;
        assert!(disk.corrupt_at("raft.log", len - 3, 0x10));
        let (mut store, got) = RaftStore::open(Dir::sim(&disk)).await.unwrap();
        assert_eq!(got.entries, entries[..4]);
        // Appending after the cut continues from there.
        store
            .persist(&Persist {
                append: vec![entries[4].clone()],
                ..Persist::default()
            })
            .await
            .unwrap();
        disk.crash();
        let (_, got) = RaftStore::open(Dir::sim(&disk)).await.unwrap();
        assert_eq!(got.entries, entries);
    });
}

#[test]
fn a_corrupt_vote_is_an_error_not_a_guess() {
    rt().block_on(async {
        let disk = SimDisk::new("vote", 2);
        let (mut store, _) = RaftStore::open(Dir::sim(&disk)).await.unwrap();
        store
            .persist(&Persist {
                vote: Some((Epoch(3), Some(BrokerId(1)))),
                ..Persist::default()
            })
            .await
            .unwrap();
        assert!(disk.corrupt("quorum-state").is_some());
        let err = RaftStore::open(Dir::sim(&disk)).await.unwrap_err();
        assert!(
            matches!(
                err,
                RaftStoreError::Corrupt {
                    file: "quorum-state",
                    ..
                }
            ),
            "{err}"
        );
    });
}
