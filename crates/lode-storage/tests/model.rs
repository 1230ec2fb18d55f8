//! Model test: random sequences of append, sync, truncate, roll, retention, read and
//! reopen against an in-memory model of what the log must hold.
//!
//! The log runs on the simulated disk without power loss, so a reopen without a close is a
//! process crash (the page cache survives): nothing may be lost, and recovery must rebuild
//! exactly the same log. After every step the log is checked against the model, and after
//! every reopen its files against a full scan (`Log::verify`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches fail loudly
#![cfg(not(madsim))]

mod common;

use lode_env::{Clock, Dir, SimDisk};
use lode_proto::batch::RecordBatch;
use lode_proto::{Epoch, Offset};
use lode_storage::{Log, LogConfig, SyncPolicy};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Append {
        records: usize,
        value_len: usize,
        new_epoch: bool,
    },
    Sync,
    Truncate {
        frac: u8,
    },
    Roll,
    DeleteBelow {
        frac: u8,
    },
    Read {
        frac: u8,
        max_bytes: usize,
    },
    ReadByTime {
        frac: u8,
    },
    Reopen {
        clean: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1_usize..12, 0_usize..900, proptest::bool::weighted(0.1))
            .prop_map(|(records, value_len, new_epoch)| Op::Append { records, value_len, new_epoch }),
        1 => Just(Op::Sync),
        1 => any::<u8>().prop_map(|frac| Op::Truncate { frac }),
        1 => Just(Op::Roll),
        1 => any::<u8>().prop_map(|frac| Op::DeleteBelow { frac }),
        3 => (any::<u8>(), 1_usize..20_000).prop_map(|(frac, max_bytes)| Op::Read { frac, max_bytes }),
        1 => any::<u8>().prop_map(|frac| Op::ReadByTime { frac }),
        1 => any::<bool>().prop_map(|clean| Op::Reopen { clean }),
    ]
}

#[derive(Clone, Debug)]
struct Stored {
    base: Offset,
    last: Offset,
    bytes: Vec<u8>,
    max_ts: i64,
}

#[derive(Default, Debug)]
struct Model {
    batches: Vec<Stored>,
    start: Offset,
    end: Offset,
}

impl Model {
    fn at(&self, frac: u8) -> Offset {
        let span = self.end.0 - self.start.0;
        self.start.add(span * i64::from(frac) / 255)
    }
    fn containing(&self, offset: Offset) -> Option<usize> {
        self.batches.iter().position(|b| b.last >= offset)
    }
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 16 * 1024,
        index_interval_bytes: 2048,
        sync: SyncPolicy::GroupCommit,
        ..LogConfig::default()
    }
}

