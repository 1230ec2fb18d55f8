//! The chaos runner in CI: a fixed range of seeds passes (every fault kind, both durability
//! policies, acks=1 and acks=all producers), a seed replays identically, a schedule given as
//! a file replays the run it came from, and the planted ack-before-sync leader is caught.
#![cfg(madsim)]
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use lode_sim::chaos::{self, Params, Schedule};
use madsim::runtime::Runtime;

/// Seeds every CI run checks (about 30 s of wall time in a debug build).
const SEEDS: std::ops::Range<u64> = 0..30;

#[test]
fn a_range_of_seeds_keeps_every_acknowledged_write() {
    let mut failures = Vec::new();
    let (mut acked, mut simulated) = (0, 0.0);
    let wall = std::time::Instant::now();
    for seed in SEEDS {
        let params = Params::of(seed, None);
        let report = chaos::run(&params, &Schedule::of(&params));
        acked += report.acked;
        simulated += report.simulated_s;
        if !report.violations.is_empty() {
            failures.push(format!("seed {seed}: {:?}", report.violations));
        }
    }
    eprintln!(
        "{} seeds: {acked} acknowledged writes checked, {simulated:.0} simulated s in {:.1} wall s",
        SEEDS.end - SEEDS.start,
        wall.elapsed().as_secs_f64()
    );
    assert!(failures.is_empty(), "{failures:#?}");
}

async fn seed_three() -> Vec<String> {
    let params = Params::of(3, None);
    let schedule = Schedule::of(&params);
    chaos::scenario(params, schedule).await.trace
}

#[test]
fn a_seed_replays_byte_for_byte() {
    // madsim runs it twice and compares every random draw, then so do we the traces.
    let trace = Runtime::check_determinism(3, madsim::Config::default(), seed_three);
    let again = Runtime::with_seed_and_config(3, madsim::Config::default()).block_on(seed_three());
    assert_eq!(trace, again);
}

#[test]
fn a_printed_schedule_replays_its_run() {
    let params = Params::of(11, None);
    let schedule = Schedule::of(&params);
    let text = schedule.to_string();
    let first = chaos::run(&params, &schedule);
    let second = chaos::run(&params, &text.parse().unwrap());
    assert_eq!(first.trace_hash(), second.trace_hash());
}

/// The checkers must fire on a leader that acknowledges acks=all on its own log alone.
#[cfg(feature = "planted-bugs")]
#[test]
fn the_planted_ack_before_sync_is_caught() {
    let caught = (0..10).find(|seed| {
        let params = Params::of(*seed, Some(chaos::Planted::AckBeforeSync));
        let report = chaos::run(&params, &Schedule::of(&params));
        if !report.violations.is_empty() {
            eprintln!(
                "planted ack-before-sync caught at seed {seed}: {}",
                report.violations[0]
            );
        }
        !report.violations.is_empty()
    });
    assert!(
        caught.is_some(),
        "ack-before-sync went unnoticed in 10 seeds"
    );
}
