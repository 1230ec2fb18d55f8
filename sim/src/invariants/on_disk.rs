//! The files themselves, after the run: every broker loses power at once, then a fresh
//! reader recovers each partition log from each broker's simulated disk and checks it, not
//! trusting anything a broker reported about itself.
//!
//! - **on-disk-consistent**: the recovered log verifies (`Log::verify`: every segment
//!   re-read and CRC-checked; its size, end, indexes and leader-epoch cache equal what a
//!   full scan of the batches builds, so an epoch-cache entry starts at the first batch of
//!   its epoch and at or below the log end).
//! - **on-disk-committed**: in an `fsync=always` topic, every member of the partition's
//!   final ISR holds on its disk, with the same CRC, every batch the model saw committed
//!   (at or above its log start). Each member synced those batches before the leader
//!   counted them, so a power loss of every broker at once loses none of them.

use std::collections::{BTreeMap, BTreeSet};

use lode_env::clock::Skew;
use lode_env::{Clock, Dir, SimDisk};
use lode_proto::Offset;
use lode_storage::{Log, LogConfig};

use super::Model;

/// What the check found: violations, and what it read (for the trace).
#[derive(Debug, Default)]
pub struct Findings {
    /// Broken rules, with evidence.
    pub violations: Vec<String>,
    /// Partition logs recovered and checked.
    pub logs: usize,
    /// Committed batches found on the final ISR members' disks.
    pub committed_found: usize,
}

/// Checks the partition logs of `topics` (name, whether it syncs every batch) on every
/// disk. The brokers must be dead: this crashes the disks.
pub async fn check(disks: &[SimDisk], topics: &[(String, bool)], model: &Model) -> Findings {
    let mut f = Findings::default();
    for d in disks {
        d.crash();
    }
    let (clock, _) = Clock::skewed(Skew::default());
    for (topic, always) in topics {
        let partitions: BTreeSet<i32> = model
            .partitions
            .keys()
            .filter(|(t, _)| t == topic)
            .map(|(_, p)| *p)
            .collect();
        for partition in partitions {
            let name = format!("{topic}-{partition}");
            let isr: BTreeSet<i32> = model
                .latest_view(topic, partition)
                .map(|v| v.isr.iter().map(|b| b.0).collect())
                .unwrap_or_default();
            let committed = model
                .partitions
                .get(&(topic.clone(), partition))
                .map(|p| p.committed.clone())
                .unwrap_or_default();
            for (node, disk) in disks.iter().enumerate() {
                let node = node as i32;
                let root = Dir::sim(disk);
                let Ok(names) = root.list().await else {
                    continue;
                };
                if !names.contains(&name) {
                    continue;
                }
                let Ok(dir) = root.sub_dir(&name).await else {
                    continue;
                };
                let log = match Log::open(dir, clock.clone(), LogConfig::default()).await {
                    Ok((log, _)) => log,
                    Err(e) => {
                        f.violations.push(format!(
                            "on-disk-consistent: broker {node} {name}: recovery failed: {e}"
                        ));
                        continue;
                    }
                };
                f.logs += 1;
                if let Err(e) = log.verify().await {
                    f.violations
                        .push(format!("on-disk-consistent: broker {node} {name}: {e}"));
                    continue;
                }
                if !*always || !isr.contains(&node) {
                    continue;
                }
                let held = match batches(&log).await {
                    Ok(b) => b,
                    Err(e) => {
                        f.violations.push(format!(
                            "on-disk-consistent: broker {node} {name}: unreadable: {e}"
                        ));
                        continue;
                    }
                };
                for (base, b) in committed.range(log.log_start_offset()..) {
                    match held.get(base) {
                        Some(&(last, crc)) if last == b.last && crc == b.crc => {
                            f.committed_found += 1;
                        }
                        other => {
                            f.violations.push(format!(
                                "on-disk-committed: broker {node}, in the final ISR {isr:?} of {name}, has on its disk {} where batch {}..={} (epoch {}, crc {:08x}) was committed",
                                other.map_or("nothing".to_owned(), |(last, crc)| format!(
                                    "a batch to {} with crc {crc:08x}",
                                    last.0
                                )),
                                b.base.0,
                                b.last.0,
                                b.epoch.0,
                                b.crc
                            ));
                            break;
                        }
                    }
                }
            }
        }
    }
    f
}

/// Every batch of `log`: base offset to (last offset, CRC).
async fn batches(log: &Log) -> Result<BTreeMap<Offset, (Offset, u32)>, lode_storage::LogError> {
    let (mut at, end) = (log.log_start_offset(), log.log_end_offset());
    let mut out = BTreeMap::new();
    while at < end {
        let bytes = log.read(at, 1 << 20, end).await?;
        let ids = lode_broker::observe::batch_ids(&bytes);
        let Some(last) = ids.last() else {
            break;
        };
        at = last.last.next();
        for b in ids {
            out.insert(b.base, (b.last, b.crc));
        }
    }
    Ok(out)
}
