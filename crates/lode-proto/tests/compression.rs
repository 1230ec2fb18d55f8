//! Compressed RecordBatch v2: round trips through every codec, bytes written by other
//! clients (kafka-python with the C libraries Kafka clients use, sarama), corrupt and
//! truncated input, snappy's two framings, and concatenated frames.
//!
//! The decompression-bomb test, which counts allocations, is in `compression_bomb.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use std::borrow::Cow;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use lode_proto::batch::compression::XERIAL_MAGIC;
use lode_proto::batch::fuzzing::fuzz_record_batch;
use lode_proto::batch::{
    compress, decompress, BatchError, Compression, Header, RecordBatch, RecordBatchBuilder,
    HEADER_SIZE,
};
use lode_proto::{Epoch, Offset};
use proptest::prelude::*;

const CODECS: [Compression; 4] = [
    Compression::Gzip,
    Compression::Snappy,
    Compression::Lz4,
    Compression::Zstd,
];
const MIB: usize = 1 << 20;
const BASE_TIMESTAMP: i64 = 1_700_000_000_000;

/// Record `i` of the test batches (and of the kafka-python vectors: `record()` in
/// `vectors/make.py` is its twin): keys, values, nulls and repeated header keys.
#[allow(clippy::type_complexity)]
fn record(
    i: usize,
) -> (
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Vec<(Vec<u8>, Option<Vec<u8>>)>,
) {
    let key = (i % 11 != 0).then(|| format!("key-{}", i % 7).into_bytes());
    let value = (i % 13 != 0).then(|| {
        let mut v = format!("value-{i}-").into_bytes();
        v.extend(b"abcdefgh".repeat(i % 5));
        v
    });
    let headers = if i % 2 == 0 {
        vec![
            (b"h".to_vec(), Some(format!("{}", i % 3).into_bytes())),
            (b"h".to_vec(), None),
            (b"trace".to_vec(), Some(b"t".to_vec())),
        ]
    } else {
        vec![]
    };
    (key, value, headers)
}

fn builder(n: usize) -> RecordBatchBuilder {
    let mut b = RecordBatchBuilder::new(Offset(1000));
    b.base_timestamp(BASE_TIMESTAMP)
        .producer(42, 3, 17)
        .partition_leader_epoch(Epoch(5));
    for i in 0..n {
        let (key, value, headers) = record(i);
        let headers: Vec<(&[u8], Option<&[u8]>)> = headers
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_deref()))
            .collect();
        let ts = i64::try_from(i).unwrap();
        b.push(key.as_deref(), value.as_deref(), &headers, ts);
    }
    b
}

fn build(codec: Compression, n: usize) -> Vec<u8> {
    let mut b = builder(n);
    b.compression(codec);
    b.build()
}

/// Checks that the records of `records` are `record(0..n)` with offset and timestamp
/// deltas `0..n`.
fn check_records(batch: &RecordBatch<'_>, section: &[u8], n: usize) {
    let mut count = 0;
    for (i, r) in batch.records_in(section).unwrap().enumerate() {
        let r = r.unwrap();
        let (key, value, headers) = record(i);
        assert_eq!(r.offset_delta, i32::try_from(i).unwrap());
        assert_eq!(r.timestamp_delta, i64::try_from(i).unwrap());
        assert_eq!(r.key, key.as_deref(), "record {i}");
        assert_eq!(r.value, value.as_deref(), "record {i}");
        let got: Vec<Header<'_>> = r.headers.iter().collect();
        let want: Vec<Header<'_>> = headers
            .iter()
            .map(|(k, v)| Header {
                key: k,
                value: v.as_deref(),
            })
            .collect();
        assert_eq!(got, want, "record {i}");
        count += 1;
    }
    assert_eq!(count, n);
    batch.validate_records_in(section).unwrap();
}

/// Replaces the records section of `batch` (and its codec bits and record count), fixing
/// up the length and CRC: a batch as a client with another encoder would send it.
fn with_section(batch: &[u8], codec: Compression, count: i32, section: &[u8]) -> Vec<u8> {
    let mut out = batch[..HEADER_SIZE].to_vec();
    out.extend_from_slice(section);
    let len = i32::try_from(out.len() - 12).unwrap();
    out[8..12].copy_from_slice(&len.to_be_bytes());
    out[22] = (out[22] & !0x07) | codec.id();
    out[23..27].copy_from_slice(&(count - 1).to_be_bytes());
    out[57..61].copy_from_slice(&count.to_be_bytes());
    let crc = crc32c::crc32c(&out[21..]);
    out[17..21].copy_from_slice(&crc.to_be_bytes());
    out
}

