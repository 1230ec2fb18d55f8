//! Seeds that once found a bug, each replayed with the schedule it had then
//! (`sim/regressions/seed-N.txt`, as `lode-sim run --seed N` printed it) under the swarm's
//! current parameters for that seed. Every one must pass. A schedule keeps a seed near the
//! situation it found even as the swarm's draws change; the planted bug named with each
//! (or the scenario) shows what the situation catches.
#![cfg(madsim)]
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use lode_sim::chaos::{self, Params, Schedule};

/// Seed, schedule, and what it found.
const SEEDS: [(u64, &str, &str); 7] = [
    (
        208_257,
        include_str!("../regressions/seed-208257.txt"),
        "the lone voter stopped before it registered lost its clean-shutdown marker; its \
         next registration left an fsync=interval topic without an eligible leader for good \
         (scenario unregistered-stop, planted bug clean-marker-dropped)",
    ),
    (
        232,
        include_str!("../regressions/seed-232.txt"),
        "disk latency and stalls: a leader applied a high watermark decided on a fetch after \
         a committed ISR shrink (strict-min-isr; planted bug hw-applied-late)",
    ),
    (
        354,
        include_str!("../regressions/seed-354.txt"),
        "as seed 232",
    ),
    (
        732,
        include_str!("../regressions/seed-732.txt"),
        "as seed 232",
    ),
    (
        947,
        include_str!("../regressions/seed-947.txt"),
        "as seed 232",
    ),
    (
        1800,
        include_str!("../regressions/seed-1800.txt"),
        "small segments: a new leader rebuilt its idempotent producers from its last segment \
         only and appended a retried batch a second time (duplicate)",
    ),
    (
        426,
        include_str!("../regressions/seed-426.txt"),
        "a follower's fetcher changing a partition its broker leads (planted bug \
         unfenced-follower fails it)",
    ),
];

#[test]
fn every_regression_seed_passes() {
    let mut failures = Vec::new();
    for (seed, schedule, found) in SEEDS {
        let schedule: Schedule = schedule.parse().expect("a regression schedule parses");
        assert!(!schedule.0.is_empty(), "seed {seed}: empty schedule");
        let report = chaos::run(&Params::of(seed, None), &schedule);
        if !report.violations.is_empty() {
            failures.push(format!(
                "seed {seed} (it found: {found}): {:?}",
                report.violations
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
