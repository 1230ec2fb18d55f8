//! The disk-crash scenario: the real `lode-storage` log, on a madsim node, on the simulated
//! disk, killed by power losses at random simulated moments (often in the middle of a write
//! or sync, because every disk operation takes simulated time).
//!
//! Checked at every restart, by the node itself as it recovers:
//! - the recovered log is a prefix of the batches the node handed to `append_leader`
//!   (same bytes, same offsets);
//! - it holds every batch below the last durable offset a sync reported;
//! - every batch passes its CRC and the indexes and epochs agree with a full scan.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{bail, Context};
use lode_env::disk::{CrashStats, Faults};
use lode_env::{Clock, Env, SimDisk};
use lode_proto::batch::{self, RecordBatchBuilder};
use lode_proto::{Epoch, Offset};
use lode_storage::{Log, LogConfig, SyncPolicy};
use madsim::rand::Rng;

/// Parameters of one run, all drawn from the seed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Params {
    /// The seed.
    pub seed: u64,
    /// Power losses before the final recovery.
    pub crashes: usize,
    /// Segment size of the log.
    pub segment_bytes_max: u64,
    /// Sync after every append, or group commit every few appends.
    pub sync_every_append: bool,
    /// Upper bound of the per-operation disk latency.
    pub disk_latency_us_max: u64,
}

/// What happened; equal for equal seeds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The parameters drawn.
    pub params: Params,
    /// Log end offset found by each recovery.
    pub recovered_ends: Vec<Offset>,
    /// Durable offset known before each crash.
    pub durable_before: Vec<Offset>,
    /// Batches handed to the log in all.
    pub appended: u64,
    /// Batches appended but lost to crashes (allowed: they were not synced).
    pub lost: u64,
    /// What the disk model did at each crash.
    pub crashes: Vec<CrashStats>,
}

#[derive(Default)]
struct Shared {
    /// The stored bytes of each batch handed to the log, in offset order.
    history: Vec<(Offset, Vec<u8>)>,
    durable: Offset,
    incarnation: i32,
    appended: u64,
    lost: u64,
    recovered_ends: Vec<Offset>,
    failures: Vec<String>,
}

