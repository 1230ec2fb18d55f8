//! Shared by the madsim tests that run whole brokers: a cluster of brokers in combined mode
//! on simulated nodes of one subnet, each with its own simulated disk.
#![allow(dead_code)] // each test file uses a part

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use lode_broker::{Broker, BrokerConfig};
use lode_client::Client;
use lode_env::{Clock, Env, SimDisk};
use lode_proto::BrokerId;
use madsim::runtime::{Handle, NodeHandle};

/// Brokers on `10.0.SUBNET.(i+1)`: Kafka on port 9092, the controller on 9093.
pub struct Cluster {
    pub subnet: u8,
    pub nodes: Vec<NodeHandle>,
    pub disks: Vec<SimDisk>,
}

pub fn kafka(subnet: u8, i: i32) -> SocketAddr {
    format!("10.0.{subnet}.{}:9092", i + 1).parse().unwrap()
}

pub fn controller(subnet: u8, i: i32) -> SocketAddr {
    format!("10.0.{subnet}.{}:9093", i + 1).parse().unwrap()
}

/// Broker `i` of `n`, every one a voter, with short sessions; `tweak` adjusts the rest.
pub fn config(subnet: u8, n: i32, i: i32, tweak: fn(&mut BrokerConfig)) -> BrokerConfig {
    let mut c = BrokerConfig::new(BrokerId(i), kafka(subnet, i));
    c.voters = (0..n)
        .map(|v| (BrokerId(v), controller(subnet, v)))
        .collect::<BTreeMap<_, _>>();
    c.session_timeout = Duration::from_millis(1500);
    c.heartbeat_interval = Duration::from_millis(200);
    tweak(&mut c);
    c
}

impl Cluster {
    /// Starts `n` brokers; a restarted node starts its broker again from its disk.
    pub fn start(seed: u64, subnet: u8, n: i32, tweak: fn(&mut BrokerConfig)) -> Cluster {
        let handle = Handle::current();
        let mut nodes = Vec::new();
        let mut disks = Vec::new();
        for i in 0..n {
            let disk = SimDisk::new(format!("broker-{i}"), seed * 10 + i as u64);
            let d = disk.clone();
            nodes.push(
                handle
                    .create_node()
                    .name(format!("broker-{i}"))
                    .ip(kafka(subnet, i).ip())
                    .init(move || {
                        let d = d.clone();
                        async move {
                            let broker = Broker::start(
                                config(subnet, n, i, tweak),
                                Env::simulated(&d, Clock::system()),
                            )
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
        Cluster {
            subnet,
            nodes,
            disks,
        }
    }

    /// The bootstrap list of the brokers `ids`.
    pub fn bootstrap(&self, ids: impl IntoIterator<Item = i32>) -> String {
        ids.into_iter()
            .map(|i| kafka(self.subnet, i).to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Power loss of broker `i`: the node dies, its unsynced writes are gone.
    pub fn power_loss(&self, i: i32) {
        Handle::current().kill(self.nodes[i as usize].id());
        self.disks[i as usize].crash();
    }

    /// Starts broker `i` again from its disk.
    pub fn restart(&self, i: i32) {
        Handle::current().restart(self.nodes[i as usize].id());
    }

    /// Stops every node.
    pub fn stop(&self) {
        for n in &self.nodes {
            Handle::current().kill(n.id());
        }
    }

    /// A node for clients on the same subnet.
    pub fn client_node(&self) -> NodeHandle {
        Handle::current()
            .create_node()
            .name("client")
            .ip([10, 0, self.subnet, 100].into())
            .build()
    }
}

/// A client of `bootstrap` once Metadata lists `brokers` brokers (registered and unfenced),
/// polling for up to 20 s.
pub async fn client_when_ready(bootstrap: &str, brokers: usize) -> Arc<Client> {
    for _ in 0..200 {
        madsim::time::sleep(Duration::from_millis(100)).await;
        if let Ok(c) = Client::connect(bootstrap, "sim").await {
            if c.metadata(None).await.is_ok() && c.brokers().await.len() == brokers {
                return c;
            }
        }
    }
    panic!("{brokers} brokers were not in Metadata within 20 s");
}