#[test]
fn every_codec_round_trips_a_batch() {
    const N: usize = 500;
    let plain = build(Compression::None, N);
    let (plain_batch, _) = RecordBatch::parse(&plain).unwrap();
    for codec in CODECS {
        let bytes = build(codec, N);
        let (b, rest) = RecordBatch::parse(&bytes).unwrap();
        assert!(rest.is_empty());
        b.validate().unwrap();
        assert_eq!(b.compression(), codec);
        assert_eq!(b.attributes() & 0x07, i16::from(codec.id()));
        assert_eq!(b.record_count(), i32::try_from(N).unwrap());
        assert_eq!(b.last_offset_delta(), i32::try_from(N - 1).unwrap());
        assert_eq!(
            (b.producer_id(), b.producer_epoch(), b.base_sequence()),
            (42, 3, 17)
        );
        assert_eq!(b.partition_leader_epoch(), Epoch(5));
        assert_eq!(b.max_timestamp(), BASE_TIMESTAMP + 499);
        // The header fields other than the codec bits, length and CRC match the
        // uncompressed batch.
        assert_eq!(bytes[..8], plain[..8]);
        assert_eq!(bytes[23..HEADER_SIZE], plain[23..HEADER_SIZE]);
        assert_eq!(b.records().unwrap_err(), BatchError::Compressed(codec));
        assert_eq!(b.validate_records(), Err(BatchError::Compressed(codec)));

        let section = b.decompressed_records(MIB).unwrap();
        assert!(matches!(section, Cow::Owned(_)));
        assert_eq!(&*section, plain_batch.records_bytes(), "{codec}");
        check_records(&b, &section, N);
        assert!(
            bytes.len() * 2 < plain.len(),
            "{codec}: {} compressed vs {} plain",
            bytes.len(),
            plain.len()
        );
        fuzz_record_batch(&bytes);
    }
}

#[test]
fn an_uncompressed_batch_is_borrowed_whatever_the_limit() {
    let bytes = build(Compression::None, 20);
    let (b, _) = RecordBatch::parse(&bytes).unwrap();
    let section = b.decompressed_records(0).unwrap();
    assert!(matches!(section, Cow::Borrowed(s) if s == b.records_bytes()));
    check_records(&b, &section, 20);
    assert!(b.records_in(&section).unwrap().eq(b.records().unwrap()));
    // The free function copies, and so applies the limit.
    assert_eq!(
        decompress(Compression::None, b.records_bytes(), 3),
        Err(BatchError::DecompressedTooLarge {
            codec: Compression::None,
            limit: 3
        })
    );
}

#[test]
fn builder_flags_and_empty_batches_survive_compression() {
    for codec in CODECS {
        let mut b = builder(3);
        b.compression(codec)
            .transactional(true)
            .control(true)
            .log_append_time(true);
        let bytes = b.build();
        let (batch, _) = RecordBatch::parse(&bytes).unwrap();
        assert_eq!(batch.compression(), codec);
        assert!(
            batch.is_transactional() && batch.is_control() && batch.timestamp_type_log_append()
        );
        check_records(&batch, &batch.decompressed_records(MIB).unwrap(), 3);
        // The codec can be switched back off.
        b.compression(Compression::None);
        let rebuilt = b.build();
        let (plain, _) = RecordBatch::parse(&rebuilt).unwrap();
        assert_eq!(plain.compression(), Compression::None);
        assert_eq!(plain.attributes() & 0x07, 0);

        // An empty batch compresses to a valid, empty, compressed section.
        let mut empty = RecordBatchBuilder::new(Offset(0));
        empty.compression(codec);
        let bytes = empty.build();
        let (batch, _) = RecordBatch::parse(&bytes).unwrap();
        assert_eq!(batch.compression(), codec);
        let section = batch.decompressed_records(MIB).unwrap();
        assert!(section.is_empty());
        assert_eq!(batch.records_in(&section).unwrap().count(), 0);
    }
}

