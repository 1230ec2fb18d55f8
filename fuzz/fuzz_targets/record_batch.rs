//! Fuzzes RecordBatch v2 parsing, validation, record iteration and patching.
//! Run: `cargo +nightly fuzz run record_batch` from `fuzz/`. The corpus in
//! `corpus/record_batch` is replayed by lode-proto's ordinary tests
//! (`crates/lode-proto/tests/fuzz_corpus.rs`), through the same function.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    lode_proto::batch::fuzzing::fuzz_record_batch(data);
});
