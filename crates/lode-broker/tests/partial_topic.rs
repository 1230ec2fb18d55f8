//! A topic whose creation was cut short (a crash or a storage fault while its partition
//! directories were being made) opens with only its first partitions; `complete` adds the
//! rest. Without it a restarted broker never hosted them, and the partitions' ISRs never
//! got it back (found by the simulator, seed 3638 of the swarm with several topics).
#![cfg(not(madsim))]
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use lode_broker::{Broker, BrokerConfig};
use lode_core::metadata::TopicFsync;
use lode_env::Env;
use lode_proto::BrokerId;

#[tokio::test]
async fn a_topic_cut_short_is_completed() {
    let dir = std::env::temp_dir().join(format!("lode-partial-topic-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = || BrokerConfig::new(BrokerId(0), "127.0.0.1:0".parse().unwrap());

    let broker = Broker::start(config(), Env::host(&dir).unwrap())
        .await
        .unwrap();
    let made = broker
        .topics
        .create("orders", 4, TopicFsync::Always)
        .await
        .unwrap();
    let id = made.id;
    broker.shutdown().await;
    // As if the broker had died after making the first two directories.
    let root = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.join("orders-0").is_dir())
        .unwrap_or_else(|| dir.clone());
    for index in [2, 3] {
        std::fs::remove_dir_all(root.join(format!("orders-{index}"))).unwrap();
    }

    let broker = Broker::start(config(), Env::host(&dir).unwrap())
        .await
        .unwrap();
    let cut = broker.topics.get("orders").await.unwrap();
    assert_eq!(cut.partitions.len(), 2, "the directories left are opened");
    assert_eq!(cut.id, id);
    let added = broker
        .topics
        .complete("orders", 4, TopicFsync::Always)
        .await
        .unwrap();
    assert_eq!(added, 2);
    let t = broker.topics.get("orders").await.unwrap();
    assert_eq!(t.partitions.len(), 4);
    assert_eq!(t.id, id, "the topic keeps its id");
    assert!(broker.topics.partition("orders", 3).await.is_some());
    // Complete already: nothing to add.
    assert_eq!(
        broker
            .topics
            .complete("orders", 4, TopicFsync::Always)
            .await
            .unwrap(),
        0
    );
    broker.shutdown().await;

    // The next start finds all four.
    let broker = Broker::start(config(), Env::host(&dir).unwrap())
        .await
        .unwrap();
    assert_eq!(
        broker.topics.get("orders").await.unwrap().partitions.len(),
        4
    );
    broker.shutdown().await;
    std::fs::remove_dir_all(&dir).unwrap();
}