async fn run(ops: Vec<Op>) {
    let disk = SimDisk::new("model", 7);
    let dir = Dir::sim(&disk).sub_dir("t-0").await.unwrap();
    let clock = Clock::system();
    let (mut log, _) = Log::open(dir.clone(), clock.clone(), config())
        .await
        .unwrap();
    let mut model = Model::default();
    let mut epoch = Epoch(1);
    let mut tag = 0_u64;
    for op in ops {
        match op {
            Op::Append {
                records,
                value_len,
                new_epoch,
            } => {
                if new_epoch {
                    epoch = Epoch(epoch.0 + 1);
                }
                tag += 1;
                let ts = 1_000 + tag as i64 * 10;
                let mut b = common::client_batch(tag, records, value_len, ts);
                let info = log.append_leader(&mut b, epoch).await.unwrap();
                assert_eq!(info.base_offset, model.end);
                assert_eq!(info.last_offset, model.end.add(records as i64 - 1));
                let parsed = RecordBatch::parse(&b).unwrap().0;
                assert_eq!(
                    parsed.base_offset(),
                    info.base_offset,
                    "offset patched in place"
                );
                assert_eq!(
                    parsed.partition_leader_epoch(),
                    epoch,
                    "epoch stamped in place"
                );
                parsed.validate().unwrap();
                model.batches.push(Stored {
                    base: info.base_offset,
                    last: info.last_offset,
                    bytes: b,
                    max_ts: info.max_timestamp_ms,
                });
                model.end = info.last_offset.next();
            }
            Op::Sync => {
                assert_eq!(log.sync().await.unwrap(), model.end);
            }
            Op::Truncate { frac } => {
                let target = model.at(frac);
                let new_end = log.truncate_to(target).await.unwrap();
                let expect = match model.containing(target) {
                    Some(i) => {
                        let base = model.batches[i].base;
                        model.batches.truncate(i);
                        base
                    }
                    None => model.end,
                };
                model.end = expect;
                model.start = model.start.min(expect);
                assert_eq!(new_end, expect);
                assert!(log.durable_offset() <= new_end);
            }
            Op::Roll => log.roll().await.unwrap(),
            Op::DeleteBelow { frac } => {
                let target = model.at(frac);
                log.delete_below(target).await.unwrap();
                model.start = model.start.max(target.min(model.end));
            }
            Op::Read { frac, max_bytes } => {
                let offset = model.at(frac);
                let got = log.read(offset, max_bytes, Offset(i64::MAX)).await.unwrap();
                match model.containing(offset) {
                    None => assert!(got.is_empty(), "read at the end returns nothing"),
                    Some(i) => {
                        assert!(
                            !got.is_empty(),
                            "a read inside the log returns at least one batch"
                        );
                        let mut expect = Vec::new();
                        for b in &model.batches[i..] {
                            if expect.len() >= got.len() {
                                break;
                            }
                            expect.extend_from_slice(&b.bytes);
                        }
                        assert_eq!(
                            got,
                            expect[..got.len()],
                            "read returns whole stored batches from the one holding {offset}"
                        );
                        let first = model.batches[i].bytes.len();
                        assert!(got.len() <= max_bytes.max(first), "read respects max bytes");
                    }
                }
                // An upper bound below the offset's batch end yields nothing.
                if let Some(i) = model.containing(offset) {
                    let upper = model.batches[i].last;
                    assert!(log.read(offset, max_bytes, upper).await.unwrap().is_empty());
                }
            }
            Op::ReadByTime { frac } => {
                let ts = 1_000 + i64::from(frac) * (tag as i64 * 10 + 20) / 255;
                let got = log.offset_for_timestamp(ts).await.unwrap();
                // Model: first record (at or after the log start) whose timestamp >= ts.
                let mut expect = None;
                'outer: for b in &model.batches {
                    if b.max_ts < ts {
                        continue;
                    }
                    let rb = RecordBatch::parse(&b.bytes).unwrap().0;
                    for r in rb.records().unwrap() {
                        let r = r.unwrap();
                        let off = rb.base_offset().add(i64::from(r.offset_delta));
                        if rb.base_timestamp() + r.timestamp_delta >= ts && off >= model.start {
                            expect = Some((off, rb.base_timestamp() + r.timestamp_delta));
                            break 'outer;
                        }
                    }
                }
                assert_eq!(got, expect, "offset for timestamp {ts}");
            }
            Op::Reopen { clean } => {
                if clean {
                    log.close().await.unwrap();
                } else {
                    drop(log);
                }
                let (l, report) = Log::open(dir.clone(), clock.clone(), config())
                    .await
                    .unwrap();
                log = l;
                assert_eq!(report.clean_shutdown, clean, "{report:?}");
                assert_eq!(
                    report.truncated_bytes, 0,
                    "a process crash loses nothing: {report:?}"
                );
                assert!(report.fallbacks.is_empty(), "{report:?}");
                log.verify().await.unwrap();
            }
        }
        assert_eq!(log.log_end_offset(), model.end);
        assert_eq!(log.log_start_offset(), model.start);
    }
    log.verify().await.unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    #[test]
    fn log_matches_model(ops in proptest::collection::vec(op(), 1..80)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(ops));
    }
}
