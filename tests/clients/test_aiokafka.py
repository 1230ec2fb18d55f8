"""aiokafka 0.14 against lode: send_and_wait with acks=all / acks=1 / idempotence,
compression, AIOKafkaConsumer(group_id=None) with assign + seek_to_beginning."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition

from _helpers import compare, norm_headers, sample_records


async def produce(bootstrap, topic, records, **config):
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, request_timeout_ms=15000, **config)
    await producer.start()
    try:
        metas = []
        for key, value, headers in records:
            metas.append(await producer.send_and_wait(topic, value=value, key=key,
                                                      headers=headers or None))
        return metas
    finally:
        await producer.stop()


async def consume(bootstrap, topic, count, timeout=20.0):
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                request_timeout_ms=15000)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        out = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(out) < count and loop.time() < deadline:
            batch = await consumer.getmany(tp, timeout_ms=300)
            out.extend(batch.get(tp, []))
        if len(out) >= count:  # catch duplicates
            batch = await consumer.getmany(tp, timeout_ms=300)
            out.extend(batch.get(tp, []))
        return out
    finally:
        await consumer.stop()


def tuples(records):
    return [(r.offset, r.key, r.value, norm_headers(r.headers)) for r in records]


@pytest.mark.parametrize("config", [
    pytest.param({"acks": "all"}, id="acks-all"),
    pytest.param({"acks": 1}, id="acks-1"),
    pytest.param({"enable_idempotence": True}, id="idempotent"),
])
def test_send_and_wait_then_read_back(broker, topic, config):
    records = sample_records(50)
    metas = asyncio.run(produce(broker.bootstrap, topic, records, **config))
    compare(list(range(50)), [m.offset for m in metas], "send_and_wait offsets")
    got = asyncio.run(consume(broker.bootstrap, topic, 50))
    compare([(i, k, v, h) for i, (k, v, h) in enumerate(records)], tuples(got),
            "consumed (offset, key, value, headers)")


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_compression(broker, topic, codec):
    async def run():
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all",
                                    compression_type=codec, linger_ms=50)
        await producer.start()
        try:
            futs = [await producer.send(topic, key=b"k%d" % i,
                                        value=(f"{codec} text {i} " * 25).encode())
                    for i in range(40)]
            return [await f for f in futs]
        finally:
            await producer.stop()

    metas = asyncio.run(run())
    compare(list(range(40)), [m.offset for m in metas], f"{codec} offsets")
    got = asyncio.run(consume(broker.bootstrap, topic, 40))
    compare([(i, b"k%d" % i, (f"{codec} text {i} " * 25).encode()) for i in range(40)],
            [(r.offset, r.key, r.value) for r in got], f"{codec} consumed records")
