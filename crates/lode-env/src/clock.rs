//! The clock: monotonic time, wall time, sleeping and timeouts.
//!
//! Production reads the operating system's clocks through tokio. Under `--cfg madsim` the
//! same calls read madsim's single global simulated clock. Because real machines disagree
//! about time, a [`Clock`] may carry a [`Skew`] controlled at run time by the simulator:
//!
//! - `drift_ppm` changes the *rate* of both the node's monotonic clock and its wall clock
//!   (a node whose crystal runs 500 ppm fast sees 1.0005 s pass for every global second, so
//!   its timeouts fire early);
//! - `offset_ms` moves only the *wall* clock, and may jump it backwards: real monotonic
//!   clocks never go back, wall clocks (NTP steps, VM migration) do.
//!
//! Monotonic readings therefore stay monotonic whatever the simulator does, as on a real
//! host. A sleep converts the node's local duration into global time at the current drift;
//! a drift change during a sleep applies from the next sleep on.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use lode_proto::Instant;

/// The error of [`Clock::timeout`]: the deadline passed first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("timed out after {0:?}")]
pub struct Elapsed(pub Duration);

/// How far one node's clock is off from true (global) time. Changed at run time through
/// [`SkewControl`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Skew {
    /// Wall-clock offset from global wall time, in milliseconds (may be negative).
    pub offset_ms: i64,
    /// Rate error of the node's oscillator, in parts per million (may be negative, but
    /// above -1,000,000: a clock never stops or runs backwards).
    pub drift_ppm: i64,
}

/// Piecewise-linear mapping from global time to a node's local time.
#[derive(Debug)]
struct SkewState {
    skew: Skew,
    /// Global nanoseconds (since the clock's origin) at the last drift change.
    anchor_global_ns: u64,
    /// Local nanoseconds at that same moment.
    anchor_local_ns: u64,
}

impl SkewState {
    fn local_ns(&self, global_ns: u64) -> u64 {
        let since = global_ns.saturating_sub(self.anchor_global_ns);
        self.anchor_local_ns
            .saturating_add(scale(since, self.skew.drift_ppm))
    }
}

/// `ns * (1 + ppm / 1e6)`, computed without overflow for any realistic duration.
fn scale(ns: u64, ppm: i64) -> u64 {
    let factor = 1_000_000_i128 + i128::from(ppm);
    let scaled = i128::from(ns) * factor / 1_000_000;
    u64::try_from(scaled.max(0)).unwrap_or(u64::MAX)
}

/// Inverse of [`scale`]: the global duration in which `local_ns` pass on the node.
fn unscale(local_ns: u64, ppm: i64) -> u64 {
    let factor = (1_000_000_i128 + i128::from(ppm)).max(1);
    let global = i128::from(local_ns) * 1_000_000 / factor;
    u64::try_from(global.max(0)).unwrap_or(u64::MAX)
}

/// A node's clock. Cheap to clone; clones share the origin and the skew.
#[derive(Clone, Debug)]
pub struct Clock {
    origin: tokio::time::Instant,
    skew: Option<Arc<Mutex<SkewState>>>,
}

/// The simulator's handle on a clock's skew.
#[derive(Clone, Debug)]
pub struct SkewControl {
    clock: Clock,
}

impl Clock {
    /// The host's clock, without skew. Its origin is the moment of this call.
    #[must_use]
    pub fn system() -> Clock {
        Clock {
            origin: tokio::time::Instant::now(),
            skew: None,
        }
    }

    /// A clock whose skew can be set and changed at run time through the returned control.
    #[must_use]
    pub fn skewed(skew: Skew) -> (Clock, SkewControl) {
        let state = SkewState {
            skew,
            anchor_global_ns: 0,
            anchor_local_ns: 0,
        };
        let clock = Clock {
            origin: tokio::time::Instant::now(),
            skew: Some(Arc::new(Mutex::new(state))),
        };
        (clock.clone(), SkewControl { clock })
    }

    fn global_ns(&self) -> u64 {
        let d = tokio::time::Instant::now().saturating_duration_since(self.origin);
        u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
    }

    fn state(&self) -> Option<MutexGuard<'_, SkewState>> {
        // A poisoned lock only means a panic elsewhere; the state itself stays consistent
        // because every update is a single assignment.
        self.skew
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Monotonic now on this node.
    #[must_use]
    pub fn now(&self) -> Instant {
        let global = self.global_ns();
        match self.state() {
            Some(s) => Instant(s.local_ns(global)),
            None => Instant(global),
        }
    }

