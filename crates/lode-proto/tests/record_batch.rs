//! RecordBatch v2 against bytes from another implementation, and the error paths one by
//! one: each malformation gives its own typed error, and none panics.
//!
//! `tests/batch.rs` covers the builder round trip, patching and truncation; this file
//! covers what it does not.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use lode_proto::batch::{
    self, batches, BatchError, Compression, Header, RecordBatch, RecordBatchBuilder, HEADER_SIZE,
    LOG_OVERHEAD, MAGIC_V2, NO_TIMESTAMP,
};
use lode_proto::{Epoch, Offset};
use proptest::prelude::*;

/// Test vectors from sarama (github.com/IBM/sarama, `record_test.go`, MIT licence), a Kafka
/// client written independently of this crate: its encoder's bytes and CRCs.
mod sarama {
    /// One uncompressed record: key [1, 2, 3, 4], value [5, 6, 7], one header
    /// [8, 9, 10] = [11, 12], timestamp delta 5 ms, base timestamp 1479847795000.
    pub const UNCOMPRESSED: &[u8] = &[
        0, 0, 0, 0, 0, 0, 0, 0, // base offset
        0, 0, 0, 70, // batch length
        0, 0, 0, 0, // partition leader epoch
        2, // magic
        84, 121, 97, 253, // crc
        0, 0, // attributes
        0, 0, 0, 0, // last offset delta
        0, 0, 1, 88, 141, 205, 89, 56, // base timestamp
        0, 0, 0, 0, 0, 0, 0, 0, // max timestamp
        0, 0, 0, 0, 0, 0, 0, 0, // producer id
        0, 0, // producer epoch
        0, 0, 0, 0, // base sequence
        0, 0, 0, 1,  // records count
        40, // record length
        0,  // attributes
        10, // timestamp delta
        0,  // offset delta
        8, 1, 2, 3, 4, // key
        6, 5, 6, 7, // value
        2, // header count
        6, 8, 9, 10, // header key
        4, 11, 12, // header value
    ];

    /// The same record, gzip-compressed.
    pub const GZIP: &[u8] = &[
        0, 0, 0, 0, 0, 0, 0, 0, // base offset
        0, 0, 0, 95, // batch length
        0, 0, 0, 0, // partition leader epoch
        2, // magic
        231, 74, 206, 165, // crc
        0, 1, // attributes: gzip
        0, 0, 0, 0, // last offset delta
        0, 0, 1, 88, 141, 205, 89, 56, // base timestamp
        0, 0, 0, 0, 0, 0, 0, 0, // max timestamp
        0, 0, 0, 0, 0, 0, 0, 0, // producer id
        0, 0, // producer epoch
        0, 0, 0, 0, // base sequence
        0, 0, 0, 1, // records count
        31, 139, 8, 0, 0, 9, 110, 136, 0, 255, 0, 21, 0, 234, 255, 40, 0, 10, 0, 8, 1, 2, 3, 4, 6,
        5, 6, 7, 2, 6, 8, 9, 10, 4, 11, 12, 3, 0, 173, 201, 88, 103, 21, 0, 0, 0,
    ];

    /// An empty control batch.
    pub const CONTROL: &[u8] = &[
        0, 0, 0, 0, 0, 0, 0, 0, // base offset
        0, 0, 0, 49, // batch length
        0, 0, 0, 0, // partition leader epoch
        2, // magic
        81, 46, 67, 217, // crc
        0, 32, // attributes: control
        0, 0, 0, 0, // last offset delta
        0, 0, 0, 0, 0, 0, 0, 0, // base timestamp
        0, 0, 0, 0, 0, 0, 0, 0, // max timestamp
        0, 0, 0, 0, 0, 0, 0, 0, // producer id
        0, 0, // producer epoch
        0, 0, 0, 0, // base sequence
        0, 0, 0, 0, // records count
    ];
}

