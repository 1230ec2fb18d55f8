//! Replays the fuzz corpora through the same entry points the fuzz targets call
//! ([`fuzz_record_batch`] for `fuzz/fuzz_targets/record_batch.rs`), so every input that ever
//! mattered to the fuzzer is checked by `cargo test`.
//!
//! `LODE_WRITE_CORPUS=1 cargo test -p lode-proto --test fuzz_corpus` regenerates the seed
//! inputs (valid batches, truncations, bit flips, and CRC-valid batches with broken records,
//! which random mutation almost never produces because it cannot fix up the CRC). Files the
//! fuzzer adds are kept: regeneration only overwrites the seeds by name.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use std::fs;
use std::path::PathBuf;

use lode_proto::batch::fuzzing::fuzz_record_batch;
use lode_proto::batch::{batches, RecordBatchBuilder, HEADER_SIZE};
use lode_proto::{Epoch, Offset};

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/record_batch")
}

/// Replaces the records section, `recordsCount` and `lastOffsetDelta` of the batch `bytes`
/// and fixes up the length and CRC, so that only the records are wrong.
fn with_records(bytes: &[u8], count: i32, records: &[u8]) -> Vec<u8> {
    let mut out = bytes[..HEADER_SIZE].to_vec();
    out.extend_from_slice(records);
    let len = i32::try_from(out.len() - 12).unwrap();
    out[8..12].copy_from_slice(&len.to_be_bytes());
    out[23..27].copy_from_slice(&(count - 1).to_be_bytes());
    out[57..61].copy_from_slice(&count.to_be_bytes());
    fix_crc(&mut out);
    out
}

fn fix_crc(b: &mut [u8]) {
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
}

/// Seeds that are valid client batches: the replay checks they still validate, so a
/// format change cannot quietly turn the corpus into noise.
const VALID: &[&str] = &["one", "many", "control", "two-batches", "headers"];

fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut one = RecordBatchBuilder::new(Offset(0));
    one.push(
        Some(b"key"),
        Some(b"value"),
        &[(b"h", Some(b"v")), (b"h", None)],
        0,
    );
    let one = one.build();
    let mut many = RecordBatchBuilder::new(Offset(1000));
    many.producer(7, 1, 0)
        .partition_leader_epoch(Epoch(3))
        .base_timestamp(1_700_000_000_000);
    for i in 0..20_u8 {
        many.push(None, Some(&vec![i; usize::from(i) * 7]), &[], i64::from(i));
    }
    let many = many.build();
    let mut control = RecordBatchBuilder::new(Offset(5));
    control.control(true).transactional(true);
    control.push(Some(&[0, 0, 0, 1]), Some(&[0, 0, 0, 0, 0, 0]), &[], 0);
    let control = control.build();
    out.push(("one".into(), one.clone()));
    out.push(("many".into(), many.clone()));
    out.push(("control".into(), control));
    out.push(("two-batches".into(), [one.clone(), many.clone()].concat()));
    for cut in [0, 11, 12, 30, 61, one.len() - 1] {
        out.push((format!("one-cut-{cut}"), one[..cut].to_vec()));
    }
    for (i, pos) in [0_usize, 9, 13, 16, 18, 22, 25, 58, 61, 62, 64, 70]
        .into_iter()
        .enumerate()
    {
        let mut m = many.clone();
        m[pos] ^= 0x80;
        out.push((format!("many-flip-{i}"), m));
    }
    let mut huge = one.clone();
    huge[8..12].copy_from_slice(&i32::MAX.to_be_bytes());
    out.push(("huge-length".into(), huge));
    let mut neg = one.clone();
    neg[61] = 0x01; // record length -1
    out.push(("negative-record-length".into(), neg));

    out.push(("empty".into(), RecordBatchBuilder::new(Offset(0)).build()));
    let mut headers = RecordBatchBuilder::new(Offset(0));
    headers
        .producer(11, 0, 5)
        .transactional(true)
        .log_append_time(true);
    headers.push(
        Some(b"k"),
        None,
        &[(b"a", Some(b"1")), (b"a", None), (b"", Some(b""))],
        -7,
    );
    headers.push(None, Some(b""), &[(b"b", Some(b"2"))], 3);
    out.push(("headers".into(), headers.build()));
    let mut gzip = one.clone();
    gzip[22] |= 0x01; // claims gzip; the records are not
    fix_crc(&mut gzip);
    out.push(("gzip-flag".into(), gzip));
    // Records: length 7, attributes, timestamp delta, offset delta, null key, value "v", no
    // headers.
    let rec = |offset_delta: u8| [14, 0, 0, offset_delta * 2, 1, 2, b'v', 0];
    let gap = [rec(0), rec(2)].concat();
    out.push(("offset-gap".into(), with_records(&one, 2, &gap)));
    let overlong = [0x8e, 0x00, 0, 0, 0, 1, 2, b'v', 0];
    out.push(("overlong-varint".into(), with_records(&one, 1, &overlong)));
    out.push(("negative-count".into(), with_records(&one, -1, &rec(0))));
    out.push((
        "trailing-record-bytes".into(),
        with_records(&one, 1, &[rec(0), rec(1)].concat()),
    ));
    out
}

/// Writes the seeds if `LODE_WRITE_CORPUS` is set, checks the seeds on disk are the ones
/// generated here, then replays every file. One test, so writing and reading cannot race.
#[test]
fn replay_record_batch_corpus() {
    let dir = corpus_dir();
    let seeds = seeds();
    if std::env::var_os("LODE_WRITE_CORPUS").is_some() {
        fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in &seeds {
            fs::write(dir.join(name), bytes).unwrap();
        }
    }
    for (name, bytes) in &seeds {
        let on_disk = fs::read(dir.join(name)).unwrap_or_default();
        assert!(
            &on_disk == bytes,
            "seed {name} differs from its generator: \
             run LODE_WRITE_CORPUS=1 cargo test -p lode-proto --test fuzz_corpus"
        );
    }

    let mut n = 0;
    for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = fs::read(&path).unwrap();
        fuzz_record_batch(&data);
        n += 1;
    }
    assert!(n >= 10, "only {n} corpus files in {}", dir.display());
    for name in VALID {
        let data = fs::read(dir.join(name)).unwrap();
        for b in batches(&data) {
            let b = b.unwrap_or_else(|e| panic!("seed {name}: {e}"));
            b.validate().unwrap();
            b.validate_records().unwrap();
        }
    }
}
