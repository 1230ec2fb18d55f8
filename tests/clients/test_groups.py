"""Consumer groups with real clients: the tutorial consumer, two consumers splitting a
topic's partitions, a takeover when one leaves, and resuming after committed offsets
(kafka-python and confluent-kafka, with the range, roundrobin and cooperative-sticky
assignors; kcat -G)."""

from __future__ import annotations

import queue
import subprocess
import threading
import time

import pytest
from confluent_kafka import Consumer as CkConsumer
from confluent_kafka import TopicPartition as CkTopicPartition
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor

GROUP_TIMEOUT_S = 60.0
PARTITIONS = 4


def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000)
    try:
        result = admin.create_topics({name: {"num_partitions": partitions,
                                             "replication_factor": 1}})
        assert [t["error_code"] for t in result["topics"]] == [0], result
    finally:
        admin.close()


def produce(bootstrap: str, topic: str, values: list[str]) -> None:
    """Round-robins `values` over the topic's partitions; waits for every ack."""
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    try:
        futures = [producer.send(topic, value=v.encode(), partition=i % PARTITIONS)
                   for i, v in enumerate(values)]
        producer.flush(timeout=30)
        for f in futures:
            f.get(timeout=30)
    finally:
        producer.close(timeout=10)


# ---- adapters: one consumer of a group, whatever the client --------------------------


class KpMember:
    """A kafka-python group member."""

    def __init__(self, bootstrap: str, group: str, topic: str, **extra):
        self.c = KafkaConsumer(topic, group_id=group, bootstrap_servers=bootstrap,
                               auto_offset_reset="earliest", enable_auto_commit=False,
                               session_timeout_ms=10000, heartbeat_interval_ms=1000, **extra)

    def poll(self) -> list[tuple[int, int, str]]:
        out = []
        for tp, msgs in self.c.poll(timeout_ms=200).items():
            out.extend((tp.partition, m.offset, m.value.decode()) for m in msgs)
        return out

    def assigned(self) -> set[int]:
        return {tp.partition for tp in self.c.assignment()}

    def commit(self) -> None:
        self.c.commit()

    def committed(self, topic: str, partition: int) -> int | None:
        return self.c.committed(TopicPartition(topic, partition))

    def close(self) -> None:
        self.c.close()


class CkMember:
    """A confluent-kafka (librdkafka) group member."""

    def __init__(self, bootstrap: str, group: str, topic: str, **extra):
        self.c = CkConsumer({"bootstrap.servers": bootstrap, "group.id": group,
                             "auto.offset.reset": "earliest", "enable.auto.commit": False,
                             "session.timeout.ms": 10000, "heartbeat.interval.ms": 1000,
                             "broker.address.family": "v4", **extra})
        self.c.subscribe([topic])

    def poll(self) -> list[tuple[int, int, str]]:
        out = []
        for m in self.c.consume(num_messages=100, timeout=0.2):
            if m.error() is None:
                out.append((m.partition(), m.offset(), m.value().decode()))
        return out

    def assigned(self) -> set[int]:
        return {tp.partition for tp in self.c.assignment()}

    def commit(self) -> None:
        self.c.commit(asynchronous=False)

    def committed(self, topic: str, partition: int) -> int | None:
        [tp] = self.c.committed([CkTopicPartition(topic, partition)], timeout=10)
        return tp.offset if tp.offset >= 0 else None

    def close(self) -> None:
        self.c.close()


class Threaded:
    """A member on a thread of its own that polls all the time, as an application's
    consumer loop does; every other call runs on that thread between two polls.

    kafka-python needs this: a JoinGroup answered while its consumer is not inside
    poll() is dropped and sent again (its join task is recreated once done), so two
    kafka-python consumers polled in turn by one thread would rebalance forever."""

    def __init__(self, make):
        self._calls: queue.Queue = queue.Queue()
        self._records: list = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, args=(make,), daemon=True)
        self._thread.start()

    def _run(self, make):
        member = make()
        while True:
            try:
                fn, answer = self._calls.get_nowait()
            except queue.Empty:
                got = member.poll()
                with self._lock:
                    self._records.extend(got)
                continue
            try:
                answer.put((True, fn(member)))
            except Exception as e:  # handed to the caller's thread
                answer.put((False, e))
            if fn is KpMember.close:
                return

    def _call(self, fn):
        answer: queue.Queue = queue.Queue()
        self._calls.put((fn, answer))
        ok, value = answer.get(timeout=GROUP_TIMEOUT_S)
        if not ok:
            raise value
        return value

    def poll(self) -> list[tuple[int, int, str]]:
        time.sleep(0.05)
        with self._lock:
            got, self._records = self._records, []
        return got

    def assigned(self) -> set[int]:
        return self._call(KpMember.assigned)

    def commit(self) -> None:
        self._call(KpMember.commit)

    def committed(self, topic: str, partition: int) -> int | None:
        return self._call(lambda m: m.committed(topic, partition))

    def close(self) -> None:
        self._call(KpMember.close)
        self._thread.join(timeout=GROUP_TIMEOUT_S)


