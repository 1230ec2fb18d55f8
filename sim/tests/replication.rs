//! ISR replication on three real brokers in combined mode, through the real client: every
//! record acknowledged with acks=all survives a power loss of the partition's leader, right
//! after the last acknowledgement, and is read back, in order, from the new leader.
#![cfg(madsim)]
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use lode_broker::{Broker, BrokerConfig};
use lode_client::{Client, Consumer, Producer, ProducerConfig, Record};
use lode_env::{Clock, Env, SimDisk};
use lode_proto::{BrokerId, Offset};
use madsim::runtime::{Handle, Runtime};

fn kafka(i: i32) -> SocketAddr {
    format!("10.0.4.{}:9092", i + 1).parse().unwrap()
}

fn controller(i: i32) -> SocketAddr {
    format!("10.0.4.{}:9093", i + 1).parse().unwrap()
}

fn config(i: i32, planted: bool) -> BrokerConfig {
    let mut c = BrokerConfig::new(BrokerId(i), kafka(i));
    c.voters = (0..3)
        .map(|v| (BrokerId(v), controller(v)))
        .collect::<BTreeMap<_, _>>();
    c.session_timeout = Duration::from_millis(1500);
    c.heartbeat_interval = Duration::from_millis(200);
    c.replica_lag_time_max = Duration::from_secs(3);
    #[cfg(feature = "planted-bugs")]
    if planted {
        c.planted = Some(lode_broker::PlantedBug::AckOnLeaderSync);
    }
    #[cfg(not(feature = "planted-bugs"))]
    let _ = planted;
    c
}

async fn scenario(seed: u64) -> Vec<String> {
    scenario_with(seed, false).await
}

