//! Invariant 6: on every node, each change of a partition's state bumps its partition
//! epoch, and its leader epoch never decreases.

use lode_broker::observe::Event;

use super::{Invariant, Model};

/// See the module.
pub struct ControllerEpochs;

impl Invariant for ControllerEpochs {
    fn name(&self) -> &'static str {
        "controller-epochs"
    }

    fn check(&mut self, m: &Model, node: i32, e: &Event) -> Result<(), String> {
        let Event::PartitionChanged { state, .. } = e else {
            return Ok(());
        };
        let Some(prev) = m.partition(e).and_then(|p| p.views.get(&node)) else {
            return Ok(());
        };
        if state.partition_epoch <= prev.partition_epoch {
            return Err(format!(
                "node {node} applies a change at partition epoch {} after {}",
                state.partition_epoch, prev.partition_epoch
            ));
        }
        if state.leader_epoch < prev.leader_epoch {
            return Err(format!(
                "node {node}'s leader epoch goes back from {} to {}",
                prev.leader_epoch.0, state.leader_epoch.0
            ));
        }
        Ok(())
    }
}
