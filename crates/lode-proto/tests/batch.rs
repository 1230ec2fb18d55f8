//! RecordBatch v2: round trips, validation, patching, and hostile input.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use lode_proto::batch::{
    self, BatchError, Compression, RecordBatch, RecordBatchBuilder, HEADER_SIZE,
};
use lode_proto::{Epoch, Offset};
use proptest::prelude::*;

fn sample() -> Vec<u8> {
    let mut b = RecordBatchBuilder::new(Offset(100));
    b.base_timestamp(1_700_000_000_000)
        .producer(42, 3, 17)
        .partition_leader_epoch(Epoch(9));
    b.push(
        Some(b"k0"),
        Some(b"v0"),
        &[(b"h", Some(b"1")), (b"h", Some(b"2")), (b"n", None)],
        0,
    );
    b.push(None, Some(b""), &[], 5);
    b.push(Some(b"k2"), None, &[], 3);
    b.build()
}

#[test]
fn builder_round_trip() {
    let bytes = sample();
    let (b, rest) = RecordBatch::parse(&bytes).unwrap();
    assert!(rest.is_empty());
    b.validate().unwrap();
    b.validate_records().unwrap();
    assert_eq!(b.size(), bytes.len());
    assert_eq!(b.base_offset(), Offset(100));
    assert_eq!(b.last_offset(), Offset(102));
    assert_eq!(b.next_offset(), Offset(103));
    assert_eq!(b.record_count(), 3);
    assert_eq!(b.partition_leader_epoch(), Epoch(9));
    assert_eq!(b.magic(), 2);
    assert_eq!(b.compression(), Compression::None);
    assert_eq!(
        (b.producer_id(), b.producer_epoch(), b.base_sequence()),
        (42, 3, 17)
    );
    assert_eq!(b.base_timestamp(), 1_700_000_000_000);
    assert_eq!(b.max_timestamp(), 1_700_000_000_005);
    assert!(!b.is_control() && !b.is_transactional() && !b.timestamp_type_log_append());
    let records: Vec<_> = b.records().unwrap().map(Result::unwrap).collect();
    assert_eq!(records.len(), 3);
    assert_eq!(records[0].key, Some(&b"k0"[..]));
    assert_eq!(records[0].value, Some(&b"v0"[..]));
    let headers: Vec<_> = records[0]
        .headers
        .iter()
        .map(|h| (h.key, h.value))
        .collect();
    assert_eq!(
        headers,
        vec![
            (&b"h"[..], Some(&b"1"[..])),
            (&b"h"[..], Some(&b"2"[..])),
            (&b"n"[..], None)
        ],
        "repeated header keys are kept, in order"
    );
    assert_eq!((records[1].key, records[1].value), (None, Some(&b""[..])));
    assert_eq!((records[2].key, records[2].value), (Some(&b"k2"[..]), None));
    assert_eq!(
        records.iter().map(|r| r.offset_delta).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    assert_eq!(records[1].timestamp_delta, 5);
}

/// Bytes of a batch as Kafka's own encoder lays them out, written down field by field
/// from the format's specification: one record, key "a", value "b", no headers.
#[test]
fn matches_the_specified_layout() {
    let mut b = RecordBatchBuilder::new(Offset(0));
    b.base_timestamp(0);
    b.push(Some(b"a"), Some(b"b"), &[], 0);
    let bytes = b.build();
    let record: [u8; 9] = [
        0x10, // record length 8 (bytes after this varint), zigzag
        0x00, // attributes
        0x00, // timestamp delta 0
        0x00, // offset delta 0
        0x02, b'a', // key length 1, "a"
        0x02, b'b', // value length 1, "b"
        0x00, // header count 0
    ];
    assert_eq!(&bytes[HEADER_SIZE..], &record[..]);
    assert_eq!(
        &bytes[8..12],
        &((HEADER_SIZE - 12 + 9) as i32).to_be_bytes()
    );
    assert_eq!(&bytes[57..61], &1_i32.to_be_bytes());
    assert_eq!(&bytes[23..27], &0_i32.to_be_bytes());
    assert_eq!(&bytes[43..51], &(-1_i64).to_be_bytes(), "no producer id");
    let crc = crc32c::crc32c(&bytes[21..]);
    assert_eq!(&bytes[17..21], &crc.to_be_bytes());
}

#[test]
fn patching_keeps_the_crc_valid() {
    let mut bytes = sample();
    batch::set_base_offset(&mut bytes, Offset(1 << 40)).unwrap();
    batch::set_partition_leader_epoch(&mut bytes, Epoch(77)).unwrap();
    let (b, _) = RecordBatch::parse(&bytes).unwrap();
    b.validate().unwrap();
    assert_eq!(b.base_offset(), Offset(1 << 40));
    assert_eq!(b.partition_leader_epoch(), Epoch(77));
    assert!(batch::set_base_offset(&mut [0_u8; 4], Offset(1)).is_err());
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    let bytes = sample();
    for n in 0..bytes.len() {
        assert!(
            RecordBatch::parse(&bytes[..n]).is_err(),
            "prefix of {n} bytes parsed"
        );
    }
    assert_eq!(batch::peek_size(&bytes[..11]), Ok(None));
    assert_eq!(batch::peek_size(&bytes), Ok(Some(bytes.len())));
}

#[test]
fn structural_errors_are_typed() {
    let good = sample();
    let mut bad_magic = good.clone();
    bad_magic[16] = 1;
    assert_eq!(
        RecordBatch::parse(&bad_magic).unwrap_err(),
        BatchError::BadMagic(1)
    );
    let mut bad_len = good.clone();
    bad_len[8..12].copy_from_slice(&10_i32.to_be_bytes());
    assert_eq!(
        RecordBatch::parse(&bad_len).unwrap_err(),
        BatchError::BadLength(10)
    );
    let mut bad_codec = good.clone();
    bad_codec[22] |= 0x07;
    assert_eq!(
        RecordBatch::parse_unchecked_crc(&bad_codec).unwrap_err(),
        BatchError::BadCompression(7)
    );
    // Count disagreeing with the last offset delta (CRC recomputed so only that is wrong).
    let mut bad_count = good.clone();
    bad_count[57..61].copy_from_slice(&5_i32.to_be_bytes());
    let crc = crc32c::crc32c(&bad_count[21..]);
    bad_count[17..21].copy_from_slice(&crc.to_be_bytes());
    let (b, _) = RecordBatch::parse(&bad_count).unwrap();
    assert!(matches!(
        b.validate(),
        Err(BatchError::BadRecordCount { count: 5, .. })
    ));
    assert_eq!(
        b.validate_records(),
        Err(BatchError::Truncated { count: 5, found: 3 })
    );
    // A compressed batch's records are not iterated here.
    let mut gz = good;
    gz[22] |= 0x01;
    let (b, _) = RecordBatch::parse_unchecked_crc(&gz).unwrap();
    assert_eq!(
        b.records().unwrap_err(),
        BatchError::Compressed(Compression::Gzip)
    );
}

proptest! {
    #[test]
    fn any_flip_in_the_crc_range_is_detected(pos in 0_usize..1000, bit in 0_u8..8) {
        let mut bytes = sample();
        let pos = 21 + pos % (bytes.len() - 21);
        bytes[pos] ^= 1 << bit;
        let verdict = RecordBatch::parse(&bytes).and_then(|(b, _)| b.validate());
        prop_assert!(verdict.is_err());
    }

    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..400)) {
        lode_proto::fuzzing::fuzz_record_batch(&data);
    }

    #[test]
    fn mutated_batches_never_panic(pos in 0_usize..1000, byte in any::<u8>(), cut in 0_usize..1000) {
        let mut bytes = sample();
        let pos = pos % bytes.len();
        bytes[pos] = byte;
        bytes.truncate(bytes.len() - cut % 20);
        lode_proto::fuzzing::fuzz_record_batch(&bytes);
    }

    #[test]
    fn built_batches_round_trip(
        records in proptest::collection::vec(
            (proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20)),
             proptest::option::of(proptest::collection::vec(any::<u8>(), 0..200)),
             -100_000_000_i64..100_000_000,
             0_usize..3),
            1..20),
        big in proptest::option::of(0_usize..40_000),
    ) {
        let mut b = RecordBatchBuilder::new(Offset(7));
        // A large value now and then, so length varints take three bytes.
        let big_value = big.map(|n| vec![0x5a_u8; n]);
        b.push(None, big_value.as_deref(), &[], 0);
        for (k, v, ts, headers) in &records {
            let hs: Vec<(&[u8], Option<&[u8]>)> =
                (0..*headers).map(|i| (&b"h"[..], (i > 0).then_some(&b"v"[..]))).collect();
            b.push(k.as_deref(), v.as_deref(), &hs, *ts);
        }
        let bytes = b.build();
        // Finishing in place gives the very same bytes.
        prop_assert_eq!(&b.clone().try_finish().unwrap(), &bytes);
        let (batch, _) = RecordBatch::parse(&bytes).unwrap();
        batch.validate().unwrap();
        let back: Vec<_> = batch.records().unwrap().map(Result::unwrap).collect();
        prop_assert_eq!(back.len(), records.len() + 1);
        prop_assert_eq!(back[0].value, big_value.as_deref());
        for (r, (k, v, ts, headers)) in back[1..].iter().zip(&records) {
            prop_assert_eq!(r.key, k.as_deref());
            prop_assert_eq!(r.value, v.as_deref());
            prop_assert_eq!(r.timestamp_delta, *ts);
            prop_assert_eq!(r.headers.len(), *headers);
        }
        prop_assert_eq!(batch.max_timestamp(), records.iter().map(|r| r.2).max().unwrap_or(0).max(0));
    }
}