MEMBERS = {
    # The default assignors (range first), then the other two client-side assignors of
    # the classic protocol: the broker only relays subscriptions and assignments.
    "kafka-python": lambda b, g, t: Threaded(lambda: KpMember(b, g, t)),
    "kafka-python-roundrobin": lambda b, g, t: Threaded(lambda: KpMember(
        b, g, t, partition_assignment_strategy=[RoundRobinPartitionAssignor])),
    "confluent-kafka": CkMember,
    "confluent-kafka-cooperative-sticky": lambda b, g, t: CkMember(
        b, g, t, **{"partition.assignment.strategy": "cooperative-sticky"}),
}


def poll_until(members, done, what: str, timeout: float = GROUP_TIMEOUT_S) -> list:
    """Polls every member in turn until `done()`; returns what they read."""
    got = []
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        for m in members:
            got.extend(m.poll())
    return got


# ---- tests ---------------------------------------------------------------------------


def test_kafka_python_tutorial_consumer(broker, topic):
    """The consumer of the Kafka tutorials, as written (default offset reset: latest), reads
    what a KafkaProducer sends once it has joined."""
    consumer = KafkaConsumer(topic, group_id=f"{topic}-test_group",
                             bootstrap_servers=broker.bootstrap)
    try:
        deadline = time.monotonic() + GROUP_TIMEOUT_S
        while not consumer.assignment():
            assert time.monotonic() < deadline, "the consumer never got its partition"
            consumer.poll(timeout_ms=200)
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
        for i in range(5):
            producer.send(topic, f"hello {i}".encode())
        producer.flush(timeout=30)
        producer.close(timeout=10)
        got = []
        deadline = time.monotonic() + GROUP_TIMEOUT_S
        while len(got) < 5:
            assert time.monotonic() < deadline, f"read only {got}"
            for msgs in consumer.poll(timeout_ms=200).values():
                got.extend(m.value.decode() for m in msgs)
        assert got == [f"hello {i}" for i in range(5)]
    finally:
        consumer.close()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("client", sorted(MEMBERS))
def test_two_members_split_then_one_takes_over_and_commits_resume(broker, topic, client):
    bootstrap = broker.bootstrap
    create_topic(bootstrap, topic, PARTITIONS)
    group = f"{topic}-group"
    make = MEMBERS[client]
    a, b = make(bootstrap, group, topic), make(bootstrap, group, topic)
    closed = []
    try:
        everything = set(range(PARTITIONS))
        poll_until([a, b], lambda: a.assigned() and b.assigned()
                   and a.assigned() | b.assigned() == everything
                   and not a.assigned() & b.assigned(),
                   "two members to split the partitions")

        # b leaves: a takes every partition.
        b.close()
        closed.append(b)
        poll_until([a], lambda: a.assigned() == everything, "a to take over after b left")

        first = [f"first-{i}" for i in range(20)]
        produce(bootstrap, topic, first)
        read: list = []
        deadline = time.monotonic() + GROUP_TIMEOUT_S
        while len(read) < len(first):
            assert time.monotonic() < deadline, f"read {len(read)} of {len(first)}"
            read.extend(a.poll())
        assert sorted(v for _, _, v in read) == sorted(first)
        a.commit()
        committed = {p: a.committed(topic, p) for p in everything}
        assert committed == {p: 5 for p in everything}, committed
        a.close()
        closed.append(a)

        # A new member of the group resumes at the committed offsets: nothing skipped, and
        # nothing before them read again.
        second = [f"second-{i}" for i in range(20)]
        produce(bootstrap, topic, second)
        c = make(bootstrap, group, topic)
        closed.append(c)
        read = []
        deadline = time.monotonic() + GROUP_TIMEOUT_S
        while len(read) < len(second):
            assert time.monotonic() < deadline, f"read {len(read)} of {len(second)}"
            read.extend(c.poll())
        assert sorted(v for _, _, v in read) == sorted(second)
        for p in everything:
            offsets = [o for q, o, _ in read if q == p]
            assert min(offsets) == 5, f"partition {p} resumed at {min(offsets)}, not 5"
        c.close()
    finally:
        for m in (a, b):
            if m not in closed:
                m.close()


