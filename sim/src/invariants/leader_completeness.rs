//! Invariant 2, leader completeness: a replica taking up leadership (clean election) holds
//! every batch committed by the leaders of earlier epochs, and the epoch starts at or after
//! their end.
//!
//! A broker can take up an epoch late, after a later epoch committed more: a paused or cut
//! off broker applies its backlog of metadata in order, or a metadata fetch answer reaches
//! it late. What the later epochs committed is not its to hold, even batches written in
//! an earlier epoch that only a later leader's high watermark passed; that it commits
//! nothing as a deposed leader, invariants 1 and 8 watch. So a batch counts by the epoch of
//! the leader that committed it, not by the epoch it was written in.

use lode_broker::observe::Event;

use super::{show, Invariant, Model};

/// See the module.
pub struct LeaderCompleteness;

impl Invariant for LeaderCompleteness {
    fn name(&self) -> &'static str {
        "leader-completeness"
    }

    fn about_loss(&self) -> bool {
        true
    }

    fn check(&mut self, m: &Model, node: i32, e: &Event) -> Result<(), String> {
        let Event::Leader { epoch, start, .. } = e else {
            return Ok(());
        };
        let Some(p) = m.partition(e) else {
            return Ok(());
        };
        let unclean = p
            .views
            .get(&node)
            .is_some_and(|v| v.leader_epoch == *epoch && v.elected_unclean);
        if unclean && m.settings.unclean_election {
            return Ok(());
        }
        let before: Vec<_> = p
            .committed
            .values()
            .filter(|c| p.committed_under.get(&c.base).is_some_and(|u| u < epoch))
            .collect();
        let end = before
            .last()
            .map_or(lode_proto::Offset(0), |c| c.last.next());
        if *start < end {
            return Err(format!(
                "node {node} leads epoch {} from offset {}, below the committed end {}",
                epoch.0, start.0, end.0
            ));
        }
        let empty = super::Replica::default();
        let r = m.replica(node, e).unwrap_or(&empty);
        for c in before {
            if r.batch_at(c.base) != Some(c) {
                return Err(format!(
                    "node {node} leads epoch {} without the committed batch {} (it has {})",
                    epoch.0,
                    show(c),
                    r.batch_at(c.base).map_or("nothing".into(), show)
                ));
            }
        }
        Ok(())
    }
}
