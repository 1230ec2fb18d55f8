//! Randomness. Production draws from the operating system; under `--cfg madsim` every
//! draw comes from madsim's seeded generator, so one seed replays a whole run.

use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};

/// A fresh random `u64` from the environment's source.
#[must_use]
pub fn seed_u64() -> u64 {
    #[cfg(madsim)]
    {
        madsim::rand::thread_rng().next_u64()
    }
    #[cfg(not(madsim))]
    {
        rand::thread_rng().next_u64()
    }
}

/// A fast generator seeded from the environment (see [`seed_u64`]); deterministic under
/// simulation. Use one per task or component rather than sharing.
#[must_use]
pub fn rng() -> SmallRng {
    SmallRng::seed_from_u64(seed_u64())
}