#[test]
fn reads_an_independent_encoders_uncompressed_batch() {
    let (b, rest) = RecordBatch::parse(sarama::UNCOMPRESSED).unwrap();
    assert!(rest.is_empty());
    assert_eq!(b.crc(), u32::from_be_bytes([84, 121, 97, 253]));
    b.validate().unwrap();
    b.validate_records().unwrap();
    assert_eq!(b.base_timestamp(), 1_479_847_795_000);
    let records: Vec<_> = b.records().unwrap().map(Result::unwrap).collect();
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!(r.key, Some(&[1, 2, 3, 4][..]));
    assert_eq!(r.value, Some(&[5, 6, 7][..]));
    assert_eq!(r.timestamp(b.base_timestamp()), 1_479_847_795_005);
    assert_eq!(
        r.headers.iter().collect::<Vec<_>>(),
        [Header {
            key: &[8, 9, 10],
            value: Some(&[11, 12])
        }]
    );

    // Our builder encodes the same record to the same bytes.
    let mut ours = RecordBatchBuilder::new(Offset(0));
    ours.base_timestamp(1_479_847_795_000).push(
        Some(&[1, 2, 3, 4]),
        Some(&[5, 6, 7]),
        &[(&[8, 9, 10], Some(&[11, 12]))],
        5,
    );
    let ours = ours.build();
    let (o, _) = RecordBatch::parse(&ours).unwrap();
    assert_eq!(o.records_bytes(), b.records_bytes());
}

#[test]
fn reads_an_independent_encoders_compressed_and_control_batches() {
    let (gz, _) = RecordBatch::parse(sarama::GZIP).unwrap();
    assert_eq!(gz.compression(), Compression::Gzip);
    gz.validate().unwrap();
    assert_eq!(
        gz.records().unwrap_err(),
        BatchError::Compressed(Compression::Gzip)
    );
    assert_eq!(
        gz.validate_records(),
        Err(BatchError::Compressed(Compression::Gzip))
    );
    // Records start with the gzip magic.
    assert_eq!(&gz.records_bytes()[..2], &[0x1f, 0x8b]);

    let (c, _) = RecordBatch::parse(sarama::CONTROL).unwrap();
    assert!(c.is_control());
    assert_eq!(c.records().unwrap().count(), 0);
    // Sarama writes an empty batch with last offset delta 0, which no client batch is.
    assert_eq!(
        c.validate(),
        Err(BatchError::BadRecordCount {
            count: 0,
            last_offset_delta: 0
        })
    );
}

fn sample() -> Vec<u8> {
    let mut b = RecordBatchBuilder::new(Offset(500));
    b.base_timestamp(1_000)
        .partition_leader_epoch(Epoch(4))
        .producer(9, 2, 100);
    b.push(
        Some(b"a"),
        Some(b"1"),
        &[(b"x", Some(b"y")), (b"x", None)],
        0,
    );
    b.push(None, None, &[], 10);
    b.push(Some(b""), Some(b"three"), &[(b"", Some(b""))], -3);
    b.build()
}

/// Rewrites `batchLength`, `recordsCount` or the records of `bytes` and recomputes the
/// CRC, so that only the structural change is wrong.
fn with_records(bytes: &[u8], count: i32, records: &[u8]) -> Vec<u8> {
    let mut out = bytes[..HEADER_SIZE].to_vec();
    out.extend_from_slice(records);
    let len = i32::try_from(out.len() - LOG_OVERHEAD).unwrap();
    out[8..12].copy_from_slice(&len.to_be_bytes());
    out[57..61].copy_from_slice(&count.to_be_bytes());
    out[23..27].copy_from_slice(&(count - 1).to_be_bytes());
    let crc = crc32c::crc32c(&out[21..]);
    out[17..21].copy_from_slice(&crc.to_be_bytes());
    out
}

#[test]
fn every_cut_of_the_records_section_is_detected_even_with_a_fixed_up_frame() {
    let good = sample();
    let section = &good[HEADER_SIZE..];
    for cut in 0..section.len() {
        let bytes = with_records(&good, 3, &section[..cut]);
        let (b, _) = RecordBatch::parse(&bytes).unwrap();
        let outcome: Result<Vec<_>, _> = b.records().unwrap().collect();
        let err = outcome.unwrap_err();
        assert!(
            matches!(
                err,
                BatchError::BadRecord { .. } | BatchError::Truncated { count: 3, .. }
            ),
            "cut {cut}: {err:?}"
        );
        assert!(b.validate_records().is_err());
    }
}

#[test]
fn record_count_is_checked_against_the_records() {
    let good = sample();
    let section = &good[HEADER_SIZE..];
    let fewer = with_records(&good, 2, section);
    let (b, _) = RecordBatch::parse(&fewer).unwrap();
    b.validate().unwrap(); // the header alone is consistent
    assert!(matches!(
        b.validate_records(),
        Err(BatchError::TrailingRecordBytes { count: 2, .. })
    ));
    let more = with_records(&good, 4, section);
    let (b, _) = RecordBatch::parse(&more).unwrap();
    assert_eq!(
        b.validate_records(),
        Err(BatchError::Truncated { count: 4, found: 3 })
    );
    let negative = with_records(&good, -1, section);
    let (b, _) = RecordBatch::parse(&negative).unwrap();
    assert!(matches!(
        b.records().unwrap_err(),
        BatchError::BadRecordCount { count: -1, .. }
    ));
    assert!(b.validate().is_err());
}

