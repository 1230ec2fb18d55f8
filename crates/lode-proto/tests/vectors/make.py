#!/usr/bin/env python3
"""Writes the compression interoperability vectors that tests/compression.rs reads.

Run with the Python clients' venv (kafka-python with python-snappy, lz4, zstandard):

    .venv-clients/bin/python crates/lode-proto/tests/vectors/make.py

Every vector is compressed by the same libraries Kafka clients use (kafka.codec and
kafka-python's DefaultRecordBatchBuilder), from deterministic inputs that the Rust test
regenerates: `payload()` and `record(i)` below must stay in step with their twins there.
Re-running changes only the gzip files' bytes (gzip stamps the current time in its header).
"""

import os

import lz4.frame
import snappy
import zstandard

from kafka import codec
from kafka.record import default_records
from kafka.record.default_records import DefaultRecordBatchBuilder

OUT = os.path.dirname(os.path.abspath(__file__))

BATCH_RECORDS = 1000
BASE_TIMESTAMP = 1_700_000_000_000


def payload():
    """About 70 KiB of repetitive text: several 32 KiB xerial chunks and 64 KiB lz4 blocks."""
    return b"".join(b"line %d: the quick brown fox jumps over the lazy dog\n" % i
                    for i in range(1300))


def record(i):
    """Key, value and headers of record i of the batch vectors."""
    key = None if i % 11 == 0 else b"key-%d" % (i % 7)
    value = None if i % 13 == 0 else b"value-%d-" % i + b"abcdefgh" * (i % 5)
    if i % 2 == 0:
        headers = [("h", b"%d" % (i % 3)), ("h", None), ("trace", b"t")]
    else:
        headers = []
    return key, value, headers


def batch(codec_id):
    b = DefaultRecordBatchBuilder(
        magic=2, compression_type=codec_id, is_transactional=False,
        producer_id=-1, producer_epoch=-1, base_sequence=-1, batch_size=1 << 30)
    for i in range(BATCH_RECORDS):
        key, value, headers = record(i)
        assert b.append(i, BASE_TIMESTAMP + i, key, value, headers) is not None
    out = bytes(b.build())
    assert out[22] & 0x07 == codec_id, "kafka-python sent the batch uncompressed"
    return out


def zstd_streamed(data):
    """A frame written the way Java's ZstdOutputStream and librdkafka write one: streamed,
    so it declares no content size and the level's full window."""
    c = zstandard.ZstdCompressor(level=3, write_content_size=False).compressobj()
    return c.compress(data) + c.flush()


def write(name, data):
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)
    print("%-28s %7d bytes" % (name, len(data)))


def main():
    p = payload()
    write("gzip.bin", codec.gzip_encode(p))
    write("snappy_xerial.bin", codec.snappy_encode(p))
    write("snappy_raw.bin", codec.snappy_encode(p, xerial_compatible=False))
    write("lz4.bin", codec.lz4_encode(p))
    write("lz4_linked_checksums.bin", lz4.frame.compress(
        p, block_linked=True, block_checksum=True, content_checksum=True,
        store_size=False))
    write("zstd.bin", codec.zstd_encode(p))
    write("zstd_streamed.bin", zstd_streamed(p))

    write("batch_gzip.bin", batch(1))
    write("batch_snappy.bin", batch(2))
    write("batch_lz4.bin", batch(3))
    write("batch_zstd.bin", batch(4))
    # librdkafka's snappy: one raw block, no xerial framing.
    xerial = default_records.snappy_encode
    default_records.snappy_encode = lambda data: snappy.compress(data)
    try:
        write("batch_snappy_raw.bin", batch(2))
    finally:
        default_records.snappy_encode = xerial

    # Sanity: kafka-python reads back what it wrote.
    for name in ("gzip", "snappy_xerial", "snappy_raw", "lz4", "zstd", "zstd_streamed"):
        with open(os.path.join(OUT, name + ".bin"), "rb") as f:
            data = f.read()
        decode = {"gzip": codec.gzip_decode, "lz4": codec.lz4_decode,
                  "zstd": codec.zstd_decode, "zstd_streamed": codec.zstd_decode}.get(
                      name, codec.snappy_decode)
        assert decode(data) == p, name


if __name__ == "__main__":
    main()
