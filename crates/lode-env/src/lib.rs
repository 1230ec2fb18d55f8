//! The environment interface of lode: the only way broker, storage and replication code
//! reaches the outside world.
//!
//! | need | module | production | `--cfg madsim` |
//! |---|---|---|---|
//! | time | [`clock`] | tokio's clock | madsim's clock, plus per-node [`clock::Skew`] |
//! | files | [`disk`] | the host's file system | [`disk::SimDisk`], our own durability model |
//! | network | [`net`] | tokio TCP | madsim's simulated TCP |
//! | randomness | [`rng`] | the OS | madsim's seeded generator |
//! | tasks | [`task`] | tokio tasks | madsim tasks, owned by a node |
//!
//! The crates above this one (lode-storage, lode-broker) must not call `std::fs`,
//! `std::time::Instant::now`, `tokio::net`, `tokio::time`, `tokio::spawn` or `rand`
//! directly; a tidy test in `tests/` enforces it. lode-core, below them, uses none of
//! these at all.

pub mod clock;
pub mod disk;
pub mod net;
pub mod rng;
pub mod sync;
pub mod task;

pub use clock::{Clock, Elapsed, Skew, SkewControl};
pub use disk::{Dir, File, SimDisk};

/// What one node needs from its environment, handed down to every component of the node.
#[derive(Clone, Debug)]
pub struct Env {
    /// The node's clock.
    pub clock: Clock,
    /// The node's data directory.
    pub data_dir: Dir,
}

impl Env {
    /// A production environment: the host's clock and a data directory on its disk.
    ///
    /// # Errors
    /// When the data directory cannot be created.
    pub fn host(data_dir: impl Into<std::path::PathBuf>) -> std::io::Result<Env> {
        Ok(Env {
            clock: Clock::system(),
            data_dir: Dir::real(data_dir)?,
        })
    }

    /// A simulated node's environment: a skewable clock and a simulated disk.
    #[must_use]
    pub fn simulated(disk: &SimDisk, clock: Clock) -> Env {
        Env {
            clock,
            data_dir: Dir::sim(disk),
        }
    }
}