#[test]
fn offset_deltas_must_be_consecutive_for_validate_records_only() {
    // Two records with offset deltas 0 and 2, as compaction can leave them.
    let rec = |od: u8| [14, 0, 0, od * 2, 1, 2, b'v', 0];
    let section = [rec(0), rec(2)].concat();
    let base = RecordBatchBuilder::new(Offset(0)).build();
    let bytes = with_records(&base, 2, &section);
    let (b, _) = RecordBatch::parse(&bytes).unwrap();
    let deltas: Vec<i32> = b
        .records()
        .unwrap()
        .map(|r| r.unwrap().offset_delta)
        .collect();
    assert_eq!(deltas, [0, 2], "the iterator accepts gaps");
    assert_eq!(
        b.validate_records(),
        Err(BatchError::BadOffsetDelta { index: 1, delta: 2 })
    );
}

#[test]
fn overlong_varints_in_records_are_rejected() {
    // Record length 7 written as two bytes (0x8e 0x00) instead of one (0x0e).
    let section = [0x8e, 0x00, 0, 0, 0, 1, 2, b'v', 0];
    let base = RecordBatchBuilder::new(Offset(0)).build();
    let bytes = with_records(&base, 1, &section);
    let (b, _) = RecordBatch::parse(&bytes).unwrap();
    assert_eq!(
        b.validate_records(),
        Err(BatchError::BadRecord {
            index: 0,
            reason: "record length is not a valid varint"
        })
    );
}

#[test]
fn frame_errors_are_typed() {
    let good = sample();
    assert_eq!(
        batch::peek_size(&good[..LOG_OVERHEAD]),
        Ok(Some(good.len()))
    );
    let mut neg = good.clone();
    neg[8..12].copy_from_slice(&(-5_i32).to_be_bytes());
    assert_eq!(batch::peek_size(&neg), Err(BatchError::BadLength(-5)));
    assert_eq!(
        RecordBatch::parse(&neg).unwrap_err(),
        BatchError::BadLength(-5)
    );
    assert_eq!(
        RecordBatch::parse(&good[..5]).unwrap_err(),
        BatchError::TooShort {
            needed: HEADER_SIZE,
            available: 5
        }
    );
    assert_eq!(
        RecordBatch::parse(&good[..70]).unwrap_err(),
        BatchError::TooShort {
            needed: good.len(),
            available: 70
        }
    );
    // A legacy (magic 1) message: rejected, and not patchable either, because its CRC
    // sits where v2 keeps the leader epoch.
    let mut legacy = good.clone();
    legacy[16] = 1;
    assert_eq!(
        RecordBatch::parse(&legacy).unwrap_err(),
        BatchError::BadMagic(1)
    );
    // A small legacy v1 message (offset, size 23, crc, magic 1, attributes, timestamp,
    // null key, value "a"): its size is below a v2 header, yet the magic is what is reported,
    // so a broker can answer "unsupported format" rather than "corrupt".
    let mut v1 = vec![0_u8; 8];
    v1.extend_from_slice(&23_i32.to_be_bytes());
    v1.extend_from_slice(&[0, 0, 0, 0, 1, 0]);
    v1.extend_from_slice(&[0; 8]);
    v1.extend_from_slice(&(-1_i32).to_be_bytes());
    v1.extend_from_slice(&1_i32.to_be_bytes());
    v1.push(b'a');
    assert_eq!(v1.len(), 12 + 23);
    assert_eq!(
        RecordBatch::parse(&v1).unwrap_err(),
        BatchError::BadMagic(1)
    );
    assert_eq!(
        RecordBatch::parse(&v1[..20]).unwrap_err(),
        BatchError::BadMagic(1)
    );
    let before = legacy.clone();
    assert_eq!(
        batch::set_partition_leader_epoch(&mut legacy, Epoch(1)),
        Err(BatchError::BadMagic(1))
    );
    assert_eq!(legacy, before, "a failed patch writes nothing");
    assert!(matches!(
        batch::set_base_offset(&mut [0_u8; HEADER_SIZE - 1], Offset(0)),
        Err(BatchError::TooShort { .. })
    ));
}

