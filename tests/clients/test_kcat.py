"""kcat (librdkafka's command-line client) against lode: metadata listing, produce with each
compression codec and read back, headers and keys, and the MsgVer2 feature."""

from __future__ import annotations

import re
import subprocess

import pytest

from _helpers import compare


def kcat(kcat_path, *args, stdin: str | None = None, timeout: float = 40.0):
    proc = subprocess.run([kcat_path, *args], input=stdin, capture_output=True, text=True,
                          timeout=timeout)
    return proc


def ok(proc):
    assert proc.returncode == 0, \
        f"{' '.join(proc.args)} exited {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\n" \
        f"stderr:\n{proc.stderr[-3000:]}"
    return proc


def produce_lines(kcat_path, bootstrap, topic, lines, *extra):
    ok(kcat(kcat_path, "-b", bootstrap, "-t", topic, "-P", *extra,
            stdin="".join(line + "\n" for line in lines)))


def consume_all(kcat_path, bootstrap, topic, fmt="%s\\n"):
    proc = ok(kcat(kcat_path, "-b", bootstrap, "-t", topic, "-C", "-o", "beginning", "-e",
                   "-q", "-f", fmt))
    return proc.stdout.splitlines()


def test_metadata_list(broker, topic, kcat_path):
    produce_lines(kcat_path, broker.bootstrap, topic, ["one"])
    out = ok(kcat(kcat_path, "-b", broker.bootstrap, "-L")).stdout
    assert re.search(rf"broker -?\d+ at 127\.0\.0\.1:{broker.port}\b", out), \
        f"broker not listed in kcat -L:\n{out}"
    assert re.search(rf'topic "{re.escape(topic)}" with 1 partitions', out), \
        f"topic {topic} not listed with 1 partition in kcat -L:\n{out}"


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_produce_compressed_then_consume(broker, topic, kcat_path, codec):
    lines = [f"{codec} line {i} " + "x" * (i % 50) for i in range(200)]
    produce_lines(kcat_path, broker.bootstrap, topic, lines, "-z", codec)
    got = consume_all(kcat_path, broker.bootstrap, topic)
    compare(lines, got, f"kcat -z {codec} lines")

    offsets = consume_all(kcat_path, broker.bootstrap, topic, fmt="%o\\n")
    compare([str(i) for i in range(200)], offsets, "offsets")


def test_keys_and_repeated_headers(broker, topic, kcat_path):
    lines = [f"key{i}:value{i}" for i in range(20)]
    produce_lines(kcat_path, broker.bootstrap, topic, lines, "-K", ":",
                  "-H", "h=1", "-H", "h=2")
    got = consume_all(kcat_path, broker.bootstrap, topic, fmt="%k|%s|%h\\n")
    compare([f"key{i}|value{i}|h=1,h=2" for i in range(20)], got, "key|value|headers")


def test_msgver2_feature_enabled(broker, topic, kcat_path):
    proc = ok(kcat(kcat_path, "-b", broker.bootstrap, "-t", topic, "-P", "-d", "feature",
                   stdin="hello\n"))
    features = [line for line in proc.stderr.splitlines() if "feature" in line.lower()]
    assert any("MsgVer2" in line for line in features), \
        "librdkafka did not enable MsgVer2 (needs Produce v3+/Fetch v4+ in ApiVersions); " \
        "feature lines:\n" + "\n".join(features[-20:])
    assert consume_all(kcat_path, broker.bootstrap, topic) == ["hello"]
