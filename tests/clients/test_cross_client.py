"""What one client writes, another reads: kafka-python <-> confluent-kafka, aiokafka -> kcat."""

from __future__ import annotations

import asyncio
import subprocess

import pytest
from aiokafka import AIOKafkaProducer
from kafka import KafkaProducer

from _helpers import (CoordinatorRequired, ck_produce, ck_read_all, ck_tuples, compare,
                      kp_read_all, kp_tuples, sample_records)


def test_kafka_python_writes_confluent_reads(broker, topic):
    records = sample_records(60, prefix="kp-")
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, compression_type="gzip")
    try:
        futs = [producer.send(topic, key=k, value=v, headers=h) for k, v, h in records]
        producer.flush(timeout=30)
        assert [f.get(timeout=30).offset for f in futs] == list(range(60))
    finally:
        producer.close(timeout=10)
    try:
        msgs = ck_read_all(broker.bootstrap, topic, 60)
    except CoordinatorRequired as e:
        pytest.skip(str(e))
    compare([(i, k, v, h) for i, (k, v, h) in enumerate(records)], ck_tuples(msgs),
            "confluent read of kafka-python records")


def test_confluent_writes_kafka_python_reads(broker, topic):
    records = sample_records(60, prefix="ck-")
    ck_produce(broker.bootstrap, topic, records,
               **{"compression.codec": "lz4", "enable.idempotence": True, "linger.ms": 20})
    got = kp_tuples(kp_read_all(broker.bootstrap, topic, 60))
    compare([(i, k, v, h) for i, (k, v, h) in enumerate(records)], got,
            "kafka-python read of confluent records")


def test_aiokafka_writes_kcat_reads(broker, topic, kcat_path):
    async def run():
        p = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all",
                             compression_type="gzip")
        await p.start()
        try:
            for i in range(30):
                await p.send_and_wait(topic, key=b"ak%d" % i, value=b"aiokafka-%d" % i,
                                      headers=[("h", b"1"), ("h", b"2")])
        finally:
            await p.stop()

    asyncio.run(run())
    proc = subprocess.run(
        [kcat_path, "-b", broker.bootstrap, "-t", topic, "-C", "-o", "beginning", "-e", "-q",
         "-f", "%o|%k|%s|%h\\n"],
        capture_output=True, text=True, timeout=40)
    assert proc.returncode == 0, f"kcat exited {proc.returncode}: {proc.stderr[-3000:]}"
    compare([f"{i}|ak{i}|aiokafka-{i}|h=1,h=2" for i in range(30)], proc.stdout.splitlines(),
            "kcat read of aiokafka records (offset|key|value|headers)")
