//! Three real `lode broker` processes in combined mode on loopback: kill -9 the active
//! controller, a new one is elected and a topic can still be created; restart the old one,
//! it registers again (back in Metadata) and follows.
#![cfg(not(madsim))]
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod common;

use common::{eventually, view, Cluster};
use lode_client::Client;

#[test]
fn killing_the_active_controller_elects_another_and_it_rejoins() {
    let _one = common::ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let rt = common::runtime();
    let mut cluster = Cluster::start(3, &[]);
    let all = cluster.bootstrap();
    rt.block_on(async {
        let controller = eventually(30, "three brokers registered and a controller", || {
            let all = all.clone();
            async move { view(&all).await.filter(|(n, _)| *n == 3).map(|(_, c)| c) }
        })
        .await;
        let client = Client::connect(&all, "cluster-test").await.unwrap();
        client.create_topic("before", 3, 3).await.unwrap();

        cluster.nodes[controller as usize].kill();
        let rest = cluster.bootstrap_except(&[controller]);
        let next = eventually(30, "a new controller, the dead broker fenced", || {
            let rest = rest.clone();
            async move {
                view(&rest)
                    .await
                    .filter(|(n, c)| *n == 2 && *c != controller)
                    .map(|(_, c)| c)
            }
        })
        .await;
        let client = Client::connect(&rest, "cluster-test").await.unwrap();
        client.create_topic("after", 2, 2).await.unwrap();
        let t = client.topic("before").await.unwrap();
        assert!(
            t.partitions
                .iter()
                .all(|p| p.leader != controller && p.leader >= 0),
            "{t:?}"
        );

        cluster.restart(controller);
        let back = eventually(30, "the old controller back in Metadata", || {
            let all = all.clone();
            async move { view(&all).await.filter(|(n, _)| *n == 3).map(|(_, c)| c) }
        })
        .await;
        // Pre-vote keeps the returning node from disrupting the leader it can reach.
        assert_eq!(back, next, "the returning node must follow, not take over");
    });
}
