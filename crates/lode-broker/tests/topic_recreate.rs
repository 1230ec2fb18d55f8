//! A topic deleted and created again at once under the same name gets directories of its
//! own. Partition directories are named `{topic}-{index}`, and deletion used to remove the
//! files in place: a creation of the same name made its files in the directory being
//! emptied, and the broker halted ("rename leader-epoch.checkpoint.tmp: No such file or
//! directory"), or the new topic opened what was left of the old one's data. Deletion now
//! renames each directory aside (`{topic}-{index}.{unique}-delete`) before removing it.
//!
//! Each test runs on the host's disk and on the simulated one (with latency, so that the
//! tasks interleave differently).
#![cfg(not(madsim))]
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lode_broker::partition::{AppendError, Partition};
use lode_broker::topics::CreateError;
use lode_broker::{Broker, BrokerConfig};
use lode_core::metadata::TopicFsync;
use lode_env::disk::Faults;
use lode_env::{Clock, Dir, Env, SimDisk};
use lode_proto::batch::RecordBatchBuilder;
use lode_proto::{BrokerId, Offset};
use lode_storage::LogError;

/// A batch whose key says which creation of the topic wrote it: `gen-NNNNNN`.
fn batch(generation: u32) -> Vec<u8> {
    let mut b = RecordBatchBuilder::new(Offset(0));
    let key = format!("gen-{generation:06}");
    b.push(Some(key.as_bytes()), Some(b"value"), &[], 0);
    b.build()
}

/// The generations whose records `data` holds, in order.
fn generations(data: &[u8]) -> Vec<u32> {
    data.windows(10)
        .filter(|w| w.starts_with(b"gen-"))
        .filter_map(|w| std::str::from_utf8(&w[4..]).ok()?.parse().ok())
        .collect()
}

/// Writes a batch of `generation` and waits until it is readable.
async fn write(p: &Partition, generation: u32) -> Result<(), AppendError> {
    let (info, _) = p.append(&mut batch(generation)).await?;
    p.wait_committed(info.last_offset, p.leader_epoch()).await;
    Ok(())
}

/// Everything readable in `p`.
async fn contents(p: &Partition) -> Result<Vec<u8>, LogError> {
    let start = p.log_start_offset().await;
    p.read(start, 1 << 20).await
}