    /// Wall-clock time on this node, in milliseconds since the Unix epoch.
    #[must_use]
    pub fn wall_ms(&self) -> i64 {
        let global_wall_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let global = self.global_ns();
        match self.state() {
            Some(s) => {
                let drift_ms = (i128::from(s.local_ns(global)) - i128::from(global)) / 1_000_000;
                let drift_ms = i64::try_from(drift_ms).unwrap_or(0);
                global_wall_ms
                    .saturating_add(s.skew.offset_ms)
                    .saturating_add(drift_ms)
            }
            None => global_wall_ms,
        }
    }

    /// The global duration that `local` of this node's time takes.
    fn to_global(&self, local: Duration) -> Duration {
        match self.state() {
            Some(s) => {
                let ns = u64::try_from(local.as_nanos()).unwrap_or(u64::MAX);
                Duration::from_nanos(unscale(ns, s.skew.drift_ppm))
            }
            None => local,
        }
    }

    /// Sleeps for `d` of this node's time.
    pub async fn sleep(&self, d: Duration) {
        tokio::time::sleep(self.to_global(d)).await;
    }

    /// Sleeps until this node's monotonic clock reads `deadline`.
    pub async fn sleep_until(&self, deadline: Instant) {
        let left = deadline.saturating_since(self.now());
        self.sleep(left).await;
    }

    /// Runs `fut` for at most `d` of this node's time.
    ///
    /// # Errors
    /// [`Elapsed`] if `d` passed before `fut` finished; `fut` is then dropped.
    pub async fn timeout<F: Future>(&self, d: Duration, fut: F) -> Result<F::Output, Elapsed> {
        tokio::time::timeout(self.to_global(d), fut)
            .await
            .map_err(|_| Elapsed(d))
    }
}

impl SkewControl {
    /// The skew in force now.
    #[must_use]
    pub fn get(&self) -> Skew {
        self.clock.state().map(|s| s.skew).unwrap_or_default()
    }

    /// Sets the skew from now on. Monotonic time keeps its reading at this instant and only
    /// changes rate; wall time may jump by the change of offset.
    pub fn set(&self, skew: Skew) {
        assert!(
            skew.drift_ppm > -1_000_000,
            "a clock cannot stop or run backwards"
        );
        let global = self.clock.global_ns();
        if let Some(mut s) = self.clock.state() {
            let local = s.local_ns(global);
            s.anchor_global_ns = global;
            s.anchor_local_ns = local;
            if skew != s.skew {
                tracing::info!(
                    target: "lode::fault",
                    offset_ms = skew.offset_ms,
                    drift_ppm = skew.drift_ppm,
                    "clock skew set"
                );
            }
            s.skew = skew;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_and_unscale_are_inverse() {
        for ppm in [-999_000, -500, 0, 1, 500, 100_000] {
            for ns in [0_u64, 1_000, 1_000_000_000, 86_400_000_000_000] {
                let back = unscale(scale(ns, ppm), ppm);
                assert!(
                    back.abs_diff(ns) <= 1 + ns / 1_000_000_000,
                    "ppm {ppm} ns {ns} back {back}"
                );
            }
        }
    }

    #[test]
    fn drift_changes_rate_and_keeps_monotonic() {
        let mut s = SkewState {
            skew: Skew {
                offset_ms: 0,
                drift_ppm: 1_000,
            },
            anchor_global_ns: 0,
            anchor_local_ns: 0,
        };
        assert_eq!(s.local_ns(1_000_000_000), 1_001_000_000);
        // Re-anchor as SkewControl::set does, then run slow: still never below the reading.
        let local = s.local_ns(2_000_000_000);
        s.anchor_global_ns = 2_000_000_000;
        s.anchor_local_ns = local;
        s.skew.drift_ppm = -500_000;
        assert_eq!(s.local_ns(2_000_000_000), local);
        assert_eq!(s.local_ns(4_000_000_000), local + 1_000_000_000);
    }

    #[tokio::test]
    async fn system_clock_is_monotonic_and_sleeps() {
        let clock = Clock::system();
        let a = clock.now();
        clock.sleep(Duration::from_millis(5)).await;
        let b = clock.now();
        assert!(b.saturating_since(a) >= Duration::from_millis(5));
        assert!(clock.wall_ms() > 1_600_000_000_000);
        let r = clock
            .timeout(Duration::from_millis(1), std::future::pending::<()>())
            .await;
        assert_eq!(r, Err(Elapsed(Duration::from_millis(1))));
    }
}
