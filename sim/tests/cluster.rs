//! Three real brokers in combined mode (each a controller voter) on simulated nodes, used
//! through the real client: topics are created through any broker, Metadata comes from the
//! metadata log with leaders spread, produce goes to each partition's leader; after a power
//! loss of the active controller a new one is elected, the dead broker leaves Metadata, and
//! topics can still be created and written.

#![cfg(madsim)]
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use std::time::Duration;

use lode_client::{Client, Producer, ProducerConfig, Record};
use madsim::runtime::Runtime;

use lode_sim::cluster::{client_when_ready, Cluster};

const SUBNET: u8 = 3;

fn tweak(c: &mut lode_broker::BrokerConfig) {
    c.default_replication_factor = 3;
}

async fn produce_all(client: &std::sync::Arc<Client>, topic: &str, partitions: i32) {
    let producer = Producer::new(client.clone(), ProducerConfig::default())
        .await
        .unwrap();
    let mut deliveries = Vec::new();
    for p in 0..partitions {
        for i in 0..10_u8 {
            let rec = Record {
                value: Some(vec![i; 10]),
                partition: Some(p),
                ..Record::default()
            };
            deliveries.push(producer.send(topic, rec).await.unwrap());
        }
    }
    producer.flush().await;
    for d in deliveries {
        d.await.unwrap();
    }
}

fn run(seed: u64) -> Vec<String> {
    let rt = Runtime::with_seed_and_config(seed, madsim::Config::default());
    rt.block_on(scenario(seed))
}

async fn scenario(seed: u64) -> Vec<String> {
    {
        let cluster = Cluster::start(seed, SUBNET, 3, tweak);
        let client_node = cluster.client_node();
        let bootstrap = cluster.bootstrap(0..2);
        let first = client_node
            .spawn(async move {
                let mut trace = Vec::new();
                let client = client_when_ready(&bootstrap, 3).await;
                client.create_topic("orders", 6, 3).await.unwrap();
                let t = client.topic("orders").await.unwrap();
                let leaders: Vec<i32> = t.partitions.iter().map(|p| p.leader).collect();
                trace.push(format!("leaders {leaders:?}"));
                for b in 0..3 {
                    assert!(leaders.contains(&b), "leaders spread: {leaders:?}");
                }
                assert!(t
                    .partitions
                    .iter()
                    .all(|p| p.replicas.len() == 3 && p.isr.len() == 3));
                produce_all(&client, "orders", 6).await;
                (trace, client.controller_id().await)
            })
            .await
            .unwrap();
        let (mut trace, controller_id) = first;
        let dead = controller_id.expect("a controller");
        trace.push(format!("controller {dead}"));
        cluster.power_loss(dead);
        let bootstrap = cluster.bootstrap((0..3).filter(|i| *i != dead));
        let after = client_node
            .spawn(async move {
                let mut out = Vec::new();
                let client = Client::connect(&bootstrap, "sim-2").await.unwrap();
                // The dead broker is fenced and leaves Metadata; a new controller leads.
                let mut ok = false;
                for _ in 0..200 {
                    madsim::time::sleep(Duration::from_millis(100)).await;
                    if client.metadata(None).await.is_ok()
                        && client.brokers().await.len() == 2
                        && client.controller_id().await.is_some_and(|c| c != dead)
                    {
                        ok = true;
                        break;
                    }
                }
                assert!(ok, "no failover within 20 s");
                out.push(format!("controller {:?}", client.controller_id().await));
                client.create_topic("payments", 2, 2).await.unwrap();
                produce_all(&client, "payments", 2).await;
                let t = client.topic("orders").await.unwrap();
                assert!(
                    t.partitions.iter().all(|p| p.leader != dead),
                    "leaders moved: {t:?}"
                );
                out.push(format!(
                    "orders leaders {:?}",
                    t.partitions.iter().map(|p| p.leader).collect::<Vec<_>>()
                ));
                out
            })
            .await
            .unwrap();
        trace.extend(after);
        cluster.stop();
        trace
    }
}

#[test]
fn three_brokers_create_produce_and_fail_over() {
    for seed in 0..3 {
        run(seed);
    }
}

/// madsim's own check: the run is repeated on a fresh thread and every random draw (every
/// scheduling choice among them) must match.
#[test]
fn same_seed_same_history() {
    Runtime::check_determinism(5, madsim::Config::default(), || scenario(5));
}
