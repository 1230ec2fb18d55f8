//! Replays the fuzz corpora through the same entry points the fuzz targets call, so every
//! input that ever mattered to the fuzzer is checked by `cargo test`.
//!
//! `LODE_WRITE_CORPUS=1 cargo test -p lode-proto --test fuzz_corpus` regenerates the seed
//! inputs (valid batches, truncations, bit flips).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use std::fs;
use std::path::PathBuf;

use lode_proto::batch::RecordBatchBuilder;
use lode_proto::{Epoch, Offset};

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/record_batch")
}

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
    let mut neg = one;
    neg[61] = 0x01; // record length -1
    out.push(("negative-record-length".into(), neg));
    out
}

#[test]
fn replay_record_batch_corpus() {
    let dir = corpus_dir();
    if std::env::var_os("LODE_WRITE_CORPUS").is_some() {
        fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in seeds() {
            fs::write(dir.join(name), bytes).unwrap();
        }
    }
    let mut n = 0;
    for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let data = fs::read(entry.unwrap().path()).unwrap();
        lode_proto::fuzzing::record_batch(&data);
        n += 1;
    }
    assert!(n >= 10, "only {n} corpus files in {}", dir.display());
}