#[test]
fn the_limit_is_exact() {
    let plain = build(Compression::None, 100);
    let (p, _) = RecordBatch::parse(&plain).unwrap();
    let len = p.records_bytes().len();
    for codec in CODECS {
        let bytes = build(codec, 100);
        let (b, _) = RecordBatch::parse(&bytes).unwrap();
        assert_eq!(b.decompressed_records(len).unwrap().len(), len);
        assert_eq!(
            b.decompressed_records(len - 1),
            Err(BatchError::DecompressedTooLarge {
                codec,
                limit: len - 1
            }),
            "{codec}"
        );
        assert!(matches!(
            b.decompressed_records(0),
            Err(BatchError::DecompressedTooLarge { limit: 0, .. })
        ));
    }
}

/// Every truncation of a compressed section is an error, and every flipped byte is an error
/// or a (different) result within the limit; nothing panics.
#[test]
fn corrupt_and_truncated_sections_are_errors_not_panics() {
    for codec in CODECS {
        let bytes = build(codec, 30);
        let (b, _) = RecordBatch::parse(&bytes).unwrap();
        let section = b.records_bytes();
        let limit = 64 * 1024;
        let full = decompress(codec, section, limit).unwrap();
        for cut in 0..section.len() {
            match decompress(codec, &section[..cut], limit) {
                Err(BatchError::Decompress { codec: c, .. }) => assert_eq!(c, codec),
                // Xerial framing has no end mark: cut between chunks it is a shorter
                // valid stream, whose records then come up short (and the CRC, which
                // covers the section, catches it first).
                Ok(out) if codec == Compression::Snappy => {
                    assert!(out.len() < full.len() && full.starts_with(&out));
                    assert!(b.records_in(&out).unwrap().any(|r| r.is_err()));
                }
                r => panic!("{codec}: truncated to {cut} of {}: {r:?}", section.len()),
            }
        }
        for i in 0..section.len() {
            for flip in [0x01, 0x80, 0xFF] {
                let mut bad = section.to_vec();
                bad[i] ^= flip;
                match decompress(codec, &bad, limit) {
                    Ok(out) => assert!(out.len() <= limit),
                    Err(BatchError::Decompress { codec: c, .. }) => assert_eq!(c, codec),
                    Err(BatchError::DecompressedTooLarge { codec: c, .. }) => assert_eq!(c, codec),
                    Err(e) => panic!("{codec}: unexpected error {e}"),
                }
                // As a batch: the CRC catches it, and the harness decompresses it anyway.
                let batch = with_section(&bytes, codec, 30, &bad);
                fuzz_record_batch(&batch);
            }
        }
        // Trailing bytes after the compressed data are an error, not ignored.
        let mut trailing = section.to_vec();
        trailing.push(0);
        assert!(
            matches!(
                decompress(codec, &trailing, limit),
                Err(BatchError::Decompress { .. })
            ),
            "{codec}"
        );
        // So is empty input.
        assert!(matches!(
            decompress(codec, &[], limit),
            Err(BatchError::Decompress { .. })
        ));
    }
}

/// Checksums in the formats that have them are verified.
#[test]
fn checksums_are_verified() {
    let data = b"checksummed data, checksummed data, checksummed data".repeat(10);
    // gzip: CRC-32 and size in the trailer.
    let mut gz = compress(Compression::Gzip, &data).unwrap();
    let n = gz.len();
    gz[n - 8] ^= 1;
    assert!(decompress(Compression::Gzip, &gz, MIB).is_err());
    // zstd: our encoder writes a content checksum (the last 4 bytes).
    let mut zs = compress(Compression::Zstd, &data).unwrap();
    let n = zs.len();
    zs[n - 1] ^= 1;
    let err = decompress(Compression::Zstd, &zs, MIB).unwrap_err();
    assert!(err.to_string().contains("checksum"), "{err}");
}

