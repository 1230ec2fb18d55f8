//! Synchronisation that stays deterministic under simulation.
//!
//! tokio's `watch` spreads its waiters over eight `Notify`s chosen with tokio's own
//! thread-local random generator, which is seeded from a process-wide counter, not from the
//! simulation's seed: with several waiters, the order they wake in (and so the schedule)
//! changed from one run of a seed to the next. [`watch`] here has the same shape with one
//! `Notify`, which wakes waiters in the order they started waiting.

/// A single-value channel whose receivers see the latest value and wait for changes; the
/// subset of tokio's `watch` this project uses.
pub mod watch {
    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
    use std::sync::{Arc, RwLock, RwLockReadGuard};

    use tokio::sync::Notify;

    /// The senders are gone: no value will change again.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
    #[error("the watch channel is closed")]
    pub struct RecvError;

    struct Shared<T> {
        value: RwLock<T>,
        version: AtomicU64,
        notify: Notify,
        senders: AtomicUsize,
        closed: AtomicBool,
    }

    impl<T> Shared<T> {
        fn read(&self) -> RwLockReadGuard<'_, T> {
            self.value
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        }
    }

    /// A borrowed value; do not hold it across an await.
    pub type Ref<'a, T> = RwLockReadGuard<'a, T>;

    /// The sending side; clones share the channel.
    pub struct Sender<T> {
        shared: Arc<Shared<T>>,
    }

    /// A receiving side; it remembers the last version it saw.
    pub struct Receiver<T> {
        shared: Arc<Shared<T>>,
        seen: u64,
    }

    /// A channel holding `init`.
    #[must_use]
    pub fn channel<T>(init: T) -> (Sender<T>, Receiver<T>) {
        let tx = Sender::new(init);
        let rx = tx.subscribe();
        (tx, rx)
    }

    impl<T> Sender<T> {
        /// A channel holding `init`, with no receiver yet.
        #[must_use]
        pub fn new(init: T) -> Sender<T> {
            Sender {
                shared: Arc::new(Shared {
                    value: RwLock::new(init),
                    version: AtomicU64::new(0),
                    notify: Notify::new(),
                    senders: AtomicUsize::new(1),
                    closed: AtomicBool::new(false),
                }),
            }
        }

        /// The current value.
        pub fn borrow(&self) -> Ref<'_, T> {
            self.shared.read()
        }

        /// A new receiver that has seen the current value.
        #[must_use]
        pub fn subscribe(&self) -> Receiver<T> {
            Receiver {
                shared: Arc::clone(&self.shared),
                seen: self.shared.version.load(Ordering::Acquire),
            }
        }

        /// Changes the value in place and wakes every waiting receiver.
        pub fn send_modify(&self, f: impl FnOnce(&mut T)) {
            {
                let mut v = self
                    .shared
                    .value
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                f(&mut v);
                self.shared.version.fetch_add(1, Ordering::AcqRel);
            }
            self.shared.notify.notify_waiters();
        }

        /// Changes the value in place if `f` says it changed (returns true), waking the
        /// receivers only then; returns what `f` returned.
        pub fn send_if_modified(&self, f: impl FnOnce(&mut T) -> bool) -> bool {
            let modified = {
                let mut v = self
                    .shared
                    .value
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let m = f(&mut v);
                if m {
                    self.shared.version.fetch_add(1, Ordering::AcqRel);
                }
                m
            };
            if modified {
                self.shared.notify.notify_waiters();
            }
            modified
        }

        /// Replaces the value, returns the old one, and wakes every waiting receiver.
        pub fn send_replace(&self, value: T) -> T {
            let mut old = Some(value);
            self.send_modify(|v| {
                if let Some(new) = old.take() {
                    old = Some(std::mem::replace(v, new));
                }
            });
            match old {
                Some(v) => v,
                None => unreachable!("send_modify runs its closure exactly once"),
            }
        }
    }

    impl<T> Clone for Sender<T> {
        fn clone(&self) -> Self {
            self.shared.senders.fetch_add(1, Ordering::AcqRel);
            Sender {
                shared: Arc::clone(&self.shared),
            }
        }
    }

    impl<T> Drop for Sender<T> {
        fn drop(&mut self) {
            if self.shared.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
                self.shared.closed.store(true, Ordering::Release);
                self.shared.notify.notify_waiters();
            }
        }
    }

    impl<T> Clone for Receiver<T> {
        fn clone(&self) -> Self {
            Receiver {
                shared: Arc::clone(&self.shared),
                seen: self.seen,
            }
        }
    }

    impl<T> Receiver<T> {
        /// The current value.
        pub fn borrow(&self) -> Ref<'_, T> {
            self.shared.read()
        }

        /// Treats the current value as seen.
        pub fn mark_unchanged(&mut self) {
            self.seen = self.shared.version.load(Ordering::Acquire);
        }

        /// Waits until the value changes from the last one seen.
        ///
        /// # Errors
        /// [`RecvError`] once every sender is gone.
        pub async fn changed(&mut self) -> Result<(), RecvError> {
            loop {
                let notified = self.shared.notify.notified();
                tokio::pin!(notified);
                // Registered before looking, so a change in between is not missed.
                notified.as_mut().enable();
                let version = self.shared.version.load(Ordering::Acquire);
                if version != self.seen {
                    self.seen = version;
                    return Ok(());
                }
                if self.shared.closed.load(Ordering::Acquire) {
                    return Err(RecvError);
                }
                notified.await;
            }
        }

        /// Waits until `f` holds for the value (checking the current one first).
        ///
        /// # Errors
        /// [`RecvError`] once every sender is gone and `f` does not hold.
        pub async fn wait_for(&mut self, mut f: impl FnMut(&T) -> bool) -> Result<(), RecvError> {
            loop {
                {
                    let v = self.shared.read();
                    self.seen = self.shared.version.load(Ordering::Acquire);
                    if f(&v) {
                        return Ok(());
                    }
                }
                self.changed().await?;
            }
        }
    }

    #[cfg(test)]
    mod tests {
        #![allow(clippy::unwrap_used)]

        use super::*;

        #[tokio::test]
        async fn receivers_see_changes_and_the_close() {
            let (tx, mut rx) = channel(1);
            let mut rx2 = tx.subscribe();
            tx.send_replace(2);
            rx.changed().await.unwrap();
            assert_eq!(*rx.borrow(), 2);
            let waiter = tokio::spawn(async move { rx2.wait_for(|v| *v == 3).await });
            tokio::task::yield_now().await;
            tx.send_modify(|v| *v = 3);
            assert_eq!(waiter.await.unwrap(), Ok(()));
            drop(tx);
            // The last change is still reported, then the close.
            assert_eq!(rx.changed().await, Ok(()));
            assert_eq!(*rx.borrow(), 3);
            assert_eq!(rx.changed().await, Err(RecvError));
        }
    }
}
