//! ISR replication on three real brokers in combined mode, through the real client: every
//! record acknowledged with acks=all survives a power loss of the partition's leader, right
//! after the last acknowledgement, and is read back, in order, from the new leader.
#![cfg(madsim)]
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use lode_broker::BrokerConfig;
use lode_client::{Client, Consumer, Producer, ProducerConfig, Record};
use lode_proto::Offset;
use madsim::runtime::Runtime;

use lode_sim::cluster::{client_when_ready, Cluster};

const SUBNET: u8 = 4;

fn tweak(c: &mut BrokerConfig) {
    c.replica_lag_time_max = Duration::from_secs(3);
}

#[cfg(feature = "planted-bugs")]
fn tweak_planted(c: &mut BrokerConfig) {
    tweak(c);
    c.planted = Some(lode_broker::PlantedBug::AckOnLeaderSync);
}

/// Produces the numbers of `range` to partition 0 of `topic` with the default producer
/// (idempotent, acks=all) and waits until each is acknowledged.
async fn produce_numbers(client: &Arc<Client>, topic: &str, range: Range<u32>) {
    let producer = Producer::new(client.clone(), ProducerConfig::default())
        .await
        .unwrap();
    let mut deliveries = Vec::new();
    for i in range {
        let rec = Record {
            value: Some(i.to_be_bytes().to_vec()),
            partition: Some(0),
            ..Record::default()
        };
        deliveries.push(producer.send(topic, rec).await.unwrap());
    }
    producer.flush().await;
    for d in deliveries {
        d.await.expect("acks=all acknowledged");
    }
}

/// Reads partition 0 of `topic` from the beginning until `n` numbers came (or 100 polls).
async fn read_numbers(client: Arc<Client>, topic: &str, n: usize) -> Vec<u32> {
    let mut consumer = Consumer::new(client);
    consumer.assign(topic, 0, Offset(0));
    let mut values = Vec::new();
    for _ in 0..100 {
        for r in consumer.poll().await.unwrap() {
            values.push(u32::from_be_bytes(
                r.value.unwrap()[..4].try_into().unwrap(),
            ));
        }
        if values.len() >= n {
            break;
        }
    }
    values
}

async fn scenario(seed: u64) -> Vec<String> {
    scenario_with(seed, tweak).await
}

async fn scenario_with(seed: u64, tweak: fn(&mut BrokerConfig)) -> Vec<String> {
    let cluster = Cluster::start(seed, SUBNET, 3, tweak);
    let client_node = cluster.client_node();
    let bootstrap = cluster.bootstrap(0..3);
    let leader = client_node
        .spawn(async move {
            let client = client_when_ready(&bootstrap, 3).await;
            client.create_topic("acked", 1, 3).await.unwrap();
            client.metadata(None).await.unwrap();
            let leader = client.topic("acked").await.unwrap().partitions[0].leader;
            produce_numbers(&client, "acked", 0..100).await;
            // The leader dies right after the last acknowledgement, before followers have
            // a chance to fetch anything they did not have when it answered.
            leader
        })
        .await
        .unwrap();
    // Power loss of the leader: its unsynced writes are gone; the followers had synced.
    cluster.power_loss(leader);
    let rest = cluster.bootstrap((0..3).filter(|i| *i != leader));
    let (new_leader, values) = client_node
        .spawn(async move {
            let client = Client::connect(&rest, "sim-2").await.unwrap();
            let mut new_leader = -1;
            for _ in 0..200 {
                madsim::time::sleep(Duration::from_millis(100)).await;
                if client.metadata(None).await.is_ok() {
                    if let Ok(t) = client.topic("acked").await {
                        let l = t.partitions[0].leader;
                        if l >= 0 && l != leader {
                            new_leader = l;
                            break;
                        }
                    }
                }
            }
            assert!(new_leader >= 0, "no new leader");
            (new_leader, read_numbers(client, "acked", 100).await)
        })
        .await
        .unwrap();
    assert_eq!(
        values,
        (0..100).collect::<Vec<u32>>(),
        "seed {seed}: acknowledged records lost or reordered"
    );
    cluster.stop();
    vec![format!("leader {leader} -> {new_leader}")]
}

