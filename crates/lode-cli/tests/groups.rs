//! Committed offsets on real `lode broker` processes (combined mode, loopback): the
//! broker coordinating a group is killed with SIGKILL right after a commit was
//! acknowledged; the new coordinator (another replica of the group's offsets partition)
//! returns that commit, later commits go to it, and after the killed broker returns the
//! offsets are still the last acknowledged ones.
#![cfg(not(madsim))]
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod common;

use common::{eventually, Cluster};
use lode_client::Client;

const GROUP: &str = "failover-group";
const TOPIC: &str = "failover-topic";

/// Fast failure detection: a silent broker is fenced after 3 s.
const FAST: &[&str] = &["--min-insync-replicas", "2", "--session-timeout-ms", "3000"];

async fn commit(client: &Client, offset: i64) -> bool {
    client
        .commit_group_offsets(GROUP, &[(TOPIC.to_owned(), 0, offset)])
        .await
        .is_ok()
}

async fn committed(client: &Client) -> Option<i64> {
    let offsets = client.group_offsets(GROUP).await.ok()?;
    offsets
        .iter()
        .find(|o| o.topic == TOPIC && o.partition == 0)
        .map(|o| o.offset)
}

/// The node listening at `addr`.
fn node_at(cluster: &Cluster, addr: std::net::SocketAddr) -> i32 {
    cluster
        .nodes
        .iter()
        .find(|n| n.kafka == addr)
        .map(|n| n.id)
        .expect("the coordinator is one of the nodes")
}

#[test]
fn an_acknowledged_commit_survives_a_kill_9_of_its_coordinator() {
    let _one = common::ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let rt = common::runtime();
    let mut cluster = Cluster::start(3, FAST);
    let all = cluster.bootstrap();
    rt.block_on(async {
        common::until_brokers(&all, 3).await;
        let client = Client::connect(&all, "groups-test").await.unwrap();
        client.create_topic(TOPIC, 1, 3).await.unwrap();
        // The first commit creates the offsets topic.
        eventually(60, "a first acknowledged commit", || async {
            commit(&client, 1).await.then_some(())
        })
        .await;
        for offset in 2..=20 {
            assert!(commit(&client, offset).await, "commit {offset} refused");
        }
        let coordinator = client.coordinator(GROUP).await.unwrap().addr();
        let victim = node_at(&cluster, coordinator);

        // SIGKILL the coordinator right after the acknowledgement of 20.
        cluster.nodes[victim as usize].kill();
        let survivors = Client::connect(&cluster.bootstrap_except(&[victim]), "groups-test-2")
            .await
            .unwrap();
        let after = eventually(60, "a new coordinator answering", || async {
            committed(&survivors).await
        })
        .await;
        assert_eq!(after, 20, "the new coordinator lost an acknowledged commit");
        let new_coordinator = survivors.coordinator(GROUP).await.unwrap().addr();
        assert_ne!(
            new_coordinator, coordinator,
            "the killed broker still coordinates"
        );
        for offset in 21..=30 {
            eventually(30, "a commit to the new coordinator", || async {
                commit(&survivors, offset).await.then_some(())
            })
            .await;
        }

        cluster.restart(victim);
        common::until_brokers(&all, 3).await;
        let client = Client::connect(&all, "groups-test-3").await.unwrap();
        let end = eventually(60, "the committed offset after the restart", || async {
            committed(&client).await
        })
        .await;
        assert_eq!(end, 30, "the last acknowledged commit after the restart");
        eprintln!("coordinator failover: killed node {victim}; commits 20 and 30 kept");
    });
}

/// A consuming group member (lode-client's `GroupMember`) commits as it reads; the
/// coordinator's broker is killed with SIGKILL; the member finds the new coordinator, joins
/// again, reads back exactly its last acknowledged commit and resumes there: nothing
/// skipped.
#[test]
fn a_group_member_finds_the_new_coordinator_after_a_kill_9() {
    use lode_client::{
        Consumer, GroupError, GroupMember, MemberConfig, Producer, ProducerConfig, Record,
    };
    use lode_proto::Offset;
    use std::sync::Arc;
    use std::time::Duration;

    const GROUP: &str = "member-failover-group";
    const TOPIC: &str = "member-failover-topic";
    const RECORDS: i64 = 40;
    let _one = common::ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let rt = common::runtime();
    let mut cluster = Cluster::start(3, FAST);
    let all = cluster.bootstrap();
    rt.block_on(async {
        common::until_brokers(&all, 3).await;
        let client = Client::connect(&all, "member-test").await.unwrap();
        client.create_topic(TOPIC, 1, 3).await.unwrap();
        let producer = Producer::new(Arc::clone(&client), ProducerConfig::default())
            .await
            .unwrap();
        for i in 0..RECORDS {
            let record = Record {
                value: Some(format!("v{i}").into_bytes()),
                partition: Some(0),
                ..Record::default()
            };
            producer.send(TOPIC, record).await.unwrap().await.unwrap();
        }
        let config = MemberConfig {
            session_timeout: Duration::from_secs(6),
            rebalance_timeout: Duration::from_secs(10),
        };
        let mut member = GroupMember::new(Arc::clone(&client), GROUP, &[TOPIC], config);
        let parts = member.join().await.unwrap();
        assert_eq!(parts, vec![(TOPIC.to_owned(), 0)]);
        assert_eq!(member.committed(&parts).await.unwrap()[0].1, None);
        let mut consumer = Consumer::new(Arc::clone(&client));
        consumer.assign(TOPIC, 0, Offset(0));
        // Read and commit up to offset 20 at least, one poll at a time.
        let mut acked = 0;
        while acked < 20 {
            let got = consumer.poll().await.unwrap();
            let Some(last) = got.last() else { continue };
            let next = last.offset.0 + 1;
            member.commit(&[(TOPIC.to_owned(), 0, next)]).await.unwrap();
            acked = next;
        }
        let coordinator = client.coordinator(GROUP).await.unwrap().addr();
        let victim = node_at(&cluster, coordinator);
        cluster.nodes[victim as usize].kill();

        // The member notices (heartbeats fail, then the new coordinator does not know it)
        // and joins again.
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        let mut rejoined: Option<Vec<(String, i32)>> = None;
        let resumed = loop {
            assert!(
                std::time::Instant::now() < deadline,
                "the member is not back in the group after 90 s"
            );
            if let Some(parts) = &rejoined {
                match member.committed(parts).await {
                    Ok(committed) => break committed,
                    Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
                }
                continue;
            }
            match member.heartbeat().await {
                Err(GroupError::Rejoin(_)) => rejoined = member.join().await.ok(),
                Ok(()) | Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
            }
        };
        assert_eq!(
            resumed,
            vec![((TOPIC.to_owned(), 0), Some(acked))],
            "the last acknowledged commit after the failover"
        );
        assert_ne!(client.coordinator(GROUP).await.unwrap().addr(), coordinator);
        // Resume at the committed offset: the first record read is exactly there.
        let mut consumer = Consumer::new(Arc::clone(&client));
        consumer.assign(TOPIC, 0, Offset(acked));
        let mut read = Vec::new();
        while read.len() < (RECORDS - acked) as usize {
            if let Ok(got) = consumer.poll().await {
                read.extend(got.iter().map(|r| r.offset.0));
            } else {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        assert_eq!(read, (acked..RECORDS).collect::<Vec<_>>());
        member
            .commit(&[(TOPIC.to_owned(), 0, RECORDS)])
            .await
            .unwrap();
        eprintln!("member failover: killed node {victim}; resumed at {acked}");
    });
}
