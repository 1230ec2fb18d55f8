//! Fuzzes the broker's request parsing: frame header, version checks and body decoding for
//! every API the broker serves. Run: `cargo +nightly fuzz run request` from `fuzz/`. The
//! corpus in `corpus/request` is replayed by lode-broker's ordinary tests.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    lode_broker::server::fuzzing::request_frame(data);
});