#[test]
fn acknowledged_records_survive_the_leaders_power_loss() {
    for seed in 0..3 {
        let rt = Runtime::with_seed_and_config(seed, madsim::Config::default());
        rt.block_on(scenario(seed));
    }
}

#[test]
fn same_seed_same_history() {
    Runtime::check_determinism(4, madsim::Config::default(), || scenario(4));
}

/// The check above must fire on a leader that acknowledges acks=all on its own sync.
#[cfg(feature = "planted-bugs")]
#[test]
fn a_leader_acking_on_its_own_sync_is_caught() {
    let caught = (0..10).find(|seed| {
        let rt = Runtime::with_seed_and_config(*seed, madsim::Config::default());
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            rt.block_on(scenario_with(*seed, tweak_planted))
        }))
        .is_err()
    });
    eprintln!("planted AckOnLeaderSync: caught at seed {caught:?}");
    assert!(
        caught.is_some(),
        "the lost acknowledged records went unnoticed"
    );
}

/// A follower that loses power leaves the ISR (fenced by the controller), misses records,
/// and after its restart catches up and is taken back into the ISR by its leader's
/// AlterPartition; nothing acknowledged meanwhile is lost.
async fn rejoin_scenario(seed: u64) -> Vec<String> {
    let cluster = Cluster::start(seed, SUBNET, 3, tweak);
    let client_node = cluster.client_node();
    let bootstrap = cluster.bootstrap(0..3);
    let b = bootstrap.clone();
    let (leader, follower) = client_node
        .spawn(async move {
            let client = client_when_ready(&b, 3).await;
            client.create_topic("rejoin", 1, 3).await.unwrap();
            client.metadata(None).await.unwrap();
            let p = client.topic("rejoin").await.unwrap().partitions[0].clone();
            let follower = *p.replicas.iter().find(|r| **r != p.leader).unwrap();
            produce_numbers(&client, "rejoin", 0..50).await;
            (p.leader, follower)
        })
        .await
        .unwrap();
    cluster.power_loss(follower);
    // Polls the ISR of the partition (through `bootstrap`) every 100 ms until `done` holds.
    let isr_until = |bootstrap: String, polls: u32, done: fn(&[i32], i32) -> bool| async move {
        for _ in 0..polls {
            madsim::time::sleep(Duration::from_millis(100)).await;
            let Ok(client) = Client::connect(&bootstrap, "sim-isr").await else {
                continue;
            };
            if client.metadata(None).await.is_err() {
                continue;
            }
            if let Ok(t) = client.topic("rejoin").await {
                if done(&t.partitions[0].isr, follower) {
                    return true;
                }
            }
        }
        false
    };
    let rest = cluster.bootstrap((0..3).filter(|i| *i != follower));
    let shrunk = client_node
        .spawn(isr_until(rest.clone(), 200, |isr, f| !isr.contains(&f)))
        .await
        .unwrap();
    assert!(shrunk, "seed {seed}: the dead follower stayed in the ISR");
    client_node
        .spawn(async move {
            let client = Client::connect(&rest, "sim").await.unwrap();
            produce_numbers(&client, "rejoin", 50..100).await;
        })
        .await
        .unwrap();
    cluster.restart(follower);
    let rejoined = client_node
        .spawn(isr_until(bootstrap.clone(), 300, |isr, f| {
            isr.contains(&f) && isr.len() == 3
        }))
        .await
        .unwrap();
    assert!(
        rejoined,
        "seed {seed}: the returning follower was not taken back into the ISR"
    );
    let values = client_node
        .spawn(async move {
            let client = Client::connect(&bootstrap, "sim-read").await.unwrap();
            read_numbers(client, "rejoin", 100).await
        })
        .await
        .unwrap();
    assert_eq!(values, (0..100).collect::<Vec<u32>>(), "seed {seed}");
    cluster.stop();
    vec![format!("leader {leader}, follower {follower} out and back")]
}

#[test]
fn a_returning_follower_is_taken_back_into_the_isr() {
    for seed in 0..3 {
        let rt = Runtime::with_seed_and_config(seed, madsim::Config::default());
        rt.block_on(rejoin_scenario(seed));
    }
}
