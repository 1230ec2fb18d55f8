//! The chaos runner in CI: a fixed range of seeds passes (every fault kind, both durability
//! policies, acks=1 and acks=all producers), a seed replays identically, a schedule given as
//! a file replays the run it came from, every named scenario passes, and planted bugs are
//! caught (by their scenarios, and by the random swarm within stated seed budgets).
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

/// Every scenario of the fault catalogue passes on lode.
#[test]
fn every_scenario_passes() {
    let mut failures = Vec::new();
    for sc in lode_sim::scenarios::ALL {
        let report = chaos::run(&sc.params(1, None), &sc.schedule());
        eprintln!(
            "{}: {} acknowledged, {} refused, {} unknown, {} read",
            sc.name, report.acked, report.failed, report.unknown, report.read
        );
        if !report.violations.is_empty() {
            failures.push(format!("{}: {:?}", sc.name, report.violations));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The first seed below `budget` at which `run` reports a violation.
#[cfg(feature = "planted-bugs")]
fn first_caught(budget: u64, run: impl Fn(u64) -> chaos::Report) -> Option<(u64, String)> {
    (0..budget).find_map(|seed| {
        let report = run(seed);
        report.violations.first().map(|v| (seed, v.clone()))
    })
}

/// Each planted bug that a scenario is made for fails that scenario within a few seeds.
#[cfg(feature = "planted-bugs")]
#[test]
fn each_planted_bug_fails_its_scenario() {
    let mut missed = Vec::new();
    for sc in lode_sim::scenarios::ALL {
        let Some(bug) = sc.catches else { continue };
        match first_caught(8, |seed| {
            chaos::run(&sc.params(seed, Some(bug)), &sc.schedule())
        }) {
            Some((seed, why)) => eprintln!("{bug} fails {} at seed {seed}: {why}", sc.name),
            None => missed.push(format!("{bug} passed {} in 8 seeds", sc.name)),
        }
    }
    assert!(missed.is_empty(), "{missed:#?}");
}

/// The random swarm (no scenario) finds these planted bugs within the stated budgets.
#[cfg(feature = "planted-bugs")]
#[test]
fn the_swarm_finds_planted_bugs() {
    use chaos::Planted as P;
    let mut missed = Vec::new();
    for (bug, budget) in [
        (P::TruncateToHw, 10),
        (P::HwBelowMinIsr, 10),
        (P::AckBeforeSync, 10),
        (P::ElectOutsideIsr, 40),
        (P::ReadAboveHw, 5),
        (P::CommitBeforeReplicated, 5),
        (P::ConsumerForgetsPartition, 5),
        (P::IgnoreSyncFailure, 25),
    ] {
        let run = |seed| {
            let params = Params::of(seed, Some(bug));
            chaos::run(&params, &Schedule::of(&params))
        };
        match first_caught(budget, run) {
            Some((seed, why)) => eprintln!("{bug}: caught at seed {seed}: {why}"),
            None => missed.push(format!("{bug} went unnoticed in {budget} seeds")),
        }
    }
    assert!(missed.is_empty(), "{missed:#?}");
}

/// The committed-offsets checker, on its own, catches a coordinator that acknowledges
/// commits before they are replicated: after the failover a member reads an older offset
/// (and invariant 9 sees each early acknowledgement as it happens).
#[cfg(feature = "planted-bugs")]
#[test]
fn a_commit_acknowledged_before_replication_is_lost_in_a_failover() {
    let sc = lode_sim::scenarios::Scenario::named("offsets-truncation").unwrap();
    let bug = chaos::Planted::CommitBeforeReplicated;
    let report = chaos::run(&sc.params(0, Some(bug)), &sc.schedule());
    let found = |prefix: &str| report.violations.iter().any(|v| v.contains(prefix));
    assert!(found("lost-commit:"), "{:#?}", report.violations);
    assert!(
        found("invariant ack-correctness"),
        "{:#?}",
        report.violations
    );
}

/// Invariant 3 catches a replica with an empty log admitted into the ISR by a stale
/// AlterPartition (the controller's checks planted away), next to invariant 12.
#[cfg(feature = "planted-bugs")]
#[test]
fn a_member_without_the_committed_log_breaks_invariant_3() {
    let sc = lode_sim::scenarios::Scenario::named("stale-alterpartition").unwrap();
    let bug = chaos::Planted::StaleAlterPartition;
    let caught = (0..8).find(|&seed| {
        chaos::run(&sc.params(seed, Some(bug)), &sc.schedule())
            .violations
            .iter()
            .any(|v| v.contains("invariant isr-holds-committed"))
    });
    assert!(
        caught.is_some(),
        "isr-holds-committed never fired in 8 seeds"
    );
}

/// The unseen checker catches consumers that stop reading a partition after a leader move
/// (the final read, by a fresh consumer, still finds every record).
#[cfg(feature = "planted-bugs")]
#[test]
fn a_consumer_that_forgets_a_partition_leaves_acknowledged_values_unseen() {
    let bug = chaos::Planted::ConsumerForgetsPartition;
    let caught = (0..5).find(|&seed| {
        let params = Params::of(seed, Some(bug));
        chaos::run(&params, &Schedule::of(&params))
            .violations
            .iter()
            .any(|v| v.starts_with("unseen:"))
    });
    assert!(caught.is_some(), "unseen never fired in 5 seeds");
}
