"""confluent-kafka (librdkafka) against lode: AdminClient, Producer (default, idempotent,
each compression codec), Consumer with assign() (no group), offsets_for_times.

confluent-kafka's Consumer cannot be created without group.id; see ck_consumer_config in
_helpers.py. If it turns out to need a group coordinator even with assign(), the reading
parts skip with that reason instead of failing."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from _helpers import (CoordinatorRequired, ck_consumer_config, ck_produce, ck_read_all,
                      ck_tuples, compare, sample_records)


def read_or_skip(*args, **kwargs):
    try:
        return ck_read_all(*args, **kwargs)
    except CoordinatorRequired as e:
        pytest.skip(str(e))


def test_admin_create_topics(broker, topic):
    one, three = f"{topic}-p1", f"{topic}-p3"
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    futures = admin.create_topics(
        [NewTopic(one, num_partitions=1, replication_factor=1),
         NewTopic(three, num_partitions=3, replication_factor=3)],
        operation_timeout=10, request_timeout=15)
    for name, fut in futures.items():
        fut.result(timeout=20)  # raises KafkaException on a topic error

    md = admin.list_topics(timeout=10)
    assert one in md.topics and three in md.topics, f"topics listed: {sorted(md.topics)}"
    assert len(md.topics[one].partitions) == 1, md.topics[one].partitions
    assert sorted(md.topics[three].partitions) == [0, 1, 2], md.topics[three].partitions
    assert all(p.leader >= 0 and p.error is None for p in md.topics[three].partitions.values())
    assert [len(p.replicas) for p in md.topics[one].partitions.values()] == [1]
    assert all(sorted(p.replicas) == sorted(md.brokers)
               for p in md.topics[three].partitions.values()), md.topics[three].partitions
    ports = sorted(b.port for b in md.brokers.values())
    assert ports == broker.ports, f"brokers in metadata: {md.brokers}"

    again = admin.create_topics([NewTopic(one, num_partitions=1, replication_factor=1)],
                                request_timeout=15)
    with pytest.raises(Exception) as excinfo:
        again[one].result(timeout=20)
    err = excinfo.value.args[0] if excinfo.value.args else excinfo.value
    code = err.code() if isinstance(err, KafkaError) else None
    assert code == KafkaError.TOPIC_ALREADY_EXISTS, \
        f"creating {one} twice: expected TOPIC_ALREADY_EXISTS, got {excinfo.value!r}"


@pytest.mark.parametrize("config", [
    pytest.param({}, id="default"),
    pytest.param({"enable.idempotence": True}, id="idempotent"),
    pytest.param({"acks": 1, "linger.ms": 20}, id="acks1"),
])
def test_produce_and_consume_with_headers(broker, topic, config):
    records = sample_records(100)
    delivered = ck_produce(broker.bootstrap, topic, records, **config)
    compare(list(range(100)), [m.offset() for m in delivered], "delivery report offsets")
    assert {m.partition() for m in delivered} == {0}

    msgs = read_or_skip(broker.bootstrap, topic, 100)
    compare([(i, k, v, h) for i, (k, v, h) in enumerate(records)], ck_tuples(msgs),
            "consumed (offset, key, value, headers)")


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_compression_codecs(broker, topic, codec):
    records = [(f"k{i}".encode(), (f"{codec} compressible {i} " * 30).encode(),
                [("codec", codec.encode()), ("codec", b"again")]) for i in range(60)]
    delivered = ck_produce(broker.bootstrap, topic, records,
                           **{"compression.codec": codec, "linger.ms": 50})
    compare(list(range(60)), [m.offset() for m in delivered], f"{codec} delivery offsets")
    msgs = read_or_skip(broker.bootstrap, topic, 60)
    compare([(i, k, v, h) for i, (k, v, h) in enumerate(records)], ck_tuples(msgs),
            f"{codec} consumed records")


def test_offsets_for_times_and_watermarks(broker, topic):
    base = int(time.time() * 1000) - 300_000
    p = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 100})
    failures = []
    for i in range(10):
        p.produce(topic, key=b"k%d" % i, value=b"v%d" % i, timestamp=base + i * 1000,
                  on_delivery=lambda err, msg: err and failures.append(err))
    assert p.flush(30) == 0 and not failures, f"produce failed: {failures}"

    c = Consumer(ck_consumer_config(broker.bootstrap))
    try:
        tp = TopicPartition(topic, 0)
        low, high = c.get_watermark_offsets(tp, timeout=10)
        assert (low, high) == (0, 10), f"watermarks (earliest, latest) = {(low, high)}"

        res = c.offsets_for_times([TopicPartition(topic, 0, base + 4500)], timeout=10)
        assert len(res) == 1 and res[0].error is None, f"offsets_for_times: {res}"
        assert res[0].offset == 5, \
            f"offsets_for_times(base+4500) = {res[0].offset}, expected 5"
        res = c.offsets_for_times([TopicPartition(topic, 0, base + 7000)], timeout=10)
        assert res[0].offset == 7, f"exact timestamp of record 7 gave {res[0].offset}"
    finally:
        c.close()

    msgs = read_or_skip(broker.bootstrap, topic, 5, offset=5)
    assert msgs, "nothing consumed from offset 5"
    first = msgs[0]
    assert (first.offset(), first.value(), first.timestamp()[1]) == (5, b"v5", base + 5000), \
        f"first record from offset 5: offset={first.offset()} value={first.value()!r} " \
        f"timestamp={first.timestamp()}"
    compare([5, 6, 7, 8, 9], [m.offset() for m in msgs], "offsets from 5")
