"""Shared helpers: bounded consume loops for each client and readable comparisons."""

from __future__ import annotations

import time
from typing import Iterable

DEFAULT_CONSUME_TIMEOUT_S = 20.0


def norm_headers(headers) -> list[tuple[str, bytes]]:
    """Headers as a list of (str, bytes) in order; None and () become []."""
    if not headers:
        return []
    out = []
    for k, v in headers:
        if isinstance(k, bytes):
            k = k.decode()
        out.append((k, None if v is None else bytes(v)))
    return out


def compare(expected: list, got: list, what: str = "records") -> None:
    """Assert equal lists, with a message naming the first difference."""
    if expected == got:
        return
    lines = [f"{what}: expected {len(expected)} items, got {len(got)}"]
    for i, (e, g) in enumerate(zip(expected, got)):
        if e != g:
            lines.append(f"first difference at index {i}:\n  expected {e!r}\n  got      {g!r}")
            break
    else:
        longer, name = (expected, "missing") if len(expected) > len(got) else (got, "extra")
        n = min(len(expected), len(got))
        lines.append(f"{name} from index {n}: {longer[n:n + 5]!r}"
                     f"{' ...' if len(longer) - n > 5 else ''}")
    raise AssertionError("\n".join(lines))


# ---- kafka-python ------------------------------------------------------------------


def kp_consumer(bootstrap: str, **overrides):
    from kafka import KafkaConsumer

    cfg = dict(
        bootstrap_servers=bootstrap,
        group_id=None,  # no consumer groups in lode yet: manual assignment only
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        request_timeout_ms=15000,
    )
    cfg.update(overrides)
    return KafkaConsumer(**cfg)


def kp_poll(consumer, count: int, timeout: float = DEFAULT_CONSUME_TIMEOUT_S,
            settle: float = 0.3) -> list:
    """Poll until `count` records arrived or `timeout` passed; then poll `settle` seconds
    more to catch extra records (duplicates). Returns records, per partition in order."""
    records: list = []
    deadline = time.monotonic() + timeout
    while len(records) < count and time.monotonic() < deadline:
        for _tp, recs in consumer.poll(timeout_ms=300).items():
            records.extend(recs)
    if settle and len(records) >= count:
        end = time.monotonic() + settle
        while time.monotonic() < end:
            for _tp, recs in consumer.poll(timeout_ms=100).items():
                records.extend(recs)
    return records


def kp_read_all(bootstrap: str, topic: str, count: int, partition: int = 0,
                offset: int | None = None, timeout: float = DEFAULT_CONSUME_TIMEOUT_S) -> list:
    """Read `count` records of one partition from the beginning (or from `offset`)."""
    from kafka import TopicPartition

    consumer = kp_consumer(bootstrap)
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        if offset is None:
            consumer.seek_to_beginning(tp)
        else:
            consumer.seek(tp, offset)
        return kp_poll(consumer, count, timeout)
    finally:
        consumer.close(autocommit=False)


def kp_tuples(records: Iterable) -> list[tuple]:
    """(offset, key, value, headers) of kafka-python ConsumerRecords."""
    return [(r.offset, r.key, r.value, norm_headers(r.headers)) for r in records]


# ---- confluent-kafka ------------------------------------------------------------------


class CoordinatorRequired(Exception):
    """confluent-kafka's consumer did not fetch without a group coordinator."""


def ck_consumer_config(bootstrap: str, **overrides) -> dict:
    cfg = {
        "bootstrap.servers": bootstrap,
        # confluent-kafka refuses to create a Consumer without group.id ("group.id must be
        # set"), although assign() never needs the group. librdkafka then looks for a
        # coordinator in the background (FindCoordinator, which lode does not offer yet);
        # with explicit offsets in assign() and no commits, fetching does not wait for it.
        "group.id": "lode-client-tests-unused",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": False,
        "socket.timeout.ms": 10000,
    }
    cfg.update(overrides)
    return cfg


def ck_read_all(bootstrap: str, topic: str, count: int, partition: int = 0,
                offset: int | None = None, timeout: float = DEFAULT_CONSUME_TIMEOUT_S) -> list:
    """Consume `count` messages of one partition with assign() (no subscribe).

    Raises CoordinatorRequired if nothing at all arrived and librdkafka reported errors
    about the group coordinator, so callers can skip with that reason."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    errors: list[str] = []
    cfg = ck_consumer_config(bootstrap, error_cb=lambda e: errors.append(str(e)))
    c = Consumer(cfg)
    msgs: list = []
    try:
        c.assign([TopicPartition(topic, partition,
                                 OFFSET_BEGINNING if offset is None else offset)])
        deadline = time.monotonic() + timeout
        while len(msgs) < count and time.monotonic() < deadline:
            m = c.poll(0.3)
            if m is None:
                continue
            if m.error():
                errors.append(str(m.error()))
                continue
            msgs.append(m)
        if len(msgs) >= count:
            end = time.monotonic() + 0.3
            while time.monotonic() < end:
                m = c.poll(0.1)
                if m is not None and not m.error():
                    msgs.append(m)
    finally:
        c.close()
    if not msgs and count > 0 and any("oordinator" in e for e in errors):
        raise CoordinatorRequired(
            f"confluent-kafka Consumer read nothing with assign() and reported coordinator "
            f"errors (lode has no FindCoordinator yet): {errors[:5]}")
    if len(msgs) < count and errors:
        # Surface client-side errors next to the count mismatch the caller will report.
        print(f"confluent consumer errors: {errors[:10]}")
    return msgs


def ck_tuples(msgs: Iterable) -> list[tuple]:
    """(offset, key, value, headers) of confluent-kafka Messages."""
    return [(m.offset(), m.key(), m.value(), norm_headers(m.headers())) for m in msgs]


def ck_produce(bootstrap: str, topic: str, records: list[tuple], partition: int | None = None,
               timeout: float = 30.0, **config) -> list:
    """Produce (key, value, headers) tuples; flush; return the delivered Messages in
    delivery order. Fails on any delivery error."""
    from confluent_kafka import Producer

    delivered: list = []
    failures: list = []

    def on_delivery(err, msg):
        if err is not None:
            failures.append(err)
        else:
            delivered.append(msg)

    cfg = {"bootstrap.servers": bootstrap}
    cfg.update(config)
    p = Producer(cfg)
    for key, value, headers in records:
        kwargs = {"key": key, "value": value, "on_delivery": on_delivery}
        if headers:
            kwargs["headers"] = headers
        if partition is not None:
            kwargs["partition"] = partition
        p.produce(topic, **kwargs)
        p.poll(0)
    remaining = p.flush(timeout)
    assert remaining == 0, f"{remaining} messages still undelivered after {timeout}s flush"
    assert not failures, f"delivery failures: {[str(f) for f in failures[:5]]}"
    assert len(delivered) == len(records), \
        f"expected {len(records)} delivery reports, got {len(delivered)}"
    return delivered


def sample_records(n: int, prefix: str = "") -> list[tuple]:
    """(key, value, headers) with a repeated header key whose order matters."""
    return [
        (f"{prefix}k{i}".encode(), f"{prefix}value-{i}".encode() * (1 + i % 3),
         [("h", b"1"), ("h", b"2"), ("i", str(i).encode())])
        for i in range(n)
    ]