#[test]
fn snappy_reads_xerial_framing_and_raw_blocks() {
    const N: usize = 4000; // several 32 KiB xerial chunks
    let plain = build(Compression::None, N);
    let (p, _) = RecordBatch::parse(&plain).unwrap();
    let records = p.records_bytes();
    assert!(records.len() > 3 * 32 * 1024);

    // What the builder writes: xerial framing, 32 KiB chunks.
    let xerial = build(Compression::Snappy, N);
    let (x, _) = RecordBatch::parse(&xerial).unwrap();
    let framed = x.records_bytes();
    assert_eq!(framed[..8], XERIAL_MAGIC);
    assert_eq!(framed[8..16], [0, 0, 0, 1, 0, 0, 0, 1]);
    let mut at = 16;
    let mut chunks = 0;
    while at < framed.len() {
        let len = i32::from_be_bytes(framed[at..at + 4].try_into().unwrap());
        let block = &framed[at + 4..at + 4 + usize::try_from(len).unwrap()];
        assert!(snap::raw::decompress_len(block).unwrap() <= 32 * 1024);
        at += 4 + block.len();
        chunks += 1;
    }
    assert_eq!(at, framed.len());
    assert_eq!(chunks, records.len().div_ceil(32 * 1024));
    check_records(&x, &x.decompressed_records(MIB).unwrap(), N);

    // What librdkafka and sarama write: one raw block, no framing.
    let raw = snap::raw::Encoder::new().compress_vec(records).unwrap();
    let raw_batch = with_section(&plain, Compression::Snappy, i32::try_from(N).unwrap(), &raw);
    let (r, _) = RecordBatch::parse(&raw_batch).unwrap();
    r.validate().unwrap();
    check_records(&r, &r.decompressed_records(MIB).unwrap(), N);

    // Xerial framing with one chunk for everything, and with the version fields
    // little-endian (as some producers write them): both are read.
    let mut one_chunk = XERIAL_MAGIC.to_vec();
    one_chunk.extend([1, 0, 0, 0, 1, 0, 0, 0]);
    one_chunk.extend(i32::try_from(raw.len()).unwrap().to_be_bytes());
    one_chunk.extend(&raw);
    assert_eq!(
        decompress(Compression::Snappy, &one_chunk, MIB).unwrap(),
        records
    );
    // Header only: no chunks, no data.
    assert_eq!(
        decompress(Compression::Snappy, &one_chunk[..16], MIB).unwrap(),
        b""
    );
    // A raw block states its length up front: too large fails before decoding.
    assert_eq!(
        decompress(Compression::Snappy, &raw, records.len() - 1),
        Err(BatchError::DecompressedTooLarge {
            codec: Compression::Snappy,
            limit: records.len() - 1
        })
    );
    // Broken framing.
    for bad in [
        &one_chunk[..10],                  // header cut short
        &one_chunk[..18],                  // chunk length cut short
        &one_chunk[..one_chunk.len() - 1], // chunk cut short
    ] {
        assert!(matches!(
            decompress(Compression::Snappy, bad, MIB),
            Err(BatchError::Decompress { .. })
        ));
    }
    let mut negative = one_chunk.clone();
    negative[16..20].copy_from_slice(&(-1_i32).to_be_bytes());
    assert!(decompress(Compression::Snappy, &negative, MIB).is_err());
}

#[test]
fn concatenated_and_skippable_frames_are_read() {
    let a = b"first frame ".repeat(100);
    let b = b"second frame ".repeat(100);
    let both = [a.as_slice(), b.as_slice()].concat();
    for codec in [Compression::Gzip, Compression::Lz4, Compression::Zstd] {
        let two = [compress(codec, &a).unwrap(), compress(codec, &b).unwrap()].concat();
        assert_eq!(decompress(codec, &two, MIB).unwrap(), both, "{codec}");
        assert!(matches!(
            decompress(codec, &two, a.len() + 10),
            Err(BatchError::DecompressedTooLarge { .. })
        ));
    }
    // lz4 and zstd share skippable frames: magic 0x184D2A5?, length, payload.
    for codec in [Compression::Lz4, Compression::Zstd] {
        let mut skippable = 0x184D_2A53_u32.to_le_bytes().to_vec();
        skippable.extend(5_u32.to_le_bytes());
        skippable.extend(b"12345");
        let framed = [
            skippable.clone(),
            compress(codec, &a).unwrap(),
            skippable.clone(),
        ]
        .concat();
        assert_eq!(decompress(codec, &framed, MIB).unwrap(), a, "{codec}");
        // Only skippable frames: no data frame at all.
        assert!(decompress(codec, &skippable, MIB).is_err());
        // A skippable frame whose length runs past the end.
        assert!(decompress(codec, &skippable[..10], MIB).is_err());
    }
}

