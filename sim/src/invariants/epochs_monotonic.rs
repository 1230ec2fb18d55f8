//! Invariant 5 (first half): leader epochs never decrease along a replica's log.

use lode_broker::observe::Event;

use super::{show, Invariant, Model};

/// See the module.
pub struct EpochsMonotonic;

impl Invariant for EpochsMonotonic {
    fn name(&self) -> &'static str {
        "epochs-monotonic"
    }

    fn check(&mut self, m: &Model, node: i32, e: &Event) -> Result<(), String> {
        let Event::Appended { batches, .. } = e else {
            return Ok(());
        };
        let mut last = m
            .replica(node, e)
            .and_then(|r| r.log.last_key_value().map(|(_, b)| *b));
        for b in batches {
            if let Some(prev) = last {
                if b.epoch < prev.epoch || b.base <= prev.last {
                    return Err(format!(
                        "node {node} appends {} after {}",
                        show(b),
                        show(&prev)
                    ));
                }
            }
            last = Some(*b);
        }
        Ok(())
    }
}
