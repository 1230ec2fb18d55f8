"""kafka-python 3.0 against lode: admin, default (idempotent, acks=all) producer, headers,
compression, manual-assignment consumer, ListOffsets by time, acks=0, message size limit,
fetching from the middle of a batch."""

from __future__ import annotations

import os
import time

import pytest
from kafka import KafkaAdminClient, KafkaProducer, TopicPartition
from kafka import errors as kerr

from _helpers import compare, kp_consumer, kp_poll, kp_read_all, kp_tuples, sample_records

TOPIC_ALREADY_EXISTS = 36


@pytest.fixture
def admin(broker):
    a = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=15000)
    yield a
    a.close()


def produce_sync(bootstrap, topic, records, partition=None, **config):
    """Send (key, value, headers) records with a kafka-python producer and .get() each
    future in order. Returns the RecordMetadata list."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, **config)
    try:
        futures = [producer.send(topic, key=k, value=v, headers=h, partition=partition)
                   for k, v, h in records]
        producer.flush(timeout=30)
        return [f.get(timeout=30) for f in futures]
    finally:
        producer.close(timeout=10)


def test_admin_create_topics_and_list(admin, topic):
    one, three = f"{topic}-p1", f"{topic}-p3"
    result = admin.create_topics({
        one: {"num_partitions": 1, "replication_factor": 1},
        three: {"num_partitions": 3, "replication_factor": 1},
    })
    errors = {t["name"]: t["error_code"] for t in result["topics"]}
    assert errors == {one: 0, three: 0}, f"CreateTopics errors: {result}"

    names = admin.list_topics()
    assert one in names and three in names, f"list_topics() = {names}"

    described = {t["name"]: t for t in admin.describe_topics([one, three])}
    for name, want in ((one, 1), (three, 3)):
        parts = described[name]["partitions"]
        assert sorted(p["partition_index"] for p in parts) == list(range(want)), \
            f"{name}: partitions {parts}"
        assert all(p["leader_id"] >= 0 for p in parts), f"{name}: no leader in {parts}"

    again = admin.create_topics({one: {"num_partitions": 1, "replication_factor": 1}},
                                raise_errors=False)
    codes = [t["error_code"] for t in again["topics"]]
    assert codes == [TOPIC_ALREADY_EXISTS], \
        f"creating {one} twice: expected TOPIC_ALREADY_EXISTS (36), got {again}"


def test_default_producer_keys_values_repeated_headers(broker, topic):
    records = sample_records(100)
    metas = produce_sync(broker.bootstrap, topic, records)  # defaults: idempotent, acks=all
    compare(list(range(100)), [m.offset for m in metas], "RecordMetadata offsets")
    assert {m.partition for m in metas} == {0}
    assert all(m.topic == topic for m in metas)

    got = kp_tuples(kp_read_all(broker.bootstrap, topic, 100))
    expected = [(i, k, v, h) for i, (k, v, h) in enumerate(records)]
    compare(expected, got, "consumed (offset, key, value, headers)")


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_compression_roundtrip(broker, topic, codec):
    records = [(f"k{i}".encode(), (f"compressible {codec} payload {i} " * 20).encode(),
                [("codec", codec.encode())]) for i in range(50)]
    metas = produce_sync(broker.bootstrap, topic, records, compression_type=codec,
                         linger_ms=50)
    compare(list(range(50)), [m.offset for m in metas], f"{codec} offsets")
    got = kp_tuples(kp_read_all(broker.bootstrap, topic, 50))
    compare([(i, k, v, h) for i, (k, v, h) in enumerate(records)], got,
            f"{codec} consumed records")


def test_three_partitions_keep_their_own_offsets(admin, broker, topic):
    admin.create_topics({topic: {"num_partitions": 3, "replication_factor": 1}})
    per_partition = {p: [(f"p{p}k{i}".encode(), f"p{p}v{i}".encode(), [])
                         for i in range(10 + p)] for p in range(3)}
    for p, recs in per_partition.items():
        metas = produce_sync(broker.bootstrap, topic, recs, partition=p)
        assert [(m.partition, m.offset) for m in metas] == [(p, i) for i in range(len(recs))]
    for p, recs in per_partition.items():
        got = kp_tuples(kp_read_all(broker.bootstrap, topic, len(recs), partition=p))
        compare([(i, k, v, []) for i, (k, v, _h) in enumerate(recs)], got,
                f"partition {p} records")


@pytest.mark.parametrize("batching", ["one-batch-per-record", "single-batch"])
def test_list_offsets_and_offsets_for_times(broker, topic, batching):
    base = int(time.time() * 1000) - 600_000
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap,
                             linger_ms=200 if batching == "single-batch" else 0)
    try:
        futures = []
        for i in range(10):
            futures.append(producer.send(topic, key=b"k%d" % i, value=b"v%d" % i,
                                         timestamp_ms=base + i * 1000))
            if batching == "one-batch-per-record":
                futures[-1].get(timeout=30)
        producer.flush(timeout=30)
        assert [f.get(timeout=30).offset for f in futures] == list(range(10))
    finally:
        producer.close(timeout=10)

    tp = TopicPartition(topic, 0)
    consumer = kp_consumer(broker.bootstrap)
    try:
        consumer.assign([tp])
        assert consumer.beginning_offsets([tp]) == {tp: 0}, "earliest offset"
        assert consumer.end_offsets([tp]) == {tp: 10}, "latest offset"

        # Between record 4 (base+4000) and record 5 (base+5000): the first record with
        # timestamp >= target is offset 5.
        found = consumer.offsets_for_times({tp: base + 4500})[tp]
        assert found is not None, "offsets_for_times found nothing for a timestamp inside the log"
        assert (found.offset, found.timestamp) == (5, base + 5000), \
            f"offsets_for_times(base+4500) = {found}, expected offset 5 at base+5000"
        exact = consumer.offsets_for_times({tp: base + 3000})[tp]
        assert (exact.offset, exact.timestamp) == (3, base + 3000), f"exact match: {exact}"
        first = consumer.offsets_for_times({tp: base - 10_000})[tp]
        assert first.offset == 0, f"timestamp before the log: {first}"
        after = consumer.offsets_for_times({tp: base + 60_000})[tp]
        assert after is None, f"timestamp after every record should find none, got {after}"

        consumer.seek(tp, found.offset)
        recs = kp_poll(consumer, 5)
        assert recs, "nothing consumed after seek()"
        assert (recs[0].offset, recs[0].value, recs[0].timestamp) == (5, b"v5", base + 5000), \
            f"first record after seek: {recs[0]}"
        compare([5, 6, 7, 8, 9], [r.offset for r in recs], "offsets after seek")
    finally:
        consumer.close(autocommit=False)


def test_acks_zero_records_arrive(broker, topic):
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks=0,
                             enable_idempotence=False)
    try:
        for i in range(20):
            producer.send(topic, key=b"k%d" % i, value=b"acks0-%d" % i)
        producer.flush(timeout=30)
    finally:
        producer.close(timeout=10)
    # Nothing acknowledges acks=0 writes: poll (bounded) until they show up.
    got = kp_read_all(broker.bootstrap, topic, 20, timeout=20)
    compare([(i, b"acks0-%d" % i) for i in range(20)], [(r.offset, r.value) for r in got],
            "acks=0 records")


def test_oversized_record_rejected_by_broker(broker, topic):
    # max_request_size above the record so the broker, not the client, rejects it.
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap,
                             max_request_size=4 * 1024 * 1024)
    try:
        ok = producer.send(topic, value=b"small").get(timeout=30)
        assert ok.offset == 0
        fut = producer.send(topic, value=os.urandom(2 * 1024 * 1024))
        with pytest.raises(kerr.KafkaError) as excinfo:
            fut.get(timeout=30)
    finally:
        producer.close(timeout=10)
    err = excinfo.value
    text = f"{type(err).__name__} {err}"
    assert isinstance(err, kerr.MessageSizeTooLargeError) or \
        "MESSAGE_TOO_LARGE" in text.upper() or "MESSAGE_SIZE_TOO_LARGE" in text.upper(), \
        f"expected MessageSizeTooLargeError from the broker, got {text}"

    # The partition still takes normal records afterwards, right after the small one.
    metas = produce_sync(broker.bootstrap, topic, [(None, b"after", [])])
    assert metas[0].offset == 1, f"record after the rejected one got offset {metas[0].offset}"
    got = kp_read_all(broker.bootstrap, topic, 2)
    compare([(0, b"small"), (1, b"after")], [(r.offset, r.value) for r in got],
            "records around the rejected one")


def test_fetch_from_middle_of_batch(broker, topic):
    # One batch of 10: long linger, big batch size, futures not awaited until flush.
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=1000,
                             batch_size=1 << 20)
    try:
        futures = [producer.send(topic, key=b"k%d" % i, value=b"mid-%d" % i)
                   for i in range(10)]
        producer.flush(timeout=30)
        assert [f.get(timeout=30).offset for f in futures] == list(range(10))
    finally:
        producer.close(timeout=10)
    got = kp_read_all(broker.bootstrap, topic, 5, offset=5)
    assert got, "nothing fetched from offset 5"
    compare([(i, b"mid-%d" % i) for i in range(5, 10)], [(r.offset, r.value) for r in got],
            "records fetched from offset 5 (middle of the batch)")