/// An LZ4 frame's own checksums, content size and linked blocks, from frames built by hand
/// with the block compressor (our encoder writes none of these).
#[test]
fn lz4_frame_options_are_honoured() {
    let data: Vec<u8> = (0..200_000_u32)
        .flat_map(|i| (i % 251).to_le_bytes())
        .collect();
    let xxh = |d: &[u8]| twox_hash::XxHash32::oneshot(0, d);
    // FLG: version 1, independent blocks, block checksums, content size, content checksum.
    let flg = 0x40 | 0x20 | 0x10 | 0x08 | 0x04;
    let bd = 0x40; // 64 KiB blocks
    let mut descriptor = vec![flg, bd];
    descriptor.extend(u64::try_from(data.len()).unwrap().to_le_bytes());
    let mut frame = 0x184D_2204_u32.to_le_bytes().to_vec();
    frame.extend(&descriptor);
    frame.push((xxh(&descriptor) >> 8) as u8);
    for (i, chunk) in data.chunks(64 * 1024).enumerate() {
        // Alternate compressed and stored blocks.
        let (word, block) = if i % 2 == 0 {
            let c = lz4_flex::block::compress(chunk);
            (u32::try_from(c.len()).unwrap(), c)
        } else {
            (
                u32::try_from(chunk.len()).unwrap() | 0x8000_0000,
                chunk.to_vec(),
            )
        };
        frame.extend(word.to_le_bytes());
        frame.extend(&block);
        frame.extend(xxh(&block).to_le_bytes());
    }
    frame.extend(0_u32.to_le_bytes());
    frame.extend(xxh(&data).to_le_bytes());
    assert_eq!(decompress(Compression::Lz4, &frame, MIB).unwrap(), data);
    // The content size is checked against the limit before decoding anything.
    assert_eq!(
        decompress(Compression::Lz4, &frame, data.len() - 1),
        Err(BatchError::DecompressedTooLarge {
            codec: Compression::Lz4,
            limit: data.len() - 1
        })
    );
    // Each checksum is verified: descriptor, a block, the content.
    let header_checksum_at = 4 + descriptor.len();
    let last_block_checksum_at = frame.len() - 12; // then the end mark and content checksum
    let content_checksum_at = frame.len() - 1;
    for at in [
        header_checksum_at,
        last_block_checksum_at,
        content_checksum_at,
    ] {
        let mut bad = frame.clone();
        bad[at] ^= 1;
        let err = decompress(Compression::Lz4, &bad, MIB).unwrap_err();
        assert!(err.to_string().contains("checksum"), "{err}");
    }
}

// ---- interoperability -------------------------------------------------------------------

