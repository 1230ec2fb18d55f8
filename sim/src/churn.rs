//! Topic churn: one client creates a topic, writes to it, reads it back, deletes it and
//! creates it again under the same name, over and over, while the other workloads and the
//! faults run (librdkafka's and rskafka's test suites do this to a broker within
//! milliseconds).
//!
//! Its check, from what the client saw: a topic created afresh holds nothing of an earlier
//! topic of the same name (**stale-topic-data**). A value whose send was acknowledged
//! before the new topic's creation was asked for can only have come from the old topic's
//! files; a value whose send had no answer may still be delivered late to the new topic
//! by name (Produce names topics, as Kafka's did before topic ids), which is reported as
//! permitted. A broker that halts over it (a storage error with no disk fault injected)
//! is caught by the halt checker in [`crate::invariants::Checker`].
//!
//! The state invariants do not model the churn topic (a deletion would look like lost
//! committed batches to them); it is checked here alone.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lode_client::{Client, Consumer, Producer, ProducerConfig, Record};
use lode_proto::Offset;

use crate::chaos::{now_ms, Params};
use crate::trace::Line;

/// The churned topic's name.
pub const TOPIC: &str = "churn";

/// Values written to each generation of the topic.
const VALUES_PER_GENERATION: u32 = 4;

/// What the churn client saw.
#[derive(Debug, Default)]
pub struct Findings {
    /// Broken rules, with evidence.
    pub violations: Vec<String>,
    /// Stale values that a late delivery explains.
    pub permitted: Vec<String>,
    /// Generations created (a creation answered ok).
    pub generations: u32,
}

/// How one send of the churn client ended, and when.
#[derive(Clone, Copy, Debug)]
struct Sent {
    /// Answered (acknowledged or refused) at this simulated ms; `None`: no answer.
    answered_ms: Option<u64>,
}

/// Runs the churn client until the workload ends.
pub async fn churn(
    bootstrap: &str,
    p: &Params,
    (trace_start, start): (madsim::time::Instant, madsim::time::Instant),
    findings: &Mutex<Findings>,
    log: &(impl Fn(String) + Send + Sync),
) {
    let Ok(client) = Client::connect(bootstrap, "churn").await else {
        return;
    };
    let config = ProducerConfig {
        acks: -1,
        idempotent: false,
        retries: 0,
        request_timeout: Duration::from_secs(2),
        ..ProducerConfig::default()
    };
    let Ok(producer) = Producer::new(Arc::clone(&client), config).await else {
        return;
    };
    let deadline = Duration::from_millis(p.duration_ms);
    let step = Duration::from_secs(5);
    let mut sent: BTreeMap<String, Sent> = BTreeMap::new();
    let mut generation = 0_u32;
    let event = |what: &str, gen: u32| {
        Line::new(now_ms(trace_start), "churn")
            .str("op", what)
            .num("generation", i64::from(gen))
    };
    while start.elapsed() < deadline {
        generation += 1;
        let partitions = 1 + (generation % 2) as i32;
        let created_ms = now_ms(start);
        let created = madsim::time::timeout(
            step,
            client.create_topic_with(
                TOPIC,
                partitions,
                p.replication_factor,
                &[("min.insync.replicas", "1")],
            ),
        )
        .await;
        match created {
            Ok(Ok(())) => log(event("created", generation)
                .num("partitions", i64::from(partitions))
                .done()),
            other => {
                let why = match other {
                    Ok(Err(e)) => e.to_string(),
                    _ => "no answer".into(),
                };
                log(event("create-failed", generation).str("why", &why).done());
                // It may exist (an earlier deletion failed, or this creation happened):
                // delete and start a new generation.
                let _ = madsim::time::timeout(step, client.delete_topic(TOPIC)).await;
                madsim::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        }
        findings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .generations += 1;
        for i in 0..VALUES_PER_GENERATION {
            let value = format!("g{generation}-{i}");
            let record = Record {
                value: Some(value.clone().into_bytes()),
                partition: Some(i as i32 % partitions),
                ..Record::default()
            };
            let answered = match producer.send(TOPIC, record).await {
                Err(_) => true,
                Ok(d) => matches!(madsim::time::timeout(step, d).await, Ok(Ok(_))),
            };
            sent.insert(
                value,
                Sent {
                    answered_ms: answered.then(|| now_ms(start)),
                },
            );
        }
        // Read every partition of this generation back from its start.
        let mut consumer = Consumer::new(Arc::clone(&client));
        for partition in 0..partitions {
            consumer.assign(TOPIC, partition, Offset(0));
        }
        for _ in 0..5 {
            let Ok(Ok(records)) =
                madsim::time::timeout(Duration::from_secs(1), consumer.poll()).await
            else {
                continue;
            };
            for r in records {
                let value = r
                    .value
                    .as_deref()
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default();
                let from = value
                    .strip_prefix('g')
                    .and_then(|v| v.split_once('-'))
                    .and_then(|(g, _)| g.parse::<u32>().ok());
                if from == Some(generation) {
                    continue;
                }
                let what = format!(
                    "generation {generation} of {TOPIC}-{} (created at {created_ms} ms) holds {value:?} at offset {}",
                    r.partition, r.offset.0
                );
                let mut f = findings
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                match sent.get(&value) {
                    // Acknowledged or refused before this topic was asked for: only the
                    // old topic's files can hold it.
                    Some(Sent {
                        answered_ms: Some(at),
                    }) if *at < created_ms => {
                        f.violations.push(format!("stale-topic-data: {what}"));
                    }
                    Some(_) => f.permitted.push(format!(
                        "stale-topic-data: {what}: its send had no answer, so it may have been delivered late, by name"
                    )),
                    None => f
                        .violations
                        .push(format!("stale-topic-data: {what}, a value never sent")),
                }
            }
        }
        let deleted = madsim::time::timeout(step, client.delete_topic(TOPIC)).await;
        log(event(
            if matches!(deleted, Ok(Ok(()))) {
                "deleted"
            } else {
                "delete-failed"
            },
            generation,
        )
        .done());
        madsim::time::sleep(Duration::from_millis(u64::from(generation * 37 % 300))).await;
    }
}