#[test]
fn crc_is_checked_before_the_codec() {
    let mut bad = sample();
    bad[22] |= 0x07; // codec 7, CRC not updated
    assert!(matches!(
        RecordBatch::parse(&bad),
        Err(BatchError::BadCrc { .. })
    ));
    assert_eq!(
        RecordBatch::parse_unchecked_crc(&bad).unwrap_err(),
        BatchError::BadCompression(7)
    );
}

#[test]
fn batches_stop_at_the_first_error_and_report_the_clean_prefix() {
    let a = sample();
    let b = RecordBatchBuilder::new(Offset(503)).build();
    let mut buf = [a.clone(), b.clone(), a.clone()].concat();
    let mut it = batches(&buf);
    let sizes: Vec<usize> = it.by_ref().map(|r| r.unwrap().size()).collect();
    assert_eq!(sizes, [a.len(), b.len(), a.len()]);
    assert_eq!(it.position(), buf.len());
    assert!(it.remaining().is_empty());

    // Corrupt the second batch: the first is yielded, then one error, then nothing.
    buf[a.len() + 30] ^= 1;
    buf.truncate(buf.len() - 1);
    let mut it = batches(&buf);
    assert!(it.next().unwrap().is_ok());
    assert!(matches!(it.next(), Some(Err(BatchError::BadCrc { .. }))));
    assert!(it.next().is_none());
    assert_eq!(it.position(), a.len());
    assert_eq!(it.remaining().len(), buf.len() - a.len());

    // A torn tail is TooShort, after the whole batches.
    let torn = [a.clone(), a[..40].to_vec()].concat();
    let mut it = batches(&torn);
    assert!(it.next().unwrap().is_ok());
    assert!(matches!(it.next(), Some(Err(BatchError::TooShort { .. }))));
    assert_eq!(it.position(), a.len());
    assert_eq!(batches(&[]).count(), 0);
}

#[test]
fn builder_flags_and_empty_batches() {
    let mut b = RecordBatchBuilder::new(Offset(3));
    b.transactional(true)
        .control(true)
        .log_append_time(true)
        .control(false);
    assert_eq!(b.record_count(), 0);
    let bytes = b.build();
    assert_eq!(bytes.len(), b.size());
    let (batch, _) = RecordBatch::parse(&bytes).unwrap();
    assert!(batch.is_transactional() && batch.timestamp_type_log_append());
    assert!(!batch.is_control() && !batch.has_delete_horizon());
    assert_eq!(batch.magic(), MAGIC_V2);
    assert_eq!(batch.record_count(), 0);
    assert_eq!(batch.last_offset_delta(), -1);
    assert_eq!(
        batch.next_offset(),
        Offset(3),
        "an empty batch takes no offsets"
    );
    assert_eq!(batch.max_timestamp(), NO_TIMESTAMP);
    assert!(matches!(
        batch.validate(),
        Err(BatchError::BadRecordCount { count: 0, .. })
    ));

    let mut c = RecordBatchBuilder::new(Offset(0));
    c.control(true)
        .push(Some(&[0, 0, 0, 1]), Some(&[0; 6]), &[], 0);
    let bytes = c.try_build().unwrap();
    let (batch, _) = RecordBatch::parse(&bytes).unwrap();
    assert!(batch.is_control());
    batch.validate().unwrap(); // structurally fine: rejecting it is the broker's call
}

#[test]
fn builder_base_timestamp_may_be_set_after_pushing() {
    let mut b = RecordBatchBuilder::new(Offset(0));
    b.push(None, Some(b"v"), &[], 7).base_timestamp(100);
    let bytes = b.build();
    let (batch, _) = RecordBatch::parse(&bytes).unwrap();
    assert_eq!(batch.max_timestamp(), 107);
}

#[test]
fn accessors_saturate_on_extreme_headers() {
    let mut bytes = sample();
    batch::set_base_offset(&mut bytes, Offset(i64::MAX)).unwrap();
    let (b, _) = RecordBatch::parse(&bytes).unwrap();
    assert_eq!(b.last_offset(), Offset(i64::MAX));
    assert_eq!(b.next_offset(), Offset(i64::MAX));
    let r = b.records().unwrap().last().unwrap().unwrap();
    assert_eq!(r.offset(b.base_offset()), Offset(i64::MAX));
}