fn vector(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Twin of `payload()` in `vectors/make.py`.
fn payload() -> Vec<u8> {
    (0..1300)
        .flat_map(|i| {
            format!("line {i}: the quick brown fox jumps over the lazy dog\n").into_bytes()
        })
        .collect()
}

/// Sections compressed by kafka.codec (python-snappy, lz4 and zstandard wrap the C
/// libraries librdkafka and the Java client use; gzip is zlib).
#[test]
fn reads_sections_compressed_by_the_c_libraries() {
    let p = payload();
    for (name, codec) in [
        ("gzip.bin", Compression::Gzip),
        ("snappy_xerial.bin", Compression::Snappy),
        ("snappy_raw.bin", Compression::Snappy),
        ("lz4.bin", Compression::Lz4),
        ("lz4_linked_checksums.bin", Compression::Lz4),
        ("zstd.bin", Compression::Zstd),
        ("zstd_streamed.bin", Compression::Zstd),
    ] {
        let data = vector(name);
        assert_eq!(decompress(codec, &data, MIB).unwrap(), p, "{name}");
        assert_eq!(decompress(codec, &data, p.len()).unwrap(), p, "{name}");
        assert!(
            matches!(
                decompress(codec, &data, p.len() - 1),
                Err(BatchError::DecompressedTooLarge { .. })
            ),
            "{name}"
        );
    }
    // The streamed zstd frame declares a 2 MiB window and no content size, as Java's and
    // librdkafka's do; it decodes with a limit below the window.
    let streamed = vector("zstd_streamed.bin");
    assert_eq!(streamed[4] & 0xE0, 0, "not single-segment, no content size");
    assert_eq!(streamed[5], 0x58, "window log 21");
    assert_eq!(
        decompress(Compression::Zstd, &streamed, 100_000).unwrap(),
        p
    );
}

/// Whole batches built by kafka-python's DefaultRecordBatchBuilder with each codec (and
/// one with a raw snappy block, as librdkafka writes).
#[test]
fn reads_batches_built_by_kafka_python() {
    for (name, codec) in [
        ("batch_gzip.bin", Compression::Gzip),
        ("batch_snappy.bin", Compression::Snappy),
        ("batch_snappy_raw.bin", Compression::Snappy),
        ("batch_lz4.bin", Compression::Lz4),
        ("batch_zstd.bin", Compression::Zstd),
    ] {
        let bytes = vector(name);
        let (b, rest) = RecordBatch::parse(&bytes).unwrap();
        assert!(rest.is_empty());
        b.validate().unwrap();
        assert_eq!(b.compression(), codec, "{name}");
        assert_eq!(b.base_timestamp(), BASE_TIMESTAMP);
        assert_eq!(b.max_timestamp(), BASE_TIMESTAMP + 999);
        let section = b.decompressed_records(MIB).unwrap();
        check_records(&b, &section, 1000);
        fuzz_record_batch(&bytes);
    }
    let raw = vector("batch_snappy_raw.bin");
    assert_ne!(raw[HEADER_SIZE..HEADER_SIZE + 8], XERIAL_MAGIC);
}

/// Test vectors from sarama (github.com/IBM/sarama, `record_test.go`, MIT licence): one
/// record, key [1, 2, 3, 4], value [5, 6, 7], header [8, 9, 10] = [11, 12], compressed by
/// Go's gzip, a raw snappy block, and an lz4 frame with a stored block and a content
/// checksum.
mod sarama {
    const HEADER: [u8; 49] = [
        0, 0, 0, 0, // partition leader epoch
        2, // magic
        0, 0, 0, 0, // crc (filled in by the test)
        0, 0, // attributes (filled in)
        0, 0, 0, 0, // last offset delta
        0, 0, 1, 88, 141, 205, 89, 56, // base timestamp
        0, 0, 0, 0, 0, 0, 0, 0, // max timestamp
        0, 0, 0, 0, 0, 0, 0, 0, // producer id
        0, 0, // producer epoch
        0, 0, 0, 0, // base sequence
        0, 0, 0, 1, // records count
    ];
    pub const GZIP: &[u8] = &[
        31, 139, 8, 0, 0, 9, 110, 136, 0, 255, 0, 21, 0, 234, 255, 40, 0, 10, 0, 8, 1, 2, 3, 4, 6,
        5, 6, 7, 2, 6, 8, 9, 10, 4, 11, 12, 3, 0, 173, 201, 88, 103, 21, 0, 0, 0,
    ];
    pub const SNAPPY: &[u8] = &[
        21, 80, 40, 0, 10, 0, 8, 1, 2, 3, 4, 6, 5, 6, 7, 2, 6, 8, 9, 10, 4, 11, 12,
    ];
    pub const LZ4: &[u8] = &[
        4, 34, 77, 24, 100, 112, 185, 21, 0, 0, 128, 40, 0, 10, 0, 8, 1, 2, 3, 4, 6, 5, 6, 7, 2, 6,
        8, 9, 10, 4, 11, 12, 0, 0, 0, 0, 12, 59, 239, 146,
    ];
    /// The whole batch, with sarama's CRC for it.
    pub fn batch(codec: u8, section: &[u8], crc: [u8; 4]) -> Vec<u8> {
        let len = i32::try_from(HEADER.len() + section.len()).unwrap();
        let mut out = vec![0; 8];
        out.extend(len.to_be_bytes());
        out.extend(HEADER);
        out[17..21].copy_from_slice(&crc);
        out[22] = codec;
        out.extend(section);
        out
    }
}

#[test]
fn reads_batches_compressed_by_sarama() {
    for (codec, section, crc) in [
        (Compression::Gzip, sarama::GZIP, [231, 74, 206, 165]),
        (Compression::Snappy, sarama::SNAPPY, [21, 0, 159, 97]),
        (Compression::Lz4, sarama::LZ4, [169, 74, 119, 197]),
    ] {
        let bytes = sarama::batch(codec.id(), section, crc);
        // Parsing checks sarama's CRC, so the batch is byte for byte what sarama wrote.
        let (b, _) = RecordBatch::parse(&bytes).unwrap();
        b.validate().unwrap();
        let section = b.decompressed_records(MIB).unwrap();
        let records: Vec<_> = b
            .records_in(&section)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(records.len(), 1, "{codec}");
        let r = &records[0];
        assert_eq!(r.key, Some(&[1, 2, 3, 4][..]));
        assert_eq!(r.value, Some(&[5, 6, 7][..]));
        assert_eq!(r.timestamp_delta, 5);
        let h: Vec<Header<'_>> = r.headers.iter().collect();
        assert_eq!(
            h,
            [Header {
                key: &[8, 9, 10],
                value: Some(&[11, 12])
            }]
        );
    }
}

/// The Python clients' interpreter, if this checkout has it (`.venv-clients`, set up for
/// the real-client tests), or `LODE_CLIENTS_PYTHON`.
fn clients_python() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LODE_CLIENTS_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv-clients/bin/python");
    p.exists().then_some(p)
}

