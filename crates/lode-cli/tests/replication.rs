//! ISR replication on real `lode broker` processes (combined mode, loopback):
//!
//! - a producer writes unique values with acks=all while the test kills -9 a partition
//!   leader and restarts it, kills -9 a follower and restarts it, and stops a broker with
//!   SIGTERM and restarts it; then every acknowledged value is read back exactly once, at
//!   the offset it was acknowledged with (so in acknowledgement order per partition), and
//!   no value refused with NOT_ENOUGH_REPLICAS is in the log;
//! - a follower paused with SIGSTOP leaves the ISR (replica.lag.time.max.ms) and rejoins it
//!   after SIGCONT;
//! - with two of a partition's three replicas down, acks=all is refused with
//!   NOT_ENOUGH_REPLICAS (five nodes, so that the controller quorum survives the two).
#![cfg(not(madsim))]
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{eventually, Cluster};
use lode_client::{Client, ClientError, Consumer, Producer, ProducerConfig, Record};
use lode_proto::Offset;

const NOT_ENOUGH_REPLICAS: i16 = 19;

/// Fast failure detection for the tests: out of the ISR after 2 s behind, fenced after
/// 3 s without a heartbeat.
const FAST: &[&str] = &[
    "--min-insync-replicas",
    "2",
    "--replica-lag-time-max-ms",
    "2000",
    "--session-timeout-ms",
    "3000",
];

/// What became of each value sent.
#[derive(Debug, Default)]
struct Outcomes {
    /// (value number, partition, offset), in acknowledgement order.
    acked: Vec<(u64, i32, i64)>,
    /// Refused with NOT_ENOUGH_REPLICAS: never appended.
    refused: BTreeSet<u64>,
    /// Failed otherwise (timeout, leader moved, connection lost): may or may not be there.
    unknown: BTreeSet<u64>,
}

fn value(n: u64) -> Vec<u8> {
    format!("v{n}").into_bytes()
}

fn number(v: &[u8]) -> u64 {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.strip_prefix('v'))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("foreign value {v:?} in the log"))
}

/// acks=all, no retries (each outcome is one attempt's), one batch per partition in
/// flight (the log order is the send order).
fn one_attempt(acks: i16) -> ProducerConfig {
    ProducerConfig {
        acks,
        idempotent: false,
        retries: 0,
        in_flight_per_partition_max: 1,
        linger: Duration::from_millis(2),
        request_timeout: Duration::from_secs(5),
        ..ProducerConfig::default()
    }
}