async fn scenario_with(seed: u64, planted: bool) -> Vec<String> {
    let handle = Handle::current();
    let mut nodes = Vec::new();
    let mut disks = Vec::new();
    for i in 0..3 {
        let disk = SimDisk::new(format!("broker-{i}"), seed * 10 + i as u64);
        let d = disk.clone();
        nodes.push(
            handle
                .create_node()
                .name(format!("broker-{i}"))
                .ip(kafka(i).ip())
                .init(move || {
                    let d = d.clone();
                    async move {
                        let broker =
                            Broker::start(config(i, planted), Env::simulated(&d, Clock::system()))
                                .await
                                .unwrap();
                        std::future::pending::<()>().await;
                        drop(broker);
                    }
                })
                .build(),
        );
        disks.push(disk);
    }
    let client_node = handle
        .create_node()
        .name("client")
        .ip([10, 0, 4, 100].into())
        .build();
    let bootstrap = (0..3)
        .map(|i| kafka(i).to_string())
        .collect::<Vec<_>>()
        .join(",");
    let b = bootstrap.clone();
    let leader = client_node
        .spawn(async move {
            let mut client = None;
            for _ in 0..200 {
                madsim::time::sleep(Duration::from_millis(100)).await;
                if let Ok(c) = Client::connect(&b, "sim").await {
                    if c.metadata(None).await.is_ok() && c.brokers().await.len() == 3 {
                        client = Some(c);
                        break;
                    }
                }
            }
            let client = client.expect("three brokers");
            client.create_topic("acked", 1, 3).await.unwrap();
            client.metadata(None).await.unwrap();
            let leader = client.topic("acked").await.unwrap().partitions[0].leader;
            let producer = Producer::new(client.clone(), ProducerConfig::default())
                .await
                .unwrap();
            let mut deliveries = Vec::new();
            for i in 0..100_u32 {
                let rec = Record {
                    value: Some(i.to_be_bytes().to_vec()),
                    partition: Some(0),
                    ..Record::default()
                };
                deliveries.push(producer.send("acked", rec).await.unwrap());
            }
            producer.flush().await;
            for d in deliveries {
                d.await.unwrap().expect("acks=all acknowledged");
            }
            // The leader dies right after the last acknowledgement, before followers have
            // a chance to fetch anything they did not have when it answered.
            leader
        })
        .await
        .unwrap();
    // Power loss of the leader: its unsynced writes are gone; the followers had synced.
    handle.kill(nodes[leader as usize].id());
    disks[leader as usize].crash();
    let rest = (0..3)
        .filter(|i| *i != leader)
        .map(|i| kafka(i).to_string())
        .collect::<Vec<_>>()
        .join(",");
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
            let mut consumer = Consumer::new(client);
            consumer.assign("acked", 0, Offset(0));
            let mut values = Vec::new();
            for _ in 0..100 {
                for r in consumer.poll().await.unwrap() {
                    values.push(u32::from_be_bytes(
                        r.value.unwrap()[..4].try_into().unwrap(),
                    ));
                }
                if values.len() >= 100 {
                    break;
                }
            }
            (new_leader, values)
        })
        .await
        .unwrap();
    assert_eq!(
        values,
        (0..100).collect::<Vec<u32>>(),
        "seed {seed}: acknowledged records lost or reordered"
    );
    for n in &nodes {
        handle.kill(n.id());
    }
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
            rt.block_on(scenario_with(*seed, true))
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
    let handle = Handle::current();
    let mut nodes = Vec::new();
    let mut disks = Vec::new();
    for i in 0..3 {
        let disk = SimDisk::new(format!("broker-{i}"), seed * 10 + i as u64);
        let d = disk.clone();
        nodes.push(
            handle
                .create_node()
                .name(format!("broker-{i}"))
                .ip(kafka(i).ip())
                .init(move || {
                    let d = d.clone();
                    async move {
                        let broker =
                            Broker::start(config(i, false), Env::simulated(&d, Clock::system()))
                                .await
                                .unwrap();
                        std::future::pending::<()>().await;
                        drop(broker);
                    }
                })
                .build(),
        );
        disks.push(disk);
    }
    let client_node = handle
        .create_node()
        .name("client")
        .ip([10, 0, 4, 100].into())
        .build();
    let bootstrap = (0..3)
        .map(|i| kafka(i).to_string())
        .collect::<Vec<_>>()
        .join(",");
    let produce = |bootstrap: String, from: u32| async move {
        let client = Client::connect(&bootstrap, "sim").await.unwrap();
        let producer = Producer::new(client.clone(), ProducerConfig::default())
            .await
            .unwrap();
        let mut deliveries = Vec::new();
        for i in from..from + 50 {
            let rec = Record {
                value: Some(i.to_be_bytes().to_vec()),
                partition: Some(0),
                ..Record::default()
            };
            deliveries.push(producer.send("rejoin", rec).await.unwrap());
        }
        producer.flush().await;
        for d in deliveries {
            d.await.unwrap().expect("acks=all acknowledged");
        }
    };
    let b = bootstrap.clone();
    let (leader, follower) = client_node
        .spawn(async move {
            let mut client = None;
            for _ in 0..200 {
                madsim::time::sleep(Duration::from_millis(100)).await;
                if let Ok(c) = Client::connect(&b, "sim").await {
                    if c.metadata(None).await.is_ok() && c.brokers().await.len() == 3 {
                        client = Some(c);
                        break;
                    }
                }
            }
            let client = client.expect("three brokers");
            client.create_topic("rejoin", 1, 3).await.unwrap();
            client.metadata(None).await.unwrap();
            let p = client.topic("rejoin").await.unwrap().partitions[0].clone();
            let follower = *p.replicas.iter().find(|r| **r != p.leader).unwrap();
            (p.leader, follower)
        })
        .await
        .unwrap();
    client_node
        .spawn(produce(bootstrap.clone(), 0))
        .await
        .unwrap();
    handle.kill(nodes[follower as usize].id());
    disks[follower as usize].crash();
    let isr_of = |bootstrap: String| async move {
        let client = Client::connect(&bootstrap, "sim-isr").await.ok()?;
        client.metadata(None).await.ok()?;
        Some(client.topic("rejoin").await.ok()?.partitions[0].isr.clone())
    };
    let rest = (0..3)
        .filter(|i| *i != follower)
        .map(|i| kafka(i).to_string())
        .collect::<Vec<_>>()
        .join(",");
    let r = rest.clone();
    let shrunk = client_node
        .spawn(async move {
            for _ in 0..200 {
                madsim::time::sleep(Duration::from_millis(100)).await;
                if let Some(isr) = isr_of(r.clone()).await {
                    if !isr.contains(&follower) {
                        return true;
                    }
                }
            }
            false
        })
        .await
        .unwrap();
    assert!(shrunk, "seed {seed}: the dead follower stayed in the ISR");
    client_node.spawn(produce(rest.clone(), 50)).await.unwrap();
    handle.restart(nodes[follower as usize].id());
    let b = bootstrap.clone();
    let rejoined = client_node
        .spawn(async move {
            for _ in 0..300 {
                madsim::time::sleep(Duration::from_millis(100)).await;
                if let Some(isr) = isr_of(b.clone()).await {
                    if isr.contains(&follower) && isr.len() == 3 {
                        return true;
                    }
                }
            }
            false
        })
        .await
        .unwrap();
    assert!(
        rejoined,
        "seed {seed}: the returning follower was not taken back into the ISR"
    );
    let values = client_node
        .spawn(async move {
            let client = Client::connect(&bootstrap, "sim-read").await.unwrap();
            let mut consumer = Consumer::new(client);
            consumer.assign("rejoin", 0, Offset(0));
            let mut values = Vec::new();
            for _ in 0..100 {
                for r in consumer.poll().await.unwrap() {
                    values.push(u32::from_be_bytes(
                        r.value.unwrap()[..4].try_into().unwrap(),
                    ));
                }
                if values.len() >= 100 {
                    break;
                }
            }
            values
        })
        .await
        .unwrap();
    assert_eq!(values, (0..100).collect::<Vec<u32>>(), "seed {seed}");
    for n in &nodes {
        handle.kill(n.id());
    }
    vec![format!("leader {leader}, follower {follower} out and back")]
}

#[test]
fn a_returning_follower_is_taken_back_into_the_isr() {
    for seed in 0..3 {
        let rt = Runtime::with_seed_and_config(seed, madsim::Config::default());
        rt.block_on(rejoin_scenario(seed));
    }
}
