//! lode-sim: deterministic simulation of lode, built with `RUSTFLAGS="--cfg madsim"` (in its
//! own target directory, `target-madsim`).
//!
//! One seed drives everything: madsim's scheduler, network and randomness, and the
//! simulated disks' crash outcomes. The same seed replays the same run.
//!
//! Scenarios so far:
//! - [`disk_crash`]: a node appends to a partition log on the simulated disk with injected
//!   latency and is killed (power loss) at random moments, mid-IO; every recovery must
//!   give a prefix of what was appended that holds everything synced.

#[cfg(madsim)]
pub mod chaos;
#[cfg(madsim)]
pub mod churn;
#[cfg(madsim)]
pub mod cluster;
#[cfg(madsim)]
pub mod disk_crash;
#[cfg(madsim)]
pub mod groups;
#[cfg(madsim)]
pub mod invariants;
#[cfg(madsim)]
pub mod scenarios;
#[cfg(madsim)]
pub mod trace;