def kcat_group(kcat_path, bootstrap, group, topic, timeout=90.0):
    """One `kcat -G` run to the end of every assigned partition; returns (partition,
    value) pairs."""
    proc = subprocess.run(
        [kcat_path, "-b", bootstrap, "-G", group, topic, "-e", "-q",
         "-X", "auto.offset.reset=earliest", "-X", "broker.address.family=v4",
         "-X", "session.timeout.ms=10000", "-f", "%p %s\\n"],
        capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"kcat failed ({proc.returncode}): {proc.stderr[-2000:]}"
    return [tuple(line.split(" ", 1)) for line in proc.stdout.splitlines() if line]


@pytest.mark.timeout(300)
def test_kcat_balanced_consumer_resumes_after_its_commit(broker, topic, kcat_path):
    bootstrap = broker.bootstrap
    create_topic(bootstrap, topic, PARTITIONS)
    group = f"{topic}-kcat"
    first = [f"first-{i}" for i in range(12)]
    produce(bootstrap, topic, first)
    got = kcat_group(kcat_path, bootstrap, group, topic)
    assert sorted(v for _, v in got) == sorted(first)
    # kcat commits what it read when it leaves; the next run starts after it.
    second = [f"second-{i}" for i in range(12)]
    produce(bootstrap, topic, second)
    got = kcat_group(kcat_path, bootstrap, group, topic)
    assert sorted(v for _, v in got) == sorted(second)


def lode_group(*args) -> subprocess.CompletedProcess:
    from conftest import lode_bin
    return subprocess.run([str(lode_bin()), "group", *args], capture_output=True, text=True,
                          timeout=60)


@pytest.mark.timeout(300)
def test_lode_group_cli_lists_describes_and_resets(broker, topic):
    bootstrap = broker.bootstrap
    create_topic(bootstrap, topic, PARTITIONS)
    group = f"{topic}-cli"
    values = [f"v{i}" for i in range(8)]
    produce(bootstrap, topic, values)
    member = MEMBERS["kafka-python"](bootstrap, group, topic)
    read: list = []
    deadline = time.monotonic() + GROUP_TIMEOUT_S
    while len(read) < len(values):
        assert time.monotonic() < deadline, f"read {len(read)} of {len(values)}"
        read.extend(member.poll())
    member.commit()

    # While the member is active, its offsets cannot be reset.
    busy = lode_group("reset-offsets", group, "--topic", topic, "--to-earliest",
                      "--bootstrap", bootstrap)
    assert busy.returncode != 0 and "active members" in busy.stderr, busy
    described = lode_group("describe", group, "--bootstrap", bootstrap)
    assert described.returncode == 0, described.stderr
    assert "Stable" in described.stdout and "member " in described.stdout, described.stdout
    member.close()

    listed = lode_group("list", "--bootstrap", bootstrap)
    assert listed.returncode == 0, listed.stderr
    assert f"{group}\tEmpty\tconsumer" in listed.stdout.splitlines(), listed.stdout
    described = lode_group("describe", group, "--bootstrap", bootstrap)
    rows = {tuple(line.split("\t")) for line in described.stdout.splitlines()}
    for p in range(PARTITIONS):
        assert (topic, str(p), "2", "2", "0") in rows, described.stdout

    reset = lode_group("reset-offsets", group, "--topic", topic, "--to-offset", "1",
                       "--bootstrap", bootstrap)
    assert reset.returncode == 0, reset.stderr
    # The next member of the group starts at the reset offsets.
    again = MEMBERS["kafka-python"](bootstrap, group, topic)
    read = []
    deadline = time.monotonic() + GROUP_TIMEOUT_S
    while len(read) < PARTITIONS:
        assert time.monotonic() < deadline, f"read {read}"
        read.extend(again.poll())
    again.close()
    assert sorted((p, o) for p, o, _ in read) == [(p, 1) for p in range(PARTITIONS)], read
