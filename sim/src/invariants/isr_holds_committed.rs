//! Invariant 3: every running member of a partition's ISR or ELR holds the whole committed
//! log. Checked at each new partition state (a partition epoch no node applied before),
//! for each member that registered since it last started (before that the controller
//! cannot know what its log lost, and it serves nothing). The controller elects only from
//! the ISR and the ELR, so a member without a committed batch would lose it as leader.
//! Invariant 12 is the case of a log that reopened shorter; this one also catches a member
//! admitted without the data, or kept in the ELR while the high watermark moved on.

use lode_broker::observe::Event;

use super::{new_partition_state, show, Invariant, Model};

/// See the module.
pub struct IsrHoldsCommitted;

impl Invariant for IsrHoldsCommitted {
    fn name(&self) -> &'static str {
        "isr-holds-committed"
    }

    fn about_loss(&self) -> bool {
        true
    }

    fn check(&mut self, m: &Model, node: i32, e: &Event) -> Result<(), String> {
        let Some((p, s, members)) = new_partition_state(m, e) else {
            return Ok(());
        };
        let committed_end = p.committed_end();
        for (b, set) in members {
            let Some(r) = p.replicas.get(&b.0) else {
                continue;
            };
            if !m.registered_since_start(b.0) {
                continue;
            }
            let missing = if r.log_end() < committed_end {
                Some(format!(
                    "its log ends at {}, the committed log at {}",
                    r.log_end().0,
                    committed_end.0
                ))
            } else {
                p.first_disagreement(r, lode_proto::Offset(0), committed_end)
                    .map(|(has, committed)| {
                        format!(
                            "it holds {} where {} was committed",
                            show(&has),
                            committed.map_or_else(|| "no batch".to_owned(), |c| show(&c))
                        )
                    })
            };
            if let Some(missing) = missing {
                return Err(format!(
                    "node {node} applies partition epoch {} with broker {} in the {set}, though it lacks committed batches: {missing}",
                    s.partition_epoch, b.0
                ));
            }
        }
        Ok(())
    }
}
