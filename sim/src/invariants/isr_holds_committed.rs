//! Invariant 3: every running member of a partition's ISR or ELR holds the whole committed
//! log. Checked at each new partition state (a partition epoch no node applied before),
//! for each member that registered since it last started (before that the controller
//! cannot know what its log lost, and it serves nothing). The controller elects only from
//! the ISR and the ELR, so a member without a committed batch would lose it as leader.
//! Invariant 12 is the case of a log that reopened shorter; this one also catches a member
//! admitted without the data, or kept in the ELR while the high watermark moved on.

use lode_broker::observe::Event;

use super::{show, Invariant, Model};

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
        let Event::PartitionChanged { state: s, .. } = e else {
            return Ok(());
        };
        let Some(p) = m.partition(e) else {
            return Ok(());
        };
        if s.partition_epoch <= p.partition_epoch_max {
            return Ok(());
        }
        let committed_end = p.committed_end();
        for (b, set) in s
            .isr
            .iter()
            .map(|b| (b, "ISR"))
            .chain(s.elr.iter().map(|b| (b, "ELR")))
        {
            let Some(r) = p.replicas.get(&b.0) else {
                continue;
            };
            let started = m.started.get(&b.0).copied().unwrap_or(0);
            let running = m
                .registered
                .get(&b.0)
                .is_some_and(|&(_, registered)| registered > started);
            if !running {
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
