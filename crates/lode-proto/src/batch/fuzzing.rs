//! The checking function the `record_batch` fuzz target runs, public so that the fuzz
//! crate and the corpus replay test (`tests/fuzz_corpus.rs`) run the very same code.
//!
//! Not part of the API: it panics, on purpose, when an invariant of this module breaks,
//! which is how a fuzzer reports a finding.

use std::borrow::Cow;

use super::{
    batches, peek_size, set_base_offset, set_partition_leader_epoch, BatchError, Compression,
    Header, Record, RecordBatch, RecordBatchBuilder, Records, HEADER_SIZE, LOG_OVERHEAD, MAGIC_V2,
};
use crate::types::{Epoch, Offset};

/// The decompression limit of the harness: small, so that a bomb fails fast.
pub const DECOMPRESS_LIMIT: usize = 1 << 20;

/// Feeds `data` to every decoder of [`super`] and checks their invariants. Must not panic
/// for any input; a panic is a bug in the decoders (or in an invariant stated here).
///
/// Two walks cover the input: [`batches`], which checks CRCs as production reads do, and
/// a walk with [`RecordBatch::parse_unchecked_crc`], without which a fuzzer would almost
/// never get past the CRC to the record decoder.
pub fn fuzz_record_batch(data: &[u8]) {
    // Peeking only reads the length field.
    if let Ok(Some(size)) = peek_size(data) {
        assert!(size >= HEADER_SIZE);
    }

    let mut it = batches(data);
    let mut clean = 0_usize;
    let mut errors = 0;
    for b in it.by_ref() {
        match b {
            Ok(b) => {
                assert_eq!(b.compute_crc(), b.crc(), "batches() yielded a bad CRC");
                clean += b.size();
                check_batch(b);
            }
            Err(_) => errors += 1,
        }
    }
    assert!(errors <= 1, "batches() continued after an error");
    assert_eq!(it.position(), clean);
    assert_eq!(it.remaining().len(), data.len() - clean);
    assert!(it.next().is_none(), "batches() is not fused");

    let mut rest = data;
    while let Ok((b, tail)) = RecordBatch::parse_unchecked_crc(rest) {
        assert_eq!(b.size() + tail.len(), rest.len());
        check_batch(b);
        rest = tail;
    }
}

/// Runs every accessor and check on a framed batch and cross-checks them.
fn check_batch(b: RecordBatch<'_>) {
    let size = b.size();
    assert_eq!(b.as_bytes().len(), size);
    assert_eq!(
        usize::try_from(b.batch_length()).ok(),
        size.checked_sub(LOG_OVERHEAD)
    );
    assert_eq!(peek_size(b.as_bytes()), Ok(Some(size)));
    assert_eq!(b.records_bytes().len() + HEADER_SIZE, size);
    assert_eq!(b.magic(), MAGIC_V2);
    assert_eq!(
        Compression::from_id(b.compression().id()),
        Some(b.compression())
    );
    // The remaining accessors have no invariant beyond not panicking.
    let _ = (b.base_offset(), b.last_offset(), b.next_offset());
    let _ = (b.partition_leader_epoch(), b.attributes());
    let _ = (
        b.timestamp_type_log_append(),
        b.is_transactional(),
        b.is_control(),
    );
    let _ = (
        b.has_delete_horizon(),
        b.base_timestamp(),
        b.max_timestamp(),
    );
    let _ = (b.producer_id(), b.producer_epoch(), b.base_sequence());
    let _ = format!("{b:?}");

    let crc_ok = b.crc() == b.compute_crc();
    assert_eq!(RecordBatch::parse(b.as_bytes()).is_ok(), crc_ok);
    match b.validate() {
        Ok(()) => {
            assert!(crc_ok);
            assert!(b.record_count() >= 1);
            assert_eq!(b.last_offset_delta(), b.record_count() - 1);
        }
        Err(BatchError::BadCrc { .. }) => assert!(!crc_ok),
        Err(BatchError::BadRecordCount { .. }) => assert!(crc_ok),
        Err(e) => panic!("validate() returned an unexpected error: {e}"),
    }

    check_records(b);
    check_patching(b);
}

/// Iterates the records (decompressing them first if the batch is compressed) and, for a
/// batch that passes `validate_records`, checks that the builder re-encodes them to the same
/// bytes (varints are canonical, so decoding is injective on what it accepts).
fn check_records(b: RecordBatch<'_>) {
    let records = match b.records() {
        Ok(records) => records,
        Err(BatchError::Compressed(c)) => {
            assert_ne!(c, Compression::None);
            assert_eq!(b.validate_records(), Err(BatchError::Compressed(c)));
            check_compressed(b, c);
            return;
        }
        Err(BatchError::BadRecordCount { count, .. }) => {
            assert!(count < 0);
            assert!(b.records_in(b.records_bytes()).is_err());
            return;
        }
        Err(e) => panic!("records() returned an unexpected error: {e}"),
    };
    let Ok(again) = b.records_in(b.records_bytes()) else {
        panic!("records_in() failed where records() did not");
    };
    assert!(
        again.eq(records.clone()),
        "records_in(records_bytes()) differs from records()"
    );
    assert!(matches!(
        b.decompressed_records(0),
        Ok(Cow::Borrowed(r)) if r == b.records_bytes()
    ));
    check_decoded(b, records, b.records_bytes());
}