fn lock(s: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    s.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Draws the parameters from `seed`.
#[must_use]
pub fn params(seed: u64) -> Params {
    use rand::{Rng as _, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    Params {
        seed,
        crashes: rng.gen_range(2..6),
        segment_bytes_max: rng.gen_range(8..128) * 1024,
        sync_every_append: rng.gen_bool(0.25),
        disk_latency_us_max: rng.gen_range(50..2_000),
    }
}

async fn node_main(
    disk: SimDisk,
    shared: Arc<Mutex<Shared>>,
    params: Params,
    plant: fn(&mut LogConfig),
) {
    if let Err(e) = node_run(disk, &shared, &params, plant).await {
        lock(&shared).failures.push(format!("{e:#}"));
    }
}

async fn node_run(
    disk: SimDisk,
    shared: &Mutex<Shared>,
    params: &Params,
    plant: fn(&mut LogConfig),
) -> anyhow::Result<()> {
    let env = Env::simulated(&disk, Clock::system());
    let dir = env.data_dir.sub_dir("topic-0").await?;
    env.data_dir.sync().await?;
    let config = LogConfig {
        segment_bytes_max: params.segment_bytes_max,
        index_interval_bytes: 4096,
        sync: if params.sync_every_append {
            SyncPolicy::EveryAppend
        } else {
            SyncPolicy::GroupCommit
        },
        ..LogConfig::default()
    };
    let mut config = config;
    plant(&mut config);
    let (mut log, _report) = Log::open(dir, env.clock.clone(), config)
        .await
        .context("open")?;
    check_recovered(&log, shared).await?;
    let epoch = {
        let mut s = lock(shared);
        s.incarnation += 1;
        Epoch(s.incarnation)
    };
    let mut rng = madsim::rand::thread_rng();
    let mut tag = 0_u64;
    loop {
        tag += 1;
        let mut b = RecordBatchBuilder::new(Offset(0));
        for i in 0..rng.gen_range(1..8) {
            let value = vec![(tag as u8).wrapping_add(i); rng.gen_range(10..2000)];
            b.push(None, Some(&value), &[], i64::from(i));
        }
        let mut bytes = b.build();
        // Record the batch as it will be stored before handing it over: a kill may land
        // after the write and before `append_leader` returns.
        let mut stored = bytes.clone();
        batch::set_base_offset(&mut stored, log.log_end_offset())?;
        batch::set_partition_leader_epoch(&mut stored, epoch)?;
        lock(shared).history.push((log.log_end_offset(), stored));
        match log.append_leader(&mut bytes, epoch).await {
            Ok(_) => lock(shared).appended += 1,
            Err(e) => bail!("append failed: {e}"),
        }
        if rng.gen_bool(0.3) {
            let d = log.sync().await.context("sync")?;
            lock(shared).durable = d;
        }
        if rng.gen_bool(0.1) {
            env.clock
                .sleep(Duration::from_millis(rng.gen_range(1..20)))
                .await;
        }
    }
}

async fn check_recovered(log: &Log, shared: &Mutex<Shared>) -> anyhow::Result<()> {
    let end = log.log_end_offset();
    let (durable, expected) = {
        let mut s = lock(shared);
        s.recovered_ends.push(end);
        let keep = s.history.iter().take_while(|(base, _)| *base < end).count();
        let lost = (s.history.len() - keep) as u64;
        s.lost += lost;
        s.history.truncate(keep);
        (
            s.durable,
            s.history
                .iter()
                .flat_map(|(_, b)| b.iter().copied())
                .collect::<Vec<u8>>(),
        )
    };
    if end < durable {
        bail!("synced data lost: durable offset was {durable}, recovery ended the log at {end}");
    }
    let mut got = Vec::new();
    let mut at = log.log_start_offset();
    while at < end {
        let chunk = log.read(at, 256 * 1024, Offset(i64::MAX)).await?;
        let mut rest = &chunk[..];
        while !rest.is_empty() {
            let (b, tail) = batch::RecordBatch::parse(rest)?;
            at = b.last_offset().next();
            rest = tail;
        }
        got.extend_from_slice(&chunk);
    }
    if got != expected {
        bail!(
            "recovered log ({} bytes, end {end}) is not a prefix of what was appended ({} bytes)",
            got.len(),
            expected.len()
        );
    }
    log.verify().await.context("verify after recovery")?;
    lock(shared).durable = end;
    Ok(())
}

/// Runs the scenario for `seed` in a fresh madsim runtime.
///
/// # Errors
/// When an invariant breaks: the message names it and the evidence.
pub fn run(seed: u64) -> anyhow::Result<Outcome> {
    run_with(seed, |_| {})
}

/// Runs the scenario with the log's configuration changed by `plant` (used to switch on a
/// planted bug and show the scenario's checks catch it).
///
/// # Errors
/// When an invariant breaks.
pub fn run_with(seed: u64, plant: fn(&mut LogConfig)) -> anyhow::Result<Outcome> {
    let params = params(seed);
    let rt = madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
    let p = params.clone();
    rt.block_on(async move {
        let handle = madsim::runtime::Handle::current();
        let disk = SimDisk::new("node-1", seed);
        let latency = Duration::from_micros(p.disk_latency_us_max);
        disk.set_faults(Faults {
            latency: lode_env::disk::Latency::uniform(Duration::ZERO, latency),
            ..Faults::default()
        });
        let shared = Arc::new(Mutex::new(Shared::default()));
        let (d, s, pp) = (disk.clone(), Arc::clone(&shared), p.clone());
        let node = handle
            .create_node()
            .name("node-1")
            .ip([10, 0, 0, 1].into())
            .init(move || node_main(d.clone(), Arc::clone(&s), pp.clone(), plant))
            .build();
        let mut rng = madsim::rand::thread_rng();
        let mut crashes = Vec::new();
        let mut durable_before = Vec::new();
        for _ in 0..p.crashes {
            madsim::time::sleep(Duration::from_millis(rng.gen_range(5..300))).await;
            handle.kill(node.id());
            durable_before.push(lock(&shared).durable);
            crashes.push(disk.crash());
            handle.restart(node.id());
        }
        // Let the last incarnation recover and check (bounded), then stop it. Earlier
        // incarnations may have been killed before they finished recovering: that is part
        // of the test, and the next one recovers from whatever they left.
        let recovered_before = lock(&shared).recovered_ends.len();
        for _ in 0..1_000 {
            if lock(&shared).recovered_ends.len() > recovered_before
                || !lock(&shared).failures.is_empty()
            {
                break;
            }
            madsim::time::sleep(Duration::from_millis(10)).await;
        }
        handle.kill(node.id());
        let s = lock(&shared);
        if let Some(f) = s.failures.first() {
            bail!("seed {seed}: {f}");
        }
        if s.recovered_ends.len() <= recovered_before {
            bail!(
                "seed {seed}: the final incarnation did not recover within 10 s of simulated time"
            );
        }
        Ok(Outcome {
            params: p,
            recovered_ends: s.recovered_ends.clone(),
            durable_before,
            appended: s.appended,
            lost: s.lost,
            crashes,
        })
    })
}
