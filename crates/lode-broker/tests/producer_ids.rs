//! Producer ids are unique across brokers, with no coordination: two brokers with fresh
//! data directories (the same local counters) never hand out the same id, and a restarted
//! broker never reuses one. A shared id made one producer's first batch look like a
//! retry of another's, answered as a duplicate without being written.
#![cfg(not(madsim))]
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use std::collections::BTreeSet;

use lode_broker::{Broker, BrokerConfig};
use lode_env::Env;
use lode_proto::BrokerId;

#[tokio::test]
async fn two_brokers_never_hand_out_the_same_producer_id() {
    let mut seen = BTreeSet::new();
    for round in 0..2 {
        for node in [0, 1, 7] {
            let dir = std::env::temp_dir()
                .join(format!("lode-producer-ids-{}-{node}", std::process::id()));
            if round == 0 {
                let _ = std::fs::remove_dir_all(&dir);
            }
            std::fs::create_dir_all(&dir).unwrap();
            let config = BrokerConfig::new(BrokerId(node), "127.0.0.1:0".parse().unwrap());
            let broker = Broker::start(config, Env::host(&dir).unwrap())
                .await
                .unwrap();
            for _ in 0..100 {
                let id = broker.next_producer_id().await.unwrap();
                assert!(id >= 0);
                assert!(
                    seen.insert(id),
                    "producer id {id} handed out twice (broker {node}, round {round})"
                );
            }
            broker.shutdown().await;
            if round == 1 {
                std::fs::remove_dir_all(&dir).unwrap();
            }
        }
    }
}
