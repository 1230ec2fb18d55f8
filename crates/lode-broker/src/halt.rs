//! Fail-stop on storage faults. A broker whose disk failed (a write, sync or read error,
//! stored bytes that fail their check, a full disk, its metadata log's store failing) stops
//! serving: its process exits and a supervisor (systemd, Kubernetes, the simulator) starts
//! it again, and recovery rebuilds each log from what the disk really holds. Kafka halts
//! the same way when its last log directory fails. Staying up would be worse: a log that
//! failed refuses every append and fetch while the broker still leads it, so the partition
//! is unavailable until someone restarts the broker anyway, and after a failed `fsync` its
//! unsynced data is undefined (PostgreSQL's "fsyncgate").

use lode_env::sync::watch;

/// A broker's halt signal: raised once, with the first reason; awaited by whoever runs the
/// broker.
pub struct Halt {
    reason: watch::Sender<Option<String>>,
}

impl Default for Halt {
    fn default() -> Self {
        Halt {
            reason: watch::channel(None).0,
        }
    }
}

impl Halt {
    /// Raises the halt (the first reason is kept). Never blocks.
    pub fn raise(&self, why: impl Into<String>) {
        let why = why.into();
        let first = self.reason.send_if_modified(|r| {
            if r.is_none() {
                *r = Some(why.clone());
                true
            } else {
                false
            }
        });
        if first {
            tracing::error!(reason = %why, "storage failed: the broker halts");
        }
    }

    /// The reason, if raised.
    #[must_use]
    pub fn reason(&self) -> Option<String> {
        self.reason.borrow().clone()
    }

    /// Waits until the halt is raised and returns its reason.
    pub async fn raised(&self) -> String {
        let mut rx = self.reason.subscribe();
        // The sender lives in `self`, so the wait ends only with a reason.
        let _ = rx.wait_for(Option::is_some).await;
        let why = rx.borrow().clone();
        why.unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::Halt;

    #[test]
    fn the_first_reason_is_kept() {
        let h = Halt::default();
        assert_eq!(h.reason(), None);
        h.raise("disk full");
        h.raise("read failed");
        assert_eq!(h.reason().as_deref(), Some("disk full"));
    }
}
