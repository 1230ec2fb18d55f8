//! lode-client against an in-process lode broker on loopback.
#![cfg(not(madsim))]
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use std::time::Duration;

use bytes::Bytes;
use lode_broker::{Broker, BrokerConfig};
use lode_client::{Client, ClientError, Consumer, Producer, ProducerConfig, Record};
use lode_env::Env;
use lode_proto::{BrokerId, Offset};

async fn broker(dir: &std::path::Path) -> std::sync::Arc<Broker> {
    let config = BrokerConfig::new(BrokerId(0), "127.0.0.1:0".parse().unwrap());
    Broker::start(config, Env::host(dir).unwrap())
        .await
        .unwrap()
}

async fn read_all(consumer: &mut Consumer, n: usize) -> Vec<lode_client::ConsumerRecord> {
    let mut got = Vec::new();
    for _ in 0..100 {
        got.extend(consumer.poll().await.unwrap());
        if got.len() >= n {
            break;
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_consume_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let b = broker(tmp.path()).await;
    let client = Client::connect(&b.local_addr.to_string(), "test")
        .await
        .unwrap();
    client.create_topic("orders", 3, 1).await.unwrap();
    let err = client.create_topic("orders", 3, 1).await.unwrap_err();
    assert!(matches!(err, ClientError::Broker { code: 36, .. }), "{err}");
    let topics = client.metadata(None).await.unwrap();
    assert_eq!(
        topics
            .iter()
            .find(|t| t.name == "orders")
            .unwrap()
            .partitions
            .len(),
        3
    );

    let producer = Producer::new(client.clone(), ProducerConfig::default())
        .await
        .unwrap();
    let mut deliveries = Vec::new();
    for i in 0..300_u32 {
        let rec = Record {
            key: Some(format!("key-{}", i % 7).into_bytes()),
            value: Some(i.to_be_bytes().to_vec()),
            headers: vec![(b"h".to_vec(), Some(b"1".to_vec())), (b"h".to_vec(), None)],
            timestamp_ms: Some(1_000_000 + i64::from(i)),
            partition: None,
        };
        deliveries.push(producer.send("orders", rec).await.unwrap());
    }
    producer.flush().await;
    let mut offsets = Vec::new();
    for d in deliveries {
        offsets.push(
            tokio::time::timeout(Duration::from_secs(10), d)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert!(offsets.iter().all(|o| o.0 >= 0));

    let mut consumer = Consumer::new(client.clone());
    for p in 0..3 {
        consumer.assign("orders", p, Offset(0));
    }
    let got = read_all(&mut consumer, 300).await;
    assert_eq!(got.len(), 300);
    let mut values: Vec<u32> = got
        .iter()
        .map(|r| u32::from_be_bytes(r.value.as_deref().unwrap().try_into().unwrap()))
        .collect();
    values.sort_unstable();
    assert_eq!(values, (0..300).collect::<Vec<_>>());
    assert_eq!(
        got[0].headers,
        vec![
            (Bytes::from_static(b"h"), Some(Bytes::from_static(b"1"))),
            (Bytes::from_static(b"h"), None)
        ]
    );
    // Same key, same partition; offsets increase per partition.
    for p in 0..3 {
        let offs: Vec<i64> = got
            .iter()
            .filter(|r| r.partition == p)
            .map(|r| r.offset.0)
            .collect();
        assert!(
            offs.windows(2).all(|w| w[0] + 1 == w[1]),
            "partition {p}: {offs:?}"
        );
    }

    // Offsets by time: the first record at or after a timestamp.
    let target = got.iter().filter(|r| r.partition == 0).nth(5).unwrap();
    let found = consumer
        .offset_for("orders", 0, target.timestamp_ms)
        .await
        .unwrap();
    assert_eq!(found, Some(target.offset));
    assert_eq!(
        consumer
            .offset_for("orders", 0, i64::from(i32::MAX) * 1000)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        consumer.offset_for("orders", 0, -2).await.unwrap(),
        Some(Offset(0))
    );

    // A fetch from the middle of a batch starts at exactly that offset.
    let mut mid = Consumer::new(client.clone());
    mid.assign("orders", 0, target.offset);
    let first = read_all(&mut mid, 1).await;
    assert_eq!(first[0].offset, target.offset);

    client.delete_topic("orders").await.unwrap();
    assert!(matches!(
        client.delete_topic("orders").await,
        Err(ClientError::Broker { code: 3, .. })
    ));
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_zero_and_one_and_oversized() {
    let tmp = tempfile::tempdir().unwrap();
    let b = broker(tmp.path()).await;
    let client = Client::connect(&b.local_addr.to_string(), "test")
        .await
        .unwrap();
    for acks in [0_i16, 1] {
        let topic = format!("acks{acks}");
        client.create_topic(&topic, 1, 1).await.unwrap();
        let config = ProducerConfig {
            acks,
            idempotent: false,
            ..ProducerConfig::default()
        };
        let producer = Producer::new(client.clone(), config).await.unwrap();
        for i in 0..50_u8 {
            let delivery = producer
                .send(
                    &topic,
                    Record {
                        value: Some(vec![i]),
                        ..Record::default()
                    },
                )
                .await
                .unwrap();
            drop(delivery); // not awaited: the consumer below checks arrival
        }
        producer.flush().await;
        let mut consumer = Consumer::new(client.clone());
        consumer.assign(&topic, 0, Offset(0));
        let got = read_all(&mut consumer, 50).await;
        assert_eq!(got.len(), 50, "acks={acks}");
    }
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            retries: 0,
            ..ProducerConfig::default()
        },
    )
    .await
    .unwrap();
    let big = producer
        .send(
            "acks1",
            Record {
                value: Some(vec![0; 2 << 20]),
                ..Record::default()
            },
        )
        .await
        .unwrap();
    producer.flush().await;
    let err = big.await.unwrap_err();
    assert!(
        err.to_string().contains("10"),
        "MESSAGE_TOO_LARGE expected: {err}"
    );
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_retries_are_not_written_twice() {
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ProduceRequest, TopicName};
    use kafka_protocol::protocol::StrBytes;
    use lode_proto::batch::RecordBatchBuilder;

    let tmp = tempfile::tempdir().unwrap();
    let b = broker(tmp.path()).await;
    let client = Client::connect(&b.local_addr.to_string(), "test")
        .await
        .unwrap();
    client.create_topic("idem", 1, 1).await.unwrap();
    let conn = lode_client::Connection::connect(b.local_addr, "raw")
        .await
        .unwrap();
    let produce = |seq: i32| {
        let mut batch = RecordBatchBuilder::new(Offset(0));
        batch.producer(4242, 0, seq);
        batch
            .push(None, Some(b"a"), &[], 0)
            .push(None, Some(b"b"), &[], 0);
        let mut pd = PartitionProduceData::default();
        pd.index = 0;
        pd.records = Some(Bytes::from(batch.build()));
        let mut td = TopicProduceData::default();
        td.name = TopicName(StrBytes::from_string("idem".into()));
        td.partition_data = vec![pd];
        let mut req = ProduceRequest::default();
        req.acks = -1;
        req.timeout_ms = 10_000;
        req.topic_data = vec![td];
        req
    };
    let answer = |r: kafka_protocol::messages::ProduceResponse| {
        let p = &r.responses[0].partition_responses[0];
        (p.error_code, p.base_offset)
    };
    assert_eq!(answer(conn.call(&produce(0)).await.unwrap()), (0, 0));
    assert_eq!(answer(conn.call(&produce(2)).await.unwrap()), (0, 2));
    // A retry of either batch is answered with its original offset, not written again.
    assert_eq!(answer(conn.call(&produce(0)).await.unwrap()), (0, 0));
    assert_eq!(answer(conn.call(&produce(2)).await.unwrap()), (0, 2));
    // A gap is refused: OUT_OF_ORDER_SEQUENCE_NUMBER.
    assert_eq!(answer(conn.call(&produce(9)).await.unwrap()).0, 45);
    let mut consumer = Consumer::new(client.clone());
    consumer.assign("idem", 0, Offset(0));
    let got = read_all(&mut consumer, 4).await;
    assert_eq!(
        got.len(),
        4,
        "two batches of two records, each written once"
    );
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_codec_round_trips_through_the_broker() {
    use lode_proto::batch::Compression;
    let tmp = tempfile::tempdir().unwrap();
    let b = broker(tmp.path()).await;
    let client = Client::connect(&b.local_addr.to_string(), "test")
        .await
        .unwrap();
    for codec in [
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ] {
        let topic = format!("codec-{}", codec.name());
        client.create_topic(&topic, 1, 1).await.unwrap();
        let config = ProducerConfig {
            compression: codec,
            ..ProducerConfig::default()
        };
        let producer = Producer::new(client.clone(), config).await.unwrap();
        let mut deliveries = Vec::new();
        for i in 0..200_u32 {
            let rec = Record {
                value: Some(format!("value {i} {}", "x".repeat(100)).into_bytes()),
                ..Record::default()
            };
            deliveries.push(producer.send(&topic, rec).await.unwrap());
        }
        producer.flush().await;
        for d in deliveries {
            d.await.unwrap();
        }
        let mut consumer = Consumer::new(client.clone());
        consumer.assign(&topic, 0, Offset(0));
        let got = read_all(&mut consumer, 200).await;
        assert_eq!(got.len(), 200, "{codec:?}");
        assert_eq!(
            got[199].value.as_deref(),
            Some(format!("value 199 {}", "x".repeat(100)).as_bytes()),
            "{codec:?}"
        );
    }
    b.shutdown().await;
}

/// Two members of one group split a topic's partitions; commits are fenced by generation;
/// after one leaves the other takes every partition and reads the committed offsets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_members_split_commit_and_take_over() {
    use lode_client::{GroupError, GroupMember, MemberConfig};
    let tmp = tempfile::tempdir().unwrap();
    let mut config = BrokerConfig::new(BrokerId(0), "127.0.0.1:0".parse().unwrap());
    config.groups.initial_rebalance_delay_ms = 0;
    let b = Broker::start(config, Env::host(tmp.path()).unwrap())
        .await
        .unwrap();
    let bootstrap = b.local_addr.to_string();
    let client = Client::connect(&bootstrap, "test").await.unwrap();
    client.create_topic("events", 4, 1).await.unwrap();
    let member_config = MemberConfig {
        session_timeout: Duration::from_secs(10),
        rebalance_timeout: Duration::from_secs(5),
    };
    let mut a = GroupMember::new(client.clone(), "g", &["events"], member_config.clone());
    assert_eq!(a.join().await.unwrap().len(), 4);
    let first_generation = a.generation();
    // A second member joins: the first must rejoin (its heartbeat says so) and they split.
    let client_b = Client::connect(&bootstrap, "test-b").await.unwrap();
    let mut b_member = GroupMember::new(client_b, "g", &["events"], member_config);
    let joining = tokio::spawn(async move {
        let parts = b_member.join().await.unwrap();
        (b_member, parts)
    });
    let mut rejoined = None;
    for _ in 0..50 {
        match a.heartbeat().await {
            Ok(()) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(GroupError::Rejoin(code)) => {
                assert_eq!(code, 27, "REBALANCE_IN_PROGRESS");
                // The old generation's commit is still accepted during the rebalance.
                a.commit(&[("events".into(), 0, 5)]).await.unwrap();
                rejoined = Some(a.join().await.unwrap());
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    let (mut b_member, b_parts) = joining.await.unwrap();
    let mut a_parts = rejoined.expect("the first member was told to rejoin");
    assert!(a.generation() > first_generation);
    assert_eq!(a_parts.len() + b_parts.len(), 4);
    assert_eq!(a_parts.len(), 2);
    a_parts.extend(b_parts.iter().cloned());
    a_parts.sort();
    assert_eq!(
        a_parts,
        (0..4).map(|p| ("events".to_owned(), p)).collect::<Vec<_>>()
    );
    // Commits from the current generation are accepted; a stale generation is refused.
    b_member
        .commit(&[("events".into(), b_parts[0].1, 7)])
        .await
        .unwrap();
    let mut stale = GroupMember::new(client.clone(), "g", &["events"], MemberConfig::default());
    let refused = stale.commit(&[("events".into(), 0, 99)]).await.unwrap_err();
    assert!(refused.definitely_not_applied(), "{refused}");
    // b leaves; a takes everything over and sees both commits.
    b_member.leave().await.unwrap();
    let mut taken = None;
    for _ in 0..50 {
        match a.heartbeat().await {
            Ok(()) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(GroupError::Rejoin(_)) => {
                taken = Some(a.join().await.unwrap());
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    let taken = taken.expect("the leave started a rebalance");
    assert_eq!(taken.len(), 4);
    let committed: std::collections::BTreeMap<_, _> =
        a.committed(&taken).await.unwrap().into_iter().collect();
    // b's commit is the later one where both committed (b may own partition 0: the range
    // assignor orders members by their ids).
    let b_first = b_parts[0].1;
    assert_eq!(committed[&("events".to_owned(), b_first)], Some(7));
    if b_first != 0 {
        assert_eq!(committed[&("events".to_owned(), 0)], Some(5));
    }
    let expected_none = if b_first == 0 { 3 } else { 2 };
    assert_eq!(
        committed.values().filter(|v| v.is_none()).count(),
        expected_none
    );
    a.leave().await.unwrap();
}

/// A broker advertised by host name: the client resolves the bootstrap name, and the name
/// the broker advertises in Metadata, through the resolver (`localhost` comes from the
/// system's hosts file, not from a special case).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_names_are_resolved() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = BrokerConfig::new(BrokerId(0), "127.0.0.1:0".parse().unwrap());
    config.advertised_host = "localhost".into();
    let b = Broker::start(config, Env::host(tmp.path()).unwrap())
        .await
        .unwrap();
    let port = b.local_addr.port();

    let resolved = lode_client::resolve_addr(&format!("localhost:{port}"))
        .await
        .unwrap();
    assert!(resolved.ip().is_loopback(), "{resolved}");
    assert_eq!(resolved.port(), port);

    let client = Client::connect(&format!("localhost:{port}"), "test")
        .await
        .unwrap();
    client.create_topic("named", 1, 1).await.unwrap();
    let producer = Producer::new(client.clone(), ProducerConfig::default())
        .await
        .unwrap();
    let d = producer
        .send(
            "named",
            Record {
                value: Some(b"by name".to_vec()),
                ..Record::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(d.await.unwrap(), Offset(0));
    let mut consumer = Consumer::new(client);
    consumer.assign("named", 0, Offset(0));
    let got = read_all(&mut consumer, 1).await;
    assert_eq!(got[0].value.as_deref(), Some(&b"by name"[..]));

    for bad in ["localhost", "localhost:port", ":9092", "localhost:70000"] {
        match Client::connect(bad, "test").await {
            Err(ClientError::BadAddress(why)) => assert!(why.contains(bad), "{why}"),
            Err(e) => panic!("{bad}: {e}"),
            Ok(_) => panic!("{bad} accepted"),
        }
    }
}
