//! A replica's role and epoch fence every follower append, truncation and high-watermark
//! move: only a fetch made to the leader the replica follows, in that epoch, changes it.
//! A fetcher of an earlier leader or epoch, or one still running once its broker leads the
//! partition, changes nothing (with disk latency the swarm found a fetcher appending to a
//! partition its broker already led, and moving its high watermark).
#![cfg(not(madsim))]
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use std::collections::BTreeSet;
use std::time::Duration;

use lode_broker::partition::FollowError;
use lode_broker::{Broker, BrokerConfig};
use lode_core::metadata::TopicFsync;
use lode_core::replication::ReplicationConfig;
use lode_env::Env;
use lode_proto::batch::RecordBatchBuilder;
use lode_proto::{BrokerId, Epoch, Offset};

/// One record at `base`, written in leader epoch `epoch`.
fn batch(base: i64, epoch: i32) -> Vec<u8> {
    let mut b = RecordBatchBuilder::new(Offset(base));
    b.push(None, Some(b"v"), &[], 0);
    let mut bytes = b.build();
    lode_proto::batch::set_partition_leader_epoch(&mut bytes, Epoch(epoch)).unwrap();
    bytes
}

#[tokio::test]
async fn only_the_followed_leader_in_its_epoch_changes_a_replica() {
    let dir = std::env::temp_dir().join(format!("lode-follower-fence-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = BrokerConfig::new(BrokerId(0), "127.0.0.1:0".parse().unwrap());
    let broker = Broker::start(config, Env::host(&dir).unwrap())
        .await
        .unwrap();
    broker
        .topics
        .create("t", 1, TopicFsync::Always)
        .await
        .unwrap();
    let p = broker.topics.partition("t", 0).await.unwrap();
    let (leader, epoch) = (BrokerId(1), Epoch(3));
    let fenced = |r: Result<(), FollowError>| matches!(r, Err(FollowError::Fenced { .. }));

    // A replica that follows nobody takes nothing.
    assert!(fenced(
        p.follow(leader, epoch, &batch(0, 3), Offset(1)).await
    ));
    p.become_follower(Some(leader), epoch).await;
    p.follow(leader, epoch, &batch(0, 3), Offset(1))
        .await
        .unwrap();
    assert_eq!(p.replica_position().await, (Offset(1), epoch));
    assert_eq!(p.high_watermark(), Offset(1));

    // Another epoch of the same leader, another leader of the same epoch: fenced.
    assert!(fenced(
        p.follow(leader, Epoch(2), &batch(1, 2), Offset(2)).await
    ));
    assert!(fenced(
        p.follow(BrokerId(2), epoch, &batch(1, 3), Offset(2)).await
    ));
    assert!(fenced(
        p.truncate_diverging(BrokerId(2), epoch, Epoch(0), Offset(0))
            .await
    ));
    assert_eq!(p.replica_position().await, (Offset(1), epoch));

    // Once it leads, the fetcher of its former leader changes nothing.
    p.become_leader(
        BrokerId(0),
        Epoch(4),
        vec![BrokerId(0), leader],
        BTreeSet::from([BrokerId(0)]),
        1,
        ReplicationConfig::new(Duration::from_secs(10), 1),
        broker.clock.now(),
    )
    .await;
    let hw = p.high_watermark();
    assert!(fenced(
        p.follow(leader, epoch, &batch(1, 3), Offset(5)).await
    ));
    assert!(fenced(
        p.truncate_diverging(leader, epoch, Epoch(0), Offset(0))
            .await
    ));
    assert_eq!(p.replica_position().await, (Offset(1), epoch));
    assert_eq!(
        p.high_watermark(),
        hw,
        "no high-watermark move from a fenced fetch"
    );
    assert_eq!(p.leading_epoch(), Some(Epoch(4)));

    broker.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
