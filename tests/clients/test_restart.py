"""Data survives restarts: clean (SIGTERM, exit code 0) and crash (SIGKILL) of `lode dev`,
same port and data dir, read back with kafka-python."""

from __future__ import annotations

import signal

import pytest
from kafka import KafkaProducer

from _helpers import compare, kp_read_all


def produce_acked(bootstrap, topic, start, n):
    """kafka-python default producer (idempotent, acks=all); every future .get()."""
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    try:
        futs = [producer.send(topic, key=b"k%d" % i, value=b"restart-%d" % i,
                              headers=[("n", str(i).encode())])
                for i in range(start, start + n)]
        producer.flush(timeout=30)
        offsets = [f.get(timeout=30).offset for f in futs]
    finally:
        producer.close(timeout=10)
    compare(list(range(start, start + n)), offsets, f"acked offsets of records {start}..")


def read_back(bootstrap, topic, n):
    got = kp_read_all(bootstrap, topic, n, timeout=30)
    compare([(i, b"k%d" % i, b"restart-%d" % i, [("n", str(i).encode())]) for i in range(n)],
            [(r.offset, r.key, r.value, list(r.headers)) for r in got],
            f"records after restart (expected {n})")


@pytest.mark.timeout(120)
def test_restart_after_sigterm_and_sigkill(fresh_broker, topic, capsys):
    b = fresh_broker
    produce_acked(b.bootstrap, topic, 0, 200)

    code = b.stop(signal.SIGTERM)
    assert code == 0, f"lode dev exited with {code} on SIGTERM, expected 0"
    after_term = b.restart()
    read_back(b.bootstrap, topic, 200)

    produce_acked(b.bootstrap, topic, 200, 200)
    code = b.stop(signal.SIGKILL)
    assert code == -signal.SIGKILL, f"unexpected exit status after SIGKILL: {code}"
    after_kill = b.restart()
    read_back(b.bootstrap, topic, 400)

    with capsys.disabled():
        print(f"\n[lode restart timing] first start {b.startup_seconds[0]:.2f}s, "
              f"after SIGTERM {after_term:.2f}s, after SIGKILL {after_kill:.2f}s "
              f"(spawn to bootstrap line)")

    code = b.stop(signal.SIGTERM)
    assert code == 0, f"lode dev exited with {code} on SIGTERM after crash recovery"