/// Decompresses a compressed batch with a small limit and checks its records as
/// [`check_records`] does those of an uncompressed one.
fn check_compressed(b: RecordBatch<'_>, codec: Compression) {
    let section = match b.decompressed_records(DECOMPRESS_LIMIT) {
        Ok(Cow::Owned(section)) => section,
        Ok(Cow::Borrowed(_)) => panic!("decompressed_records() borrowed compressed records"),
        Err(BatchError::Decompress { codec: c, .. }) => {
            assert_eq!(c, codec);
            return;
        }
        Err(BatchError::DecompressedTooLarge { codec: c, limit }) => {
            assert_eq!((c, limit), (codec, DECOMPRESS_LIMIT));
            return;
        }
        Err(e) => panic!("decompressed_records() returned an unexpected error: {e}"),
    };
    assert!(section.len() <= DECOMPRESS_LIMIT);
    match b.records_in(&section) {
        Ok(records) => check_decoded(b, records, &section),
        Err(BatchError::BadRecordCount { count, .. }) => assert!(count < 0),
        Err(e) => panic!("records_in() returned an unexpected error: {e}"),
    }
}

/// Checks the records decoded from `section`, the (decompressed) records section of `b`.
fn check_decoded(b: RecordBatch<'_>, records: Records<'_>, section: &[u8]) {
    let mut it = records;
    let mut decoded: Vec<Record<'_>> = Vec::new();
    let mut failed = false;
    for r in it.by_ref() {
        match r {
            Ok(r) => {
                assert!(!failed, "a record after an error");
                let _ = (r.offset(b.base_offset()), r.timestamp(b.base_timestamp()));
                assert_eq!(r.headers.len(), r.headers.iter().count());
                decoded.push(r);
            }
            Err(_) => {
                assert!(!failed, "two errors");
                failed = true;
            }
        }
    }
    assert!(it.next().is_none(), "records() is not fused");
    if !failed {
        assert_eq!(i32::try_from(decoded.len()).ok(), Some(b.record_count()));
    }

    let valid = b.validate_records_in(section);
    if b.compression() == Compression::None {
        assert_eq!(valid, b.validate_records());
    }
    if failed {
        assert!(valid.is_err(), "validate_records() missed a bad record");
        return;
    }
    let in_order = (0_i32..).zip(&decoded).all(|(i, r)| r.offset_delta == i);
    assert_eq!(valid.is_ok(), in_order);
    if !in_order || decoded.iter().any(|r| r.attributes != 0) {
        return; // the builder writes consecutive deltas and zero attributes only
    }
    let mut builder = RecordBatchBuilder::new(b.base_offset());
    builder
        .base_timestamp(b.base_timestamp())
        .compression(b.compression());
    for r in &decoded {
        let headers: Vec<(&[u8], Option<&[u8]>)> = r
            .headers
            .iter()
            .map(|Header { key, value }| (key, value))
            .collect();
        builder.push(r.key, r.value, &headers, r.timestamp_delta);
    }
    let Ok(rebuilt) = builder.try_build() else {
        panic!("the builder failed to re-encode a batch it could parse");
    };
    let Ok((again, _)) = RecordBatch::parse(&rebuilt) else {
        panic!("the builder produced a batch that does not parse");
    };
    assert_eq!(again.compression(), b.compression());
    // Compressed bytes depend on the encoder; what they decompress to must not.
    let Ok(again_section) = again.decompressed_records(section.len()) else {
        panic!("the builder's compressed records do not decompress");
    };
    assert_eq!(&*again_section, section, "re-encoding differs");
    assert_eq!(again.record_count(), b.record_count());
    if !decoded.is_empty() {
        assert_eq!(
            again.validate(),
            Ok(()),
            "the builder's batch is not a client batch"
        );
    }
}

/// Patching a copy changes exactly the patched fields and keeps the CRC as it was.
fn check_patching(b: RecordBatch<'_>) {
    let mut copy = b.as_bytes().to_vec();
    // Values that always differ from the current ones.
    let offset = Offset(!b.base_offset().0);
    let epoch = Epoch(!b.partition_leader_epoch().0);
    assert_eq!(set_base_offset(&mut copy, offset), Ok(()));
    assert_eq!(set_partition_leader_epoch(&mut copy, epoch), Ok(()));
    let Ok((p, rest)) = RecordBatch::parse_unchecked_crc(&copy) else {
        panic!("a patched batch no longer parses");
    };
    assert!(rest.is_empty());
    assert_eq!(p.base_offset(), offset);
    assert_eq!(p.partition_leader_epoch(), epoch);
    assert_eq!((p.crc(), p.compute_crc()), (b.crc(), b.compute_crc()));
    assert_eq!(copy.get(8..12), b.as_bytes().get(8..12));
    assert_eq!(copy.get(16..), b.as_bytes().get(16..));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decompresses_and_checks_compressed_batches() {
        for codec in [
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let mut b = RecordBatchBuilder::new(Offset(7));
            b.compression(codec);
            for i in 0..20_u8 {
                b.push(Some(b"key"), Some(&[i; 40]), &[(b"h", Some(b"x"))], 3);
            }
            let one = b.build();
            fuzz_record_batch(&one);
            for i in HEADER_SIZE..one.len() {
                let mut flipped = one.clone();
                flipped[i] ^= 0x55;
                fuzz_record_batch(&flipped);
            }
        }
    }

    #[test]
    fn accepts_valid_invalid_and_empty_input() {
        let mut b = RecordBatchBuilder::new(Offset(7));
        b.push(Some(b"k"), Some(b"v"), &[(b"h", None)], 3);
        let one = b.build();
        let two = [one.clone(), one.clone()].concat();
        fuzz_record_batch(&two);
        fuzz_record_batch(&[]);
        fuzz_record_batch(&one[..one.len() - 1]);
        let mut flipped = one.clone();
        flipped[HEADER_SIZE + 2] ^= 0x40;
        fuzz_record_batch(&flipped);
    }
}
