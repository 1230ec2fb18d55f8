//! Invariant 12: a replica that lost committed batches (its log reopened shorter than the
//! committed log it held: a replaced disk, or a power loss under `fsync=interval`) is in
//! no ISR or ELR, once it registered again, until its log reaches the committed end again.
//! Checked at each new partition state (a partition epoch no node applied before). Before
//! it registers, the controller cannot know of the loss; after, KIP-966's unclean-restart
//! rule, KIP-903's member epochs and the log directory id must keep it out (KAFKA-14139).

use lode_broker::observe::Event;

use super::{new_partition_state, Invariant, Model};

/// See the module.
pub struct LostDataOut;

impl Invariant for LostDataOut {
    fn name(&self) -> &'static str {
        "lost-data-out"
    }

    fn check(&mut self, m: &Model, node: i32, e: &Event) -> Result<(), String> {
        let Some((p, s, members)) = new_partition_state(m, e) else {
            return Ok(());
        };
        for (b, set) in members {
            let Some(r) = p.replicas.get(&b.0) else {
                continue;
            };
            let Some((end, started_step)) = r.lost else {
                continue;
            };
            let Some(&(epoch, registered_step)) = m.registered.get(&b.0) else {
                continue;
            };
            if registered_step > started_step {
                return Err(format!(
                    "node {node} applies partition epoch {} with broker {} in the {set}, though it lost committed batches (its log ends at {}, the committed log at {}) and registered since (broker epoch {epoch})",
                    s.partition_epoch,
                    b.0,
                    r.log_end().0,
                    end.0
                ));
            }
        }
        Ok(())
    }
}
