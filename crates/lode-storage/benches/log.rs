//! Throughput of the partition log on the host's disk: append MB/s for 1 KiB records in
//! 16 KiB and 256 KiB batches, with a sync per append and with group commit, and
//! sequential read MB/s. Each figure is the median of several runs; this machine is noisy,
//! so compare figures from one run and quote ratios.
//!
//! ```sh
//! cargo bench -p lode-storage --bench log            # full run
//! LODE_BENCH_MB=16 cargo bench -p lode-storage --bench log   # quicker
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches fail loudly

use std::time::{Duration, Instant};

use lode_env::{Clock, Dir};
use lode_proto::batch::RecordBatchBuilder;
use lode_proto::{Epoch, Offset};
use lode_storage::{Log, LogConfig, SyncPolicy};

const RECORD_BYTES: usize = 1024;
const RUNS: usize = 5;
/// Group commit syncs once this many bytes have been appended since the last sync.
const GROUP_COMMIT_BYTES: usize = 1 << 20;

fn batch(bytes: usize) -> Vec<u8> {
    let mut b = RecordBatchBuilder::new(Offset(0));
    let value = vec![0x5a_u8; RECORD_BYTES - 16];
    let mut n = 0;
    // Fill up to the target size: each record costs about its value plus a few bytes.
    while (n + 1) * RECORD_BYTES <= bytes {
        b.push(
            Some(format!("key-{n:08}").as_bytes()),
            Some(&value),
            &[],
            n as i64,
        );
        n += 1;
    }
    b.build()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn append_run(
    batch_bytes: usize,
    policy: SyncPolicy,
    total: usize,
) -> (f64, std::path::PathBuf, tempfile::TempDir) {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let path = tmp.path().join("bench-0");
    let config = LogConfig {
        sync: policy,
        segment_bytes_max: 256 << 20,
        ..LogConfig::default()
    };
    let (mut log, _) = Log::open(Dir::real(&path).expect("dir"), Clock::system(), config)
        .await
        .expect("open");
    let mut b = batch(batch_bytes);
    let n = total / b.len();
    let mut since_sync = 0;
    let start = Instant::now();
    for _ in 0..n {
        log.append_leader(&mut b, Epoch(1)).await.expect("append");
        if policy == SyncPolicy::GroupCommit {
            since_sync += b.len();
            if since_sync >= GROUP_COMMIT_BYTES {
                log.sync().await.expect("sync");
                since_sync = 0;
            }
        }
    }
    log.sync().await.expect("sync");
    let secs = start.elapsed().as_secs_f64();
    log.close().await.expect("close");
    ((n * b.len()) as f64 / secs / 1e6, path, tmp)
}

async fn read_run(path: &std::path::Path) -> f64 {
    let (log, _) = Log::open(
        Dir::real(path).expect("dir"),
        Clock::system(),
        LogConfig::default(),
    )
    .await
    .expect("open");
    let mut at = log.log_start_offset();
    let mut bytes = 0;
    let start = Instant::now();
    while at < log.log_end_offset() {
        let chunk = log.read(at, 1 << 20, Offset(i64::MAX)).await.expect("read");
        let mut rest = &chunk[..];
        while !rest.is_empty() {
            let (b, tail) = lode_proto::batch::RecordBatch::parse(rest).expect("batch");
            at = b.last_offset().next();
            rest = tail;
        }
        bytes += chunk.len();
    }
    bytes as f64 / start.elapsed().as_secs_f64() / 1e6
}

fn main() {
    // `cargo test --benches` runs this with --bench absent; do a tiny smoke run then.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let mb: usize = std::env::var("LODE_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if smoke { 1 } else { 64 });
    let total = mb << 20;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    println!("lode-storage log bench: {mb} MiB per run, median of {RUNS} runs, 1 KiB records");
    println!("{:<34} {:>10} {:>10}", "case", "MB/s", "spread");
    for batch_kib in [16, 256] {
        for (policy, label) in [
            (SyncPolicy::EveryAppend, "sync per append"),
            (SyncPolicy::GroupCommit, "group commit (1 MiB)"),
        ] {
            let mut append = Vec::new();
            let mut read = Vec::new();
            for _ in 0..RUNS {
                let (mbps, path, _tmp) = rt.block_on(append_run(batch_kib * 1024, policy, total));
                append.push(mbps);
                if policy == SyncPolicy::GroupCommit {
                    read.push(rt.block_on(read_run(&path)));
                }
            }
            let spread = |v: &[f64]| {
                let (lo, hi) = v
                    .iter()
                    .fold((f64::MAX, 0.0_f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
                format!("{lo:.0}-{hi:.0}")
            };
            println!(
                "{:<34} {:>10.0} {:>10}",
                format!("append {batch_kib} KiB, {label}"),
                median(append.clone()),
                spread(&append)
            );
            if !read.is_empty() {
                println!(
                    "{:<34} {:>10.0} {:>10}",
                    format!("read (1 MiB fetches) after {batch_kib} KiB"),
                    median(read.clone()),
                    spread(&read)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