/// Both disks: a fresh directory on the host's, and a simulated one with latency.
fn envs(name: &str) -> Vec<(&'static str, Env, Option<std::path::PathBuf>)> {
    let dir = std::env::temp_dir().join(format!("lode-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let disk = SimDisk::new("n0", 7);
    disk.set_faults(Faults {
        latency: lode_env::disk::Latency::uniform(Duration::ZERO, Duration::from_micros(300)),
        ..Faults::default()
    });
    vec![
        ("host disk", Env::host(&dir).unwrap(), Some(dir)),
        (
            "simulated disk",
            Env::simulated(&disk, Clock::system()),
            None,
        ),
    ]
}

async fn start(env: &Env) -> Arc<Broker> {
    let config = BrokerConfig::new(BrokerId(0), "127.0.0.1:0".parse().unwrap());
    Broker::start(config, env.clone()).await.unwrap()
}

/// The directories renamed aside and not removed yet.
async fn aside(root: &Dir) -> Vec<String> {
    let names = root.list().await.unwrap();
    names
        .into_iter()
        .filter(|n| n.ends_with("-delete"))
        .collect()
}

/// Waits until the background removal of deleted partitions is done.
async fn until_removed(root: &Dir, disk: &str) {
    for _ in 0..1000 {
        if aside(root).await.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{disk}: directories left: {:?}", aside(root).await);
}

/// The partition directories of `topic` in `root`.
async fn partition_dirs(root: &Dir, topic: &str) -> Vec<String> {
    let names = root.list().await.unwrap();
    names
        .into_iter()
        .filter(|n| {
            n.strip_prefix(topic)
                .and_then(|rest| rest.strip_prefix('-'))
                .is_some_and(|i| i.parse::<u32>().is_ok())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_created_again_at_once_is_new_and_empty() {
    for (disk, env, host_dir) in envs("recreate") {
        let broker = start(&env).await;
        let root = env.data_dir.clone();
        // The longest topic name: its directory set aside must still fit in a file name.
        let long = "x".repeat(249);
        for name in ["t", long.as_str()] {
            let mut ids = Vec::new();
            for generation in 0..40 {
                let t = broker
                    .topics
                    .create(name, 2, TopicFsync::Always)
                    .await
                    .unwrap_or_else(|e| panic!("{disk}: generation {generation}: {e}"));
                assert!(!ids.contains(&t.id));
                ids.push(t.id);
                for p in &t.partitions {
                    assert_eq!(p.high_watermark(), Offset(0), "{disk}: a new topic");
                    assert_eq!(
                        contents(p).await.unwrap(),
                        b"",
                        "{disk}: generation {generation}: the old data shows up"
                    );
                    write(p, generation).await.unwrap();
                    assert_eq!(generations(&contents(p).await.unwrap()), [generation]);
                }
                assert!(broker.topics.delete(name).await.unwrap());
                // Closed: what still holds the partition is refused, and no storage fault.
                let p = &t.partitions[0];
                assert!(matches!(contents(p).await, Err(LogError::Closed)));
                assert!(matches!(
                    write(p, generation).await,
                    Err(AppendError::Log(LogError::Closed))
                ));
            }
            let t = broker
                .topics
                .create(name, 2, TopicFsync::Always)
                .await
                .unwrap();
            write(&t.partitions[1], 1000).await.unwrap();
        }
        assert_eq!(broker.halt.reason(), None, "{disk}");
        until_removed(&root, disk).await;
        assert_eq!(partition_dirs(&root, "t").await, ["t-0", "t-1"], "{disk}");
        broker.shutdown().await;

        // What the next start finds: the last topics, with only their own data.
        let broker = start(&env).await;
        for name in ["t", long.as_str()] {
            let t = broker.topics.get(name).await.unwrap();
            assert_eq!(t.partitions.len(), 2);
            assert_eq!(contents(&t.partitions[0]).await.unwrap(), b"", "{disk}");
            let data = contents(&t.partitions[1]).await.unwrap();
            assert_eq!(generations(&data), [1000], "{disk}");
        }
        broker.shutdown().await;
        if let Some(dir) = host_dir {
            std::fs::remove_dir_all(dir).unwrap();
        }
    }
}

/// Creations and deletions of one name race on tasks, with writes and reads in between:
/// the broker never halts, no creation fails, and a partition only ever holds the records
/// of the creation that made it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creations_and_deletions_racing_never_mix_topics_or_halt() {
    const CREATIONS: u32 = 60;
    for (disk, env, host_dir) in envs("race") {
        let broker = start(&env).await;
        let root = env.data_dir.clone();
        let failures = Arc::new(Mutex::new(Vec::<String>::new()));
        let fail = {
            let failures = Arc::clone(&failures);
            move |what: String| failures.lock().unwrap().push(what)
        };
        let next = Arc::new(AtomicU32::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let mut creators = Vec::new();
        for _ in 0..2 {
            let (broker, next, fail) = (Arc::clone(&broker), Arc::clone(&next), fail.clone());
            creators.push(tokio::spawn(async move {
                for _ in 0..CREATIONS {
                    let t = match broker.topics.create("t", 2, TopicFsync::Always).await {
                        Ok(t) => t,
                        Err(CreateError::Exists(_)) => {
                            tokio::task::yield_now().await;
                            continue;
                        }
                        Err(e) => {
                            fail(format!("create: {e}"));
                            continue;
                        }
                    };
                    let generation = next.fetch_add(1, Ordering::Relaxed);
                    for p in &t.partitions {
                        // Closed: another task deleted the topic meanwhile.
                        match write(p, generation).await {
                            Ok(()) | Err(AppendError::Log(LogError::Closed)) => {}
                            Err(e) => fail(format!("write: {e}")),
                        }
                        match contents(p).await {
                            Ok(data) => {
                                let seen = generations(&data);
                                if seen.iter().any(|g| *g != generation) {
                                    fail(format!("generation {generation} reads {seen:?}"));
                                }
                            }
                            Err(LogError::Closed) => {}
                            Err(e) => fail(format!("read: {e}")),
                        }
                    }
                }
            }));
        }
        let mut others = Vec::new();
        for _ in 0..2 {
            let (broker, done, fail) = (Arc::clone(&broker), Arc::clone(&done), fail.clone());
            others.push(tokio::spawn(async move {
                while !done.load(Ordering::Relaxed) {
                    if let Err(e) = broker.topics.delete("t").await {
                        fail(format!("delete: {e}"));
                    }
                    tokio::time::sleep(Duration::from_micros(500)).await;
                }
            }));
        }
        {
            // Readers of whatever topic is there: one partition, one creation's records.
            let (broker, done, fail) = (Arc::clone(&broker), Arc::clone(&done), fail.clone());
            others.push(tokio::spawn(async move {
                while !done.load(Ordering::Relaxed) {
                    if let Some(t) = broker.topics.get("t").await {
                        for p in &t.partitions {
                            match contents(p).await {
                                Ok(data) => {
                                    let mut seen = generations(&data);
                                    seen.dedup();
                                    if seen.len() > 1 {
                                        fail(format!("one partition holds {seen:?}"));
                                    }
                                }
                                Err(LogError::Closed) => {}
                                Err(e) => fail(format!("read: {e}")),
                            }
                        }
                    }
                    tokio::task::yield_now().await;
                }
            }));
        }
        for c in creators {
            c.await.unwrap();
        }
        done.store(true, Ordering::Relaxed);
        for o in others {
            o.await.unwrap();
        }
        let failures = failures.lock().unwrap().clone();
        assert!(failures.is_empty(), "{disk}: {failures:?}");
        assert_eq!(broker.halt.reason(), None, "{disk}");
        assert!(
            next.load(Ordering::Relaxed) >= CREATIONS,
            "{disk}: creations and deletions did alternate"
        );

        // Once more in peace: a fresh topic, empty, writable and readable.
        broker.topics.delete("t").await.unwrap();
        let t = broker
            .topics
            .create("t", 2, TopicFsync::Always)
            .await
            .unwrap();
        for p in &t.partitions {
            assert_eq!(contents(p).await.unwrap(), b"", "{disk}");
            write(p, 9999).await.unwrap();
            assert_eq!(generations(&contents(p).await.unwrap()), [9999], "{disk}");
        }
        until_removed(&root, disk).await;
        assert_eq!(partition_dirs(&root, "t").await, ["t-0", "t-1"], "{disk}");
        broker.shutdown().await;
        if let Some(dir) = host_dir {
            std::fs::remove_dir_all(dir).unwrap();
        }
    }
}