/// kafka-python reads the batches this crate compresses: CRC, codec, every record.
/// Skipped (with a note) where the clients' venv is not installed.
#[test]
fn kafka_python_reads_our_compressed_batches() {
    let Some(python) = clients_python() else {
        eprintln!("skipped: no .venv-clients (set LODE_CLIENTS_PYTHON to run it)");
        return;
    };
    const SCRIPT: &str = r#"
import sys
from kafka.record.default_records import DefaultRecordBatch
data = sys.stdin.buffer.read()
b = DefaultRecordBatch(data)
assert b.validate_crc(), "crc"
out = [str(b.compression_type)]
for r in b:
    hs = ";".join("%s=%s" % (k, "null" if v is None else v.decode()) for k, v in r.headers)
    out.append("%d|%d|%s|%s|%s" % (r.offset, r.timestamp,
        "null" if r.key is None else r.key.decode(),
        "null" if r.value is None else r.value.decode(), hs))
print("\n".join(out))
"#;
    const N: usize = 300;
    let mut want = Vec::new();
    for i in 0..N {
        let (key, value, headers) = record(i);
        let s = |v: Option<Vec<u8>>| v.map_or("null".into(), |v| String::from_utf8(v).unwrap());
        let hs: Vec<String> = headers
            .into_iter()
            .map(|(k, v)| format!("{}={}", String::from_utf8(k).unwrap(), s(v)))
            .collect();
        want.push(format!(
            "{}|{}|{}|{}|{}",
            1000 + i,
            BASE_TIMESTAMP + i64::try_from(i).unwrap(),
            s(key),
            s(value),
            hs.join(";")
        ));
    }
    for codec in CODECS {
        let bytes = build(codec, N);
        let mut child = Command::new(&python)
            .args(["-c", SCRIPT])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&bytes).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{codec}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some(codec.id().to_string().as_str()));
        let got: Vec<&str> = lines.collect();
        assert_eq!(got, want, "{codec}");
    }
}

// ---- properties ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_bytes_round_trip(
        data in proptest::collection::vec(any::<u8>(), 0..20_000),
        repeat in 1_usize..4,
    ) {
        let data = data.repeat(repeat);
        for codec in CODECS {
            let c = compress(codec, &data).unwrap();
            prop_assert_eq!(&decompress(codec, &c, data.len()).unwrap(), &data);
        }
    }

    #[test]
    fn arbitrary_input_is_an_error_or_bounded_output(
        data in proptest::collection::vec(any::<u8>(), 0..2_000),
        codec in prop::sample::select(CODECS.to_vec()),
    ) {
        if let Ok(out) = decompress(codec, &data, 64 * 1024) {
            prop_assert!(out.len() <= 64 * 1024);
        }
    }

    /// Random input behind a valid magic reaches deeper into each decoder.
    #[test]
    fn arbitrary_frames_are_errors_or_bounded_output(
        data in proptest::collection::vec(any::<u8>(), 0..2_000),
    ) {
        let prefixes: [(Compression, &[u8]); 4] = [
            (Compression::Gzip, &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255]),
            (Compression::Snappy, &[0x82, b'S', b'N', b'A', b'P', b'P', b'Y', 0, 0, 0, 0, 1, 0, 0, 0, 1]),
            (Compression::Lz4, &[0x04, 0x22, 0x4d, 0x18]),
            (Compression::Zstd, &[0x28, 0xb5, 0x2f, 0xfd]),
        ];
        for (codec, prefix) in prefixes {
            let input = [prefix, &data].concat();
            if let Ok(out) = decompress(codec, &input, 64 * 1024) {
                prop_assert!(out.len() <= 64 * 1024);
            }
        }
    }
}