/// Produces values 0, 1, ... round robin over `partitions` until `stop`, keeping up to
/// 32 unanswered; `acked` counts acknowledgements as they come.
async fn produce_until(
    client: Arc<Client>,
    topic: &'static str,
    partitions: i32,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
) -> Outcomes {
    let producer = Producer::new(Arc::clone(&client), one_attempt(-1))
        .await
        .unwrap();
    let mut out = Outcomes::default();
    let mut window = std::collections::VecDeque::new();
    let mut n = 0_u64;
    while !stop.load(Ordering::Acquire) || !window.is_empty() {
        if !stop.load(Ordering::Acquire) && window.len() < 32 {
            let record = Record {
                value: Some(value(n)),
                partition: Some((n % partitions as u64) as i32),
                ..Record::default()
            };
            match producer.send(topic, record).await {
                Ok(d) => window.push_back((n, (n % partitions as u64) as i32, d)),
                Err(_) => {
                    out.unknown.insert(n);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            n += 1;
            continue;
        }
        let (n, p, d) = window.pop_front().unwrap();
        match d.await {
            Ok(offset) => {
                out.acked.push((n, p, offset.0));
                acked.fetch_add(1, Ordering::AcqRel);
            }
            Err(ClientError::Broker { code, .. }) if code == NOT_ENOUGH_REPLICAS => {
                out.refused.insert(n);
            }
            Err(_) => {
                out.unknown.insert(n);
                // Find the new leader before the next batch; pace retries of a dead one.
                let _ = client.metadata(Some(&[topic])).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    out
}

/// Sends value `n` to `topic` and waits until it is acknowledged.
async fn send_acked(producer: &Producer, topic: &str, n: u64) {
    let record = Record {
        value: Some(value(n)),
        ..Record::default()
    };
    let d = producer.send(topic, record).await.unwrap();
    d.await.unwrap();
}

/// Waits until `count` went up by `more` (the producer makes progress).
async fn progress(count: &AtomicU64, more: u64, what: &str) {
    let target = count.load(Ordering::Acquire) + more;
    eventually(60, what, || async {
        (count.load(Ordering::Acquire) >= target).then_some(())
    })
    .await;
}

/// Fresh metadata of `topic`.
async fn describe(bootstrap: &str, topic: &str) -> Option<lode_client::TopicInfo> {
    let c = Client::connect(bootstrap, "replication-test").await.ok()?;
    c.metadata(Some(&[topic]))
        .await
        .ok()?
        .into_iter()
        .find(|t| t.name == topic)
}

/// Waits until every partition of `topic` has a leader and an ISR for which `ok` holds.
async fn until_isr(bootstrap: &str, topic: &str, what: &str, ok: impl Fn(&[i32]) -> bool) {
    eventually(60, what, || async {
        let t = describe(bootstrap, topic).await?;
        (!t.partitions.is_empty() && t.partitions.iter().all(|p| p.leader >= 0 && ok(&p.isr)))
            .then_some(())
    })
    .await;
}

/// Everything in `topic`'s partitions below their high watermarks: value number ->
/// (partition, offset) of each copy.
async fn read_all(bootstrap: &str, topic: &str, partitions: i32) -> BTreeMap<u64, Vec<(i32, i64)>> {
    let client = Client::connect(bootstrap, "replication-reader")
        .await
        .unwrap();
    let mut consumer = Consumer::new(Arc::clone(&client));
    let mut ends = BTreeMap::new();
    for p in 0..partitions {
        let end = consumer
            .offset_for(topic, p, -1)
            .await
            .unwrap()
            .unwrap_or(Offset(0));
        ends.insert(p, end);
        consumer.assign(topic, p, Offset(0));
    }
    let mut seen: BTreeMap<u64, Vec<(i32, i64)>> = BTreeMap::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while (0..partitions).any(|p| consumer.position(topic, p).unwrap() < ends[&p]) {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out reading every partition up to its high watermark"
        );
        if let Ok(records) = consumer.poll().await {
            for r in records {
                let n = number(r.value.as_deref().unwrap_or_default());
                seen.entry(n).or_default().push((r.partition, r.offset.0));
            }
        }
    }
    seen
}

/// The checks of the first test; returns a one-line summary.
fn check(out: &Outcomes, log: &BTreeMap<u64, Vec<(i32, i64)>>) -> String {
    for (n, copies) in log {
        assert_eq!(
            copies.len(),
            1,
            "value {n} is in the log {} times: {copies:?}",
            copies.len()
        );
        assert!(
            !out.refused.contains(n),
            "value {n} was refused with NOT_ENOUGH_REPLICAS but is in the log at {copies:?}"
        );
    }
    let mut last: BTreeMap<i32, i64> = BTreeMap::new();
    for &(n, p, offset) in &out.acked {
        assert_eq!(
            log.get(&n).map(Vec::as_slice),
            Some(&[(p, offset)][..]),
            "acknowledged value {n} (partition {p}, offset {offset}) is not where it was acknowledged"
        );
        let prev = last.insert(p, offset);
        assert!(
            prev.is_none_or(|o| o < offset),
            "partition {p}: acknowledgements out of offset order at value {n}"
        );
    }
    let unacked_present = out.unknown.iter().filter(|n| log.contains_key(n)).count();
    format!(
        "{} acknowledged, {} refused (NOT_ENOUGH_REPLICAS), {} failed otherwise ({} of those in the log)",
        out.acked.len(),
        out.refused.len(),
        out.unknown.len(),
        unacked_present
    )
}

#[test]
fn acknowledged_records_survive_crashes_of_leader_and_follower_and_a_clean_stop() {
    let _one = common::ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    const TOPIC: &str = "chaos";
    const PARTITIONS: i32 = 2;
    let rt = common::runtime();
    let mut cluster = Cluster::start(3, FAST);
    let all = cluster.bootstrap();
    rt.block_on(async {
        common::until_brokers(&all, 3).await;
        let client = Client::connect(&all, "replication-test").await.unwrap();
        client.create_topic(TOPIC, PARTITIONS, 3).await.unwrap();
        until_isr(&all, TOPIC, "a full ISR", |isr| isr.len() == 3).await;

        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let producer = tokio::spawn(produce_until(
            Arc::clone(&client),
            TOPIC,
            PARTITIONS,
            Arc::clone(&stop),
            Arc::clone(&acked),
        ));
        progress(&acked, 200, "first acknowledgements").await;

        let t = describe(&all, TOPIC).await.unwrap();
        let leader = t.partitions[0].leader;
        let follower = *t.partitions[0].replicas.iter().find(|r| **r != leader).unwrap();
        let stopped = t.partitions[1].leader;

        // 1. kill -9 the leader of partition 0; acks=all goes on with two replicas.
        cluster.nodes[leader as usize].kill();
        progress(&acked, 200, "acknowledgements after the leader's crash").await;
        cluster.restart(leader);
        until_isr(&all, TOPIC, "the crashed leader back in the ISR", |isr| isr.contains(&leader)).await;
        progress(&acked, 200, "acknowledgements after the leader's return").await;

        // 2. kill -9 a follower.
        cluster.nodes[follower as usize].kill();
        progress(&acked, 200, "acknowledgements after the follower's crash").await;
        cluster.restart(follower);
        until_isr(&all, TOPIC, "the crashed follower back in the ISR", |isr| isr.contains(&follower)).await;

        // 3. a clean stop (controlled shutdown) of partition 1's leader.
        cluster.nodes[stopped as usize].terminate();
        progress(&acked, 200, "acknowledgements after a clean stop").await;
        cluster.restart(stopped);
        until_isr(&all, TOPIC, "the stopped broker back in the ISR", |isr| isr.len() == 3).await;
        progress(&acked, 200, "acknowledgements at the end").await;

        stop.store(true, Ordering::Release);
        let out = producer.await.unwrap();
        let log = read_all(&all, TOPIC, PARTITIONS).await;
        let summary = check(&out, &log);
        eprintln!("replication chaos: {summary}; crashed leader {leader}, crashed follower {follower}, stopped {stopped}");
    });
}

#[test]
fn a_paused_follower_leaves_the_isr_and_rejoins_after_it_resumes() {
    let _one = common::ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    const TOPIC: &str = "paused";
    let rt = common::runtime();
    // Behind for 2 s: out of the ISR; its session (9 s) outlives the check, so the ISR
    // shrinks by the leader's lag rule, not by fencing.
    let cluster = Cluster::start(
        3,
        &[
            "--min-insync-replicas",
            "2",
            "--replica-lag-time-max-ms",
            "2000",
        ],
    );
    let all = cluster.bootstrap();
    rt.block_on(async {
        common::until_brokers(&all, 3).await;
        let client = Client::connect(&all, "replication-test").await.unwrap();
        client.create_topic(TOPIC, 1, 3).await.unwrap();
        until_isr(&all, TOPIC, "a full ISR", |isr| isr.len() == 3).await;
        let t = describe(&all, TOPIC).await.unwrap();
        let leader = t.partitions[0].leader;
        let paused = *t.partitions[0]
            .replicas
            .iter()
            .find(|r| **r != leader)
            .unwrap();

        cluster.nodes[paused as usize].pause();
        let others = cluster.bootstrap_except(&[paused]);
        let started = std::time::Instant::now();
        until_isr(
            &others,
            TOPIC,
            "the paused follower out of the ISR",
            |isr| !isr.contains(&paused) && isr.len() == 2,
        )
        .await;
        let shrunk_after = started.elapsed();
        // Still registered (not fenced): the lag rule did it.
        let brokers = {
            let c = Client::connect(&others, "replication-test").await.unwrap();
            c.metadata(None).await.unwrap();
            c.brokers().await
        };
        assert!(
            brokers.iter().any(|(id, _)| *id == paused),
            "the paused broker was fenced ({brokers:?}); the ISR should shrink by lag first"
        );
        // acks=all still works with min ISR 2.
        let producer = Producer::new(
            Client::connect(&others, "p").await.unwrap(),
            one_attempt(-1),
        )
        .await
        .unwrap();
        send_acked(&producer, TOPIC, 1).await;

        cluster.nodes[paused as usize].resume();
        until_isr(&all, TOPIC, "the resumed follower back in the ISR", |isr| {
            isr.len() == 3
        })
        .await;
        eprintln!("paused follower {paused} left the ISR after {shrunk_after:?} and rejoined");
    });
}

#[test]
fn acks_all_is_refused_with_two_of_three_replicas_down() {
    let _one = common::ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    const TOPIC: &str = "ner";
    let rt = common::runtime();
    let mut cluster = Cluster::start(5, FAST);
    let all = cluster.bootstrap();
    rt.block_on(async {
        common::until_brokers(&all, 5).await;
        let client = Client::connect(&all, "replication-test").await.unwrap();
        client.create_topic(TOPIC, 1, 3).await.unwrap();
        until_isr(&all, TOPIC, "a full ISR", |isr| isr.len() == 3).await;
        let t = describe(&all, TOPIC).await.unwrap();
        let leader = t.partitions[0].leader;
        let followers: Vec<i32> = t.partitions[0]
            .replicas
            .iter()
            .copied()
            .filter(|r| *r != leader)
            .collect();
        for f in &followers {
            cluster.nodes[*f as usize].kill();
        }
        let alive = cluster.bootstrap_except(&followers);
        let client = Client::connect(&alive, "replication-test").await.unwrap();
        let all_acks = Producer::new(Arc::clone(&client), one_attempt(-1))
            .await
            .unwrap();
        // Until the controller fences them, the ISR still names the dead followers: those
        // attempts time out. Then the ISR is the leader alone, below min ISR 2.
        let mut refused = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        for n in 1000_u64.. {
            assert!(
                std::time::Instant::now() < deadline,
                "acks=all never refused with NOT_ENOUGH_REPLICAS"
            );
            let record = Record {
                value: Some(value(n)),
                ..Record::default()
            };
            let Ok(d) = all_acks.send(TOPIC, record).await else {
                continue;
            };
            match d.await {
                Err(ClientError::Broker { code, .. }) if code == NOT_ENOUGH_REPLICAS => {
                    refused.push(n);
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        // acks=1 still takes writes on the leader.
        let one_ack = Producer::new(Arc::clone(&client), one_attempt(1))
            .await
            .unwrap();
        send_acked(&one_ack, TOPIC, 1).await;

        // One follower back: acks=all succeeds again.
        cluster.restart(followers[0]);
        until_isr(&all, TOPIC, "a follower back in the ISR", |isr| {
            isr.len() >= 2
        })
        .await;
        let client = Client::connect(&all, "replication-test").await.unwrap();
        let all_acks = Producer::new(Arc::clone(&client), one_attempt(-1))
            .await
            .unwrap();
        // Within 30 s (one CI run saw a first attempt time out here, right after the
        // restarted follower re-registered; not reproduced since: under investigation).
        let mut n = 2_u64;
        let acked = eventually(30, "acks=all acknowledged with a follower back", || {
            let (all_acks, this) = (&all_acks, n);
            n += 1;
            async move {
                let record = Record {
                    value: Some(value(this)),
                    ..Record::default()
                };
                let d = all_acks.send(TOPIC, record).await.ok()?;
                d.await.ok().map(|_| this)
            }
        })
        .await;

        let log = read_all(&all, TOPIC, 1).await;
        for n in &refused {
            assert!(
                !log.contains_key(n),
                "value {n} was refused but is in the log"
            );
        }
        assert!(
            log.contains_key(&1) && log.contains_key(&acked),
            "acknowledged values missing: {log:?}"
        );
    });
}
