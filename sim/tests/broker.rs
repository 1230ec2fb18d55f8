//! The real broker and the real client, unchanged, on simulated nodes: simulated TCP,
//! simulated time, the simulated disk.
#![cfg(madsim)]
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use std::net::SocketAddr;
use std::time::Duration;

use lode_broker::{Broker, BrokerConfig};
use lode_client::{Client, Consumer, Producer, ProducerConfig, Record};
use lode_env::{Clock, Env, SimDisk};
use lode_proto::{BrokerId, Offset};
use madsim::runtime::{Handle, Runtime};

fn run(seed: u64) -> Vec<(i64, Vec<u8>)> {
    let rt = Runtime::with_seed_and_config(seed, madsim::Config::default());
    rt.block_on(scenario(seed))
}

async fn scenario(seed: u64) -> Vec<(i64, Vec<u8>)> {
    {
        let handle = Handle::current();
        let addr: SocketAddr = "10.0.0.1:9092".parse().unwrap();
        let disk = SimDisk::new("broker-0", seed);
        let d = disk.clone();
        handle
            .create_node()
            .name("broker-0")
            .ip([10, 0, 0, 1].into())
            .init(move || {
                let d = d.clone();
                async move {
                    let broker = Broker::start(
                        BrokerConfig::new(BrokerId(0), addr),
                        Env::simulated(&d, Clock::system()),
                    )
                    .await
                    .unwrap();
                    std::future::pending::<()>().await;
                    drop(broker);
                }
            })
            .build();
        let client_node = handle
            .create_node()
            .name("client")
            .ip([10, 0, 0, 2].into())
            .build();
        client_node
            .spawn(async move {
                madsim::time::sleep(Duration::from_millis(100)).await;
                let client = Client::connect("10.0.0.1:9092", "sim").await.unwrap();
                client.create_topic("t", 2, 1).await.unwrap();
                let producer = Producer::new(client.clone(), ProducerConfig::default())
                    .await
                    .unwrap();
                let mut deliveries = Vec::new();
                for i in 0..100_u32 {
                    let rec = Record {
                        key: Some(i.to_be_bytes().to_vec()),
                        value: Some(vec![i as u8; 100]),
                        ..Record::default()
                    };
                    deliveries.push(producer.send("t", rec).await.unwrap());
                }
                producer.flush().await;
                for d in deliveries {
                    d.await.unwrap();
                }
                let mut consumer = Consumer::new(
                    Client::connect("10.0.0.1:9092", "sim-consumer")
                        .await
                        .unwrap(),
                );
                consumer.assign("t", 0, Offset(0));
                consumer.assign("t", 1, Offset(0));
                let mut got = Vec::new();
                for _ in 0..50 {
                    for r in consumer.poll().await.unwrap() {
                        got.push((
                            i64::from(r.partition) * 1000 + r.offset.0,
                            r.value.unwrap().to_vec(),
                        ));
                    }
                    if got.len() >= 100 {
                        break;
                    }
                }
                got
            })
            .await
            .unwrap()
    }
}

#[test]
fn broker_and_client_run_unchanged_in_simulation() {
    let got = run(1);
    assert_eq!(got.len(), 100, "every acknowledged record is read back");
    assert_eq!(got, run(1), "same seed, same run");
}

/// madsim's own check: every random draw (every scheduling choice) matches on a rerun.
#[test]
fn the_same_seed_replays_every_scheduling_choice() {
    Runtime::check_determinism(1, madsim::Config::default(), || scenario(1));
}