#[test]
fn messages_name_the_problem() {
    let cases = [
        (
            BatchError::BadLength(3),
            "batch length 3 is below the minimum of 49",
        ),
        (
            BatchError::Truncated { count: 4, found: 1 },
            "records end after 1 of 4 records",
        ),
        (
            BatchError::Compressed(Compression::Zstd),
            "records are compressed with zstd; decompress them to read records",
        ),
        (
            BatchError::BadRecord {
                index: 2,
                reason: "key runs past the end of the record",
            },
            "record 2 is malformed: key runs past the end of the record",
        ),
        (
            BatchError::BadCrc {
                stored: 1,
                computed: 0xabcdef,
            },
            "crc mismatch: stored 0x00000001, computed 0x00abcdef",
        ),
    ];
    for (e, msg) in cases {
        assert_eq!(e.to_string(), msg);
    }
    let debug = format!("{:?}", RecordBatch::parse(&sample()).unwrap().0);
    assert!(debug.contains("base_offset: Offset(500)"), "{debug}");
    for id in 0..8 {
        let c = Compression::from_id(id);
        assert_eq!(c.is_some(), id < 5);
        assert_eq!(c.map(Compression::id), c.map(|_| id));
    }
}

proptest! {
    /// Any change to one byte the CRC covers is reported as exactly a CRC mismatch (CRC-32C
    /// detects every error burst up to 32 bits), even where it would also break the frame.
    #[test]
    fn any_change_in_the_crc_range_is_a_crc_mismatch(pos in 21_usize..10_000, xor in 1_u8..=255) {
        let mut bytes = sample();
        let pos = 21 + (pos - 21) % (bytes.len() - 21);
        bytes[pos] ^= xor;
        prop_assert!(
            matches!(RecordBatch::parse(&bytes), Err(BatchError::BadCrc { .. })),
            "flip at {}", pos
        );
    }

    /// Base offset and leader epoch are outside the CRC: any values leave it valid.
    #[test]
    fn patched_batches_stay_valid(offset: i64, epoch: i32) {
        let mut bytes = sample();
        batch::set_base_offset(&mut bytes, Offset(offset)).unwrap();
        batch::set_partition_leader_epoch(&mut bytes, Epoch(epoch)).unwrap();
        let (b, _) = RecordBatch::parse(&bytes).unwrap();
        b.validate().unwrap();
        b.validate_records().unwrap();
        prop_assert_eq!(b.base_offset(), Offset(offset));
        prop_assert_eq!(b.partition_leader_epoch(), Epoch(epoch));
        prop_assert_eq!(&bytes[16..], &sample()[16..]);
    }

    /// Random records sections behind a valid header and CRC reach the record decoder,
    /// which must report errors, never panic.
    #[test]
    fn random_records_sections_never_panic(
        count in -2_i32..6,
        section in proptest::collection::vec(any::<u8>(), 0..120),
    ) {
        let bytes = with_records(&sample(), count, &section);
        let (b, _) = RecordBatch::parse(&bytes).unwrap();
        if let Ok(records) = b.records() {
            for r in records {
                let _ = r.map(|r| r.headers.iter().count());
            }
        }
        let _ = b.validate_records();
        lode_proto::batch::fuzzing::fuzz_record_batch(&bytes);
    }

    /// Records with headers, including null values and repeated keys, round trip.
    #[test]
    fn headers_round_trip(
        headers in proptest::collection::vec(
            (proptest::collection::vec(any::<u8>(), 0..4),
             proptest::option::of(proptest::collection::vec(any::<u8>(), 0..8))),
            0..6),
    ) {
        let pairs: Vec<(&[u8], Option<&[u8]>)> =
            headers.iter().map(|(k, v)| (k.as_slice(), v.as_deref())).collect();
        let mut b = RecordBatchBuilder::new(Offset(0));
        b.push(None, None, &pairs, 0).push(Some(b"k"), None, &pairs, 1);
        let bytes = b.build();
        let (batch, _) = RecordBatch::parse(&bytes).unwrap();
        batch.validate_records().unwrap();
        for r in batch.records().unwrap() {
            let r = r.unwrap();
            prop_assert_eq!(r.headers.len(), pairs.len());
            let back: Vec<(&[u8], Option<&[u8]>)> =
                r.headers.iter().map(|h| (h.key, h.value)).collect();
            prop_assert_eq!(&back, &pairs);
        }
        lode_proto::batch::fuzzing::fuzz_record_batch(&bytes);
    }
}
